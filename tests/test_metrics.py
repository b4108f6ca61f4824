"""Relevance metrics against hand-computed values and independent references (sklearn)."""

import math

import numpy as np
import pytest


def test_metrics_hand_computed():
    from reasondistill.metrics import classification_metrics, ndcg_per_query

    labels = ("irrelevant", "partly relevant", "relevant")
    gold, pred = [0, 0, 1, 2, 2, 1], [0, 1, 1, 2, 0, 1]
    m = classification_metrics(gold, pred, labels)
    # irrelevant: tp 1, fp 1, fn 1 -> 0.5; partly: tp 2, fp 1, fn 0 -> 0.8; relevant: tp 1, fp 0, fn 1 -> 2/3
    assert m["f1_irrelevant"] == pytest.approx(0.5)
    assert m["f1_partly_relevant"] == pytest.approx(0.8)
    assert m["f1_relevant"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # AUC of "relevant" against the rest, on the relevant column: positives 0.9, 0.4; negatives 0.2, 0.5
    probs = np.array([[0.05, 0.05, 0.9], [0.7, 0.1, 0.2], [0.3, 0.3, 0.4], [0.1, 0.4, 0.5]])
    m = classification_metrics([2, 0, 2, 1], [2, 0, 2, 2], labels, probs=probs)
    assert m["auc_relevant"] == pytest.approx(0.75)
    # NDCG@k, one query, gold (2, 0, 1) ranked by score as (0, 1, 2): gains 0, 1, 3 at ranks 1, 2, 3
    dcg = 0 / math.log2(2) + 1 / math.log2(3) + 3 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3) + 0 / math.log2(4)
    got = ndcg_per_query(np.array([2, 0, 1]), np.array([0.1, 0.9, 0.5]), ["q", "q", "q"], 10)
    assert got == pytest.approx(dcg / idcg)
    assert ndcg_per_query(np.array([2, 0, 1]), np.array([0.9, 0.1, 0.5]), ["q"] * 3, 10) == pytest.approx(1.0)
    assert ndcg_per_query(np.array([2, 0, 1]), np.array([0.1, 0.9, 0.5]), ["q"] * 3, 1) == pytest.approx(0.0)


def test_metrics_edge_cases_against_independent_references():
    """What the hand-computed case leaves open: which queries count for NDCG, the k of each key,
    a class nobody predicts, AUC only where both sides exist (references: sklearn, by hand)."""
    from sklearn.metrics import ndcg_score

    from reasondistill.metrics import classification_metrics, ndcg_per_query

    labels = ("irrelevant", "partly relevant", "relevant")
    # a class absent from gold and predictions scores F1 0, not 1 (zero_division=0)
    m = classification_metrics([0, 2, 2, 0], [0, 2, 0, 0], labels)
    assert m["f1_partly_relevant"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)
    # no relevant gold: AUC is undefined and left out (not an error); with both sides it is there
    probs = np.full((4, 3), 1 / 3)
    assert "auc_relevant" not in classification_metrics([0, 1, 1, 0], [0, 1, 1, 0], labels, probs=probs)
    # one query of 12 items with distinct scores: ndcg@5 and @10 equal sklearn's at exactly those k
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 12)
    score = rng.permutation(12) / 12.0
    probs = np.stack([1 - score, np.zeros(12), score], 1)  # expected grade = 2 * score
    m = classification_metrics(gold, gold, labels, probs=probs, queries=["q"] * 12)
    for k in (5, 10):
        want = ndcg_score([2.0 ** gold - 1], [score], k=k)
        assert m[f"ndcg@{k}"] == pytest.approx(want), k
        assert want != pytest.approx(ndcg_score([2.0 ** gold - 1], [score], k=k - 1)), "the case tells k from k-1"
    # which queries count: one-item queries and all-irrelevant queries are skipped, two-item ones count,
    # and a skipped query first does not stop the others from counting
    g = np.array([2, 0, 2, 0, 0, 1, 2])
    s = np.array([0.5, 0.1, 0.9, 0.2, 0.8, 0.9, 0.1])
    q = ["single", "zero", "two", "zero", "two", "three", "three"]
    ndcg_two = (3 / math.log2(2)) / (3 / math.log2(2))  # relevant item ranked first
    ndcg_three = (1 / math.log2(2) + 3 / math.log2(3)) / (3 / math.log2(2) + 1 / math.log2(3))
    assert ndcg_per_query(g, s, q, 10) == pytest.approx((ndcg_two + ndcg_three) / 2)
    assert math.isnan(ndcg_per_query(np.array([1]), np.array([0.3]), ["alone"], 10))
