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
    """The one-line verdicts stages left in their metrics: the quality gate's (``verdict_line``) and
    each gated student's ship check (``ship_check_line``)."""
    return [m["metrics"][key] for _, m in run_stages(run_dir) if m
            for key in ("verdict_line", "ship_check_line") if isinstance(m.get("metrics", {}).get(key), str)]


#: the headline numbers of a stage, first found first; ``show --all`` prints every metric
HEADLINES = ("dev_macro_f1", "dev_accuracy", "teacher_macro_f1", "teacher_parse_rate", "parse_rate", "pairs", "dev",
             "train_rows", "steps", "agreement_int8", "latency_ms_student_onnx_int8", "rows", "pairs_per_s")


def run_table(run_dir: Path, full: bool = False) -> str:
    """A plain-text table: stage, component, status, seconds, and the stage's two or three headline
    numbers (every scalar metric with ``full``)."""
    rows = [("stage", "uses", "status", "seconds", "metrics")]
    for name, manifest in run_stages(run_dir):
        if manifest is None:
            rows.append((name, "?", "not finished", "", ""))
            continue
        scalars = {k: v for k, v in manifest.get("metrics", {}).items() if isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        shown = scalars if full else {k: scalars[k] for k in HEADLINES if k in scalars}
        if not full:
            shown = dict(list(shown.items())[:3])
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        rows.append((name, manifest["uses"], "complete", f"{manifest['timings']['seconds']:.1f}", metrics))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(r[i].ljust(widths[i]) for i in range(4)) + " | " + r[4] for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 7)
    return "\n".join(lines)


def run_json(run_dir: Path) -> str:
    """Every finished stage's metrics, seconds and status, as JSON (``show --json``)."""
    out = {name: ({"uses": m["uses"], "status": "complete", "seconds": m["timings"]["seconds"],
                   "metrics": m.get("metrics", {})} if m else {"status": "not finished"})
           for name, m in run_stages(run_dir)}
    return json.dumps(out, indent=1, default=str)


#: below this share of parsed answers a finished stage gets a plain-words warning (``on_low_parse: warn``)
LOW_PARSE = 0.5


def warning_lines(run_dir: Path) -> list[str]:
    """What a person should know before using the run, in plain words: a class the teacher never
    annotated or the student never predicts, a low parse rate."""
    lines = []
    for name, m in run_stages(run_dir):
        if not m:
            continue
        metrics = m.get("metrics", {})
        for key in ("parse_rate", "teacher_parse_rate", "dev_parse_rate"):
            rate = metrics.get(key)
            if isinstance(rate, (int, float)) and rate < LOW_PARSE:
                lines.append(f"warning: {name}: only {rate:.0%} of the teacher's answers parsed ({key})")
        if metrics.get("dev_queries_in_train"):
            lines.append(f"warning: {name}: {metrics['dev_queries_in_train']} dev queries also occur in the training "
                         "pairs: dev figures are optimistic (hold out whole queries: dev_fraction, or a disjoint dev_source)")
        if metrics.get("duplicate_pairs"):
            lines.append(f"warning: {name}: {metrics['duplicate_pairs']} training pairs repeat a (query, item) pair "
                         "already seen: they weigh more in training")
        if m.get("uses") == "annotate" and metrics.get("pairs"):
            never = [k.removeprefix("share_") for k, v in metrics.items() if k.startswith("share_") and v == 0]
            for label in never:
                lines.append(f"warning: {name}: the teacher never labelled a pair {label.replace('_', ' ')!r} "
                             f"(0 of {metrics['pairs']}); a student trained on these labels cannot learn it")
            if metrics.get("label_probs_share", 1) < 1:
                lines.append(f"warning: {name}: label probabilities for {100 * metrics['label_probs_share']:.0f}% of "
                             "the rows only (a server without logprobs): the others record none")
        predictions = m.get("outputs", {}).get("dev_predictions")
        if predictions:
            lines += _never_predicted(name, run_dir / name / predictions["path"])
    return lines


def _never_predicted(stage: str, path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    predicted = set(data.get("pred", []))
    return [f"warning: {stage}: the student never predicts {label!r} on the {len(data['pred'])} dev pairs "
            f"({sum(1 for g in data.get('gold', []) if g == i)} of them are {label!r}): its F1 for it is 0"
            for i, label in enumerate(data.get("labels", [])) if i not in predicted]
