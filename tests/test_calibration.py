"""``calibrate: macro_f1``: per-class logit offsets fitted on half of dev, reported on the other
half, added to the student's final bias so every path that runs it gives the calibrated labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reasondistill.errors import PluginError
from reasondistill.plugins.student.calibration import add_to_bias, final_linear, fit_offsets, halves, macro_f1


def test_offsets_recover_a_class_the_argmax_never_picks():
    rng = np.random.default_rng(0)
    gold = np.repeat([0, 1, 2], 40)
    logits = rng.normal(0, 0.3, (120, 3))
    logits[np.arange(120), gold] += 1.0
    logits[:, 2] -= 1.5  # class 2 is right for its rows, but never the argmax
    assert macro_f1(gold, logits.argmax(-1), 3) < 0.6
    offsets, best = fit_offsets(logits, gold)
    assert offsets[0] == 0 and 1.0 <= offsets[2] <= 2.5
    assert best == pytest.approx(macro_f1(gold, (logits + offsets).argmax(-1), 3)) and best > 0.9


def test_coordinate_ascent_stops_after_three_rounds(monkeypatch):
    """The cap on rounds: a case (found by search) that still improves in the third round gets
    it, and no fourth round is tried although the third changed an offset."""
    import reasondistill.plugins.student.calibration as calibration

    gold = np.array([0, 0, 2, 1, 0, 2, 0, 1, 0, 2])
    logits = np.array([[-1.4, 1.1, -1.1], [-2.1, 0.0, -0.7], [-1.4, 1.2, 2.0], [-2.6, 1.8, 0.9], [-0.4, 1.2, 0.9],
                       [-0.9, 2.6, 0.3], [-1.4, -0.6, 0.4], [-0.5, -0.8, 0.8], [-1.1, -0.3, -2.7], [0.0, 2.3, 0.3]])
    assert fit_offsets(logits, gold, rounds=2)[1] == pytest.approx(0.4841, abs=1e-4)
    calls = []
    monkeypatch.setattr(calibration, "macro_f1", lambda *a: calls.append(1) or macro_f1(*a))
    offsets, best = fit_offsets(logits, gold)
    assert best == pytest.approx(0.6111, abs=1e-4) == macro_f1(gold, (logits + offsets).argmax(-1), 3)
    assert len(calls) == 1 + 3 * 2 * len(calibration.GRID)  # the start, then 3 rounds of 2 classes


def test_the_offsets_grid_ends_at_four_logits_both_ways():
    """The grid ends at +-4 (``GRID``): past that an offset turns a class on or off wholesale.
    Class 1 sits 4.05 down: +4.1 on class 1, or -4.1 on class 0, would recover it; the grid stops at
    4.0 both ways."""
    gold = np.repeat([0, 1], 20)
    logits = np.zeros((40, 2))
    logits[gold == 1, 1] = -4.05
    logits[gold == 0, 1] = -9.0
    offsets, best = fit_offsets(logits, gold)
    assert list(offsets) == [0.0, 0.0] and best == pytest.approx(macro_f1(gold, np.zeros(40, int), 2))
    logits[gold == 1, 1] = -3.5  # within the grid: found
    assert fit_offsets(logits, gold)[0][1] == pytest.approx(3.6)
    logits[gold == 0, 1], logits[gold == 1, 1] = 4.05, 9.0  # the other end: -4.1 would turn class 1 off class 0's rows
    assert list(fit_offsets(logits, gold)[0]) == [0.0, 0.0]


def test_a_balanced_student_keeps_zero_offsets_and_the_halves_split_dev():
    gold = np.repeat([0, 1, 2], 10)
    logits = np.eye(3)[gold] * 3.0
    offsets, best = fit_offsets(logits, gold)
    assert best == 1.0 and not np.any(offsets)
    fit, report = halves(31, seed=3)
    assert len(fit) == 16 and len(report) == 15 and sorted(np.concatenate([fit, report]).tolist()) == list(range(31))
    assert halves(31, seed=3)[0].tolist() == fit.tolist()


class _Head(torch.nn.Module):
    def __init__(self, twice: bool = False, two_heads: bool = False):
        super().__init__()
        self.body = torch.nn.Embedding(50, 8)
        self.out = torch.nn.Linear(8, 3)
        self.other = torch.nn.Linear(8, 3) if two_heads else None
        self.twice = twice

    def forward_view(self, input_ids, attention_mask, token_type_ids=None):
        cls = self.body(input_ids)[:, 0]
        logits = self.out(cls)
        return (logits * 2 if self.twice else logits), cls


def test_the_offsets_go_into_the_final_bias_and_move_the_logits_by_exactly_them():
    net = _Head()
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "attention_mask": torch.ones(2, 2, dtype=torch.long)}
    before = net.forward_view(**batch)[0].detach()
    add_to_bias(net, np.array([0.0, 0.5, -1.0]), 3, "my-student", batch)
    assert torch.allclose(net.forward_view(**batch)[0] - before, torch.tensor([[0.0, 0.5, -1.0]] * 2), atol=1e-6)


def test_a_head_that_changes_the_logits_after_the_bias_is_refused_and_left_as_it_was():
    net = _Head(twice=True)
    batch = {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    bias = net.out.bias.detach().clone()
    with pytest.raises(PluginError, match="my-student.*did not move by the offsets"):
        add_to_bias(net, np.array([0.0, 0.5, -1.0]), 3, "my-student", batch)
    assert torch.equal(net.out.bias, bias)
    with pytest.raises(PluginError, match=r"my-student.*2 linear layers with 3 outputs and a bias \(out, other\)"):
        final_linear(_Head(two_heads=True), 3, "my-student")


def test_calibrated_student_ships_the_calibrated_labels_through_every_path(rd_engine, tmp_path):
    from reasondistill import Recipe, step
    from reasondistill.plugins.student.calibration import halves as split
    from reasondistill.plugins.domains.local_services import LocalServices, generate_pairs
    from reasondistill.predictor import Predictor, render_items
    from reasondistill.student_package import lineage, model_card

    rows = generate_pairs(n=240, seed=4)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = Recipe(name="calibrated", models={"student": "tiny-encoder"}, seed=0, stages=[
        step("pairs", source=str(path), dev_fraction=0.3),
        step("distill", loss="ce", max_steps=200, batch_size=16, learning_rate=0.001, train_input="pairs",
             calibrate="macro_f1", student_options={"max_length": 48}),
        step("export", agreement_rows=40)])
    res = rd_engine.run(recipe)
    m = res["distill"].metrics
    offsets = np.array(list(m["calibration_offsets"].values()))
    assert np.any(offsets), m  # this student leans away from a class: the offsets move it
    assert m["calibration_heldout_macro_f1_after"] != m["calibration_heldout_macro_f1_before"]
    assert {f"calibration_heldout_f1_{n.replace(' ', '_')}_{w}" for n in LocalServices.labels
            for w in ("before", "after")} <= set(m)
    scores = {k: v for k, v in m.items() if k.startswith("calibration_") and isinstance(v, float)}
    assert len(scores) == 9 and all(round(v, 5) == v for v in scores.values()), scores  # 5 decimals, as recorded
    # the saved folder predicts the calibrated labels: its held-out macro-F1 is the reported "after"
    run = rd_engine.runs_dir / "calibrated"
    from datasets import load_from_disk

    dev = [r for r in load_from_disk(str(run / "pairs" / "dev")).to_list() if r["label"] >= 0]
    _, report = split(len(dev), 0)
    held = [dev[i] for i in report]
    q, it = render_items(held, LocalServices())
    pred = Predictor(run / "distill" / "student").predict_proba(q, it).argmax(-1)
    gold = np.array([r["label"] for r in held])
    assert macro_f1(gold, pred, 3) == pytest.approx(m["calibration_heldout_macro_f1_after"], abs=1e-4)
    assert json.loads((run / "distill" / "student" / "reasondistill.json").read_text())["calibration_offsets"] == \
        m["calibration_offsets"]
    assert res["export"].metrics["agreement_fp32"] >= 0.99  # ONNX gives the calibrated labels too
    card = model_card(lineage(run, res["export"].metrics), list(LocalServices.labels))
    assert "| calibration | logit offsets irrelevant 0" in card and "held-out dev macro-F1" in card


def test_coordinate_ascent_goes_on_while_a_round_improves():
    """A second round can improve on the first (a class's best offset depends on the others'):
    the fit keeps going while a round changes something, and stops when none does."""
    from reasondistill.plugins.student.calibration import fit_offsets

    rng = np.random.default_rng(0)
    log_probs, gold = np.log(rng.dirichlet([1, 1, 1], size=30)), rng.integers(0, 3, 30)
    _, one_round = fit_offsets(log_probs, gold, rounds=1)
    offsets, best = fit_offsets(log_probs, gold)
    assert best > one_round + 1e-9 and best == pytest.approx(0.4722881, abs=1e-6)
    assert fit_offsets(log_probs, gold, rounds=10)[1] == best, "converged: more rounds change nothing"
