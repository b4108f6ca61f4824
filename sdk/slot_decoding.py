"""Continuous batching for teacher decoding: B slots, each refilled as soon as its row ends.

Why our own loop rather than ``generate``: ``generate`` keeps a batch until its longest row ends
and grows a DynamicCache with ``torch.cat`` every step (79% of a decode step at batch 64 on the
development CPU); transformers' own continuous batching (``generate_batch`` with a paged cache)
ran at 38-48 tokens/s there against 205 for bucketed ``generate``. This loop preallocates one KV
buffer per layer, lays every slot out as ``[left padding][suffix][generated]`` (the shared
prefix lives once beside the slots), writes each new key/value in place, and refills a
finished slot with the next prompt at once.

The shared prefix (system prompt and instructions) is stored once, not once per slot: the
attention reads it with one matmul for all rows and merges it with each row's own keys in one
softmax, which halves the cache memory read per decode step (that read, not the matmuls,
bounded a batch-128 step here).

It drives the model's own forward, so no model code is copied: any transformers decoder whose
attention calls ``cache.update`` works, given explicit position ids and a 4-D boolean mask.
:func:`supports_slots` checks a model against its plain forward before the loop is used.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .hf_compat import cache_argument

ATTENTION = "reasondistill_slots"
_ACTIVE: contextvars.ContextVar["SlotCache | None"] = contextvars.ContextVar("reasondistill_slot_cache", default=None)


def grouped_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention for grouped key/value heads without copying the cache ``heads / kv_heads`` times.

    transformers' sdpa path repeats every key/value head whenever a mask is given, which cost a
    third of a batch-128 decode step on the development CPU; grouping the query heads instead
    makes the same product with two matmuls on the cache as stored.
    """
    b, h, q, d = query.shape
    kv = key.shape[1]
    g = h // kv
    scale = scaling if scaling is not None else d ** -0.5
    scores = (query.reshape(b, kv, g * q, d) @ key.transpose(-1, -2)).view(b, kv, g, q, -1) * scale
    if attention_mask is not None:
        mask = attention_mask[:, :, None]  # [b, 1, 1, q, keys]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    cache = _ACTIVE.get()
    shared = cache.prefix(getattr(module, "layer_idx", None)) if cache is not None else None
    if shared is None:
        out = scores.softmax(-1).view(b, kv, g * q, -1) @ value
        return out.view(b, h, q, d).transpose(1, 2).contiguous(), None
    pk, pv = shared  # [kv, prefix, d], the same for every row: one matmul over all rows' queries
    p = pk.shape[1]
    grouped = query.reshape(b, kv, g * q, d).transpose(0, 1).reshape(kv, b * g * q, d)
    pre = (grouped @ pk.transpose(-1, -2)).view(kv, b, g, q, p).transpose(0, 1) * scale
    probs = torch.cat([pre, scores], -1).softmax(-1)
    own = probs[..., p:].reshape(b, kv, g * q, -1) @ value
    head = probs[..., :p].transpose(0, 1).reshape(kv, b * g * q, p) @ pv
    out = own + head.view(kv, b, g * q, d).transpose(0, 1)
    return out.reshape(b, h, q, d).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, grouped_attention)


