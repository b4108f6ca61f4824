"""Annotating a dataset shard by shard: fixed shards by position, each written atomically as soon as its
rows are back, complete shards kept on a rerun, every ``world``-th shard per rank, so 1 and N
processes give the same annotations and an interruption loses at most one shard of work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reasondistill import distributed as dist
from reasondistill.errors import DataError
from reasondistill.fingerprint import fingerprint, portable_ref
from reasondistill.generators import (
    accounting_delta,
    accounting_sum,
)
from reasondistill.plugins.annotation.parse_health import ParseHealthOptions, ParseMonitor
from reasondistill.plugins.annotation.shards import check_teacher, read_seconds, read_shard, write_shard


def identify_teacher(ctx, teacher: str) -> str:
    """``<model ref or run-relative folder>@<content fingerprint>``: the same teacher reads the same anywhere."""
    path = Path(teacher)
    if not teacher or not path.exists():
        return teacher
    try:
        name = path.resolve().relative_to(ctx.run.dir.resolve()).as_posix()
    except ValueError:
        name = portable_ref(ctx.recipe.models.get("teacher", path.name)).split("@")[0]
    files = [p for p in (path / "config.json", path / "model.safetensors") if p.exists()]
    digest = "+".join(fingerprint(p)[7:19] for p in files)
    return f"{name}@{digest}" if digest else name


def check_failed_share(failed: int, pairs: int, max_failed_share: float, new: list[dict], folder: Path) -> None:
    """Stops the stage (``DataError``) once more than ``max_failed_share`` of the ``pairs`` done now
    have failed in the backend; a share equal to the limit goes on."""
    if failed > max_failed_share * pairs:
        last = next((r["error"] for r in reversed(new) if r["error"]), "in an earlier shard")
        raise DataError(f"annotate: {failed} of {pairs} rows failed in the teacher's backend, more than "
                        f"max_failed_share {max_failed_share:g} (last error: {last}); the shards are kept in "
                        f"{folder}: rerun to resume, only the failed rows are redone")


def annotate_sharded(ctx, annotator, data, teacher: str, options, shard_size: int, folder: Path,
                     max_failed_share: float = 1.0, monitor: ParseMonitor | None = None) -> dict[str, float]:
    """Annotate every shard this rank owns that is missing, corrupt or holds failed rows.

    Each shard is written atomically as soon as its rows are back; a rerun keeps the complete ones
    and, in a shard with rows that failed in the backend, redoes only those rows. The stage stops
    (work kept) once more than ``max_failed_share`` of the rows done now have failed: a dead server
    is reported after one shard, not after every request has spent its retries. ``monitor`` counts
    the parsed answers (of the kept shards too), shows the share in the progress bar, and stops the
    stage after a shard that leaves it below ``min_parse_rate``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = (len(data) + shard_size - 1) // shard_size
    size = {s: min(shard_size, len(data) - s * shard_size) for s in range(n_shards)}
    mine = [s for s in range(n_shards) if s % dist.world() == dist.rank()]
    kept = {s: read_shard(folder, s) for s in mine}
    todo = [s for s in mine if kept[s] is None or any(r.get("error") for r in kept[s])]
    bar = ctx.progress(total=sum(size[s] for s in mine), desc="annotate", unit="pair")
    bar.update(sum(size[s] for s in mine if s not in todo)
               + sum(1 for s in todo for r in (kept[s] or []) if not r.get("error")))
    ids: dict[str, str] = {}
    started, tokens, pairs, failed = time.time(), 0, 0, 0
    spent_before = annotator.usage()
    monitor = monitor or ParseMonitor("annotate", ParseHealthOptions(min_parse_rate=0))
    for s in mine:  # a resumed stage counts what it kept
        answered = [r for r in kept[s] or [] if not r.get("error")]
        monitor.add([r.get("parse_ok", False) for r in answered], [r.get("new_tokens", 0) for r in answered])
    for s in todo:
        new = annotate_shard(ctx, annotator, data.select(range(s * shard_size, s * shard_size + size[s])), kept[s],
                             folder, s, teacher, options, ids)
        tokens += sum(r.get("new_tokens", 0) for r in new)
        pairs += len(new)
        failed += sum(1 for r in new if r["error"])
        answered = [r for r in new if not r["error"]]
        monitor.add([r.get("parse_ok", False) for r in answered], [r.get("new_tokens", 0) for r in answered])
        bar.update(len(new))
        show_speed(bar, time.time() - started, pairs, tokens, failed, monitor.rate,
                   accounting_delta(spent_before, annotator.usage()).get("total", {}))
        try:
            check_failed_share(failed, pairs, max_failed_share, new, folder)
            monitor.check()
        except DataError:
            bar.close()
            raise
    bar.close()
    dist.barrier()
    spent = accounting_sum(dist.all_gather(accounting_delta(spent_before, annotator.usage())))  # every rank's
    return {"seconds_now": time.time() - started, "tokens_now": tokens, "pairs_now": pairs, "failed_now": failed,
            "spent": spent}


def annotate_shard(ctx, annotator, shard, kept: list[dict] | None, folder: Path, index: int, teacher: str, options,
                   ids: dict[str, str]) -> list[dict[str, Any]]:
    """Annotate the rows of shard ``index`` that are missing or failed, write the whole shard
    atomically, and return the rows annotated now. ``ids`` caches each teacher's fingerprint."""
    size = len(shard)
    rows = kept or [None] * size
    redo = [i for i, r in enumerate(rows) if r is None or r.get("error")]
    started = time.time()
    new = annotator.annotate(ctx, shard.select(redo) if len(redo) < size else shard, teacher, options).to_list()
    kept_seconds = read_seconds(folder, index) * (size - len(redo)) / size
    for i, r in zip(redo, new):
        r.setdefault("error", None)
        given = r.get("teacher", "")
        if given not in ids:  # fingerprinting the weights once per stage, not once per row
            ids[given] = identify_teacher(ctx, given)
        r["teacher"] = ids[given]
        rows[i] = r
    check_teacher(folder, rows)
    write_shard(folder, index, rows, kept_seconds + time.time() - started)
    return new


def show_speed(bar, elapsed: float, pairs: int, tokens: int, failed: int, parsed: float, spent: dict[str, Any]) -> None:
    """Pairs and tokens a second, failures, the parse rate, and a served teacher's retries and cost."""
    elapsed = max(1e-9, elapsed)
    bar.set_postfix(pairs_s=f"{pairs / elapsed:.2f}", tok_s=f"{tokens / elapsed:.1f}", failed=failed, parsed=f"{parsed:.0%}",
                    **({"retried": sum(v for k, v in spent.items() if k.startswith("errors_"))} if spent else {}),
                    **({"cost": f"{spent['cost']:.4f}"} if "cost" in spent else {}))
