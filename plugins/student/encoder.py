"""The ``encoder-classifier`` student: any ``AutoModelForSequenceClassification`` encoder.

One encoder and one classifier head serve both CRSD views. ``forward_view`` returns the logits
from the model's own head and the [CLS] vector (last hidden state at position 0) that the
contrastive term aligns.

``reasoning_layout="shared"`` runs both views in one pass over
``[CLS] query [SEP] item [SEP] reasoning [SEP] [CLS_r]``: the (query, item) tokens attend only to
each other, so the first [CLS] is exactly the standard view's; the reasoning tokens and the
second [CLS] (position 0, like the first) attend to everything and give the reasoning view. The
query and item tokens are then encoded once instead of twice; the price is that they are not
re-read in the light of the reasoning (only the reasoning tokens and [CLS_r] are).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Literal

import torch
from pydantic import Field

from reasondistill import Options, Student, hookimpl
from reasondistill.hf_compat import per_query_mask
from reasondistill.runtime import current
from reasondistill.views import REASONING, SHARED, STANDARD, prefixed


class EncoderOptions(Options):
    max_length: int = Field(128, ge=8, description="token budget of the standard view (query, item)")
    reasoning_tokens: int = Field(128, ge=0, description="extra budget of the reasoning view; reasoning is cut first")
    dropout: float | None = Field(None, ge=0, le=0.9, description="override the encoder's dropout")
    add_unknown_characters: int = Field(
        0, ge=0, description="add up to this many characters the tokenizer maps to [UNK] in the training text as "
                             "new tokens (most frequent first; embeddings resized): a script the vocabulary lacks, "
                             "such as Chinese in an English MiniLM")
    added_token_init: Literal["mean", "distinct"] = Field(
        "mean", description="embeddings of the added characters: 'mean' (transformers' resize: each starts at the "
                            "vocabulary's mean, so all are nearly equal), 'distinct' (each drawn at the spread of the "
                            "existing embeddings, so equal characters in query and item match from the first step)",
        json_schema_extra={"hash": "unless_default"})
    reasoning_layout: Literal["separate", "shared"] = Field(
        "separate", description="'separate': two passes, (query, item) and (query, item, reasoning); 'shared': "
                                "one pass in which the (query, item) tokens are encoded once for both views")


def spread_added_rows(weight: torch.Tensor, shipped: int, seed: int = 0) -> None:
    """Redraw the rows past ``shipped`` from a normal with the shipped rows' mean and per-dimension
    spread. transformers' mean resizing scales that spread by 1e-9, which leaves every added
    character about 5e-5 from every other (all-MiniLM-L6-v2 rows are about 1.0 apart): a student
    cannot tell two of them apart, nor see that a query's character is in the item."""
    with torch.no_grad():
        old = weight[:shipped].float()
        noise = torch.randn(weight.shape[0] - shipped, weight.shape[1], generator=torch.Generator().manual_seed(seed))
        weight[shipped:] = (old.mean(0) + old.std(0) * noise).to(weight.dtype)


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

    def forward_shared(self, input_ids, attention_mask, split, token_type_ids=None):
        """Both views from one pass (see the module docstring): ``((logits, cls), (r_logits, r_cls))``.

        ``split[b]`` is the length of row b's standard part; [CLS_r] is the row's last real token.
        """
        n, length = input_ids.shape
        cols = torch.arange(length, device=input_ids.device)
        real = attention_mask.bool()
        last = real.sum(-1) - 1
        in_std = cols[None, :] < split[:, None]
        # a standard query sees standard keys only; a reasoning query sees every real key
        allowed = real[:, None, :] & (in_std[:, None, :] | ~in_std[:, :, None])
        allowed |= torch.eye(length, dtype=torch.bool, device=input_ids.device)[None]
        mask = per_query_mask(allowed, next(self.model.parameters()).dtype)
        positions = cols.expand(n, length).clone()
        rows = torch.arange(n, device=input_ids.device)
        positions[rows, last] = 0
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[-1]
        r_cls = hidden[rows, last]
        return (out.logits, hidden[:, 0]), (self.head(r_cls), r_cls)

    def head(self, cls: torch.Tensor) -> torch.Tensor:
        """The model's own classification head applied to [CLS]-position vectors ``[n, hidden]``."""
        model, base = self.model, self.model.base_model
        seq = cls[:, None]
        pooler = getattr(base, "pooler", None)
        if pooler is not None and hasattr(model, "classifier"):  # BERT-style: pooler, dropout, linear
            pooled = pooler(seq)
            return model.classifier(model.dropout(pooled) if hasattr(model, "dropout") else pooled)
        if hasattr(model, "classifier"):  # RoBERTa-style heads read features[:, 0] themselves
            return model.classifier(seq)
        raise TypeError(f"reasoning_layout='shared' does not know the head of {type(model).__name__}; "
                        "use reasoning_layout='separate'")


