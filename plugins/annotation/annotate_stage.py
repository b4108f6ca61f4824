"""Teacher annotation: the ``annotate`` stage and the built-in ``teacher`` annotator.

The input is cut into fixed shards (by position); each shard is annotated and written atomically
as JSONL. A rerun skips complete shards, so an interrupted run loses at most one shard of work
and every ``pair_id`` appears exactly once. Under several processes each rank takes every
``world``-th shard and the main process merges. Shards never depend on which rank ran them, so
1 and N processes give the same annotations.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from reasondistill import Annotator, BackendSpec, ComponentRef, Options, Stage, StageResult, hookimpl
from reasondistill import distributed as dist
from reasondistill.errors import DataError
from reasondistill.fingerprint import fingerprint, portable_ref
from reasondistill.generators import (
    accounting_delta,
    accounting_sum,
    current_teacher,
    effective_spec,
    generator_accounting,
    load_generator,
)
from reasondistill.manager import validate_nested
from reasondistill.metrics import classification_metrics
from reasondistill.plugins.annotation.parse_health import ParseHealthOptions, ParseMonitor
from reasondistill.plugins.annotation.shards import check_teacher, merge_shards, read_seconds, read_shard, write_shard
from reasondistill.recipe import OUTPUT_REF
from reasondistill.runtime import current

log = logging.getLogger("reasondistill")


class TeacherAnnotatorOptions(Options):
    backend: BackendSpec | None = Field(None, description="how the teacher runs (default: the recipe's "
                                                          "backends.teacher, else transformers)")
    batch_size: int = Field(64, ge=1, description="rows decoded together by a local backend (slots refilled as "
                                                  "rows finish)")
    max_new_tokens: int = Field(96, ge=4)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0, le=5, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1)
    self_consistency: int = Field(1, ge=1, le=64, description="N sampled chains; majority label, agreement as confidence")
    retries: int = Field(1, ge=0, le=20, description="re-generate unparseable outputs (sampled) this many times")
    bf16_check_rows: int = Field(32, ge=0, description=(
        "where a local teacher runs bf16 on a CPU (runtime.dtype: fastest): label the stage's first N pairs in "
        "bf16 and in fp32 before annotating, and fall back to fp32 below bf16_min_agreement; 0 = no check"))
    bf16_min_agreement: float = Field(0.9, ge=0, le=1, description="the share of equal labels bf16 must reach")


class TeacherAnnotator(Annotator):
    """The teacher writes a chain and a label through the generation seam; parsing, voting and
    retries of unparsable answers happen here, the same for every backend."""

    name = "teacher"
    description = "The teacher (any generation backend) writes reasoning and a label; votes, retries, label probs."
    Options = TeacherAnnotatorOptions

    def __init__(self) -> None:
        self._cache: tuple[Any, Any] | None = None

    def generator(self, ctx, teacher: str, options: TeacherAnnotatorOptions):
        """One generator per (teacher, backend, sizes), kept across the shards of a stage."""

        spec = effective_spec(ctx.recipe, options.backend)
        # the precision belongs to the key: a generator loaded in bf16 (or switched to fp32 by the
        # bf16 check under its own threshold) must not serve a run that asked for another
        key = (teacher, ctx.domain.name, spec.model_dump_json(), options.batch_size, options.max_new_tokens,
               current().inference_dtype, options.bf16_check_rows, options.bf16_min_agreement)
        if self._cache is None or self._cache[0] != key:
            self._cache = None  # free the old model before loading the next
            self._cache = (key, load_generator(ctx, spec, model=teacher or None, batch_size=options.batch_size,
                                               max_new_tokens=options.max_new_tokens))
        return self._cache[1]

    def check_precision(self, ctx, pairs, teacher: str, options: TeacherAnnotatorOptions) -> dict[str, Any]:
        """Before any shard: bf16 against fp32 labels on the first ``bf16_check_rows`` pairs (the
        same pairs on a resumed run, so every shard is written at one precision); metrics to record."""
        if not options.bf16_check_rows or not len(pairs):
            return {}
        gen = self.generator(ctx, teacher, options)
        if not hasattr(gen, "check_bf16_labels"):  # a served teacher: its precision is the server's
            return {}
        sample = pairs.select(range(min(options.bf16_check_rows, len(pairs))))
        found = gen.check_bf16_labels([ctx.domain.messages(r) for r in sample], options.bf16_min_agreement)
        if not found:
            return {}
        if found["dtype"] == "float32":
            import logging

            logging.getLogger("reasondistill").warning(
                "annotate: bf16 labels agree with fp32 on %.0f%% of %d pairs (< %.0f%%): annotating in fp32",
                100 * found["label_agreement"], found["rows"], 100 * options.bf16_min_agreement)
        return {f"bf16_check_{k}": v for k, v in found.items() if k != "min_agreement"}

    def usage(self) -> dict[str, Any]:
        return generator_accounting(self._cache[1]) if self._cache is not None else {}

    def annotate(self, ctx, pairs, teacher: str, options: TeacherAnnotatorOptions):
        from datasets import Dataset

        gen = self.generator(ctx, teacher, options)
        return Dataset.from_list(annotate_rows(gen, list(pairs), ctx.domain, options, ctx.seed, gen.identity))


def annotate_rows(gen, rows: list[dict], domain, options: TeacherAnnotatorOptions, seed: int, teacher: str,
                  progress: Any = None) -> list[dict]:
    """Generate, parse, retry the unparsable (sampled), vote; one annotation row per input row.

    A row whose every completion failed in the backend (``Generation.error``) is not retried here
    (the backend already did) and carries the error; the stage counts such rows.
    """
    messages = [domain.messages(r) for r in rows]
    n = options.self_consistency
    sample = options.do_sample or n > 1
    outs = gen.generate(messages, n=n, do_sample=sample, temperature=options.temperature, top_p=options.top_p,
                        seed=seed, progress=progress)
    results = []
    for row, cands in zip(rows, outs):
        parsed = [domain.parse_completion(c.text) for c in cands]
        results.append([row, cands, parsed, any(p.ok for p in parsed)])
    for attempt in range(options.retries):  # sampled retries of rows with no parsable label
        bad = [i for i, (_, cands, parsed, _) in enumerate(results)
               if not any(p.ok for p in parsed) and not all(c.error for c in cands)]
        if not bad:
            break
        again = gen.generate([messages[i] for i in bad], n=n, do_sample=True, temperature=options.temperature,
                             top_p=options.top_p, seed=seed + 1000 * (attempt + 1))
        for i, cands in zip(bad, again):
            results[i][1] = cands
            results[i][2] = [domain.parse_completion(c.text) for c in cands]
    out = []
    k = len(domain.labels)
    for row, cands, parsed, first_try_ok in results:
        votes = Counter(p.label for p in parsed if p.ok)
        if votes:
            label = max(sorted(votes), key=lambda lab: votes[lab])
            pick = next(i for i, p in enumerate(parsed) if p.label == label)
        else:
            label, pick = None, 0
        if n > 1:
            probs = [votes.get(i, 0) / max(1, sum(votes.values())) for i in range(k)] if votes else None
        else:  # None where the backend gives none (a server without logprobs): never made-up numbers
            probs = cands[pick].label_probs
        errors = [c.error for c in cands if c.error]
        if label is None:
            confidence = 0.0
        elif n > 1:
            confidence = float(votes[label] / n)
        else:
            confidence = float(probs[label]) if probs else None
        out.append({**row, "label": -1 if label is None else int(label), "reasoning": parsed[pick].reasoning,
                    "completion": cands[pick].text, "label_probs": [float(p) for p in probs] if probs else None,
                    "confidence": confidence,
                    "parse_ok": label is not None, "first_try_ok": first_try_ok, "teacher": teacher,
                    "gold_label": gold_label(row),
                    "new_tokens": int(sum(c.tokens for c in cands)),
                    "error": errors[0] if errors and len(errors) == len(cands) else None})
    return out


def gold_label(row: dict) -> int:
    """The row's gold grade: ``label``, or ``gold_label`` where ``pairs`` hid the labels; -1 if none."""
    for key in ("label", "gold_label"):
        value = row.get(key)
        if isinstance(value, int) and value >= 0:
            return value
    return -1


