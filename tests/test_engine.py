"""Recipes through the engine: skip, rerun-after-change, force, resume, corruption."""

import json

import pytest

from reasondistill import Recipe, RecipeError, Stage, hookimpl, step
from reasondistill.recipe import StageSpec
from reasondistill.runstore import MANIFEST, STATE

from .counting import CALLS, CountingPlugin


@pytest.fixture
def engine(rd_engine, register_plugin):
    register_plugin(CountingPlugin(), "counting")
    CALLS.clear()
    return rd_engine


def three(a=1, b=2, c=3, **kw):
    return Recipe(name="count3", stages=[step("count", name="a", value=a), step("count", name="b", value=b, **kw),
                                         step("count", name="c", value=c)])


def test_rerun_does_no_work(engine):
    engine.run(three())
    assert (CALLS["a"], CALLS["b"], CALLS["c"]) == (1, 1, 1)
    results = engine.run(three())
    assert (CALLS["a"], CALLS["b"], CALLS["c"]) == (1, 1, 1)
    assert all(r.skipped for r in results.values())
    assert results["b"].metrics == {"value": 2}


def test_changing_one_stage_reruns_it_and_later_only(engine):
    engine.run(three())
    engine.run(three(b=20))
    assert (CALLS["a"], CALLS["b"], CALLS["c"]) == (1, 2, 2)
    # c read b's fresh output
    assert (engine.runs_dir / "count3" / "c" / "parts" / "0.txt").read_text() == "3:b=20"


def test_force_reruns_stage_and_after(engine):
    engine.run(three())
    engine.run(three(), force=["b"])
    assert (CALLS["a"], CALLS["b"], CALLS["c"]) == (1, 2, 2)
    with pytest.raises(RecipeError, match="--force"):
        engine.run(three(), force=["nope"])


def test_cut_off_stage_resumes(engine):
    with pytest.raises(KeyboardInterrupt):
        engine.run(three(fail_at=2))
    b_dir = engine.runs_dir / "count3" / "b"
    assert not (b_dir / MANIFEST).exists() and len(list((b_dir / "parts").iterdir())) == 2
    engine.run(three(fail_at=2))
    assert CALLS["b:resumed_at_2"] == 1 and CALLS["a"] == 1
    assert (b_dir / MANIFEST).exists()


def test_changed_hash_discards_partial_work(engine):
    with pytest.raises(KeyboardInterrupt):
        engine.run(three(fail_at=1))
    engine.run(three(b=7))
    assert CALLS["b:resumed_at_1"] == 0
    assert sorted(p.read_text() for p in (engine.runs_dir / "count3" / "b" / "parts").iterdir()) == ["7:a=1"] * 3


@pytest.mark.parametrize("state", ["{not json", '{"hash": "another"}', ""])
def test_unreadable_or_foreign_state_discards_partial_work(engine, state):
    """Only a state file naming this stage's hash lets a run resume; anything else starts over."""
    with pytest.raises(KeyboardInterrupt):
        engine.run(three(fail_at=2))
    state_path = engine.runs_dir / "count3" / "b" / STATE
    if state:
        state_path.write_text(state)
    else:
        state_path.unlink()
    engine.run(three())
    assert CALLS["b:resumed_at_2"] == 0
    assert len(list((engine.runs_dir / "count3" / "b" / "parts").iterdir())) == 3


def test_corrupted_output_is_recomputed(engine):
    engine.run(three())
    (engine.runs_dir / "count3" / "b" / "result.txt").write_text("tampered")
    engine.run(three())
    assert (CALLS["a"], CALLS["b"], CALLS["c"]) == (1, 2, 2)
    assert (engine.runs_dir / "count3" / "b" / "result.txt").read_text() == "b=2"


def test_edited_manifest_is_recomputed(engine):
    engine.run(three())
    path = engine.runs_dir / "count3" / "a" / MANIFEST
    data = json.loads(path.read_text())
    data["metrics"]["value"] = 99
    path.write_text(json.dumps(data))
    engine.run(three())
    assert CALLS["a"] == 2
    assert json.loads(path.read_text())["metrics"]["value"] == 1


def test_manifest_records_versions_timings_and_inputs(engine):
    engine.run(three())
    m = json.loads((engine.runs_dir / "count3" / "b" / MANIFEST).read_text())
    assert m["versions"]["torch"] and m["versions"]["pluggy"]
    assert m["timings"]["seconds"] >= 0
    assert m["timings"]["ended"] == pytest.approx(m["timings"]["started"] + m["timings"]["seconds"])
    assert m["inputs"] == {"a": {"result": "a/result.txt"}}
    assert m["outputs"]["result"]["fingerprint"].startswith("sha256:")


def test_explicit_inputs(engine):
    recipe = Recipe(name="x", stages=[step("count", name="a", value=1), step("count", name="b", value=2),
                                      step("count", name="c", value=3, inputs={"result": "a"})])
    engine.run(recipe)
    assert (engine.runs_dir / "x" / "c" / "parts" / "0.txt").read_text() == "3:a=1"
    bad = Recipe(name="y", stages=[step("count", name="a", inputs={"result": "zzz"})])
    with pytest.raises(RecipeError, match=r"stages\[0\].inputs.result"):
        engine.run(bad)


