"""Served teachers against a real ``transformers serve`` of the tiny teacher: the same text as the
local engines, a server killed mid-run, two endpoints of which one dies, the served recipe end to end."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from reasondistill.fingerprint import portable_ref
from reasondistill.hf_compat import transformers_major
from reasondistill.plugins.backends.openai_backend import OpenAIBackendOptions, OpenAIGenerator

from .reliability.helpers import cmd, env
from .served import free_port, start_transformers_serve, stop
from .test_served import DOM, FAST, _annotations, _messages, _write


# --- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_served(tiny_teacher, tmp_path_factory):
    """``transformers serve`` with the tiny teacher; ``restart()`` starts it again on the same port."""
    if transformers_major() < 5:  # the SDK's openai backend is plain HTTP; this is the test's server
        pytest.skip("transformers serve before 5.0 lists a fixed catalogue at /v1/models, not the preloaded model")
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    state = {"proc": start_transformers_serve(tiny_teacher, port, log)}

    class Handle:
        url = f"http://127.0.0.1:{port}/v1"
        model = str(tiny_teacher)

        def kill(self):
            stop(state["proc"])

        def restart(self):
            self.kill()
            state["proc"] = start_transformers_serve(tiny_teacher, port, log)

    yield Handle()
    stop(state["proc"])


def test_served_greedy_equals_local_backend(tiny_served, tiny_teacher):
    """Same tiny teacher, greedy: the server's answers equal the local engines' text for text, and
    so do the labels parsed from them (the teacher writes all three labels)."""
    from reasondistill.local_decoding import TeacherGenerator

    msgs = _messages(16)
    served = OpenAIGenerator(DOM, OpenAIBackendOptions(model=tiny_served.model, base_url=tiny_served.url,
                                                       concurrency=4, **FAST), max_new_tokens=48)
    assert served.identity == f"served:{portable_ref(str(tiny_teacher))}"  # name@digest, not this machine's path
    assert served.identity.startswith(f"served:{tiny_teacher.name}@")
    remote = [o[0].text for o in served.generate(msgs)]
    labels = [DOM.parse_completion(t).label for t in remote]
    assert None not in labels and len(set(labels)) >= 2, labels
    for engine in ("generate", "slots"):
        local = TeacherGenerator(str(tiny_teacher), DOM, batch_size=4, max_new_tokens=48, engine=engine)
        assert [o[0].text for o in local.generate(msgs)] == remote, engine
    legacy = OpenAIGenerator(DOM, OpenAIBackendOptions(model=tiny_served.model, base_url=tiny_served.url,
                                                       endpoint="completions", chat_template=str(tiny_teacher),
                                                       **FAST), max_new_tokens=48)
    assert [o[0].text for o in legacy.generate(msgs[:4])] == remote[:4]


def _kill_after_three_shards(recipe: Path, runs: Path, server) -> subprocess.Popen:
    """Start the run, kill ``server`` once three shards are written; the run's process."""
    shards = runs / "served" / "annotate" / "annotations_shards"
    proc = subprocess.Popen(cmd(recipe, runs), env={**env(), "RD_TEST_KEY": "k"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("shard-*.jsonl"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    server.kill()
    return proc


@pytest.fixture(scope="module")
def one_server_rows(tiny_served, tmp_path_factory):
    """The 120 rows one uninterrupted server writes: what every interrupted run must equal (run once)."""
    folder = tmp_path_factory.mktemp("one-server")
    recipe = _write(folder, model=tiny_served.model, url=tiny_served.url, n=120, conc=2, tokens=48)
    subprocess.run(cmd(recipe, folder / "ref"), env={**env(), "RD_TEST_KEY": "k"}, check=True, capture_output=True,
                   timeout=600)
    return _annotations(folder / "ref")


def test_server_killed_mid_annotation_then_restarted_loses_and_duplicates_nothing(tiny_served, tmp_path,
                                                                                  one_server_rows):
    recipe = _write(tmp_path, model=tiny_served.model, url=tiny_served.url, n=120, conc=2, tokens=48)
    expected = one_server_rows
    runs = tmp_path / "runs"
    shards = runs / "served" / "annotate" / "annotations_shards"
    proc = _kill_after_three_shards(recipe, runs, tiny_served)
    try:
        assert proc.wait(timeout=300) == 2, "the run stops with an error once the server is gone"
        assert "rerun to resume" in proc.stderr.read()
        done = len(list(shards.glob("shard-*.jsonl")))
        assert 3 <= done <= 12
    finally:
        tiny_served.restart()
    subprocess.run(cmd(recipe, runs), env={**env(), "RD_TEST_KEY": "k"}, check=True, capture_output=True, timeout=600)
    got = _annotations(runs)
    assert len(got) == 120 and len({r["pair_id"] for r in got}) == 120
    assert sum(r["parse_ok"] for r in expected) >= 110 and len({r["label"] for r in expected}) >= 2
    keys = ("pair_id", "label", "completion", "reasoning", "parse_ok", "teacher", "error")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in expected]


TWO_ENDPOINTS_RECIPE = """
name: served
seed: 2
backends:
  teacher:
    uses: openai
    options: {{model: {model}, endpoints: [{{base_url: "{a}"}}, {{base_url: "{b}"}}], concurrency: 2,
               retries: 3, backoff: 0.1, max_backoff: 0.5, timeout: 30, breaker_failures: 2, probe_interval: 2}}
stages:
  - uses: pairs
    options: {{n: 120, dev_fraction: 0.0}}
  - uses: annotate
    options: {{shard_size: 10, max_failed_share: 0.0, on_low_parse: warn, annotator_options: {{max_new_tokens: 48, retries: 0}}}}
"""


def test_two_real_servers_one_killed_mid_run_lose_and_duplicate_nothing(tiny_served, tiny_teacher, tmp_path,
                                                                          one_server_rows):
    """Two ``transformers serve`` of the tiny teacher; the first is killed mid-run: the run goes
    on over the second and its rows are those of one server, pair for pair and text for text."""
    expected = one_server_rows
    port_b = free_port()
    second = start_transformers_serve(tiny_teacher, port_b, tmp_path / "second.log")
    try:
        recipe = tmp_path / "two.yaml"
        recipe.write_text(TWO_ENDPOINTS_RECIPE.format(model=tiny_served.model, a=tiny_served.url,
                                                      b=f"http://127.0.0.1:{port_b}/v1"))
        runs = tmp_path / "runs"
        proc = _kill_after_three_shards(recipe, runs, tiny_served)
        try:
            assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
        finally:
            tiny_served.restart()
    finally:
        stop(second)
    got = _annotations(runs)
    assert len(got) == 120 and len({r["pair_id"] for r in got}) == 120 and not any(r["error"] for r in got)
    keys = ("pair_id", "label", "completion", "reasoning", "parse_ok", "teacher")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in expected]
    metrics = json.loads((runs / "served" / "annotate" / "manifest.json").read_text())["metrics"]
    assert metrics["teacher_ok"] == 120 and set(metrics["teacher_endpoints"]) == {
        tiny_served.url, f"http://127.0.0.1:{port_b}/v1"}


def test_served_teacher_recipe_end_to_end(tiny_served, tmp_path, rd_hooks):
    """The built-in served_teacher recipe (tiny profile) against a real server: annotate with
    ``model: auto``, distil and export the student; no local teacher anywhere."""
    from reasondistill import Engine, load_recipe

    recipe = load_recipe("served_teacher", profile="tiny")
    options = {**recipe.backends["teacher"].options, "base_url": tiny_served.url, "concurrency": 4}
    recipe = recipe.model_copy(update={"backends": {"teacher": {"uses": "openai", "options": options}}})
    recipe = type(recipe).model_validate(recipe.model_dump())
    assert "teacher" not in recipe.models
    res = Engine(rd_hooks, runs_dir=tmp_path / "runs").run(recipe)
    ann = res["annotate"].metrics
    assert ann["pairs"] == 120 and ann["failed"] == 0 and ann["parse_rate"] >= 0.9
    assert 0.0 < ann["teacher_accuracy"] < 1.0
    rows = load_from_disk(str(tmp_path / "runs" / "served_teacher" / "annotate" / "annotations")).to_list()
    assert {r["teacher"] for r in rows} == {f"served:{portable_ref(tiny_served.model)}"}
    assert "dev_macro_f1" in res["distill"].metrics and res["export"].metrics["agreement_fp32"] >= 0.95
