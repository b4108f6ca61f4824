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
from reasondistill.fingerprint import portable_ref
from reasondistill.generators import cut_at_stop, label_mass
from reasondistill.hf_compat import transformers_major
from reasondistill.plugins.backend_openai import OpenAIBackendOptions, OpenAIGenerator
from reasondistill.plugins.local_services import LocalServices, generate_pairs

from .reliability.helpers import cmd, env
from .served import ANSWER, LABEL_TOP, FaultServer, free_port, start_transformers_serve, stop

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


@pytest.mark.parametrize("action, reason", [("500", "HTTP 500"), ("garbage", "malformed JSON"),
                                            ("hang", "Timeout"), ("trickle", "no complete response")])
def test_gives_up_after_retries_with_the_error(fault, action, reason):
    fault.script = [action] * 10
    [[g]] = _gen(fault, retries=1, timeout=0.5).generate(_messages(1))
    assert g.text == "" and g.label_probs is None
    assert "gave up after 2 attempts" in g.error and reason in g.error
    assert len(fault.requests) == 2


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
    from reasondistill.engine import stage_hash

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
    from reasondistill.generation import TeacherGenerator

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


def test_server_killed_mid_annotation_then_restarted_loses_and_duplicates_nothing(tiny_served, tmp_path):
    reference = tmp_path / "ref"
    recipe = _write(tmp_path, model=tiny_served.model, url=tiny_served.url, n=120, conc=2, tokens=48)
    subprocess.run(cmd(recipe, reference), env={**env(), "RD_TEST_KEY": "k"}, check=True, capture_output=True,
                   timeout=600)
    expected = _annotations(reference)

    runs = tmp_path / "runs"
    shards = runs / "served" / "annotate" / "annotations_shards"
    proc = subprocess.Popen(cmd(recipe, runs), env={**env(), "RD_TEST_KEY": "k"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("shard-*.jsonl"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    tiny_served.kill()
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


def test_two_real_servers_one_killed_mid_run_lose_and_duplicate_nothing(tiny_served, tiny_teacher, tmp_path):
    """Two ``transformers serve`` of the tiny teacher; the first is killed mid-run: the run goes
    on over the second and its rows are those of one server, pair for pair and text for text."""
    reference = tmp_path / "ref"
    subprocess.run(cmd(_write(tmp_path, model=tiny_served.model, url=tiny_served.url, n=120, conc=2, tokens=48),
                       reference), env={**env(), "RD_TEST_KEY": "k"}, check=True, capture_output=True, timeout=600)
    expected = _annotations(reference)
    port_b = free_port()
    second = start_transformers_serve(tiny_teacher, port_b, tmp_path / "second.log")
    try:
        recipe = tmp_path / "two.yaml"
        recipe.write_text(TWO_ENDPOINTS_RECIPE.format(model=tiny_served.model, a=tiny_served.url,
                                                      b=f"http://127.0.0.1:{port_b}/v1"))
        runs = tmp_path / "runs"
        shards = runs / "served" / "annotate" / "annotations_shards"
        proc = subprocess.Popen(cmd(recipe, runs), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and len(list(shards.glob("shard-*.jsonl"))) < 3 and proc.poll() is None:
            time.sleep(0.02)
        tiny_served.kill()
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
