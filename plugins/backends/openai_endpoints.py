"""The endpoints of the ``openai`` backend: least-loaded routing, a circuit breaker, accounting.

Why written here: an OpenAI client talks to one base URL, and a load balancer in front of the
servers (nginx, a Kubernetes service) cannot see which replica is failing or how full each is.
Each request takes a slot on the least loaded usable endpoint (in-flight requests over
``weight``, at most ``max_concurrency`` each). An endpoint that fails ``breaker_failures`` times in
a row is taken out; after ``probe_interval`` seconds one request probes it (half-open), and a
success puts it back. A failed attempt is retried at once on another usable endpoint, and only
waits its backoff when there is none. Counters per endpoint feed the run record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("reasondistill")


@dataclass(eq=False)
class Endpoint:
    """One server: its address, its client and its health."""

    url: str
    model: str
    capacity: int
    weight: float
    client: Any
    key: str | None = None
    served: str = ""  # the model id the server answers to (from GET /models)
    in_flight: int = 0
    failures: int = 0  # consecutive
    open_until: float = 0.0  # > 0: taken out until then (then one probe)
    probing: bool = False
    stats: Counter = field(default_factory=Counter)


class EndpointPool:
    """Routes requests over ``endpoints``; thread-safe."""

    def __init__(self, endpoints: list[Endpoint], breaker_failures: int, probe_interval: float):
        self.endpoints = endpoints
        self.breaker_failures, self.probe_interval = breaker_failures, probe_interval
        self._cond = threading.Condition()

    def _usable(self, ep: Endpoint, now: float) -> bool:
        if ep.in_flight >= ep.capacity:
            return False
        return ep.open_until == 0.0 or (now >= ep.open_until and not ep.probing)

    def acquire(self, avoid: Endpoint | None = None, wait: float = 0.0) -> Endpoint | None:
        """A slot on the least loaded usable endpoint (another than ``avoid`` if there is one);
        waits while every usable endpoint is full. When every endpoint is taken out, waits at most
        ``wait`` seconds for one to be due for its probe (or for a probe in flight to bring one
        back), else returns None: the caller counts a failed attempt, so a dead fleet fails within
        the retries' budget instead of queueing behind probes."""
        give_up = time.monotonic() + wait
        with self._cond:
            while True:
                now = time.monotonic()
                ready = [e for e in self.endpoints if self._usable(e, now)]
                preferred = [e for e in ready if e is not avoid]
                # the endpoint that just failed only when no other is in service (the others being
                # merely full, the retry waits for one of their slots instead)
                if not preferred and not any(e is not avoid and not e.open_until for e in self.endpoints):
                    preferred = ready
                if preferred:
                    ep = min(preferred, key=lambda e: ((e.in_flight + 1) / e.weight, e.open_until))
                    if ep.open_until:
                        ep.probing = True
                    ep.in_flight += 1
                    ep.stats["requests"] += 1
                    return ep
                all_out = all(e.open_until and (e.probing or now < e.open_until) for e in self.endpoints)
                if all_out and now >= give_up:
                    return None
                due = min((e.open_until - now for e in self.endpoints if e.open_until > now), default=0.5)
                self._cond.wait(timeout=max(0.005, min(0.5, due, give_up - now if all_out else 0.5)))

    def release(self, ep: Endpoint, error_kind: str | None) -> None:
        """Give the slot back; ``error_kind`` None is a success, else a failure of that kind."""
        with self._cond:
            ep.in_flight -= 1
            if error_kind is None:
                if ep.open_until:
                    log.warning("openai endpoint %s answers again: back in", ep.url)
                ep.failures, ep.open_until, ep.probing = 0, 0.0, False
            else:
                ep.stats[f"errors_{error_kind}"] += 1
                ep.failures += 1
                if ep.probing or (not ep.open_until and ep.failures >= self.breaker_failures):
                    if not ep.probing:
                        log.warning("openai endpoint %s failed %d times in a row (%s): taken out, probed again "
                                    "every %g s", ep.url, ep.failures, error_kind, self.probe_interval)
                    ep.open_until, ep.probing = time.monotonic() + self.probe_interval, False
            self._cond.notify_all()

    def take_out(self, ep: Endpoint) -> None:
        """Mark ``ep`` as failed (a server that is down when the run starts)."""
        with self._cond:
            ep.failures, ep.open_until = self.breaker_failures, time.monotonic() + self.probe_interval

    def count(self, ep: Endpoint, counts: dict[str, int]) -> None:
        """Add ``counts`` (answers, tokens) to ``ep``'s accounting."""
        with self._cond:
            ep.stats.update(counts)

    def others_usable(self, ep: Endpoint) -> bool:
        """Is there an endpoint besides ``ep`` that is not taken out?"""
        with self._cond:
            now = time.monotonic()
            return any(e is not ep and (e.open_until == 0.0 or now >= e.open_until) for e in self.endpoints)

    def all_out(self) -> bool:
        """Is every endpoint taken out (none in service)?"""
        with self._cond:
            return all(e.open_until for e in self.endpoints)

    def accounting(self) -> dict[str, Any]:
        """Per endpoint and in total: requests, failed attempts by kind, tokens."""
        with self._cond:
            per = {e.url: dict(sorted(e.stats.items())) for e in self.endpoints}
        total: Counter = Counter()
        for stats in per.values():
            total.update(stats)
        return {"endpoints": per, "total": dict(sorted(total.items()))}


def error_kind(message: str) -> str:
    """A short kind for a failed attempt's message (the accounting's error classes)."""
    if message.startswith("HTTP 429"):
        return "rate_limited"
    if message.startswith("HTTP "):
        return "http_" + message.split()[1].rstrip(":")
    if "malformed" in message or "no choices" in message or "no message" in message:
        return "malformed"
    if "Timeout" in message or "no complete response" in message:
        return "timeout"
    if "larger than" in message:
        return "too_large"
    return "connection"
