"""``reasoning``: SFT data with reasoning chains, from a column/file or bootstrapped (STaR).

STaR-style rationalization: the base teacher is told the gold label and asked to explain it;
a chain is kept only when its own conclusion (the label it writes) agrees with the gold label.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from reasondistill import BackendSpec, Options, Stage, StageResult, hookimpl
from reasondistill.domain import require_ability
from reasondistill.errors import DataError
from reasondistill.generators import load_generator, teacher_roles
from reasondistill.recipe import OUTPUT_REF


class ReasoningDataOptions(Options):
    source: Literal["column", "domain", "rationalize", "column_then_rationalize"] = Field("column_then_rationalize",
        description="where chains come from: the input's column, the domain's rationale, rationalized by the teacher (STaR) from the gold label, or the column where present and rationalized elsewhere")
    input: str = Field("pairs", description="the earlier output with gold labels", json_schema_extra=OUTPUT_REF)
    reasoning_column: str = Field("rationale", description="where given chains live (source 'column')")
    limit: int | None = Field(None, ge=1, description="use at most this many input pairs")
    samples: int = Field(2, ge=1, description="rationalization attempts a pair (sampled after the first)")
    batch_size: int = Field(16, ge=1, description="pairs the teacher rationalizes together")
    max_new_tokens: int = Field(96, ge=8, description="token budget of one rationalized chain")
    temperature: float = Field(0.8, gt=0, le=5, description="sampling temperature")
    backend: BackendSpec | None = Field(None, description="how the teacher runs (default: the recipe's "
                                                          "backends.teacher, else transformers)")

    @field_validator("source")
    @classmethod
    def _domain_writes(cls, value: str, info: ValidationInfo) -> str:
        if value == "domain":
            require_ability(info.context, "writes_rationale", "use column or rationalize")
        return value


def sft_example(domain, row: dict[str, Any], reasoning: str) -> dict[str, Any]:
    """One conversational prompt-completion example (trl's format) ending in the gold label; the
    chain also on its own (``reasoning``), so a student can take it as its reasoning view
    (``sources: [{input: gold.pairs, reasoning_from: star.sft_data}]``)."""
    return {"prompt": domain.messages(row),
            "completion": [{"role": "assistant", "content": domain.format_completion(reasoning, int(row["label"]))}],
            "pair_id": row["pair_id"], "label": int(row["label"]), "reasoning": reasoning}


class ReasoningDataStage(Stage):
    name = "reasoning"
    description = "Build reasoning SFT data from given chains, or bootstrap them STaR-style from gold labels."
    Options = ReasoningDataOptions
    generates = True

    def model_roles(self, recipe, options: ReasoningDataOptions, catalogue) -> tuple[str, ...]:
        """``rationalize`` makes the teacher write every chain; ``column_then_rationalize`` only the
        chains the data lacks, which validate cannot know, so the stage itself asks then."""
        return teacher_roles(recipe, options.backend, catalogue) if options.source == "rationalize" else ()

    def run(self, ctx, options: ReasoningDataOptions) -> StageResult:
        from datasets import Dataset

        ds = ctx.load_dataset(options.input)
        if "label" not in ds.column_names:
            raise DataError(f"{options.input}: reasoning data needs gold labels (no 'label' column)")
        rows = [r for r in ds if r["label"] is not None and r["label"] >= 0]
        if options.limit:
            rows = rows[: options.limit]
        dom, examples, missing = ctx.domain, [], []
        has_col = options.reasoning_column in ds.column_names
        if options.source == "domain" and not dom.writes_rationale:
            raise DataError(f"reasoning: domain {dom.name!r} writes no rule-based rationale; use column or rationalize")
        for r in rows:
            given = r.get(options.reasoning_column) if has_col else None
            if options.source == "domain":
                given = dom.rationale(r, int(r["label"]))
            if options.source != "rationalize" and given:
                examples.append(sft_example(dom, r, given))
            else:
                missing.append(r)
        if options.source == "column" and missing:
            raise DataError(f"{options.input}: {len(missing)} rows have no {options.reasoning_column!r}; "
                            "use source: rationalize to bootstrap them")
        kept = 0
        if missing:
            gen = load_generator(ctx, options.backend, batch_size=options.batch_size,
                                 max_new_tokens=options.max_new_tokens)
            for attempt in range(options.samples):
                if not missing:
                    break
                with ctx.progress(total=len(missing), desc=f"rationalize, attempt {attempt + 1}", unit="pair") as bar:
                    outs = gen.generate([dom.rationalize_prompt(r, int(r["label"])) for r in missing],
                                        do_sample=attempt > 0, temperature=options.temperature, seed=ctx.seed + attempt,
                                        progress=bar)
                still = []
                for r, o in zip(missing, outs):
                    parsed = dom.parse_completion(o[0].text)
                    if parsed.ok and parsed.label == r["label"] and parsed.reasoning:
                        examples.append(sft_example(dom, r, parsed.reasoning))
                        kept += 1
                    else:
                        still.append(r)
                missing = still
        if not examples:
            raise DataError("reasoning: no example has a reasoning chain that agrees with its gold label")
        Dataset.from_list(examples).save_to_disk(str(ctx.dir / "sft_data"))
        return StageResult(outputs={"sft_data": "sft_data"},
                           metrics={"examples": len(examples), "rationalized": kept, "dropped": len(missing)})


@hookimpl
def register_teacher_stages(register):
    register(ReasoningDataStage())
