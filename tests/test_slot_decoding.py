"""Continuous slot batching: same tokens as the model's own per-prompt greedy generate."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.local_decoding import TeacherGenerator, prompt_texts, shared_prefix
from reasondistill.plugins.domains.local_services import LocalServices, generate_pairs
from reasondistill.slot_decoding import SlotDecoder, supports_slots

MAX_NEW = 10


def _stop(text: str) -> bool:  # ends rows at different steps, so slots are refilled mid-run
    return len(text.split()) >= 3


@pytest.fixture(scope="module")
def lm(tiny_causal_lm):
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()
    torch.manual_seed(0)  # larger weights than the 0.02 init, so greedy text depends on the prompt
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.5)
    dom = LocalServices()
    enc = [tok(t, add_special_tokens=False)["input_ids"]
           for t in prompt_texts(tok, [dom.messages(r) for r in generate_pairs(n=11, seed=5)])]
    return tok, model, enc


def _reference(tok, model, ids, eos):
    """Per-prompt greedy ``generate``, cut where the slot loop's rule would stop."""
    with torch.inference_mode():
        full = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                              temperature=None, top_p=None, top_k=None)[0, len(ids):].tolist()
    out = []
    for t in full:
        if t in eos:
            break
        out.append(t)
        if _stop(tok.decode(out[-12:], skip_special_tokens=True)):
            break
    return out


def _decoder(tok, model, slots):
    return SlotDecoder(model, {tok.eos_token_id, tok.pad_token_id}, tok.pad_token_id, slots, MAX_NEW,
                       step_text=lambda t: tok.decode(t[-12:], skip_special_tokens=True), is_stop=_stop,
                       at_label=lambda text: False, label_probs=lambda logits: None)


@pytest.mark.parametrize("slots", [1, 3, 16])
def test_slots_give_per_prompt_greedy_tokens(lm, slots):
    tok, model, enc = lm
    prefix = shared_prefix(enc)
    assert prefix, "the chat prompts share a system prompt"
    suffixes = sorted((ids[len(prefix):] for ids in enc), key=len)
    assert len({len(s) for s in suffixes}) > 1, "prompts of different lengths exercise left padding"
    done = []
    rows = _decoder(tok, model, slots).run(prefix, suffixes, on_done=done.append)
    expected = [_reference(tok, model, prefix + s, {tok.eos_token_id, tok.pad_token_id}) for s in suffixes]
    assert [r.tokens for r in rows] == expected
    assert len({tuple(t) for t in expected}) > 2, "prompts lead to different text"
    assert sorted(done) == list(range(len(suffixes)))
    assert len({len(t) for t in expected}) > 1, "rows end at different steps, so slots refill mid-run"


def test_short_and_long_suffixes_in_one_prefill_keep_their_positions(lm):
    """A window holding suffixes under half its width: each suffix's positions continue the shared
    prefix's (a wrong offset shifts short rows relative to the prefix, which RoPE does not forgive)."""
    tok, model, enc = lm
    prefix = shared_prefix(enc)
    full = [ids[len(prefix):] for ids in enc]
    longest = max(full, key=len)
    suffixes = [longest] + [s[-2:] for s in full[:4]] + [s[-5:] for s in full[4:7]]
    assert max(map(len, suffixes)) >= 2 * 5 + 1
    rows = _decoder(tok, model, len(suffixes)).run(prefix, suffixes)
    eos = {tok.eos_token_id, tok.pad_token_id}
    assert [r.tokens for r in rows] == [_reference(tok, model, prefix + s, eos) for s in suffixes]


def test_top_p_keeps_only_the_nucleus(lm):
    """Sampling with a tiny top_p keeps only the most likely token: greedy text whatever the seed."""
    tok, model, enc = lm
    prefix = shared_prefix(enc)
    suffixes = [ids[len(prefix):] for ids in enc[:6]]
    greedy = [r.tokens for r in _decoder(tok, model, 3).run(prefix, suffixes)]
    for seed in (1, 2):
        nucleus = [r.tokens for r in _decoder(tok, model, 3).run(prefix, suffixes, True, 1.5, 1e-6, seed)]
        assert nucleus == greedy
    assert [r.tokens for r in _decoder(tok, model, 3).run(prefix, suffixes, True, 1.5, 1.0, 1)] != greedy


def test_sampling_at_temperature_zero_is_greedy(lm):
    tok, model, enc = lm
    prefix = shared_prefix(enc)
    suffixes = [ids[len(prefix):] for ids in enc[:6]]
    greedy = [r.tokens for r in _decoder(tok, model, 3).run(prefix, suffixes)]
    assert [r.tokens for r in _decoder(tok, model, 3).run(prefix, suffixes, True, 0.0, 1.0, 1)] == greedy


