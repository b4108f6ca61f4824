"""``reasondistill serve``: the exported student behind HTTP, with dynamic micro-batching.

An ASGI app (Starlette on uvicorn, the ``serve`` extra): ``POST /score`` (a batch of pairs ->
label, label probabilities, ranking score per pair), ``POST /rerank`` (one query, many documents,
sorted, the shape TEI/Cohere/Jina rerankers use), ``GET /health`` and ``GET /metadata`` (the
model card's lineage). Concurrent requests are scored together by one :class:`MicroBatcher`, so
a busy server runs the model on full batches while an idle one adds no wait. Every limit (body
bytes, body read time, pairs per request, characters per field, queued pairs) answers a 4xx or
503 with a one-line reason; nothing a client sends can grow memory without bound.

Written on Starlette rather than FastAPI: the request schema is three fields, and hand-checked
validation gives the one-line errors the bad-input table documents instead of pydantic's lists.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import ReasonDistillError
from .score_inputs import BadRequest, check_pairs, check_text, read_json

log = logging.getLogger("reasondistill")
#: one line per request: method, path, status, milliseconds (``serve`` prints it to stderr)
access = logging.getLogger("reasondistill.access")


class ServeOptions(BaseModel):
    """Limits and batching of the scoring server (``reasondistill serve --help`` shows each)."""

    model_config = ConfigDict(extra="forbid")
    variant: Literal["int8", "fp32", "torch"] = Field("int8", description="ONNX int8, ONNX fp32 or the torch model")
    max_batch: int = Field(64, ge=1, description="pairs scored together at most")
    max_wait_ms: float = Field(0.0, ge=0, description="wait this long for more pairs before scoring a short batch "
                                                      "(0: never wait; batches form while the model is busy)")
    max_queue: int = Field(4096, ge=1, description="pairs waiting at most; beyond, 503 with Retry-After")
    max_pairs: int = Field(256, ge=1, description="pairs in one request at most")
    max_chars: int = Field(4096, ge=1, description="characters in one field at most")
    max_body_bytes: int = Field(1_000_000, ge=64, description="request body size at most")
    body_timeout_s: float = Field(10.0, gt=0, description="seconds to receive a whole request body")
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads (default: all cores)")
    api_key: str | None = Field(None, repr=False, description="require 'Authorization: Bearer KEY' on every route but "
                                "/health (default: the REASONDISTILL_API_KEY environment variable; none: open)")


class Scorer:
    """Label probabilities for (query, item) pairs from a student package folder."""

    def __init__(self, folder: str | Path, variant: str = "int8", batch_size: int = 64, threads: int | None = None):
        from .serving import student_meta

        self.folder = Path(folder)
        self.meta = student_meta(self.folder)
        self.labels: list[str] = list(self.meta.get("labels") or [])
        self.item_fields: tuple[str, ...] = ()
        self.domain = self._domain(self.meta.get("domain"))
        if variant == "torch":
            from .serving import Predictor
            from .student_package import student_component

            try:
                self.predictor: Any = student_component(self.folder).predictor(self.folder, batch_size=batch_size)
            except ReasonDistillError as exc:  # its student plugin is not installed here
                log.warning("%s; loading it as a sequence classifier", exc)
                self.predictor = Predictor(self.folder, batch_size=batch_size)
        else:
            from .onnx_export import OnnxPredictor

            self.predictor = OnnxPredictor(self.folder / "onnx", variant, batch_size=batch_size, threads=threads)
        if not self.labels:
            self.labels = [str(i) for i in range(self.predictor.predict_proba(["q"], ["i"]).shape[1])]

    def _domain(self, name: str | None) -> Any:
        """The training domain renders items as the student saw them (its extra fields)."""
        if not name:
            return None
        try:
            from .manager import get_hooks

            domain = get_hooks().catalogue.get("domain", name)
            domain = domain.configured(domain.options(self.meta.get("domain_options") or {}))
        except Exception as exc:  # a package served where its domain plugin is not installed
            log.warning("domain %r is not installed: items are scored as plain text (%s)", name, exc)
            return None
        self.item_fields = tuple(domain.item_fields)
        return domain

    def __call__(self, pairs: list[dict[str, Any]]) -> np.ndarray:
        from .serving import render_items

        queries, items = render_items(pairs, self.domain)
        return self.predictor.predict_proba(queries, items)

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        """One pair's answer: label, probabilities by name, and the ranking score (expected grade in [0, 1])."""
        k = len(self.labels)
        best = int(probs.argmax())
        score = float(probs @ np.arange(k)) / max(1, k - 1)
        return {"label": self.labels[best], "label_id": best,
                "probs": {name: round(float(p), 6) for name, p in zip(self.labels, probs)}, "score": round(score, 6)}


