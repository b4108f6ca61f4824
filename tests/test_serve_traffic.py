"""``reasondistill serve`` under production traffic: overload, slow and gone clients, connection
limits for each HTTP implementation, batching by pairs, metrics, readiness, CORS and TLS.

The server is the real one (uvicorn with the guarded protocol, the real app, the tiny student's
real ONNX model), run in a thread on a free local port. Where a test needs the model to be slow
(to build a queue on purpose), the scorer sleeps before each batch: the delay is injected, the
scoring is real.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time

import pytest

from reasondistill.plugins.backends.openai_backend import httpx_module
from reasondistill.score_server import ServeOptions, create_app

from .serve_cases import PAIR
from .serve_running import SlowScorer, access_lines, package, post, read_answer, real_scorer, running  # noqa: F401 (fixtures)

httpx = httpx_module()


# ---- overload -----------------------------------------------------------------------------------

def test_overload_is_refused_at_once_and_accepted_requests_stay_fast(package, real_scorer, access_lines):
    """60 clients at once against a model that does 4 pairs per 200 ms (20 pairs/s), busy with a
    batch held until the first refusal, so the queue is over the limit however slowly 60 client
    threads reach a loaded machine: whatever cannot start within max_queue_ms gets 503 with
    Retry-After, mostly at once; no accepted request waits longer than max_queue_ms, then one batch;
    no other 5xx."""
    scorer = SlowScorer(real_scorer, delay=0.2)
    with running(package, scorer, max_batch=4, max_queue_ms=1000) as (url, app, _), \
            httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)) as client:
        post(url, json={"pairs": [PAIR] * 4})  # one measured batch: the admission estimate has a rate
        stats = app.state.batcher.stats
        scorer.hold()
        blocker = threading.Thread(target=lambda: post(url, "/rerank", json={"query": "q", "documents": ["d"]}))
        blocker.start()
        assert scorer.holding.wait(timeout=30), "the held batch never reached the model"
        results: list[httpx.Response] = []
        ready = threading.Barrier(61)

        def one() -> None:
            ready.wait()
            results.append(client.post(url + "/score", json={"pairs": [PAIR]}))

        threads = [threading.Thread(target=one) for _ in range(60)]
        for t in threads:
            t.start()
        ready.wait()
        deadline = time.time() + 30
        while not stats.refused_wait and time.time() < deadline:
            time.sleep(0.005)
        scorer.release()
        for t in threads + [blocker]:
            t.join()
    statuses = [r.status_code for r in results]
    assert set(statuses) == {200, 503}, statuses
    refused = [r for r in results if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert all("more than max_queue_ms 1000" in r.json()["error"] for r in refused)
    assert stats.refused_wait == len(refused) and stats.refused_queue_full == 0
    # on the server's clock (60 client threads on 2 cores add a wait of their own to the client's)
    scored = [line for line in access_lines if line.startswith("POST /score ")]
    served = [_access_ms(line) for line in scored if " 200 " in line]
    assert max(q for q, _ in served) <= 1000, "no request starts later than max_queue_ms"
    assert max(t - q for q, t in served) < 800, "then one batch (200 ms here) and the answer"
    at_once = sorted(t for line in scored if " 503 " in line for _, t in [_access_ms(line)])
    assert at_once[len(at_once) // 2] < 50, "most refusals come at once, not after a wait"
    assert len(at_once) == len(refused)


def _access_ms(line: str) -> tuple[float, float]:
    """(queue ms, total ms) of an access-log line (queue 0 where the request never queued)."""
    queue = line.split("queue_ms=", 1)[1].split()[0]
    return (0.0 if queue == "-" else float(queue)), float(line.rsplit("total_ms=", 1)[1])


# ---- batching by pairs --------------------------------------------------------------------------

def test_a_large_request_is_split_over_batches_and_small_ones_are_merged(package, real_scorer):
    scorer = SlowScorer(real_scorer, delay=0.2)
    docs = [f"shop number {i}" for i in range(30)]
    with running(package, scorer, max_batch=8) as (url, _, _):
        alone = post(url, "/rerank", json={"query": "pizza", "documents": docs})[2].json()["results"]
        assert [len(b) for b in scorer.batches[-4:]] == [8, 8, 8, 6], "split into max_batch pairs"
        scorer.batches.clear()
        results: dict[int, dict] = {}

        def one(i: int) -> None:
            results[i] = post(url, json={"pairs": [{"query": f"q{i}", "item": docs[i]}]})[2].json()["results"][0]

        busy = threading.Thread(target=lambda: post(url, json={"pairs": [PAIR]}))
        busy.start()
        time.sleep(0.05)  # the model is busy: the next requests queue and are merged
        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads + [busy]:
            t.join()
    assert len(scorer.batches) < 7 and max(len(b) for b in scorer.batches) > 1, scorer.batches
    expected = real_scorer([{"query": "pizza", "item": d} for d in docs])
    by_index = {r["index"]: r["relevance_score"] for r in alone}
    for i, p in enumerate(expected):  # reassembled in order: each document keeps its own score
        assert by_index[i] == pytest.approx(real_scorer.result(p)["score"], abs=1e-5)
    for i in range(6):
        assert results[i]["score"] == pytest.approx(real_scorer.result(
            real_scorer([{"query": f"q{i}", "item": docs[i]}])[0])["score"], abs=1e-5)


# ---- clients that go ----------------------------------------------------------------------------

def test_work_of_a_disconnected_client_is_dropped_before_it_runs(package, real_scorer, access_lines, caplog):
    scorer = SlowScorer(real_scorer, delay=0.5)
    with running(package, scorer) as (url, app, _):
        port = int(url.rsplit(":", 1)[1])
        busy = threading.Thread(target=lambda: post(url, json={"pairs": [PAIR]}))
        busy.start()
        time.sleep(0.1)
        body = b'{"pairs": [{"query": "gone", "item": "x"}]}'
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.1)  # queued behind the busy batch
        busy.join()
        time.sleep(0.3)
        assert post(url, json={"pairs": [PAIR]})[0] == 200
        stats = app.state.batcher.stats
    assert all("gone" not in b for b in scorer.batches), scorer.batches
    assert stats.dropped_disconnected == 1
    gone = [line for line in access_lines if " 499 " in line]
    assert len(gone) == 1 and gone[0].startswith("POST /score 499 pairs=1")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], "no traceback, no error"


# ---- connections --------------------------------------------------------------------------------

@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_slow_headers_are_cut_for_each_http_implementation(package, real_scorer, http):
    with running(package, real_scorer, http=http, header_timeout_s=1, keep_alive_s=30) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as slow, \
                socket.create_connection(("127.0.0.1", port)) as idle:
            begun = time.perf_counter()
            slow.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
            for _ in range(3):  # a byte now and then keeps no connection alive past the deadline
                time.sleep(0.2)
                slow.sendall(b"X")
            assert post(url, json={"pairs": [PAIR]})[0] == 200, "others are served meanwhile"
            answer = read_answer(slow)
            elapsed = time.perf_counter() - begun
            silent = read_answer(idle)
        with socket.create_connection(("127.0.0.1", port)) as kept:
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            kept.sendall(b"GET /health HTTP/1.1\r\nHo")  # the next request on a kept-alive connection, slowly
            second = read_answer(kept)
    assert answer.startswith(b"HTTP/1.1 408") and b"request headers not received within 1 s" in answer
    assert 0.9 < elapsed < 3.0
    assert second.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 408" in second
    assert silent.startswith(b"HTTP/1.1 408"), "a connection that never sends a request is closed too"


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_s(package, real_scorer):
    with running(package, real_scorer, keep_alive_s=0.5, header_timeout_s=30) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            begun = time.perf_counter()
            answer = read_answer(s, timeout=5)  # everything until the server closes it
            idle = time.perf_counter() - begun
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1
    assert 0.4 < idle < 3.0, idle


def _head_of(size: int) -> bytes:
    """A GET /health request whose line and headers are exactly ``size`` bytes."""
    start = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_oversize_headers_are_431_for_each_http_implementation(package, real_scorer, http):
    with running(package, real_scorer, http=http) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        answers = {}
        for size in (16_384, 16_385, 100_000):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(_head_of(size)[:-4])
                time.sleep(0.05)
                try:
                    s.sendall(b"\r\n\r\n")
                except OSError:  # refused before the end arrived
                    pass
                answers[size] = read_answer(s, timeout=3)
    assert answers[16_384].startswith(b"HTTP/1.1 200"), "exactly max_header_bytes is accepted"
    for size in (16_385, 100_000):
        assert answers[size].startswith(b"HTTP/1.1 431"), answers[size][:80]
        assert b"request headers larger than max_header_bytes 16384" in answers[size]


def test_connections_over_the_cap_are_refused_at_connect(package, real_scorer):
    with running(package, real_scorer, max_connections=3) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            refused = read_answer(extra, timeout=3)
        held.pop().close()
        time.sleep(0.1)
        ok = post(url, "/score", json={"pairs": [PAIR]}, headers={"connection": "close"})[0]
        for s in held:
            s.close()
    assert refused.startswith(b"HTTP/1.1 503") and b"too many connections (max_connections 3)" in refused
    assert ok == 200


# ---- operations ---------------------------------------------------------------------------------

def test_metrics_count_requests_pairs_and_batches(package, real_scorer):
    with running(package, real_scorer) as (url, _, _):
        for n in (1, 2, 3):
            post(url, json={"pairs": [PAIR] * n})
        post(url, json={"pairs": []})
        post(url, "/rerank", json={"query": "pizza", "documents": ["a", "b", "c", "d"]})
        text = httpx.get(url + "/metrics", timeout=30).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines['reasondistill_requests_total{path="/score",status="200"}']) == 3
    assert float(lines['reasondistill_requests_total{path="/score",status="422"}']) == 1
    assert float(lines['reasondistill_pairs_total{path="/score"}']) == 6
    assert float(lines['reasondistill_pairs_total{path="/rerank"}']) == 4
    assert float(lines["reasondistill_batch_pairs_count"]) == 4 and float(lines["reasondistill_batch_pairs_sum"]) == 10
    assert float(lines['reasondistill_request_seconds_count{path="/score"}']) == 4
    assert float(lines["reasondistill_queue_pairs"]) == 0 and float(lines["reasondistill_ready"]) == 1
    assert float(lines["reasondistill_queue_seconds_count"]) == 4  # every scored request
    # the latency buckets dashboards are built on (seconds)
    buckets = [k.split('le="')[1].split('"')[0] for k in lines if k.startswith('reasondistill_request_seconds_bucket{')
               and 'path="/score"' in k]
    assert buckets == ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0",
                       "10.0", "+Inf"]


def test_readiness_is_distinct_from_liveness(package, real_scorer):
    from starlette.testclient import TestClient

    app = create_app(package, ServeOptions(variant="fp32"), scorer=real_scorer)
    client = TestClient(app)
    assert client.get("/ready").status_code == 503 and "starting" in client.get("/ready").json()["error"]
    assert client.get("/health").status_code == 200  # alive while not ready
    with TestClient(app) as live:
        assert live.get("/ready").json() == {"status": "ready"}
        app.state.serving["draining"] = True
        drain = live.get("/ready")
        assert drain.status_code == 503 and "shutting down" in drain.json()["error"]
        assert live.get("/health").status_code == 200
    # the server's own shutdown (the lifespan's end) drains: /ready stays 503 from then on
    fresh = create_app(package, ServeOptions(variant="fp32"), scorer=real_scorer)
    with TestClient(fresh) as live:
        assert live.get("/ready").status_code == 200
    assert fresh.state.serving["draining"] is True


def test_sigterm_turns_readiness_off_and_finishes_accepted_work(package, real_scorer):
    import signal

    scorer = SlowScorer(real_scorer, delay=0.5)
    with running(package, scorer) as (url, app, server):
        answers: list[int] = []
        warmed = len(scorer.batches)
        t = threading.Thread(target=lambda: answers.append(post(url, json={"pairs": [PAIR]})[0]))
        t.start()
        deadline = time.time() + 30
        while len(scorer.batches) == warmed and time.time() < deadline:  # accepted, and being scored
            time.sleep(0.01)
        server.handle_exit(signal.SIGTERM, None)
        assert app.state.serving["draining"] is True
        t.join()
    assert answers == [200]


def test_cors_is_off_unless_origins_are_configured(package, real_scorer):
    preflight = {"origin": "https://shop.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    with running(package, real_scorer, cors_origins="https://shop.example", api_key="k") as (url, _, _):
        ok = httpx.options(url + "/score", headers=preflight, timeout=30)
        other = httpx.options(url + "/score", headers={**preflight, "origin": "https://evil.example"}, timeout=30)
        scored = httpx.post(url + "/score", json={"pairs": [PAIR]}, timeout=30,
                            headers={"origin": "https://shop.example", "authorization": "Bearer k"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://shop.example"
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert scored.status_code == 200 and scored.headers["access-control-allow-origin"] == "https://shop.example"
    with running(package, real_scorer) as (url, _, _):
        plain = httpx.post(url + "/score", json={"pairs": [PAIR]}, headers={"origin": "https://shop.example"},
                           timeout=30)
        pre = httpx.options(url + "/score", headers=preflight, timeout=30)
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_with_uvicorns_own_certificate_options(package, real_scorer, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with running(package, real_scorer, ssl_certfile=str(cert), ssl_keyfile=str(key)) as (url, _, _):
        assert url.startswith("https://")
        resp = httpx.post(url + "/score", json={"pairs": [PAIR]}, verify=str(cert), timeout=30)
        with pytest.raises(httpx.TransportError):
            httpx.post(url.replace("https", "http") + "/score", json={"pairs": [PAIR]}, timeout=5)
    assert resp.status_code == 200 and resp.json()["results"][0]["label"] in real_scorer.labels
