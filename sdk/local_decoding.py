"""The local engines of the ``transformers`` backend: slots or length buckets, KV cache, stop at the label.

Behind the generation seam (:mod:`reasondistill.generators`): every stage that makes a local
teacher write (annotation, preference sampling, teacher evaluation, STaR) gets a
:class:`TeacherGenerator` through the ``transformers`` backend. The default engine is continuous slot batching
(:mod:`reasondistill.slot_decoding`): the prompt prefix every row shares (the system prompt,
most of the prompt) is encoded once, rows stop at ``Label: <name>``, and a finished row's slot
takes the next prompt at once. ``engine="generate"`` (and any model the slot loop cannot drive)
uses ``model.generate`` on length buckets with the same shared-prefix KV reuse and
``stop_strings``.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Sequence

import torch

from reasondistill.generators import Generation
from reasondistill.hf_compat import cache_argument
from reasondistill.slot_decoding import SlotDecoder, on_model_device, supports_slots

from .runtime import current


def shared_prefix(sequences: Sequence[Sequence[int]], minimum: int = 8) -> list[int]:
    """The longest token prefix all prompts share, leaving every prompt at least one own token."""
    if not sequences:
        return []
    first = sequences[0]
    n = min(len(x) for x in sequences) - 1
    for j in range(max(0, n)):
        tok = first[j]
        if any(x[j] != tok for x in sequences):
            n = j
            break
    return list(first[:n]) if n >= minimum else []


def label_stop_strings(domain: Any) -> list[str]:
    """``Label: <name>`` in the spellings a model writes; transformers matches them per row and token."""
    out = []
    for name in domain.labels:
        for variant in {name, name.capitalize(), name.title(), name.upper()}:
            for sep in (": ", ":", ": **", "**: "):
                out.append(f"{domain.label_key}{sep}{variant}")
    return sorted(set(out))


def label_key_pattern(domain: Any) -> re.Pattern:
    """Matches text that ends where the label is written next (``Label:``, ``**Label:**``...)."""
    return re.compile(rf"(?i){re.escape(domain.label_key)}\s*\**\s*[:：]\s*\**\s*$")


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


def label_agreement(fast: Sequence[int], exact: Sequence[int]) -> float:
    """The share of rows whose label is the same in both lists (the bf16 check's measure)."""
    return sum(a == b for a, b in zip(fast, exact)) / len(exact)


class TeacherGenerator:
    """Generates completions for chat prompts in length-bucketed, left-padded batches."""

    def __init__(self, model_path: str, domain: Any, batch_size: int = 16, max_new_tokens: int = 96,
                 trust_remote_code: bool = False, model: Any = None, tokenizer: Any = None, int8: bool = False,
                 prefix_cache: bool = True, engine: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_path, self.trust_remote_code = model_path, trust_remote_code
        if model is None:
            runtime = current()
            model = runtime.place(AutoModelForCausalLM.from_pretrained(
                model_path, trust_remote_code=trust_remote_code, **runtime.model_kwargs(inference=True)), inference=True)
        self.model = model
        self.model.eval()
        if int8:
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.domain, self.batch_size, self.max_new_tokens = domain, batch_size, max_new_tokens
        self.prefix_cache = prefix_cache
        self.first_tokens = label_first_tokens(self.tokenizer, domain.labels)
        self.stop_strings = label_stop_strings(domain)
        self.label_key_re = label_key_pattern(domain)
        self.identity = model_path if model is None else getattr(model, "name_or_path", model_path)
        if engine not in ("auto", "slots", "generate"):
            raise ValueError(f"engine must be 'auto', 'slots' or 'generate', not {engine!r}")
        self.engine = engine
        if engine == "auto":
            probe = self.tokenizer("Query: a probe for the slot decoder", add_special_tokens=False)["input_ids"]
            self.engine = "slots" if supports_slots(self.model, probe) else "generate"

    def check_bf16_labels(self, messages: Sequence[list[dict[str, str]]], min_agreement: float) -> dict[str, Any] | None:
        """Where this generator runs bf16 on a CPU (``runtime.dtype: fastest`` chose it): answer
        ``messages`` greedily in bf16 and in fp32 and compare the labels. Below ``min_agreement``
        the generator switches itself to fp32 for good. Returns what it measured (None: nothing
        to check: fp32, a GPU, an int8 model or no prompts).

        Why: bf16 changed one label in eight on the tiny teacher and one completion in three on
        SmolLM2 (docs/benchmarks.md); a faster teacher that writes other labels is not the same
        teacher, so the switch is checked on the run's own prompts, not assumed."""
        from transformers import AutoModelForCausalLM

        weight = next(self.model.parameters(), None)
        if not messages or weight is None or weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
            return None
        parse = self.domain.parse_completion
        fast = [parse(o[0].text).label for o in self.generate(messages)]
        bf16_model = self.model

        try:  # fp32: the precision of models that train (their master weights) is the reference
            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code,
                                                              **current().model_kwargs()).eval()
        except (OSError, ValueError):  # a model handed in, not loadable by its label: nothing to compare with
            return None
        exact = [parse(o[0].text).label for o in self.generate(messages)]
        agreement = label_agreement(fast, exact)
        keep = agreement >= min_agreement
        if keep:
            self.model = bf16_model
        return {"rows": len(exact), "label_agreement": round(agreement, 4), "min_agreement": min_agreement,
                "dtype": "bfloat16" if keep else "float32"}

    def generate(self, messages: Sequence[list[dict[str, str]]], *, n: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, max_new_tokens: int | None = None,
                 progress: Any = None) -> list[list[Generation]]:
        """One list of ``n`` generations per prompt, in input order (the ``Generator`` protocol)."""
        stops = tuple(self.stop_strings if stop is None else stop)
        budget = max_new_tokens or self.max_new_tokens
        texts = prompt_texts(self.tokenizer, messages)
        enc = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        prefix = shared_prefix(enc) if self.prefix_cache else []
        suffixes = [ids[len(prefix):] for ids in enc]
        if self.engine == "slots":
            return self._generate_slots(prefix, suffixes, do_sample, temperature, top_p, n, seed, progress,
                                        stops, budget)
        with on_model_device(self.model):  # the prefix cache and batches live with the model
            return self._generate_plain(prefix, suffixes, do_sample, temperature, top_p, n, seed, progress,
                                        stops, budget)

    def _generate_plain(self, prefix: list[int], suffixes: list[list[int]], do_sample: bool, temperature: float,
                        top_p: float, n: int, seed: int | None, progress: Any, stops: tuple[str, ...],
                        budget: int) -> list[list[Generation]]:
        texts = suffixes
        cache = self._prefix_cache(prefix) if prefix else None
        order = sorted(range(len(texts)), key=lambda i: len(suffixes[i]))
        results: list[list[Generation]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if seed is not None:
                torch.manual_seed(seed + start)
            rows = [suffixes[i] for i in idx for _ in range(n)]
            gens = self._generate_batch(prefix, rows, cache, do_sample, temperature, top_p, stops, budget)
            for k, i in enumerate(idx):
                results[i] = gens[k * n:(k + 1) * n]
            if progress is not None:
                progress.update(len(idx))
        return results

    def _generate_slots(self, prefix: list[int], suffixes: list[list[int]], do_sample: bool, temperature: float,
                        top_p: float, k: int, seed: int | None, progress: Any, stops: tuple[str, ...],
                        budget: int) -> list[list[Generation]]:
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
        rows = [i for i in order for _ in range(k)]  # a prompt's k samples side by side
        left = [k] * len(suffixes)

        def on_done(r: int) -> None:
            left[rows[r]] -= 1
            if progress is not None and left[rows[r]] == 0:
                progress.update(1)

        decoder = SlotDecoder(self.model, {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id},
                              self.tokenizer.pad_token_id, self.batch_size, budget,
                              step_text=lambda toks: self.tokenizer.decode(toks[-12:], skip_special_tokens=True),
                              is_stop=lambda text: bool(stops) and text.endswith(stops),
                              at_label=lambda text: bool(self.label_key_re.search(text)),
                              label_probs=self._probs_from_logits)
        done = decoder.run(prefix, [suffixes[i] for i in rows], do_sample, temperature, top_p, seed, on_done)
        results: list[list[Generation]] = [[] for _ in suffixes]
        for r, row in enumerate(done):
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            results[rows[r]].append(Generation(text, len(row.tokens), row.label_probs))
        return results

    def _probs_from_logits(self, logits: torch.Tensor) -> list[float] | None:
        probs = torch.softmax(logits.float(), -1)
        mass = [float(probs[list(toks)].sum()) if toks else 0.0 for toks in self.first_tokens]
        total = sum(mass)
        return [m / total for m in mass] if total > 0 else None

    @torch.inference_mode()
    def _prefix_cache(self, prefix: list[int]) -> Any:
        """KV cache of the prompt prefix every row shares (the system prompt), computed once."""
        try:
            out = self.model(torch.tensor([prefix]), use_cache=True)
            cache = getattr(out, "cache", None)
            return cache if cache is not None else out.past_key_values
        except Exception:  # a model without a reusable cache: plain generation
            return None

    @torch.inference_mode()
    def _generate_batch(self, prefix: list[int], suffixes: list[list[int]], cache: Any, do_sample: bool,
                        temperature: float, top_p: float, stops: tuple[str, ...], budget: int) -> list[Generation]:
        """Rows laid out as ``[prefix][left padding][suffix]``: the prefix KV is shared, and
        positions (from the attention mask) stay contiguous for every row."""
        pad = self.tokenizer.pad_token_id
        n, width = len(suffixes), max(len(x) for x in suffixes)
        if cache is None:
            prefix, suffixes = [], [list(prefix) + x for x in suffixes]
            width = max(len(x) for x in suffixes)
        ids = torch.full((n, len(prefix) + width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        if prefix:
            ids[:, :len(prefix)] = torch.tensor(prefix)
            mask[:, :len(prefix)] = 1
        for i, row in enumerate(suffixes):
            ids[i, ids.shape[1] - len(row):] = torch.tensor(row)
            mask[i, ids.shape[1] - len(row):] = 1
        kwargs: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": budget,
                                  "pad_token_id": pad, "return_dict_in_generate": True, "output_scores": True}
        if stops:
            kwargs.update(stop_strings=list(stops), tokenizer=self.tokenizer)
        if cache is not None:
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(n)
            kwargs[cache_argument(self.model)] = batch_cache
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        seqs = out.sequences[:, ids.shape[1]:]
        eos = {self.tokenizer.eos_token_id, pad}
        gens = []
        for row in range(seqs.shape[0]):
            toks = seqs[row].tolist()
            used = next((j for j, t in enumerate(toks) if t in eos), len(toks))
            text = self.tokenizer.decode(toks[:used], skip_special_tokens=True)
            gens.append(Generation(text, used, self._label_probs(toks[:used], out.scores, row)))
        return gens

    def _label_probs(self, ids: list[int], scores: Sequence[torch.Tensor], row: int) -> list[float] | None:
        """Probabilities of each label at the step that wrote the label (after ``Label:``)."""
        for step in range(1, len(ids)):
            prefix = self.tokenizer.decode(ids[:step], skip_special_tokens=True)
            if self.label_key_re.search(prefix):
                return self._probs_from_logits(scores[step][row])
        return None
