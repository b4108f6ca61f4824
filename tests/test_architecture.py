"""Layering of the core: sdk/ has no import cycle (not even one hidden in a function body) and never
imports a plugin; plugins reach the core through its public modules."""

import ast
from pathlib import Path

SDK = Path(__file__).resolve().parents[1] / "sdk"


def _imports(path: Path) -> set[str]:
    """sdk modules ``path`` imports anywhere, except under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif (node.module or "").startswith("reasondistill"):
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("reasondistill."))
    return found


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in SDK.glob("*.py")}


def test_sdk_imports_no_plugin():
    offenders = {mod: deps & {"plugins"} for mod, deps in _graph().items() if "plugins" in deps}
    assert not offenders, f"sdk modules importing reasondistill.plugins: {sorted(offenders)}"


def test_sdk_has_no_import_cycle():
    graph = {m: {d for d in deps if d in _graph() and d != m} for m, deps in _graph().items()}
    graph.pop("__init__", None)
    for deps in graph.values():
        deps.discard("__init__")
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            visit(dep)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles in sdk/: " + "; ".join(" -> ".join(c) for c in cycles)


# --- device and precision have one home (reasondistill.runtime) ----------------------------------
ROOTS = [SDK, SDK.parent / "plugins"]
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
    offenders = [hit for root in ROOTS for path in sorted(root.glob("*.py")) if path.name != "runtime.py"
                 for hit in _hard_coded(path)]
    assert not offenders, "hard-coded device/precision (use reasondistill.runtime):\n" + "\n".join(offenders)


def test_the_device_check_catches_what_it_names(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nm = M.from_pretrained('x', dtype=torch.float32)\nt = torch.zeros(2, device='cuda')\n"
                   "args = A(bf16=False)\nm.cuda()\nok = torch.zeros(2, dtype=torch.float32)  # runtime: a label target\n")
    assert [h.split(": ", 1)[1] for h in _hard_coded(bad)] == [
        "dtype=torch.float32", "device='cuda'", "bf16=False", ".cuda()"]
