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
