"""Shared helpers for the benchmark scripts (data by path, markdown tables, timing)."""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "homedepot"
#: the Home Depot study recipe's reward weights (recipes/homedepot.yaml), for benchmarks that build
#: their teacher recipes in Python
STUDY_REWARD_WEIGHTS = {"label_agreement": 2.0, "format": 1.0, "faithfulness": 1.0, "claims": 1.0,
                        "self_consistency": 0.5, "length": 0.5}


def read_jsonl(path: Path, limit: int | None = None, seed: int | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return rows[:limit] if limit else rows


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def latencies(fn: Callable[[int], Any], n: int) -> tuple[float, float]:
    """p50 and p99 in milliseconds of ``fn(i)`` over ``n`` calls (after 5 warm-up calls)."""
    for i in range(5):
        fn(i)
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def throughput(fn: Callable[[], Any], pairs: int, repeats: int = 3) -> float:
    fn()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = max(best, pairs / (time.perf_counter() - t))
    return best


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    """The fp32 matmul rate of this machine, measured now (the roofline's ceiling)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9
