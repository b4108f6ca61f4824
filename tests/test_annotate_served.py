"""The annotate stage with a served teacher, in this process: what it counts (failures, the
teacher's spend, each shard's seconds) and warns about. ``test_served.py`` runs the same through
the CLI in subprocesses, where coverage (and so the mutation slice) cannot follow."""

import logging
import time

import pytest

from reasondistill import DataError, Recipe, step
from reasondistill.plugins.annotation.annotate_stage import spend_metrics
from reasondistill.plugins.annotation.shards import read_seconds
from reasondistill.plugins.domains.local_services import generate_pairs

from .served import FaultServer


def test_a_served_run_in_process_counts_failures_spend_and_shard_seconds(rd_engine, caplog, monkeypatch):
    """The annotate stage against a fake OpenAI server in this process (the subprocess tests in
    ``test_served.py`` check the same through the CLI, where coverage cannot see them)."""
    monkeypatch.setenv("RD_TEST_KEY", "k")
    server = FaultServer()
    try:
        def recipe(name, n, share):
            return Recipe(name=name, seed=2, backends={"teacher": {"uses": "openai", "options": {
                "model": server.model, "base_url": server.url, "api_key_env": "RD_TEST_KEY", "retries": 0}}},
                stages=[step("pairs", n=n, dev_fraction=0.0),
                        step("annotate", shard_size=10, max_failed_share=share, on_low_parse="warn",
                             annotator_options={"max_new_tokens": 12, "retries": 0})])

        with caplog.at_level(logging.WARNING, logger="reasondistill"):
            started = time.time()
            clean = rd_engine.run(recipe("clean", 20, 0.0))["annotate"].metrics
            elapsed = time.time() - started
        assert clean["label_probs_share"] == 1.0 and "label probabilities for" not in caplog.text
        assert clean["teacher_requests"] == 20 and "teacher_endpoints" not in clean  # one endpoint, no failure
        shards = rd_engine.runs_dir / "clean" / "annotate" / "annotations_shards"
        assert all(0 < read_seconds(shards, i) <= elapsed for i in (0, 1))

        pairs = generate_pairs(n=20, seed=2)
        server.fail_queries = {pairs[3]["query"]}
        n_fail = sum(p["query"] == pairs[3]["query"] for p in pairs)
        failing = rd_engine.run(recipe("failing", 20, 0.5))["annotate"].metrics
        assert failing["failed"] == n_fail and failing["teacher_failed_attempts"] == n_fail
        assert "label probabilities for" in caplog.text  # the failed rows have none
        with pytest.raises(DataError, match="max_failed_share"):  # none may fail: the first shard stops it
            rd_engine.run(recipe("strict", 20, 0.0))
    finally:
        server.close()


def test_spend_names_the_endpoints_only_where_there_are_several_or_failures():
    one = {"total": {"requests": 4, "ok": 4}, "endpoints": {"http://a": {"requests": 4, "ok": 4}}}
    assert spend_metrics(one) == {"teacher_requests": 4, "teacher_ok": 4, "teacher_failed_attempts": 0}
    failed = {"total": {"requests": 5, "ok": 4, "errors_http": 1}, "endpoints": {"http://a": {"requests": 5}}}
    assert spend_metrics(failed)["teacher_endpoints"] == {"http://a": {"requests": 5}}
    two = {"total": {"requests": 4}, "endpoints": {"http://a": {"requests": 2}, "http://b": {"requests": 2}}}
    assert set(spend_metrics(two)["teacher_endpoints"]) == {"http://a", "http://b"}
    assert spend_metrics({}) == {}
