"""Every plugin a run uses is dry-called on its own rows before any stage runs (issue 33, item 2).

A scorer that returned ``None`` once failed only after ``sft`` had trained; a parser that cannot
read its own domain's answers made every annotation -1. The run (and ``validate --deep``) now finds
both before the first stage, naming the plugin, and writes nothing.
"""

from pathlib import Path

import numpy as np
import pytest

from reasondistill import PluginError, Recipe, hookimpl, step
from reasondistill.plugins.domains.local_services import LocalServices


def teacher_recipe(**sft) -> Recipe:
    options = {"max_steps": 1, "batch_size": 2, "max_length": 128, "eval_rows": 2, "eval_max_new_tokens": 4, **sft}
    return Recipe(name="pre", models={"teacher": "tiny-causal-lm"}, seed=1, stages=[
        step("pairs", n=60), step("reasoning", source="column", limit=16), step("sft", **options)])


def scorer(value):
    class Scorer:
        @hookimpl
        def reward_dimensions(self):
            return ["mine"]

        @hookimpl
        def score_reasoning(self, example, completion, domain):
            return {"mine": value}

    return Scorer()


@pytest.mark.parametrize("value, message", [
    (None, "score None is not a number"),
    ("0.5", "score '0.5' is not a number"),
    (float("nan"), "score nan is outside"),
    (1.5, "score 1.5 is outside"),
])
def test_a_bad_scorer_fails_before_the_first_stage(rd_engine, register_plugin, value, message):
    register_plugin(scorer(value), "my_scorer")
    with pytest.raises(PluginError, match=rf"stage 'sft': plugin 'my_scorer' failed in hook 'score_reasoning': "
                                          rf"dimension 'mine': {message}"):
        rd_engine.run(teacher_recipe())
    assert not rd_engine.runs_dir.exists()  # not even pairs ran


def test_a_numpy_score_is_a_number(rd_hooks, register_plugin):
    register_plugin(scorer(np.float32(0.25)), "my_scorer")
    vec = rd_hooks.score_reasoning({"query": "q", "item": "i"}, "Reasoning: ok\nLabel: relevant", LocalServices())
    assert vec["mine"] == 0.25 and type(vec["mine"]) is float


def test_a_stage_that_scores_nothing_does_not_call_the_scorers(rd_engine, register_plugin):
    """sft without dev evaluation never scores: a broken scorer is no reason to refuse that run."""
    register_plugin(scorer(None), "my_scorer")
    from reasondistill.preflight import Preflight

    check = Preflight(teacher_recipe(), LocalServices(), rd_engine.hooks, [{"query": "q", "item": "i", "label": 1}],
                      resolve=str)
    quiet = rd_engine.validate(teacher_recipe(eval_rows=0))[-1]
    quiet.component.preflight(check, quiet.options)  # no scorer called, no error
    scoring = rd_engine.validate(teacher_recipe())[-1]
    with pytest.raises(PluginError, match="'my_scorer' failed in hook 'score_reasoning'"):
        scoring.component.preflight(check, scoring.options)


class Deaf(LocalServices):
    """A domain whose parser cannot read what its own format_completion writes."""

    name = "deaf_services"

    def parse_completion(self, text):
        return super().parse_completion(text.replace("Label:", "Verdict:"))


class Mute(LocalServices):
    name = "mute_services"

    def messages(self, row):
        return "Is this relevant?"


@pytest.mark.parametrize("domain, message", [
    (Deaf(), r"'deaf' failed in hook 'Domain\.parse_completion': reads .* \(label 'irrelevant', written by "
             r"format_completion\) as None: the teacher's answers would not parse"),
    (Mute(), r"'mute' failed in hook 'Domain\.messages': must return a list of \{role, content\} dicts"),
])
def test_a_domain_that_cannot_read_its_own_answers_fails_before_any_stage(rd_engine, register_plugin, domain, message):
    class P:
        @hookimpl
        def register_domains(self, register):
            register(domain)

    register_plugin(P(), domain.name.split("_")[0])
    recipe = Recipe(name="pre", domain=domain.name, stages=[step("pairs", n=20)])
    with pytest.raises(PluginError, match=message):
        rd_engine.run(recipe)
    assert not rd_engine.runs_dir.exists()


