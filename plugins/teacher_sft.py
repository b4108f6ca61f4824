"""``sft``: reasoning SFT with trl's SFTTrainer on prompt-completion chats (completion-only loss)."""

from __future__ import annotations

from pydantic import Field

from reasondistill import Stage, StageResult, hookimpl

from .teacher_common import TeacherTrainOptions, common_args, load_causal_lm, sft_stage_result, teacher_source


class SFTOptions(TeacherTrainOptions):
    input: str = Field("sft_data", description="prompt-completion chats (the reasoning stage's output)")
    epochs: float = Field(2.0, gt=0)


class SFTStage(Stage):
    name = "sft"
    description = "Reasoning SFT (trl SFTTrainer, assistant completion only, LoRA merged into safetensors)."
    Options = SFTOptions

    def run(self, ctx, options: SFTOptions) -> StageResult:
        from trl import SFTConfig

        data = ctx.load_dataset(options.input).select_columns(["prompt", "completion"])
        model, tok = load_causal_lm(teacher_source(ctx), ctx.recipe.trust_remote_code)
        args = SFTConfig(**common_args(ctx, options), completion_only_loss=True)
        return sft_stage_result(ctx, options, data, args, tok, model, {"examples": len(data)})


@hookimpl
def register_teacher_stages(register):
    register(SFTStage())
