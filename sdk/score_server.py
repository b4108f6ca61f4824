"""``reasondistill serve``: the exported student behind HTTP, with dynamic micro-batching.

An ASGI app (Starlette on uvicorn, the ``serve`` extra): ``POST /score`` (a batch of pairs ->
label, label probabilities, ranking score per pair), ``POST /rerank`` (one query, many documents,
sorted, the shape TEI/Cohere/Jina rerankers use), ``GET /health`` (liveness), ``GET /ready``
(readiness: 503 while warming up or draining), ``GET /metrics`` (Prometheus) and ``GET /metadata``
(the model card's lineage). Concurrent requests share batches formed by pairs
(:mod:`~reasondistill.micro_batcher`); every limit (body bytes and read time, header bytes and read
time, connections, pairs per request, characters per field, queued pairs, queue wait) answers a
4xx or 503 with a one-line reason, so nothing a client sends can grow memory or latency without
bound.

Written on Starlette rather than FastAPI: the request schema is three fields, and hand-checked
validation gives the one-line errors the bad-input table documents instead of pydantic's lists.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ReasonDistillError
from .manager import get_hooks
from .onnx_export import OnnxPredictor
from .option_tables import options_table
from .predictor import Predictor, render_items, student_meta
from .score_connections import guarded_protocol, protocol_class
from .score_metrics import access
from .student_package import read_lineage, student_component

log = logging.getLogger("reasondistill")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeOptions(BaseModel):
    """Limits and batching of the scoring server (``reasondistill serve --help`` shows each)."""

    model_config = ConfigDict(extra="forbid")
    variant: Literal["int8", "fp32", "torch"] = Field("int8", description="ONNX int8, ONNX fp32 or the torch model")
    max_batch: int = Field(64, ge=1, description="pairs scored together at most; larger requests are split")
    max_wait_ms: float = Field(0.0, ge=0, description="wait this long for more pairs before scoring a short batch "
                                                      "(0: never wait; batches form while the model is busy)")
    max_queue: int = Field(4096, ge=1, description="pairs waiting at most; beyond, 503 with Retry-After")
    max_queue_ms: float = Field(1000.0, gt=0, description="a request that would wait longer than this before its first "
                                "pair is scored gets 503 with Retry-After at once, never a late answer")
    max_pairs: int = Field(256, ge=1, description="pairs in one request at most")
    max_chars: int = Field(4096, ge=1, description="characters in one field at most")
    max_body_bytes: int = Field(1_000_000, ge=64, description="request body size at most")
    body_timeout_s: float = Field(10.0, gt=0, description="seconds to receive a whole request body")
    max_header_bytes: int = Field(16_384, ge=1024, description="request line and headers at most; beyond, 431")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds to receive a request's headers; beyond, 408 and "
                                    "the connection closes (slow clients cannot hold the server)")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle kept-alive connection closes after this many seconds")
    max_connections: int = Field(1024, ge=1, description="open connections at most; beyond, 503 at connect")
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads (default: all cores)")
    api_key: str | None = Field(None, repr=False, description="require 'Authorization: Bearer KEY' on every route but "
                                "/health and /ready (default: the REASONDISTILL_API_KEY environment variable; none: open)")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed to call the server, "
                                    "comma-separated (default: none, CORS off)")
    ssl_certfile: str | None = Field(None, description="serve HTTPS with this PEM certificate (or terminate TLS in a "
                                     "reverse proxy, docs/serving.md)")
    ssl_keyfile: str | None = Field(None, description="the private key of --ssl-certfile")
    http: Literal["auto", "httptools", "h11"] = Field("auto", description="uvicorn's HTTP implementation (the limits "
                                                      "hold for each)")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _wait_within_queue_limit(self) -> ServeOptions:
        if self.max_wait_ms >= self.max_queue_ms:
            raise ValueError(f"max_wait_ms ({self.max_wait_ms:g}) must be below max_queue_ms ({self.max_queue_ms:g}): "
                             "every request would be refused after waiting for batch-mates")
        return self

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get("REASONDISTILL_API_KEY") or None


def flags_markdown() -> str:
    """Every ``serve`` flag as a markdown table (docs/serving.md's *Every flag*; a test compares):
    the option ``max_queue_ms`` is the flag ``--max-queue-ms``."""
    return "\n".join(options_table(ServeOptions, "flag", lambda opt: "--" + opt.replace("_", "-"))) + "\n"


class Scorer:
    """Label probabilities for (query, item) pairs from a student package folder."""

    def __init__(self, folder: str | Path, variant: str = "int8", batch_size: int = 64, threads: int | None = None):
        self.folder = Path(folder)
        self.meta = student_meta(self.folder)
        self.labels: list[str] = list(self.meta.get("labels") or [])
        self.item_fields: tuple[str, ...] = ()
        self.domain = self._domain(self.meta.get("domain"))
        if variant == "torch":
            try:
                self.predictor: Any = student_component(self.folder).predictor(self.folder, batch_size=batch_size)
            except ReasonDistillError as exc:  # its student plugin is not installed here
                log.warning("%s; loading it as a sequence classifier", exc)
                self.predictor = Predictor(self.folder, batch_size=batch_size)
        else:
            self.predictor = OnnxPredictor(self.folder / "onnx", variant, batch_size=batch_size, threads=threads)
        if not self.labels:
            self.labels = [str(i) for i in range(self.predictor.predict_proba(["q"], ["i"]).shape[1])]

    def _domain(self, name: str | None) -> Any:
        """The training domain renders items as the student saw them (its extra fields)."""
        if not name:
            return None
        try:
            domain = get_hooks().catalogue.get("domain", name)
            domain = domain.configured(domain.options(self.meta.get("domain_options") or {}))
        except Exception as exc:  # a package served where its domain plugin is not installed
            log.warning("domain %r is not installed: items are scored as plain text (%s)", name, exc)
            return None
        self.item_fields = tuple(domain.item_fields)
        return domain

    def __call__(self, pairs: list[dict[str, Any]]) -> np.ndarray:
        queries, items = render_items(pairs, self.domain)
        return self.predictor.predict_proba(queries, items)

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        """One pair's answer: label, probabilities by name, and the ranking score (expected grade in [0, 1])."""
        k = len(self.labels)
        best = int(probs.argmax())
        score = float(probs @ np.arange(k)) / max(1, k - 1)
        return {"label": self.labels[best], "label_id": best,
                "probs": {name: round(float(p), 6) for name, p in zip(self.labels, probs)}, "score": round(score, 6)}


def create_app(folder: str | Path, options: ServeOptions | None = None, scorer: Scorer | None = None) -> Any:
    """The ASGI app serving the student package in ``folder``."""
    from .score_app import ScoreApp  # starlette: the serve extra, loaded when a server starts

    options = options or ServeOptions()
    scorer = scorer or Scorer(folder, options.variant, options.max_batch, options.threads)
    private = {"variant", "threads", "api_key", "ssl_certfile", "ssl_keyfile", "cors_origins", "http"}
    metadata = {**read_lineage(folder), "variant": options.variant, "labels": scorer.labels,
                "limits": options.model_dump(exclude=private)}
    return ScoreApp(options, scorer, metadata).build()


def uvicorn_server(app: Any, host: str, port: int, options: ServeOptions) -> Any:
    """The uvicorn server for ``app`` with the connection limits of ``options``; SIGTERM turns
    /ready 503 at once, then accepted requests finish."""
    import uvicorn

    protocol = guarded_protocol(protocol_class(options.http), options.header_timeout_s, options.max_header_bytes,
                                options.max_connections)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                            http=protocol, timeout_keep_alive=options.keep_alive_s,
                            h11_max_incomplete_event_size=options.max_header_bytes * 2,
                            ssl_certfile=options.ssl_certfile, ssl_keyfile=options.ssl_keyfile)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.serving["draining"] = True
            super().handle_exit(sig, frame)

    return Server(config)


def exposure_warning(host: str, options: ServeOptions) -> str | None:
    """The warning for a server other machines can reach with no API key (None when it is safe)."""
    if host in LOOPBACK or options.resolved_api_key():
        return None
    return (f"serving on {host} without an API key: anyone who can reach this port can score; set --api-key or "
            "REASONDISTILL_API_KEY, and put TLS in front (docs/serving.md)")


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8080, options: ServeOptions | None = None) -> None:
    """Run the scoring server until SIGINT/SIGTERM: /ready turns 503 at once, accepted requests finish."""
    options = options or ServeOptions()
    app = create_app(folder, options)
    warning = exposure_warning(host, options)
    if warning:
        log.warning(warning)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False  # one line per request, not one more through the CLI's own handler
    scheme = "https" if options.ssl_certfile else "http"
    print(f"reasondistill: scoring {folder} on {scheme}://{host}:{port} (POST /score, POST /rerank, GET /health, "
          f"GET /ready, GET /metrics, GET /metadata)", flush=True)
    uvicorn_server(app, host, port, options).run()
