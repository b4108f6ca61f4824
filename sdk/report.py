"""Run summaries: the table ``reasondistill show`` prints, read from the stage manifests."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ArtifactError
from .runstore import read_manifest


def run_stages(run_dir: Path) -> list[tuple[str, dict | None]]:
    """(stage name, manifest or None when unfinished) in recipe order."""
    recipe_path = run_dir / "recipe.json"
    if not recipe_path.exists():
        raise ArtifactError(f"{run_dir}: not a run folder (no recipe.json)")
    recipe = json.loads(recipe_path.read_text(encoding="utf-8"))
    names = [s.get("name") or s["uses"] for s in recipe["stages"]]
    return [(n, read_manifest(run_dir / n)) for n in names]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def verdict_lines(run_dir: Path) -> list[str]:
    """The one-line verdicts stages left in their metrics (``verdict_line``: the quality gate)."""
    return [m["metrics"]["verdict_line"] for _, m in run_stages(run_dir)
            if m and isinstance(m.get("metrics", {}).get("verdict_line"), str)]


def run_table(run_dir: Path) -> str:
    """A plain-text table: stage, component, seconds and scalar metrics."""
    rows = [("stage", "uses", "status", "seconds", "metrics")]
    for name, manifest in run_stages(run_dir):
        if manifest is None:
            rows.append((name, "?", "not finished", "", ""))
            continue
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in manifest.get("metrics", {}).items()
                            if isinstance(v, (int, float)))
        rows.append((name, manifest["uses"], "complete", f"{manifest['timings']['seconds']:.1f}", metrics))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(r[i].ljust(widths[i]) for i in range(4)) + " | " + r[4] for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 7)
    return "\n".join(lines)
