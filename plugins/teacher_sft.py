"""``sft``: reasoning SFT with trl's SFTTrainer on prompt-completion chats (completion-only loss)."""

from __future__ import annotations

from pydantic import Field

from reasondistill import Stage, StageResult, hookimpl

from .teacher_common import (TeacherTrainOptions, common_args, dev_rows, evaluate_teacher, load_causal_lm,
                             peft_config, teacher_source, train_and_save)


class SFTOptions(TeacherTrainOptions):
    input: str = Field("sft_data", description="prompt-completion chats (the reasoning stage's output)")
    epochs: float = Field(2.0, gt=0)


class SFTStage(Stage):
    name = "sft"
    family = "teacher"
    description = "Reasoning SFT (trl SFTTrainer, assistant completion only, LoRA merged into safetensors)."
    Options = SFTOptions

    def run(self, ctx, options: SFTOptions) -> StageResult:
        from trl import SFTConfig, SFTTrainer

        data = ctx.load_dataset(options.input).select_columns(["prompt", "completion"])
        model, tok = load_causal_lm(teacher_source(ctx), ctx.recipe.trust_remote_code)
        args = SFTConfig(**common_args(ctx, options), completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=peft_config(options))
        metrics = {"examples": len(data), **train_and_save(ctx, trainer, tok, ctx.dir / "teacher")}
        rows = dev_rows(ctx, options.eval_rows)
        if rows:
            metrics.update(evaluate_teacher(ctx, str(ctx.dir / "teacher"), rows, options.eval_max_new_tokens))
        return StageResult(outputs={"teacher": "teacher", "loss_history": "loss_history.json"}, metrics=metrics)


@hookimpl
def register_teacher_stages(register):
    register(SFTStage())
