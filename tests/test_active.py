"""The ``active`` stage and its selectors: the teacher labels what the student is least sure of."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reasondistill import Recipe, Selector, hookimpl, step
from reasondistill.errors import PluginError, RecipeError
from reasondistill.plugins.annotation.selectors import (RandomSelector, UncertaintyOptions, UncertaintySelector, in_turns,
                                                        uncertainty)

DISTILL = {"loss": "ce", "max_steps": 20, "batch_size": 16, "learning_rate": 0.001, "student_options": {"max_length": 48}}


def test_margin_entropy_and_top_probability_rank_the_unsure_rows_first():
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.34, 0.33, 0.33], [0.6, 0.4, 0.0]])
    assert np.argsort(-uncertainty(probs, "margin")).tolist() == [2, 1, 3, 0]
    assert np.argsort(-uncertainty(probs, "entropy"))[:2].tolist() == [2, 1]
    assert np.argsort(-uncertainty(probs, "least_confident")).tolist() == [2, 1, 3, 0]
    rows = [{"query": f"q{i}"} for i in range(4)]
    assert UncertaintySelector().select(rows, probs, 2, 0, UncertaintyOptions()) == [2, 1]


def test_the_diversity_guard_caps_a_query_and_fills_the_budget_when_it_must():
    # the five least sure rows all belong to query a; the guard lets 2 through, then b and c
    probs = np.array([[0.34, 0.33, 0.33]] * 5 + [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05]])
    rows = [{"query": "a"}] * 5 + [{"query": "b"}, {"query": "c"}, {"query": "c"}]
    picked = UncertaintySelector().select(rows, probs, 4, 0, UncertaintyOptions(max_per_query=2))
    assert [rows[i]["query"] for i in picked].count("a") == 2 and {5, 6} <= set(picked)
    uncapped = UncertaintySelector().select(rows, probs, 4, 0, UncertaintyOptions(max_per_query=None))
    assert set(uncapped) <= {0, 1, 2, 3, 4}
    # only query a left: the guard cannot hold, and the budget is still spent on the least sure
    filled = UncertaintySelector().select(rows[:5], probs[:5], 4, 0, UncertaintyOptions(max_per_query=1))
    assert len(set(filled)) == 4


def test_spreading_over_predicted_labels_gives_a_rare_class_its_turns():
    # rows 0-5 are predicted 0 and less sure than anything predicted 2 (rows 6-8, least sure 8 then 7)
    probs = np.array([[0.4, 0.35, 0.25]] * 6 + [[0.1, 0.3, 0.6], [0.1, 0.35, 0.55], [0.1, 0.4, 0.5]])
    rows = [{"query": f"q{i}"} for i in range(9)]
    plain = UncertaintySelector().select(rows, probs, 4, 0, UncertaintyOptions())
    assert set(plain) <= set(range(6))  # plain uncertainty spends the budget on the common class
    spread = UncertaintySelector().select(rows, probs, 4, 0, UncertaintyOptions(spread_over_predicted=True))
    assert [int(probs[i].argmax()) for i in spread] == [0, 2, 0, 2] and spread[1:4:2] == [8, 7]
    assert set(spread[::2]) <= set(plain)  # within a label, least sure first
    # label 2 runs out after three turns: label 0 takes the rest of the budget
    more = UncertaintySelector().select(rows, probs, 8, 0, UncertaintyOptions(spread_over_predicted=True))
    assert [int(probs[i].argmax()) for i in more] == [0, 2, 0, 2, 0, 2, 0, 0]
    assert in_turns([np.array([5, 6]), np.array([1]), np.array([9, 8, 7])]).tolist() == [5, 1, 9, 6, 8, 7]


def test_random_selection_is_seeded_distinct_and_never_over_budget():
    rows = [{"query": str(i)} for i in range(50)]
    a, b = RandomSelector().select(rows, None, 10, 3, None), RandomSelector().select(rows, None, 10, 3, None)
    assert a == b and len(set(a)) == 10 and RandomSelector().select(rows, None, 10, 4, None) != a
    assert sorted(RandomSelector().select(rows[:5], None, 10, 3, None)) == [0, 1, 2, 3, 4]


@pytest.fixture
def pool_file(tmp_path):
    from reasondistill.plugins.domains.local_services import generate_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate_pairs(n=420, seed=4)))
    return path


def active_recipe(path, *stages, name="active") -> Recipe:
    return Recipe(name=name, models={"student": "tiny-encoder"}, seed=0, stages=[
        step("pairs", name="gold", source=str(path), limit=100, dev_fraction=0.3),
        step("pairs", name="pool", source=str(path), offset=100, limit=320, hide_labels=True, dev_fraction=0.0),
        *stages])


def active(name, **options):
    given = {"input": "pool.pairs", "labeled": "gold.pairs", "rounds": 2, "per_round": 40, "annotator": "gold",
             "distill": DISTILL, **options}
    return step("active", name=name, inputs={"dev": "gold"}, **given)


def test_uncertainty_and_random_spend_the_same_budget_on_different_rows(rd_engine, pool_file):
    from datasets import load_from_disk

    from reasondistill.plugins.annotation.active_stage import score_pool

    res = rd_engine.run(active_recipe(pool_file, active("unsure"), active("rand", selector="random")))
    run = rd_engine.runs_dir / "active"
    pool = load_from_disk(str(run / "pool" / "pairs")).to_list()
    picks = {}
    for name in ("unsure", "rand"):
        m = res[name].metrics
        assert m["teacher_pairs"] == 80 and m["round1_dev_macro_f1"] is not None and "dev_macro_f1" in m
        ann = load_from_disk(str(run / name / "annotations")).to_list()
        ids = [r["pair_id"] for r in ann]
        assert len(ids) == 80 and len(set(ids)) == 80  # no row annotated twice across rounds
        assert all(r["label"] == r["gold_label"] for r in ann)  # the gold annotator is the hidden label
        assert sorted(r["round"] for r in ann) == [1] * 40 + [2] * 40
        rounds = json.loads((run / name / "rounds.json").read_text())
        assert [r["round"] for r in rounds] == [0, 1, 2] and not set(rounds[1]["selected"]) & set(rounds[2]["selected"])
        picks[name] = rounds[1]["selected"]
        assert (run / name / "round_2" / "distill" / "student").exists()
        assert m["round2_train_rows"] == res["gold"].metrics["pairs"] + 80  # gold train rows + every annotation so far
        shares = {k.split("share_")[1]: v for k, v in m.items() if k.startswith("round1_selected_share_")}
        gold_shares = {k.split("share_")[1]: v for k, v in m.items() if k.startswith("round1_selected_gold_share_")}
        assert len(gold_shares) == 3 and gold_shares == shares and abs(sum(shares.values()) - 1) < 1e-3
        assert m["round1_parse_rate"] == 1.0 and m["round2_parse_rate"] == 1.0  # the gold annotator always answers
    # round 1 of both stages is picked by the same round-0 student (same seed): the uncertain pick
    # is the less sure one, by the measure it ranks with
    assert res["unsure"].metrics["round0_dev_macro_f1"] == res["rand"].metrics["round0_dev_macro_f1"]
    probs = score_pool(rd_engine_ctx(rd_engine), run / "unsure" / "round_0" / "distill" / "student", pool)
    unsure = uncertainty(probs, "margin")
    assert unsure[picks["unsure"]].mean() > unsure[picks["rand"]].mean()
    assert unsure[picks["unsure"]].min() >= np.sort(unsure)[::-1][:40].min() - 1e-9 or \
        len({pool[i]["query"] for i in picks["unsure"]}) > 1  # the top 40, but for the per-query cap


def rd_engine_ctx(engine):
    """Enough of a stage context to score rows: the catalogue and the run's domain."""
    from types import SimpleNamespace

    from reasondistill.plugins.domains.local_services import LocalServices

    return SimpleNamespace(hooks=engine.hooks, domain=LocalServices())


