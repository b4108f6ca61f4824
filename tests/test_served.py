"""Served teachers: the openai backend against a scripted fault server and a real ``transformers serve``."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from reasondistill import BackendError, Recipe, step
from reasondistill.generators import cut_at_stop, label_mass
from reasondistill.plugins.backends.openai_backend import OpenAIBackendOptions, OpenAIGenerator
from reasondistill.plugins.domains.local_services import LocalServices, generate_pairs

from .reliability.helpers import cmd, env
from .served import ANSWER, LABEL_TOP, FaultServer, free_port

DOM = LocalServices()
FAST = {"retries": 3, "backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0}


@pytest.fixture
def fault():
    server = FaultServer()
    yield server
    server.close()


def _gen(server, **options):
    return OpenAIGenerator(DOM, OpenAIBackendOptions(model=server.model, base_url=server.url, **{**FAST, **options}),
                           max_new_tokens=16)


def _messages(n=1):
    return [DOM.messages(r) for r in generate_pairs(n=n, seed=0)]


def test_label_mass_hand_computed():
    probs = label_mass(LABEL_TOP, DOM.labels)
    e = [math.exp(-3.0), math.exp(-2.0), math.exp(-0.2)]  # " the" starts no label: dropped
    assert probs == pytest.approx([x / sum(e) for x in e])
    assert label_mass({"rel": -0.1, "x": -1.0}, ("relevant", "related")) is None  # starts both: no evidence
    assert cut_at_stop("a Label: relevant and more", ["Label: relevant", "Label: partly"]) == "a Label: relevant"


def test_completion_label_probs_and_stop_cut(fault):
    out = _gen(fault).generate(_messages(2), n=2, do_sample=True, seed=5)
    assert [[g.text for g in o] for o in out] == [[ANSWER] * 2] * 2  # cut after the label line
    e = [math.exp(-3.0), math.exp(-2.0), math.exp(-0.2)]
    assert out[0][0].label_probs == pytest.approx([x / sum(e) for x in e]) and out[0][0].tokens == 15
    seeds = sorted(r["seed"] for r in fault.requests)
    assert seeds == [5, 5, 6, 6] and all(r["logprobs"] and r["temperature"] > 0 for r in fault.requests)
    assert "stop" not in fault.requests[0]


def test_completions_endpoint_renders_the_prompt_and_reads_its_logprobs(fault, tiny_causal_lm):
    e = [math.exp(-3.0), math.exp(-2.0), math.exp(-0.2)]
    [[plain]] = _gen(fault, endpoint="completions").generate(_messages(1))
    assert plain.text == ANSWER and plain.label_probs == pytest.approx([x / sum(e) for x in e])
    body = fault.requests[-1]
    assert "messages" not in body and body["logprobs"] == 5
    assert body["prompt"] == "".join(m["content"] + "\n\n" for m in _messages(1)[0])
    _gen(fault, endpoint="completions", chat_template=str(tiny_causal_lm)).generate(_messages(1))
    assert fault.requests[-1]["prompt"].startswith("<|im_start|>system\n") and \
        fault.requests[-1]["prompt"].endswith("<|im_start|>assistant\n")


def test_greedy_request_and_no_logprobs(fault):
    _gen(fault, logprobs=False, send_stop=True, extra_body={"top_k": 3}).generate(_messages(1), max_new_tokens=7)
    body = fault.requests[0]
    assert body["temperature"] == 0.0 and "seed" not in body and "logprobs" not in body
    assert body["max_tokens"] == 7 and body["top_k"] == 3 and "Label: relevant" in body["stop"]


def test_retries_500_429_malformed_then_success(fault):
    fault.script = ["500", "429", "garbage"]
    gen = _gen(fault)
    started = time.time()
    [[g]] = gen.generate(_messages(1))
    assert g.error is None and g.text == ANSWER
    assert len(fault.requests) == 4
    assert time.time() - started >= 1.0, "Retry-After: 1 was honoured"


@pytest.mark.parametrize("status", ["408", "500", "502", "503", "504"])
def test_each_retryable_status_is_retried(fault, status):
    """The statuses a server answers when it is busy or restarting are retried (429 above)."""
    fault.script = [status]
    [[g]] = _gen(fault).generate(_messages(1))
    assert g.error is None and g.text == ANSWER and len(fault.requests) == 2


def test_a_refused_request_fails_alone_without_retries(fault):
    """A 4xx that is neither retryable nor fatal (400: this request is malformed, e.g. too long for
    the server's context) fails that request only, at once: no retry, the endpoint stays in
    service, the other requests are answered."""
    fault.script = ["400"]
    gen = _gen(fault, retries=3)
    [bad, good] = sorted((g for [g] in gen.generate(_messages(2))), key=lambda g: g.error is None)  # either may get it
    assert "HTTP 400" in (bad.error or "") and bad.text == ""
    assert good.error is None and good.text == ANSWER
    assert len(fault.requests) == 2, "no retry of a refused request"
    assert gen.pool.accounting()["total"].get("errors_fatal", 0) == 0


@pytest.mark.parametrize("action, reason", [("500", "HTTP 500"), ("garbage", "malformed JSON"),
                                            ("hang", "Timeout"), ("trickle", "no complete response")])
def test_gives_up_after_retries_with_the_error(fault, action, reason):
    fault.script = [action] * 10
    [[g]] = _gen(fault, retries=1, timeout=0.5).generate(_messages(1))
    assert g.text == "" and g.label_probs is None
    assert "gave up after 2 attempts" in g.error and reason in g.error
    assert len(fault.requests) == 2


def test_a_response_of_exactly_max_response_bytes_is_read(fault):
    """The size bound is the largest body accepted: 2,000 bytes pass under ``max_response_bytes:
    2000``, and fail (the attempt, then the retries) under 1,999."""
    fault.pad_to = 2000
    [[g]] = _gen(fault, retries=0, max_response_bytes=2000).generate(_messages(1))
    assert g.error is None and g.text
    [[g]] = _gen(fault, retries=0, max_response_bytes=1999).generate(_messages(1))
    assert "response larger than 1999 bytes" in (g.error or "")


def test_wrong_model_name_is_one_line_naming_backend_and_url(fault):
    with pytest.raises(BackendError) as err:
        OpenAIGenerator(DOM, OpenAIBackendOptions(model="teacher-70b", base_url=fault.url, **FAST))
    msg = str(err.value)
    assert "\n" not in msg and "'openai'" in msg and fault.url in msg and "teacher-7b" in msg


def test_a_server_that_lists_no_models_is_trusted_with_the_configured_name():
    """transformers serve 5.17 lists only hub-cache models, never the local folder it serves."""
    server = FaultServer(unlisted=True)
    try:
        gen = OpenAIGenerator(DOM, OpenAIBackendOptions(model="my-folder", base_url=server.url, **FAST))
        assert gen.identity == "served:my-folder"
        with pytest.raises(BackendError, match="'auto' is not served|model 'auto' is not served"):
            OpenAIGenerator(DOM, OpenAIBackendOptions(model="auto", base_url=server.url, **FAST))
    finally:
        server.close()


def test_unreachable_server_and_refused_key():
    port = free_port()
    with pytest.raises(BackendError, match="cannot list models"):
        OpenAIGenerator(DOM, OpenAIBackendOptions(model="m", base_url=f"http://127.0.0.1:{port}/v1", **FAST))
    server = FaultServer(key="right")
    try:
        with pytest.raises(BackendError, match="HTTP 401") as err:
            OpenAIGenerator(DOM, OpenAIBackendOptions(model=server.model, base_url=server.url, **FAST))
        assert "right" not in str(err.value)
    finally:
        server.close()


def test_api_key_env_missing_names_the_variable(fault, monkeypatch):
    monkeypatch.delenv("RD_NO_SUCH_KEY", raising=False)
    with pytest.raises(BackendError, match="RD_NO_SUCH_KEY"):
        _gen(fault, api_key_env="RD_NO_SUCH_KEY")


def test_recipe_validation_names_backend_fields(rd_engine):
    from reasondistill.errors import RecipeError

    bad = Recipe(name="b", backends={"teacher": {"uses": "openai", "options": {"model": "m", "concurency": 3}}},
                 stages=[step("pairs", n=10)])
    with pytest.raises(RecipeError, match=r"backends\.teacher.*options\.concurency: unknown option"):
        rd_engine.validate(bad)
    missing = Recipe(name="b", stages=[step("pairs", n=10),
                                       step("annotate", annotator_options={"backend": {"uses": "openai"}})])
    with pytest.raises(RecipeError, match=r"stages\[1\]\.options.*options\.model: Field required"):
        rd_engine.validate(missing)
    unknown = Recipe(name="b", backends={"teacher": {"uses": "vllm-native"}}, stages=[step("pairs", n=10)])
    with pytest.raises(RecipeError, match="unknown backend 'vllm-native'; registered: openai, transformers"):
        rd_engine.validate(unknown)


SERVED_RECIPE = """
name: served
seed: 2
backends:
  teacher:
    uses: openai
    options: {{model: {model}, base_url: "{url}", api_key_env: RD_TEST_KEY, concurrency: {conc},
               retries: 2, backoff: 0.05, max_backoff: 0.2, timeout: 10}}
stages:
  - uses: pairs
    options: {{n: {n}, dev_fraction: 0.0}}
  - uses: annotate
    options: {{shard_size: {shard}, max_failed_share: {share}, on_low_parse: warn,
               annotator_options: {{max_new_tokens: {tokens}, retries: 0}}}}
"""


def _write(tmp_path, **kw) -> Path:
    params = {"conc": 4, "n": 40, "shard": 10, "share": 0.0, "tokens": 12, **kw}
    recipe = tmp_path / "served.yaml"
    recipe.write_text(SERVED_RECIPE.format(**params))
    return recipe


def _annotations(runs: Path) -> list[dict]:
    return load_from_disk(str(runs / "served" / "annotate" / "annotations")).to_list()


def test_failed_rows_fail_the_stage_then_resume_without_loss_and_no_key_leaks(tmp_path):
    """Rows whose requests fail after retries: the stage stops with a one-line error (shards kept);
    once the server is healthy a rerun redoes only those rows. The key never reaches any output."""
    secret = "sk-test-4b1d-never-log-me"
    server = FaultServer(key=secret)
    try:
        pairs = generate_pairs(n=40, seed=2)
        server.fail_queries = {pairs[13]["query"]}
        recipe = _write(tmp_path, model=server.model, url=server.url)
        runs = tmp_path / "runs"
        first = subprocess.run(cmd(recipe, runs), env={**env(), "RD_TEST_KEY": secret}, capture_output=True,
                               text=True, timeout=300)
        assert first.returncode == 2, first.stderr[-2000:]
        line = first.stderr.strip().splitlines()[-1]
        assert "max_failed_share" in line and "HTTP 500" in line and "rerun to resume" in line
        shards = runs / "served" / "annotate" / "annotations_shards"
        assert not (runs / "served" / "annotate" / "manifest.json").exists()
        assert any(shards.glob("shard-*.jsonl")), "finished shards are kept"
        server.fail_queries = set()
        asked = len(server.requests)
        second = subprocess.run(cmd(recipe, runs), env={**env(), "RD_TEST_KEY": secret}, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-2000:]
        rows = _annotations(runs)
        assert [r["pair_id"] for r in rows] == [f"pairs-{i:06d}" for i in range(40)] or \
            len({r["pair_id"] for r in rows}) == 40
        assert len(rows) == 40 and all(r["parse_ok"] and r["error"] is None for r in rows)
        redone = len(server.requests) - asked
        assert redone < 40, f"the rerun asked {redone} requests; only the failed rows should be redone"
        assert all(r["teacher"] == "served:teacher-7b" for r in rows)  # the server's folder is not recorded
        assert set(server.auth_seen) == {f"Bearer {secret}"}
        for text in [first.stdout, first.stderr, second.stdout, second.stderr]:
            assert secret not in text
        for path in runs.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"the API key leaked into {path}"
        manifest = json.loads((runs / "served" / "annotate" / "manifest.json").read_text())
        assert manifest["metrics"]["failed"] == 0 and manifest["metrics"]["parse_rate"] == 1.0
    finally:
        server.close()


def test_failures_under_the_share_are_unparsed_rows_carrying_the_error(tmp_path):
    server = FaultServer()
    try:
        pairs = generate_pairs(n=20, seed=2)
        server.fail_queries = {pairs[3]["query"]}
        n_fail = sum(p["query"] == pairs[3]["query"] for p in pairs)
        recipe = _write(tmp_path, model=server.model, url=server.url, n=20, share=0.5)
        subprocess.run(cmd(recipe, tmp_path / "runs"), env={**env(), "RD_TEST_KEY": "k"}, check=True,
                       capture_output=True, timeout=300)
        rows = _annotations(tmp_path / "runs")
        bad = [r for r in rows if r["error"]]
        assert len(bad) == n_fail and all(r["label"] == -1 and not r["parse_ok"] for r in bad)
        assert all("HTTP 500" in r["error"] for r in bad)
        manifest = json.loads((tmp_path / "runs" / "served" / "annotate" / "manifest.json").read_text())
        assert manifest["metrics"]["failed"] == n_fail
    finally:
        server.close()


def test_transport_options_do_not_change_the_stage_hash(rd_engine):
    from reasondistill.stage_hash import stage_hash

    def digest(**options):
        recipe = Recipe(name="h", backends={"teacher": {"uses": "openai", "options": {"model": "m", **options}}},
                        stages=[step("pairs", n=10), step("annotate")])
        stages = rd_engine.validate(recipe)
        return [stage_hash(recipe, s, "", {}, rd_engine.hooks.catalogue) for s in stages]

    base = digest()
    moved = digest(base_url="http://10.0.0.2:9000/v1", concurrency=64, timeout=5, retries=9, api_key_env="K")
    assert moved == base
    other = digest(model="m2")
    assert other[0] == base[0], "pairs does not generate: the teacher backend is not in its hash"
    assert other[1] != base[1]


def test_the_key_is_scrubbed_from_every_error_the_backend_raises(monkeypatch):
    monkeypatch.setenv("RD_TEST_KEY", "sk-never-shown")
    server = FaultServer(key="sk-never-shown")
    try:
        gen = _gen(server, api_key_env="RD_TEST_KEY")
        assert gen._scrub("proxy said: bad token sk-never-shown") == "proxy said: bad token ***"
    finally:
        server.close()


def test_backoff_doubles_from_the_first_retry_and_a_retry_after_is_capped_at_ten_minutes(fault):
    from reasondistill.plugins.backends.openai_wire import retry_after

    gen = _gen(fault, backoff=0.1, max_backoff=100.0)
    for k, base in ((1, 0.1), (2, 0.2), (4, 0.8)):  # +-50% jitter around backoff * 2**(k-1)
        assert 0.5 * base <= gen.backoff(k) <= 1.5 * base, k
    assert gen.backoff(1, asked=7.0) == 7.0  # a server's Retry-After asks more
    assert retry_after("100000") == 600.0 and retry_after("600") == 600.0 and retry_after("2.5") == 2.5
    assert retry_after("Wed, 21 Oct 2026 07:28:00 GMT") == 0.0 and retry_after(None) == 0.0


def test_one_request_id_per_body_whatever_its_key_order():
    from reasondistill.plugins.backends.openai_wire import request_id

    assert request_id({"model": "m", "seed": 1}) == request_id({"seed": 1, "model": "m"})
    assert request_id({"model": "m", "seed": 1}) != request_id({"model": "m", "seed": 2})


def test_an_interrupted_generate_sends_no_more_requests(fault):
    """A stop (here the progress bar raising, as Ctrl-C would) cancels the requests still queued."""
    gen = _gen(fault, concurrency=1)

    class Stop:
        def update(self, n):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gen.generate(_messages(12), progress=Stop())
    time.sleep(0.3)
    assert len(fault.requests) < 4, len(fault.requests)
