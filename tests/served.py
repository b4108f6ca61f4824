"""Servers for the served-teacher tests: a real ``transformers serve`` and a scripted fault server.

The fault server speaks just enough of the OpenAI API (``GET /v1/models``, ``POST
/v1/chat/completions``) to produce on demand what a real server rarely shows: HTTP 500, 429 with
``Retry-After``, malformed JSON, a response that never ends, a refused key.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ANSWER = "Reasoning: The service offers pizza, as asked.\nLabel: relevant"
# top_logprobs at the label token: the expected label probabilities are these, exponentiated and
# normalised in label order (irrelevant, partly relevant, relevant)
LABEL_TOP = {" relevant": -0.2, " partly": -2.0, " irrelevant": -3.0, " the": -4.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_transformers_serve(model: Path, port: int, log: Path) -> subprocess.Popen:
    """``transformers serve`` on 127.0.0.1 with ``model`` preloaded; returns once it answers."""
    # transformers 5.17's GET /v1/models scans the hub cache and fails where the folder does not exist
    cache = log.parent / "hf-hub-cache"
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": str(cache)}
    cli = Path(sys.executable).with_name("transformers")
    cmd = [str(cli) if cli.exists() else "transformers", "serve", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"transformers serve did not answer within 180 s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


class FaultServer:
    """A threaded local server. ``script`` is consumed one entry per chat request (then ``ok``):
    ``ok``, any HTTP status as digits (``500``, ``408``, ``400``, ...), ``429`` (Retry-After: 1), ``garbage`` (HTTP 200, not JSON), ``hang`` (headers,
    then silence), ``trickle`` (one byte every 50 ms, forever), ``401``, ``nochoices`` and ``nomessage`` (HTTP 200, a
reply without them). Paths outside ``/v1/`` get 404, as on a real server. Prompts containing any of
    ``fail_queries`` always get HTTP 500. ``key``: the Bearer key required (401 otherwise)."""

    def __init__(self, model: str = "teacher-7b", key: str | None = None, unlisted: bool = False, port: int = 0,
                 usage: bool = True, latency: float = 0.0, slots: int = 0, answers_as: str | None = None):
        self.unlisted = unlisted  # GET /v1/models answers an empty list
        self.usage = usage  # replies carry the OpenAI usage block
        self.answers_as = answers_as  # the model name replies carry (default: the one asked for)
        self.pad_to: int | None = None  # a reply's body padded with spaces to this many bytes (still JSON)
        # a GPU server in small: each answer takes ``latency`` s, at most ``slots`` at once (0: no limit)
        self.latency, self._slots = latency, threading.Semaphore(slots) if slots else None
        self.model, self.key = model, key
        self.script: list[str] = []
        self.fail_queries: set[str] = set()
        self.requests: list[dict] = []
        self.auth_seen: list[str] = []
        self.request_ids: list[str | None] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_action(self, body: dict) -> str:
        with self._lock:
            self.requests.append(body)
            user = body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")
            if any(q in user for q in self.fail_queries):
                return "500"
            return self.script.pop(0) if self.script else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _authorized(self) -> bool:
                got = self.headers.get("Authorization", "")
                server.auth_seen.append(got)
                if server.key is not None and got != f"Bearer {server.key}":
                    self._send(401, b'{"error": "invalid api key"}')
                    return False
                return True

            def _not_v1(self) -> bool:
                if not self.path.startswith("/v1/"):
                    self._send(404, b'{"detail": "Not Found"}')
                    return True
                return False

            def do_GET(self):
                if self._not_v1() or not self._authorized():
                    return
                data = {"object": "list", "data": [] if server.unlisted else [
                    {"id": server.model, "object": "model", "owned_by": "test", "root": f"/models/{server.model}"}]}
                self._send(200, json.dumps(data).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self._not_v1() or not self._authorized():
                    return
                server.request_ids.append(self.headers.get("X-Request-Id"))
                action = server.next_action(body)
                if action == "ok" and server.latency:
                    with server._slots or threading.Lock():
                        time.sleep(server.latency)
                if action == "ok":
                    chat = self.path.endswith("/chat/completions")
                    reply = completion(body) if chat else text_completion(body)
                    if not server.usage:
                        reply.pop("usage")
                    if server.answers_as:
                        reply["model"] = server.answers_as
                    payload = json.dumps(reply).encode()
                    self._send(200, payload.ljust(server.pad_to or 0, b" "))
                elif action == "nochoices":
                    self._send(200, b'{"id": "x", "choices": []}')
                elif action == "nomessage":
                    self._send(200, b'{"id": "x", "choices": [{"index": 0, "finish_reason": "stop"}]}')
                elif action == "429":
                    self._send(429, b'{"error": "slow down"}', {"Retry-After": "1"})
                elif action.isdigit():  # any other status: "500", "401", "408", "400", ...
                    self._send(int(action), b'{"error": "scripted failure"}')
                elif action == "garbage":
                    self._send(200, b'{"choices": [ this is not json')
                elif action in ("hang", "trickle"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    try:
                        for _ in range(400):
                            if action == "trickle":
                                self.wfile.write(b" ")
                                self.wfile.flush()
                            time.sleep(0.05)
                    except OSError:
                        pass
                    self.close_connection = True

        return Handler


def completion(body: dict) -> dict:
    """A chat completion answering ``ANSWER`` with ``top_logprobs`` at the label token."""
    tokens = ["Reason", "ing", ":", " The", " service", " offers", " pizza", ",", " as", " asked", ".", "\n",
              "Label", ":", " relevant"]
    assert "".join(tokens) == ANSWER
    content = []
    for t in tokens:
        top = LABEL_TOP if t == " relevant" else {t: -0.01}
        content.append({"token": t, "logprob": top[t], "top_logprobs": [{"token": k, "logprob": v} for k, v in top.items()]})
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER + "\nmore text"}}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": content}
    return {"id": "x", "object": "chat.completion", "model": body.get("model"), "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(tokens), "total_tokens": 10 + len(tokens)}}


def text_completion(body: dict) -> dict:
    """The same answer in the legacy ``/v1/completions`` shape (``logprobs`` as parallel lists)."""
    chat = completion({**body, "logprobs": True})
    content = chat["choices"][0]["logprobs"]["content"]
    choice = {"index": 0, "finish_reason": "stop", "text": chat["choices"][0]["message"]["content"]}
    if body.get("logprobs"):
        choice["logprobs"] = {"tokens": [c["token"] for c in content],
                              "token_logprobs": [c["logprob"] for c in content],
                              "top_logprobs": [{t["token"]: t["logprob"] for t in c["top_logprobs"]} for c in content]}
    return {"id": "x", "object": "text_completion", "choices": [choice], "usage": chat["usage"]}
