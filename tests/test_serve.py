"""``reasondistill serve`` and the student package: a real server on a free local port."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reasondistill.plugins.backends.openai_backend import httpx_module
from reasondistill.plugins.domains.local_services import LocalServices

from .reliability.helpers import env
from .served import free_port

httpx = httpx_module()
from .serve_cases import CASES, LIMITS, OWN_TESTS, PAIR


def start_server(target: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "reasondistill", "serve", str(target), "--port", str(port), *flags],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not answer within 120 s")


@pytest.fixture(scope="module")
def package(tiny_served_run) -> Path:
    return tiny_served_run / "served" / "export" / "model"


@pytest.fixture(scope="module")
def server(package):
    """fp32: int8 dynamic quantization scales activations per batch, so a pair's probabilities move
    by ~1e-4 with its batch-mates, as much as the tiny student's pairs differ from each other."""
    proc, url = start_server(package, *LIMITS, "--variant", "fp32")
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def dev_pairs(tiny_served_run) -> list[dict]:
    from datasets import load_from_disk

    dev = load_from_disk(str(tiny_served_run / "served" / "pairs" / "dev")).to_list()
    return [{k: r[k] for k in ("query", "item", "district", "price", "hours") if k in r} for r in dev[:48]]


def test_scores_equal_the_in_process_predictor(server, package, dev_pairs):
    from reasondistill.onnx_export import OnnxPredictor
    from reasondistill.plugins.domains.local_services import LocalServices

    got = httpx.post(server + "/score", json={"pairs": dev_pairs}, timeout=30).json()["results"]
    predictor = OnnxPredictor(package / "onnx", "fp32")
    dom = LocalServices()
    probs = predictor.predict_proba([dom.query_text(r) for r in dev_pairs], [dom.item_text(r) for r in dev_pairs])
    labels = ["irrelevant", "partly relevant", "relevant"]
    assert [r["label_id"] for r in got] == probs.argmax(-1).tolist()
    assert [r["label"] for r in got] == [labels[i] for i in probs.argmax(-1)]
    for r, p in zip(got, probs):
        assert list(r["probs"].values()) == pytest.approx(p.tolist(), abs=1e-5)
        assert r["score"] == pytest.approx((p[1] + 2 * p[2]) / 2, abs=1e-5)


def test_rerank_sorts_documents_by_score(server, dev_pairs):
    query = dev_pairs[0]["query"]
    docs = [p["item"] for p in dev_pairs[:8]]
    ranked = httpx.post(server + "/rerank", json={"query": query, "documents": docs, "top_n": 5,
                                                  "return_documents": True}, timeout=30).json()["results"]
    scores = httpx.post(server + "/score", json={"pairs": [{"query": query, "item": d} for d in docs]},
                        timeout=30).json()["results"]
    expected = sorted(range(8), key=lambda i: (-scores[i]["score"], i))[:5]
    assert [r["index"] for r in ranked] == expected
    assert all(r["document"] == docs[r["index"]] for r in ranked)


