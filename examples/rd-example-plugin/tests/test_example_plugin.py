"""Tests of the example plugin, written with reasondistill's shipped test kit fixtures."""

from pathlib import Path

from reasondistill import load_recipe


def test_entry_points_load_both_components(rd_hooks):
    assert "job_search" in rd_hooks.catalogue.kind("domain")
    assert "query_coverage" in rd_hooks.implementers()["score_reasoning"]


def test_query_coverage_is_a_reward_dimension(rd_hooks):
    dom = rd_hooks.catalogue.get("domain", "job_search")
    row = {"query": "nurse jobs Lyon", "item": "Nurse wanted", "city": "Lyon", "label": 1}
    vec = rd_hooks.score_reasoning(row, "Reasoning: nurse jobs in Lyon.\nLabel: relevant", dom)
    assert vec["query_coverage"] == 1.0 and vec["label_agreement"] == 1.0


def test_recipe_runs_with_tiny_models(rd_engine):
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "rd_example_plugin" / "jobs.yaml")
    results = rd_engine.run(recipe)
    assert results["distill"].metrics["steps"] == 40
    assert results["distill"].metrics["dev_accuracy"] > 0.5
