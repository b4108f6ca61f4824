"""Student benchmark on Home Depot: (a) quality by loss, (b) serving speed, (c) CRSD step cost.

    python benchmarks/student.py                 # all three tables
    python benchmarks/student.py --tables b,c    # the fast ones

Data is read by path (default ../shared/data/homedepot). Reasoning for table (a): teacher
annotations when --annotations points at an annotation run's JSONL, else a rule-written
lexical rationale ending in the gold label (STaR-style stand-in). Soft targets for ``kd``: the
raters' mean (label_raw) turned into a distribution over the three grades.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, latencies, matmul_gflops, read_jsonl, table, throughput  # noqa: E402

class Row(NamedTuple):
    """One table (a) row: a loss and the options that differ from the table's defaults."""

    loss: str
    loss_options: dict = {}
    student_options: dict = {}
    distill_options: dict = {}


CONFIGS = {
    "ce": Row("ce"),
    "kd": Row("kd"),
    "crsd": Row("crsd"),
    "crsd -InfoNCE": Row("crsd", {"w_nce": 0.0}),
    "crsd -reasoning CE": Row("crsd", {"w_reasoning": 0.0}),
    "crsd stop-grad": Row("crsd", {"stop_gradient": True}),
    "crsd shared layout": Row("crsd", student_options={"reasoning_layout": "shared"}),
    "crsd hidden verdict": Row("crsd", distill_options={"hide_verdict": True}),
}
CENTERS = (1.55, 2.2, 2.75)  # mid-points of the Home Depot buckets (<1.9, <2.5, else)


def soft_label(raw: float) -> list[float]:
    w = [math.exp(-((raw - c) ** 2) / 0.08) for c in CENTERS]
    return [x / sum(w) for x in w]


def read_annotations(path: Path, limit: int) -> list[dict]:
    """Teacher-labelled rows from an annotation JSONL or an annotate stage's dataset folder.

    Rows the teacher left unparsed are dropped, as the distill stage drops them; the rest are
    shuffled (seed 0) before the first ``limit`` are taken, so a subset spans the whole pool.
    """
    keep = ("query", "item", "item_id", "label", "reasoning", "label_probs")
    if path.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if "parse_ok" in ds.column_names:
            ds = ds.filter(lambda ok: bool(ok), input_columns="parse_ok")
        rows = ds.shuffle(seed=0).select(range(min(limit, len(ds)))).to_list()
    else:
        rows = [r for r in read_jsonl(path, seed=0) if r.get("parse_ok", True)][:limit]
    return [{k: r[k] for k in keep if r.get(k) is not None} for r in rows]


