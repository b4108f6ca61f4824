"""Bad inputs: each gets a clear one-line error or a documented repair, never a deep traceback."""

import json

import pytest
import yaml

from reasondistill import DataError, PluginError, RecipeError, hookimpl
from reasondistill.cli import main
from reasondistill.data import load_pairs
from reasondistill.plugins.domains.local_services import LocalServices

TRIED = {"n": 0}


def jsonl(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"query": "pizza", "item": "Blue Door: pizza", "label": 2}


@pytest.mark.parametrize("rows, outcome", [
    ([GOOD, {"query": "", "item": "x"}], "repair:dropped 1 rows"),
    ([GOOD, {"query": "a\x00b", "item": "x"}], "repair:removed NUL"),
    ([GOOD, {"query": "q", "item": "x", "label": 5}], "error:outside the schema"),
    ([GOOD, {"query": "q", "item": "x", "label": "2.5"}], "error:must be an integer"),
    ([GOOD, {"query": {"a": 1}, "item": "x"}], "error:must be text"),
    ([{**GOOD, "pair_id": "a"}, {**GOOD, "pair_id": "a"}], "error:duplicate pair_id"),
    ([{"q": "x", "item": "y"}], "error:missing column 'query'"),
])
def test_bad_rows(tmp_path, rows, outcome):
    TRIED["n"] += 1
    path = jsonl(tmp_path, rows)
    kind, text = outcome.split(":", 1)
    if kind == "error":
        with pytest.raises(DataError, match=text) as exc:
            load_pairs(path, num_labels=3)
        assert "p.jsonl" in str(exc.value) and "\n" not in str(exc.value)
    else:
        ds, report = load_pairs(path, num_labels=3)
        assert any(text in r for r in report.repairs) and len(ds) >= 1


def test_invalid_utf8(tmp_path):
    TRIED["n"] += 1
    path = tmp_path / "u.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xc3\x28\n")
    with pytest.raises(DataError, match="line 2: invalid UTF-8"):
        load_pairs(path)


def test_huge_item_is_truncated_for_student_and_teacher(tiny_encoder, tiny_causal_lm):
    TRIED["n"] += 1
    from reasondistill.plugins.student.encoder import EncoderClassifier

    comp = EncoderClassifier()
    tok = comp.tokenizer(str(tiny_encoder))
    huge = "drill " * 20000  # 100k characters
    enc = comp.encode(tok, ["drill"], [huge], ["because"], comp.Options(max_length=64, reasoning_tokens=16))
    assert len(enc["std_input_ids"][0]) == 64 and len(enc["rsn_input_ids"][0]) == 80
    dom = LocalServices()
    assert dom.parse_completion(huge + "\nLabel: relevant").label == 2


def test_oversized_yaml_and_unknown_plugin(tmp_path, capsys):
    TRIED["n"] += 2
    big = tmp_path / "big.yaml"
    big.write_text("name: x\nstages: [{uses: pairs}]\n" + "# pad\n" * 300_000)
    assert main(["validate", str(big)]) == 2
    unknown = tmp_path / "u.yaml"
    unknown.write_text(yaml.safe_dump({"name": "u", "stages": [{"uses": "teleport"}]}))
    assert main(["validate", str(unknown)]) == 2
    err = capsys.readouterr().err
    assert "larger than" in err and "unknown stage 'teleport'" in err


def test_plugin_that_raises_during_a_run_is_named(rd_engine, register_plugin):
    TRIED["n"] += 1
    from reasondistill import Recipe, step

    class Crash:
        @hookimpl
        def on_stage_end(self, run, stage, result):
            raise ValueError("tracker down")

    register_plugin(Crash(), "crashing_tracker")
    with pytest.raises(PluginError, match="crashing_tracker.*on_stage_end.*tracker down"):
        rd_engine.run(Recipe(name="c", stages=[step("pairs", n=20)]))
    # the stage's result was kept: a rerun does no work
    assert (rd_engine.runs_dir / "c" / "pairs" / "manifest.json").exists()


def test_wrong_hookimpl_signature(rd_hooks):
    TRIED["n"] += 1

    class Wrong:
        @hookimpl
        def score_reasoning(self, example, completion, domain, extra):
            return {}

    with pytest.raises(PluginError, match="wrong"):
        rd_hooks.register(Wrong(), "wrong")