@dataclass
class _Job:
    pairs: list[dict[str, Any]]
    future: asyncio.Future


class MicroBatcher:
    """Scores the pairs of concurrent requests together, one batch at a time, in one worker thread.

    Without ``max_wait_ms`` a lone request is scored at once; requests that arrive while the model
    is busy queue up and are scored together next, so batches grow with load by themselves.
    """

    def __init__(self, score: Callable[[list[dict[str, Any]]], np.ndarray], max_batch: int, max_wait_ms: float,
                 max_queue: int):
        self.score, self.max_batch, self.max_wait, self.max_queue = score, max_batch, max_wait_ms / 1000, max_queue
        self.queue: deque[_Job] = deque()
        self.queued_pairs = 0
        self.batches = 0
        self._busy = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reasondistill-score")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish every queued request, then stop."""
        while self.queue or self._busy:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=True)

    async def submit(self, pairs: list[dict[str, Any]]) -> np.ndarray:
        if self.queued_pairs + len(pairs) > self.max_queue:
            raise BadRequest(503, f"server busy: {self.queued_pairs} pairs queued (max_queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        if not self._busy and not self.queue and not self.max_wait:  # idle: score now, no hop through the loop
            self._busy, self.queued_pairs = True, self.queued_pairs + len(pairs)
            try:
                return await loop.run_in_executor(self._pool, self.score, pairs)
            finally:
                self._busy, self.queued_pairs, self.batches = False, self.queued_pairs - len(pairs), self.batches + 1
                if self.queue:
                    self._wake.set()
        job = _Job(pairs, loop.create_future())
        self.queue.append(job)
        self.queued_pairs += len(pairs)
        self._wake.set()
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue and not self._busy:
                if self.max_wait and sum(len(j.pairs) for j in self.queue) < self.max_batch:
                    await asyncio.sleep(self.max_wait)
                jobs, size = [], 0
                while self.queue and (not jobs or size + len(self.queue[0].pairs) <= self.max_batch):
                    job = self.queue.popleft()
                    jobs.append(job)
                    size += len(job.pairs)
                pairs = [p for j in jobs for p in j.pairs]
                self._busy = True
                try:
                    probs = await loop.run_in_executor(self._pool, self.score, pairs)
                except Exception as exc:
                    await self._isolate(jobs, exc)
                else:
                    start = 0
                    for job in jobs:
                        job.future.set_result(probs[start:start + len(job.pairs)])
                        start += len(job.pairs)
                finally:
                    self.queued_pairs -= size
                    self.batches += 1
                    self._busy = False


    async def _isolate(self, jobs: list[_Job], exc: Exception) -> None:
        """A batch failed: score each of its requests alone, so one request the model cannot take
        fails by itself and the others it was batched with still get their answers."""
        if len(jobs) == 1:
            jobs[0].future.set_exception(exc)
            return
        loop = asyncio.get_running_loop()
        for job in jobs:
            try:
                job.future.set_result(await loop.run_in_executor(self._pool, self.score, job.pairs))
            except Exception as alone:
                job.future.set_exception(alone)


def create_app(folder: str | Path, options: ServeOptions | None = None, scorer: Scorer | None = None) -> Any:
    """The ASGI app serving the student package in ``folder``."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from .student_package import read_lineage

    options = options or ServeOptions()
    scorer = scorer or Scorer(folder, options.variant, options.max_batch, options.threads)
    batcher = MicroBatcher(scorer, options.max_batch, options.max_wait_ms, options.max_queue)
    metadata = {**read_lineage(folder), "variant": options.variant, "labels": scorer.labels,
                "limits": options.model_dump(exclude={"variant", "threads", "api_key"})}
    started = time.time()
    key = options.api_key or os.environ.get("REASONDISTILL_API_KEY") or None

    def authorized(request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # constant time: how much of a guess matched must not show in the answer's timing
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def guarded(handler, open_route: bool = False):
        async def endpoint(request):
            begun = time.perf_counter()
            response = await answer(request)
            access.info("%s %s %d %.1fms", request.method, request.url.path, response.status_code,
                        (time.perf_counter() - begun) * 1000)
            return response

        async def answer(request):
            if key and not open_route and not authorized(request):
                return JSONResponse({"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            try:
                return JSONResponse(await handler(request))
            except BadRequest as exc:
                headers = {"Retry-After": "1"} if exc.status == 503 else None
                return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=headers)
            except Exception as exc:  # the same shape, one log line; the traceback only at debug level
                log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
                log.debug("traceback", exc_info=True)
                return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)
        return endpoint

    async def score(request):
        pairs = check_pairs(await read_json(request, options), options, scorer.item_fields)
        probs = await batcher.submit(pairs)
        return {"results": [scorer.result(p) for p in probs]}

    async def rerank(request):
        body = await read_json(request, options)
        if not isinstance(body, dict):
            raise BadRequest(422, "body must be a JSON object with 'query' and 'documents'")
        unknown = set(body) - {"query", "documents", "top_n", "return_documents"}
        if unknown:
            raise BadRequest(422, f"unknown field {sorted(unknown)[0]!r}")
        query = check_text(body.get("query"), "query", options)
        docs = body.get("documents")
        if not isinstance(docs, list) or not docs:
            raise BadRequest(422, "documents: missing, empty, or not a list")
        if len(docs) > options.max_pairs:
            raise BadRequest(413, f"documents: {len(docs)}, more than max_pairs {options.max_pairs}")
        texts = [check_text(d, f"documents[{i}]", options) for i, d in enumerate(docs)]
        top_n = body.get("top_n", len(texts))
        if not isinstance(top_n, int) or isinstance(top_n, bool) or not 1 <= top_n <= options.max_pairs:
            raise BadRequest(422, f"top_n: must be an integer from 1 to max_pairs {options.max_pairs}")
        if not isinstance(body.get("return_documents", False), bool):
            raise BadRequest(422, "return_documents: must be true or false")
        probs = await batcher.submit([{"query": query, "item": t} for t in texts])
        ranked = sorted(((scorer.result(p)["score"], i) for i, p in enumerate(probs)), key=lambda x: (-x[0], x[1]))
        out = [{"index": i, "relevance_score": s, **({"document": texts[i]} if body.get("return_documents") else {})}
               for s, i in ranked[:top_n]]
        return {"results": out}

    async def health(request):
        return {"status": "ok", "queued_pairs": batcher.queued_pairs, "batches": batcher.batches,
                "uptime_s": round(time.time() - started, 1)}

    async def meta(request):
        return metadata

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    routes = [Route("/score", guarded(score), methods=["POST"]), Route("/rerank", guarded(rerank), methods=["POST"]),
              Route("/health", guarded(health, open_route=True), methods=["GET"]),
              Route("/metadata", guarded(meta), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.batcher, app.state.scorer = batcher, scorer
    return app


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8080, options: ServeOptions | None = None) -> None:
    """Run the scoring server until SIGINT/SIGTERM; queued requests finish before it exits."""
    import uvicorn

    options = options or ServeOptions()
    app = create_app(folder, options)
    if host not in ("127.0.0.1", "localhost", "::1") and not (options.api_key or os.environ.get("REASONDISTILL_API_KEY")):
        log.warning("serving on %s without an API key: anyone who can reach this port can score; set --api-key or "
                    "REASONDISTILL_API_KEY, and put TLS in front (docs/serving.md)", host)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False  # one line per request, not one more through the CLI's own handler
    print(f"reasondistill: scoring {folder} on http://{host}:{port} (POST /score, POST /rerank, GET /health, "
          f"GET /metadata)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                h11_max_incomplete_event_size=64 * 1024)
