"""Whose code failed: ``blame`` finds the innermost frame of a registered plugin (a method of one
of its components, or a function of a plugin module), and ``one_line`` is the error a user reads.
(Through the CLI: ``reliability/test_bad_inputs``.)"""

import types
from types import SimpleNamespace

from reasondistill.failures import blame, one_line


def _raised(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_a_function_of_a_plugin_module_is_blamed_by_module_and_function(rd_hooks):
    module = types.ModuleType("my_plugin_module")
    exec("def build_index(rows):\n    raise ValueError('no rows')\n", module.__dict__)
    rd_hooks.register(module, "my_plugin")
    exc = _raised(lambda: module.build_index([]))
    assert blame(exc, rd_hooks) == ("my_plugin", "my_plugin_module.build_index")
    assert blame(_raised(lambda: [][0]), rd_hooks) == (None, None)  # no plugin frame: nobody named


def test_a_broken_catalogue_blames_nobody():
    def broken():
        raise RuntimeError("catalogue")

    hooks = SimpleNamespace(pm=SimpleNamespace(list_name_plugin=broken))
    assert blame(_raised(lambda: [][0]), hooks) == (None, None)


def test_one_line_is_the_type_and_first_line_shortened():
    assert one_line(ValueError("first line\nsecond line")) == "ValueError: first line"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(ValueError("x" * 400), limit=20) == "ValueError: xxxxx..."


def test_a_backend_given_as_a_dict_is_validated_into_its_spec():
    from reasondistill.generators import BackendSpec, effective_spec

    recipe = SimpleNamespace(backends={})
    spec = effective_spec(recipe, {"uses": "openai", "options": {"base_url": "http://x/v1"}})
    assert isinstance(spec, BackendSpec) and spec.uses == "openai" and spec.options["base_url"] == "http://x/v1"
    assert effective_spec(recipe, None) == BackendSpec()
    assert effective_spec(SimpleNamespace(backends={"teacher": spec}), None) is spec