class AnnotateOptions(ParseHealthOptions):
    annotator: ComponentRef("annotator") = "teacher"
    annotator_options: dict[str, Any] = Field(default_factory=dict)
    input: str = Field("pairs", description="the earlier output to annotate", json_schema_extra=OUTPUT_REF)
    limit: int | None = Field(None, ge=1, description="annotate only the first N pairs")
    shard_size: int = Field(64, ge=1)
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
        return opts.model_copy(update={"annotator_options": sub.model_dump()})

    def run(self, ctx, options: AnnotateOptions) -> StageResult:
        annotator = ctx.hooks.catalogue.get("annotator", options.annotator)
        a_opts = annotator.options(options.annotator_options)
        teacher = (current_teacher(ctx) or "") if annotator.needs_teacher else ""  # a served teacher needs no local one
        pairs = ctx.load_dataset(options.input)
        if options.limit:
            pairs = pairs.select(range(min(options.limit, len(pairs))))
        metrics: dict[str, Any] = {}
        if hasattr(annotator, "check_precision"):
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


def identify_teacher(ctx, teacher: str) -> str:
    """``<model ref or run-relative folder>@<content fingerprint>``: the same teacher reads the same anywhere."""
    path = Path(teacher)
    if not teacher or not path.exists():
        return teacher
    try:
        name = path.resolve().relative_to(ctx.run.dir.resolve()).as_posix()
    except ValueError:
        name = portable_ref(ctx.recipe.models.get("teacher", path.name)).split("@")[0]
    files = [p for p in (path / "config.json", path / "model.safetensors") if p.exists()]
    digest = "+".join(fingerprint(p)[7:19] for p in files)
    return f"{name}@{digest}" if digest else name


