"""Annotation throughput: SmolLM2-135M fp32 on the same Home Depot prompts, side by side.

    python benchmarks/annotate.py --prompts 256 --max-new-tokens 64

Rows: a per-pair ``generate`` loop, plain batched ``generate`` (batch 16, left padding, no
buckets), our annotator on transformers ``generate`` (length buckets, shared-prefix KV, stop at
the label), and our annotator's default engine, continuous slot batching (finished rows refilled
at once), at several batch sizes, plus int8 dynamic quantization. Agreement: share of prompts whose
greedy text equals the per-pair loop's (and whose parsed label is the same).

Served teacher (``--backend openai``): the ``openai`` backend against a running server, at each
``--concurrency``, beside the local slot engine on the same prompts and the same model folder
(``--teacher``), with label agreement against it; a row against an instant local fake server
gives the client's own ceiling, and parsing is timed apart, to say where the time goes:

    transformers serve "$(python -c 'from reasondistill import get_hooks; from reasondistill.model_refs import resolve_model as r; print(r("smollm2-135m-instruct", get_hooks()))')" \
        --port 8011 --dtype float32 --continuous-batching &
    python benchmarks/annotate.py --backend openai --base-url http://127.0.0.1:8011/v1 --prompts 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, matmul_gflops, read_jsonl, table  # noqa: E402


def plain_generate(model, tok, texts, batch_size, max_new_tokens):
    import torch

    tok.padding_side = "left"
    outs = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            seq = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
            for row in seq[:, enc["input_ids"].shape[1]:]:
                ids = row.tolist()
                used = next((j for j, t in enumerate(ids) if t in (tok.eos_token_id, tok.pad_token_id)), len(ids))
                outs.append((tok.decode(ids[:used], skip_special_tokens=True), used))
    return outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--loop-prompts", type=int, default=None, help="fewer prompts for the slow per-pair loop")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batches", default="32,64,128", help="slot counts for the continuous-batching engine")
    p.add_argument("--generate-batch", type=int, default=64, help="batch of the generate-engine row (0: skip)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--teacher", default="smollm2-135m-instruct",
                   help="registered model or folder, e.g. an SFT teacher that writes labels")
    p.add_argument("--backend", choices=["transformers", "openai"], default="transformers")
    p.add_argument("--base-url", help="the server's API root (--backend openai)")
    p.add_argument("--model", default="auto", help="the served model's name (--backend openai)")
    p.add_argument("--concurrency", default="1,8,32,64", help="requests in flight (--backend openai)")
    args = p.parse_args()
    if args.backend == "openai":
        if not args.base_url:
            p.error("--backend openai needs --base-url")
        return served(args)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasondistill.local_decoding import TeacherGenerator, prompt_texts
    from reasondistill import get_hooks
    from reasondistill.model_refs import resolve_model
    from reasondistill.plugins.domains.product_search import ProductSearch

    torch.set_num_threads(2)
    dom = ProductSearch()
    path = resolve_model(args.teacher, get_hooks())
    rows = read_jsonl(args.data / "dev.jsonl", args.prompts, seed=3)
    messages = [dom.messages(r) for r in rows]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = prompt_texts(tok, messages)
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n) + model.config.vocab_size * model.config.hidden_size
    flops_tok = 2 * body
    peak = matmul_gflops()

    results = {}
    n_loop = args.loop_prompts or len(texts)
    t = time.perf_counter()
    loop = plain_generate(model, tok, texts[:n_loop], 1, args.max_new_tokens)
    results["per-pair generate loop"] = (loop, time.perf_counter() - t, n_loop)
    t = time.perf_counter()
    results["plain generate, batch 16"] = (plain_generate(model, tok, texts, 16, args.max_new_tokens), time.perf_counter() - t, len(texts))
    def ours(name: str, **kw) -> None:
        gen = TeacherGenerator(path, dom, max_new_tokens=args.max_new_tokens, **kw)
        t = time.perf_counter()
        outs = gen.generate(messages)
        results[name] = ([(o[0].text, o[0].tokens) for o in outs], time.perf_counter() - t, len(texts))

    if args.generate_batch:
        ours(f"ours, generate engine, batch {args.generate_batch}", batch_size=args.generate_batch, engine="generate",
             model=model, tokenizer=tok)
    batches = [int(b) for b in args.batches.split(",")]
    for bs in batches:
        ours(f"ours, slots, batch {bs}", batch_size=bs, engine="slots", model=model, tokenizer=tok)
    if args.int8:
        ours(f"ours, slots, batch {max(batches)}, int8 dynamic", batch_size=max(batches), engine="slots", int8=True)

    ref = results["per-pair generate loop"][0]
    base_rate = None
    out_rows = []
    for name, (outs, secs, n) in results.items():
        tokens = sum(k for _, k in outs)
        rate = tokens / secs
        if name.startswith("plain generate, batch 16"):
            base_rate = rate
        same_text = sum(a[0] == b[0] for a, b in zip(outs, ref)) / len(ref)
        same_label = sum(dom.parse_completion(a[0]).label == dom.parse_completion(b[0]).label for a, b in zip(outs, ref)) / len(ref)
        # rows the loop did not run are compared on the label only, against the fp32 batch-16 run
        plain = results["plain generate, batch 16"][0]
        same_label_all = sum(dom.parse_completion(a[0]).label == dom.parse_completion(b[0]).label
                             for a, b in zip(outs, plain)) / min(len(plain), len(outs))
        parsed = sum(dom.parse_completion(a[0]).ok for a in outs) / len(outs)
        out_rows.append([name, n, tokens, rate, n / secs, same_text, same_label, same_label_all, parsed,
                         rate * flops_tok / 1e9 / peak])
    for row in out_rows:
        row.insert(4, row[3] / base_rate if base_rate else float("nan"))
    print(f"{args.teacher} fp32, {len(texts)} Home Depot dev prompts, max_new_tokens {args.max_new_tokens}, greedy; "
          f"fp32 matmul peak measured now {peak:.0f} GFLOP/s, {flops_tok / 1e9:.3f} GFLOP a token")
    print(table(("system", "prompts", "new tokens", "tokens/s", "x batch-16 baseline", "pairs/s", "same text as loop",
                 "same label as loop", "same label as plain batch 16", "parse rate", "fraction of fp32 roofline"),
                out_rows))


class FakeServerProcess:
    """The tests' instant fake OpenAI server in its own process (in this one, its threads and the
    client's would share one GIL and the "client only" row would measure that contention)."""

    def __init__(self) -> None:
        import subprocess

        code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from tests.served import FaultServer; "
                "s = FaultServer(model='fake'); print(s.url, flush=True); time.sleep(10**6)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1])],
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def served(args) -> None:
    """The openai backend at each concurrency beside the local slot engine (same prompts, model)."""
    import torch

    from reasondistill.local_decoding import TeacherGenerator
    from reasondistill import get_hooks
    from reasondistill.model_refs import resolve_model
    from reasondistill.plugins.backends.openai_backend import OpenAIBackendOptions, OpenAIGenerator
    from reasondistill.plugins.domains.product_search import ProductSearch

    torch.set_num_threads(2)
    dom = ProductSearch()
    rows = read_jsonl(args.data / "dev.jsonl", args.prompts, seed=3)
    messages = [dom.messages(r) for r in rows]

    def run(gen) -> tuple[list, float]:
        t = time.perf_counter()
        outs = [o[0] for o in gen.generate(messages, max_new_tokens=args.max_new_tokens)]
        return outs, time.perf_counter() - t

    local_gen = TeacherGenerator(resolve_model(args.teacher, get_hooks()), dom, batch_size=64, max_new_tokens=args.max_new_tokens)
    local, local_s = run(local_gen)
    del local_gen
    t = time.perf_counter()
    local_labels = [dom.parse_completion(g.text).label for g in local]
    parse_ms = (time.perf_counter() - t) * 1000 / len(local)
    out_rows = [["local slot engine, batch 64", "-", len(local) / local_s, sum(g.tokens for g in local) / local_s,
                 1.0, 1.0, sum(lab is not None for lab in local_labels) / len(local), 0]]
    fake = FakeServerProcess()
    try:
        for c in (int(x) for x in args.concurrency.split(",")):
            for name, url, model in ((f"openai backend, {args.base_url}", args.base_url, args.model),
                                     ("client only (instant local fake server)", fake.url, "fake")):
                gen = OpenAIGenerator(dom, OpenAIBackendOptions(model=model, base_url=url, concurrency=c, timeout=600),
                                      args.max_new_tokens)
                outs, secs = run(gen)
                labels = [dom.parse_completion(g.text).label for g in outs]
                same_label = sum(a == b for a, b in zip(labels, local_labels)) / len(outs)
                same_text = sum(a.text == b.text for a, b in zip(outs, local)) / len(outs)
                out_rows.append([name, c, len(outs) / secs, sum(g.tokens for g in outs) / secs,
                                 same_text if url != fake.url else "-", same_label if url != fake.url else "-",
                                 sum(lab is not None for lab in labels) / len(outs), sum(bool(g.error) for g in outs)])
    finally:
        fake.close()
    print(f"{args.teacher}, {len(messages)} Home Depot dev prompts, max_new_tokens {args.max_new_tokens}, greedy; "
          f"parsing {parse_ms:.3f} ms a completion (client side)")
    print(table(("system", "concurrency", "pairs/s", "tokens/s", "same text as local", "same label as local",
                 "parse rate", "failed"), out_rows))


if __name__ == "__main__":
    main()
