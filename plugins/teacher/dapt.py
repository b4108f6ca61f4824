"""``dapt``: domain-adaptive pre-training, continued causal-LM training on platform text."""

from __future__ import annotations

from pydantic import Field

from reasondistill import Stage, StageResult, hookimpl
from reasondistill.errors import DataError
from reasondistill.fingerprint import fingerprint
from reasondistill.plugins.teacher.evaluation import preflight_rewards
from reasondistill.plugins.teacher.loading import load_causal_lm, teacher_source
from reasondistill.plugins.teacher.train_options import TeacherTrainOptions, common_args
from reasondistill.plugins.teacher.training import sft_stage_result
from reasondistill.recipe import OUTPUT_REF


class DaptOptions(TeacherTrainOptions):
    inputs: list[str] = Field(default_factory=lambda: ["pairs"], description="earlier outputs whose texts to use", json_schema_extra=OUTPUT_REF)
    text_columns: list[str] = Field(default_factory=lambda: ["query", "item"],
                                    description="'item' is rendered by the domain with its extra fields")
    text_files: list[str] = Field(default_factory=list, description="plain-text files, one document a line")
    packing: bool = Field(True,
        description="pack several texts into each training sequence (trl SFTTrainer packing), no padding")
    max_length: int = Field(256, ge=16, description="tokens a packed training sequence holds")


def domain_texts(ctx, options: DaptOptions) -> list[str]:
    """Unique texts from the chosen outputs' columns and files (order kept, so runs are reproducible)."""
    texts: list[str] = []
    for name in options.inputs:
        ds = ctx.load_dataset(name)
        for row in ds:
            for col in options.text_columns:
                if col == "item":
                    texts.append(ctx.domain.item_text(row))
                elif row.get(col):
                    texts.append(str(row[col]))
    for path in options.text_files:
        try:
            texts += [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"text_files: {path}: {exc}") from None
    return list(dict.fromkeys(t for t in texts if t.strip()))


class DaptStage(Stage):
    name = "dapt"
    description = "Domain-adaptive pre-training (trl SFTTrainer, language modelling, packing, LoRA)."
    Options = DaptOptions
    distributed = True

    def model_roles(self, recipe, options, catalogue) -> tuple[str, ...]:
        """It trains from ``models.teacher`` (or an earlier stage's teacher, which started from it)."""
        return ("teacher",)

    def input_fingerprints(self, options: DaptOptions) -> dict[str, str]:
        try:
            return {f"text_files[{i}]": fingerprint(p) for i, p in enumerate(options.text_files)}
        except FileNotFoundError as exc:
            raise DataError(f"text_files: {exc.args[0]}: no such file") from None

    def preflight(self, check, options: DaptOptions) -> None:
        """The reward scorers its dev evaluation will call, dry-called on the run's rows."""
        if options.eval_rows:
            preflight_rewards(check)

    def run(self, ctx, options: DaptOptions) -> StageResult:
        from datasets import Dataset
        from trl import SFTConfig

        texts = domain_texts(ctx, options)
        if not texts:
            raise DataError("dapt: no text found in inputs / text_files")
        model, tok = load_causal_lm(teacher_source(ctx), ctx.recipe.trust_remote_code)
        eos = tok.eos_token or ""
        data = Dataset.from_dict({"text": [t + eos for t in texts]})
        args = SFTConfig(**common_args(ctx, options), packing=options.packing, dataset_text_field="text",
                         completion_only_loss=False)
        return sft_stage_result(ctx, options, data, args, tok, model, {"documents": len(texts)})


@hookimpl
def register_teacher_stages(register):
    register(DaptStage())
