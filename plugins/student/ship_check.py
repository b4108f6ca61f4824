"""The gate's second look: after training, is the gated student at least its gold-only reference?

The gate (``quality_gate``) judges the teacher before any student learns from it. A teacher that
passes can still yield a student below the student trained on gold alone (teacher labels mixed
in, a different weighting), so a ``distill`` stage that reads a verdict (``gate:``) scores its
trained student and the gate's reference student on the same dev rows: the held-out half when the
stage calibrates (the other half fitted the offsets), else every labelled dev row. Below the
reference, the gate's ``on_fail`` decides: ``gold_only`` ships the reference student in the
stage's place (a student trained on gold alone, as the gate promises), ``warn`` and ``stop`` say
so with both numbers and ship the trained one (a ``stop`` gate stops before training; a trained
student is not thrown away). The line goes into the manifest, the report and the model card.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from reasondistill.plugins.student.calibration import halves, macro_f1
from reasondistill.predictor import render_items
from reasondistill.student_package import student_component

log = logging.getLogger("reasondistill")


def check_rows(dev: list[dict[str, Any]], calibrated: bool, seed: int) -> list[dict[str, Any]]:
    """The labelled dev rows both students are scored on (the calibration's held-out half, if any)."""
    rows = [r for r in dev if r.get("label") is not None and r["label"] >= 0]
    return [rows[i] for i in halves(len(rows), seed)[1]] if calibrated else rows


def ship_check(ctx, verdict: dict[str, Any], out_dir: Path, stage: str, calibrated: bool) -> dict[str, Any]:
    """Compare the trained student in ``out_dir`` with the verdict's reference; under ``gold_only``
    replace it by the reference when below. Returns the metrics to record."""
    reference = verdict.get("reference")
    if not reference or not ctx.has_input("dev"):
        return {"ship_check": "skipped: the gate has no reference student" if not reference
                else "skipped: no dev split"}
    rows = check_rows(ctx.load_dataset("dev").to_list(), calibrated, ctx.seed)
    gold = np.array([int(r["label"]) for r in rows])
    queries, items = render_items(rows, ctx.domain)
    k = len(ctx.domain.labels)

    def score(folder: Path) -> float:
        probs = student_component(folder, ctx.hooks).predictor(folder).predict_proba(queries, items)
        return macro_f1(gold, np.asarray(probs).argmax(-1), k)

    ref_folder = ctx.input(reference)
    mine, bar = score(out_dir), score(ref_folder)
    where = f"{len(rows)} dev rows" + (" (the calibration's held-out half)" if calibrated else "")
    below = mine < bar
    shipped = "reference" if below and verdict.get("on_fail") == "gold_only" else "trained"
    consequence = {"trained": "shipping it" if not below else f"shipping it anyway (on_fail {verdict.get('on_fail')})",
                   "reference": f"shipping the gold-only reference {reference} instead (on_fail gold_only)"}[shipped]
    line = (f"ship check: {stage} macro-F1 {mine:.3f} vs gold-only reference {reference} {bar:.3f} on {where}: "
            f"{'BELOW' if below else 'at or above'} the reference, {consequence}")
    if shipped == "reference":
        shutil.rmtree(out_dir)
        shutil.copytree(ref_folder, out_dir)
    (log.warning if below else log.info)(line)
    return {"ship_check": shipped, "ship_check_macro_f1": round(mine, 5), "ship_check_reference_macro_f1": round(bar, 5),
            "ship_check_rows": len(rows), "ship_check_line": line}
