"""Relevance metrics: macro-F1, accuracy, per-class F1, AUC (relevant vs rest), NDCG@k per query."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np


def classification_metrics(gold: Sequence[int], pred: Sequence[int], labels: Sequence[str],
                           probs: np.ndarray | None = None, queries: Sequence[str] | None = None) -> dict[str, float]:
    """All metrics for one set of predictions; ``probs`` (n x k) enables AUC and NDCG."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    gold, pred = np.asarray(gold), np.asarray(pred)
    idx = list(range(len(labels)))
    out = {
        "macro_f1": float(f1_score(gold, pred, labels=idx, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(gold, pred)),
    }
    for i, f1 in zip(idx, f1_score(gold, pred, labels=idx, average=None, zero_division=0)):
        out[f"f1_{labels[i].replace(' ', '_')}"] = float(f1)
    if probs is not None:
        top = len(labels) - 1
        is_top = (gold == top).astype(int)
        if 0 < is_top.sum() < len(is_top):
            out["auc_relevant"] = float(roc_auc_score(is_top, probs[:, top]))
        if queries is not None:
            score = probs @ np.arange(len(labels), dtype=float)  # expected grade
            for k in (5, 10):
                out[f"ndcg@{k}"] = ndcg_per_query(gold, score, queries, k)
    return out


def ndcg_per_query(gold: np.ndarray, score: np.ndarray, queries: Sequence[str], k: int) -> float:
    """Mean NDCG@k over queries with at least two items and some relevant item (gain 2^g - 1)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        groups[q].append(i)
    values = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        g = gold[rows].astype(float)
        ideal = np.sort(g)[::-1][:k]
        discounts = 1.0 / np.log2(np.arange(2, len(ideal) + 2))
        idcg = ((2 ** ideal - 1) * discounts).sum()
        if idcg == 0:
            continue
        order = np.argsort(-score[rows], kind="stable")[:k]
        dcg = ((2 ** g[order] - 1) * discounts[: len(order)]).sum()
        values.append(dcg / idcg)
    return float(np.mean(values)) if values else float("nan")