def test_an_interrupted_run_resumes_at_the_first_unrecorded_round(rd_engine, register_plugin, pool_file):
    class Flaky(Selector):
        name = "flaky"
        calls = 0
        fail_on = 2

        def select(self, rows, probabilities, k, seed, options):
            Flaky.calls += 1
            if Flaky.calls == Flaky.fail_on:
                raise RuntimeError("killed")
            return RandomSelector().select(rows, probabilities, k, seed, options)

    class P:
        @hookimpl
        def register_selectors(self, register):
            register(Flaky())

    register_plugin(P(), "flaky-plugin")
    recipe = active_recipe(pool_file, active("act", selector="flaky"))
    with pytest.raises(Exception, match="killed"):
        rd_engine.run(recipe)
    folder = rd_engine.runs_dir / "active" / "act"
    first = json.loads((folder / "rounds.json").read_text())
    assert [r["round"] for r in first] == [0, 1]
    trained = (folder / "round_1" / "distill" / "student" / "model.safetensors").stat().st_mtime_ns
    res = rd_engine.run(recipe)
    assert Flaky.calls == 3  # round 2 only: rounds 0 and 1 were kept
    assert (folder / "round_1" / "distill" / "student" / "model.safetensors").stat().st_mtime_ns == trained
    rounds = json.loads((folder / "rounds.json").read_text())
    assert rounds[:2] == first and res["act"].metrics["teacher_pairs"] == 80


