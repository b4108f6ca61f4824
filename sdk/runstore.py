"""The run store: ``runs/<name>/<stage>/`` folders over their life, and their manifests.

A stage is complete when its ``manifest.json`` exists, carries a valid self-checksum, and every
output it lists still matches its fingerprint. A stage folder without a manifest is work that was
cut off: when the stage hash is unchanged the stage resumes from it. :class:`StageFolder` owns
that life (up to date?, begin, finish, the result a manifest records, discard); the engine decides
which stage runs when and calls it.
"""

from __future__ import annotations

import json
import logging
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .fingerprint import canonical_hash, fingerprint, write_json_atomic
from .stage_context import StageResult

MANIFEST = "manifest.json"
STATE = ".state.json"
log = logging.getLogger("reasondistill")
TRACKED_PACKAGES = ("reasondistill", "torch", "transformers", "trl", "peft", "datasets",
                    "accelerate", "pluggy", "pydantic")


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


def result_from_manifest(manifest: dict[str, Any], skipped: bool = False) -> StageResult:
    """The :class:`StageResult` a manifest records."""
    return StageResult(outputs={k: v["path"] for k, v in manifest.get("outputs", {}).items()},
                       metrics=manifest.get("metrics", {}), skipped=skipped,
                       seconds=manifest.get("timings", {}).get("seconds", 0.0))


class StageFolder:
    """One stage's folder, ``runs/<run>/<stage>/``, from the check that skips it to its manifest."""

    def __init__(self, run_dir: Path, name: str):
        self.run_dir, self.name, self.dir = run_dir, name, run_dir / name

    def up_to_date(self, digest: str) -> StageResult | None:
        """The recorded result when the folder holds a complete stage of hash ``digest``; None when
        it must run (no manifest, another hash, an edited manifest, an output changed or gone)."""
        try:
            manifest = read_manifest(self.dir)
        except ArtifactError as exc:
            log.warning("%s; recomputing the stage", exc)
            return None
        if manifest is None or manifest.get("hash") != digest:
            return None
        problem = verify_outputs(self.dir, manifest)
        if problem:
            log.warning("stage %s: %s; recomputing", self.name, problem)
            return None
        return result_from_manifest(manifest, skipped=True)

    def can_resume(self, digest: str) -> bool:
        """A folder left by an interrupted run of the same stage hash is resumed, not wiped."""
        state = self.dir / STATE
        if not state.exists() or (self.dir / MANIFEST).exists():
            return False
        try:
            return json.loads(state.read_text()).get("hash") == digest
        except (ValueError, OSError):
            return False

    def begin(self, digest: str, resuming: bool) -> None:
        """Make the folder ready (emptied unless ``resuming``; a killed run's half-written atomic
        files removed) and mark it running with ``digest``, so an interruption can resume."""
        if not resuming:
            clear_dir(self.dir)
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        write_json_atomic(self.dir / STATE, {"hash": digest, "status": "running"})

    def finish(self, result: StageResult, record: dict[str, Any]) -> None:
        """Fingerprint every output the stage reported and write the manifest (``record`` plus the
        outputs and metrics); the stage is complete from here on."""
        outputs = {}
        for out_name, rel in result.outputs.items():
            path = self.dir / rel
            if not path.exists():
                raise ArtifactError(f"stage {self.name!r} reported output {out_name!r} at {path}, which does not exist")
            outputs[out_name] = {"path": str(rel), "fingerprint": fingerprint(path)}
        write_manifest(self.dir, {**record, "outputs": outputs, "metrics": result.metrics, "versions": package_versions()})
        (self.dir / STATE).unlink(missing_ok=True)

    def recorded_result(self) -> StageResult:
        """What the manifest records (another process finished the stage), empty when none."""
        return result_from_manifest(read_manifest(self.dir) or {})

    def discard_if_empty(self) -> None:
        """After a stage failed: remove its folder when it holds no work (only the state file, stale
        temp files, empty folders), and the run folder when no stage folder is left in it. Work a rerun
        can resume from (annotation shards, checkpoints, a trained teacher) is never touched."""
        def holds_work(folder: Path) -> bool:
            return any(p.is_file() and p.name != STATE and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                       for p in folder.rglob("*"))

        if self.dir.is_dir() and not holds_work(self.dir):
            shutil.rmtree(self.dir)
        if self.run_dir.is_dir() and not any(p.is_dir() for p in self.run_dir.iterdir()):
            shutil.rmtree(self.run_dir)


def clear_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