@contextlib.contextmanager
def slot_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with :func:`grouped_attention` inside the block, then restore its own."""
    _register_attention()
    before = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@contextlib.contextmanager
def _active(cache: "SlotCache") -> Iterator[None]:
    token = _ACTIVE.set(cache)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class SlotCache:
    """Per-layer key/value buffers ``[slots, kv_heads, length, head_dim]`` written in place.

    Before each forward the loop sets :attr:`rows` (the slots this forward runs, ``None`` for
    all) and :attr:`cols` (``[rows, q]`` buffer columns the new keys go to); :meth:`update`
    writes them and returns the first :attr:`width` columns for attention.
    """

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, length: int, dtype: torch.dtype):
        shape = (slots, kv_heads, length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]
        self.rows: torch.Tensor | None = None
        self._all = torch.arange(slots)
        self.cols = torch.zeros(0, 0, dtype=torch.long)
        self.width = 0
        self.shared: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [kv_heads, prefix, d]

    def prefix(self, layer: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.shared[layer] if self.shared is not None and layer is not None else None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        k, v = self.k[layer_idx], self.v[layer_idx]
        rows = self._all if self.rows is None else self.rows
        k[rows[:, None], :, self.cols] = key_states.transpose(1, 2).to(k.dtype)
        v[rows[:, None], :, self.cols] = value_states.transpose(1, 2).to(v.dtype)
        if self.rows is None:
            return k[:, :, :self.width], v[:, :, :self.width]
        return k[self.rows, :, :self.width], v[self.rows, :, :self.width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns already written before this forward (transformers 4.57 derives ``cache_position``
        from it when none is given; later versions do not ask)."""
        return max(self.width - self.cols.shape[-1], 0)

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every slot but ``rows`` (once, when the queue is empty and most slots are idle)."""
        self.k = [x.index_select(0, rows) for x in self.k]
        self.v = [x.index_select(0, rows) for x in self.v]
        self._all = torch.arange(len(rows))


def model_device(model: Any) -> torch.device:
    """Where the model's weights live."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def on_model_device(model: Any) -> Any:
    """Factories (zeros, arange, tensor) create on the model's device inside this context, so the
    slot loop's cache, index and mask tensors live with a CUDA model. A no-op on the CPU:
    ``torch.device`` as a context is a Python-level function mode that every op would pass through."""
    import contextlib

    device = model_device(model)
    return contextlib.nullcontext() if device.type == "cpu" else torch.device(device)


def _kv_shape(model: Any) -> tuple[int, int, int]:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, getattr(cfg, "num_key_value_heads", None) or heads, head_dim