def test_label_probabilities_come_only_from_the_step_at_the_label(lm):
    tok, model, enc = lm
    prefix = shared_prefix(enc)
    suffixes = [ids[len(prefix):] for ids in enc[:4]]
    steps = []

    def decoder(at_label):
        return SlotDecoder(model, {tok.eos_token_id, tok.pad_token_id}, tok.pad_token_id, 2, MAX_NEW,
                           step_text=lambda t: tok.decode(t[-12:], skip_special_tokens=True), is_stop=lambda text: False,
                           at_label=at_label, label_probs=lambda logits: steps.append(1) or [float(len(steps))])

    assert [r.label_probs for r in decoder(lambda text: False).run(prefix, suffixes)] == [None] * 4  # no label written
    steps.clear()
    rows = decoder(lambda text: True).run(prefix, suffixes)  # "at the label" from the first token on
    assert len(steps) == 4 and sorted(r.label_probs[0] for r in rows) == [1.0, 2.0, 3.0, 4.0]  # once a row


def test_no_shared_prefix(lm):
    tok, model, enc = lm
    rows = _decoder(tok, model, 4).run([], enc[:5])
    assert [r.tokens for r in rows] == [_reference(tok, model, ids, {tok.eos_token_id, tok.pad_token_id})
                                        for ids in enc[:5]]


def test_sampling_is_seeded(lm):
    tok, model, enc = lm
    prefix = shared_prefix(enc)
    suffixes = [ids[len(prefix):] for ids in enc]
    run = lambda seed: [r.tokens for r in _decoder(tok, model, 4).run(prefix, suffixes, True, 1.5, 0.9, seed)]  # noqa: E731
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_generator_engines_agree(tiny_causal_lm):
    dom = LocalServices()
    messages = [dom.messages(r) for r in generate_pairs(n=7, seed=2)]
    slots = TeacherGenerator(str(tiny_causal_lm), dom, batch_size=3, max_new_tokens=8)
    assert slots.engine == "slots"
    plain = TeacherGenerator(str(tiny_causal_lm), dom, batch_size=3, max_new_tokens=8, engine="generate")
    assert [o[0].text for o in slots.generate(messages)] == [o[0].text for o in plain.generate(messages)]
    sampled = slots.generate(messages, do_sample=True, n=2, seed=0)
    assert [len(o) for o in sampled] == [2] * 7
    greedy = [o[0].text for o in plain.generate(messages)]
    for engine in (slots, plain):  # sampling without a top_p keeps the whole distribution: not the greedy text
        assert [o[0].text for o in engine.generate(messages, do_sample=True, seed=0)] != greedy
    with pytest.raises(ValueError, match="engine"):
        TeacherGenerator(str(tiny_causal_lm), dom, engine="paged")


def test_unsupported_model_falls_back(tiny_encoder):
    from transformers import AutoModelForSequenceClassification, T5Config, T5ForConditionalGeneration

    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder)
    assert not supports_slots(model, [5, 6, 7, 8])  # runs, but its logits are not next-token logits
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    assert not supports_slots(t5.eval(), [5, 6, 7, 8])  # an encoder-decoder: its forward refuses the probe


def test_a_probe_needs_three_tokens(lm):
    """Prefix, prefill and one decode step each need a token: fewer, and no probe claims support."""
    _, model, enc = lm
    assert supports_slots(model, enc[0][:3])
    assert not supports_slots(model, enc[0][:2]) and not supports_slots(model, enc[0][:1])


def test_the_bf16_check_counts_the_rows_whose_label_is_the_same():
    from reasondistill.local_decoding import label_agreement

    assert label_agreement([2, 1, 0, -1], [0, 1, 2, -1]) == 0.5


class _Progress:
    def __init__(self):
        self.total = 0

    def update(self, n):
        self.total += n


@pytest.mark.parametrize("engine", ["slots", "generate"])
def test_engines_return_n_samples_per_prompt_and_count_each_prompt_once(tiny_causal_lm, engine):
    dom = LocalServices()
    messages = [dom.messages(r) for r in generate_pairs(n=5, seed=3)]
    gen = TeacherGenerator(str(tiny_causal_lm), dom, batch_size=2, max_new_tokens=6, engine=engine)
    progress = _Progress()
    out = gen.generate(messages, do_sample=True, n=3, seed=0, progress=progress)
    assert [len(o) for o in out] == [3] * 5
    assert progress.total == 5  # a prompt counts when its last sample is done


