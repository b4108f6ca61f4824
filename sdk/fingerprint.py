"""Content fingerprints for files and folders (sha256), and atomic JSON writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: str | Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents (sorted)."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(path)
    h = hashlib.sha256()
    for sub in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(sub.relative_to(path).as_posix().encode() + b"\0" + file_sha256(sub).encode())
    return "sha256:" + h.hexdigest()


def portable_ref(ref: str | None) -> str | None:
    """A model reference that reads the same on any machine: a name stays as it is; a local folder
    becomes ``<folder name>@<content digest>`` (its ``config.json`` and weights), never the absolute
    path of the machine that built it (exports, model cards, lineage, served ids)."""
    if not ref:
        return ref
    path = Path(ref)
    if not path.is_absolute() and not (os.sep in ref and path.exists()):
        return ref
    files = [path / f for f in ("config.json", "model.safetensors")] if path.is_dir() else []
    digest = "+".join(file_sha256(f)[:12] for f in files if f.exists())
    name = path.name or ref
    return f"{name}@{digest}" if digest else name


def canonical_hash(data: Any) -> str:
    """A stable hash of JSON-able data (sorted keys)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
