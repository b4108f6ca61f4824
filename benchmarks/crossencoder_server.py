"""The baseline for ``benchmarks/serve.py``: the server a search team writes first, a
sentence-transformers ``CrossEncoder`` of the student's weights behind Starlette, one ``predict``
per request in Starlette's thread pool (no micro-batching, no limits). Same routes and bodies as
``reasondistill serve`` (``/score``, ``/rerank``, ``/health``), 127.0.0.1 only.

    python benchmarks/crossencoder_server.py PACKAGE_FOLDER PORT

Needs ``sentence-transformers`` (``pip install --no-deps sentence-transformers``: the rest of its
requirements are ours already), which the SDK itself does not.
"""

from __future__ import annotations

import sys

import numpy as np
import uvicorn
from sentence_transformers import CrossEncoder
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Route

model = CrossEncoder(sys.argv[1], device="cpu")


def probs(pairs: list[tuple[str, str]]) -> np.ndarray:
    logits = model.predict(pairs, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def expected_grade(p: np.ndarray) -> np.ndarray:
    return p @ np.arange(p.shape[1]) / (p.shape[1] - 1)


async def score(request):
    body = await request.json()
    p = await run_in_threadpool(probs, [(x["query"], x["item"]) for x in body["pairs"]])
    return JSONResponse({"results": [{"label_id": int(r.argmax()), "score": float(s)}
                                     for r, s in zip(p, expected_grade(p))]})


async def rerank(request):
    body = await request.json()
    s = expected_grade(await run_in_threadpool(probs, [(body["query"], d) for d in body["documents"]]))
    order = np.argsort(-s, kind="stable")[: body.get("top_n", len(s))]
    return JSONResponse({"results": [{"index": int(i), "relevance_score": float(s[i])} for i in order]})


async def health(request):
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/rerank", rerank, methods=["POST"]),
                        Route("/health", health)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
