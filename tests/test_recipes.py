"""Recipe validation, YAML loading, profiles and the CLI's exit codes."""

import re

import pytest
import yaml

from reasondistill import RecipeError, load_recipe
from reasondistill.cli import main
from reasondistill.engine import Engine


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


GOOD = {"name": "good", "models": {"student": "tiny-encoder"},
        "stages": [{"uses": "pairs", "options": {"n": 50}},
                   {"uses": "distill", "options": {"train_input": "pairs", "reasoning_column": "rationale"}}]}


@pytest.mark.parametrize("patch, field", [
    ({"stages": [{"uses": "nope"}]}, "stages[0].uses"),
    ({"stages": [{"uses": "pairs", "options": {"n": "many"}}]}, "stages[0].options.n"),
    ({"stages": [{"uses": "pairs", "options": {"bogus": 1}}]}, "stages[0].options.bogus"),
    ({"stages": [{"uses": "pairs"}, {"uses": "distill", "options": {"loss": "nope"}}]}, "stages[1].options.loss"),
    ({"stages": [{"uses": "pairs"}, {"uses": "distill", "options": {"loss_options": {"temperature": "x"}}}]},
     "stages[1].options.loss_options.temperature"),
    ({"stages": [{"uses": "pairs"}, {"uses": "distill", "options": {"loss": "ce", "loss_options": {"w_nce": 1}}}]},
     "stages[1].options.loss_options.w_nce"),
    ({"seed": "abc"}, "seed"),
    ({"domain": "mars"}, "domain"),
    ({"domain_options": {"typo": 1}}, "domain_options.typo"),
    ({"models": {"student": "tiny-causal-lm"}}, "models.student"),  # a causal LM cannot be the student
    ({"models": {"teacher": "tiny-encoder", "student": "tiny-encoder"}}, "models.teacher"),
    ({"stages": [{"uses": "pairs"}, {"uses": "distill", "inputs": {"pairs": "nowhere"}}]}, "stages[1].inputs.pairs"),
    ({"reward_weights": {"labl_agreement": 2.0}}, "reward_weights.labl_agreement"),
    ({"domain": "product_search"}, "stages[0].options.source"),  # no generator behind source: generate
    ({"stages": [{"uses": "pairs"}, {"uses": "reasoning", "options": {"source": "domain"}}]},
     "stages[1].options.source"),  # local_services writes no rationale
    ({"stages": [{"uses": "pairs"}, {"uses": "distill", "options": {"domain_rationale": True}}]},
     "stages[1].options.domain_rationale"),
    ({"unknown_key": 1}, "unknown_key"),
    ({"stages": []}, "stages"),
])
def test_invalid_recipe_exits_2_naming_field(tmp_path, capsys, patch, field):
    path = write(tmp_path, {**GOOD, **patch})
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f": {field}:" in err, err
    assert not runs.exists(), "nothing may be written for an invalid recipe"


def test_unknown_component_lists_registered_names(tmp_path, capsys):
    path = write(tmp_path, {**GOOD, "stages": [{"uses": "pairs"}, {"uses": "distill", "options": {"loss": "nope"}}]})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "crsd" in err and "kd" in err and "ce" in err


def test_validate_ok_and_builtin_names(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, GOOD))]) == 0
    assert main(["validate", "quickstart"]) == 0
    assert main(["validate", "quickstart", "--profile", "tiny"]) == 0
    assert main(["validate", "quickstart", "--profile", "huge"]) == 2
    assert main(["validate", "no-such-recipe"]) == 2
    out = capsys.readouterr()
    assert "valid" in out.out and "no built-in recipe" in out.err


def test_profile_merges_models_and_stage_options():
    recipe = load_recipe("quickstart", profile="tiny")
    assert recipe.models["student"] == "tiny-encoder"
    distill = next(s for s in recipe.stages if s.uses == "distill")
    assert distill.options["learning_rate"] == 0.001 and distill.options["loss"] == "crsd"