def _forward(model: Any, cache: SlotCache, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of each row's last position."""
    with _active(cache):
        out = model(input_ids=ids, position_ids=positions, attention_mask=mask[:, None], use_cache=True,
                    **{cache_argument(model): cache},
                    logits_to_keep=1)
    return out.logits[:, -1].float()


def _prefill(model: Any, cache: SlotCache, rows: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor,
             first_pos: torch.Tensor) -> torch.Tensor:
    """Encode ``ids`` (left-padded ``[n, w]``) into buffer columns ``0 .. w`` of ``rows``."""
    n, w = ids.shape
    cols = torch.arange(w)
    cache.rows, cache.cols, cache.width = rows, cols.expand(n, w), w
    keys = cols[None, :]
    causal = keys <= cols[:, None]
    # every query sees at least its own column, so a padding row never softmaxes over nothing
    mask = (valid[rows, :w][:, None, :] & causal[None]) | (keys == cols[:, None])[None]
    positions = (first_pos[:, None] + torch.arange(w)[None, :]).clamp(min=0)
    return _forward(model, cache, ids, positions, mask)


def _encode_prefix(model: Any, prefix: list[int], dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of the shared prefix, one ``[kv_heads, prefix, d]`` pair per layer."""
    layers, kv_heads, head_dim = _kv_shape(model)
    cache = SlotCache(layers, 1, kv_heads, head_dim, len(prefix), dtype)
    valid = torch.ones(1, len(prefix), dtype=torch.bool)
    _prefill(model, cache, torch.tensor([0]), torch.tensor([prefix]), valid, torch.tensor([0]))
    return [(k[0], v[0]) for k, v in zip(cache.k, cache.v)]


@torch.inference_mode()
def supports_slots(model: Any, ids: Sequence[int]) -> bool:
    """Whether slot decoding gives the model's own next-token logits on ``ids`` (prefix + 1 step)."""
    try:
        layers, kv_heads, head_dim = _kv_shape(model)
        dtype = next(model.parameters()).dtype
        ids = list(ids)[:16]
        if len(ids) < 3:
            return False
        with on_model_device(model):
            ref = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            with slot_attention(model):
                return _probe(model, ids, ref, layers, kv_heads, head_dim, dtype)
    except Exception:  # any model the loop cannot drive falls back to generate()
        return False


def _probe(model: Any, ids: list[int], ref: torch.Tensor, layers: int, kv_heads: int, head_dim: int,
           dtype: torch.dtype) -> bool:
    """Shared prefix, prefill, one decode step (the loop's three paths); compare with the plain forward."""
    dtype = dtype if dtype.is_floating_point else torch.float32
    p = len(ids) // 2
    cache = SlotCache(layers, 1, kv_heads, head_dim, len(ids) - p, dtype)
    cache.shared = _encode_prefix(model, ids[:p], dtype)
    valid = torch.ones(1, len(ids) - p, dtype=torch.bool)
    _prefill(model, cache, torch.tensor([0]), torch.tensor([ids[p:-1]]), valid, torch.tensor([p]))
    cache.rows, cache.cols, cache.width = None, torch.tensor([[len(ids) - p - 1]]), len(ids) - p
    got = _forward(model, cache, torch.tensor([[ids[-1]]]), torch.tensor([[len(ids) - 1]]), valid[:, None, :])[0]
    return bool(torch.allclose(got, ref, atol=1e-3, rtol=1e-3))


@dataclass
class SlotRow:
    """One row being generated: its prompt index, tokens so far, and label probabilities."""

    index: int
    tokens: list[int] = field(default_factory=list)
    label_probs: list[float] | None = None
    at_label: bool = False


@dataclass
class SlotDecoder:
    """Greedy or sampled decoding of many suffixes after one shared prefix, B rows at a time.

    ``step_text`` maps a row's recent tokens to text; ``is_stop(text)`` ends a row (the label is
    written); ``at_label(text)`` marks the step whose distribution gives the label probabilities,
    computed by ``label_probs(logits)``.
    """

    model: Any
    eos: set[int]
    pad: int
    slots: int
    max_new_tokens: int
    step_text: Callable[[list[int]], str]
    is_stop: Callable[[str], bool]
    at_label: Callable[[str], bool]
    label_probs: Callable[[torch.Tensor], list[float] | None]
    refill_fraction: float = 0.125

    def run(self, prefix: list[int], suffixes: list[list[int]], do_sample: bool = False, temperature: float = 1.0,
            top_p: float = 1.0, seed: int | None = None, on_done: Callable[[int], None] | None = None) -> list[SlotRow]:
        """Rows in the order of ``suffixes`` (callers sort them by length so refills pad little)."""
        with slot_attention(self.model), on_model_device(self.model):
            return self._run(prefix, suffixes, do_sample, temperature, top_p, seed, on_done)

    @torch.inference_mode()
    def _run(self, prefix: list[int], suffixes: list[list[int]], do_sample: bool = False, temperature: float = 1.0,
             top_p: float = 1.0, seed: int | None = None, on_done: Callable[[int], None] | None = None) -> list[SlotRow]:
        return SlotRun(self, prefix, suffixes, do_sample, temperature, top_p, seed, on_done).decode()


class SlotRun:
    """One :meth:`SlotDecoder.run`: the KV buffer, which row each slot holds, and the decode loop
    that refills a slot as soon as its row ends (a class so each step is a method)."""

    def __init__(self, decoder: SlotDecoder, prefix: list[int], suffixes: list[list[int]], do_sample: bool,
                 temperature: float, top_p: float, seed: int | None, on_done: Callable[[int], None] | None):
        self.d, self.suffixes, self.on_done = decoder, suffixes, on_done
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p
        model = decoder.model
        layers, kv_heads, head_dim = _kv_shape(model)
        dtype = next(model.parameters()).dtype
        dtype = dtype if dtype.is_floating_point else torch.float32
        self.p = len(prefix)
        slots = min(decoder.slots, len(suffixes))
        length = max(len(s) for s in suffixes) + decoder.max_new_tokens + 1  # columns after the shared prefix
        self.cache = SlotCache(layers, slots, kv_heads, head_dim, length, dtype)
        if self.p:
            self.cache.shared = _encode_prefix(model, prefix, dtype)
        self.valid = torch.zeros(slots, length, dtype=torch.bool)
        self.gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.results = [SlotRow(i) for i in range(len(suffixes))]
        self.queue = list(range(len(suffixes)))
        self.owner: list[int | None] = [None] * slots  # row index held by each slot
        self.pos = torch.zeros(slots, dtype=torch.long)  # next position id
        self.col = torch.zeros(slots, dtype=torch.long)  # next buffer column
        self.last = torch.full((slots,), decoder.pad, dtype=torch.long)
        self.refill_min = max(1, int(slots * decoder.refill_fraction))

    def decode(self) -> list[SlotRow]:
        self.refill(list(range(len(self.owner))))
        while True:
            free = [s for s in range(len(self.owner)) if self.owner[s] is None]
            if self.queue and (len(free) >= self.refill_min or len(self.queue) <= len(free)):
                self.refill(free)
                continue
            active = [s for s in range(len(self.owner)) if self.owner[s] is not None]
            if not active:
                return self.results
            if not self.queue and len(active) <= len(self.owner) // 2:  # the tail: stop computing idle slots
                self.compact(active)
                continue
            self.step(active)

    def refill(self, free: list[int]) -> None:
        """Prefill the next queued rows into the ``free`` slots and choose their first tokens."""
        take, self.queue = self.queue[:len(free)], self.queue[len(free):]
        rows = torch.tensor(free[:len(take)])
        w = max(len(self.suffixes[i]) for i in take)
        ids = torch.full((len(take), w), self.d.pad, dtype=torch.long)
        self.valid[rows] = False
        for j, i in enumerate(take):
            s = self.suffixes[i]
            ids[j, w - len(s):] = torch.tensor(s)
            self.valid[rows[j], w - len(s):w] = True
            self.owner[int(rows[j])] = i
        lens = torch.tensor([len(self.suffixes[i]) for i in take])
        logits = _prefill(self.d.model, self.cache, rows, ids, self.valid, self.p - (w - lens))
        self.pos[rows], self.col[rows] = self.p + lens, w
        self.choose(rows, logits)

    def compact(self, active: list[int]) -> None:
        keep = torch.tensor(active)
        self.cache.keep(keep)
        self.valid, self.pos, self.col, self.last = self.valid[keep], self.pos[keep], self.col[keep], self.last[keep]
        self.owner = [self.owner[s] for s in active]

    def step(self, active: list[int]) -> None:
        """One decode step of every slot (idle ones masked), then the next token of the active ones."""
        rows, col = torch.tensor(active), self.col
        self.valid[rows, col[rows]] = True
        width = int(col.max()) + 1
        self.cache.rows, self.cache.cols, self.cache.width = None, col[:, None].clone(), width
        logits = _forward(self.d.model, self.cache, self.last[:, None], self.pos[:, None], self.valid[:, None, :width])
        col[rows] += 1
        self.pos[rows] += 1
        self.choose(rows, logits[rows])

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(-1)
        scaled = torch.softmax(logits / max(self.temperature, 1e-5), -1)
        if self.top_p < 1.0:
            sorted_p, order = scaled.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.top_p
            scaled = scaled.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        return torch.multinomial(scaled, 1, generator=self.gen)[:, 0]

    def choose(self, rows: torch.Tensor, logits: torch.Tensor) -> None:
        """Record label probabilities where a row is at its label, take each row's next token, and
        free the slots whose rows ended (EOS, a stop string, the token budget)."""
        d = self.d
        for j, slot in enumerate(rows.tolist()):
            row = self.results[self.owner[slot]]
            if row.at_label and row.label_probs is None:
                row.label_probs = d.label_probs(logits[j])
        picked = self.pick(logits)
        for j, slot in enumerate(rows.tolist()):
            row, tok = self.results[self.owner[slot]], int(picked[j])
            self.last[slot] = tok
            done = tok in d.eos
            if not done:
                row.tokens.append(tok)
                text = d.step_text(row.tokens)
                row.at_label = d.at_label(text)
                done = d.is_stop(text) or len(row.tokens) >= d.max_new_tokens
            if done:
                self.owner[slot] = None
                if self.on_done is not None:
                    self.on_done(row.index)
