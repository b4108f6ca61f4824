"""Several teacher endpoints: least-loaded routing, a circuit breaker, accounting, honest replies."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from datasets import load_from_disk

from reasondistill import BackendError, Recipe, step
from reasondistill.errors import DataError
from reasondistill.plugins.backends.openai_backend import OpenAIBackendOptions, OpenAIGenerator
from reasondistill.plugins.domains.local_services import LocalServices, generate_pairs

from .served import FaultServer

DOM = LocalServices()
FAST = {"retries": 3, "backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0, "breaker_failures": 2,
        "probe_interval": 0.3}


@pytest.fixture
def two():
    servers = [FaultServer(), FaultServer()]
    yield servers
    for s in servers:
        s.close()


def _gen(servers, slots=2, **options):
    eps = [{"base_url": s.url, "max_concurrency": slots} for s in servers]
    return OpenAIGenerator(DOM, OpenAIBackendOptions(model="teacher-7b", endpoints=eps, **{**FAST, **options}),
                           max_new_tokens=16)


def _messages(n):
    return [DOM.messages(r) for r in generate_pairs(n=n, seed=0)]


def test_requests_spread_over_endpoints_and_the_accounting_equals_the_servers_usage(two):
    gen = _gen(two)
    messages = _messages(24)
    out = gen.generate(messages)
    assert all(g.error is None for [g] in out)
    served = [len(s.requests) for s in two]
    assert sum(served) == 24 and min(served) >= 6, served  # least loaded: both work
    acc = gen.accounting()
    for s in two:  # the fault server answers usage 10 prompt + 15 completion tokens per reply
        mine = acc["endpoints"][s.url.rstrip("/")]
        assert mine["ok"] == len(s.requests) and mine["completion_tokens"] == 15 * len(s.requests)
        assert mine["prompt_tokens"] == 10 * len(s.requests)
    assert acc["total"]["ok"] == 24 and acc["total"]["requests"] == 24
    ids = two[0].request_ids + two[1].request_ids
    # one stable id per request body (the pool repeats a few pairs: the same body, the same id)
    assert len(set(ids)) == len({json.dumps(m) for m in messages})
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids), "24 hex digits, as docs/served.md says"


@pytest.mark.parametrize("how", ["killed", "500"])
def test_a_failing_endpoint_is_taken_out_and_its_requests_answered_elsewhere(two, how):
    a, b = two
    if how == "killed":
        a.close()  # connection refused from now on
    else:
        a.script = ["500"] * 1000
    gen = _gen(two)
    out = gen.generate(_messages(30))
    assert all(g.error is None for [g] in out) and len(b.requests) == 30
    acc = gen.accounting()["endpoints"][a.url.rstrip("/")]
    # the breaker: 2 failures take it out; afterwards only a probe now and then reaches it
    assert acc.get("ok", 0) == 0 and sum(v for k, v in acc.items() if k.startswith("errors_")) <= 6, acc


def test_an_endpoint_that_comes_back_is_probed_back_in(two, caplog):
    a, b = two
    a.script = ["500"] * 2
    gen = _gen(two, slots=1)
    for message in _messages(2):  # one request at a time: each goes to a first (a tie), fails, is retried on b
        gen.generate([message])
    assert gen.accounting()["endpoints"][a.url.rstrip("/")]["errors_http_500"] == 2
    assert any("failed 2 times in a row (http_500): taken out" in r.getMessage() for r in caplog.records)
    time.sleep(0.35)
    b.latency = 0.3  # b is busy whenever a second request comes, however the threads are scheduled
    gen.generate(_messages(12))
    assert gen.pool.endpoints[0].open_until == 0 and gen.accounting()["endpoints"][a.url.rstrip("/")]["ok"] > 0


def test_every_endpoint_dead_fails_fast_with_the_reason(two):
    for s in two:
        s.close()
    with pytest.raises(BackendError, match="no endpoint answers: .*cannot list models.*Connection refused"):
        _gen(two)
    with pytest.raises(BackendError, match="cannot list models"):
        _gen(two[:1])


def test_backoff_is_capped_and_retry_after_may_ask_more(two):
    gen = _gen(two[:1], backoff=0.5, max_backoff=2.0)
    waits = [gen.backoff(k) for k in range(1, 40) for _ in range(5)]
    assert max(waits) <= 2.0 and min(waits) >= 0.25
    assert gen.backoff(1, asked=7.0) == 7.0
    # a request that keeps failing waits at most retries x max_backoff in all
    quick = _gen(two[:1], retries=4, backoff=0.05, max_backoff=0.06)
    two[0].script = ["500"] * 10
    started = time.time()
    [[g]] = quick.generate(_messages(1))
    assert "gave up after 5 attempts (last on" in g.error and time.time() - started < 4 * 0.06 + 1.0


def test_a_server_without_usage_is_counted_with_the_models_tokenizer(tiny_causal_lm):
    from transformers import AutoTokenizer

    server = FaultServer(usage=False)
    try:
        gen = _gen([server], tokenizer=str(tiny_causal_lm))
        messages = _messages(2)
        out = gen.generate(messages)
        tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
        total = gen.accounting()["total"]
        assert total["completion_tokens"] == sum(len(tok(g.text, add_special_tokens=False)["input_ids"]) for [g] in out)
        prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        assert total["prompt_tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in prompts)
        assert total["prompt_tokens"] > 50 * len(messages)  # the whole prompt, not the keys of an encoding
        assert "completion_tokens_estimated" not in total and out[0][0].tokens == len(tok(out[0][0].text,
                                                                                        add_special_tokens=False)["input_ids"])
    finally:
        server.close()


def test_a_reply_from_another_model_is_named_once(caplog):
    server = FaultServer(answers_as="teacher-70b")
    try:
        gen = _gen([server])
        out = gen.generate(_messages(4))
        assert all(g.error is None for [g] in out)
        warned = [r.getMessage() for r in caplog.records if "answered as model" in r.getMessage()]
        assert len(warned) == 1 and "'teacher-70b', not 'teacher-7b'" in warned[0] and server.url in warned[0]
    finally:
        server.close()


def test_a_server_without_usage_gets_estimated_completion_tokens():
    server = FaultServer(usage=False)
    try:
        gen = _gen([server])
        gen.generate(_messages(3))
        total = gen.accounting()["total"]
        # the reply's logprob tokens (15 a reply) stand in, named as an estimate
        assert "completion_tokens" not in total and total["completion_tokens_estimated"] == 45
    finally:
        server.close()


@pytest.mark.parametrize("action, reason", [("nochoices", "no choices"), ("nomessage", "the choice has no message")])
def test_a_malformed_reply_is_one_line_naming_the_endpoint(two, action, reason):
    two[0].script = [action] * 10
    [[g]] = _gen(two[:1], retries=1).generate(_messages(1))
    assert f"malformed reply from {two[0].url.rstrip('/')}: {reason}" in g.error and "\n" not in g.error


def test_a_base_url_without_v1_gets_a_hint(two):
    with pytest.raises(BackendError, match=r"HTTP 404 on GET /models \(the base URL usually ends in /v1\)"):
        OpenAIGenerator(DOM, OpenAIBackendOptions(model="teacher-7b", base_url=two[0].url.removesuffix("/v1"), **FAST))


def test_endpoints_must_serve_one_model_and_replace_base_url():
    a, b = FaultServer(), FaultServer(model="teacher-70b")
    try:
        with pytest.raises(BackendError, match="the endpoints serve different models"):
            OpenAIGenerator(DOM, OpenAIBackendOptions(model="teacher-7b", endpoints=[
                {"base_url": a.url}, {"base_url": b.url, "model": "teacher-70b"}], **FAST))
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError, match="give base_url or endpoints, not both"):
        OpenAIBackendOptions(model="m", base_url="http://x/v1", endpoints=[{"base_url": "http://y/v1"}])


def _recipe(urls, n=40, **annotate) -> Recipe:
    backend = {"uses": "openai", "options": {"model": "teacher-7b", "endpoints": [{"base_url": u} for u in urls],
                                             "retries": 2, "backoff": 0.05, "max_backoff": 0.2, "timeout": 5,
                                             "breaker_failures": 2, "probe_interval": 0.1,
                                             "cost_per_1m_tokens": {"input": 1.234, "output": 2.0}}}
    return Recipe(name="multi", seed=2, backends={"teacher": backend}, stages=[
        step("pairs", n=n, dev_fraction=0.0),
        step("annotate", shard_size=10, on_low_parse="warn", **{"max_failed_share": 0.0, **annotate},
             annotator_options={"max_new_tokens": 12, "retries": 0})])


def _rows(engine):
    return load_from_disk(str(engine.runs_dir / "multi" / "annotate" / "annotations")).to_list()


def test_one_of_two_endpoints_killed_mid_run_loses_and_duplicates_nothing(rd_engine, two):
    a, b = two

    def kill_a():
        while len(a.requests) < 8:
            time.sleep(0.005)
        a.close()

    threading.Thread(target=kill_a, daemon=True).start()
    rd_engine.run(_recipe([a.url, b.url]))
    rows = _rows(rd_engine)
    assert len(rows) == 40 and len({r["pair_id"] for r in rows}) == 40
    assert all(r["parse_ok"] and r["error"] is None for r in rows) and len(b.requests) >= 20
    # the run record has the spend, equal to what the servers answered (10 + 15 tokens a reply)
    import json as _json

    m = _json.loads((rd_engine.runs_dir / "multi" / "annotate" / "manifest.json").read_text())["metrics"]
    assert m["teacher_ok"] == 40 and m["teacher_completion_tokens"] == 15 * 40 and m["teacher_prompt_tokens"] == 400
    # every attempt the client made is an answer or a counted failure
    assert m["teacher_requests"] == m["teacher_ok"] + m["teacher_failed_attempts"]
    assert m["teacher_cost"] == 0.001694  # (400 x 1.234 + 600 x 2.0) / 1e6 to 6 decimals
    assert set(m["teacher_endpoints"]) == {a.url.rstrip("/"), b.url.rstrip("/")}


def test_both_endpoints_die_and_one_comes_back_then_the_rerun_resumes(rd_engine, two):
    a, b = two
    port = int(b.url.rsplit(":", 1)[1].split("/")[0])
    urls = [a.url, b.url]

    def kill_both():
        while len(a.requests) + len(b.requests) < 12:
            time.sleep(0.005)
        a.close()
        b.close()

    threading.Thread(target=kill_both, daemon=True).start()
    with pytest.raises(DataError, match="max_failed_share"):
        rd_engine.run(_recipe(urls))
    back = FaultServer(port=port)
    try:
        rd_engine.run(_recipe(urls))
        rows = _rows(rd_engine)
        assert len(rows) == 40 and len({r["pair_id"] for r in rows}) == 40
        assert all(r["parse_ok"] and r["error"] is None for r in rows)
        assert len(back.requests) < 40  # only what was not written before
    finally:
        back.close()


def test_a_server_without_logprobs_gives_no_made_up_probabilities(rd_engine, two, caplog):
    backend = {"uses": "openai", "options": {"model": "teacher-7b", "base_url": two[0].url, "logprobs": False}}
    stages = [step("pairs", n=10, dev_fraction=0.0),
              step("annotate", shard_size=10, on_low_parse="warn", annotator_options={"max_new_tokens": 12})]
    recipe = Recipe(name="multi", seed=2, backends={"teacher": backend}, models={"student": "tiny-encoder"},
                    stages=stages)
    rd_engine.run(recipe)
    rows = _rows(rd_engine)
    assert all(r["label_probs"] is None and r["confidence"] is None for r in rows)
    assert any("label probabilities for 0% of the rows" in r.getMessage() for r in caplog.records)
    gated = recipe.model_copy(update={"stages": stages + [step("distill", loss="ce", max_steps=1, batch_size=2, sources=[
        {"input": "annotations", "min_confidence": 0.5}])]})
    with pytest.raises(DataError, match="min_confidence needs the teacher's probability of each label"):
        rd_engine.run(gated)
    kd = recipe.model_copy(update={"stages": stages + [step("distill", loss="kd", max_steps=1, batch_size=2,
                                                            student_options={"max_length": 32})]})
    rd_engine.run(kd)
    assert any("learns from the teacher's label probabilities, and no training row has any" in r.getMessage()
               for r in caplog.records)


RANKS_RECIPE = """
name: multi
seed: 2
backends:
  teacher:
    uses: openai
    options: {{model: teacher-7b, endpoints: [{endpoints}], retries: 2, backoff: 0.05, max_backoff: 0.2,
               cost_per_1m_tokens: {{input: 1.0, output: 1.0}}}}
