"""The run store: ``runs/<name>/<stage>/`` folders, their manifests, and what a stage sees.

A stage is complete when its ``manifest.json`` exists, carries a valid self-checksum, and every
output it lists still matches its fingerprint. A stage folder without a manifest is work that was
cut off: when the stage hash is unchanged the stage resumes from it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .errors import ArtifactError, RecipeError
from .fingerprint import canonical_hash, fingerprint, write_json_atomic
from .model_refs import resolve_model
from .runtime import current

if TYPE_CHECKING:
    from .domain import Domain
    from .manager import Hooks
    from .recipe import Recipe

MANIFEST = "manifest.json"
STATE = ".state.json"
TRACKED_PACKAGES = ("reasondistill", "torch", "transformers", "trl", "peft", "datasets",
                    "accelerate", "pluggy", "pydantic")


@dataclass
class RunInfo:
    """A run's name, folder and recipe; passed to lifecycle hooks."""

    name: str
    dir: Path
    recipe: Recipe


@dataclass
class StageResult:
    """What a stage produced: output paths (relative to its folder) and metrics."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def write_manifest(stage_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically with a checksum over its own content."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    write_json_atomic(stage_dir / MANIFEST, {**body, "checksum": canonical_hash(body)})


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The manifest, or None when absent; an edited or corrupt manifest raises ArtifactError."""
    path = stage_dir / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: manifest is not valid JSON ({exc})") from None
    body = {k: v for k, v in data.items() if k != "checksum"}
    if not isinstance(data, dict) or data.get("checksum") != canonical_hash(body):
        raise ArtifactError(f"{path}: manifest checksum does not match its content (edited by hand?)")
    return data


def verify_outputs(stage_dir: Path, manifest: dict[str, Any]) -> str | None:
    """None when every listed output matches its fingerprint, else a reason naming the output."""
    for name, entry in manifest.get("outputs", {}).items():
        path = stage_dir / entry["path"]
        if not path.exists():
            return f"output {name!r} ({path}) is missing"
        if fingerprint(path) != entry["fingerprint"]:
            return f"output {name!r} ({path}) does not match its fingerprint"
    return None


@dataclass
class StageContext:
    """Everything a running stage may use. Stages write only under ``dir``."""

    name: str
    dir: Path
    run: RunInfo
    hooks: Hooks
    domain: Domain
    resuming: bool
    produced: dict[str, dict[str, Path]]  # earlier stage -> output name -> absolute path
    input_map: dict[str, str] = field(default_factory=dict)
    stage_seed: int | None = None  # the stage's own ``seed``, where its spec sets one

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    @property
    def seed(self) -> int:
        return self.run.recipe.seed if self.stage_seed is None else self.stage_seed

    @property
    def runtime(self) -> Any:
        """Device, dtype, attention kernel and threads of this run (:mod:`reasondistill.runtime`)."""
        return current()

    def has_input(self, name: str) -> bool:
        try:
            self.input(name)
            return True
        except ArtifactError:
            return False

    def input(self, name: str) -> Path:
        """The path of an earlier output: the stage ``inputs`` names, else the latest of that name.

        ``stage.output`` names one stage's output directly.
        """
        stage, dot, out = name.partition(".")
        if dot and stage in self.produced:
            if out not in self.produced[stage]:
                raise ArtifactError(f"stage {self.name!r}: stage {stage!r} has no output {out!r}")
            return self.produced[stage][out]
        if name in self.input_map:
            stage, _, out = self.input_map[name].partition(".")
            out = out or name
            try:
                return self.produced[stage][out]
            except KeyError:
                raise ArtifactError(f"stage {self.name!r}: input {name!r} expects output {out!r} of "
                                    f"stage {stage!r}, which it did not produce") from None
        for outputs in reversed(list(self.produced.values())):
            if name in outputs:
                return outputs[name]
        raise ArtifactError(f"stage {self.name!r} needs an input {name!r}, but no earlier stage produced one")

    def load_dataset(self, name: str) -> Any:
        from datasets import load_from_disk

        # in memory: map/select must never write cache files into an earlier stage's output
        return load_from_disk(str(self.input(name)), keep_in_memory=True)

    def model(self, role: str) -> str:
        """The local folder (or hub id) of the model the recipe assigns to ``role``."""
        ref = self.recipe.models.get(role)
        if ref is None:
            raise RecipeError(f"models.{role}", f"stage {self.name!r} needs a {role} model; set models.{role}")
        return resolve_model(ref, self.hooks, self.domain)

    def progress(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it") -> Any:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=f"{self.name}: {desc}".rstrip(": "), unit=unit, dynamic_ncols=True)


def clear_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def discard_if_empty(stage_dir: Path, run_dir: Path) -> None:
    """After a stage failed: remove its folder when it holds no work (only the state file, stale
    temp files, empty folders), and the run folder when no stage folder is left in it. Work a rerun
    can resume from (annotation shards, checkpoints, a trained teacher) is never touched."""
    import shutil

    def holds_work(folder: Path) -> bool:
        return any(p.is_file() and p.name != STATE and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                   for p in folder.rglob("*"))

    if stage_dir.is_dir() and not holds_work(stage_dir):
        shutil.rmtree(stage_dir)
    if run_dir.is_dir() and not any(p.is_dir() for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)
