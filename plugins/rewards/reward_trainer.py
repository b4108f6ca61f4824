"""The reward model's trainer and its config (one config class beside each trainer, as trl does).

trl's ``RewardTrainer`` trains one head; this one trains a Bradley-Terry head per reward dimension on
one shared encoder (:class:`~reasondistill.plugins.rewards.reward_model.MultiHeadRewardModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Trainer, TrainingArguments

from reasondistill.plugins.rewards.bradley_terry import bradley_terry_loss, side_view


class RewardTrainer(Trainer):
    """Bradley-Terry per head; the heads share the encoder."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rc, rr = model(**side_view(inputs, "chosen")), model(**side_view(inputs, "rejected"))
        loss = bradley_terry_loss(rc, rr, inputs["sign"])
        return (loss, {"chosen": rc, "rejected": rr}) if return_outputs else loss


@dataclass
class RewardConfig(TrainingArguments):
    """The reward trainer's arguments: the loss reads both sides' columns, which the model's
    signature does not name."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "the loss reads chosen_*/rejected_*"})
    logging_steps: float = 5
    save_steps: float = 100