stages:
  - uses: pairs
    options: {{n: 64, dev_fraction: 0.0}}
  - uses: annotate
    options: {{shard_size: 8, on_low_parse: warn, annotator_options: {{max_new_tokens: 12, retries: 0}}}}
"""


def test_two_ranks_times_two_endpoints_write_the_rows_of_one_process_and_one_endpoint(tmp_path, two):
    """Each rank takes every other shard and spreads its requests over both endpoints; the rows
    are those of one process on one endpoint, and the spend counts every rank's requests."""
    import json as _json
    import os
    import subprocess
    import sys

    from .served import free_port

    def run(urls, ranks, name):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(RANKS_RECIPE.format(endpoints=", ".join(f'{{base_url: "{u}"}}' for u in urls)))
        runs = tmp_path / name
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
                  str(free_port()), "-m"] if ranks > 1 else [sys.executable, "-m"]
        out = subprocess.run([*launch, "reasondistill", "run", str(recipe), "--runs-dir", str(runs)], timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        manifest = _json.loads((runs / "multi" / "annotate" / "manifest.json").read_text())
        return load_from_disk(str(runs / "multi" / "annotate" / "annotations")).to_list(), manifest

    one, _ = run([two[0].url], 1, "one")
    before = [len(s.requests) for s in two]
    many, manifest = run([s.url for s in two], 2, "many")
    assert manifest["processes"] == 2
    key = ("pair_id", "label", "reasoning", "label_probs", "parse_ok")
    assert [{k: r[k] for k in key} for r in many] == [{k: r[k] for k in key} for r in one]
    served = [len(s.requests) - b for s, b in zip(two, before)]
    assert sum(served) == 64 and min(served) > 0, served
    m = manifest["metrics"]
    assert m["teacher_ok"] == 64 and m["teacher_completion_tokens"] == 15 * 64  # both ranks counted


def test_a_retry_waits_for_a_slot_elsewhere_rather_than_going_back_to_the_endpoint_that_failed():
    """(benchmarks/served.py lost 52 pairs before: the survivor was full, and the retries went back
    to the endpoint that had just failed.)"""
    from reasondistill.plugins.backends.openai_endpoints import Endpoint, EndpointPool

    a, b = (Endpoint(url=u, model="m", capacity=1, weight=1.0, client=None) for u in ("a", "b"))
    pool = EndpointPool([a, b], breaker_failures=3, probe_interval=5.0)
    assert pool.acquire() is a and pool.acquire() is b  # both busy now
    pool.release(a, "connection")  # a failed once; b is still full
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(avoid=a)))
    waiter.start()
    time.sleep(0.2)
    assert not got, "the retry went back to the endpoint that failed"
    pool.release(b, None)
    waiter.join(timeout=2)
    assert got == [b]
    # with no other endpoint in service, the one that failed is tried again
    alone = EndpointPool([a], breaker_failures=3, probe_interval=5.0)
    assert alone.acquire(avoid=a) is a


