"""Scoring over HTTP against the in-process predictor and a plain CrossEncoder server, same student,
same Home Depot dev pairs, in one run.

    python benchmarks/serve.py                       # builds a MiniLM student package first (~1 min)
    python benchmarks/serve.py --package runs-bench-serve/serve-bench/export/model --quick

A bounded load test on 127.0.0.1 only; every phase sends a fixed number of requests or runs for a
fixed time, and the servers are stopped at the end. ``reasondistill serve`` runs in its own
process; beside it, in this process, the same ONNX variant at batch 1 (latency) and batch 64
(throughput); and the baseline a search team would write first: a sentence-transformers
``CrossEncoder`` of the same weights behind Starlette (``benchmarks/crossencoder_server.py``, one
``predict`` per request in Starlette's thread pool). Phases:

1. ``/score`` (one pair a request, a fixed number of requests) and ``/rerank`` (50 candidates, for
   a fixed time, counting answers within it) at 1, 8, 32 and 64 clients; a refused client waits
   as ``Retry-After`` says (and, in two more rows, only 50 ms). Target: ``/rerank`` at 32 clients
   at least 0.9x the in-process batch-64 throughput.
2. Overload: ``/rerank`` requests arriving at twice the measured capacity for 30 s. Targets: no
   5xx but 503; accepted requests' p99 at most ``max_queue_ms`` plus one batch; refusals at once.
3. 500 slow connections (headers a byte a second, from another process) held open while 8 clients
   send normal traffic.
   Target: the normal p99 within 2x of the unloaded p99.
4. Memory: the server's RSS before and after the largest request the limits let through
   (``max_pairs`` documents, the body just under ``max_body_bytes``) and after 5 s idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, read_jsonl, table  # noqa: E402

HERE = Path(__file__).resolve().parent


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


async def exchange(reader, writer, path: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """One keep-alive HTTP/1.1 POST on an open connection: (status, lower-cased header fields, body).
    A load generator this thin (like wrk, but scriptable) keeps the client's own cost out of the
    server's figures."""
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    head = await reader.readuntil(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    return int(head[9:12]), fields, await reader.readexactly(int(fields[b"content-length"]))


async def post_json(reader, writer, path: str, body: bytes) -> tuple[int, bytes]:
    status, _, payload = await exchange(reader, writer, path, body)
    return status, payload


async def post_json_or_wait(reader, writer, path: str, body: bytes, backoff: float | None) -> tuple[int, bytes]:
    """``post_json``; after a 503, wait as ``Retry-After`` says (``backoff`` None) or ``backoff`` s."""
    status, fields, payload = await exchange(reader, writer, path, body)
    if status == 503:
        await asyncio.sleep(float(fields.get(b"retry-after", b"1")) if backoff is None else backoff)
    return status, payload


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load(url: str, bodies: list[bytes], path: str, pairs_each: int, concurrency: int, requests: int,
         seconds: float | None = None, backoff: float | None = None) -> tuple[float, float, float, int]:
    """p50 and p99 latency (ms) of the answered requests, pairs/s answered, and how many were
    refused (503), from ``concurrency`` clients, each an asyncio task with its own keep-alive
    connection; a refused client waits as ``Retry-After`` says (or ``backoff`` seconds, a client
    that ignores it) before its next request. Either ``requests`` requests
    in all, or (``seconds``) as many as the clients send in that time: then pairs/s is the steady
    rate of answers, from the first answer to the last within the time, so neither the ramp-up
    (the first batch filling) nor the ramp-down (the last clients finishing alone, batches half
    empty) is in the figure; both weigh on large requests at high concurrency."""
    host, port = url.split("//")[1].split(":")
    times: list[float] = []
    done_at: list[float] = []
    refused = 0
    per_client = max(1, requests // concurrency)
    deadline = None

    async def client(c: int) -> None:
        nonlocal refused
        reader, writer = await asyncio.open_connection(host, int(port))
        i = 0
        while (i < per_client) if deadline is None else (time.perf_counter() < deadline):
            t = time.perf_counter()
            status, payload = await post_json_or_wait(reader, writer, path, bodies[(c * per_client + i) % len(bodies)],
                                                      backoff)
            i += 1
            if status == 503:
                refused += 1
                continue
            assert status == 200, payload
            if deadline is None or time.perf_counter() <= deadline:
                times.append((time.perf_counter() - t) * 1000)
                done_at.append(time.perf_counter())
        writer.close()

    async def run() -> float:
        nonlocal deadline
        started = time.perf_counter()
        if seconds is not None:
            deadline = started + seconds
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        return seconds if seconds is not None else time.perf_counter() - started

    wall = asyncio.run(run())
    if seconds is not None and len(done_at) > 1:  # the steady rate: answers between the first and the last
        rate = (len(done_at) - 1) * pairs_each / (done_at[-1] - done_at[0])
    else:
        rate = len(times) * pairs_each / wall
    return statistics.median(times), percentile(times, 0.99), rate, refused


def open_loop(url: str, bodies: list[bytes], path: str, rate: float, seconds: float) -> dict[int, list[float]]:
    """Requests arriving at ``rate`` a second whatever the answers (as real traffic does), each on a
    connection of its own: latencies (ms) by status."""
    host, port = url.split("//")[1].split(":")
    by_status: dict[int, list[float]] = {}

    async def one(body: bytes) -> None:
        t = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, int(port))
        status, _ = await post_json(reader, writer, path, body)
        by_status.setdefault(status, []).append((time.perf_counter() - t) * 1000)
        writer.close()

    async def run() -> None:
        tasks, started, i = [], time.perf_counter(), 0
        while (now := time.perf_counter() - started) < seconds:
            if i < now * rate:
                tasks.append(asyncio.ensure_future(one(bodies[i % len(bodies)])))
                i += 1
            else:
                await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)

    asyncio.run(run())
    return by_status