def test_validate_deep_dry_calls_without_writing(tmp_path, monkeypatch, capsys):
    from reasondistill.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["validate", "quickstart", "--profile", "tiny", "--deep"]) == 0
    assert "every plugin dry-called on 4 rows" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_failure_after_training_keeps_the_teacher_and_the_rerun_reuses_it(rd_engine, register_plugin):
    """sft trains, saves, then its dev evaluation fails in a scorer plugin: the rerun resumes with
    the trained teacher instead of training again from step 0."""
    from reasondistill import PluginError, hookimpl

    class Broken:
        @hookimpl
        def reward_dimensions(self):
            return ["down"]

        @hookimpl
        def score_reasoning(self, example, completion, domain):
            if not domain.parse_completion(completion).ok:  # well-formed answers (the dry call's) pass
                raise RuntimeError("scorer down")
            return {"down": 1.0}

    recipe = Recipe(name="keep", models={"teacher": "tiny-causal-lm"},
                    stages=[step("pairs", n=60), step("reasoning", source="column"),
                            step("sft", max_steps=2, lora=False, batch_size=2, max_length=320, eval_rows=2,
                                 eval_max_new_tokens=8)])
    name = register_plugin(Broken(), "broken_scorer")
    with pytest.raises(PluginError, match="scorer down"):
        rd_engine.run(recipe)
    weights = rd_engine.runs_dir / "keep" / "sft" / "teacher" / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns
    rd_engine.hooks.unregister(name)
    m = rd_engine.run(recipe)["sft"].metrics
    assert m["resumed_from"] == "trained" and m["steps"] == 2
    assert weights.stat().st_mtime_ns == trained_at and "teacher_macro_f1" in m


@pytest.mark.parametrize("messages", ["Is this relevant?", [], [{"role": "user"}], [{"role": 1, "content": "x"}],
                                      [{"role": "user", "content": None}], ["user: x"],
                                      [{"role": "system", "content": "s"}, {"content": "x"}]])
def test_every_malformed_prompt_is_named(messages):
    """Each part of the chat-message shape is checked: a list, not empty, of dicts whose role and
    content are text; one bad message among good ones is enough."""
    from reasondistill.preflight import check_domain

    class Odd(LocalServices):
        def messages(self, row):
            return messages

    with pytest.raises(PluginError, match=r"'odd' failed in hook 'Domain\.messages'"):
        check_domain(Odd(), [{"query": "q", "item": "i"}], "odd")
    check_domain(LocalServices(), [{"query": "q", "item": "i"}], "fine")


def test_the_dry_call_uses_a_row_label_only_when_it_is_one_of_the_domains():
    from reasondistill.preflight import Preflight

    check = Preflight(recipe=None, domain=LocalServices(), hooks=None, rows=[], resolve=str)
    n = len(LocalServices().labels)
    got = [check.label({"label": v}) for v in (0, n - 1, n, -1, "1", None, 1.0)]
    assert got == [0, n - 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("rows", ["pairs", [{"query": "q"}], [{"item": "i"}], [("q", "i")],
                                  [{"query": "q", "item": "i"}, {"query": "q2"}]])
def test_a_domain_generator_returning_rows_without_query_and_item_is_named(rd_hooks, rows):
    from types import SimpleNamespace

    from reasondistill.preflight import sample_rows

    class Broken(LocalServices):
        def generate(self, n, seed, noise=0.0):
            return rows

    with pytest.raises(PluginError, match=r"'broken' failed in hook 'Domain\.generate': must return a list of dicts"):
        sample_rows(SimpleNamespace(seed=0), [], Broken(), "broken", rd_hooks)
    good = sample_rows(SimpleNamespace(seed=0), [], LocalServices(), "fine", rd_hooks)
    assert 0 < len(good) <= 10 and all({"query", "item"} <= set(r) for r in good)


def test_the_dry_call_reads_the_pairs_file_the_run_will_read(rd_engine, tmp_path, monkeypatch):
    """Whatever the file is called (a relative name sorts after ``generate`` too), the dry call
    samples its rows, not the domain's generator."""
    import json

    from reasondistill.preflight import sample_rows

    monkeypatch.chdir(tmp_path)
    rows = [{"query": f"zebra {i}", "item": f"stripes {i}", "label": i % 3} for i in range(12)]
    Path("zz-pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = Recipe(name="pre", stages=[step("pairs", source="zz-pairs.jsonl")])
    stages = rd_engine.validate(recipe)
    got = sample_rows(recipe, stages, LocalServices(), "local_services", rd_engine.hooks)
    assert got and all(r["query"].startswith("zebra") for r in got)
