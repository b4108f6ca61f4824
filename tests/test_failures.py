"""Whose code failed: ``blame`` finds the innermost frame of a registered plugin (a method of one
of its components, or a function of a plugin module), and ``one_line`` is the error a user reads.
(Through the CLI: ``reliability/test_bad_inputs``.)"""

import types
from types import SimpleNamespace

import pytest

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


def test_a_method_of_a_registered_component_is_blamed_on_the_plugin_that_registered_it(rd_hooks):
    """The component is not the plugin object (a plugin class registers instances of others): its
    owner is found through the catalogue."""
    from reasondistill import Selector, hookimpl

    class PickNothing(Selector):
        name = "pick_nothing"
        needs_probabilities = False

        def select(self, rows, probabilities, k, seed, options):
            raise ValueError("no rows to pick")

    class SelectorPlugin:
        @hookimpl
        def register_selectors(self, register):
            register(PickNothing())

    rd_hooks.register(SelectorPlugin(), "pickers")
    component = rd_hooks.catalogue.get("selector", "pick_nothing")
    exc = _raised(lambda: component.select([], None, 1, 0, None))
    assert blame(exc, rd_hooks) == ("pickers", "PickNothing.select")


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


def test_an_error_that_names_its_stage_keeps_the_innermost_name(rd_hooks):
    from reasondistill.errors import DataError
    from reasondistill.failures import stage_failures

    with pytest.raises(DataError) as exc:
        with stage_failures("active", rd_hooks):
            with stage_failures("active/round_1", rd_hooks):
                raise DataError("no rows")
    assert str(exc.value) == "stage 'active/round_1': no rows" and exc.value.stage == "active/round_1"


def test_a_model_name_offline_must_be_registered_or_a_folder(rd_hooks, tmp_path, monkeypatch):
    from reasondistill.errors import ModelError
    from reasondistill.model_refs import model_max_positions, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"model 'no-such-model' is neither a registered model \(.*tiny-encoder.*\) "
                                         r"nor a local folder"):
        resolve_model("no-such-model", rd_hooks)
    assert resolve_model("my-org/my-model", rd_hooks) == "my-org/my-model"  # a hub id: transformers' cache decides
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("no-such-model", rd_hooks) == "no-such-model"
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 77}')
    assert model_max_positions(str(tmp_path), rd_hooks.catalogue) == 77
    assert model_max_positions(str(tmp_path / "absent"), rd_hooks.catalogue) is None


def test_endpoint_accounting_adds_processes_and_subtracts_what_came_before():
    from reasondistill.generators import accounting_delta, accounting_sum

    a = {"endpoints": {"http://a": {"requests": 3, "cost": 0.25}}, "total": {"requests": 3, "cost": 0.25}}
    b = {"endpoints": {"http://a": {"requests": 2}, "http://b": {"requests": 5, "cost": 1.5}},
         "total": {"requests": 7, "cost": 1.5}}
    both = accounting_sum([a, {}, b])
    assert both == {"endpoints": {"http://a": {"requests": 5, "cost": 0.25}, "http://b": {"requests": 5, "cost": 1.5}},
                    "total": {"requests": 10, "cost": 1.75}}
    assert accounting_sum([{}, {}]) == {}
    spent = accounting_delta(a, both)
    assert spent == {"endpoints": {"http://a": {"requests": 2}, "http://b": {"requests": 5, "cost": 1.5}},
                     "total": {"requests": 7, "cost": 1.5}}


def test_a_local_teacher_that_is_not_set_is_named_before_any_stage_runs(rd_engine):
    from reasondistill import Recipe, RecipeError, step

    with pytest.raises(RecipeError, match=r"^models\.teacher: stage 'teacher_eval' \(teacher_eval\) needs a "
                                          r"teacher model; set models\.teacher$"):
        rd_engine.run(Recipe(name="x", stages=[step("pairs", n=20), step("teacher_eval", rows=3)]))
    assert not (rd_engine.runs_dir / "x").exists()  # refused at validate: the pairs stage never ran
