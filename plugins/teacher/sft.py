"""``sft``: reasoning SFT with trl's SFTTrainer on prompt-completion chats (completion-only loss)."""

from __future__ import annotations

from pydantic import Field

from reasondistill import Stage, StageResult, hookimpl
from reasondistill.errors import DataError
from reasondistill.plugins.teacher.evaluation import preflight_rewards
from reasondistill.plugins.teacher.loading import load_causal_lm, teacher_source
from reasondistill.plugins.teacher.train_options import TeacherTrainOptions, common_args
from reasondistill.plugins.teacher.training import sft_stage_result
from reasondistill.recipe import OUTPUT_REF


class SFTOptions(TeacherTrainOptions):
    input: str = Field("sft_data", description="prompt-completion chats (the reasoning stage's output)", json_schema_extra=OUTPUT_REF)
    epochs: float = Field(2.0, gt=0, le=10000, description="passes over the training rows")


class SFTStage(Stage):
    name = "sft"
    description = "Reasoning SFT (trl SFTTrainer, assistant completion only, LoRA merged into safetensors)."
    Options = SFTOptions
    distributed = True

    def model_roles(self, recipe, options, catalogue) -> tuple[str, ...]:
        """It trains from ``models.teacher`` (or an earlier stage's teacher, which started from it)."""
        return ("teacher",)

    def preflight(self, check, options: SFTOptions) -> None:
        """The reward scorers its dev evaluation will call, dry-called on the run's rows."""
        if options.eval_rows:
            preflight_rewards(check)

    def run(self, ctx, options: SFTOptions) -> StageResult:
        from trl import SFTConfig

        data = ctx.load_dataset(options.input).select_columns(["prompt", "completion"])
        model, tok = load_causal_lm(teacher_source(ctx), ctx.recipe.trust_remote_code)
        check_prompt_room(tok, data["prompt"], options.max_length, options.input)
        args = SFTConfig(**common_args(ctx, options), completion_only_loss=True)
        return sft_stage_result(ctx, options, data, args, tok, model, {"examples": len(data)})


def check_prompt_room(tok, prompts, max_length: int, source: str) -> None:
    """Fail before training when a prompt fills ``max_length``: its answer would be cut away and
    the example would train nothing (trl fails deep inside, or the loss is NaN)."""
    lengths = [len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)) for p in prompts]
    full = [n for n in lengths if n >= max_length]
    if full:
        raise DataError(f"{source}: {len(full)} of {len(lengths)} prompts are {min(full)}-{max(full)} tokens, which leaves "
                        f"their answers no room in max_length {max_length}; raise max_length above {max(lengths) + 64}")


@hookimpl
def register_teacher_stages(register):
    register(SFTStage())
