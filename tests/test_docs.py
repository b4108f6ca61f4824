"""Meta-tests (datasette style): every hook is documented with its exact signature, and tested."""

from pathlib import Path

import pytest

from reasondistill.manager import _spec_names, hook_signature

ROOT = Path(__file__).resolve().parents[1]
HOOKS_DOC = (ROOT / "docs" / "hooks.md").read_text()
HOOK_TESTS = (ROOT / "tests" / "test_hooks.py").read_text()


@pytest.mark.parametrize("hook", _spec_names())
def test_hook_documented_with_exact_signature(hook):
    assert f"### {hook}\n" in HOOKS_DOC, f"docs/hooks.md has no section for {hook}"
    assert hook_signature(hook) in HOOKS_DOC, f"docs/hooks.md shows another signature than {hook_signature(hook)}"


@pytest.mark.parametrize("hook", _spec_names())
def test_hook_has_a_test(hook):
    assert f"def test_hook_{hook}(" in HOOK_TESTS


def test_no_documented_hook_is_gone():
    documented = {line[4:].strip() for line in HOOKS_DOC.splitlines() if line.startswith("### ")}
    assert documented == set(_spec_names())


@pytest.mark.parametrize("hook", _spec_names())
def test_hookspec_has_param_docstring(hook):
    import inspect

    import reasondistill.hookspecs as specs

    fn = getattr(specs, hook)
    doc = inspect.getdoc(fn) or ""
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{hook} does not document {param}"
    assert ":return:" in doc


DOCS = sorted((ROOT / "docs").glob("*.md"))


def _blocks(lang: str):
    import re

    for doc in DOCS:
        for i, block in enumerate(re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), flags=re.S)):
            yield pytest.param(block, id=f"{doc.stem}-{i}")


@pytest.mark.parametrize("code", list(_blocks("python")))
def test_docs_python_blocks_run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from reasondistill.manager import reset_hooks

    reset_hooks()
    try:
        exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})
    finally:
        reset_hooks()


@pytest.mark.parametrize("text", list(_blocks("yaml")))
def test_docs_yaml_recipes_validate(text):
    import yaml

    from reasondistill import load_recipe
    from reasondistill.engine import Engine

    data = yaml.safe_load(text)
    if "stages" in data:
        Engine().validate(load_recipe(data))


def test_mkdocs_build_strict(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()


def test_options_reference_is_current():
    """docs/options.md is generated from the Options models; a changed option must regenerate it."""
    from reasondistill.options_doc import options_markdown

    assert (ROOT / "docs" / "options.md").read_text(encoding="utf-8") == options_markdown(), (
        "regenerate: python -m reasondistill.options_doc > docs/options.md")


def _option_models():
    """Every pydantic model the package defines: component Options, recipe sections, nested specs."""
    import importlib
    import inspect
    import pkgutil

    from pydantic import BaseModel

    import reasondistill
    import reasondistill.plugins

    for package in (reasondistill, reasondistill.plugins):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, cls in vars(module).items():
                if inspect.isclass(cls) and issubclass(cls, BaseModel) and cls.__module__ == module.__name__:
                    yield f"{module.__name__}.{name}", cls


def test_every_option_says_what_it_does():
    """docs/options.md, ``reasondistill plugins --json`` and ``serve --help`` show these; an option
    without a description is a row a user cannot act on."""
    missing = [f"{where}.{field}" for where, cls in _option_models() for field, info in cls.model_fields.items()
               if not (info.description or "").strip()]
    assert not missing, "options without a description:\n" + "\n".join(missing)
    reached = {where for where, _ in _option_models()}  # the walk reached the core and the plugins' subpackages
    assert {"reasondistill.recipe.Recipe", "reasondistill.plugins.student.distill_stage.DistillOptions",
            "reasondistill.plugins.backends.openai_options.EndpointOptions"} <= reached
