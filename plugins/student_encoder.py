"""The ``encoder-classifier`` student: any ``AutoModelForSequenceClassification`` encoder.

One encoder and one classifier head serve both CRSD views. ``forward_view`` returns the logits
from the model's own head and the [CLS] vector (last hidden state at position 0) that the
contrastive term aligns.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from reasondistill import Options, Student, hookimpl


class EncoderOptions(Options):
    max_length: int = Field(128, ge=8, description="token budget of the standard view (query, item)")
    reasoning_tokens: int = Field(128, ge=0, description="extra budget of the reasoning view; reasoning is cut first")
    dropout: float | None = Field(None, ge=0, le=0.9, description="override the encoder's dropout")


class EncoderStudent(torch.nn.Module):
    """The student network plus any parameters the loss adds (e.g. a projection head)."""

    def __init__(self, model: Any, extra: torch.nn.ModuleDict | None = None):
        super().__init__()
        self.model = model
        self.extra = extra if extra is not None else torch.nn.ModuleDict()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward_view(self, input_ids, attention_mask, token_type_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs, output_hidden_states=True, return_dict=True)
        return out.logits, out.hidden_states[-1][:, 0]


class EncoderClassifier(Student):
    name = "encoder-classifier"
    description = "Any AutoModelForSequenceClassification encoder (BERT, MiniLM, RoBERTa, Chinese BERT)."
    Options = EncoderOptions

    def build(self, model: str, num_labels: int, options: EncoderOptions, trust_remote_code: bool = False) -> EncoderStudent:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(model, num_labels=num_labels, trust_remote_code=trust_remote_code)
        if options.dropout is not None:
            for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
                if hasattr(config, key):
                    setattr(config, key, options.dropout)
        net = AutoModelForSequenceClassification.from_pretrained(
            model, config=config, dtype=torch.float32, ignore_mismatched_sizes=True,
            trust_remote_code=trust_remote_code, use_safetensors=_has_safetensors(model))
        return EncoderStudent(net)

    def tokenizer(self, model: str, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)

    def encode(self, tokenizer, queries: list[str], items: list[str], reasonings: list[str] | None,
               options: EncoderOptions) -> dict[str, list]:
        """Token ids of the standard view, and of the reasoning view when ``reasonings`` is given.

        The reasoning view is ``(query, item [SEP] reasoning)``; truncation cuts from the end of the
        second segment, so the reasoning goes before the item, and the query is never cut.
        """
        std = tokenizer(queries, items, truncation="longest_first", max_length=options.max_length)
        out = {f"std_{k}": v for k, v in std.items()}
        if reasonings is not None:
            sep = f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
            seconds = [i + sep + (r or "") for i, r in zip(items, reasonings)]
            rsn = tokenizer(queries, seconds, truncation="longest_first",
                            max_length=options.max_length + options.reasoning_tokens)
            out.update({f"rsn_{k}": v for k, v in rsn.items()})
        return out


def _has_safetensors(model: str) -> bool | None:
    from pathlib import Path

    folder = Path(model)
    if folder.is_dir():
        return any(folder.glob("*.safetensors")) or None
    return None  # hub id: let transformers prefer safetensors


@hookimpl
def register_students(register):
    register(EncoderClassifier())
