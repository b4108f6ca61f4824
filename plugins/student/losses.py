"""Distillation losses: ``crsd`` (the paper), ``ce`` (baseline) and ``kd`` (logit distillation).

Each returns a dict of named terms; the trainer logs every term on its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from reasondistill import DistillLoss, Options, hookimpl
from reasondistill.views import STANDARD, forward_view, forward_views, weighted_mean


def _targets_ce(logits: torch.Tensor, batch: dict[str, Any], soft: bool) -> torch.Tensor:
    if soft and "label_probs" in batch:
        return weighted_mean(-(batch["label_probs"] * F.log_softmax(logits, -1)).sum(-1), batch)
    return weighted_mean(F.cross_entropy(logits, batch["labels"], reduction="none"), batch)


class CEOptions(Options):
    soft_targets: bool = Field(False, description="train on the teacher's label_probs instead of hard labels")


class CrossEntropy(DistillLoss):
    name = "ce"
    description = "Cross-entropy on the standard view only (the baseline)."
    Options = CEOptions

    def compute(self, student, batch, options: CEOptions):
        logits, _ = forward_view(student, batch, STANDARD)
        loss = _targets_ce(logits, batch, options.soft_targets)
        return {"loss": loss, "ce_std": loss.detach(), "logits": logits}


class KDOptions(Options):
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label CE; 1-alpha goes to KL")
    temperature: float = Field(2.0, gt=0,
        description="softening temperature of the teacher's and the student's label distributions")


class LogitKD(DistillLoss):
    name = "kd"
    description = "CE plus KL divergence to the teacher's label probabilities (Hinton KD)."
    Options = KDOptions
    uses_label_probs = True

    def compute(self, student, batch, options: KDOptions):
        logits, _ = forward_view(student, batch, STANDARD)
        ce = _targets_ce(logits, batch, soft=False)
        if "label_probs" in batch:
            t = options.temperature
            teacher = batch["label_probs"].clamp_min(1e-8) ** (1.0 / t)
            teacher = teacher / teacher.sum(-1, keepdim=True)
            kl = weighted_mean(F.kl_div(F.log_softmax(logits / t, -1), teacher, reduction="none").sum(-1), batch) * t * t
        else:  # no teacher probabilities: KD reduces to CE
            kl = torch.zeros((), device=logits.device)
        loss = options.alpha * ce + (1 - options.alpha) * kl
        return {"loss": loss, "ce_std": ce.detach(), "kl": kl.detach(), "logits": logits}


class CRSDOptions(Options):
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature")
    w_std: float = Field(1.0, ge=0, description="weight of CE on the standard view")
    w_reasoning: float = Field(1.0, ge=0, description="weight of CE on the reasoning view")
    w_nce: float = Field(0.5, ge=0, description="weight of the in-batch InfoNCE")
    w_point: float = Field(0.0, ge=0, description="weight of a pointwise (1 - cosine) alignment term")
    w_kl: float = Field(0.0, ge=0, description="weight of KL(p(.|x,r) || p(.|x)): the standard view's label "
                        "distribution pulled towards the reasoning view's (a detached target)")
    symmetric: bool = Field(False, description="average InfoNCE over both directions")
    stop_gradient: bool = Field(False, description="no alignment gradient into the reasoning view")
    projection: int = Field(0, ge=0, description="size of a projection head before InfoNCE (0 = none)")
    soft_targets: bool = Field(False, description="CE against the teacher's label_probs")


class CRSD(DistillLoss):
    """Contrastive Reasoning Self-Distillation (arXiv 2510.11056, Figure 3).

    One encoder and head see (query, item) and (query, item, reasoning). Loss = CE on both views
    plus an in-batch InfoNCE whose positives are each standard [CLS] and its own reasoning [CLS].
    """

    name = "crsd"
    description = "CE on both views + in-batch InfoNCE between standard and reasoning [CLS] (the paper)."
    Options = CRSDOptions
    needs_reasoning = True

    def extra_modules(self, hidden: int, options: CRSDOptions) -> dict[str, torch.nn.Module]:
        if not options.projection:
            return {}
        return {"crsd_projection": torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, options.projection))}

    def compute(self, student, batch, options: CRSDOptions):
        (logits, cls), (r_logits, r_cls) = forward_views(student, batch)
        ce_std = _targets_ce(logits, batch, options.soft_targets)
        ce_rsn = _targets_ce(r_logits, batch, options.soft_targets)
        if options.stop_gradient:
            r_cls = r_cls.detach()
        if options.projection:
            proj = student.extra["crsd_projection"]
            cls, r_cls = proj(cls), proj(r_cls)
        z, zr = F.normalize(cls, dim=-1), F.normalize(r_cls, dim=-1)
        # under several processes the negatives are the global batch's: every rank's reasoning
        # [CLS] (gathered with their gradients), so N ranks x b rows train as one batch of N x b
        zr_all, offset = gather_across_ranks(zr)
        sim = z @ zr_all.T / options.temperature
        target = torch.arange(sim.size(0), device=sim.device) + offset
        nce = F.cross_entropy(sim, target, reduction="none")
        if options.symmetric:
            z_all, _ = gather_across_ranks(z)
            back = F.cross_entropy(zr @ z_all.T / options.temperature, target, reduction="none")
            nce = 0.5 * (nce + back)
        nce = weighted_mean(nce, batch)
        point = weighted_mean(1 - (z * zr).sum(-1), batch)
        kl = weighted_mean(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(r_logits.detach(), -1), reduction="none",
                                    log_target=True).sum(-1), batch)
        loss = (options.w_std * ce_std + options.w_reasoning * ce_rsn + options.w_nce * nce + options.w_point * point
                + options.w_kl * kl)
        return {"loss": loss, "ce_std": ce_std.detach(), "ce_reasoning": ce_rsn.detach(), "infonce": nce.detach(),
                "pointwise": point.detach(), "kl_views": kl.detach(), "logits": logits}


def gather_across_ranks(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` of every rank stacked in rank order, and where this rank's rows start; ``(x, 0)`` in
    one process. Differentiable (``torch.distributed.nn``): each rank's rows get the gradients of
    every rank's loss, which DDP's averaging turns into the one-process gradient of the global mean."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts), sum(p.size(0) for p in parts[:tdist.get_rank()])


@hookimpl
def register_distill_losses(register):
    for loss in (CRSD(), CrossEntropy(), LogitKD()):
        register(loss)
