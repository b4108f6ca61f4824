"""Tiny models built offline from config, with a tokenizer trained on the spot.

They back the test kit and the ``tiny`` recipe profile: real transformers architectures
(Llama-style causal LM, BERT encoder) small enough that a training step takes milliseconds.
The tokenizer is trained on a domain's own text (its prompts and, when it has a generator, its
pairs and chains): a 600-token vocabulary trained on another domain splits a new domain's words
into characters, and the tiny teacher then never learns its answer format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .manager import get_hooks

if TYPE_CHECKING:
    from .domain import Domain

DEFAULT_DOMAIN = "local_services"


def default_domain() -> Domain:
    """The embedded demo domain, from the catalogue (the core never imports a plugin)."""
    return get_hooks().catalogue.get("domain", DEFAULT_DOMAIN)


def domain_examples(domain: Domain, n: int, seed: int, noise: float = 0.05) -> list[tuple[dict[str, Any], str]]:
    """``(row, reasoning)`` from the domain's generator, the reasoning from :meth:`Domain.rationale`
    or the row's ``rationale`` column; empty for a domain without a generator."""
    if not domain.can_generate:
        return []
    rows = domain.generate(n=n, seed=seed, noise=noise)
    return [(r, domain.rationale(r, r["label"]) if domain.writes_rationale else str(r.get("rationale") or ""))
            for r in rows]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CAUSAL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus(extra: Iterable[str] = (), domain: Domain | None = None) -> list[str]:
    """Training text for tiny tokenizers: a domain (default: the demo one), its prompts and some extra text."""
    dom = domain or default_domain()
    texts = [dom.system_prompt(), *extra]
    for r, reasoning in domain_examples(dom, n=400, seed=1):
        texts += [dom.user_prompt(r), dom.format_completion(reasoning, r["label"])]
    texts += ["The product is a tool for the garden. Query: drill bits, paint, faucet, lumber, 2x4 in. x 8 ft."]
    return texts


def train_causal_tokenizer(out_dir: Path, vocab_size: int = 600, extra: Iterable[str] = (), domain: Domain | None = None):
    """A byte-level BPE tokenizer with ChatML specials and a chat template with generation marks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CAUSAL_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(extra, domain), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def train_encoder_tokenizer(out_dir: Path, vocab_size: int = 800, extra: Iterable[str] = (), domain: Domain | None = None):
    """A lowercasing WordPiece tokenizer with BERT's specials and pair template.

    The vocabulary is counted, not learned by ``tokenizers``' WordPiece trainer: on this small
    corpus that trainer breaks ties between equally frequent merges differently in every process,
    so two builds gave different vocabularies (and a student trained on one a different macro-F1).
    Here: the specials, every character alone and as a ``##`` continuation, then whole words, word
    starts and ``##`` continuations (2-6 characters) by frequency (ties: longer first, then by the
    text), ids in that order. Greedy longest-match WordPiece over it is a real subword tokenizer,
    the same in every process."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus(extra, domain):
        words.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = list(BERT_SPECIALS) + chars + ["##" + c for c in chars]
    pieces: Counter[str] = Counter()  # whole words, word starts and ## continuations, by frequency
    for word, n in words.items():
        pieces[word] += n
        for end in range(2, min(len(word), 8)):
            pieces[word[:end]] += n
        for start in range(1, len(word)):
            for end in range(start + 2, min(len(word), start + 6) + 1):
                pieces["##" + word[start:end]] += n
    taken = set(vocab)
    for piece, _ in sorted(pieces.items(), key=lambda pc: (-pc[1], -len(pc[0]), pc[0])):
        if len(vocab) >= vocab_size:
            break
        if piece not in taken:
            vocab.append(piece)
            taken.add(piece)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = splitter
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_causal_lm(out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                         domain: Domain | None = None) -> Path:
    """Save a tiny Llama-style causal LM + tokenizer to ``out_dir`` (fp32 safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tok = train_causal_tokenizer(out, domain=domain)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_encoder(out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2, num_labels: int = 3,
                       domain: Domain | None = None) -> Path:
    """Save a tiny BERT encoder + WordPiece tokenizer to ``out_dir``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(out_dir)
    tok = train_encoder_tokenizer(out, domain=domain)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=512,
                        pad_token_id=tok.pad_token_id, num_labels=num_labels)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    return out


def teacher_lessons(domain: Domain, n: int = 2000, seed: int = 11) -> list[tuple[list[dict[str, str]], str]]:
    """``(chat, answer)`` the tiny teacher learns from: ``n`` of the domain's generated pairs with
    noise-free labels, so its answers follow the domain's rule; one prompt in four carries STaR's
    "the correct label is ..." hint, so rationalization prompts are answered in format too."""
    return [(domain.rationalize_prompt(row, row["label"]) if i % 4 == 0 else domain.messages(row),
             domain.format_completion(reasoning, row["label"]))
            for i, (row, reasoning) in enumerate(domain_examples(domain, n=n, seed=seed, noise=0.0))]


def completion_only(tok: Any, chat: list[dict[str, str]], answer: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one chat and its answer, the prompt's labels masked with -100 so
    the loss is on the answer and its end-of-sequence token only."""
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def build_tiny_teacher(out_dir: str | Path, steps: int = 200, seed: int = 0, domain: Domain | None = None) -> Path:
    """A tiny causal LM taught a domain's answer format (default ``local_services``; the domain needs
    a generator), so greedy decoding writes
    ``Reasoning: ...`` and a label that varies with the pair (about 20 s on 2 CPU cores).

    The untrained tiny model writes the same blank lines for every prompt, so every label, label
    probability and accuracy check on its output would compare constants. This one parses on
    every dev prompt and answers all three labels (about 40% accuracy after 200-300 steps): enough
    for tests whose expected values depend on what the teacher wrote. It learns
    :func:`teacher_lessons`, so rationalization answers parse too (and follow the hint only in part,
    so the STaR filter has chains to drop). A plain torch loop on
    completion tokens only, not trl, to keep the fixture to seconds and free of trainer state.
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dom = domain or default_domain()
    lessons = teacher_lessons(dom)
    if not lessons:
        raise ValueError(f"domain {dom.name!r} has no generator to teach the tiny teacher from")
    out = Path(out_dir)
    build_tiny_causal_lm(out, seed=seed, domain=dom)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    examples = [completion_only(tok, chat, answer) for chat, answer in lessons]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(examples, 16)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    return out
