"""The house rules of the code: import-linter's contracts (pyproject.toml: no import cycle anywhere,
the core's layers, the plugins' phases) on the package as it installs, own modules imported inside
a function only where a heavy dependency makes it worth it, and the device/precision rule."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "sdk"
PLUGINS = ROOT / "plugins"


@pytest.fixture()
def installed_layout(tmp_path):
    """The package laid out as a wheel installs it (``reasondistill/`` from sdk/, with plugins/ and
    recipes/ inside): the import path and the file path agree there, which import-linter needs."""
    package = tmp_path / "reasondistill"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(SDK, package, ignore=skip)
    shutil.copytree(PLUGINS, package / "plugins", ignore=skip)
    shutil.copytree(ROOT / "recipes", package / "recipes", ignore=skip)
    return tmp_path


def lint_imports(layout: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                           "sys.exit(c())", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=layout, env={"PYTHONPATH": str(layout), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)


def test_import_contracts_hold(installed_layout):
    result = lint_imports(installed_layout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "3 kept" in result.stdout


@pytest.mark.parametrize("module, planted, broken", [
    ("errors.py", "from . import engine\n", "No import cycle"),  # a cycle through the whole core
    ("fingerprint.py", "def f():\n    from .plugins.student import losses\n", "the core never imports"),  # hidden in a function
    ("plugins/domains/product_search.py", "from reasondistill.plugins.student import losses\n", "phases"),
    ("plugins/teacher/lora.py", "def f():\n    from reasondistill.plugins.teacher import training\n", "No import cycle"),
])
def test_import_contracts_catch_a_planted_break(installed_layout, module, planted, broken):
    path = installed_layout / "reasondistill" / module
    path.write_text(path.read_text(encoding="utf-8") + "\n" + planted, encoding="utf-8")
    result = lint_imports(installed_layout)
    assert result.returncode != 0 and broken in result.stdout.split("Broken contracts")[-1], result.stdout[-2000:]


#: third-party packages slow to import (or optional): a module that loads one at import time may be
#: imported inside a function, so ``reasondistill --help``, ``validate`` and plugin registration stay light
HEAVY = {"torch", "transformers", "datasets", "trl", "peft", "accelerate", "onnx", "onnxruntime", "onnxscript",
         "starlette", "uvicorn", "matplotlib", "sklearn", "httpx", "gguf", "safetensors", "tokenizers",
         "prometheus_client", "tqdm"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = ["reasondistill"] + parts[1:] if parts[0] == "sdk" else ["reasondistill"] + parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for root in (SDK, PLUGINS) for p in root.rglob("*.py")}


def _targets(module: str, node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if FILES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in FILES else base for a in node.names]


def _loads_heavy(module: str, seen: frozenset = frozenset()) -> bool:
    """Whether importing ``module`` imports a HEAVY package (its own top-level imports, followed)."""
    if module not in FILES:
        return module.split(".")[0] in HEAVY
    if module in seen:
        return False
    tree = ast.parse(FILES[module].read_text(encoding="utf-8"))
    return any(_loads_heavy(t, seen | {module}) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               for t in _targets(module, node))


def _deferred_own_imports(module: str) -> list[tuple[int, str]]:
    tree = ast.parse(FILES[module].read_text(encoding="utf-8"))
    found = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.update((node.lineno, t) for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for t in _targets(module, node) if t.startswith("reasondistill"))
    return sorted(found)


def test_own_modules_are_imported_inside_a_function_only_when_they_load_a_heavy_package():
    """Deferring an import hides the structure (and used to hide import cycles); it is kept only where
    the imported module loads torch, transformers, onnx, ... at import time."""
    light = [f"{FILES[m].relative_to(ROOT)}:{line}: {target}" for m in sorted(FILES)
             for line, target in _deferred_own_imports(m) if not _loads_heavy(target)]
    assert not light, "import these at the top of the module (they load nothing heavy):\n" + "\n".join(light)


def test_the_deferred_import_rule_sees_what_it_names():
    assert _loads_heavy("reasondistill.training") and not _loads_heavy("reasondistill.errors")
    assert ("reasondistill.plugins.student.losses" in FILES
            and _targets("reasondistill.plugins.student.losses", ast.parse("from .encoder import X").body[0])
            == ["reasondistill.plugins.student.encoder"])


# --- device and precision have one home (reasondistill.runtime) ----------------------------------
ROOTS = [SDK, PLUGINS]
MARK = "# runtime:"  # a deliberate fixed precision says why on its line, e.g. "# runtime: ONNX export is fp32"
FLOAT_DTYPES = {"float32", "float16", "bfloat16", "half", "float", "double", "float64"}


def _hard_coded(path):
    """Lines that fix a device or a float dtype outside the runtime module."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        line = lines[node.lineno - 1]
        if MARK in line:
            continue
        for kw in node.keywords:
            value = kw.value
            if kw.arg == "device" and isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append(f"{path.name}:{node.lineno}: device={value.value!r}")
            if kw.arg in ("dtype", "torch_dtype") and isinstance(value, ast.Attribute) and value.attr in FLOAT_DTYPES \
                    and isinstance(value.value, ast.Name) and value.value.id == "torch":
                found.append(f"{path.name}:{node.lineno}: {kw.arg}=torch.{value.attr}")
            if kw.arg in ("bf16", "fp16") and isinstance(value, ast.Constant):
                found.append(f"{path.name}:{node.lineno}: {kw.arg}={value.value}")
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "cuda" and not node.args:
            found.append(f"{path.name}:{node.lineno}: .cuda()")
        if isinstance(func, ast.Attribute) and func.attr == "to" and node.args and isinstance(node.args[0], ast.Constant) \
                and str(node.args[0].value).startswith(("cuda", "cpu")):
            found.append(f"{path.name}:{node.lineno}: .to({node.args[0].value!r})")
    return found