def test_the_breaker_opens_at_exactly_breaker_failures_in_a_row():
    """``breaker_failures: 3``: two failures in a row leave the endpoint in service, the third takes
    it out; a success in between starts the count again."""
    from reasondistill.plugins.backends.openai_endpoints import Endpoint, EndpointPool

    a, b = (Endpoint(url=u, model="m", capacity=4, weight=1.0, client=None) for u in ("a", "b"))
    pool = EndpointPool([a, b], breaker_failures=3, probe_interval=60.0)
    for outcome in ("connection", "connection", None, "connection", "connection"):
        pool.release(pool.acquire(avoid=b), outcome)
    assert not a.open_until and a.failures == 2, "two failures in a row: still in service"
    pool.release(pool.acquire(avoid=b), "http_500")
    assert a.open_until and pool.others_usable(b) is False, "the third takes it out"
    assert pool.acquire(avoid=b) is b


def test_progress_counts_a_prompt_once_all_its_samples_are_back(two):
    class Bar:
        def __init__(self):
            self.n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    out = _gen(two).generate(_messages(3), n=4, do_sample=True, seed=1, progress=bar)
    assert [len(o) for o in out] == [4, 4, 4] and bar.n == 3


def test_a_request_waits_through_an_all_out_fleet_until_a_probe_is_due(two):
    """Every endpoint taken out: an attempt that finds none in service is counted and the next one
    waits for a probe, so the request is answered once a probe is due (0.4 s here) within its
    retries, instead of failing at the first empty look."""
    gen = _gen(two, retries=20, backoff=0.05, max_backoff=0.06, probe_interval=0.4)
    for ep in gen.pool.endpoints:
        gen.pool.take_out(ep)
    [[g]] = gen.generate(_messages(1))
    assert g.error is None and g.text