def test_missing_column_mapping_in_recipe_names_file(tmp_path, capsys):
    TRIED["n"] += 1
    path = jsonl(tmp_path, [{"search_term": "a", "product_title": "b"}], "hd.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "m", "stages": [{"uses": "pairs", "options": {"source": str(path)}}]}))
    assert main(["run", str(recipe), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "hd.jsonl" in err and "missing column 'query'" in err and len(err.splitlines()) == 1


def test_option_out_of_range_names_field(tmp_path):
    TRIED["n"] += 1
    from reasondistill import load_recipe
    from reasondistill.engine import Engine

    recipe = load_recipe({"name": "x", "stages": [{"uses": "pairs", "options": {"noise": 2}}]})
    with pytest.raises(RecipeError, match=r"stages\[0\]\.options\.noise: .*less than or equal to 0.5"):
        Engine(runs_dir=tmp_path).validate(recipe)
    assert not (tmp_path / "x").exists()


class _RaisingDomain(LocalServices):
    """A third-party domain with a bug in one method (chosen by ``where``)."""

    name = "buggy_domain"
    where = "generate"

    def generate(self, n, seed, noise=0.05):
        if self.where == "generate":
            raise ValueError("no towns today\nsecond line of detail")
        return super().generate(n, seed, noise)

    def parse_completion(self, text):
        if self.where == "parse_completion":
            raise KeyError("verdict")
        return super().parse_completion(text)


def _buggy(register_plugin, monkeypatch, rd_hooks, where):
    import reasondistill.manager as manager

    class P:
        @hookimpl
        def register_domains(self, register):
            dom = _RaisingDomain()
            dom.where = where
            register(dom)

    register_plugin(P(), "buggy_plugin")
    monkeypatch.setattr(manager, "_DEFAULT", rd_hooks)  # the CLI sees the test's plugin


def test_plugin_code_raising_in_a_stage_is_one_line_naming_stage_plugin_and_function(
        tmp_path, capsys, monkeypatch, rd_hooks, register_plugin):
    TRIED["n"] += 1
    _buggy(register_plugin, monkeypatch, rd_hooks, "generate")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "domain": "buggy_domain", "stages": [{"uses": "pairs"}]}))
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reasondistill: error: stage 'pairs' failed in plugin 'buggy_plugin' "
                   "(_RaisingDomain.generate): ValueError: no towns today"]
    assert main(["-v", "run", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "second line of detail" in err and err.rstrip().endswith("no towns today")


def test_domain_parse_error_names_the_domain_plugin_before_any_stage_runs(
        rd_engine, monkeypatch, rd_hooks, register_plugin, tiny_teacher):
    """A parser that raises is found by the run's dry call (it parses the domain's own formatted
    answers) before pairs or the teacher run: nothing is computed, so nothing is lost."""
    TRIED["n"] += 1
    from reasondistill import PluginError, Recipe, step

    _buggy(register_plugin, monkeypatch, rd_hooks, "parse_completion")
    recipe = Recipe(name="p", domain="buggy_domain", models={"teacher": str(tiny_teacher)},
                    stages=[step("pairs", n=20, dev_fraction=0.0),
                            step("annotate", annotator_options={"max_new_tokens": 8}, shard_size=8)])
    with pytest.raises(PluginError) as exc:
        rd_engine.run(recipe)
    assert str(exc.value) == "plugin 'buggy_plugin' failed in hook 'Domain.parse_completion': KeyError: 'verdict'"
    assert not (rd_engine.runs_dir / "p").exists()


def test_our_own_errors_inside_a_stage_gain_the_stage_name(rd_engine, tmp_path):
    TRIED["n"] += 1
    from reasondistill import Recipe, step

    from reasondistill.plugins.pipeline.pairs_stage import VALIDATE_ROWS

    # past the rows validate reads, so the stage itself meets the bad label
    path = jsonl(tmp_path, [GOOD] * (VALIDATE_ROWS + 10) + [{"query": "q", "item": "x", "label": 5}])
    with pytest.raises(DataError, match=r"^stage 'pairs': .*p\.jsonl"):
        rd_engine.run(Recipe(name="d", stages=[step("pairs", source=str(path))]))


def test_sft_max_length_shorter_than_the_prompts_fails_before_training(rd_engine):
    TRIED["n"] += 1
    from reasondistill import Recipe, step

    recipe = Recipe(name="s", models={"teacher": "tiny-causal-lm"},
                    stages=[step("pairs", n=40), step("reasoning", source="column"),
                            step("sft", max_steps=2, lora=False, max_length=48)])
    with pytest.raises(DataError, match=r"^stage 'sft': sft_data: (\d+) of \1 prompts are \d+-\d+ tokens, which leaves "
                                        r"their answers no room in max_length 48; raise max_length above \d+"):
        rd_engine.run(recipe)
    assert not (rd_engine.runs_dir / "s" / "sft" / "checkpoints").exists()