def test_a_selector_that_breaks_the_contract_is_named(rd_engine, register_plugin, pool_file):
    class Greedy(Selector):
        name = "greedy"
        needs_probabilities = False

        def select(self, rows, probabilities, k, seed, options):
            return [0] * k

    class P:
        @hookimpl
        def register_selectors(self, register):
            register(Greedy())

    register_plugin(P(), "greedy-plugin")
    with pytest.raises(PluginError, match=r"greedy-plugin.*Selector.select.*40 positions \(1 distinct, 0 out of "
                                          r"range\); 40 distinct positions in 0\.\.319 were asked for"):
        rd_engine.run(active_recipe(pool_file, active("act", selector="greedy")))  # a pool of 320 rows


def test_annotations_so_far_are_the_rounds_up_to_the_one_asked(tmp_path):
    """Round r trains on rounds 1..r, even where a later round's shards are already on disk."""
    from types import SimpleNamespace

    from reasondistill.plugins.annotation.active_stage import merge_shards_of
    from reasondistill.plugins.annotation.shards import write_shard

    for r in (1, 2, 3):
        (tmp_path / f"round_{r}" / "shards").mkdir(parents=True)
        write_shard(tmp_path / f"round_{r}" / "shards", 0, [{"pair_id": f"r{r}-{i}", "label": 1} for i in range(r)])
    merged = merge_shards_of(SimpleNamespace(dir=tmp_path), 2)
    assert merged["pair_id"] == ["r1-0", "r2-0", "r2-1"] and merged["round"] == [1, 2, 2]


def test_the_stage_sets_the_training_rows_and_checks_its_parts_at_validate(rd_engine, pool_file):
    with pytest.raises(RecipeError, match="sources: set by the active stage"):
        rd_engine.validate(active_recipe(pool_file, active("act", distill={**DISTILL, "sources": []})))
    with pytest.raises(RecipeError, match="unknown selector 'unsure'; registered: random, uncertainty"):
        rd_engine.validate(active_recipe(pool_file, active("act", selector="unsure")))
    with pytest.raises(RecipeError, match="selector_options.*measure"):
        rd_engine.validate(active_recipe(pool_file, active("act", selector_options={"measure": "variance"})))
    with pytest.raises(RecipeError, match="distill.epochs"):
        rd_engine.validate(active_recipe(pool_file, active("act", distill={**DISTILL, "epochs": -1})))


def test_the_gold_annotator_needs_hidden_labels(rd_engine, pool_file, tmp_path):
    unlabeled = tmp_path / "unlabeled.jsonl"
    unlabeled.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "label"}) + "\n"
                                 for line in pool_file.read_text().splitlines()))
    recipe = Recipe(name="nogold", models={"student": "tiny-encoder"}, seed=0, stages=[
        step("pairs", name="gold", source=str(pool_file), limit=100, dev_fraction=0.3),
        step("pairs", name="pool", source=str(unlabeled), offset=100, limit=100, dev_fraction=0.0),
        active("act", rounds=1)])
    with pytest.raises(Exception, match="annotator gold: row 0 .*has no gold label"):
        rd_engine.run(recipe)
