"""Student evaluation on a gold split: the standard view, and the reasoning view as upper bound."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import classification_metrics
from .serving import Predictor, length_buckets, render_items


def _gold_rows(dev) -> tuple[list[dict[str, Any]], list[int]]:
    rows = [r for r in dev if r.get("label") is not None and r["label"] >= 0]
    return rows, [int(r["label"]) for r in rows]


def evaluate_student(model_dir, dev, domain, reasoning_column: str = "reasoning", student=None, tokenizer=None,
                     student_options=None, student_component=None, prefix: str = "dev_") -> dict[str, float]:
    """Metrics of the standard view; with a reasoning column, also of the reasoning view."""
    rows, gold = _gold_rows(dev)
    if not rows:
        return {}
    predictor = Predictor(model_dir, model=student.model if student is not None else None, tokenizer=tokenizer)
    queries, items = render_items(rows, domain)
    probs = predictor.predict_proba(queries, items)
    out = {prefix + k: round(v, 5) for k, v in classification_metrics(gold, probs.argmax(-1), domain.labels, probs, queries).items()}
    if student is not None and student_component is not None and reasoning_column in dev.column_names:
        reasonings = [r.get(reasoning_column) or "" for r in rows]
        rprobs = reasoning_view_proba(student, tokenizer, student_component, student_options, queries, items, reasonings)
        rv = classification_metrics(gold, rprobs.argmax(-1), domain.labels)
        out.update({f"{prefix}reasoning_view_{k}": round(v, 5) for k, v in rv.items() if k in ("macro_f1", "accuracy")})
    return out


def reasoning_view_proba(student, tokenizer, component, options, queries, items, reasonings, batch_size: int = 64) -> np.ndarray:
    import torch

    enc = component.encode(tokenizer, queries, items, reasonings, options)
    keys = [k for k in enc if k.startswith("rsn_")]
    out = np.zeros((len(queries), student.model.config.num_labels), dtype=np.float32)
    student.eval()
    with torch.inference_mode():
        for idx in length_buckets([len(x) for x in enc["rsn_input_ids"]], batch_size):
            batch = tokenizer.pad({k[4:]: [enc[k][i] for i in idx] for k in keys}, return_tensors="pt")
            logits, _ = student.forward_view(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            out[idx] = torch.softmax(logits, -1).numpy()
    return out
