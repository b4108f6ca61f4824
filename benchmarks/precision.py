"""fp32 against bf16 on this CPU, side by side in one run: teacher annotation and student scoring.

Prints one table: speed (teacher tokens/s, student pairs/s) and label agreement with fp32 (the
share of pairs whose parsed teacher label, or student argmax, is the same). It is the measurement
behind ``reasondistill.runtime``'s rule that ``auto`` stays fp32 on a CPU until a stage checks
agreement itself.

    python benchmarks/precision.py --pairs 64 --student-pairs 512
    python benchmarks/precision.py --teacher runs/homedepot-s0/preference/teacher --domain product_search \
        --teacher-prompt short --rows ../shared/data/homedepot/train.jsonl --pairs 128 --batch 128 --new-tokens 80

The second line measures a trained study teacher on the rows and prompt it annotates (here the
Home Depot study's teacher, in the shape of its ``annotate`` stage).

Teacher: SmolLM2-135M-Instruct (real weights, ``make setup``), greedy, the slot engine, on
``local_services`` prompts. Student: all-MiniLM-L6-v2 with a seeded classifier head (untrained:
agreement then measures numerics, not quality). ``--teacher tiny-teacher`` builds a tiny teacher that writes parsable labels (the base SmolLM2 was
never taught the answer format, so only its text can be compared).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def teacher_run(path: str, domain, rows, dtype, batch: int, new_tokens: int) -> tuple[list[str], float, int]:
    import torch
    from transformers import AutoModelForCausalLM

    from reasondistill.local_decoding import TeacherGenerator

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    gen = TeacherGenerator(path, domain, batch_size=batch, max_new_tokens=new_tokens, model=model)
    messages = [domain.messages(r) for r in rows]
    gen.generate(messages[:2], max_new_tokens=4)  # warm-up
    start = time.perf_counter()
    out = gen.generate(messages)
    seconds = time.perf_counter() - start
    return [g[0].text for g in out], seconds, sum(g[0].tokens for g in out)


def student_run(path: str, queries, items, dtype) -> tuple[list, float]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from reasondistill.predictor import Predictor

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, dtype=getattr(torch, dtype))
    pred = Predictor(None, model=model, tokenizer=__import__("transformers").AutoTokenizer.from_pretrained(path),
                     batch_size=64, max_length=64)
    pred.predict_proba(queries[:8], items[:8])  # warm-up
    start = time.perf_counter()
    labels = pred.predict_proba(queries, items).argmax(-1).tolist()
    return labels, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--student-pairs", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--teacher", default="smollm2-135m-instruct",
                        help="a registered model, a folder, or 'tiny-teacher' (built here: writes parsable labels)")
    parser.add_argument("--student", default="all-minilm-l6-v2", help="a registered model or a folder")
    parser.add_argument("--domain", default=None, help="a registered domain (default: the embedded local_services)")
    parser.add_argument("--teacher-prompt", choices=("full", "short"), default="full",
                        help="the recipe's teacher_prompt (short: a teacher that learnt the format in SFT)")
    parser.add_argument("--rows", default=None, help="a JSONL of query/item rows (default: the domain's generator)")
    args = parser.parse_args()

    from reasondistill import get_hooks

    from reasondistill.model_refs import resolve_model
    from reasondistill.runtime import cpu_bf16_speedup
    from reasondistill.tiny import default_domain

    n = max(args.pairs, args.student_pairs)
    if args.domain:
        from reasondistill.manager import Hooks

        domain = Hooks().catalogue.get("domain", args.domain, "--domain")
    else:
        domain = default_domain()
    domain = domain.configured(domain.options({}), args.teacher_prompt)
    if args.rows:
        import json

        with open(args.rows, encoding="utf-8") as fh:
            rows = [json.loads(line) for _, line in zip(range(n), fh)]
    else:
        rows = domain.generate(n=n, seed=3)
    if args.teacher == "tiny-teacher":
        import tempfile

        from reasondistill.tiny import build_tiny_teacher

        teacher = str(build_tiny_teacher(Path(tempfile.mkdtemp()) / "tiny-teacher"))
    else:
        teacher = resolve_model(args.teacher, get_hooks())
    student = resolve_model(args.student, get_hooks())
    queries = [domain.query_text(r) for r in rows[:args.student_pairs]]
    items = [domain.item_text(r) for r in rows[:args.student_pairs]]

    results = {}
    for dtype in ("float32", "bfloat16"):
        t_labels, t_sec, t_tok = teacher_run(teacher, domain, rows[:args.pairs], dtype, args.batch, args.new_tokens)
        s_labels, s_sec = student_run(student, queries, items, dtype)
        results[dtype] = (t_labels, t_tok / t_sec, s_labels, len(queries) / s_sec)
    ref_t, _, ref_s, _ = results["float32"]
    ref_labels = [domain.parse_completion(t).label for t in ref_t]
    print(f"bf16 matmul probe: {cpu_bf16_speedup():.2f}x fp32 on this CPU")
    print(f"teacher: {teacher}, {args.pairs} prompts, {args.new_tokens} new tokens, batch {args.batch}; "
          f"student: {student}, {len(queries)} pairs\n")
    print("| dtype | teacher tokens/s | same text as fp32 | parse rate | labels = fp32 (parsed in both) "
          "| student pairs/s | student labels = fp32 |")
    print("|---|---|---|---|---|---|---|")
    for dtype, (texts, t_speed, s_labels, s_speed) in results.items():
        labels = [domain.parse_completion(t).label for t in texts]
        both = [(a, b) for a, b in zip(labels, ref_labels) if a is not None and b is not None]
        same_label = f"{sum(a == b for a, b in both) / len(both):.3f} ({len(both)})" if both else "- (0)"
        same_text = sum(a == b for a, b in zip(texts, ref_t)) / len(ref_t)
        parsed = sum(x is not None for x in labels) / len(labels)
        s_agree = sum(a == b for a, b in zip(s_labels, ref_s)) / len(ref_s)
        print(f"| {dtype} | {t_speed:.0f} | {same_text:.3f} | {parsed:.2f} | {same_label} | {s_speed:.0f} | {s_agree:.3f} |")


if __name__ == "__main__":
    main()
