"""The built-in ``teacher`` annotator: the teacher writes a reasoning chain and a label per pair, on any
generation backend, with retries of unparsable answers and self-consistency votes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from reasondistill import Annotator, BackendSpec, Options
from reasondistill.generators import (
    effective_spec,
    generator_accounting,
    generator_precision_check,
    load_generator,
    teacher_roles,
)
from reasondistill.runtime import current


class TeacherAnnotatorOptions(Options):
    backend: BackendSpec | None = Field(None, description="how the teacher runs (default: the recipe's "
                                                          "backends.teacher, else transformers)")
    batch_size: int = Field(64, ge=1, description="rows decoded together by a local backend (slots refilled as "
                                                  "rows finish)")
    max_new_tokens: int = Field(96, ge=4, description="token budget of one answer (reasoning and label)")
    do_sample: bool = Field(False,
        description="sample instead of greedy decoding (self-consistency votes sample anyway)")
    temperature: float = Field(0.7, gt=0, le=5, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling when sampling")
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

    def model_roles(self, recipe, options: TeacherAnnotatorOptions, catalogue) -> tuple[str, ...]:
        """The teacher, where it runs here rather than on a server."""
        return teacher_roles(recipe, options.backend, catalogue)

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
        sample = pairs.select(range(min(options.bf16_check_rows, len(pairs))))
        found = generator_precision_check(gen, [ctx.domain.messages(r) for r in sample], options.bf16_min_agreement)
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