def annotate_sharded(ctx, annotator, data, teacher: str, options, shard_size: int, folder: Path,
                     max_failed_share: float = 1.0, monitor: ParseMonitor | None = None) -> dict[str, float]:
    """Annotate every shard this rank owns that is missing, corrupt or holds failed rows.

    Each shard is written atomically as soon as its rows are back; a rerun keeps the complete ones
    and, in a shard with rows that failed in the backend, redoes only those rows. The stage stops
    (work kept) once more than ``max_failed_share`` of the rows done now have failed: a dead server
    is reported after one shard, not after every request has spent its retries. ``monitor`` counts
    the parsed answers (of the kept shards too), shows the share in the progress bar, and stops the
    stage after a shard that leaves it below ``min_parse_rate``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = (len(data) + shard_size - 1) // shard_size
    size = {s: min(shard_size, len(data) - s * shard_size) for s in range(n_shards)}
    mine = [s for s in range(n_shards) if s % dist.world() == dist.rank()]
    kept = {s: read_shard(folder, s) for s in mine}
    todo = [s for s in mine if kept[s] is None or any(r.get("error") for r in kept[s])]
    bar = ctx.progress(total=sum(size[s] for s in mine), desc="annotate", unit="pair")
    bar.update(sum(size[s] for s in mine if s not in todo)
               + sum(1 for s in todo for r in (kept[s] or []) if not r.get("error")))
    ids: dict[str, str] = {}
    started, tokens, pairs, failed = time.time(), 0, 0, 0
    spent_before = annotator.usage()
    monitor = monitor or ParseMonitor("annotate", ParseHealthOptions(min_parse_rate=0))
    for s in mine:  # a resumed stage counts what it kept
        answered = [r for r in kept[s] or [] if not r.get("error")]
        monitor.add([r.get("parse_ok", False) for r in answered], [r.get("new_tokens", 0) for r in answered])
    for s in todo:
        shard = data.select(range(s * shard_size, s * shard_size + size[s]))
        rows = kept[s] or [None] * size[s]
        redo = [i for i, r in enumerate(rows) if r is None or r.get("error")]
        shard_started = time.time()
        new = annotator.annotate(ctx, shard.select(redo) if len(redo) < size[s] else shard, teacher, options).to_list()
        kept_seconds = read_seconds(folder, s) * (size[s] - len(redo)) / size[s]
        for i, r in zip(redo, new):
            r.setdefault("error", None)
            given = r.get("teacher", "")
            if given not in ids:  # fingerprinting the weights once per stage, not once per row
                ids[given] = identify_teacher(ctx, given)
            r["teacher"] = ids[given]
            rows[i] = r
        check_teacher(folder, rows)
        write_shard(folder, s, rows, kept_seconds + time.time() - shard_started)
        tokens += sum(r.get("new_tokens", 0) for r in new)
        pairs += len(new)
        failed += sum(1 for r in new if r["error"])
        answered = [r for r in new if not r["error"]]
        monitor.add([r.get("parse_ok", False) for r in answered], [r.get("new_tokens", 0) for r in answered])
        bar.update(len(redo))
        elapsed = max(1e-9, time.time() - started)
        spent = accounting_delta(spent_before, annotator.usage()).get("total", {})
        bar.set_postfix(pairs_s=f"{pairs / elapsed:.2f}", tok_s=f"{tokens / elapsed:.1f}", failed=failed,
                        parsed=f"{monitor.rate:.0%}",
                        **({"retried": sum(v for k, v in spent.items() if k.startswith("errors_"))} if spent else {}),
                        **({"cost": f"{spent['cost']:.4f}"} if "cost" in spent else {}))
        if failed > max_failed_share * pairs:
            bar.close()
            last = next((r["error"] for r in reversed(new) if r["error"]), "in an earlier shard")
            raise DataError(f"annotate: {failed} of {pairs} rows failed in the teacher's backend, more than "
                            f"max_failed_share {max_failed_share:g} (last error: {last}); the shards are kept in "
                            f"{folder}: rerun to resume, only the failed rows are redone")
        try:
            monitor.check()
        except DataError:
            bar.close()
            raise
    bar.close()
    dist.barrier()
    spent = accounting_sum(dist.all_gather(accounting_delta(spent_before, annotator.usage())))  # every rank's
    return {"seconds_now": time.time() - started, "tokens_now": tokens, "pairs_now": pairs, "failed_now": failed,
            "spent": spent}


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
