"""Teacher annotation: the ``annotate`` stage and the built-in ``transformers`` annotator.

The input is cut into fixed shards (by position); each shard is annotated and written atomically
as JSONL. A rerun skips complete shards, so an interrupted run loses at most one shard of work
and every ``pair_id`` appears exactly once. Under several processes each rank takes every
``world``-th shard and the main process merges. Shards never depend on which rank ran them, so
1 and N processes give the same annotations.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from reasondistill import Annotator, ComponentRef, Options, Stage, StageResult, hookimpl
from reasondistill import distributed as dist
from reasondistill.components import validate_nested
from reasondistill.fingerprint import write_atomic


class TransformersAnnotatorOptions(Options):
    batch_size: int = Field(64, ge=1, description="rows decoded together (slots refilled as rows finish)")
    max_new_tokens: int = Field(96, ge=4)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    self_consistency: int = Field(1, ge=1, description="N sampled chains; majority label, agreement as confidence")
    retries: int = Field(1, ge=0, description="re-generate unparseable outputs (sampled) this many times")
    int8: bool = Field(False, description="torch dynamic int8 quantization of the teacher's linear layers")
    engine: Literal["auto", "slots", "generate"] = Field(
        "auto", description="'slots': continuous batching (refill finished rows); 'generate': transformers "
                            "generate on length buckets; 'auto': slots where the model supports them")


class TransformersAnnotator(Annotator):
    """Batched ``model.generate`` with length buckets, early stop at the label, label probabilities."""

    name = "transformers"
    description = "Batched transformers generate: buckets, left padding, stop at the label, label probs."
    Options = TransformersAnnotatorOptions

    def __init__(self) -> None:
        self._cache: tuple[Any, Any] | None = None

    def generator(self, teacher: str, domain: Any, options: TransformersAnnotatorOptions, trust: bool = False):
        from reasondistill.generation import TeacherGenerator

        key = (teacher, domain.name, options.batch_size, options.max_new_tokens, options.int8, options.engine)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, TeacherGenerator(teacher, domain, options.batch_size, options.max_new_tokens,
                                                 trust_remote_code=trust, int8=options.int8,
                                                 engine=options.engine))
        return self._cache[1]

    def annotate(self, ctx, pairs, teacher: str, options: TransformersAnnotatorOptions):
        from datasets import Dataset

        rows = annotate_rows(self.generator(teacher, ctx.domain, options, ctx.recipe.trust_remote_code),
                             list(pairs), ctx.domain, options, ctx.seed, teacher)
        return Dataset.from_list(rows)


def annotate_rows(gen, rows: list[dict], domain, options: TransformersAnnotatorOptions, seed: int, teacher: str,
                  progress: Any = None) -> list[dict]:
    messages = [domain.messages(r) for r in rows]
    n = options.self_consistency
    sample = options.do_sample or n > 1
    outs = gen.generate(messages, do_sample=sample, temperature=options.temperature, top_p=options.top_p,
                        num_return_sequences=n, seed=seed, progress=progress)
    results = []
    for row, cands in zip(rows, outs):
        parsed = [domain.parse_completion(c.text) for c in cands]
        results.append([row, cands, parsed])
    for attempt in range(options.retries):  # sampled retries of rows with no parsable label
        bad = [i for i, (_, _, parsed) in enumerate(results) if not any(p.ok for p in parsed)]
        if not bad:
            break
        again = gen.generate([messages[i] for i in bad], do_sample=True, temperature=options.temperature,
                             top_p=options.top_p, num_return_sequences=n, seed=seed + 1000 * (attempt + 1))
        for i, cands in zip(bad, again):
            results[i][1] = cands
            results[i][2] = [domain.parse_completion(c.text) for c in cands]
    out = []
    k = len(domain.labels)
    for row, cands, parsed in results:
        votes = Counter(p.label for p in parsed if p.ok)
        if votes:
            label = max(sorted(votes), key=lambda lab: votes[lab])
            pick = next(i for i, p in enumerate(parsed) if p.label == label)
        else:
            label, pick = None, 0
        if n > 1:
            probs = [votes.get(i, 0) / max(1, sum(votes.values())) for i in range(k)] if votes else None
        else:
            probs = cands[pick].label_probs
        if probs is None:
            probs = [1.0 / k] * k
        out.append({**row, "label": -1 if label is None else int(label), "reasoning": parsed[pick].reasoning,
                    "completion": cands[pick].text, "label_probs": [float(p) for p in probs],
                    "confidence": float(votes[label] / n) if label is not None else 0.0,
                    "parse_ok": label is not None, "teacher": teacher,
                    "gold_label": row.get("label", -1) if row.get("label") is not None else -1,
                    "new_tokens": int(sum(c.tokens for c in cands))})
    return out


class AnnotateOptions(Options):
    annotator: ComponentRef("annotator") = "transformers"
    annotator_options: dict[str, Any] = Field(default_factory=dict)
    input: str = Field("pairs", description="the earlier output to annotate")
    limit: int | None = Field(None, ge=1, description="annotate only the first N pairs")
    shard_size: int = Field(64, ge=1)
    dev_rows: int = Field(0, ge=0, description="also annotate N dev pairs to measure the teacher")


class AnnotateStage(Stage):
    name = "annotate"
    description = "The teacher labels pairs with reasoning; sharded, resumable, multi-process."
    Options = AnnotateOptions
    distributed = True

    def options(self, raw=None, context=None) -> AnnotateOptions:
        opts = AnnotateOptions.model_validate(raw or {}, context=context)
        sub = validate_nested(context, "annotator", opts.annotator, opts.annotator_options, "annotator_options")
        return opts.model_copy(update={"annotator_options": sub.model_dump()})

    def run(self, ctx, options: AnnotateOptions) -> StageResult:
        annotator = ctx.hooks.catalogue.get("annotator", options.annotator)
        a_opts = annotator.options(options.annotator_options)
        teacher = str(ctx.input("teacher")) if ctx.has_input("teacher") else ctx.model("teacher")
        teacher_id = identify_teacher(ctx, teacher)
        pairs = ctx.load_dataset(options.input)
        if options.limit:
            pairs = pairs.select(range(min(options.limit, len(pairs))))
        metrics: dict[str, Any] = {}
        outputs = {"annotations": "annotations"}
        jobs = [("annotations", pairs)]
        if options.dev_rows and ctx.has_input("dev"):
            dev = ctx.load_dataset("dev")
            jobs.append(("dev_annotations", dev.select(range(min(options.dev_rows, len(dev))))))
            outputs["dev_annotations"] = "dev_annotations"
        for name, data in jobs:
            stats = annotate_sharded(ctx, annotator, data, teacher, a_opts, options.shard_size, ctx.dir / f"{name}_shards",
                                     teacher_id)
            if dist.is_main():
                merged = merge_shards(ctx.dir / f"{name}_shards")
                merged.save_to_disk(str(ctx.dir / name))
                prefix = "" if name == "annotations" else "dev_"
                metrics.update({prefix + k: v for k, v in summarize(merged, ctx.domain, stats).items()})
        dist.barrier()
        return StageResult(outputs=outputs, metrics=metrics)


def identify_teacher(ctx, teacher: str) -> str:
    """``<model ref or run-relative folder>@<content fingerprint>``: the same teacher reads the same anywhere."""
    from reasondistill.fingerprint import fingerprint

    path = Path(teacher)
    if not path.exists():
        return teacher
    try:
        name = path.resolve().relative_to(ctx.run.dir.resolve()).as_posix()
    except ValueError:
        name = ctx.recipe.models.get("teacher", path.name)
    files = [p for p in (path / "config.json", path / "model.safetensors") if p.exists()]
    digest = "+".join(fingerprint(p)[7:19] for p in files)
    return f"{name}@{digest}" if digest else name


def annotate_sharded(ctx, annotator, data, teacher: str, options, shard_size: int, folder: Path,
                     teacher_id: str | None = None) -> dict[str, float]:
    """Annotate every missing shard this rank owns; returns timing of the work done now."""
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = (len(data) + shard_size - 1) // shard_size
    mine = [s for s in range(n_shards) if s % dist.world() == dist.rank()]
    todo = [s for s in mine if not shard_ok(folder, s)]
    done_rows = sum(min(shard_size, len(data) - s * shard_size) for s in mine if s not in todo)
    bar = ctx.progress(total=sum(min(shard_size, len(data) - s * shard_size) for s in mine), desc="annotate", unit="pair")
    bar.update(done_rows)
    started, tokens, pairs = time.time(), 0, 0
    for s in todo:
        shard = data.select(range(s * shard_size, min(len(data), (s + 1) * shard_size)))
        rows = annotator.annotate(ctx, shard, teacher, options).to_list()
        if teacher_id:
            for r in rows:
                r["teacher"] = teacher_id
        write_shard(folder, s, rows)
        tokens += sum(r.get("new_tokens", 0) for r in rows)
        pairs += len(rows)
        bar.update(len(rows))
        elapsed = max(1e-9, time.time() - started)
        bar.set_postfix(pairs_s=f"{pairs / elapsed:.2f}", tok_s=f"{tokens / elapsed:.1f}")
    bar.close()
    dist.barrier()
    return {"seconds_now": time.time() - started, "tokens_now": tokens, "pairs_now": pairs}


def write_shard(folder: Path, index: int, rows: list[dict]) -> None:
    """The shard, then its sha256 sidecar: a shard counts as done only when both agree."""
    import hashlib

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_atomic(folder / f"shard-{index:05d}.jsonl", text)
    write_atomic(folder / f"shard-{index:05d}.sha256", hashlib.sha256(text.encode()).hexdigest())


def shard_ok(folder: Path, index: int) -> bool:
    """A shard whose content does not match its recorded sha256 (truncated, edited) is redone."""
    import hashlib
    import logging

    data, sidecar = folder / f"shard-{index:05d}.jsonl", folder / f"shard-{index:05d}.sha256"
    if not data.exists() or not sidecar.exists():
        return False
    if hashlib.sha256(data.read_bytes()).hexdigest() != sidecar.read_text().strip():
        logging.getLogger("reasondistill").warning("%s does not match its fingerprint; annotating it again", data)
        data.unlink()
        return False
    return True


def merge_shards(folder: Path):
    from datasets import Dataset

    rows = []
    for path in sorted(folder.glob("shard-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return Dataset.from_list(rows)


def summarize(ds, domain, stats: dict[str, float]) -> dict[str, Any]:
    from reasondistill.metrics import classification_metrics

    n = len(ds)
    labels = ds["label"]
    out: dict[str, Any] = {"pairs": n, "parse_rate": round(sum(ds["parse_ok"]) / max(1, n), 4),
                           "tokens": int(sum(ds["new_tokens"]))}
    for i, name in enumerate(domain.labels):
        out[f"share_{name.replace(' ', '_')}"] = round(sum(1 for x in labels if x == i) / max(1, n), 4)
    if stats["seconds_now"] > 0 and stats["pairs_now"]:
        out["pairs_per_s"] = round(stats["pairs_now"] / stats["seconds_now"], 3)
        out["tokens_per_s"] = round(stats["tokens_now"] / stats["seconds_now"], 2)
    gold = ds["gold_label"]
    scored = [(g, p if p >= 0 else (g + 1) % len(domain.labels)) for g, p in zip(gold, labels) if g is not None and g >= 0]
    if scored:  # an unparsable answer counts as wrong
        m = classification_metrics([g for g, _ in scored], [p for _, p in scored], domain.labels)
        out.update({"teacher_macro_f1": round(m["macro_f1"], 4), "teacher_accuracy": round(m["accuracy"], 4)})
    return out


@hookimpl
def register_annotators(register):
    register(TransformersAnnotator())


@hookimpl
def register_stages(register):
    register(AnnotateStage())
