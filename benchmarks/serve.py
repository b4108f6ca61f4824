"""Scoring over HTTP against the in-process predictor, same student, same Home Depot dev pairs.

    python benchmarks/serve.py                       # builds a MiniLM student package first (~1 min)
    python benchmarks/serve.py --package runs-bench-serve/serve-bench/export/model

A bounded load test on 127.0.0.1 only: ``reasondistill serve`` runs in its own process; each
concurrency level (1, 8, 32 clients, one pair a request) sends a fixed number of requests and
stops. Beside it, in this process, the same ONNX variant scores batch 1 (latency) and batch 64
(throughput). Targets: HTTP adds at most 1 ms to the batch-1 p50; at concurrency 32 the server's
micro-batching reaches at least 70% of the in-process batch-64 throughput.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, read_jsonl, table  # noqa: E402


def build_package(data: Path, runs: Path) -> Path:
    """A MiniLM student trained for a few steps on gold pairs, exported: speed does not need quality."""
    from reasondistill import Engine, Recipe, step

    recipe = Recipe(name="serve-bench", domain="product_search", models={"student": "all-minilm-l6-v2"},
                    stages=[step("pairs", source=str(data / "train.jsonl"), limit=256,
                                 dev_source=str(data / "dev.jsonl"), dev_limit=200),
                            step("distill", train_input="pairs", loss="ce", max_steps=4, batch_size=16),
                            step("export", agreement_rows=50)])
    Engine(runs_dir=runs).run(recipe)
    return runs / "serve-bench" / "export" / "model"


def load(url: str, pairs: list[dict], concurrency: int, requests: int) -> tuple[float, float, float]:
    """p50 and p99 latency (ms) and pairs/s of ``requests`` one-pair requests from ``concurrency``
    clients: asyncio tasks on one pooled client, the cheapest load generator Python has, since it
    shares the machine's cores with the server."""
    import asyncio

    from reasondistill.plugins.backend_openai import httpx_module

    httpx = httpx_module()
    times: list[float] = []
    per_client = requests // concurrency

    async def client(session, c: int) -> None:
        for i in range(per_client):
            pair = pairs[(c * per_client + i) % len(pairs)]
            t = time.perf_counter()
            resp = await session.post(url + "/score", json={"pairs": [pair]})
            times.append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 200, resp.text

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as session:
            started = time.perf_counter()
            await asyncio.gather(*(client(session, c) for c in range(concurrency)))
            return time.perf_counter() - started

    wall = asyncio.run(run())
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))], len(times) / wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--package", type=Path, help="a student package folder (default: build one)")
    p.add_argument("--variant", default="int8", choices=["int8", "fp32"])
    p.add_argument("--requests", type=int, default=640, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--port", type=int, default=8093)
    p.add_argument("--server-args", default="", help="extra `reasondistill serve` flags, e.g. '--max-wait-ms 2'")
    args = p.parse_args()

    from reasondistill.onnx_export import OnnxPredictor
    from reasondistill.plugins.product_search import ProductSearch

    from common import latencies, throughput

    package = args.package or build_package(args.data, ROOT / "runs-bench-serve")
    rows = read_jsonl(args.data / "dev.jsonl", 1000, seed=5)
    pairs = [{"query": r["query"], "item": r["item"]} for r in rows]
    dom = ProductSearch()
    queries, items = [dom.query_text(r) for r in pairs], [dom.item_text(r) for r in pairs]
    local = OnnxPredictor(package / "onnx", args.variant, batch_size=64)
    p50, p99 = latencies(lambda i: local.predict_proba([queries[i]], [items[i]]), 300)
    # batch 64 = calls of 64 pairs, as a caller holding 64 pairs makes them (one call of 640 would
    # sort all 640 by length and pad less than any 64-pair batch can)
    rate64 = throughput(lambda: [local.predict_proba(queries[i:i + 64], items[i:i + 64]) for i in range(0, 640, 64)],
                        640)
    out = [["in-process OnnxPredictor, batch 1", 1, p50, p99, 1000 / p50, "-"],
           ["in-process OnnxPredictor, batch 64", 1, "-", "-", rate64, 1.0]]
    del local

    server = subprocess.Popen([sys.executable, "-m", "reasondistill", "serve", str(package), "--port", str(args.port),
                               "--variant", args.variant, "--max-batch", "64", *args.server_args.split()],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        from reasondistill.plugins.backend_openai import httpx_module

        httpx = httpx_module()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        load(url, pairs, 4, 64)  # warm-up
        for c in (int(x) for x in args.concurrency.split(",")):
            before = httpx.get(url + "/health").json()["batches"]
            h50, h99, rate = load(url, pairs, c, args.requests)
            batches = httpx.get(url + "/health").json()["batches"] - before
            out.append([f"HTTP /score, {c} client(s), 1 pair a request ({args.requests / batches:.1f} pairs a batch)",
                        c, h50, h99, rate, rate / rate64])
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"student package {package} ({args.variant}), server flags {args.server_args or '(defaults)'}, "
          f"Home Depot dev pairs; HTTP adds "
          f"{out[2][2] - p50:+.2f} ms to the batch-1 p50")
    print(table(("system", "concurrency", "p50 ms", "p99 ms", "pairs/s", "x in-process batch 64"), out))


if __name__ == "__main__":
    main()
