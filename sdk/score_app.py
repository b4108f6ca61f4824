"""The routes of ``reasondistill serve``: one :class:`ScoreApp` per server, its handlers as methods.

Starlette (the ``serve`` extra) is imported here at load time; :func:`reasondistill.score_server.create_app`
imports this module only when a server starts, so the core installs and runs without the extra.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .micro_batcher import MicroBatcher
from .score_inputs import BadRequest, check_pairs, check_rerank, read_json
from .score_metrics import ServerMetrics

log = logging.getLogger("reasondistill")


class ScoreApp:
    """One server: its scorer, micro-batcher, metrics and serving state, and the routes on them."""

    def __init__(self, options: Any, scorer: Any, metadata: dict[str, Any]):
        self.options, self.scorer, self.metadata = options, scorer, metadata
        self.state = {"ready": False, "draining": False}
        self.metrics = ServerMetrics(lambda: self.batcher.queued_pairs,
                                     lambda: self.state["ready"] and not self.state["draining"])
        self.batcher = MicroBatcher(scorer, options.max_batch, options.max_wait_ms, options.max_queue,
                                    options.max_queue_ms, on_batch=self.metrics.batch)
        self.started = time.time()
        self.key = options.resolved_api_key()
        self.routes: list[Route] = []

    def build(self) -> Starlette:
        """The ASGI app: every route guarded (API key, one error shape, one access line)."""
        g = self.guarded
        self.routes = [Route("/score", g(self.score), methods=["POST"]), Route("/rerank", g(self.rerank), methods=["POST"]),
                       Route("/health", g(self.health, open_route=True), methods=["GET"]),
                       Route("/ready", g(self.ready, open_route=True), methods=["GET"]),
                       Route("/metrics", g(self.prometheus), methods=["GET"]),
                       Route("/metadata", g(self.meta), methods=["GET"])]
        cors = self.options.cors_origins
        middleware = [Middleware(CORSMiddleware, allow_origins=cors, allow_methods=["GET", "POST"],
                                 allow_headers=["authorization", "content-type"], max_age=600)] if cors else []
        app = Starlette(routes=self.routes, lifespan=self.lifespan, middleware=middleware,
                        exception_handlers={HTTPException: self.no_route})
        app.state.batcher, app.state.scorer, app.state.serving = self.batcher, self.scorer, self.state
        return app

    def authorized(self, request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # constant time: how much of a guess matched must not show in the answer's timing
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key.encode())

    def guarded(self, handler, open_route: bool = False):
        """``handler`` behind the API key (unless ``open_route``), its errors as one JSON shape, and
        one access-log line and metrics sample per request."""

        async def endpoint(request):
            begun = time.perf_counter()
            request.state.pairs, request.state.timing = 0, {}
            response = await self.answer(request, handler, open_route)
            self.metrics.request(request.method, request.url.path, response.status_code, request.state.pairs,
                                 request.state.timing.get("queue_ms"), time.perf_counter() - begun)
            return response

        return endpoint

    async def answer(self, request, handler, open_route: bool):
        if self.key and not open_route and not self.authorized(request):
            return JSONResponse({"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            result = await handler(request)
            return result if isinstance(result, Response) else JSONResponse(result)
        except BadRequest as exc:
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=headers)
        except ClientDisconnect:  # gone while sending its body: nothing to answer, one access line
            return Response(status_code=499)
        except Exception as exc:  # the same shape, one log line; the traceback only at debug level
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    async def scored(self, request, pairs: list[dict[str, Any]]) -> np.ndarray:
        """The pairs' probabilities; if the client disconnects first, its work leaves the queue and
        the request ends as 499 (the access log's one line says so)."""
        request.state.pairs = len(pairs)
        if self.batcher.idle_for(len(pairs)):  # scored at once: nothing to drop, no watcher to pay for
            return await self.batcher.submit(pairs, request.state.timing)
        work = asyncio.ensure_future(self.batcher.submit(pairs, request.state.timing))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)  # it has left the queue
        if work.cancelled():
            raise ClientDisconnect()
        return work.result()

    async def score(self, request):
        self.batcher.admit(0)  # already over the limit: refused before its body is read and parsed
        pairs = check_pairs(await read_json(request, self.options), self.options, self.scorer.item_fields)
        probs = await self.scored(request, pairs)
        return {"results": [self.scorer.result(p) for p in probs]}

    async def rerank(self, request):
        self.batcher.admit(0)
        query, texts, top_n, with_documents = check_rerank(await read_json(request, self.options), self.options)
        probs = await self.scored(request, [{"query": query, "item": t} for t in texts])
        ranked = sorted(((self.scorer.result(p)["score"], i) for i, p in enumerate(probs)), key=lambda x: (-x[0], x[1]))
        return {"results": [{"index": i, "relevance_score": s, **({"document": texts[i]} if with_documents else {})}
                            for s, i in ranked[:top_n]]}

    async def health(self, request):
        return {"status": "ok", "queued_pairs": self.batcher.queued_pairs, "batches": self.batcher.batches,
                "uptime_s": round(time.time() - self.started, 1)}

    async def ready(self, request):
        if self.state["draining"]:
            raise BadRequest(503, "shutting down: finishing accepted requests")
        if not self.state["ready"]:
            raise BadRequest(503, "starting: the model is warming up")
        return {"status": "ready"}

    async def prometheus(self, request):
        body, kind = self.metrics.render()
        return Response(body, media_type=kind)

    async def meta(self, request):
        return self.metadata

    @asynccontextmanager
    async def lifespan(self, app):
        self.batcher.start()
        await self.batcher.warm_up([{"query": "warm up", "item": "warm up"}])  # first-call costs before traffic
        self.state["ready"] = True
        yield
        self.state["draining"] = True
        await self.batcher.stop()

    async def no_route(self, request, exc):
        """404 and 405 in the one error shape, naming what exists."""
        if exc.status_code == 405:
            allowed = sorted(m.strip() for m in exc.headers.get("Allow", "").split(",") if m.strip() not in ("", "HEAD"))
            reason = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(allowed)}"
        elif exc.status_code == 404:
            reason = f"no route {request.url.path}; routes: " + ", ".join(r.path for r in self.routes)
        else:
            reason = str(exc.detail)
        return JSONResponse({"error": reason}, status_code=exc.status_code, headers=exc.headers)


async def disconnected(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