def hold_slow_connections(url: str, n: int, stop) -> None:
    """In a process of its own (so its writes do not slow the load generator): ``n`` connections
    sending their headers a byte a second until ``stop`` is set; prints how many the server cut."""
    host, port = url.split("//")[1].split(":")

    async def run():
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(n)]
        for _, w in conns:
            w.write(b"POST /score HTTP/1.1\r\nHost: x\r\n")
        while not stop.is_set():
            for _, w in conns:
                if not w.is_closing():
                    w.write(b"X")
            await asyncio.sleep(1)
        for _, w in conns:
            w.close()

    asyncio.run(run())


def with_slow_connections(url: str, n: int, work):
    """``work()`` while ``n`` slow-header connections are held open by another process."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    holder = ctx.Process(target=hold_slow_connections, args=(url, n, stop), daemon=True)
    holder.start()
    time.sleep(3)  # all connected
    try:
        return work()
    finally:
        stop.set()
        holder.join(timeout=30)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(cmd: list[str], url: str) -> subprocess.Popen:
    from reasondistill.plugins.backends.openai_backend import httpx_module

    httpx = httpx_module()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{cmd[:4]} did not answer within 180 s")


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
    p.add_argument("--requests", type=int, default=640, help="one-pair /score requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32,64")
    p.add_argument("--overload-s", type=float, default=30.0)
    p.add_argument("--rerank-s", type=float, default=15.0, help="seconds of /rerank load per concurrency level")
    p.add_argument("--slow", type=int, default=500, help="slow connections in phase 3")
    p.add_argument("--quick", action="store_true", help="fewer requests, 10 s overload, 100 slow connections")
    p.add_argument("--port", type=int, default=8093)
    p.add_argument("--server-args", default="", help="extra `reasondistill serve` flags, e.g. '--max-wait-ms 2'")
    args = p.parse_args()
    if args.quick:
        args.requests, args.overload_s, args.slow, args.rerank_s = 192, 10.0, 100, 6.0

    from reasondistill.onnx_export import OnnxPredictor
    from reasondistill.plugins.domains.product_search import ProductSearch

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
    out = [["in-process OnnxPredictor, batch 1", 1, p50, p99, 1000 / p50, "-", "-"],
           ["in-process OnnxPredictor, batch 64", 1, "-", "-", rate64, 1.0, "-"]]
    score_bodies = [json.dumps({"pairs": [p]}).encode() for p in pairs]
    rng = random.Random(0)
    rerank_bodies = [json.dumps({"query": pairs[i]["query"], "documents": [d["item"] for d in rng.sample(pairs, 50)],
                                 "top_n": 10}).encode() for i in range(64)]
    levels = [int(x) for x in args.concurrency.split(",")]
    url = f"http://127.0.0.1:{args.port}"
    server = start([sys.executable, "-m", "reasondistill", "serve", str(package), "--port", str(args.port),
                    "--variant", args.variant, "--max-batch", "64", *args.server_args.split()], url)
    notes = []
    try:
        from reasondistill.plugins.backends.openai_backend import httpx_module

        httpx = httpx_module()
        load(url, score_bodies, "/score", 1, 4, 64)  # warm-up
        mine50, http50, added = interleaved_batch1(url, pairs, local, queries, items, min(args.requests, 900))
        out.append(["in-process batch 1 / HTTP batch 1, interleaved on the same pairs", 1,
                    f"{mine50:.3f} / {http50:.3f}", "-", "-", "-", "-"])
        for c in levels:
            before = httpx.get(url + "/health").json()["batches"]
            h50, h99, rate, refused = load(url, score_bodies, "/score", 1, c, args.requests)
            batches = httpx.get(url + "/health").json()["batches"] - before
            out.append([f"reasondistill /score, 1 pair a request ({args.requests / batches:.1f} pairs a batch)", c,
                        h50, h99, rate, rate / rate64, refused])
        rerank_rate = {}
        for c in levels:
            h50, h99, rate, refused = load(url, rerank_bodies, "/rerank", 50, c, 0, seconds=args.rerank_s)
            rerank_rate[c] = rate
            out.append(["reasondistill /rerank, 50 candidates", c, h50, h99, rate, rate / rate64, refused])
        for c in levels[-2:]:
            h50, h99, rate, refused = load(url, rerank_bodies, "/rerank", 50, c, 0, seconds=args.rerank_s,
                                           backoff=0.05)
            out.append(["reasondistill /rerank, 50 candidates, clients retry after 50 ms (ignoring Retry-After)", c,
                        h50, h99, rate, rate / rate64, refused])

        # 2. overload at twice capacity
        capacity = max(rerank_rate.values()) / 50  # /rerank requests a second
        by_status = open_loop(url, rerank_bodies, "/rerank", 2 * capacity, args.overload_s)
        ok, refused = by_status.get(200, []), by_status.get(503, [])
        other = {s: len(v) for s, v in by_status.items() if s not in (200, 503)}
        batch_ms = 64 / rate64 * 1000
        notes.append(f"overload: /rerank at {2 * capacity:.1f} requests/s (2x the {capacity:.1f} measured) for "
                     f"{args.overload_s:g} s: {len(ok)} answered, {len(refused)} refused with 503, other statuses "
                     f"{other or 'none'}; accepted p50 {percentile(ok, 0.5):.0f} ms, p99 {percentile(ok, 0.99):.0f} ms "
                     f"(max_queue_ms 1000 + one batch of 64 = {1000 + batch_ms:.0f} ms); refusals p50 "
                     f"{percentile(refused, 0.5):.1f} ms, p99 {percentile(refused, 0.99):.1f} ms")

        # 3. slow connections beside normal traffic
        base50, base99, _, _ = load(url, score_bodies, "/score", 1, 8, args.requests)
        slow50, slow99, _, _ = with_slow_connections(
            url, args.slow, lambda: load(url, score_bodies, "/score", 1, 8, args.requests))
        notes.append(f"slow connections: 8 clients alone p50/p99 {base50:.1f}/{base99:.1f} ms; beside {args.slow} "
                     f"slow-header connections (a byte a second each, from another process) {slow50:.1f}/{slow99:.1f} "
                     f"ms ({slow99 / base99:.2f}x the p99)")

        # 4. memory after a maximum request
        before = rss_mb(server.pid)
        # the largest request the default limits let through: 256 documents of 3,800 characters (~0.98 MB)
        biggest = json.dumps({"query": "q" * 4096, "documents": [f"{i} " + "d" * 3795 for i in range(256)]})
        status = httpx.post(url + "/rerank", content=biggest, headers={"content-type": "application/json"},
                            timeout=120).status_code
        after = rss_mb(server.pid)
        time.sleep(5)
        notes.append(f"memory: server RSS {before:.0f} MB before a maximum request (256 documents of 3,800 characters, "
                     f"status {status}), {after:.0f} MB right after, {rss_mb(server.pid):.0f} MB 5 s later")
    finally:
        server.terminate()
        server.wait(timeout=60)

    # the baseline: CrossEncoder + Starlette, same weights, same loads
    base_port = args.port + 1
    base_url = f"http://127.0.0.1:{base_port}"
    baseline = start([sys.executable, str(HERE / "crossencoder_server.py"), str(package), str(base_port)], base_url)
    try:
        before = rss_mb(baseline.pid)
        load(base_url, score_bodies, "/score", 1, 4, 32)
        for c in levels:
            h50, h99, rate, refused = load(base_url, score_bodies, "/score", 1, c, args.requests // 2)
            out.append(["CrossEncoder + Starlette /score, 1 pair a request", c, h50, h99, rate, rate / rate64, refused])
        for c in levels:
            h50, h99, rate, refused = load(base_url, rerank_bodies, "/rerank", 50, c, max(c, args.requests // 16))
            out.append(["CrossEncoder + Starlette /rerank, 50 candidates", c, h50, h99, rate, rate / rate64, refused])
        notes.append(f"memory: CrossEncoder server RSS {before:.0f} MB idle, {rss_mb(baseline.pid):.0f} MB after its loads")
    finally:
        baseline.terminate()
        baseline.wait(timeout=60)

    print(f"student package {package} ({args.variant}), server flags {args.server_args or '(defaults)'}, "
          f"Home Depot dev pairs; HTTP adds {added:+.2f} ms to a batch-1 call (median of per-pair differences, "
          f"interleaved); clients and servers share this machine's cores")
    print(table(("system", "clients", "p50 ms", "p99 ms", "pairs/s answered", "x in-process batch 64", "refused (503)"),
                out))
    for note in notes:
        print("- " + note)


if __name__ == "__main__":
    main()
