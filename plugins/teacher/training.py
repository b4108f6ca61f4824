"""Train a teacher stage's trainer, merge its LoRA, save it; the shared tail of ``dapt`` and ``sft``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from reasondistill import StageResult
from reasondistill import distributed as dist
from reasondistill.fingerprint import write_atomic
from reasondistill.plugins.teacher.evaluation import dev_rows, evaluate_teacher
from reasondistill.plugins.teacher.lora import peft_config
from reasondistill.plugins.teacher.train_options import TeacherTrainOptions


def train_and_save(ctx, trainer, tokenizer, out: Path) -> dict[str, Any]:
    """Train (resuming from the last checkpoint of an interrupted run), merge LoRA, save safetensors.

    The saved teacher is marked done (``trained.json``) before anything else runs: a stage that
    fails afterwards (its evaluation, a scorer plugin) keeps it, and the rerun reuses it instead
    of training again from step 0.
    """
    from transformers.trainer_utils import get_last_checkpoint

    done = ctx.dir / "trained.json"
    if ctx.resuming and done.exists() and (out / "config.json").exists():
        return {**json.loads(done.read_text()), "resumed_from": "trained"}
    ckpt = ctx.dir / "checkpoints"
    last = get_last_checkpoint(str(ckpt)) if ctx.resuming and ckpt.exists() else None
    result = trainer.train(resume_from_checkpoint=last)
    trained = {"steps": trainer.state.global_step, "train_loss": round(float(result.training_loss), 5),
               "step_seconds": round(result.metrics["train_runtime"] / max(1, trainer.state.global_step), 3)}
    dist.check_replicas(trainer.model, ctx.name)
    if not dist.is_main():  # every rank trained (DDP); the main process writes the teacher
        return trained
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    history = [h for h in trainer.state.log_history if "loss" in h]
    (ctx.dir / "loss_history.json").write_text(json.dumps(history, indent=1))
    shutil.rmtree(ckpt, ignore_errors=True)
    write_atomic(done, json.dumps(trained))
    return {**trained, "resumed_from": last.rsplit("-", 1)[-1] if last else None}


def sft_stage_result(ctx, options: TeacherTrainOptions, data, config, tokenizer, model, metrics: dict[str, Any]):
    """Train an SFTTrainer, save the merged teacher, evaluate it on dev; the shared tail of dapt and sft."""
    # heavy (torch, trl, transformers): imported when a teacher trains, not when the plugin registers
    from reasondistill.plugins.teacher.answer_head import AnswerHeadSFTTrainer
    from reasondistill.plugins.teacher.learning_curve import attach_learning_curve

    trainer = AnswerHeadSFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                   peft_config=peft_config(options, model), answer_head_only=options.answer_head_only)
    curve = attach_learning_curve(ctx, trainer, tokenizer, options)
    metrics = {**metrics, **train_and_save(ctx, trainer, tokenizer, ctx.dir / "teacher")}
    if not dist.is_main():
        return StageResult()
    rows = dev_rows(ctx, options.eval_rows)
    if rows:
        metrics.update(evaluate_teacher(ctx, rows, options.eval_max_new_tokens, trained=str(ctx.dir / "teacher")))
    outputs = {"teacher": "teacher", "loss_history": "loss_history.json", **({"curve": "curve.json"} if curve else {})}
    return StageResult(outputs=outputs, metrics=metrics)
