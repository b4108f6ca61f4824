"""The annotate stage's shard store: one JSONL file per fixed shard of the input, written atomically
with a sha256 sidecar (and the seconds its rows took), read back only when both agree, merged in
shard order. Kept apart from the stage so the resume rules live in one place."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from reasondistill.errors import DataError
from reasondistill.fingerprint import write_atomic


def check_teacher(folder: Path, rows: list[dict]) -> None:
    """Every shard of a folder comes from one teacher: a resumed run with another one stops."""
    marker = folder / "teacher.txt"
    teachers = sorted({str(r.get("teacher")) for r in rows if not r.get("error")})
    if not teachers:
        return
    if len(teachers) == 1 and not marker.exists():
        write_atomic(marker, teachers[0])
    recorded = marker.read_text() if marker.exists() else teachers[0]
    if teachers != [recorded]:
        raise DataError(f"annotate: {folder} holds shards written by teacher {recorded!r}, but the teacher now is "
                        f"{', '.join(t for t in teachers if t != recorded)!r}; rerun with --force annotate to "
                        "start over with the new teacher")


def write_shard(folder: Path, index: int, rows: list[dict], seconds: float | None = None) -> None:
    """The shard, then its sha256 sidecar: a shard counts as done only when both agree. ``seconds``
    (the time its rows took, kept apart from the rows so a rerun writes the same data) lets a
    resumed stage report its speed over every row, not just the ones it redid."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if seconds is not None:
        write_atomic(folder / f"shard-{index:05d}.seconds", f"{seconds:.6f}")
    write_atomic(folder / f"shard-{index:05d}.jsonl", text)
    write_atomic(folder / f"shard-{index:05d}.sha256", hashlib.sha256(text.encode()).hexdigest())


def read_seconds(folder: Path, index: int | None = None) -> float:
    """The seconds recorded for one shard, or for every shard of ``folder`` (0 where none is)."""
    paths = [folder / f"shard-{index:05d}.seconds"] if index is not None else sorted(folder.glob("shard-*.seconds"))
    total = 0.0
    for path in paths:
        try:
            total += float(path.read_text())
        except (OSError, ValueError):
            pass
    return total


def read_shard(folder: Path, index: int) -> list[dict] | None:
    """The shard's rows, or None when it is missing or does not match its recorded sha256
    (truncated, edited): such a shard is redone."""
    data, sidecar = folder / f"shard-{index:05d}.jsonl", folder / f"shard-{index:05d}.sha256"
    if not data.exists() or not sidecar.exists():
        return None
    raw = data.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sidecar.read_text().strip():
        logging.getLogger("reasondistill").warning("%s does not match its fingerprint; annotating it again", data)
        data.unlink()
        return None
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]


def merge_shards(folder: Path):
    from datasets import Dataset

    rows = []
    for path in sorted(folder.glob("shard-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return Dataset.from_list(rows)