@pytest.mark.parametrize("name, method, path, payload, headers, status, reason", CASES, ids=[c[0] for c in CASES])
def test_the_bad_input_table(server, name, method, path, payload, headers, status, reason):
    """Each row of docs/serving.md's table against the running server; it keeps serving after each."""
    resp = httpx.request(method, server + path, content=payload or None, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    if status != 200:
        error = resp.json()["error"]
        assert reason in error and "\n" not in error
    assert httpx.post(server + "/score", json={"pairs": [PAIR]}, timeout=30).status_code == 200, "still serving"


def test_the_docs_table_is_this_table():
    """docs/serving.md shows exactly the rows tested here, and each row with a test of its own names one that exists."""
    import re

    text = (Path(__file__).parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    section = text.split("### Bad input", 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| input")]
    documented = {r[0]: (int(r[1]), r[2].strip("`")) for r in rows}
    expected = {c[0]: (c[5], c[6]) for c in CASES} | {k: v[:2] for k, v in OWN_TESTS.items()}
    assert len(rows) == len(documented) == len(expected) >= 70
    for name, (status, reason) in expected.items():
        assert documented.get(name, (None, ""))[0] == status, name
        assert reason in documented[name][1].replace("\\|", "|"), name
    tests = "".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py"))
    for name, (_, _, test) in OWN_TESTS.items():
        assert re.search(rf"def {test}\b", tests), f"{name}: no test {test}"


def _answer(sock: socket.socket) -> str:
    """A whole HTTP response from a raw socket (headers and a JSON body)."""
    sock.settimeout(10)
    data = b""
    while not data.rstrip().endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def test_declared_oversize_body_is_refused_before_reading(server):
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{")
        head = _answer(s)
    assert head.startswith("HTTP/1.1 413") and "max_body_bytes" in head


def test_slow_client_gets_408_while_others_are_served(server):
    port = int(server.rsplit(":", 1)[1])
    body = json.dumps({"pairs": [PAIR]}).encode()
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        started = time.time()
        fast = httpx.post(server + "/score", json={"pairs": [PAIR]}, timeout=30)
        assert fast.status_code == 200 and time.time() - started < 1.0, "another client is served meanwhile"
        answer = _answer(slow)
    assert answer.startswith("HTTP/1.1 408") and "not received within 1.5 s" in answer


def test_concurrent_requests_are_micro_batched(server, dev_pairs):
    health = httpx.get(server + "/health").json()
    time.sleep(1.2)
    assert health["status"] == "ok" and httpx.get(server + "/health").json()["uptime_s"] - health["uptime_s"] >= 1.0
    before = health["batches"]
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        results[i] = httpx.post(server + "/score", json={"pairs": [dev_pairs[i]]}, timeout=30).json()["results"][0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = httpx.get(server + "/health").json()["batches"] - before
    assert batches < 32, "concurrent requests shared batches"
    together = httpx.post(server + "/score", json={"pairs": dev_pairs[:32]}, timeout=30).json()["results"]
    for i, r in enumerate(together):  # probabilities, not labels: the tiny student's labels are nearly constant
        assert list(results[i]["probs"].values()) == pytest.approx(list(r["probs"].values()), abs=1e-5)


def test_full_queue_is_503_with_retry_after(package):
    proc, url = start_server(package, "--max-queue", "4", "--max-wait-ms", "800")
    try:
        first: list = []
        t = threading.Thread(target=lambda: first.append(httpx.post(url + "/score", json={"pairs": [PAIR] * 4},
                                                                    timeout=30)))
        t.start()
        while httpx.get(url + "/health").json()["queued_pairs"] < 4:
            time.sleep(0.01)
        busy = httpx.post(url + "/score", json={"pairs": [PAIR]}, timeout=30)
        t.join()
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "max_queue 4" in busy.json()["error"]
        assert first[0].status_code == 200
    finally:
        proc.kill()
        proc.wait()


def test_graceful_shutdown_finishes_queued_requests(package):
    proc, url = start_server(package, "--max-wait-ms", "1000", "--max-queue-ms", "5000")
    answers: list[int] = []

    def one() -> None:
        answers.append(httpx.post(url + "/score", json={"pairs": [PAIR]}, timeout=30).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while httpx.get(url + "/health").json()["queued_pairs"] < 8 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert answers == [200] * 8
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown


def test_metadata_and_model_card(server, package):
    """``/metadata`` is the package's lineage plus how it is served; the card shows the same figures.
    (The quickstart's teacher and annotations in a lineage: test_quickstart.)"""
    from huggingface_hub import ModelCard

    from reasondistill.student_package import read_lineage

    meta = httpx.get(server + "/metadata").json()
    lineage = json.loads(json.dumps(read_lineage(package)))
    assert {k: meta[k] for k in lineage} == lineage and len(meta["recipe_hash"]) == 16
    assert meta["variant"] == "fp32" and meta["labels"] == list(LocalServices().labels) and meta["limits"]["max_pairs"] == 64
    assert {"macro_f1", "accuracy", "f1_relevant", "auc_relevant", "ndcg@10"} <= set(meta["dev_metrics"])
    assert meta["export"]["agreement_int8"] >= 0.95
    card = ModelCard((package / "README.md").read_text())
    assert card.data.pipeline_tag == "text-classification" and "reasondistill" in card.data.tags
    assert str(meta["dev_metrics"]["macro_f1"]) in card.text and str(meta["export"]["agreement_int8"]) in card.text


def test_push_dry_run_lists_a_complete_folder_and_offline_push_is_one_line(tiny_served_run, package):
    runs = tiny_served_run
    cmd = [sys.executable, "-m", "reasondistill", "push", "served", "--runs-dir", str(runs), "--repo-id", "me/student"]
    dry = subprocess.run(cmd + ["--dry-run"], env=env(), capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    listed = {line.strip() for line in dry.stdout.splitlines()[1:]}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "lineage.json", "reasondistill.json",
            "onnx/model.onnx", "onnx/model.int8.onnx"} <= listed
    offline = subprocess.run(cmd, env={**env(), "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_x"}, capture_output=True,
                             text=True, timeout=120)
    assert offline.returncode == 2 and len(offline.stderr.strip().splitlines()) == 1
    assert "push to me/student failed" in offline.stderr and "hf_x" not in offline.stderr
    from reasondistill.student_package import missing

    assert missing(package) == []


def test_bad_serve_flag_is_one_line_naming_it(package):
    out = subprocess.run([sys.executable, "-m", "reasondistill", "serve", str(package), "--max-batch", "0"],
                         env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--max-batch" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    missing = subprocess.run([sys.executable, "-m", "reasondistill", "serve", "no-such-run"], env=env(),
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no-such-run" in missing.stderr


def test_api_key_guards_every_route_but_health_and_the_access_log_has_a_line_per_request(package):
    proc, url = start_server(package, "--api-key", "s3cret-key")
    try:
        body = {"pairs": [PAIR]}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-key"}):
            resp = httpx.post(url + "/score", json=body, headers=headers, timeout=30)
            assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer", headers
            assert "missing or wrong API key" in resp.json()["error"]
        assert httpx.get(url + "/metadata", timeout=30).status_code == 401
        assert httpx.get(url + "/health", timeout=30).status_code == 200  # liveness stays open
        ok = {"authorization": "Bearer s3cret-key"}
        assert httpx.post(url + "/score", json=body, headers=ok, timeout=30).status_code == 200
        meta = httpx.get(url + "/metadata", headers=ok, timeout=30)
        assert meta.status_code == 200 and "s3cret-key" not in meta.text
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    lines = [line for line in out.splitlines() if " POST /score " in line]
    assert len(lines) == 4 and [line.split(" POST /score ")[1].split()[0] for line in lines] == ["401"] * 3 + ["200"]
    assert all(" pairs=" in line and " queue_ms=" in line and " total_ms=" in line for line in lines)


def test_api_key_from_the_environment_and_label_names_in_the_config(package, monkeypatch):
    from starlette.testclient import TestClient

    from reasondistill.score_server import ServeOptions, create_app

    monkeypatch.setenv("REASONDISTILL_API_KEY", "from-env")
    with TestClient(create_app(package, ServeOptions(variant="fp32"))) as client:
        assert client.post("/score", json={"pairs": [PAIR]}).status_code == 401
        resp = client.post("/score", json={"pairs": [PAIR]}, headers={"authorization": "Bearer from-env"})
        assert resp.status_code == 200 and resp.json()["results"][0]["label"] in LocalServices.labels
    config = json.loads((package / "config.json").read_text())
    assert list(config["id2label"].values()) == list(LocalServices.labels)  # not LABEL_0..2


def test_the_docs_show_every_serve_flag_with_its_bounds():
    """docs/serving.md's *Every flag* is generated from ``ServeOptions``: a changed default or bound
    fails here until the docs say it (regenerate with ``reasondistill.score_server.flags_markdown``)."""
    from reasondistill.score_server import flags_markdown

    text = (Path(__file__).parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    assert flags_markdown() in text
    assert "| `--max-queue-ms` | number > 0 | `1000.0` |" in flags_markdown()
