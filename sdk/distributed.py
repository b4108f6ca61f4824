"""Multi-process helpers: under ``torchrun``/``accelerate launch`` every rank runs the recipe.

Stages marked ``distributed = True`` run on every rank (training stages: DDP through the
Trainer; annotation: shards split by rank) and write their outputs from the main process; every
other stage runs on the main process while the others wait. On CPU the process group uses gloo
(``PartialState(cpu=True)``; without it each CPU rank believes it is alone).
"""

from __future__ import annotations

import atexit
import os
from functools import lru_cache
from typing import Any, Callable, TypeVar

T = TypeVar("T")


@lru_cache(maxsize=1)
def state() -> Any | None:
    """accelerate's ``PartialState`` when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    made = PartialState(cpu=not torch.cuda.is_available())
    atexit.register(close)
    return made


def close() -> None:
    """Tear this rank's process group down before the interpreter does.

    Left to interpreter exit, torch destroys the group's threads during finalization, and under
    load a rank that had written all its outputs aborted there ("terminate called without an
    active exception", exit -6), failing the launch. Registered at exit by ``state``; safe to call
    twice. No barrier: a rank that failed must not wait for one that is still working.
    """
    if state.cache_info().currsize == 0 or state() is None:
        return
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()


def rank() -> int:
    s = state()
    return s.process_index if s else 0


def world() -> int:
    s = state()
    return s.num_processes if s else 1


def local_rank() -> int:
    """This process's index on its machine (which GPU it takes)."""
    s = state()
    return s.local_process_index if s else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    s = state()
    if s is not None:
        s.wait_for_everyone()


def check_replicas(model: Any, what: str) -> None:
    """After training on several ranks, every rank must hold the same weights (DDP averages the
    gradients); a rank that trained on its own, e.g. a loss that ran the student outside DDP's
    ``forward``, would leave the main process saving a model that saw half the data. Compares a
    float64 sum and sum of squares of the parameters across ranks; raises naming ``what``."""
    if state() is None:
        return
    import torch
    import torch.distributed as tdist

    with torch.no_grad():
        params = [p.detach().double() for p in model.parameters()]
        digest = (float(sum(p.sum() for p in params)), float(sum((p * p).sum() for p in params)))
    digests: list[Any] = [None] * world()
    tdist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"{what}: the ranks ended training with different weights {digests}; their gradients "
                           "were not averaged (was the model run outside DistributedDataParallel's forward?)")


def all_gather(value: T) -> list[T]:
    """``value`` from every rank, in rank order (``[value]`` without processes); picklable values."""
    if state() is None:
        return [value]
    import torch.distributed as tdist

    out: list[Any] = [None] * world()
    tdist.all_gather_object(out, value)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on the main process only, its (picklable) result handed to every rank.

    For the single-process part of a distributed stage: sampling preference candidates with the
    teacher before DPO trains on every rank. Without processes it is just ``fn()``.
    """
    if state() is None:
        return fn()
    import torch.distributed as tdist

    failure: BaseException | None = None
    box: list[Any] = [None]
    if is_main():
        try:
            box = [("ok", fn())]
        except BaseException as exc:  # the other ranks must not wait for a result that never comes
            failure, box = exc, [("failed", f"{type(exc).__name__}: {exc}")]
    tdist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    status, value = box[0]
    if status == "failed":
        raise RuntimeError(f"the main process failed: {value}")
    return value
