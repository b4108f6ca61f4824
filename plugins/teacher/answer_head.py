"""The teacher's SFT loss with the output head run only at the positions the loss reads.

Why it exists: a completion-only SFT row is mostly prompt, and the prompt's logits are thrown away.
trl's SFTTrainer (1.x) scores only the answer positions with its Triton kernel on CUDA, but on
other devices it scores every position, recomputes them in the backward pass and accumulates the
gradient in fp32 (even under bf16); trl 0.x builds the full ``(batch, length, vocabulary)`` logits.
On SmolLM2-135M (vocabulary 49,152, hidden 576) the head is the largest single matrix of a step, so
on a CPU that is a large share of the teacher's budget. Nothing in trl, transformers or peft offers
"head at these positions only" for padded batches (``logits_to_keep`` keeps one set of positions for
the whole batch), hence this subclass.

How: a forward pre-hook on the model's output embeddings hands the head only the hidden states whose
next token is a trained label, so the model's own forward still applies whatever it does after the
head (logit scaling, soft-capping); the loss is the same token-level cross-entropy as trl's
(summed, divided by the batch's label count, or by ``num_items_in_batch`` under gradient
accumulation, as ``Trainer`` does).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer


class AnswerHeadSFTTrainer(SFTTrainer):
    """trl's SFTTrainer; while training off CUDA/XPU (a CPU), logits only at the answer positions.

    :param answer_head_only: false gives trl's own loss everywhere (to compare, or for a model whose
        forward does not call its output embeddings as a module).
    """

    def __init__(self, *args: Any, answer_head_only: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answer_head_only = answer_head_only

    def uses_answer_head(self, model: Any) -> bool:
        """On CUDA and XPU trl 1.x already scores answers only (in tiles, without the logits in memory);
        other loss variants (label smoothing, DFT, a custom loss, MoE aux loss) stay with trl."""
        return (self.answer_head_only and model.training and self.accelerator.device.type not in ("cuda", "xpu")
                and getattr(self.args, "loss_type", "nll") == "nll" and self.label_smoother is None
                and getattr(self, "compute_loss_func", None) is None and not getattr(self, "aux_loss_enabled", False))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or "labels" not in inputs or not self.uses_answer_head(model):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = {**inputs, "use_cache": False}
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        mask = targets != -100
        with head_at(self.accelerator.unwrap_model(model), mask):
            logits = model(**inputs).logits
        if logits.dim() == 3:  # the head was not called as a module: select the positions here
            logits = logits[:, :-1][mask]
        picked = targets[mask]
        loss = F.cross_entropy(logits.float(), picked, reduction="sum")
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices:  # as Trainer.compute_loss: DDP averages the gradients
                loss = loss * self.accelerator.num_processes
        else:  # Trainer divides by the accumulation steps itself
            loss = loss / mask.sum().clamp(min=1)
        self.log_token_metrics(logits, picked, inputs)
        return loss

    def log_token_metrics(self, logits: torch.Tensor, picked: torch.Tensor, inputs: dict[str, Any]) -> None:
        """trl's ``mean_token_accuracy`` and ``num_tokens`` (its entropy would cost a softmax over the head)."""
        metrics = getattr(self, "_metrics", None)
        if metrics is None:
            return
        with torch.no_grad():
            correct = self.accelerator.gather_for_metrics((logits.argmax(-1) == picked).sum()).sum()
            valid = self.accelerator.gather_for_metrics(torch.tensor(picked.numel(), device=picked.device)).sum()
            metrics["train"]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
            if hasattr(self, "_total_train_tokens"):  # padding-free batches (packing) carry no attention mask
                tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                    torch.tensor(inputs["input_ids"].numel(), device=picked.device)
                self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
                metrics["train"]["num_tokens"] = [self._total_train_tokens]


@contextmanager
def head_at(model: Any, mask: torch.Tensor):
    """While inside, the output embeddings of ``model`` (a peft model or a transformers one) see only
    the hidden states at ``mask`` (``(batch, length - 1)``: the positions whose next token is a label)."""
    head = model.get_output_embeddings()
    shape = (mask.size(0), mask.size(1) + 1)

    def select(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or tuple(hidden.shape[:2]) != shape:
            return None  # not the full sequence (a model that slices itself): leave it to the fallback
        return (hidden[:, :-1][mask],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()