def test_yaml_is_safe_loaded_and_size_limited(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML: could not determine a constructor"):
        load_recipe(write(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\nstages: []"))
    big = write(tmp_path, "name: x\n" + "#" * 1_100_000, "big.yaml")
    with pytest.raises(RecipeError, match="larger than 1000000 bytes"):
        load_recipe(big)
    limit = write(tmp_path, "name: x\nstages: [{uses: pairs}]\n#" + "#" * (1_000_000 - 33), "limit.yaml")
    assert limit.stat().st_size == 1_000_000 and load_recipe(limit).name == "x"  # the limit itself is allowed
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_profiles_merge_nested_mappings_and_replace_the_rest():
    raw = {"name": "p", "models": {"teacher": "a", "student": "b"}, "seed": 1,
           "stages": [{"uses": "pairs", "options": {"n": 50, "noise": 0.1}}],
           "profiles": {"small": {"models": {"student": "c"}, "seed": [2],
                                  "stages": {"pairs": {"options": {"n": 20}}}}}}
    merged = __import__("reasondistill.recipe", fromlist=["apply_profile"]).apply_profile(raw, "small")
    assert merged["models"] == {"teacher": "a", "student": "c"} and merged["seed"] == [2]
    assert merged["stages"][0]["options"] == {"n": 20, "noise": 0.1}


def test_a_profile_switches_the_teacher_backend_without_the_other_backends_options():
    """Endpoints for the real run, a local model for --profile tiny: the spec is replaced, not merged."""
    from reasondistill.engine import Engine

    raw = {"name": "p", "models": {"teacher": "tiny-causal-lm"}, "stages": [{"uses": "pairs"}],
           "backends": {"teacher": {"uses": "openai", "options": {
               "model": "m", "endpoints": [{"base_url": "http://a/v1"}, {"base_url": "http://b/v1"}]}}},
           "profiles": {"tiny": {"backends": {"teacher": {"uses": "transformers"}}},
                        "fewer": {"backends": {"teacher": {"uses": "openai", "options": {"concurrency": 2}}}}}}
    local = load_recipe(raw, "tiny")
    assert local.backends["teacher"].uses == "transformers" and local.backends["teacher"].options == {}
    Engine().validate(local)
    served = load_recipe(raw, "fewer")  # the same backend: its options merge
    assert served.backends["teacher"].options["concurrency"] == 2 and len(served.backends["teacher"].options["endpoints"]) == 2
    assert load_recipe(raw).backends["teacher"].uses == "openai"


def test_long_bad_values_are_shortened_in_the_error():
    with pytest.raises(RecipeError) as exc:
        load_recipe({"name": "x", "seed": "s" * 200, "stages": [{"uses": "pairs"}]})
    assert "(got '" + "s" * 59 + "...)" in str(exc.value) and len(str(exc.value)) < 200
    with pytest.raises(RecipeError) as exc:  # a value of exactly 60 characters is shown whole
        load_recipe({"name": "x", "seed": "s" * 58, "stages": [{"uses": "pairs"}]})
    assert "(got '" + "s" * 58 + "')" in str(exc.value)


def test_duplicate_stage_names_rejected():
    with pytest.raises(RecipeError, match="used twice"):
        load_recipe({"name": "d", "stages": [{"uses": "pairs"}, {"uses": "pairs"}]})


def test_python_and_yaml_recipes_hash_alike(tmp_path, rd_hooks):
    from reasondistill import Recipe, step

    py = Recipe(name="same", models={"student": "tiny-encoder"},
                stages=[step("pairs", n=50), step("distill", train_input="pairs", reasoning_column="rationale")])
    yml = load_recipe(write(tmp_path, GOOD))
    engine = Engine(rd_hooks, tmp_path)
    a = [s.options.model_dump() for s in engine.validate(py)]
    b = [s.options.model_dump() for s in engine.validate(yml)]
    assert a == b


def test_cli_help_everywhere(capsys):
    for argv in (["--help"], ["run", "--help"], ["validate", "--help"], ["plugins", "--help"],
                 ["recipes", "--help"], ["show", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_cli_recipes_lists_builtins(capsys):
    assert main(["recipes"]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_cli_show_missing_run(tmp_path, capsys):
    assert main(["show", "ghost", "--runs-dir", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def _builtin_recipe_profiles():
    from reasondistill.recipe import builtin_recipes

    out = []
    for name, path in builtin_recipes().items():
        profiles = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("profiles") or {}
        out += [(name, None)] + [(name, p) for p in profiles]
    return out


@pytest.mark.parametrize("name, profile", _builtin_recipe_profiles())
def test_every_builtin_recipe_and_profile_validates(name, profile):
    """A shipped recipe that names a stage, option or component that does not exist fails here."""
    recipe = load_recipe(name, profile)
    stages = Engine().validate(recipe, source=name)
    assert [s.spec.stage_name for s in stages] == [s.stage_name for s in recipe.stages]


@pytest.mark.parametrize("stage, options, field", [
    ("distill", {"train_input": "nope.pairs"}, "train_input"),
    ("distill", {"sources": [{"input": "pairs"}, {"input": "gold.pairs", "reasoning_from": "star.sft_data"}]},
     "sources[1].input"),
    ("annotate", {"input": "later.pairs"}, "input"),
])
def test_an_option_naming_a_stage_that_is_not_earlier_fails_validate(rd_engine, stage, options, field):
    """``stage.output`` in an option names a stage: one that does not exist (or runs later) is a
    validate error naming the option, not an error after the stages before it have run."""
    from reasondistill import RecipeError, Recipe, step

    models = {"student": "tiny-encoder", "teacher": "tiny-causal-lm"}
    recipe = Recipe(name="refs", models=models, stages=[step("pairs", n=20), step(stage, **options),
                                                        step("pairs", name="later")])
    with pytest.raises(RecipeError, match=rf"stages\[1\]\.options\.{__import__('re').escape(field)}: '.*' names stage "
                                          r"'\w+', which is not an earlier stage \(earlier stages: pairs\)"):
        rd_engine.validate(recipe)
    rd_engine.validate(Recipe(name="refs", models=models, stages=[step("pairs", n=20), step(stage)]))  # defaults: none


@pytest.mark.parametrize("loss, student_options, message", [
    ("ce", {"max_length": 100000}, r"student_options\.max_length: 100000 is above the 512 positions of the student "
                                   r"model 'tiny-encoder'; at most 512"),
    ("crsd", {"max_length": 400, "reasoning_tokens": 200}, r"student_options\.reasoning_tokens: max_length 400 \+ "
                                                           r"reasoning_tokens 200 = 600 is above the 512 positions "
                                                           r"of the student model 'tiny-encoder' \(the reasoning view "
                                                           r"reads both\); at most 112"),
])
def test_a_token_budget_beyond_the_students_positions_fails_validate(rd_engine, loss, student_options, message):
    from reasondistill import Recipe, step

    def recipe(opts):
        return Recipe(name="len", models={"student": "tiny-encoder"}, stages=[
            step("pairs", n=20), step("distill", train_input="pairs", loss=loss, reasoning_column="rationale",
                                      student_options=opts)])

    with pytest.raises(RecipeError, match=r"stages\[1\]\.options\." + message):
        rd_engine.validate(recipe(student_options))
    rd_engine.validate(recipe({"max_length": 512, "reasoning_tokens": 0}))  # at the limit: accepted
    if loss == "ce":  # the reasoning view is never encoded: its budget is not counted
        rd_engine.validate(recipe({"max_length": 512, "reasoning_tokens": 128}))


def test_model_max_positions_reads_a_local_folder(tmp_path):
    import json

    from reasondistill.manager import Hooks
    from reasondistill.model_refs import model_max_positions

    catalogue = Hooks().catalogue
    assert model_max_positions("all-minilm-l6-v2", catalogue) == 512
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    assert model_max_positions(str(tmp_path), catalogue) == 256
    assert model_max_positions("org/unknown-hub-model", catalogue) is None


def test_reward_weights_naming_no_declared_dimension_fail_validate(rd_engine):
    from reasondistill import Recipe, step

    recipe = Recipe(name="w", reward_weights={"faithfulnes": 2.0}, stages=[step("pairs", n=20)])
    with pytest.raises(RecipeError, match=r"reward_weights\.faithfulnes: no scorer plugin scores this dimension; "
                                          r"declared: .*faithfulness"):
        rd_engine.validate(recipe)
    rd_engine.validate(Recipe(name="w", reward_weights={"faithfulness": 2.0}, stages=[step("pairs", n=20)]))


@pytest.mark.parametrize("uses, option, limit, beyond", [
    ("distill", "learning_rate", 1, 1.5),
    ("distill", "epochs", 10000, 10001),
    ("distill", "max_steps", -1, -2),
    ("sft", "learning_rate", 1, 2),
    ("preference", "candidates", 64, 65),
    ("preference", "temperature", 5, 5.5),
    ("annotate", "annotator_options.self_consistency", 64, 65),
    ("annotate", "annotator_options.retries", 20, 21),
    ("annotate", "min_parse_rate", 1, 1.01),
])
def test_numeric_options_have_sane_bounds_checked_on_the_boundary(rd_engine, uses, option, limit, beyond):
    """The value at the limit is accepted; one past it fails validate naming the option and the limit."""
    from reasondistill import Recipe, step

    def recipe(value):
        head, _, leaf = option.rpartition(".")
        options = {head: {leaf: value}} if head else {option: value}
        return Recipe(name="b", models={"teacher": "tiny-causal-lm", "student": "tiny-encoder"},
                      stages=[step("pairs", n=20), step(uses, **options)])

    rd_engine.validate(recipe(limit))
    with pytest.raises(RecipeError, match=rf"stages\[1\]\.options\.{re.escape(option)}: .*(less|greater) than or "
                                          rf"equal to {re.escape(str(limit))}"):
        rd_engine.validate(recipe(beyond))


SERVED = {"uses": "openai", "options": {"model": "m"}}


@pytest.mark.parametrize("uses, options, role", [
    ("dapt", {}, "teacher"), ("sft", {}, "teacher"), ("preference", {}, "teacher"),
    ("reasoning", {"source": "rationalize"}, "teacher"), ("teacher_eval", {}, "teacher"), ("annotate", {}, "teacher"),
    ("distill", {"train_input": "pairs"}, "student"),
    ("active", {"input": "pairs", "labeled": "pairs", "annotator": "gold"}, "student"),
    ("active", {"input": "pairs", "labeled": "pairs"}, "teacher"),
])
def test_a_stage_needing_a_model_the_recipe_does_not_set_fails_validate(rd_engine, uses, options, role):
    """Found at validate, naming the role and the stage, not when the stages before it have run."""
    from reasondistill import Recipe, step

    models = {"teacher": "tiny-causal-lm", "student": "tiny-encoder"}
    recipe = Recipe(name="roles", models={k: v for k, v in models.items() if k != role},
                    stages=[step("pairs", n=20), step(uses, **options)])
    with pytest.raises(RecipeError, match=rf"^models\.{role}: stage '{uses}' \({uses}\) needs a {role} model; "
                                          rf"set models\.{role}$"):
        rd_engine.validate(recipe)
    rd_engine.validate(recipe.model_copy(update={"models": models}))


@pytest.mark.parametrize("uses, options", [
    ("teacher_eval", {"backend": SERVED}), ("annotate", {"annotator_options": {"backend": SERVED}}),
    ("annotate", {"annotator": "gold"}), ("reasoning", {"source": "rationalize", "backend": SERVED}),
    ("reasoning", {"source": "column_then_rationalize"}),  # whether rows lack a chain is known only at run time
    ("annotate", {"annotator": "no_model"}),  # a third party's annotator declares no role by default
])
def test_a_served_teacher_or_no_teacher_needs_no_models_teacher(rd_engine, register_plugin, uses, options):
    from reasondistill import Annotator, Recipe, hookimpl, step

    class NoModel(Annotator):
        name = "no_model"

        def annotate(self, ctx, pairs, teacher, options):
            return pairs

    class Plugin:
        @hookimpl
        def register_annotators(self, register):
            register(NoModel())

    register_plugin(Plugin(), "no-model")

    rd_engine.validate(Recipe(name="roles", models={"student": "tiny-encoder"},
                              stages=[step("pairs", n=20), step(uses, **options)]))
    served = Recipe(name="roles", models={"student": "tiny-encoder"}, backends={"teacher": SERVED},
                    stages=[step("pairs", n=20), step(uses, **{k: v for k, v in options.items() if k != "backend"})])
    rd_engine.validate(served)  # the recipe's backends.teacher serves it
