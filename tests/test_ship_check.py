"""The gate's second look: a gated student below its gold-only reference never ships under
``on_fail: gold_only``; under ``warn`` it ships with the reason on record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reasondistill import Recipe, step


def gated_recipe(path, on_fail: str) -> Recipe:
    good = {"loss": "ce", "max_steps": 200, "batch_size": 16, "learning_rate": 0.001, "student_options": {"max_length": 48}}
    return Recipe(name=f"ship-{on_fail}", models={"student": "tiny-encoder"}, seed=0, stages=[
        step("pairs", source=str(path), dev_fraction=0.3),
        # the gold labels answer the dev pairs, so the teacher passes the gate
        step("annotate", annotator="gold", dev_rows=60, limit=16),
        step("distill", name="reference", train_input="pairs", **good),
        step("gate", reference="reference.student", on_fail=on_fail),
        # two steps at a tiny learning rate: a student clearly below the reference
        step("distill", name="gated", gate="gate.verdict", sources=[{"input": "pairs"}],
             **{**good, "max_steps": 2, "learning_rate": 1e-6}),
        step("export", inputs={"student": "gated"}, agreement_rows=20)])


def test_the_check_says_why_it_was_skipped(tmp_path):
    from types import SimpleNamespace

    from reasondistill.plugins.student.ship_check import ship_check

    with_dev, without_dev = SimpleNamespace(has_input=lambda name: True), SimpleNamespace(has_input=lambda name: False)
    assert ship_check(with_dev, {"on_fail": "warn"}, tmp_path, "gated", False) == {
        "ship_check": "skipped: the gate has no reference student"}
    assert ship_check(without_dev, {"reference": "reference.student"}, tmp_path, "gated", False) == {
        "ship_check": "skipped: no dev split"}


def test_both_students_are_scored_on_the_labelled_rows_and_only_the_held_out_half_after_calibration():
    from reasondistill.plugins.student.calibration import halves
    from reasondistill.plugins.student.ship_check import check_rows

    dev = [{"label": g, "i": i} for i, g in enumerate([0, -1, 2, 1, -1, 2, 0, 1, 1, 2])]
    labelled = [r for r in dev if r["label"] >= 0]
    assert check_rows(dev, calibrated=False, seed=3) == labelled
    assert check_rows(dev, calibrated=True, seed=3) == [labelled[i] for i in halves(len(labelled), 3)[1]]


@pytest.fixture
def pairs_file(tmp_path):
    from reasondistill.plugins.domains.local_services import generate_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate_pairs(n=240, seed=4)))
    return path


def test_gold_only_ships_the_reference_when_the_gated_student_is_below_it(rd_engine, pairs_file):
    from reasondistill.plugins.domains.local_services import LocalServices
    from reasondistill.predictor import Predictor, render_items
    from reasondistill.student_package import lineage, read_lineage

    res = rd_engine.run(gated_recipe(pairs_file, "gold_only"))
    m = res["gated"].metrics
    assert res["gate"].metrics["verdict"] == "pass"
    assert m["ship_check"] == "reference" and m["ship_check_macro_f1"] < m["ship_check_reference_macro_f1"]
    assert "BELOW the reference, shipping the gold-only reference reference.student instead" in m["ship_check_line"]
    # what ships predicts exactly as the reference, and the manifest's dev figures are the reference's
    run = rd_engine.runs_dir / "ship-gold_only"
    from datasets import load_from_disk

    dev = [r for r in load_from_disk(str(run / "pairs" / "dev")).to_list() if r["label"] >= 0]
    q, it = render_items(dev, LocalServices())
    shipped = Predictor(run / "gated" / "student").predict_proba(q, it)
    reference = Predictor(run / "reference" / "student").predict_proba(q, it)
    assert np.allclose(shipped, reference, atol=1e-6)
    assert m["dev_macro_f1"] == res["reference"].metrics["dev_macro_f1"]
    assert m["trained_dev_macro_f1"] < m["dev_macro_f1"]
    info = read_lineage(run / "export" / "model")
    assert info["ship_check"] == m["ship_check_line"] and info["student"]["train_rows"] == m["train_rows"]
    card = (run / "export" / "model" / "README.md").read_text()
    assert "| ship check | ship check: gated macro-F1" in card
    from reasondistill.run_summary import verdict_lines

    assert m["ship_check_line"] in verdict_lines(run)  # printed by run and show, at the top of report.md
    # the lineage is the exported student's stage, not the run's last distill stage
    other = lineage(run, {}, run / "reference" / "student")
    assert "ship_check" not in other and other["dev_metrics"]["macro_f1"] == res["reference"].metrics["dev_macro_f1"]
    assert other["student"]["steps"] == 200 and info["student"]["steps"] == 2


def test_warn_ships_the_trained_student_and_says_it_is_below(rd_engine, pairs_file, caplog):
    res = rd_engine.run(gated_recipe(pairs_file, "warn"))
    m = res["gated"].metrics
    assert m["ship_check"] == "trained" and "BELOW the reference, shipping it anyway (on_fail warn)" in m["ship_check_line"]
    assert "trained_dev_macro_f1" not in m and m["dev_macro_f1"] < res["reference"].metrics["dev_macro_f1"]
    assert any("ship check" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
