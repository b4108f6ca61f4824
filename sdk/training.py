"""The student trainer: ``transformers.Trainer`` with a pluggable distillation loss.

Subclassing ``Trainer`` (rather than a hand-written loop) is what makes ``accelerate launch``,
checkpoints, ``resume_from_checkpoint`` and ``report_to`` work unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from .views import ReplicatedStudent, present, unprefixed
from .views import key as view_key


class PairCollator:
    """Pads each view dynamically (to the longest row of the batch), keeps labels and soft targets.

    ``views`` defaults to every view found in the rows (layout: :mod:`reasondistill.views`);
    per-row integers of a view (the shared view's ``split``) become a 1-D tensor.
    """

    def __init__(self, tokenizer: Any, views: tuple[str, ...] | None = None):
        self.tokenizer, self.views = tokenizer, views

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        views = self.views or present(rows[0])
        for view in views:
            feats = [unprefixed(view, r) for r in rows]
            scalars = [k for k in feats[0] if not isinstance(feats[0][k], (list, tuple))]
            for name in scalars:
                batch[view_key(view, name)] = torch.tensor([f.pop(name) for f in feats])
            padded = self.tokenizer.pad(feats, return_tensors="pt")
            batch.update({view_key(view, k): v for k, v in padded.items()})
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        if rows[0].get("label_probs") is not None:
            batch["label_probs"] = torch.tensor([r["label_probs"] for r in rows], dtype=torch.float32)  # runtime: a target
        if rows[0].get("weight") is not None:
            batch["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)  # runtime: a loss weight
        return batch


@dataclass
class DistillConfig(TrainingArguments):
    """The arguments of :class:`DistillTrainer` (trl's convention: one config class beside each
    trainer). Its defaults are what every student run needs: the losses read columns the model's
    signature does not name (views, ``label_probs``, ``weight``), in-batch InfoNCE needs full
    batches, and two checkpoints are enough to resume."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "the losses read the view columns"})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "InfoNCE negatives: full batches only"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept for resume"})
    dataloader_num_workers: int = 0


class DistillTrainer(Trainer):
    """Calls ``loss.compute(student, batch, options)`` and logs each returned term separately."""

    def __init__(self, *args: Any, loss: Any, loss_options: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.distill_loss, self.loss_options = loss, loss_options
        self._terms: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = ReplicatedStudent(model)
        out = self.distill_loss.compute(model, inputs, self.loss_options)
        if model.training:
            for key, value in out.items():
                if key not in ("loss", "logits") and torch.is_tensor(value) and value.dim() == 0:
                    self._terms[key].append(float(value))
        return (out["loss"], {"logits": out["logits"]}) if return_outputs else out["loss"]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._terms.items():
            if values:
                logs[f"loss_{key}"] = round(sum(values) / len(values), 5)
        self._terms.clear()
        super().log(logs, *args, **kwargs)