def test_no_model_load_or_tensor_fixes_device_or_precision_outside_the_runtime_module():
    """Model loads, trainer configs and tensor factories take device and dtype from
    reasondistill.runtime; a deliberate exception carries a '# runtime: <why>' comment."""
    offenders = [hit for root in ROOTS for path in sorted(root.rglob("*.py")) if path.name != "runtime.py"
                 for hit in _hard_coded(path)]
    assert not offenders, "hard-coded device/precision (use reasondistill.runtime):\n" + "\n".join(offenders)


def test_the_device_check_catches_what_it_names(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nm = M.from_pretrained('x', dtype=torch.float32)\nt = torch.zeros(2, device='cuda')\n"
                   "args = A(bf16=False)\nm.cuda()\nok = torch.zeros(2, dtype=torch.float32)  # runtime: a label target\n")
    assert [h.split(": ", 1)[1] for h in _hard_coded(bad)] == [
        "dtype=torch.float32", "device='cuda'", "bf16=False", ".cuda()"]


def test_mutation_testing_covers_every_module_with_logic():
    """``make mutants`` (benchmarks/mutants.py) mutates every module that defines a function; a new
    module gets a slice of the suite there, or its mutants are never asked about."""
    import runpy

    targets = runpy.run_path(str(ROOT / "benchmarks" / "mutants.py"))["TARGETS"]
    covered = {path for files, _ in targets.values() for path in files.split()}
    with_logic = {str(p.relative_to(ROOT)) for root in (SDK, PLUGINS) for p in root.rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py")
                  and any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(ast.parse(p.read_text())))}
    assert not with_logic - covered, f"modules make mutants never mutates: {sorted(with_logic - covered)}"
    assert all((ROOT / path).is_file() for path in covered), "TARGETS name a file that is gone"


def test_no_mutate_marks_figure_style_only():
    """``# pragma: no mutate`` leaves a line's mutants out of ``make mutants``: only for lines that
    style a report figure (a figure size, a font size, a rotation), never for logic."""
    import runpy

    tool = runpy.run_path(str(ROOT / "benchmarks" / "mutants.py"))
    marked = {str(p.relative_to(ROOT)): tool["unasked_lines"](p.read_text()) for root in (SDK, PLUGINS)
              for p in root.rglob("*.py")}
    marked = {path: lines for path, lines in marked.items() if lines}
    assert set(marked) == {"plugins/pipeline/run_report.py"}
    text = (ROOT / "plugins/pipeline/run_report.py").read_text().splitlines()
    style = ("figsize=", "fontsize=", "dpi=", "markersize=", "width = ", 'ha="center"')
    assert all(any(s in text[i - 1] for s in style) for i in marked["plugins/pipeline/run_report.py"])
    assert tool["unasked_lines"]("a = 1\nb = 2  # pragma: no mutate\n") == {2}


