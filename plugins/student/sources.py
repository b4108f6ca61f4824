"""The training rows of ``distill``: several earlier outputs (teacher annotations, gold pairs, STaR
chains), each with a loss weight and filters, merged into one dataset with a per-row ``weight``.

Why row weights and not oversampling: a weight of 0.5 or a confidence of 0.73 is not a row count,
and every row is still seen once an epoch, so the epoch means the same thing with and without
weights. Weights are scaled so that their mean over the training rows is 1: the learning rate
keeps its meaning, and uniform weights train exactly as no weights.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field

from reasondistill import Options
from reasondistill.errors import DataError, RecipeError
from reasondistill.recipe import OUTPUT_REF


class TrainSource(Options):
    """One training input of ``distill``."""

    input: str = Field(description="an earlier output: `annotations`, `pairs`, `gold.pairs`, ...", json_schema_extra=OUTPUT_REF)
    weight: float = Field(1.0, gt=0, description="loss weight of this source's rows, relative to the other sources")
    min_confidence: float = Field(0.0, ge=0, le=1, description="keep only rows whose confidence is at least this: "
                                  "the teacher's probability of the label it wrote (`label_probs`: the label "
                                  "tokens' probability, or the vote share under self_consistency)")
    confidence_weight: bool = Field(False, description="multiply each row's weight by its confidence")
    reasoning: Literal["column", "domain", "none"] | None = Field(
        None, description="where the reasoning view's text comes from: the reasoning column, the domain's "
        "rule-written rationale(row, label), or none (empty); default: `domain` when the stage's "
        "`domain_rationale` is set, else `column`")
    reasoning_from: str | None = Field(None, description="an earlier output whose `reasoning` (by `pair_id`) "
                                       "replaces this source's, e.g. the teacher's STaR chains for gold pairs; "
                                       "rows without one are dropped", json_schema_extra=OUTPUT_REF)
    reasoning_column: str | None = Field(None, description="default: the stage's reasoning_column")
    label_column: str | None = Field(None, description="default: the stage's label_column")
    teacher: bool | None = Field(None, description="labels written by the teacher (dropped when a quality gate "
                                 "falls back); default: the rows carry a `teacher` column")


def source_key(source: TrainSource) -> str:
    """A metric-safe name of a source (``gold.pairs`` -> ``gold_pairs``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", source.input).strip("_")


def confidence_of(row: dict[str, Any], label: int) -> float | None:
    """The teacher's probability of the label it wrote: ``label_probs[label]`` (the label tokens'
    probability; the vote share under self-consistency; uniform from a server without logprobs),
    else a ``confidence`` column; None for rows without either (gold pairs)."""
    probs = row.get("label_probs")
    if probs and 0 <= label < len(probs):
        return float(probs[label])
    if row.get("confidence") is not None:
        return float(row["confidence"])
    return None


def _chains(ds) -> dict[Any, str]:
    if "pair_id" not in ds.column_names or "reasoning" not in ds.column_names:
        raise DataError(f"reasoning_from: the output has no pair_id/reasoning columns (columns: {', '.join(ds.column_names)})")
    return {r["pair_id"]: r["reasoning"] for r in ds if r["reasoning"]}


def load_source(ctx, source: TrainSource, *, label_column: str, reasoning_column: str, default_reasoning: str,
                needs_reasoning: bool, strip) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """The usable rows of one source (with ``label``, ``reasoning``, ``confidence`` and ``weight``),
    its metrics, and whether its labels are the teacher's."""
    ds = ctx.load_dataset(source.input)
    cols = ds.column_names
    label_col = source.label_column or label_column
    reasoning_column = source.reasoning_column or reasoning_column
    if label_col not in cols:
        raise DataError(f"{source.input}: no column {label_col!r} to train on (columns: {', '.join(cols)}); "
                        "set label_column")
    mode = source.reasoning or default_reasoning
    if mode == "domain" and not ctx.domain.writes_rationale:
        raise DataError(f"{source.input}: domain {ctx.domain.name!r} writes no rationale; set reasoning: column")
    chains = _chains(ctx.load_dataset(source.reasoning_from)) if source.reasoning_from else None
    if needs_reasoning and mode == "column" and chains is None and reasoning_column not in cols:
        raise DataError(f"{source.input}: loss needs reasoning, but there is no column {reasoning_column!r} "
                        f"(columns: {', '.join(cols)}); set reasoning_column, or reasoning: domain")
    if source.min_confidence > 0 and "confidence" not in cols and "label_probs" not in cols:
        raise DataError(f"{source.input}: min_confidence needs a confidence or label_probs column (teacher annotations)")
    teacher = source.teacher if source.teacher is not None else "teacher" in cols
    rows, unlabelled, unparsed, unconfident, unreasoned = [], 0, 0, 0, 0
    for r in ds:
        label = r[label_col]
        if "parse_ok" in cols and not r["parse_ok"]:  # a teacher answer with no label: its -1 is not a gold gap
            unparsed += 1
            continue
        if label is None or label < 0:
            unlabelled += 1
            continue
        conf = confidence_of(r, int(label))
        if source.min_confidence > 0 and conf is None:
            raise DataError(f"{source.input}: min_confidence needs the teacher's probability of each label, and row "
                            f"{r.get('pair_id', len(rows))!r} has none (its backend gave no logprobs); annotate with "
                            "self_consistency > 1 for vote shares, or drop min_confidence")
        if source.min_confidence > 0 and conf < source.min_confidence:
            unconfident += 1
            continue
        reasoning = reasoning_of(ctx, r, int(label), chains, mode, reasoning_column)
        if reasoning is None:  # a chain source without this pair's chain
            unreasoned += 1
            continue
        weight = source.weight * (conf if source.confidence_weight and conf is not None else 1.0)
        rows.append({**r, "label": int(label), "reasoning": strip(reasoning), "weight": weight, "source": source.input,
                     "confidence": conf})
    key = source_key(source)
    metrics: dict[str, Any] = {f"source_{key}_rows": len(rows), f"source_{key}_teacher": teacher}
    for name, count in (("unlabelled", unlabelled), ("unparsed", unparsed), ("below_min_confidence", unconfident),
                        ("without_chain", unreasoned)):
        if count:
            metrics[f"source_{key}_dropped_{name}"] = count
    gold = [(r["label"], r["gold_label"]) for r in rows if teacher and isinstance(r.get("gold_label"), int) and r["gold_label"] >= 0]
    if gold:  # how right the kept teacher labels are, where the pool's hidden gold labels tell
        metrics[f"source_{key}_gold_agreement"] = round(sum(a == b for a, b in gold) / len(gold), 4)
    return rows, metrics, teacher


def reasoning_of(ctx, row: dict[str, Any], label: int, chains: dict | None, mode: str, column: str) -> str | None:
    """The row's reasoning: from the chain source (None when it has none for the pair), the domain's
    rationale, the row's own column, or none."""
    if chains is not None:
        return chains.get(row.get("pair_id"))
    if mode == "domain":
        return ctx.domain.rationale(row, label)
    return (row.get(column) or "") if mode == "column" else ""


def class_weight_vector(labels: list[int], spec: str | list[float] | None, num_labels: int) -> list[float] | None:
    """One loss weight per class: ``balanced`` is ``n / (k * n_c)`` over the training rows (as
    scikit-learn's ``class_weight="balanced"``; a class with no row gets 1), a list is taken as it
    is, ``None`` means none."""
    if spec is None:
        return None
    if spec != "balanced":
        return [float(w) for w in spec]
    counts = [labels.count(c) for c in range(num_labels)]
    return [len(labels) / (num_labels * n) if n else 1.0 for n in counts]


def merge_sources(per_source: list[list[dict[str, Any]]], num_labels: int, class_weights: list[float] | None = None):
    """One dataset of the sources' rows with the columns they all carry, plus ``label``,
    ``reasoning``, ``weight`` (mean 1; left out when uniform) and, when any source has them,
    ``label_probs`` (one-hot for rows that have none, e.g. gold pairs). ``class_weights`` multiply
    each row's weight by its label's weight before the weights are scaled to mean 1, so every
    built-in loss (each a ``weighted_mean`` of per-row terms) is class-weighted alike."""
    from datasets import Dataset

    rows = [r for chunk in per_source for r in chunk]
    if not rows:
        return Dataset.from_list([])
    if class_weights is not None:
        rows = [{**r, "weight": r["weight"] * class_weights[r["label"]]} for r in rows]
    common = set.intersection(*(set(r) for r in rows))  # the columns every row has
    with_probs = any(r.get("label_probs") for r in rows)
    weights = [r["weight"] for r in rows]
    uniform = max(weights) - min(weights) < 1e-12
    scale = len(weights) / sum(weights)
    keep = [c for c in rows[0] if c in common and c not in ("label_probs", "weight", "confidence")]
    out = []
    for r in rows:
        row = {c: r[c] for c in keep}
        if with_probs:
            probs = r.get("label_probs")
            row["label_probs"] = [float(p) for p in probs] if probs else [float(i == r["label"]) for i in range(num_labels)]
        if not uniform:
            row["weight"] = r["weight"] * scale
        out.append(row)
    return Dataset.from_list(out)


def weights_mismatch(weights: Any, labels: Any) -> str | None:
    """Why a ``class_weights`` list does not fit the domain's labels, or None."""
    if isinstance(weights, list) and len(weights) != len(labels):
        return (f"{len(weights)} weights for {len(labels)} labels ({', '.join(labels)}); give one per label, "
                "in that order, or 'balanced'")
    return None


def training_rows(ctx, options: Any, needs_reasoning: bool):
    """The merged training dataset and per-source metrics of the distill stage's ``options`` (its
    ``DistillOptions``, not imported here: that module imports this one); with a gate that fell
    back, the teacher-labelled sources are left out."""
    verdict = read_verdict(ctx, options.gate) if options.gate else None
    strip = ctx.domain.strip_verdict if options.hide_verdict and needs_reasoning else (lambda text: text)
    chunks, metrics = [], {}
    for source in options.train_sources():
        rows, m, teacher = load_source(ctx, source, label_column=options.label_column,
                                       reasoning_column=options.reasoning_column,
                                       default_reasoning="domain" if options.domain_rationale else "column",
                                       needs_reasoning=needs_reasoning, strip=strip)
        if verdict is not None and verdict["verdict"] == "fallback" and teacher:
            metrics[f"source_{source_key(source)}_dropped_by_gate"] = len(rows)
            continue
        chunks.append(rows)
        metrics.update(m)
    if verdict is not None:
        metrics["gate_verdict"] = verdict["verdict"]
        metrics["gate_line"] = verdict.get("line")
        if not chunks:
            raise DataError(f"gate {options.gate!r} fell back to gold, but every source of this stage is teacher-labelled; "
                            "add the gold pairs as a source (sources: [{input: annotations}, {input: gold.pairs}])")
    labels = ctx.domain.labels
    wrong = weights_mismatch(options.class_weights, labels)  # validation without a domain could not check
    if wrong:
        raise RecipeError("class_weights", wrong)
    weights = class_weight_vector([r["label"] for chunk in chunks for r in chunk], options.class_weights, len(labels))
    if weights is not None:
        metrics["class_weights"] = {name: round(w, 4) for name, w in zip(labels, weights)}
    return merge_sources(chunks, len(labels), weights), metrics


def read_verdict(ctx, name: str) -> dict[str, Any]:
    path = ctx.input(name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"gate: {path}: not a gate verdict ({exc})") from None


def hide_verdict_in(ds, options: Any, domain):
    """With ``hide_verdict``, the reasoning column without the sentences that name a label."""
    col = options.reasoning_column
    if not options.hide_verdict or col not in ds.column_names:
        return ds
    return ds.map(lambda r: {col: domain.strip_verdict(r[col] or "")})
