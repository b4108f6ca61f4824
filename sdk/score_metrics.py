"""What ``reasondistill serve`` tells an operator: Prometheus metrics and one access-log line per request.

The metrics live in a registry of the app's own (``prometheus_client``), so two apps in one
process (tests) never share counters; ``GET /metrics`` renders it in the text exposition format.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

#: one line per request: method, path, status, pairs, queue ms, total ms (``serve`` prints it to stderr)
access = logging.getLogger("reasondistill.access")

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """Requests by path and status, pairs scored, batch sizes, queue depth and wait, latencies."""

    def __init__(self, queue_depth: Callable[[], float], ready: Callable[[], bool]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        kw: dict[str, Any] = {"registry": self.registry, "namespace": "reasondistill"}
        self.requests = Counter("requests", "HTTP requests answered, by path and status", ["path", "status"], **kw)
        self.pairs = Counter("pairs", "pairs scored, by path", ["path"], **kw)
        self.latency = Histogram("request_seconds", "time from the request's arrival to its answer, by path",
                                 ["path"], buckets=_LATENCY, **kw)
        self.queue_wait = Histogram("queue_seconds", "time a request waited before its first pair was scored",
                                    buckets=_LATENCY, **kw)
        self.batch_pairs = Histogram("batch_pairs", "pairs in each batch the model scored", buckets=_SIZES, **kw)
        self.batch_seconds = Histogram("batch_seconds", "time the model took for each batch", buckets=_LATENCY, **kw)
        depth = Gauge("queue_pairs", "pairs waiting or being scored", **kw)
        depth.set_function(queue_depth)
        Gauge("ready", "1 while the server takes traffic, 0 while starting or draining", **kw).set_function(
            lambda: float(ready()))

    def batch(self, pairs: int, seconds: float) -> None:
        self.batch_pairs.observe(pairs)
        self.batch_seconds.observe(seconds)

    def request(self, method: str, path: str, status: int, pairs: int, queue_ms: float | None, total_s: float) -> None:
        """Counts one answered request and writes its access-log line."""
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(total_s)
        if status == 200 and pairs:
            self.pairs.labels(path).inc(pairs)
        if queue_ms is not None:
            self.queue_wait.observe(queue_ms / 1000)
        access.info("%s %s %d pairs=%d queue_ms=%s total_ms=%.1f", method, path, status, pairs,
                    "-" if queue_ms is None else f"{queue_ms:.1f}", total_s * 1000)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