def test_a_mutant_runs_the_tests_that_executed_its_line(tmp_path):
    """benchmarks/mutant_tests.py: a line in a function body runs the tests coverage saw execute
    it; a line run at import (a constant, a ``def``), only by fixtures, or by no test coverage saw
    (a subprocess) runs the whole slice."""
    import runpy

    tool = runpy.run_path(str(ROOT / "benchmarks" / "mutant_tests.py"))
    source = "LIMIT = 3\n\n\ndef check(n):\n    if n > LIMIT:\n        raise ValueError(n)\n    return n\n"
    (tmp_path / "pristine").mkdir()
    (tmp_path / "pristine" / "0-m.py").write_text(source)
    module = tmp_path / "m.py"
    plan = {str(module): {"copy": "0-m.py", "lines": {
        "1": [""], "4": [""], "5": ["t.py::a|run", "t.py::b|run"], "6": ["t.py::b|run"], "7": ["t.py::s|setup"]}}}

    def selected(mutated: str):
        module.write_text(mutated)
        return tool["tests_to_run"](plan, tmp_path / "pristine")

    assert selected(source) == []
    assert selected(source.replace("n > LIMIT", "n >= LIMIT")) == ["t.py::a", "t.py::b"]
    assert selected(source.replace("raise ValueError(n)", "pass")) == ["t.py::b"]
    assert selected(source.replace("LIMIT = 3", "LIMIT = 4")) is None
    assert selected(source.replace("def check(n)", "def check(n=1)")) is None
    assert selected(source.replace("return n", "return -n")) is None
    plan[str(module)]["lines"].pop("6")
    assert selected(source.replace("raise ValueError(n)", "pass")) is None


def test_a_mutant_in_a_builder_of_cached_models_runs_the_whole_slice_with_empty_caches(tmp_path, monkeypatch):
    """(Session 20: a tokenizer mutant in ``sdk/tiny.py`` survived, the cached tiny models having
    been built by the pristine code.) The caches are fresh for that mutant, and removed after it."""
    import json as _json
    import runpy
    import sys

    tool = runpy.run_path(str(ROOT / "benchmarks" / "mutant_tests.py"))
    source = "def build(n):\n    return n + 1\n"
    (tmp_path / "pristine").mkdir()
    (tmp_path / "pristine" / "0-tiny.py").write_text(source)
    module, out = tmp_path / "tiny.py", tmp_path / "ran.json"
    probe = tmp_path / "probe.py"  # stands in for pytest: records the tests and the caches it was given
    probe.write_text("import json, os, sys\n"
                     f"open({str(out)!r}, 'w').write(json.dumps([os.environ.get('REASONDISTILL_FIXTURE_CACHE'), "
                     "os.environ.get('REASONDISTILL_CACHE'), sys.argv[1:]]))\n")
    plan = tmp_path / "plan.json"
    monkeypatch.setattr(sys, "argv", ["mutant_tests.py", str(plan)])
    monkeypatch.setenv("REASONDISTILL_FIXTURE_CACHE", "/kept/fixtures")
    module.write_text(source.replace("n + 1", "n - 1"))
    for builds_cached, caches, tests in ((False, "/kept/fixtures", ["t.py::a"]), (True, None, ["t.py::a", "t.py::b"])):
        plan.write_text(_json.dumps({"pytest": f"{sys.executable} {probe}", "slice": "t.py", "tests": ["t.py::b", "t.py::a"],
                                     "files": {str(module): {"copy": "0-tiny.py", "lines": {"2": ["t.py::a|run"]},
                                                             "builds_cached": builds_cached}}}))
        assert tool["main"]() == 0
        fixtures, models, ran = _json.loads(out.read_text())
        assert sorted(ran) == tests
        if caches:
            assert fixtures == caches
        else:
            assert "mutant-caches-" in fixtures and models.startswith(fixtures.removesuffix("fixtures"))
            assert not Path(fixtures).parent.exists()  # removed after the mutant


