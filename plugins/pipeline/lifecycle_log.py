"""Prints one line per finished stage: the run's heartbeat on the terminal."""

from __future__ import annotations

import sys

from reasondistill import hookimpl


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@hookimpl
def on_stage_end(run, stage, result):
    status = "up to date" if result.skipped else f"done in {result.seconds:.1f}s"
    shown = [(k, v) for k, v in result.metrics.items() if isinstance(v, (int, float))][:6]
    metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in shown)
    print(f"[{run.name}] {stage}: {status}" + (f" ({metrics})" if metrics else ""), file=sys.stderr)
