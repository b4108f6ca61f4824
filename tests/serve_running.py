"""The real scoring server run in a thread for the tests (test_serve_traffic.py,
test_serve_answers.py): its fixtures, a scorer whose batches can be slowed or held, and a client."""

from __future__ import annotations

import logging
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from reasondistill.plugins.backends.openai_backend import httpx_module
from reasondistill.score_server import Scorer, ServeOptions, create_app, uvicorn_server

from .served import free_port

httpx = httpx_module()


@pytest.fixture(scope="module")
def package(tiny_served_run) -> Path:
    return tiny_served_run / "served" / "export" / "model"


@pytest.fixture(scope="module")
def real_scorer(package) -> Scorer:
    return Scorer(package, "fp32", batch_size=64)


class SlowScorer:
    """The real scorer, ``delay`` seconds slower per batch, recording each batch's queries; after
    :meth:`hold`, the next batch waits in the model until :meth:`release`, so a queue builds behind
    it however slowly the clients arrive."""

    def __init__(self, scorer: Scorer, delay: float = 0.0):
        self.scorer, self.delay, self.batches = scorer, delay, []
        self.labels, self.item_fields, self.result = scorer.labels, scorer.item_fields, scorer.result
        self.holding, self.released = threading.Event(), threading.Event()
        self.released.set()

    def __call__(self, pairs):
        self.batches.append([p["query"] for p in pairs])
        self.holding.set()
        self.released.wait(timeout=60)
        time.sleep(self.delay)
        return self.scorer(pairs)

    def hold(self) -> None:
        self.holding.clear()
        self.released.clear()

    def release(self) -> None:
        self.released.set()


@contextmanager
def running(package, scorer, **options):
    """The real server (guarded protocol, real app) in a thread; yields (url, app, server)."""
    opts = ServeOptions(variant="fp32", **options)
    app = create_app(package, opts, scorer=scorer)
    port = free_port()
    server = uvicorn_server(app, "127.0.0.1", port, opts)
    server.install_signal_handlers = lambda: None  # not the main thread
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    try:
        yield f"{'https' if opts.ssl_certfile else 'http'}://127.0.0.1:{port}", app, server
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture
def access_lines():
    """The access log's lines while the test runs."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("reasondistill.access")
    log.addHandler(handler)
    level, log.level = log.level, logging.INFO
    yield lines
    log.removeHandler(handler)
    log.setLevel(level)


def read_answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def post(url: str, path: str = "/score", **kw) -> tuple[int, float, httpx.Response]:
    begun = time.perf_counter()
    resp = httpx.post(url + path, timeout=30, **kw)
    return resp.status_code, time.perf_counter() - begun, resp