def test_a_builder_mutant_reuses_only_the_cache_entries_built_apart_from_its_change(tmp_path, monkeypatch):
    """The SmolLM2 conversion (minutes) is copied from the pristine cache into a builder mutant's
    fresh caches unless the mutant changed the class that converts it; the tiny models are
    always built again."""
    import json as _json
    import runpy
    import sys

    tool = runpy.run_path(str(ROOT / "benchmarks" / "mutant_tests.py"))
    apart = runpy.run_path(str(ROOT / "benchmarks" / "mutants.py"))["built_apart"](ROOT)
    where = apart["models/smollm2-135m-instruct-fp32"]
    source = (ROOT / "plugins" / "models" / "builtin_models.py").read_text().splitlines(keepends=True)
    span = source[where["lines"][0] - 1:where["lines"][1]]  # the whole class, the conversion's folder name in it
    assert where["file"].endswith("builtin_models.py") and span[0].startswith("class SmolLM2")
    assert any('"smollm2-135m-instruct-fp32"' in line for line in span) and not source[where["lines"][1]].startswith(" ")
    (tmp_path / "pristine").mkdir()
    (tmp_path / "pristine" / "0-b.py").write_text("".join(source))
    module = tmp_path / "b.py"
    plan = {"files": {str(module): {"copy": "0-b.py", "lines": {}, "builds_cached": True}},
            "built_apart": {"models/smollm2-135m-instruct-fp32": {"file": str(module), "lines": where["lines"]}}}

    def reused(line: int) -> list[str]:
        mutated = list(source)
        mutated[line - 1] = mutated[line - 1].replace("\n", "  # mutated\n")
        module.write_text("".join(mutated))
        return tool["reusable_entries"](plan, tmp_path / "pristine", [str(module)])

    for inside in (where["lines"][0], where["lines"][1]):
        assert reused(inside) == [], inside
    for outside in (where["lines"][0] - 1, where["lines"][1] + 1):
        assert reused(outside) == ["models/smollm2-135m-instruct-fp32"], outside
    kept = tmp_path / "kept"
    (kept / "models" / "smollm2-135m-instruct-fp32").mkdir(parents=True)
    (kept / "models" / "smollm2-135m-instruct-fp32" / "config.json").write_text("{}")
    (kept / "models" / "tiny-encoder-v2").mkdir()
    out, probe = tmp_path / "ran.json", tmp_path / "probe.py"
    probe.write_text("import json, os\n"
                     f"c = os.environ['REASONDISTILL_CACHE']\nopen({str(out)!r}, 'w').write(json.dumps(sorted(os.listdir(c + '/models'))))\n")
    plan.update(pytest=f"{sys.executable} {probe}", slice="t.py", tests=["t.py::a"])
    (tmp_path / "plan.json").write_text(_json.dumps(plan))
    monkeypatch.setattr(sys, "argv", ["mutant_tests.py", str(tmp_path / "plan.json")])
    monkeypatch.setenv("REASONDISTILL_CACHE", str(kept))
    assert tool["main"]() == 0
    assert _json.loads(out.read_text()) == ["smollm2-135m-instruct-fp32"]  # the tiny encoder is built again


def test_the_plan_marks_exactly_the_builders_of_cached_models():
    """The other half of the test above: ``mutants.py`` writes ``builds_cached`` into the plan for
    the files in ``CACHED_BUILDERS`` and for no other."""
    import runpy

    tool = runpy.run_path(str(ROOT / "benchmarks" / "mutants.py"))
    assert "sdk/tiny.py" in tool["CACHED_BUILDERS"]
    entry = tool["file_plan"]("sdk/tiny.py", "0-tiny.py", {7: {"tests/a.py::t|run", "tests/a.py::s|run"}})
    assert entry == {"copy": "0-tiny.py", "lines": {"7": ["tests/a.py::s|run", "tests/a.py::t|run"]}, "builds_cached": True}
    assert tool["file_plan"]("sdk/metrics.py", "1-metrics.py", {})["builds_cached"] is False