class EncoderClassifier(Student):
    name = "encoder-classifier"
    description = "Any AutoModelForSequenceClassification encoder (BERT, MiniLM, RoBERTa, Chinese BERT)."
    Options = EncoderOptions

    def build(self, model: str, num_labels: int, options: EncoderOptions, trust_remote_code: bool = False,
              vocab_size: int | None = None) -> EncoderStudent:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(model, num_labels=num_labels, trust_remote_code=trust_remote_code)
        if options.dropout is not None:
            for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
                if hasattr(config, key):
                    setattr(config, key, options.dropout)

        net = AutoModelForSequenceClassification.from_pretrained(
            model, config=config, ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code,
            **current().model_kwargs())
        shipped = net.get_input_embeddings().num_embeddings
        if vocab_size is not None and vocab_size > shipped:
            net.resize_token_embeddings(vocab_size)  # tokens added by adapt_tokenizer
            if options.added_token_init == "distinct":
                spread_added_rows(net.get_input_embeddings().weight, shipped)
        return EncoderStudent(net)

    def adapt_tokenizer(self, tokenizer, texts: Iterable[str], options: EncoderOptions) -> list[str]:
        """Add the most frequent [UNK] characters of ``texts`` as tokens; returns what was added.

        Deterministic (frequency, then the character), so a resumed run adds the same tokens.
        ``texts`` is only read when the option is on.
        """
        if not options.add_unknown_characters or tokenizer.unk_token is None:
            return []
        counts = Counter(ch for text in texts for ch in text if not ch.isspace())
        unk = tokenizer.unk_token_id
        unknown = [ch for ch in counts if tokenizer(ch, add_special_tokens=False)["input_ids"] == [unk]]
        unknown.sort(key=lambda ch: (-counts[ch], ch))
        added = unknown[:options.add_unknown_characters]
        tokenizer.add_tokens(added)
        return added

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
        out = prefixed(STANDARD, std)
        if reasonings is not None and options.reasoning_layout == "shared":
            out.update(_shared_view(tokenizer, std, reasonings, options.reasoning_tokens))
        elif reasonings is not None:
            sep = f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
            seconds = [i + sep + (r or "") for i, r in zip(items, reasonings)]
            rsn = tokenizer(queries, seconds, truncation="longest_first",
                            max_length=options.max_length + options.reasoning_tokens)
            out.update(prefixed(REASONING, rsn))
        return out


def _shared_view(tokenizer, std, reasonings: list[str], budget: int) -> dict[str, list]:
    """``std + reasoning + [SEP] + [CLS_r]`` per row, and where the standard part ends."""
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError("student_options.reasoning_layout='shared' needs a tokenizer with [CLS] and [SEP] tokens")
    cut = max(1, budget - 2)
    rsn = tokenizer([r or "" for r in reasonings], add_special_tokens=False, truncation=True, max_length=cut)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "split": []}
    types = "token_type_ids" in std
    if types:
        out["token_type_ids"] = []
    for i, ids in enumerate(std["input_ids"]):
        tail = rsn[i][:cut] + [tokenizer.sep_token_id]
        out["input_ids"].append(list(ids) + tail + [tokenizer.cls_token_id])
        out["attention_mask"].append([1] * (len(ids) + len(tail) + 1))
        out["split"].append(len(ids))
        if types:
            out["token_type_ids"].append(list(std["token_type_ids"][i]) + [1] * len(tail) + [0])
    return prefixed(SHARED, out)


@hookimpl
def register_students(register):
    register(EncoderClassifier())
