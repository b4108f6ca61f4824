"""The ``annotate`` stage: the recipe's annotator labels the pairs, shard by shard
(:mod:`~reasondistill.plugins.annotation.sharded_run`); the built-in ``teacher`` annotator lives in
:mod:`~reasondistill.plugins.annotation.teacher_annotator`.

The input is cut into fixed shards (by position); each shard is annotated and written atomically
as JSONL. A rerun skips complete shards, so an interrupted run loses at most one shard of work
and every ``pair_id`` appears exactly once. Under several processes each rank takes every
``world``-th shard and the main process merges. Shards never depend on which rank ran them, so
1 and N processes give the same annotations.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from reasondistill import ComponentRef, NestedOptions, Stage, StageResult, hookimpl
from reasondistill import distributed as dist
from reasondistill.generators import (
    current_teacher,
)
from reasondistill.manager import validate_nested
from reasondistill.metrics import classification_metrics
from reasondistill.plugins.annotation.parse_health import ParseHealthOptions, ParseMonitor
from reasondistill.plugins.annotation.sharded_run import annotate_sharded
from reasondistill.plugins.annotation.shards import merge_shards, read_seconds
from reasondistill.plugins.annotation.teacher_annotator import TeacherAnnotator
from reasondistill.recipe import OUTPUT_REF

log = logging.getLogger("reasondistill")


class AnnotateOptions(ParseHealthOptions):
    annotator: ComponentRef("annotator") = Field("teacher",
        description="the annotator component that labels the pairs (`teacher`, `gold`, or a plugin's)")
    annotator_options: NestedOptions = Field(default_factory=dict,
        description="options of that annotator, validated with its own Options")
    input: str = Field("pairs", description="the earlier output to annotate", json_schema_extra=OUTPUT_REF)
    limit: int | None = Field(None, ge=1, description="annotate only the first N pairs")
    shard_size: int = Field(64, ge=1,
        description="pairs per shard: the unit written atomically and resumed; a killed run loses at most one")
    dev_rows: int = Field(0, ge=0, description="also annotate N dev pairs to measure the teacher")
    max_failed_share: float = Field(0.02, ge=0, le=1, description="fail the stage when more rows than this share "
                                                                 "end with a backend error (after its retries); "
                                                                 "finished shards are kept and a rerun redoes "
                                                                 "only the failed rows")


class AnnotateStage(Stage):
    name = "annotate"
    description = "The teacher labels pairs with reasoning; sharded, resumable, multi-process."
    Options = AnnotateOptions
    distributed = True
    generates = True

    def options(self, raw=None, context=None) -> AnnotateOptions:
        opts = AnnotateOptions.model_validate(raw or {}, context=context)
        sub = validate_nested(context, "annotator", opts.annotator, opts.annotator_options, "annotator_options")
        return opts.model_copy(update={"annotator_options": sub})  # typed from here on

    def model_roles(self, recipe, options: AnnotateOptions, catalogue) -> tuple[str, ...]:
        """Its annotator's (a local teacher's; none for a served one or the gold labels)."""
        return catalogue.get("annotator", options.annotator).model_roles(recipe, options.annotator_options, catalogue)

    def run(self, ctx, options: AnnotateOptions) -> StageResult:
        annotator = ctx.hooks.catalogue.get("annotator", options.annotator)
        a_opts = annotator.options(options.annotator_options)
        teacher = (current_teacher(ctx) or "") if annotator.needs_teacher else ""  # a served teacher needs no local one
        pairs = ctx.load_dataset(options.input)
        if options.limit:
            pairs = pairs.select(range(min(options.limit, len(pairs))))
        metrics: dict[str, Any] = {}
        metrics.update(annotator.check_precision(ctx, pairs, teacher, a_opts))
        outputs = {"annotations": "annotations"}
        jobs = [("annotations", pairs)]
        if options.dev_rows and ctx.has_input("dev"):
            dev = ctx.load_dataset("dev")
            jobs.append(("dev_annotations", dev.select(range(min(options.dev_rows, len(dev))))))
            outputs["dev_annotations"] = "dev_annotations"
        for name, data in jobs:
            folder = ctx.dir / f"{name}_shards"
            monitor = ParseMonitor("annotate", options, getattr(a_opts, "max_new_tokens", None),
                                  f"The shards written are kept in {folder}; a rerun resumes from them")
            stats = annotate_sharded(ctx, annotator, data, teacher, a_opts, options.shard_size, folder,
                                     options.max_failed_share, monitor)
            if dist.is_main():
                merged = merge_shards(ctx.dir / f"{name}_shards")
                merged.save_to_disk(str(ctx.dir / name))
                stats = {**stats, "seconds_all": read_seconds(ctx.dir / f"{name}_shards")}
                prefix = "" if name == "annotations" else "dev_"
                summary = summarize(merged, ctx.domain, stats)
                metrics.update({prefix + k: v for k, v in summary.items()})
                if name == "annotations" and summary["label_probs_share"] < 1 and summary["pairs"]:
                    log.warning("annotate: the teacher gave label probabilities for %.0f%% of the rows; the others "
                                "record none (label_probs null): kd and min_confidence need them. A server "
                                "without logprobs gives none; self_consistency > 1 gives vote shares instead",
                                100 * summary["label_probs_share"])
        dist.barrier()
        return StageResult(outputs=outputs, metrics=metrics)


def summarize(ds, domain, stats: dict[str, float]) -> dict[str, Any]:
    n = len(ds)
    labels = ds["label"]
    out: dict[str, Any] = {"pairs": n, "parse_rate": round(sum(ds["parse_ok"]) / max(1, n), 4),
                           # before the sampled retries: the figure teacher_eval's greedy answers give
                           **({"first_try_parse_rate": round(sum(ds["first_try_ok"]) / max(1, n), 4)}
                              if "first_try_ok" in ds.column_names else {}),
                           "tokens": int(sum(ds["new_tokens"])),
                           "label_probs_share": round(sum(1 for p in ds["label_probs"] if p) / max(1, n), 4)
                           if "label_probs" in ds.column_names else 0.0,
                           "failed": sum(1 for e in ds["error"] if e) if "error" in ds.column_names else 0}
    for i, name in enumerate(domain.labels):
        out[f"share_{name.replace(' ', '_')}"] = round(sum(1 for x in labels if x == i) / max(1, n), 4)
    spent = stats.get("seconds_all", 0)
    if spent > 0:  # every row, the ones a resumed run kept included (per process under several ranks)
        out["pairs_per_s"] = round(n / spent, 3)
        out["tokens_per_s"] = round(out["tokens"] / spent, 2)
    elif stats["seconds_now"] > 0 and stats["pairs_now"]:
        out["pairs_per_s"] = round(stats["pairs_now"] / stats["seconds_now"], 3)
        out["tokens_per_s"] = round(stats["tokens_now"] / stats["seconds_now"], 2)
    out.update(spend_metrics(stats.get("spent") or {}))
    gold = ds["gold_label"]
    scored = [(g, p if p >= 0 else (g + 1) % len(domain.labels)) for g, p in zip(gold, labels) if g is not None and g >= 0]
    if scored:  # an unparsable answer counts as wrong
        m = classification_metrics([g for g, _ in scored], [p for _, p in scored], domain.labels)
        out.update({"teacher_macro_f1": round(m["macro_f1"], 4), "teacher_accuracy": round(m["accuracy"], 4)})
    return out


def spend_metrics(spent: dict[str, Any]) -> dict[str, Any]:
    """The teacher's spend in the run record (``teacher_requests``, tokens, failed attempts, cost,
    and per endpoint); empty where the backend counts nothing (a local model)."""
    total = spent.get("total") or {}
    if not total:
        return {}
    out = {f"teacher_{k}": v for k, v in total.items() if not k.startswith("errors_")}
    out["teacher_failed_attempts"] = sum(v for k, v in total.items() if k.startswith("errors_"))
    if len(spent["endpoints"]) > 1 or out["teacher_failed_attempts"]:
        out["teacher_endpoints"] = spent["endpoints"]
    return out


@hookimpl
def register_annotators(register):
    register(TeacherAnnotator())


@hookimpl
def register_stages(register):
    register(AnnotateStage())
