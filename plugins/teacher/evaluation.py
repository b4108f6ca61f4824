"""The teacher measured on gold dev pairs: parse rate, macro-F1 per class, mean reward per dimension."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reasondistill.generators import load_generator
from reasondistill.metrics import classification_metrics


def evaluate_teacher(ctx, rows: list[dict[str, Any]], max_new_tokens: int = 96, batch_size: int = 16,
                     prefix: str = "teacher_", answers_to: Path | None = None, trained: str | None = None,
                     backend: Any = None) -> dict[str, float]:
    """Greedy answers on gold rows: parse rate, accuracy, macro-F1, per-class F1 and answer share,
    mean reward per dimension. ``answers_to``: also save each answer with its parsed label and reward
    vector (a dataset), to read what a metric's move is made of. ``trained``: the folder of a teacher
    the stage just trained (else the current teacher, on the recipe's or ``backend``'s backend)."""
    rows = [r for r in rows if r.get("label") is not None and r["label"] >= 0]
    if not rows:
        return {}
    dom = ctx.domain
    gen = load_generator(ctx, backend, model=trained, trained=trained is not None, batch_size=batch_size,
                         max_new_tokens=max_new_tokens)
    outs = gen.generate([dom.messages(r) for r in rows])
    texts = [o[0].text for o in outs]
    parsed = [dom.parse_completion(t) for t in texts]
    k = len(dom.labels)
    gold = [r["label"] for r in rows]
    pred = [p.label if p.ok else (g + 1) % k for p, g in zip(parsed, gold)]  # unparsable counts as wrong
    m = classification_metrics(gold, pred, dom.labels)
    out = {f"{prefix}parse_rate": round(sum(p.ok for p in parsed) / len(parsed), 4),
           f"{prefix}accuracy": round(m["accuracy"], 4), f"{prefix}macro_f1": round(m["macro_f1"], 4)}
    for i, name in enumerate(dom.labels):  # per class: where macro-F1 moves when accuracy does not
        key = name.replace(" ", "_")
        out[f"{prefix}f1_{key}"] = round(m[f"f1_{key}"], 4)
        out[f"{prefix}answer_share_{key}"] = round(sum(p.ok and p.label == i for p in parsed) / len(parsed), 4)
    vectors = reward_vectors(ctx, rows, texts)
    out.update({f"{prefix}reward_{k}": v for k, v in mean_by_dimension(vectors).items()})
    if answers_to is not None:
        from datasets import Dataset

        Dataset.from_list([{"pair_id": r.get("pair_id"), "gold": r["label"], "completion": t,
                            "label": p.label if p.ok else -1, "new_tokens": int(o[0].tokens), "scores": json.dumps(v)}
                           for r, t, p, v, o in zip(rows, texts, parsed, vectors, outs)]).save_to_disk(str(answers_to))
    return out


def reward_vectors(ctx, rows: list[dict[str, Any]], texts: list[str]) -> list[dict[str, float]]:
    """The reward vector of each (row, completion), with its ``aggregate``."""
    vectors = []
    for row, text in zip(rows, texts):
        vec = ctx.hooks.score_reasoning(row, text, ctx.domain)
        vec["aggregate"] = ctx.hooks.aggregate_reward(vec, ctx.recipe.reward_weights)
        vectors.append(vec)
    return vectors


def preflight_rewards(check) -> None:
    """A dry call of every reward scorer on well-formed answers to a few of the run's rows: a score
    that is not a float in [0, 1] fails before the teacher trains (``Hooks.score_reasoning``)."""
    for row in check.rows:
        vector = check.hooks.score_reasoning(row, check.completion(row), check.domain)
        check.hooks.aggregate_reward(vector, check.recipe.reward_weights)


def mean_by_dimension(vectors: list[dict[str, float]]) -> dict[str, float]:
    """Each dimension's mean over the vectors that carry it (a scorer may abstain on some)."""
    sums: dict[str, list[float]] = {}
    for vec in vectors:
        for key, value in vec.items():
            sums.setdefault(key, []).append(value)
    return {k: round(sum(v) / len(v), 4) for k, v in sums.items()}


def dev_rows(ctx, n: int) -> list[dict[str, Any]]:
    if not n or not ctx.has_input("dev"):
        return []
    dev = ctx.load_dataset("dev")
    return list(dev.select(range(min(n, len(dev)))))
