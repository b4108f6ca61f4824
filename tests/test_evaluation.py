"""Student evaluation arithmetic (:mod:`reasondistill.evaluation`): which rows count, how an
unparsable teacher answer is scored, the figures' rounding, and the batch collator's optional
columns. The predictor is a stand-in that returns chosen probabilities: what is tested is the
bookkeeping around the model, which the trained-student tests cannot pin to exact numbers."""

from __future__ import annotations

import numpy as np

from reasondistill.evaluation import retention, teacher_labels
from reasondistill.plugins.domains.local_services import LocalServices

DOM = LocalServices()


class Fixed:
    """Predicts the given labels, in order."""

    def __init__(self, labels):
        self.labels = labels

    def predict_proba(self, queries, items):
        assert len(queries) == len(items) == len(self.labels)
        return np.eye(3)[self.labels]


def test_an_unparsable_teacher_answer_counts_as_wrong():
    rows = [{"gold_label": 0, "label": 0}, {"gold_label": 2, "label": 2}, {"gold_label": 1, "label": None},
            {"gold_label": 2, "label": -1}, {"gold_label": 0, "label": 1}]
    gold, teacher = teacher_labels(rows, 3)
    assert gold == [0, 2, 1, 2, 0] and teacher == [0, 2, 2, 0, 1]


def _row(i, gold, teacher):
    return {"query": f"q{i}", "item": f"item {i}", "gold_label": gold, "label": teacher}


def test_retention_on_gold_pairs_only_rounded_as_recorded():
    """Rows without a gold label are left out; figures to 5 decimals, retention to 4."""
    rows = [_row(0, 0, 0), _row(1, 1, 1), _row(2, 2, 2), _row(3, 2, 0), _row(4, 1, 2), _row(5, 0, 0),
            _row(6, None, 1), _row(7, -1, 2)]
    got = retention(Fixed([0, 1, 1, 2, 1, 0]), rows, DOM)
    from sklearn.metrics import accuracy_score, f1_score

    gold, teacher, student = [0, 1, 2, 2, 1, 0], [0, 1, 2, 0, 2, 0], [0, 1, 1, 2, 1, 0]
    t, s = f1_score(gold, teacher, average="macro"), f1_score(gold, student, average="macro")
    assert got == {"gold_pairs": 6, "teacher_macro_f1": round(t, 5), "student_macro_f1": round(s, 5),
                   "teacher_accuracy": round(accuracy_score(gold, teacher), 5),
                   "student_accuracy": round(accuracy_score(gold, student), 5), "retention_macro_f1": round(s / t, 4)}
    assert (got["teacher_macro_f1"], got["student_macro_f1"], got["retention_macro_f1"]) == (0.65556, 0.82222, 1.2542)
    assert (got["teacher_accuracy"], got["student_accuracy"]) == (0.66667, 0.83333)


def test_no_retention_when_the_teacher_gets_nothing_right():
    rows = [_row(0, 0, 1), _row(1, 1, 2), _row(2, 2, None)]
    got = retention(Fixed([0, 1, 2]), rows, DOM)
    assert got["teacher_macro_f1"] == 0 and "retention_macro_f1" not in got and got["student_macro_f1"] == 1.0
    assert retention(Fixed([]), [_row(0, None, 1)], DOM) == {}


def test_the_collator_keeps_the_optional_columns_of_a_batch_of_one():
    from reasondistill.training import PairCollator
    from reasondistill.views import key

    class Pad:
        def pad(self, feats, return_tensors):
            import torch

            width = max(len(f["input_ids"]) for f in feats)
            return {k: torch.tensor([f[k] + [0] * (width - len(f[k])) for f in feats]) for k in feats[0]}

    row = {key("std", "input_ids"): [5, 6, 7], key("std", "attention_mask"): [1, 1, 1], "labels": 2,
           "label_probs": [0.1, 0.2, 0.7], "weight": 0.5}
    batch = PairCollator(Pad(), ("std",))([row])
    assert batch["labels"].tolist() == [2] and batch["weight"].tolist() == [0.5]
    assert np.allclose(batch["label_probs"].numpy(), [[0.1, 0.2, 0.7]])
    assert batch[key("std", "input_ids")].tolist() == [[5, 6, 7]]


def test_unknown_fields_are_named_first_in_sorted_order():
    """Several unknown fields: the error names the first by name, the same on every request."""
    from reasondistill.score_inputs import BadRequest, check_pairs
    from reasondistill.score_server import ServeOptions

    pair = {"query": "q", "item": "i", "zeta": 1, "alpha": 2}
    try:
        check_pairs({"pairs": [pair]}, ServeOptions(), ())
    except BadRequest as exc:
        assert exc.status == 422 and "unknown field 'alpha'" in exc.reason
    else:
        raise AssertionError("unknown fields accepted")


def test_evaluation_counts_gold_rows_writes_predictions_and_skips_the_reasoning_view_without_a_student(
        tiny_quickstart, tmp_path):
    """Rows labelled -1 or unlabelled are not scored; ``predictions_path`` gets gold, predictions
    and label names; a dev split with a reasoning column but no trained network in hand gives the
    standard view's figures only."""
    import json

    from datasets import Dataset, load_from_disk

    from reasondistill.evaluation import evaluate_student

    folder = tiny_quickstart / "quickstart" / "distill" / "student"
    dev = load_from_disk(str(tiny_quickstart / "quickstart" / "pairs" / "dev")).to_list()[:12]
    rows = [{**r, "reasoning": "because"} for r in dev]
    rows[0]["label"], rows[1]["label"] = -1, None
    out = evaluate_student(folder, Dataset.from_list(rows), DOM, predictions_path=tmp_path / "p.json")
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["gold"] == [r["label"] for r in rows[2:]] and len(written["pred"]) == 10
    assert written["labels"] == list(DOM.labels)
    assert "dev_macro_f1" in out and not any("reasoning_view" in k for k in out)
    assert evaluate_student(folder, Dataset.from_list(rows[:2]), DOM) == {}
