"""A teacher whose answers do not parse stops the stage, loud, keeping what it wrote (issue 33, item 5).

The untrained tiny causal LM writes no ``Label:`` line at all: a 0% parse rate, the outcome that
once ended ``annotate`` "done" with every row labelled -1.
"""

import logging

import pytest

from reasondistill import DataError, Recipe, step
from reasondistill.plugins.annotation.parse_health import ParseHealthOptions, ParseMonitor, likely_cause

ANNOTATOR = {"max_new_tokens": 8, "batch_size": 8, "retries": 0}


def annotate_recipe(**options) -> Recipe:
    return Recipe(name="parse", models={"teacher": "tiny-causal-lm"}, seed=2, stages=[
        step("pairs", n=60, dev_fraction=0.0),
        step("annotate", shard_size=20, annotator_options=ANNOTATOR, **options)])


def test_annotate_stops_after_the_first_shard_and_keeps_it(rd_engine):
    with pytest.raises(DataError, match=r"annotate: the teacher's answers parsed in 0 of 20 rows \(0\.0%\), below "
                                        r"min_parse_rate 0\.5\. Likely cause: 100% of the unparsed answers used the "
                                        r"whole token budget \(max_new_tokens 8\).* The shards written are "
                                        r"kept in .*annotations_shards; a rerun resumes from them"):
        rd_engine.run(annotate_recipe())
    shards = rd_engine.runs_dir / "parse" / "annotate" / "annotations_shards"
    assert sorted(p.name for p in shards.glob("*.jsonl")) == ["shard-00000.jsonl"]  # one shard, kept
    assert not (rd_engine.runs_dir / "parse" / "annotate" / "manifest.json").exists()


def test_on_low_parse_warn_goes_on_and_records_the_rate(rd_engine, caplog):
    with caplog.at_level(logging.WARNING, logger="reasondistill"):
        res = rd_engine.run(annotate_recipe(on_low_parse="warn"))["annotate"]
    assert res.metrics["parse_rate"] == 0.0 and res.metrics["first_try_parse_rate"] == 0.0
    assert res.metrics["pairs"] == 60
    assert sum("below min_parse_rate" in r.message for r in caplog.records) == 1  # once, not per shard


def test_the_threshold_is_inclusive_and_zero_turns_it_off():
    monitor = ParseMonitor("annotate", ParseHealthOptions(min_parse_rate=0.5))
    monitor.add([True, False], [3, 3])
    monitor.check()  # exactly at the limit: accepted
    monitor.add([False], [3])
    with pytest.raises(DataError, match="parsed in 1 of 3 rows"):
        monitor.check()
    off = ParseMonitor("annotate", ParseHealthOptions(min_parse_rate=0))
    off.add([False] * 5)
    off.check()


def test_the_budget_is_blamed_when_at_least_half_the_unparsed_answers_used_it_all():
    assert likely_cause([8, 8, 3, 5], budget=8).startswith("50% of the unparsed answers used the whole token budget "
                                                           "(max_new_tokens 8): raise it")
    for tokens, budget in (([8, 3, 5], 8), ([2, 3], 8), ([8, 8], None), ([], 8)):
        assert likely_cause(tokens, budget).startswith("the answers end without a label line"), (tokens, budget)


def test_teacher_eval_stops_and_keeps_its_answers(rd_engine):
    recipe = Recipe(name="eval", models={"teacher": "tiny-causal-lm"}, seed=2, stages=[
        step("pairs", n=80), step("teacher_eval", rows=8, max_new_tokens=8, batch_size=8)])
    with pytest.raises(DataError, match=r"teacher_eval: the teacher's answers parsed in 0 of 7 rows .* "
                                        r"The answers are kept in .*answers to read"):
        rd_engine.run(recipe)
    assert (rd_engine.runs_dir / "eval" / "teacher_eval" / "answers").exists()


def test_the_options_do_not_change_the_stage_hash(rd_engine):
    """How a stage reacts to a low parse rate is not what it computes: a cached stage stays cached."""
    first = rd_engine.run(annotate_recipe(on_low_parse="warn"))["annotate"]
    again = rd_engine.run(annotate_recipe(on_low_parse="warn", min_parse_rate=0.0))["annotate"]
    assert not first.skipped and again.skipped


def test_preference_sampling_stops_before_any_dpo_step(rd_engine):
    recipe = Recipe(name="pref", models={"teacher": "tiny-causal-lm"}, seed=2, stages=[
        step("pairs", n=40), step("reasoning", source="column", limit=8),
        step("preference", prompts=2, candidates=2, max_new_tokens=8, min_margin=0.0, max_steps=1, batch_size=2,
             max_length=256, lora=False)])
    with pytest.raises(DataError, match=r"preference: the teacher's answers parsed in 0 of 4 rows \(0\.0%\), below "
                                        r"min_parse_rate 0\.1\. .* Nothing is trained yet"):
        rd_engine.run(recipe)
    assert not (rd_engine.runs_dir / "pref" / "preference" / "teacher").exists()