def test_slot_generator_names_the_model_it_was_handed_and_caches_the_prefix(tiny_causal_lm):
    """``identity`` (written into every annotation) is the model's own path when a loaded model is
    handed in; the shared-prefix KV cache is really built for a Llama-style model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_causal_lm), AutoTokenizer.from_pretrained(tiny_causal_lm)
    gen = TeacherGenerator("a label for logs", LocalServices(), model=model, tokenizer=tok)
    assert gen.identity == model.name_or_path == str(tiny_causal_lm)
    assert TeacherGenerator(str(tiny_causal_lm), LocalServices()).identity == str(tiny_causal_lm)
    assert gen._prefix_cache(list(range(5, 15))) is not None
    # a tokenizer's own pad token is kept (it ends a row); only a tokenizer without one pads with eos
    assert tok.pad_token == "<pad>" != tok.eos_token and gen.tokenizer.pad_token == "<pad>"
    tok.pad_token = None
    assert TeacherGenerator("x", LocalServices(), model=model, tokenizer=tok).tokenizer.pad_token == tok.eos_token


def test_slot_shared_prefix_boundary_is_eight_tokens():
    shared = list(range(100, 108))
    assert shared_prefix([shared + [1, 2], shared + [3]]) == shared  # exactly the minimum
    assert shared_prefix([shared[:7] + [1, 2], shared[:7] + [3]]) == []  # one short of it
    assert shared_prefix([shared + [1], shared + [1]]) == shared  # each prompt keeps an own token


def test_generate_engine_encodes_the_shared_prefix_once_and_writes_the_same(tiny_teacher):
    """With the prefix KV shared, rows of different lengths get the texts they get without it, and
    the model reads fewer prompt tokens (the prefix once, not once a row)."""
    rows = generate_pairs(n=6, seed=9)
    for k, r in enumerate(rows):
        r["item"] += " near the station" * (3 * k)  # suffixes of very different lengths in one batch
    messages = [LocalServices().messages(r) for r in rows]
    texts, read = {}, {}
    for shared in (True, False):
        gen = TeacherGenerator(str(tiny_teacher), LocalServices(), batch_size=6, max_new_tokens=32,
                               engine="generate", prefix_cache=shared)
        count = [0]

        def tokens_in(module, args, kwargs):
            ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
            count[0] += ids.numel()

        gen.model.register_forward_pre_hook(tokens_in, with_kwargs=True)
        texts[shared], read[shared] = [o[0].text for o in gen.generate(messages)], count[0]
    assert texts[True] == texts[False]
    assert len(set(texts[True])) >= 2
    assert read[True] < read[False]


def test_bf16_check_with_no_prompts_or_no_fp32_reference_checks_nothing(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    gen = TeacherGenerator(str(tiny_causal_lm), LocalServices(), model=model, tokenizer=tok)
    assert gen.check_bf16_labels([], 0.9) is None
    # a model handed in under a label that is no folder: no fp32 copy to compare with, bf16 kept
    model.name_or_path = "not-a-folder"
    handed = TeacherGenerator("not-a-folder", LocalServices(), model=model, tokenizer=tok, max_new_tokens=8)
    messages = [LocalServices().messages(r) for r in generate_pairs(n=2, seed=1)]
    assert handed.check_bf16_labels(messages, 0.9) is None and handed.model is model


@pytest.mark.parametrize("engine", ["slots", "generate"])
def test_a_stop_string_ends_each_row_where_it_is_written(tiny_teacher, engine):
    """``stop`` cuts every row at its first stop string (the default stops, at the label, are
    invisible with a teacher that ends there anyway): fewer tokens, the text a prefix of the uncut one."""
    messages = [LocalServices().messages(r) for r in generate_pairs(n=8, seed=5)]
    gen = TeacherGenerator(str(tiny_teacher), LocalServices(), batch_size=4, max_new_tokens=48, engine=engine)
    full, cut = gen.generate(messages), gen.generate(messages, stop=["Label:"])
    for f, c in zip(full, cut):
        f, c = f[0], c[0]
        assert "Label:" in f.text and c.text.endswith("Label:"), (f.text, c.text)
        assert f.text.startswith(c.text) and c.tokens < f.tokens


def test_the_kv_cache_takes_the_configs_head_dim_else_hidden_over_heads():
    """A config's own ``head_dim`` wins (Llama-style models may set one other than hidden / heads);
    a config without one (GPT-2) gets hidden / heads, and all heads as key/value heads."""
    from types import SimpleNamespace

    from transformers import GPT2Config, LlamaConfig

    from reasondistill.slot_decoding import _kv_shape

    llama = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, head_dim=32)
    assert _kv_shape(SimpleNamespace(config=llama)) == (3, 2, 32)
    gpt2 = GPT2Config(n_embd=64, n_head=4, n_layer=2)
    assert _kv_shape(SimpleNamespace(config=gpt2)) == (2, 4, 16)