def test_a_stage_seed_pins_that_stage_across_recipe_seeds(engine):
    import random

    def recipe(seed, pinned=7):
        return Recipe(name="seeds", seed=seed, stages=[StageSpec(uses="draw", name="teacher", seed=pinned),
                                                       StageSpec(uses="draw", name="student")])

    first = engine.run(recipe(0))
    random.seed(7)
    assert first["teacher"].metrics["seed"] == 7 and first["student"].metrics["seed"] == 0
    assert (engine.runs_dir / "seeds" / "teacher" / "draw.txt").read_text() == str(random.random())
    other = engine.run(recipe(1))  # the pinned stage keeps its hash; the student reruns under seed 1
    assert other["teacher"].skipped and not other["student"].skipped
    assert other["student"].metrics["seed"] == 1 and (CALLS["teacher"], CALLS["student"]) == (1, 2)
    # a stage seed equal to the recipe's is the same stage as one without
    engine.run(Recipe(name="seeds", seed=7, stages=[StageSpec(uses="draw", name="teacher")]))
    assert CALLS["teacher"] == 1
    engine.run(recipe(1, pinned=8))
    assert CALLS["teacher"] == 2


def test_an_option_added_later_leaves_hashes_alone_at_its_default():
    """``json_schema_extra={"hash": "unless_default"}``: the option is in a stage's hash only when
    set away from its default, so adding it did not rerun stages cached before it existed."""
    from reasondistill.stage_hash import options_view
    from reasondistill.plugins.teacher.sft import SFTOptions

    assert "group_by_length" not in options_view(SFTOptions())
    assert "group_by_length" not in options_view(SFTOptions(group_by_length=False))
    assert options_view(SFTOptions(group_by_length=True))["group_by_length"] is True
    assert options_view(SFTOptions(lora_layers=10))["lora_layers"] == 10  # the others are always in


def test_nested_component_options_are_typed_and_hash_and_dump_as_their_mapping(rd_hooks):
    """A stage's validated options carry the student's and the loss's own Options models (typed from
    the recipe to the component); the manifest and the stage hash still see the mapping, so caches
    made when they were plain dicts stay valid. A student option added since (``added_token_init``,
    ``hash: unless_default``) was in no such mapping, and at its default it stays out of the hash."""
    from reasondistill.stage_hash import options_view, stage_options_view

    catalogue = rd_hooks.catalogue
    distill = catalogue.get("stage", "distill")
    typed = distill.options({"loss": "kd", "student_options": {"max_length": 64}, "loss_options": {"temperature": 3.0}},
                            context={"catalogue": catalogue})
    assert isinstance(typed.student_options, catalogue.get("student", "encoder-classifier").Options)
    assert typed.student_options.max_length == 64 and typed.loss_options.temperature == 3.0
    dumped = typed.model_dump(mode="json")
    assert dumped["student_options"] == typed.student_options.model_dump(mode="json")
    assert dumped["student_options"].pop("added_token_init") == "mean"  # not in a mapping written before it
    as_mappings = typed.model_copy(update={"student_options": dumped["student_options"],
                                           "loss_options": dumped["loss_options"]})
    assert options_view(typed) == options_view(as_mappings)
    assert stage_options_view(typed, catalogue) == stage_options_view(as_mappings, catalogue)
    with pytest.raises(Exception, match="mapping"):
        distill.Options(student_options=["max_length", 64])


class StageEnds:
    """Records what the engine tells ``on_stage_end`` implementers."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def on_stage_end(self, run, stage, result):
        self.seen.append((run.name, stage, result.skipped))


def test_every_stage_end_reaches_the_plugins_under_the_runs_name(engine, register_plugin):
    ends = StageEnds()
    register_plugin(ends, "ends")
    engine.run(three())
    engine.run(three(), name="again")
    assert ends.seen == [("count3", s, False) for s in "abc"] + [("again", s, False) for s in "abc"]


class Broken(Stage):
    name = "broken"
    description = "fails before it writes anything; or, with the option, in its dry call"

    class Options(Stage.Options):
        in_preflight: bool = False

    def preflight(self, check, options):
        if options.in_preflight:
            raise ValueError("refused in the dry call")

    def run(self, ctx, options):
        raise ValueError("broken before any work")


class BrokenPlugin:
    @hookimpl
    def register_stages(self, register):
        register(Broken())


def test_a_stage_that_fails_before_any_work_leaves_no_folder(engine, register_plugin):
    register_plugin(BrokenPlugin(), "broken")
    with pytest.raises(Exception, match="broken before any work"):
        engine.run(Recipe(name="fails", stages=[step("count", name="a"), step("broken")]))
    run = engine.runs_dir / "fails"
    assert (run / "a" / MANIFEST).exists() and not (run / "broken").exists()


def test_every_run_dry_calls_its_stages_before_the_first_one_runs(engine, register_plugin):
    """``Engine``'s default: the preflight is on, so a stage refused in its dry call costs no earlier stage's work."""
    register_plugin(BrokenPlugin(), "broken")
    with pytest.raises(Exception, match="refused in the dry call"):
        engine.run(Recipe(name="dry", stages=[step("count", name="a"), step("broken", in_preflight=True)]))
    assert CALLS["a"] == 0 and not (engine.runs_dir / "dry").exists()


def test_only_a_recipe_that_trusts_remote_code_is_warned_about_it(engine, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="reasondistill"):
        engine.run(three())
        assert "trust_remote_code" not in caplog.text
        engine.run(three().model_copy(update={"trust_remote_code": True}), name="trusting")
    assert "recipe count3 sets trust_remote_code: code shipped with models will run" in caplog.text
