"""Arguments whose name or form changed between the transformers versions reasondistill supports.

The declared lower bound (``transformers>=4.57.1``, pyproject) is tested by ``make test-min``;
each helper here names the version that changed the thing, so the branch can go when the bound
passes it. Detection reads what the installed library has (a dataclass field, a ``forward``
parameter) wherever it can, and the major version only where nothing else tells.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

import torch


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _training_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in fields(TrainingArguments)}


def checkpointing_arg(on: bool) -> dict[str, bool]:
    """Activation checkpointing under the name this transformers reads: ``activation_checkpointing``
    since 5.2x (``gradient_checkpointing`` is its deprecated alias there), the old name before."""
    name = "activation_checkpointing" if "activation_checkpointing" in _training_fields() else "gradient_checkpointing"
    return {name: on}


def length_grouping_arg(on: bool) -> dict[str, Any]:
    """Batches of similar length (``LengthGroupedSampler``): ``train_sampling_strategy:
    group_by_length`` since 5.x, the ``group_by_length`` flag before (4.57)."""
    if "train_sampling_strategy" in _training_fields():
        return {"train_sampling_strategy": "group_by_length"} if on else {}
    return {"group_by_length": on}


def warmup_arg(ratio: float) -> dict[str, float]:
    """A warmup given as a fraction of the steps: ``warmup_steps`` takes a float below 1 as a ratio
    since 5.0 (which dropped ``warmup_ratio``); 4.x wants an int there and the ratio in ``warmup_ratio``."""
    return {"warmup_ratio": ratio} if "warmup_ratio" in _training_fields() else {"warmup_steps": ratio}


def cache_argument(model: Any) -> str:
    """The name the model's ``forward`` takes its KV cache by: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier, e.g. 5.17, where a ``cache=`` keyword was silently ignored and the
    slot loop's attention saw one key instead of the whole buffer)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def per_query_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``allowed[b, q, k]`` as an encoder takes a per-query attention mask: transformers >= 5 reads
    a 4-D additive mask as it is; 4.x BERT rejects a 4-D mask, takes a 3-D 0/1 one and makes it
    additive itself."""
    if transformers_major() < 5:
        return allowed.to(dtype)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]
