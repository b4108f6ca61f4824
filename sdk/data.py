"""Pairs in: JSONL, CSV, parquet or a ``datasets`` folder, mapped and checked against the contract.

The pairs contract (DESIGN section 3): ``pair_id`` (str, unique), ``query`` (str), ``item`` (str),
optional ``label`` (int grade), any extra domain columns. Every error names the file, and the
column or line at fault. Documented repairs, each counted in the returned report:
NUL bytes are removed; rows with an empty query or item are dropped; a missing ``pair_id``
column is filled with ``<file stem>-<row>``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError

REQUIRED = ("query", "item")
FORMATS = ("jsonl", "csv", "parquet", "disk")


@dataclass
class LoadReport:
    rows_read: int = 0
    dropped_empty: int = 0
    nul_bytes_removed: int = 0
    repairs: list[str] = field(default_factory=list)


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "disk"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix in ("csv", "tsv"):
        return "csv"
    if suffix in ("parquet", "pq"):
        return "parquet"
    raise DataError(f"{path}: cannot tell the format from the extension; set format to one of {', '.join(FORMATS)}")


def _utf8(encoding: str) -> bool:
    return encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")


def _not_valid(encoding: str) -> str:
    return "invalid UTF-8" if _utf8(encoding) else f"not valid {encoding}"


def _encoding_hint(encoding: str) -> str:
    return ("; if the file is in another encoding, set the pairs option encoding (e.g. latin-1, cp1252, gb18030)"
            if _utf8(encoding) else "")


def _read_jsonl(path: Path, encoding: str = "utf-8") -> Iterable[dict[str, Any]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} line {lineno}: {_not_valid(encoding)} at byte {exc.start}"
                                f"{_encoding_hint(encoding)}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def _read_csv(path: Path, encoding: str = "utf-8") -> Iterable[dict[str, Any]]:
    try:
        with open(path, newline="", encoding=encoding) as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delimiter = "\t" if path.suffix.lower() == ".tsv" or sample.count("\t") > sample.count(",") else ","
            yield from csv.DictReader(fh, delimiter=delimiter)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {_not_valid(encoding)} at byte {exc.start}{_encoding_hint(encoding)}") from None


def _read_table(path: Path, fmt: str, encoding: str = "utf-8") -> Iterable[dict[str, Any]]:
    if fmt == "jsonl":
        return _read_jsonl(path, encoding)
    if fmt == "csv":
        return _read_csv(path, encoding)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    return ds.to_list() if hasattr(ds, "to_list") else list(ds)


def load_pairs(path: str | Path, format: str | None = None, columns: dict[str, str] | None = None,
               limit: int | None = None, num_labels: int | None = None, encoding: str = "utf-8",
               label_map: dict[str, int] | None = None) -> tuple[Any, LoadReport]:
    """Load pairs from ``path`` and check them; returns ``(datasets.Dataset, LoadReport)``.

    :param columns: contract name -> source column, e.g. ``{"query": "search_term"}``.
    :param num_labels: when given, labels must be integers in ``[0, num_labels)``.
    :param encoding: of a CSV or JSONL file.
    :param label_map: text label -> grade (``{"relevant": 2}``); integer labels pass through.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    rename = {src: dst for dst, src in (columns or {}).items()}
    rows: list[dict[str, Any]] = []
    report = LoadReport()
    for row in _read_table(path, fmt, encoding):
        row = {rename.get(k, k): v for k, v in row.items()}
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    report.rows_read = len(rows)
    return rows_to_pairs(rows, str(path), report, num_labels, label_map), report


def text_field(value: Any, where: str, col: str, report: LoadReport) -> str:
    """A query or item as text: numbers written as text, None as empty, NUL bytes removed (counted)."""
    if not isinstance(value, str):
        if value is None:
            value = ""
        elif isinstance(value, (int, float)):
            value = str(value)
        else:
            raise DataError(f"{where}: column {col!r} must be text, got {type(value).__name__}")
    if "\x00" in value:
        value = value.replace("\x00", "")
        report.nul_bytes_removed += 1
    return value


def label_grade(label: Any, where: str, num_labels: int | None, label_map: dict[str, int] | None) -> int:
    """A label as an integer grade of the schema (text mapped through ``label_map``)."""
    if label_map and isinstance(label, str) and label.strip() in label_map:
        label = label_map[label.strip()]
    try:
        as_int = int(label)
        if as_int != float(label):
            raise ValueError
    except (TypeError, ValueError):
        hint = (f"; label_map has {', '.join(map(repr, label_map))}" if label_map else
                "; map text labels to grades with the pairs option label_map (e.g. {relevant: 2})")
        raise DataError(f"{where}: column 'label' must be an integer grade, got {label!r}{hint}") from None
    if num_labels is not None and not 0 <= as_int < num_labels:
        raise DataError(f"{where}: label {as_int} is outside the schema 0..{num_labels - 1}")
    return as_int


def rows_to_pairs(rows: list[dict[str, Any]], source: str, report: LoadReport | None = None,
                  num_labels: int | None = None, label_map: dict[str, int] | None = None) -> Any:
    """Check rows against the pairs contract and build a ``datasets.Dataset``."""
    from datasets import Dataset

    report = report or LoadReport(rows_read=len(rows))
    if not rows:
        raise DataError(f"{source}: no rows")
    present = set(rows[0])
    for col in REQUIRED:
        if col not in present:
            raise DataError(f"{source}: missing column {col!r} (columns: {', '.join(sorted(present))}); "
                            f"map one with columns: {{{col}: <source column>}}")
    keep: list[dict[str, Any]] = []
    stem = Path(source).stem or "pair"
    for i, row in enumerate(rows):
        for col in REQUIRED:
            row[col] = text_field(row.get(col), f"{source} row {i}", col, report)
        if not row["query"].strip() or not row["item"].strip():
            report.dropped_empty += 1
            continue
        if "label" in row and row["label"] is not None and row["label"] != "":
            row["label"] = label_grade(row["label"], f"{source} row {i}", num_labels, label_map)
        elif "label" in present:
            row["label"] = -1  # unlabelled row in a labelled file
        row["pair_id"] = str(row["pair_id"]) if row.get("pair_id") not in (None, "") else f"{stem}-{i}"
        keep.append(row)
    if report.dropped_empty:
        report.repairs.append(f"dropped {report.dropped_empty} rows with an empty query or item")
    if report.nul_bytes_removed:
        report.repairs.append(f"removed NUL bytes from {report.nul_bytes_removed} values")
    if not keep:
        raise DataError(f"{source}: every row has an empty query or item")
    seen: dict[str, int] = {}
    for i, row in enumerate(keep):
        if row["pair_id"] in seen:
            raise DataError(f"{source}: duplicate pair_id {row['pair_id']!r} (rows {seen[row['pair_id']]} and {i})")
        seen[row["pair_id"]] = i
    columns = sorted({k for r in keep for k in r})
    data = {c: [r.get(c) for r in keep] for c in columns}
    try:
        return Dataset.from_dict(data)
    except Exception as exc:  # mixed types in an extra column
        raise DataError(f"{source}: columns have inconsistent types ({exc})") from None
