"""Reward vectors checked at the source, and the default way one becomes a scalar."""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import PluginError


def checked_score(plugin: str, dim: str, value: Any) -> float:
    """A reward score as a float in [0, 1]; anything else is the plugin's error, named.

    Checked at the source: a NaN or a 5.0 accepted here used to flow into preference margins,
    metrics and manifests (as non-standard JSON ``NaN``) with every stage marked complete.
    """
    # numbers.Real takes numpy's float32/float64 and ints too; a bool or a string is a mistake
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PluginError(plugin, "score_reasoning", f"dimension {dim!r}: score {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise PluginError(plugin, "score_reasoning", f"dimension {dim!r}: score {value!r} is outside [0, 1]")
    return float(value)


def aggregate_by_weights(scores: dict[str, float], weights: dict[str, float]) -> float:
    """The default aggregation: mean of the dimensions weighted by ``weights`` (default 1.0)."""
    if not scores:
        return 0.0
    total = sum(weights.get(k, 1.0) for k in scores)
    return sum(v * weights.get(k, 1.0) for k, v in scores.items()) / total if total else 0.0
