"""Student evaluation on a gold split: the standard view, and the reasoning view as upper bound."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import classification_metrics
from .predictor import Predictor, length_buckets, render_items
from .views import forward_reasoning, key, reasoning_view


def _gold_rows(dev) -> tuple[list[dict[str, Any]], list[int]]:
    rows = [r for r in dev if r.get("label") is not None and r["label"] >= 0]
    return rows, [int(r["label"]) for r in rows]


def evaluate_student(model_dir, dev, domain, reasoning_column: str = "reasoning", student=None, tokenizer=None,
                     student_options=None, student_component=None, prefix: str = "dev_", predictions_path=None) -> dict[str, float]:
    """Metrics of the standard view; with a reasoning column, also of the reasoning view."""
    rows, gold = _gold_rows(dev)
    if not rows:
        return {}
    if student_component is not None:
        predictor = student_component.predictor(model_dir, network=student, tokenizer=tokenizer)
    else:
        predictor = Predictor(model_dir, model=student.model if student is not None else None, tokenizer=tokenizer)
    queries, items = render_items(rows, domain)
    probs = predictor.predict_proba(queries, items)
    out = {prefix + k: round(v, 5) for k, v in classification_metrics(gold, probs.argmax(-1), domain.labels, probs, queries).items()}
    if predictions_path is not None:
        import json

        predictions_path.write_text(json.dumps({"gold": gold, "pred": probs.argmax(-1).tolist(), "labels": list(domain.labels)}))
    if student is not None and student_component is not None and reasoning_column in dev.column_names:
        reasonings = [r.get(reasoning_column) or "" for r in rows]
        rprobs = reasoning_view_proba(student, tokenizer, student_component, student_options, queries, items, reasonings)
        rv = classification_metrics(gold, rprobs.argmax(-1), domain.labels)
        out.update({f"{prefix}reasoning_view_{k}": round(v, 5) for k, v in rv.items() if k in ("macro_f1", "accuracy")})
    return out


def reasoning_view_proba(student, tokenizer, component, options, queries, items, reasonings, batch_size: int = 64) -> np.ndarray:
    """Label probabilities of the student's reasoning view (layout: :mod:`reasondistill.views`)."""
    import torch

    from .training import PairCollator

    enc = component.encode(tokenizer, queries, items, reasonings, options)
    view = reasoning_view(enc)
    keys = [k for k in enc if k.startswith(view + "_")]
    collate = PairCollator(tokenizer, (view,))
    out: np.ndarray | None = None
    device = next(student.parameters()).device  # after training on a GPU the student is there
    student.eval()
    with torch.inference_mode():
        for idx in length_buckets([len(x) for x in enc[key(view, "input_ids")]], batch_size):
            batch = collate([{k: enc[k][i] for k in keys} for i in idx])
            logits, _ = forward_reasoning(student, {k: v.to(device) for k, v in batch.items()})
            probs = torch.softmax(logits.float(), -1).cpu().numpy()
            if out is None:
                out = np.zeros((len(queries), probs.shape[1]), dtype=np.float32)
            out[idx] = probs
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def teacher_labels(rows: list[dict[str, Any]], num_labels: int) -> tuple[list[int], list[int]]:
    """Gold and teacher labels of annotated gold pairs; an unparsable teacher answer counts as wrong."""
    gold = [int(r["gold_label"]) for r in rows]
    return gold, [r["label"] if r["label"] is not None and r["label"] >= 0 else (g + 1) % num_labels
                  for r, g in zip(rows, gold)]


def retention(student_predictor, dev_annotations, domain) -> dict[str, float]:
    """Student vs teacher on the same gold pairs (the teacher's dev annotations).

    ``retention_macro_f1`` = student macro-F1 / teacher macro-F1; an unparsable teacher answer
    counts as wrong, as in the teacher's own evaluation.
    """
    rows = [r for r in dev_annotations if r.get("gold_label") is not None and r["gold_label"] >= 0]
    if not rows:
        return {}
    gold, teacher = teacher_labels(rows, len(domain.labels))
    queries, items = render_items(rows, domain)
    student = student_predictor.predict_proba(queries, items).argmax(-1).tolist()
    t = classification_metrics(gold, teacher, domain.labels)
    s = classification_metrics(gold, student, domain.labels)
    out = {"gold_pairs": len(rows), "teacher_macro_f1": round(t["macro_f1"], 5), "student_macro_f1": round(s["macro_f1"], 5),
           "teacher_accuracy": round(t["accuracy"], 5), "student_accuracy": round(s["accuracy"], 5)}
    if t["macro_f1"] > 0:
        out["retention_macro_f1"] = round(s["macro_f1"] / t["macro_f1"], 4)
    return out
