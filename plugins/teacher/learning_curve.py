"""The teacher's learning curve: dev metrics every ``eval_every`` steps of a teacher stage.

Why it exists: a teacher's budget on a small machine is a number of examples, and what a user needs
to choose it is dev macro-F1 against examples seen, from one training run (several runs of
different lengths cost their sum and each has its own learning-rate schedule). transformers'
own evaluation loop computes a loss on an eval set; the teacher's quality is what it *writes*
(parse rate, label macro-F1), so the callback generates answers with the in-training weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from reasondistill import distributed as dist
from reasondistill.fingerprint import write_atomic
from reasondistill.plugins.teacher.evaluation import dev_rows, evaluate_teacher

CURVE_FILE = "curve.json"


class LearningCurve(TrainerCallback):
    """Every ``every`` optimizer steps: merge a copy of the adapters, save it to a scratch folder,
    answer ``rows`` greedily with it and append one point to ``curve.json``: step, examples seen,
    training seconds so far (evaluation time left out) and the teacher's dev metrics."""

    def __init__(self, ctx: Any, rows: list[dict[str, Any]], every: int, max_new_tokens: int, tokenizer: Any):
        self.ctx, self.rows, self.every, self.max_new_tokens, self.tokenizer = ctx, rows, every, max_new_tokens, tokenizer
        self.path = ctx.dir / CURVE_FILE
        self.points: list[dict[str, Any]] = []
        self.trained_seconds = 0.0
        self._since = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed run keeps the points it had computed up to its checkpoint
        if self.path.exists():
            self.points = [p for p in json.loads(self.path.read_text()) if p["step"] <= state.global_step]
            self.trained_seconds = self.points[-1]["train_seconds"] if self.points else 0.0
        self._since = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every or not dist.is_main():
            return
        self.trained_seconds += time.perf_counter() - self._since
        examples = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        point = {"step": state.global_step, "examples": examples, "train_seconds": round(self.trained_seconds, 3),
                 **self.evaluate(model)}
        self.points.append(point)

        write_atomic(self.path, json.dumps(self.points, indent=1))
        self._since = time.perf_counter()

    def evaluate(self, model: Any) -> dict[str, float]:
        import copy
        import shutil

        scratch = Path(self.ctx.dir) / "curve-teacher"
        merged = copy.deepcopy(model)
        if hasattr(merged, "merge_and_unload"):
            merged = merged.merge_and_unload()
        was_training = model.training
        try:
            merged.save_pretrained(scratch, safe_serialization=True)
            self.tokenizer.save_pretrained(scratch)
            metrics = evaluate_teacher(self.ctx, self.rows, self.max_new_tokens, trained=str(scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            model.train(was_training)
        keep = ("teacher_parse_rate", "teacher_accuracy", "teacher_macro_f1", "teacher_reward_aggregate")
        return {k.removeprefix("teacher_"): metrics[k] for k in keep if k in metrics}


def attach_learning_curve(ctx: Any, trainer: Any, tokenizer: Any, options: Any) -> bool:
    """Add :class:`LearningCurve` to ``trainer`` when the stage asks for one (``eval_every`` and
    ``eval_rows``, with a dev split); True when it did."""
    if not options.eval_every:
        return False
    rows = dev_rows(ctx, options.eval_rows)
    if not rows:
        return False
    trainer.add_callback(LearningCurve(ctx, rows, options.eval_every, options.eval_max_new_tokens, tokenizer))
    return True
