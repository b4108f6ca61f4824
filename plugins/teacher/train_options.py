"""The options every teacher training stage shares, and the trainer arguments they become."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from reasondistill import Options
from reasondistill.hf_compat import checkpointing_arg, length_grouping_arg
from reasondistill.runtime import current


class TeacherTrainOptions(Options):
    """Options of every teacher training stage (trl config fields, CPU-safe defaults)."""

    lora: bool = Field(True, description="train LoRA adapters (merged afterwards); false = full fine-tuning")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r multiplies the adapters' update)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA adapters' input")
    target_modules: list[str] | str = Field("all-linear",
        description="modules that get adapters: `all-linear` (every linear layer but the head) or a list of names")
    lora_layers: int | None = Field(None, ge=1, description=(
        "LoRA on the last N decoder layers only, so the backward pass stops at the lowest trained layer "
        "(faster steps, docs/benchmarks.md); default: every layer"))
    gradient_checkpointing: bool | None = Field(None, description=(
        "recompute activations in the backward pass: less memory, slower steps (docs/benchmarks.md); default: "
        "on for a GPU (trl's default), off on a CPU, where memory is not what limits a teacher step"))
    group_by_length: bool = Field(False, description=(
        "batches of rows of similar length (transformers' LengthGroupedSampler) instead of random ones: less "
        "padding and faster epochs, at a measured cost in teacher macro-F1 (docs/benchmarks.md)"),
        json_schema_extra={"hash": "unless_default"})
    answer_head_only: bool = Field(True, description=(
        "off CUDA, run the output head only where the loss reads it (the answer's tokens, not the prompt's): "
        "the same loss; trl scores every position there (on CUDA it already scores answers only); "
        "false = trl's own loss"), json_schema_extra={"hash": "unless_default"})
    epochs: float = Field(1.0, gt=0, le=10000, description="passes over the training rows")
    max_steps: int = Field(-1, ge=-1, description="overrides epochs when > 0")
    batch_size: int = Field(4, ge=1, description="rows a device processes per step")
    grad_accum: int = Field(1, ge=1, description="steps whose gradients add up before one optimizer step")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="peak learning rate (AdamW); above 1 diverges")
    max_length: int = Field(512, ge=16, description="tokens a training row is cut to")
    logging_steps: int = Field(5, ge=1, description="log the loss every N steps")
    save_steps: int = Field(50, ge=1, description="write a checkpoint every N steps (resume after an interruption)")
    report_to: list[str] = Field(default_factory=list, description="trackers, as in TrainingArguments (default none)")
    eval_rows: int = Field(0, ge=0, description="dev pairs to evaluate the teacher on after the stage")
    eval_max_new_tokens: int = Field(96, ge=4, description="token budget of one answer when evaluating on dev")
    eval_every: int = Field(0, ge=0, description=(
        "also evaluate the teacher on the eval_rows dev pairs every N steps, while it trains: its learning "
        "curve (examples seen, training seconds, parse rate, macro-F1) in curve.json; 0 = only at the end"))


def common_args(ctx, o: TeacherTrainOptions) -> dict[str, Any]:
    """TrainingArguments fields. Precision and device come from the run's runtime (bf16 on GPUs that
    have it, fp32 on CPUs unless ``runtime.dtype`` says otherwise). Activation checkpointing is set
    explicitly: trl's configs turn it on by default, which made each CPU step of the Home Depot SFT
    1.26x slower for memory a CPU box has (``gradient_checkpointing``)."""
    runtime = current()
    checkpointing = runtime.is_cuda if o.gradient_checkpointing is None else o.gradient_checkpointing
    return dict(output_dir=str(ctx.dir / "checkpoints"), num_train_epochs=o.epochs, max_steps=o.max_steps,
                per_device_train_batch_size=o.batch_size, gradient_accumulation_steps=o.grad_accum,
                learning_rate=o.learning_rate, logging_steps=o.logging_steps, save_steps=o.save_steps,
                save_total_limit=2, seed=ctx.seed, data_seed=ctx.seed, report_to=o.report_to or "none",
                max_length=o.max_length, **checkpointing_arg(checkpointing), **length_grouping_arg(o.group_by_length),
                **runtime.training_args())
