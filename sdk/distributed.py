"""Multi-process helpers: under ``torchrun``/``accelerate launch`` every rank runs the recipe.

Stages marked ``distributed = True`` split their work across ranks; every other stage runs on
the main process while the others wait. On CPU the process group uses gloo
(``PartialState(cpu=True)``; without it each CPU rank believes it is alone).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def state() -> Any | None:
    """accelerate's ``PartialState`` when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


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
