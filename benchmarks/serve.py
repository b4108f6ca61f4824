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


async def post_json(reader, writer, path: str, body: bytes) -> bytes:
    """One keep-alive HTTP/1.1 POST on an open connection; the response body. A load generator this
    thin (like wrk, but scriptable) keeps the client's own cost out of the server's figures."""
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    payload = await reader.readexactly(length)
    assert status == b"200", payload
    return payload


def load(url: str, pairs: list[dict], concurrency: int, requests: int) -> tuple[float, float, float]:
    """p50 and p99 latency (ms) and pairs/s of ``requests`` one-pair requests from ``concurrency``
    clients, each an asyncio task with its own keep-alive connection."""
    import asyncio
    import json

    host, port = url.split("//")[1].split(":")
    bodies = [json.dumps({"pairs": [p]}).encode() for p in pairs]
    times: list[float] = []
    per_client = requests // concurrency

    async def client(c: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for i in range(per_client):
            body = bodies[(c * per_client + i) % len(bodies)]
            t = time.perf_counter()
            await post_json(reader, writer, "/score", body)
            times.append((time.perf_counter() - t) * 1000)
        writer.close()

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        return time.perf_counter() - started

    wall = asyncio.run(run())
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))], len(times) / wall


def interleaved_batch1(url: str, pairs: list[dict], local, queries, items, n: int) -> tuple[float, float, float]:
    """In-process and HTTP batch-1 calls on the same pair, alternating: p50 of each and the median
    per-pair difference, so machine noise hits both sides alike."""
    import asyncio
    import json

    host, port = url.split("//")[1].split(":")

    async def run() -> tuple[list[float], list[float]]:
        reader, writer = await asyncio.open_connection(host, int(port))
        mine, http = [], []
        for i in range(n + 20):
            t = time.perf_counter()
            local.predict_proba([queries[i]], [items[i]])
            t1 = time.perf_counter()
            await post_json(reader, writer, "/score", json.dumps({"pairs": [pairs[i]]}).encode())
            t2 = time.perf_counter()
            if i >= 20:  # warm-up
                mine.append((t1 - t) * 1000)
                http.append((t2 - t1) * 1000)
        writer.close()
        return mine, http

    mine, http = asyncio.run(run())
    return statistics.median(mine), statistics.median(http), statistics.median(h - m for h, m in zip(http, mine))


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
        mine50, http50, added = interleaved_batch1(url, pairs, local, queries, items, min(args.requests, 900))
        out.append(["in-process batch 1 / HTTP batch 1, interleaved on the same pairs", 1, f"{mine50:.3f} / {http50:.3f}",
                    "-", "-", "-"])
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
          f"Home Depot dev pairs; HTTP adds {added:+.2f} ms to a batch-1 call (median of per-pair differences, "
          f"interleaved)")
    print(table(("system", "concurrency", "p50 ms", "p99 ms", "pairs/s", "x in-process batch 64"), out))


if __name__ == "__main__":
    main()
