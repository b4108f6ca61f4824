"""Model references: a registered model name, a local folder, or a hub id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ModelError


def cache_dir() -> Path:
    """Where materialised models live (``REASONDISTILL_CACHE``, default ``~/.cache/reasondistill``)."""
    return Path(os.environ.get("REASONDISTILL_CACHE", Path.home() / ".cache" / "reasondistill"))


#: the model kind each role needs, checked in ``validate`` for registered model names
ROLE_KINDS = {"teacher": "causal-lm", "student": "encoder"}


def resolve_model(ref: str, hooks: Any, domain: Any = None) -> str:
    """A path ``from_pretrained`` can load: materialise a registered model of ``hooks``' catalogue
    (for ``domain`` when given, see :meth:`ModelSource.materialize_for`), else pass through."""
    entry = hooks.catalogue.kind("model").get(ref)
    if entry is not None:
        target = cache_dir() / "models"
        target.mkdir(parents=True, exist_ok=True)
        try:
            source = entry.component
            return str(source.materialize(target) if domain is None else source.materialize_for(target, domain))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"model {ref!r} (plugin {entry.plugin!r}) could not be prepared: {exc}") from exc
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in ref:
        names = ", ".join(sorted(hooks.catalogue.kind("model")))
        raise ModelError(f"model {ref!r} is neither a registered model ({names}) nor a local folder")
    return ref  # a hub id: transformers resolves it (from its cache when offline)


def model_max_positions(ref: str | None, catalogue: Any) -> int | None:
    """The longest token sequence model ``ref`` reads, known without loading it: a registered
    model's declared ``max_positions``, or a local folder's ``config.json``; ``None`` when unknown
    (a hub id, a model that declares nothing)."""
    import json

    if not ref:
        return None
    entry = catalogue.kind("model").get(ref)
    if entry is not None:
        return getattr(entry.component, "max_positions", None)
    config = Path(ref).expanduser() / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            if isinstance(data.get(key), int):
                return data[key]
    return None
