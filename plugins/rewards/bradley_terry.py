"""The Bradley-Terry loss of the learned reward model, one head per reward dimension, and how a
preference batch splits into its chosen and rejected sides."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(sign * (r_c - r_r)) over the (pair, dimension) cells where sign != 0."""
    mask = sign != 0
    if not mask.any():
        return (r_chosen.sum() * 0.0)
    return -F.logsigmoid((sign * (r_chosen - r_rejected))[mask]).mean()


def side_view(batch: dict[str, torch.Tensor], side: str) -> dict[str, torch.Tensor]:
    return {k[len(side) + 1:]: v for k, v in batch.items() if k.startswith(side + "_")}
