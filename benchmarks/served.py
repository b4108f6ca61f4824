"""Served teachers at scale: the client's own cost per pair, and pairs/s over 1 and 2 endpoints.

    python benchmarks/served.py                      # ~2 minutes, bounded, stops by itself
    python benchmarks/served.py --pairs 2000 --latency 0.2 --slots 16

1. **Client overhead.** The ``openai`` backend annotates pairs against an instant fake server in
   another process; the client's CPU seconds (``time.process_time``: prompt building, HTTP,
   parsing, the shard written as JSONL) per pair say how many pairs/s one client process can
   drive, whatever the server (target: at least 500, so a client is never the bottleneck of a GPU
   endpoint at ~150 pairs/s).
2. **Endpoints.** Fake servers that take ``--latency`` seconds per answer with ``--slots`` answers at
   once (a GPU server in small: its throughput is slots / latency): pairs/s with 1 endpoint, 2
   endpoints, and 2 endpoints of which one is killed a third of the way through (every pair must
   still come back, none twice).

3. **Real servers** (``--real``): two ``transformers serve`` processes of ``--teacher`` (one thread
   each), pairs/s with 1 endpoint, 2 endpoints and 2 with one killed mid-run, beside the local slot
   engine on the same prompts, with the share of answers equal to the local engine's text. On 2 CPU
   cores the servers share the cores with each other and the client, so this row checks routing and
   correctness on real servers; the scaling figure is the fake endpoints' (part 2).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, table  # noqa: E402


class FakeServers:
    """``n`` fake OpenAI servers (tests/served.py) in one other process; ``kill(i)`` closes one."""

    def __init__(self, n: int, latency: float, slots: int) -> None:
        code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from tests.served import FaultServer; "
                f"servers = [FaultServer(model='fake', latency={latency}, slots={slots}) for _ in range({n})]; "
                "print(' '.join(s.url for s in servers), flush=True)\n"
                "for line in sys.stdin: servers[int(line)].close()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.urls = self.proc.stdout.readline().split()

    def kill(self, i: int) -> None:
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def annotate(urls: list[str], rows: list[dict], domain, concurrency: int, kill_after: int | None = None,
             servers: FakeServers | None = None, out: Path | None = None) -> dict:
    """The stage's own path (``annotate_rows`` then ``write_shard``) over ``urls``; wall and CPU time."""
    from reasondistill.plugins.annotation.shards import write_shard
    from reasondistill.plugins.annotation.teacher_annotator import TeacherAnnotatorOptions, annotate_rows
    from reasondistill.plugins.backends.openai_backend import OpenAIBackendOptions, OpenAIGenerator

    gen = OpenAIGenerator(domain, OpenAIBackendOptions(
        model="fake", endpoints=[{"base_url": u, "max_concurrency": concurrency} for u in urls], timeout=30,
        retries=4, backoff=0.05, max_backoff=0.5, probe_interval=1.0), max_new_tokens=32)
    if kill_after is not None:
        def killer():
            while gen.accounting()["total"].get("ok", 0) < kill_after:
                time.sleep(0.01)
            servers.kill(0)
        threading.Thread(target=killer, daemon=True).start()
    wall, cpu = time.perf_counter(), time.process_time()
    done = annotate_rows(gen, rows, domain, TeacherAnnotatorOptions(max_new_tokens=32, retries=0), seed=0, teacher="fake")
    if out is not None:
        write_shard(out, 0, done, 0.0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    acc = gen.accounting()
    gen.close()
    ids = [r["pair_id"] for r in done]
    return {"pairs": len(done), "wall": wall, "cpu": cpu, "lost": sum(1 for r in done if r["error"]),
            "twice": len(ids) - len(set(ids)), "failed_attempts": sum(v for k, v in acc["total"].items()
                                                                      if k.startswith("errors_"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.1, help="seconds a fake endpoint takes per answer")
    p.add_argument("--slots", type=int, default=8, help="answers a fake endpoint works on at once")
    p.add_argument("--concurrency", type=int, default=64, help="client requests in flight per endpoint")
    p.add_argument("--real", action="store_true", help="also part 3: two real transformers serve processes")
    p.add_argument("--teacher", default="smollm2-135m-instruct", help="the model the real servers serve")
    p.add_argument("--real-prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args()
    if args.real:
        real_servers(args)

    import tempfile

    from reasondistill.plugins.domains.product_search import ProductSearch

    dom = ProductSearch()
    rows = [{"pair_id": f"p{i}", "query": f"cordless drill {i % 97}", "item": f"20V drill kit model {i}",
             "item_id": str(i)} for i in range(args.pairs)]
    out = Path(tempfile.mkdtemp())
    instant = FakeServers(1, 0.0, 0)
    try:
        overhead = annotate(instant.urls, rows, dom, args.concurrency, out=out)
    finally:
        instant.close()
    cpu_ms = 1000 * overhead["cpu"] / overhead["pairs"]
    print(f"Client overhead: {overhead['pairs']} pairs against an instant fake server, concurrency {args.concurrency}: "
          f"{cpu_ms:.2f} CPU ms a pair in the client (prompt, HTTP, parsing, shard), so one client process drives "
          f"up to {1000 / cpu_ms:.0f} pairs/s (target 500); wall {overhead['pairs'] / overhead['wall']:.0f} pairs/s "
          "with the fake server on the same cores")
    ceiling = args.slots / args.latency
    rows_out = []
    for name, n, kill in (("1 endpoint", 1, None), ("2 endpoints", 2, None),
                          ("2 endpoints, one killed a third of the way", 2, args.pairs // 3)):
        servers = FakeServers(n, args.latency, args.slots)
        try:
            r = annotate(servers.urls[:n], rows, dom, args.concurrency, kill, servers)
        finally:
            servers.close()
        rows_out.append((name, round(r["pairs"] / r["wall"], 1), round(n * ceiling), r["lost"], r["twice"],
                         r["failed_attempts"], round(1000 * r["cpu"] / r["pairs"], 2)))
    print(f"\nEndpoints: fake servers answering in {args.latency:g} s, {args.slots} at once ({ceiling:.0f} pairs/s "
          f"each), {args.pairs} pairs")
    print(table(("system", "pairs/s", "ceiling (endpoints x slots / latency)", "pairs lost", "pairs twice",
                 "failed attempts (retried)", "client CPU ms a pair"), rows_out))


def real_servers(args) -> None:
    """Part 3: two ``transformers serve`` of the teacher, beside the local slot engine."""
    import json
    import os

    sys.path.insert(0, str(ROOT))
    from common import DEFAULT_DATA, read_jsonl

    from reasondistill import get_hooks
    from reasondistill.local_decoding import TeacherGenerator
    from reasondistill.model_refs import resolve_model
    from reasondistill.plugins.backends.openai_backend import OpenAIBackendOptions, OpenAIGenerator
    from reasondistill.plugins.domains.product_search import ProductSearch
    from tests.served import free_port, start_transformers_serve, stop

    dom = ProductSearch()
    folder = resolve_model(args.teacher, get_hooks())
    messages = [dom.messages(r) for r in read_jsonl(DEFAULT_DATA / "dev.jsonl", args.real_prompts, seed=3)]
    started = time.perf_counter()
    local = [o[0] for o in TeacherGenerator(folder, dom, batch_size=32, max_new_tokens=args.max_new_tokens)
             .generate(messages)]
    rows_out = [("local slot engine, batch 32", round(len(local) / (time.perf_counter() - started), 2), 1.0, 0, "-")]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    ports = [free_port(), free_port()]
    procs = [start_transformers_serve(Path(folder), port, logs / f"served-bench-{port}.log") for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
        for name, n, kill in (("1 endpoint", 1, False), ("2 endpoints", 2, False), ("2 endpoints, one killed", 2, True)):
            gen = OpenAIGenerator(dom, OpenAIBackendOptions(
                model=str(folder), endpoints=[{"base_url": u, "max_concurrency": 4} for u in urls[:n]], timeout=600,
                retries=4, backoff=0.2, max_backoff=2.0, probe_interval=5.0), args.max_new_tokens)
            if kill:
                def killer(gen=gen):
                    while gen.accounting()["total"].get("ok", 0) < len(messages) // 3:
                        time.sleep(0.05)
                    stop(procs[0])
                threading.Thread(target=killer, daemon=True).start()
            started = time.perf_counter()
            outs = [o[0] for o in gen.generate(messages)]
            secs = time.perf_counter() - started
            same = sum(a.text == b.text for a, b in zip(outs, local)) / len(outs)
            served = {u: c.get("ok", 0) for u, c in gen.accounting()["endpoints"].items()}
            rows_out.append((name, round(len(outs) / secs, 2), round(same, 3), sum(bool(g.error) for g in outs),
                             json.dumps(list(served.values()))))
            gen.close()
    finally:
        for proc in procs:
            stop(proc)
    print(f"\nReal servers: transformers serve of {args.teacher} x 2 (one thread each), {len(messages)} Home Depot dev "
          f"prompts, max_new_tokens {args.max_new_tokens}, greedy")
    print(table(("system", "pairs/s", "same text as local", "failed", "answers per endpoint"), rows_out))


if __name__ == "__main__":
    main()