def prepare(data: Path, out: Path, n_train: int, n_dev: int, annotations: Path | None) -> tuple[Path, Path]:
    from reasondistill.plugins.domains.product_search import ProductSearch

    dom = ProductSearch()
    train = read_annotations(annotations, n_train) if annotations else read_jsonl(data / "train.jsonl", n_train, seed=0)
    for i, r in enumerate(train):
        r.setdefault("pair_id", f"hd-train-{i}")
        if "reasoning" not in r:
            r["reasoning"] = dom.rationale(r, r["label"])
        if "label_probs" not in r and "label_raw" in r:
            r["label_probs"] = soft_label(r["label_raw"])
    dev = read_jsonl(data / "dev.jsonl", n_dev, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("dev.jsonl", dev)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "train.jsonl", out / "dev.jsonl"


def table_a(args) -> str:
    from reasondistill import Engine, Recipe, step

    train, dev = prepare(args.data, args.runs / "data", args.train, args.dev, args.annotations)
    chosen = [c.strip() for c in args.configs.split(",")]
    scores: dict[str, list[float]] = {k: [] for k in chosen}
    rv: dict[str, list[float]] = {k: [] for k in chosen}
    secs: dict[str, list[float]] = {k: [] for k in chosen}
    engine = Engine(runs_dir=args.runs)
    for seed in range(args.seeds):
        for label in chosen:
            row = CONFIGS[label]
            recipe = Recipe(name=f"hd-{label.replace(' ', '_')}-s{seed}", domain="product_search", seed=seed,
                            models={"student": "all-minilm-l6-v2"}, stages=[
                                step("pairs", source=str(train), dev_source=str(dev)),
                                step("distill", train_input="pairs", loss=row.loss, loss_options=row.loss_options,
                                     epochs=args.epochs, batch_size=32, learning_rate=args.lr, logging_steps=20,
                                     student_options={"max_length": 48, "reasoning_tokens": 48, **row.student_options},
                                     **row.distill_options)])
            m = engine.run(recipe)["distill"].metrics
            scores[label].append(m["dev_macro_f1"])
            rv[label].append(m.get("dev_reasoning_view_macro_f1", float("nan")))
            secs[label].append(m["step_seconds"])
            print(f"[a] {label} seed {seed}: macro-F1 {m['dev_macro_f1']:.4f}", file=sys.stderr)
    rows = []
    base = statistics.mean(scores["ce"]) if "ce" in scores else float("nan")
    for label in chosen:
        s = scores[label]
        rows.append((label, statistics.mean(s), statistics.pstdev(s), (statistics.mean(s) - base) * 100,
                     statistics.mean(rv[label]), statistics.mean(secs[label])))
    head = (f"(a) Home Depot dev ({args.dev} pairs), all-MiniLM-L6-v2 student, {args.train} training pairs, "
            f"{args.epochs} epochs, {args.seeds} seeds; reasoning: "
            f"{'teacher annotations' if args.annotations else 'lexical rationale (STaR-style stand-in)'}\n")
    return head + table(("loss", "macro-F1 mean", "std", "points vs ce", "reasoning-view macro-F1", "s/step"), rows)


def _student_for_serving(args) -> Path:
    if args.student:
        return Path(args.student)
    from reasondistill import Engine, Recipe, step

    train, dev = prepare(args.data, args.runs / "data", args.train, args.dev, args.annotations)
    recipe = Recipe(name="hd-serving-student", domain="product_search", models={"student": "all-minilm-l6-v2"},
                    stages=[step("pairs", source=str(train), dev_source=str(dev)),
                            step("distill", train_input="pairs", loss="ce", max_steps=60, batch_size=32)])
    Engine(runs_dir=args.runs).run(recipe)
    return args.runs / "hd-serving-student" / "distill" / "student"


def table_b(args) -> str:
    import numpy as np
    import torch
    from transformers import pipeline

    from reasondistill.onnx_export import OnnxPredictor, export_onnx
    from reasondistill.predictor import Predictor

    student = _student_for_serving(args)
    rows = read_jsonl(args.data / "dev.jsonl", args.serving_pairs, seed=1)
    q, it = [r["query"] for r in rows], [r["item"] for r in rows]
    onnx_dir = Path(tempfile.mkdtemp(prefix="rd-onnx-"))
    export_onnx(student, onnx_dir)
    torch_pred = Predictor(student, batch_size=64)
    ref = torch_pred.predict_proba(q, it).argmax(-1)
    pipe = pipeline("text-classification", model=str(student), tokenizer=str(student), device=-1, dtype=torch.float32)
    inputs = [{"text": a, "text_pair": b} for a, b in zip(q, it)]
    systems = {
        "HF pipeline (eager)": (lambda n: pipe(inputs[:n] if n > 1 else inputs[n], batch_size=64),
                                lambda: np.array([int(o["label"].split("_")[-1]) for o in pipe(inputs, batch_size=64)])),
        "torch Predictor (buckets)": (None, lambda: torch_pred.predict_proba(q, it).argmax(-1)),
        "ONNX fp32 (fused)": (OnnxPredictor(onnx_dir, "fp32"), None),
        "ONNX int8 (fused, dynamic)": (OnnxPredictor(onnx_dir, "int8"), None),
    }
    cfg = torch_pred.model.config
    tokens = [len(x) for x in torch_pred.encode(q, it)["input_ids"]]
    mean_tok = float(np.mean(tokens))
    body = sum(p.numel() for n, p in torch_pred.model.named_parameters() if "embeddings" not in n)
    flops = 2 * body * mean_tok + cfg.num_hidden_layers * 4 * mean_tok**2 * cfg.hidden_size
    peak = matmul_gflops()
    out = []
    for name, (obj, full) in systems.items():
        if name.startswith("ONNX"):
            pred = obj
            run_all = lambda p=pred: p.predict_proba(q, it).argmax(-1)  # noqa: E731
            one = lambda i, p=pred: p.predict_proba([q[i]], [it[i]])  # noqa: E731
        elif name.startswith("torch"):
            run_all = full
            one = lambda i: torch_pred.predict_proba([q[i]], [it[i]])  # noqa: E731
        else:
            run_all = full
            one = lambda i: pipe(inputs[i])  # noqa: E731
        labels = run_all()
        pps = throughput(run_all, len(q), repeats=2)
        p50, p99 = latencies(one, args.latency_calls)
        out.append((name, pps, p50, p99, float((labels == ref).mean()), pps * flops / 1e9 / peak))
    head = (f"(b) serving {len(q)} Home Depot dev pairs (mean {mean_tok:.1f} tokens), 2 CPU threads; "
            f"fp32 matmul peak measured now: {peak:.1f} GFLOP/s, {flops / 1e9:.3f} GFLOP a pair\n")
    return head + table(("system", "pairs/s @64", "p50 ms @1", "p99 ms @1", "label agreement vs torch fp32",
                         "fraction of fp32 roofline"), out)


def table_c(args) -> str:
    import torch

    from reasondistill import get_hooks

    from reasondistill.model_refs import resolve_model
    from reasondistill.plugins.student.losses import CRSD, CrossEntropy
    from reasondistill.plugins.domains.product_search import ProductSearch
    from reasondistill.plugins.student.encoder import EncoderClassifier
    from reasondistill.training import PairCollator

    dom, comp = ProductSearch(), EncoderClassifier()
    path = resolve_model("all-minilm-l6-v2", get_hooks())
    opts = comp.Options(max_length=64, reasoning_tokens=64)
    tok = comp.tokenizer(path)
    rows = read_jsonl(args.data / "train.jsonl", 32 * 6, seed=2)
    queries, items = [r["query"] for r in rows], [r["item"] for r in rows]
    reasonings = [dom.rationale(r, r["label"]) for r in rows]
    times, padded = {}, {}
    for name, loss, layout in (("ce", CrossEntropy(), "separate"), ("crsd (separate views)", CRSD(), "separate"),
                               ("crsd (shared layout)", CRSD(), "shared")):
        o_student = opts.model_copy(update={"reasoning_layout": layout})
        enc = comp.encode(tok, queries, items, reasonings if loss.needs_reasoning else None, o_student)
        feats = [{k: enc[k][i] for k in enc} | {"labels": rows[i]["label"]} for i in range(len(rows))]
        batches = [PairCollator(tok)(feats[i:i + 32]) for i in range(0, len(feats), 32)]
        padded[name] = " + ".join(str(batches[0][f"{v}_input_ids"].shape[1]) for v in ("std", "rsn", "shr")
                                  if f"{v}_input_ids" in batches[0])
        torch.manual_seed(0)
        student = comp.build(path, 3, o_student)
        optim = torch.optim.AdamW(student.parameters(), lr=5e-5)
        o = loss.options()
        spent = []
        for _ in range(args.step_rounds):
            for i, batch in enumerate(batches):
                t = time.perf_counter()
                out = loss.compute(student, batch, o)
                optim.zero_grad()
                out["loss"].backward()
                optim.step()
                if i or _:  # the very first batch is warm-up
                    spent.append(time.perf_counter() - t)
        times[name] = statistics.median(spent)
    return ("(c) training step, all-MiniLM-L6-v2, batch 32, budget 64 + 64 tokens, median of "
            f"{args.step_rounds * len(batches) - 1} steps\n" +
            table(("loss", "padded tokens a row (first batch)", "s/step", "ratio to ce"),
                  [(k, padded[k], v, v / times["ce"]) for k, v in times.items()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--tables", default="a,b,c")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-student")
    p.add_argument("--annotations", type=Path, help="teacher annotations: a JSONL (query, item, label, reasoning) or an annotate stage's dataset folder")
    p.add_argument("--student", help="a trained student folder for table (b)")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--dev", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of the table (a) rows")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--step-rounds", type=int, default=2, help="passes over the 6 timing batches for table (c)")
    p.add_argument("--serving-pairs", type=int, default=640)
    p.add_argument("--latency-calls", type=int, default=200)
    args = p.parse_args()
    torch_threads()
    for t in args.tables.split(","):
        print({"a": table_a, "b": table_b, "c": table_c}[t.strip()](args), "\n", flush=True)


def torch_threads() -> None:
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


if __name__ == "__main__":
    main()
