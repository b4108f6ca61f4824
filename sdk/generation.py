"""Batched teacher generation: length buckets, left padding, KV cache, stop at the label.

Shared by the annotator (label + reasoning for many pairs) and the preference stage (K sampled
candidates a prompt). Written on ``model.generate`` with a per-row stopping criterion: each row
stops as soon as its completion holds a parsable label, not when the longest row ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList


@dataclass
class Generation:
    text: str
    tokens: int
    label_probs: list[float] | None


class LabelWritten(StoppingCriteria):
    """Per-row stop once the text after the prompt contains ``Label: <a label name>``."""

    def __init__(self, tokenizer: Any, prompt_len: int, domain: Any):
        self.tokenizer, self.prompt_len, self.domain = tokenizer, prompt_len, domain
        names = "|".join(re.escape(n) for n in sorted(domain.labels, key=len, reverse=True))
        self.pattern = re.compile(rf"(?i){re.escape(domain.label_key)}\s*\**\s*[:：]\s*\**\s*({names})\b")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        tail = input_ids[:, self.prompt_len:]
        texts = self.tokenizer.batch_decode(tail[:, -24:], skip_special_tokens=True)
        done = [bool(self.pattern.search(t)) and _complete_word(t, self.pattern) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _complete_word(text: str, pattern: re.Pattern) -> bool:
    """'relevant' must not be the first half of a longer word still being written."""
    m = list(pattern.finditer(text))[-1]
    return text[m.end():][:1] in ("", "\n", ".", " ", "*")


def label_stop_strings(domain: Any) -> list[str]:
    """``Label: <name>`` in the spellings a model writes; transformers matches them per row and token."""
    out = []
    for name in domain.labels:
        for variant in {name, name.capitalize(), name.title(), name.upper()}:
            for sep in (": ", ":", ": **", "**: "):
                out.append(f"{domain.label_key}{sep}{variant}")
    return sorted(set(out))


def prompt_texts(tokenizer: Any, messages: Sequence[list[dict[str, str]]]) -> list[str]:
    return [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]


def label_first_tokens(tokenizer: Any, labels: Sequence[str]) -> list[set[int]]:
    """Token ids that can start each label (with and without a leading space, any case)."""
    out = []
    for name in labels:
        ids = set()
        for variant in (name, " " + name, name.capitalize(), " " + name.capitalize(), name.upper(), " " + name.upper()):
            toks = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if toks:
                ids.add(toks[0])
        out.append(ids)
    # a token that can start two labels tells them apart from nothing: drop it everywhere
    shared = {t for i, a in enumerate(out) for j, b in enumerate(out) if i < j for t in a & b}
    return [s - shared for s in out]


class TeacherGenerator:
    """Generates completions for chat prompts in length-bucketed, left-padded batches."""

    def __init__(self, model_path: str, domain: Any, batch_size: int = 16, max_new_tokens: int = 96,
                 trust_remote_code: bool = False, model: Any = None, tokenizer: Any = None, int8: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model or AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                                   trust_remote_code=trust_remote_code)
        self.model.eval()
        if int8:
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.domain, self.batch_size, self.max_new_tokens = domain, batch_size, max_new_tokens
        self.first_tokens = label_first_tokens(self.tokenizer, domain.labels)
        self.stop_strings = label_stop_strings(domain)
        self.label_key_re = re.compile(rf"(?i){re.escape(domain.label_key)}\s*\**\s*[:：]\s*\**\s*$")

    def generate(self, messages: Sequence[list[dict[str, str]]], do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, num_return_sequences: int = 1, seed: int | None = None,
                 progress: Any = None) -> list[list[Generation]]:
        """One list of ``num_return_sequences`` generations per prompt, in input order."""
        texts = prompt_texts(self.tokenizer, messages)
        enc = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        results: list[list[Generation]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            if seed is not None:
                torch.manual_seed(seed + start)
            gens = self._generate_batch(batch, do_sample, temperature, top_p, num_return_sequences)
            for k, i in enumerate(idx):
                results[i] = gens[k * num_return_sequences:(k + 1) * num_return_sequences]
            if progress is not None:
                progress.update(len(idx))
        return results

    @torch.inference_mode()
    def _generate_batch(self, batch: dict[str, torch.Tensor], do_sample: bool, temperature: float, top_p: float,
                        n: int) -> list[Generation]:
        prompt_len = batch["input_ids"].shape[1]
        kwargs: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": self.max_new_tokens,
                                  "num_return_sequences": n, "pad_token_id": self.tokenizer.pad_token_id,
                                  "return_dict_in_generate": True, "output_scores": True,
                                  "stop_strings": self.stop_strings, "tokenizer": self.tokenizer}
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**batch, **kwargs)
        seqs = out.sequences[:, prompt_len:]
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gens = []
        for row in range(seqs.shape[0]):
            ids = seqs[row].tolist()
            used = next((j for j, t in enumerate(ids) if t in eos), len(ids))
            text = self.tokenizer.decode(ids[:used], skip_special_tokens=True)
            gens.append(Generation(text, used, self._label_probs(ids[:used], out.scores, row)))
        return gens

    def _label_probs(self, ids: list[int], scores: Sequence[torch.Tensor], row: int) -> list[float] | None:
        """Probabilities of each label at the step that wrote the label (after ``Label:``)."""
        for step in range(1, len(ids)):
            prefix = self.tokenizer.decode(ids[:step], skip_special_tokens=True)
            if self.label_key_re.search(prefix):
                probs = torch.softmax(scores[step][row].float(), -1)
                mass = [float(probs[list(toks)].sum()) if toks else 0.0 for toks in self.first_tokens]
                total = sum(mass)
                return [m / total for m in mass] if total > 0 else None
        return None
