"""The ``gate`` stage: is the teacher worth distilling? Its macro-F1 on gold dev pairs against a
gold-only bar, before any student learns from its labels.

The bar is a student trained on the gold pairs the teacher learned from (any earlier ``distill``
stage with ``train_input: pairs``, so it is cached and resumed like every stage) scored on the
same dev pairs the teacher answered, or a number given in the recipe. A teacher below the bar
would hand the student labels worse than the gold it already has (docs/benchmarks.md, Home Depot
study). ``on_fail``: ``stop`` stops the run, ``warn`` says so and goes on, ``gold_only`` makes the
``distill`` stages that read the verdict (option ``gate``) drop their teacher-labelled sources and
train on their gold sources only, recording why (verdict ``fallback``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from reasondistill import Options, Stage, StageResult, hookimpl
from reasondistill.errors import DataError
from reasondistill.evaluation import retention, teacher_labels
from reasondistill.metrics import classification_metrics
from reasondistill.recipe import OUTPUT_REF
from reasondistill.student_package import student_component

log = logging.getLogger("reasondistill")


class GateOptions(Options):
    teacher_input: str = Field("dev_annotations", description="the teacher's answers on gold dev pairs "
                               "(annotate's dev_annotations: label, gold_label)", json_schema_extra=OUTPUT_REF)
    reference: str | None = Field(None, description="an earlier student trained on gold pairs only (e.g. "
                                  "`student_gold_ce.student`): its macro-F1 on the same dev pairs is the bar",
                                  json_schema_extra=OUTPUT_REF)
    reference_macro_f1: float | None = Field(None, ge=0, le=1, description="the bar as a number, instead of a reference student")
    margin: float = Field(0.0, ge=-1, le=1, description="the teacher passes when its macro-F1 >= bar + margin")
    on_fail: Literal["warn", "stop", "gold_only"] = Field(
        "warn", description="what a teacher below the bar does: warn and distil it anyway, stop the run, or make the "
        "gated distill stages train on their gold sources only (the reason, with both numbers, goes into their "
        "manifest, the report and the model card)")
    policy: Literal["fail", "warn", "fallback"] | None = Field(
        None, description="the earlier name of on_fail: fail is stop, fallback is gold_only")

    @model_validator(mode="before")
    @classmethod
    def _policy_is_on_fail(cls, data: Any) -> Any:
        """``policy`` (the earlier name) becomes ``on_fail`` before validation."""
        if isinstance(data, dict) and data.get("policy") in ("fail", "warn", "fallback"):
            named = {"fail": "stop", "warn": "warn", "fallback": "gold_only"}[data["policy"]]
            if data.get("on_fail", named) != named:
                raise ValueError(f"policy {data['policy']!r} and on_fail {data['on_fail']!r} disagree; give on_fail only")
            data = {**data, "on_fail": named}
        return data

    @model_validator(mode="after")
    def _one_bar(self) -> "GateOptions":
        if (self.reference is None) == (self.reference_macro_f1 is None):
            raise ValueError("give exactly one of reference (a gold-only student) or reference_macro_f1 (a number)")
        return self


class QualityGate(Stage):
    name = "gate"
    description = "Compare the teacher's dev macro-F1 with a gold-only bar; fail, warn or fall back to gold."
    Options = GateOptions

    def run(self, ctx, options: GateOptions) -> StageResult:
        labels = ctx.domain.labels
        ds = ctx.load_dataset(options.teacher_input)
        if "gold_label" not in ds.column_names:
            raise DataError(f"{options.teacher_input}: no gold_label column; the gate needs the teacher's answers on "
                            "gold dev pairs (annotate's dev_annotations)")
        rows = [r for r in ds if r["gold_label"] is not None and r["gold_label"] >= 0]
        if not rows:
            raise DataError(f"{options.teacher_input}: no row with a gold label")
        gold, teacher = teacher_labels(rows, len(labels))
        teacher_f1 = classification_metrics(gold, teacher, labels)["macro_f1"]
        if options.reference is not None:
            bar, bar_name = self._reference_f1(ctx, options.reference, ds), f"gold-only student {options.reference}"
        else:
            bar, bar_name = options.reference_macro_f1, "the recipe's reference"
        passed = teacher_f1 >= bar + options.margin
        verdict = "pass" if passed else {"warn": "warn", "stop": "fail", "gold_only": "fallback"}[options.on_fail]
        consequence = {"pass": "distilling the teacher", "warn": "distilling it anyway (on_fail warn)",
                       "fallback": "gated distill stages train on their gold sources only (on_fail gold_only)",
                       "fail": "stopping before distillation (on_fail stop)"}[verdict]
        line = (f"gate: teacher macro-F1 {teacher_f1:.3f} vs {bar_name} {bar:.3f} on {len(rows)} gold dev pairs "
                f"(margin {options.margin:+.3f}): {verdict.upper()}, {consequence}")
        record = {"verdict": verdict, "passed": passed, "teacher_macro_f1": round(teacher_f1, 5),
                  "reference_macro_f1": round(bar, 5), "reference": options.reference, "margin": options.margin,
                  "pairs": len(rows), "on_fail": options.on_fail, "line": line}
        (ctx.dir / "verdict.json").write_text(json.dumps(record, indent=2))
        if verdict == "fail":
            raise DataError(line)
        if not passed:
            log.warning(line)
        else:
            log.info(line)
        metrics = {k: v for k, v in record.items() if k != "line"}
        return StageResult(outputs={"verdict": "verdict.json"}, metrics={**metrics, "verdict_line": line})

    @staticmethod
    def _reference_f1(ctx, reference: str, dev_annotations) -> float:
        """The reference student's macro-F1 on the pairs the teacher answered (``retention``'s figure)."""
        folder = ctx.input(reference)
        predictor = student_component(folder, ctx.hooks).predictor(folder)
        return retention(predictor, dev_annotations, ctx.domain)["student_macro_f1"]


@hookimpl
def register_stages(register):
    register(QualityGate())
