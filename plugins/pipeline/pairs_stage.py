"""The ``pairs`` stage: bring pairs into a run from a file or the domain's own generator."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from reasondistill import Options, Stage, StageResult, hookimpl
from reasondistill.data import load_pairs, rows_to_pairs
from reasondistill.domain import recipe_domain, require_ability
from reasondistill.errors import DataError
from reasondistill.fingerprint import fingerprint


class PairsOptions(Options):
    """``source: generate`` uses the domain's generator; otherwise ``source`` is a file or folder."""

    source: str = Field("generate", validate_default=True, description="'generate' (the domain's generator) "
                        "or a file/folder of pairs")
    format: Literal["jsonl", "csv", "parquet", "disk"] | None = Field(None,
        description="the source's format; default: from its suffix (a folder is a saved dataset)")
    columns: dict[str, str] = Field(default_factory=dict, description="contract name -> source column")
    limit: int | None = Field(None, ge=1, description="read at most this many rows of source (after offset)")
    offset: int = Field(0, ge=0, description="skip this many rows of source first (disjoint pools)")
    hide_labels: bool = Field(False, description="move label to gold_label: a pool for the teacher to annotate")
    dev_source: str | None = Field(None,
        description="a file/folder of gold dev pairs; default: dev_fraction of source, held out by query")
    dev_limit: int | None = Field(None, ge=1, description="read at most this many rows of dev_source")
    dev_fraction: float = Field(0.2, ge=0, lt=1, description="held out by query when no dev_source")
    encoding: str = Field("utf-8", description="text encoding of a CSV or JSONL source (latin-1, cp1252, gb18030, ...)",
                          json_schema_extra={"hash": "unless_default"})
    label_map: dict[str, int] = Field(default_factory=dict, description="text label -> grade, e.g. {irrelevant: 0, "
                                      "relevant: 2}; integer labels pass through",
                                      json_schema_extra={"hash": "unless_default"})
    n: int = Field(600, ge=10, description="pairs to generate")
    noise: float = Field(0.05, ge=0, le=0.5, description="label noise of the generator")

    @field_validator("source")
    @classmethod
    def _domain_generates(cls, value: str, info: ValidationInfo) -> str:
        if value == "generate":
            require_ability(info.context, "can_generate", "give a file or folder")
        return value

    @model_validator(mode="after")
    def _sources_readable(self, info: ValidationInfo) -> "PairsOptions":
        _check_sources(self, info)
        return self


#: rows read at ``validate`` from each source file: enough to find a wrong encoding, column or label
#: early without reading a large file twice (the stage reads and checks every row)
VALIDATE_ROWS = 1000


def _check_sources(options: "PairsOptions", info: ValidationInfo) -> None:
    """At ``validate``: each source file exists, is not empty, decodes, has the named columns, and
    its labels (after ``label_map``) are grades of the recipe's domain: on its first rows."""
    import codecs

    try:
        codecs.lookup(options.encoding)
    except LookupError:
        raise ValueError(f"encoding: unknown text encoding {options.encoding!r}") from None
    domain = recipe_domain(info.context)
    num_labels = len(domain.labels) if domain is not None else None
    if num_labels is not None:
        bad = {k: v for k, v in options.label_map.items() if not 0 <= v < num_labels}
        if bad:
            raise ValueError(f"label_map: {bad} outside the domain's grades 0..{num_labels - 1} ({', '.join(domain.labels)})")
    if not info.context or info.context.get("recipe") is None:
        return  # options built outside a recipe: the stage checks when it runs
    for key in ("source", "dev_source"):
        value = getattr(options, key)
        if value and value != "generate":
            try:
                load_pairs(value, options.format, options.columns, VALIDATE_ROWS, num_labels, options.encoding,
                           options.label_map)
            except DataError as exc:
                raise ValueError(f"{key}: {exc}") from None


def _dev_by_query(query: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{query}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


class PairsStage(Stage):
    name = "pairs"
    description = "Load or generate query-item pairs; outputs `pairs` (train) and `dev`."
    Options = PairsOptions

    def input_fingerprints(self, options: PairsOptions) -> dict[str, str]:
        out = {}
        for key in ("source", "dev_source"):
            value = getattr(options, key)
            if value and value != "generate":
                try:
                    out[key] = fingerprint(value)
                except FileNotFoundError:
                    raise DataError(f"{key}: {value}: no such file or folder") from None
        return out

    def run(self, ctx, options: PairsOptions) -> StageResult:
        num_labels = len(ctx.domain.labels)
        if options.source == "generate":
            if not ctx.domain.can_generate:
                raise DataError(f"domain {ctx.domain.name!r} has no generator; set options.source to a file")
            rows = ctx.domain.generate(n=options.n, seed=ctx.seed, noise=options.noise)
            pairs = rows_to_pairs(rows, f"{ctx.domain.name} generator", num_labels=num_labels)
            repairs: list[str] = []
        else:
            limit = options.offset + options.limit if options.limit else None
            pairs, report = load_pairs(options.source, options.format, options.columns, limit, num_labels,
                                       options.encoding, options.label_map)
            if options.offset:
                pairs = pairs.select(range(min(options.offset, len(pairs)), len(pairs)))
            repairs = report.repairs
        if options.dev_source:
            dev, dev_report = load_pairs(options.dev_source, options.format, options.columns, options.dev_limit, num_labels,
                                         options.encoding, options.label_map)
            repairs += [f"dev: {r}" for r in dev_report.repairs]
        else:
            is_dev = [_dev_by_query(q, options.dev_fraction, ctx.seed) for q in pairs["query"]]
            dev = pairs.select([i for i, d in enumerate(is_dev) if d])
            pairs = pairs.select([i for i, d in enumerate(is_dev) if not d])
            if options.dev_limit:
                dev = dev.select(range(min(options.dev_limit, len(dev))))
        if options.hide_labels and "label" in pairs.column_names:
            pairs = pairs.rename_column("label", "gold_label")
        pairs.save_to_disk(str(ctx.dir / "pairs"))
        outputs = {"pairs": "pairs"}
        if len(dev):  # an empty dev split is no output: a later `dev` then means an earlier stage's
            dev.save_to_disk(str(ctx.dir / "dev"))  # (datasets cannot read an empty one back)
            outputs["dev"] = "dev"
        metrics: dict[str, Any] = {"pairs": len(pairs), "dev": len(dev), **leakage(pairs, dev)}
        if "label" in pairs.column_names:
            for i, name in enumerate(ctx.domain.labels):
                metrics[f"share_{name.replace(' ', '_')}"] = round(sum(1 for x in pairs["label"] if x == i) / max(1, len(pairs)), 4)
        if repairs:
            metrics["repairs"] = repairs
        return StageResult(outputs=outputs, metrics=metrics)


def leakage(train, dev) -> dict[str, int]:
    """What makes dev figures optimistic or training lopsided, counted (the run's end warns about
    each in plain words): dev queries also in train (a ``dev_source`` can share them; ``dev_fraction``
    holds out whole queries), and (query, item) pairs that occur more than once in train."""
    out = {}
    if len(dev):
        shared = set(dev["query"]) & set(train["query"])
        out["dev_queries_in_train"] = len(shared)
    seen: set[tuple[str, str]] = set()
    repeats = 0
    for q, i in zip(train["query"], train["item"]):
        repeats += (q, i) in seen
        seen.add((q, i))
    out["duplicate_pairs"] = repeats
    return out


@hookimpl
def register_stages(register):
    register(PairsStage())
