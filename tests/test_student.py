"""Student distillation on a tiny encoder: losses, gradients, training, resume, prediction."""

import json

import pytest
import torch

from reasondistill import Recipe, step
from reasondistill.plugins.student.losses import CRSD, CrossEntropy, LogitKD
from reasondistill.plugins.domains.local_services import LocalServices
from reasondistill.plugins.student.encoder import EncoderClassifier
from reasondistill.predictor import Predictor
from reasondistill.training import PairCollator

DOM = LocalServices()


def make_batch(tiny_encoder, tiny_pairs, n=8, probs=False):
    comp = EncoderClassifier()
    opts = comp.Options(max_length=48, reasoning_tokens=32)
    tok = comp.tokenizer(str(tiny_encoder))
    rows = list(tiny_pairs.select(range(n)))
    enc = comp.encode(tok, [DOM.query_text(r) for r in rows], [DOM.item_text(r) for r in rows],
                      [r["rationale"] for r in rows], opts)
    feats = [{k: enc[k][i] for k in enc} | {"labels": rows[i]["label"]} for i in range(n)]
    if probs:
        for f in feats:
            f["label_probs"] = [0.9 if g == f["labels"] else 0.05 for g in range(3)]
    batch = PairCollator(tok, ("std", "rsn"))(feats)
    return comp.build(str(tiny_encoder), 3, opts), batch, tok, opts


def test_reasoning_view_truncates_reasoning_not_query_or_item(tiny_encoder):
    comp = EncoderClassifier()
    tok = comp.tokenizer(str(tiny_encoder))
    opts = comp.Options(max_length=32, reasoning_tokens=8)
    enc = comp.encode(tok, ["cheap pizza in harbor"], ["Blue Door Place: pizza"], ["because " * 200], opts)
    std, rsn = enc["std_input_ids"][0], enc["rsn_input_ids"][0]
    assert len(rsn) == 40
    sep = tok.sep_token_id
    first_sep = std.index(sep)
    assert rsn[: first_sep + 1] == std[: first_sep + 1]  # the query is intact
    item_ids = std[first_sep + 1:-1]
    assert rsn[first_sep + 1: first_sep + 1 + len(item_ids)] == item_ids  # and so is the item


@pytest.mark.parametrize("loss, opts", [
    (CRSD(), {}), (CRSD(), {"symmetric": True, "w_point": 1.0, "projection": 16}),
    (CRSD(), {"stop_gradient": True}), (CRSD(), {"soft_targets": True}),
    (CrossEntropy(), {}), (LogitKD(), {}),
])
def test_each_loss_trains(tiny_encoder, tiny_pairs, loss, opts):
    student, batch, _, _ = make_batch(tiny_encoder, tiny_pairs, probs=True)
    options = loss.options(opts)
    if hasattr(loss, "extra_modules"):
        student.extra = torch.nn.ModuleDict(loss.extra_modules(student.hidden_size, options))
    optim = torch.optim.AdamW(student.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        out = loss.compute(student, batch, options)
        optim.zero_grad()
        out["loss"].backward()
        optim.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < first * 0.8
    assert {k for k in out if k not in ("loss", "logits")}, "each term is reported"


def _encoder_grad_norms(student, batch, loss, options):
    student.zero_grad()
    loss.compute(student, batch, options)["loss"].backward()
    emb = student.model.base_model.embeddings.word_embeddings.weight.grad
    return emb


def test_gradients_reach_encoder_from_both_views(tiny_encoder, tiny_pairs):
    student, batch, _, _ = make_batch(tiny_encoder, tiny_pairs)
    crsd = CRSD()
    rsn_only_ids = set(batch["rsn_input_ids"].flatten().tolist()) - set(batch["std_input_ids"].flatten().tolist())
    assert rsn_only_ids, "the reasoning view has tokens the standard view lacks"
    # only the reasoning CE: gradient on reasoning-only tokens
    g = _encoder_grad_norms(student, batch, crsd, crsd.options({"w_std": 0, "w_nce": 0}))
    assert g[list(rsn_only_ids)].abs().sum() > 0
    # only InfoNCE: both views' tokens get gradient ...
    g = _encoder_grad_norms(student, batch, crsd, crsd.options({"w_std": 0, "w_reasoning": 0}))
    assert g[list(rsn_only_ids)].abs().sum() > 0
    # ... and with stop-gradient the reasoning-only tokens get none
    g = _encoder_grad_norms(student, batch, crsd, crsd.options({"w_std": 0, "w_reasoning": 0, "stop_gradient": True}))
    assert g[list(rsn_only_ids)].abs().sum() == 0
    std_ids = list(set(batch["std_input_ids"].flatten().tolist()) - {0})
    assert g[std_ids].abs().sum() > 0


def test_ce_ignores_reasoning_view(tiny_encoder, tiny_pairs):
    student, batch, _, _ = make_batch(tiny_encoder, tiny_pairs)
    ce = CrossEntropy()
    batch_no_rsn = {k: v for k, v in batch.items() if not k.startswith("rsn_")}
    assert torch.allclose(ce.compute(student, batch, ce.options())["loss"], ce.compute(student, batch_no_rsn, ce.options())["loss"])


def distill_recipe(**options):
    base = dict(train_input="pairs", reasoning_column="rationale", batch_size=16, learning_rate=2e-3,
                logging_steps=2, student_options={"max_length": 48, "reasoning_tokens": 32})
    return Recipe(name="stu", models={"student": "tiny-encoder"}, seed=1,
                  stages=[step("pairs", n=240), step("distill", **{**base, **options})])


def test_distill_stage_trains_evaluates_and_logs_terms(rd_engine):
    res = rd_engine.run(distill_recipe(max_steps=30))["distill"]
    m = res.metrics
    assert m["steps"] == 30 and 0 <= m["dev_macro_f1"] <= 1
    for key in ("dev_accuracy", "dev_auc_relevant", "dev_ndcg@5", "dev_f1_relevant", "dev_reasoning_view_macro_f1"):
        assert key in m
    folder = rd_engine.runs_dir / "stu" / "distill"
    history = json.loads((folder / "loss_history.json").read_text())
    assert {"loss_ce_std", "loss_ce_reasoning", "loss_infonce"} <= set(history[0])
    meta = json.loads((folder / "student" / "reasondistill.json").read_text())
    assert meta["labels"] == list(DOM.labels) and meta["domain"] == "local_services"


def test_hide_verdict_strips_label_sentences_from_train_and_dev_reasoning(rd_engine):
    from types import SimpleNamespace

    from datasets import Dataset

    from reasondistill.plugins.student.distill_stage import DistillOptions, hide_verdict_in, training_rows

    rows = [{"query": "q", "item": "i", "label": k, "rationale": f"Open late. So it is {DOM.labels[k]}."} for k in range(3)]
    ctx = SimpleNamespace(load_dataset=lambda name: Dataset.from_list(rows), domain=DOM)
    hidden, _ = training_rows(ctx, DistillOptions(reasoning_column="rationale", hide_verdict=True), True)
    assert hidden["reasoning"] == ["Open late."] * 3
    kept, _ = training_rows(ctx, DistillOptions(reasoning_column="rationale"), True)
    assert kept["reasoning"] == [r["rationale"] for r in rows]
    plain, _ = training_rows(ctx, DistillOptions(reasoning_column="rationale", hide_verdict=True), False)
    assert plain["reasoning"] == [r["rationale"] for r in rows]  # a loss without the reasoning view: nothing stripped
    dev = Dataset.from_list(rows)  # the dev side, as the reasoning view is scored
    assert hide_verdict_in(dev, DistillOptions(reasoning_column="rationale", hide_verdict=True), DOM)["rationale"] \
        == ["Open late."] * 3
    assert hide_verdict_in(dev, DistillOptions(reasoning_column="rationale"), DOM)["rationale"] == dev["rationale"]
    m = rd_engine.run(distill_recipe(max_steps=4, hide_verdict=True))["distill"].metrics
    assert 0 <= m["dev_reasoning_view_macro_f1"] <= 1


def test_same_seed_same_student_whatever_ran_before(rd_hooks, tiny_encoder, tmp_path):
    """A base encoder gets a new classifier head before the Trainer seeds; the engine seeds every stage."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from reasondistill.engine import Engine

    base = tmp_path / "base-encoder"  # no classifier weights, like a sentence-transformers checkpoint
    BertModel(BertConfig.from_pretrained(tiny_encoder)).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(base)
    results = []
    for name, draws in (("a", 0), ("b", 1000)):
        torch.rand(draws)  # what ran earlier in the process moves the global RNG
        recipe = distill_recipe(max_steps=6, loss="ce").model_copy(update={"models": {"student": str(base)}})
        res = Engine(rd_hooks, runs_dir=tmp_path / name).run(recipe)["distill"]
        history = json.loads((tmp_path / name / "stu" / "distill" / "loss_history.json").read_text())
        results.append(([h["loss"] for h in history], res.metrics["dev_macro_f1"]))
    assert results[0] == results[1]


def test_distill_learns_the_rule(rd_engine):
    m = rd_engine.run(distill_recipe(max_steps=120, loss="ce"))["distill"].metrics
    assert m["dev_accuracy"] > 0.55, m  # the majority class is ~0.45


def test_checkpointed_run_resumes(rd_engine, monkeypatch):
    from transformers import Trainer

    real_save = Trainer._save_checkpoint
    calls = {"n": 0}

    def save_then_die(self, *a, **kw):
        real_save(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    recipe = distill_recipe(max_steps=12, save_steps=6)
    with pytest.raises(KeyboardInterrupt):
        rd_engine.run(recipe)
    assert (rd_engine.runs_dir / "stu" / "distill" / "checkpoints" / "checkpoint-6").exists()
    m = rd_engine.run(recipe)["distill"].metrics
    assert m["resumed_from"] == "6" and m["steps"] == 12


def test_predictor_matches_model(rd_engine):
    rd_engine.run(distill_recipe(max_steps=10))
    folder = rd_engine.runs_dir / "stu" / "distill" / "student"
    pred = Predictor(folder, batch_size=7)
    from datasets import load_from_disk

    dev = list(load_from_disk(str(rd_engine.runs_dir / "stu" / "pairs" / "dev")))
    labels = pred.predict(dev, DOM)
    with torch.inference_mode():
        direct = []
        for r in dev:
            enc = pred.tokenizer(DOM.query_text(r), DOM.item_text(r), return_tensors="pt", truncation=True, max_length=48)
            direct.append(int(pred.model(**enc).logits.argmax(-1)))
    assert labels == direct


def test_onnx_export_gives_torch_labels(rd_engine):
    recipe = distill_recipe(max_steps=20)
    recipe.stages.append(step("export", agreement_rows=100))
    m = rd_engine.run(recipe)["export"].metrics
    assert m["agreement_fp32"] == 1.0 and m["agreement_int8"] >= 0.95
    from reasondistill.onnx_export import OnnxPredictor

    folder = rd_engine.runs_dir / "stu"
    torch_pred = Predictor(folder / "distill" / "student")
    onnx_pred = OnnxPredictor(folder / "export" / "model" / "onnx", "fp32", batch_size=5)
    q, i = ["cheap pizza", "gym near harbor open late"] * 4, ["Blue Door: pizza", "Sunny Club: gym; district: Harbor"] * 4
    import numpy as np

    assert np.allclose(torch_pred.predict_proba(q, i), onnx_pred.predict_proba(q, i), atol=1e-4)


def _shared_batch(tiny_encoder, tiny_pairs, n=8):
    comp = EncoderClassifier()
    opts = comp.Options(max_length=48, reasoning_tokens=32, reasoning_layout="shared")
    tok = comp.tokenizer(str(tiny_encoder))
    rows = list(tiny_pairs.select(range(n)))
    enc = comp.encode(tok, [DOM.query_text(r) for r in rows], [DOM.item_text(r) for r in rows],
                      [r["rationale"] for r in rows], opts)
    feats = [{k: enc[k][i] for k in enc} | {"labels": rows[i]["label"]} for i in range(n)]
    return comp.build(str(tiny_encoder), 3, opts), PairCollator(tok)(feats), tok


def test_shared_layout_standard_view_is_exact(tiny_encoder, tiny_pairs):
    student, batch, tok = _shared_batch(tiny_encoder, tiny_pairs)
    assert set(k.split("_")[0] for k in batch if k != "labels") == {"std", "shr"}
    student.eval()
    with torch.no_grad():
        (logits, cls), (r_logits, r_cls) = student.forward_shared(
            batch["shr_input_ids"], batch["shr_attention_mask"], batch["shr_split"], batch["shr_token_type_ids"])
        ref_logits, ref_cls = student.forward_view(batch["std_input_ids"], batch["std_attention_mask"],
                                                   batch["std_token_type_ids"])
        # the head applied to a [CLS] vector is the model's own head
        assert torch.allclose(student.head(ref_cls), ref_logits, atol=1e-5)
    assert torch.allclose(cls, ref_cls, atol=1e-4) and torch.allclose(logits, ref_logits, atol=1e-4)
    assert not torch.allclose(r_cls, cls, atol=1e-3), "the reasoning [CLS] sees the reasoning"
    # each row: standard tokens, then reasoning, [SEP], and the second [CLS] last
    ids, split = batch["shr_input_ids"][0].tolist(), int(batch["shr_split"][0])
    real = int(batch["shr_attention_mask"][0].sum())
    assert ids[:split] == [t for t in batch["std_input_ids"][0].tolist() if t != tok.pad_token_id]
    assert ids[real - 1] == tok.cls_token_id and ids[real - 2] == tok.sep_token_id
    # segment ids: the standard part's own, 1 for the reasoning and its [SEP], 0 for the second [CLS]
    types = batch["shr_token_type_ids"][0].tolist()
    assert types[:split] == batch["std_token_type_ids"][0].tolist()[:split]
    assert set(types[split:real - 1]) == {1} and types[real - 1] == 0


def test_shared_layout_trains_both_views(tiny_encoder, tiny_pairs):
    student, batch, _ = _shared_batch(tiny_encoder, tiny_pairs)
    crsd = CRSD()
    rsn_only = set(batch["shr_input_ids"].flatten().tolist()) - set(batch["std_input_ids"].flatten().tolist())
    g = _encoder_grad_norms(student, batch, crsd, crsd.options({"w_std": 0, "w_nce": 0}))
    assert g[list(rsn_only)].abs().sum() > 0
    options = crsd.options()
    optim = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = crsd.compute(student, batch, options)
        optim.zero_grad()
        out["loss"].backward()
        optim.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] * 0.8


def test_distill_stage_with_shared_layout(rd_engine):
    res = rd_engine.run(distill_recipe(max_steps=10, student_options={"max_length": 48, "reasoning_tokens": 32,
                                                                      "reasoning_layout": "shared"}))["distill"]
    assert 0 <= res.metrics["dev_reasoning_view_macro_f1"] <= 1


def test_unknown_characters_become_tokens(tiny_encoder):
    comp = EncoderClassifier()
    tok = comp.tokenizer(str(tiny_encoder))
    texts = ["小孩咳嗽感冒", "小孩感冒过后久咳嗽该吃什么药", "pizza 小"]
    unk = tok.unk_token_id
    before = tok(texts[0], add_special_tokens=False)["input_ids"]
    assert unk in before, "the tiny English vocabulary lacks these characters"
    assert comp.adapt_tokenizer(tok, texts, comp.Options()) == []  # off by default
    added = comp.adapt_tokenizer(tok, texts, comp.Options(add_unknown_characters=5))
    assert added[:3] == ["小", "冒", "咳"] or set(added[:2]) == {"小", "冒"}  # most frequent first
    assert len(added) == 5
    again = comp.tokenizer(str(tiny_encoder))
    assert comp.adapt_tokenizer(again, texts, comp.Options(add_unknown_characters=5)) == added  # deterministic
    student = comp.build(str(tiny_encoder), 3, comp.Options(), vocab_size=len(tok))
    assert student.model.get_input_embeddings().num_embeddings == len(tok)
    ids = tok("小孩", add_special_tokens=False)["input_ids"]
    assert unk not in ids and len(ids) == 2 and ids[0] >= student.model.config.vocab_size - len(added)
    enc = tok([texts[0]], return_tensors="pt")
    assert student.model(**enc).logits.shape == (1, 3)


def test_added_characters_start_apart_where_asked(tiny_encoder):
    """transformers' mean resizing starts every added character at one point (a student cannot tell
    them apart); ``added_token_init: distinct`` draws them at the spread of the shipped rows."""
    comp = EncoderClassifier()
    tok = comp.tokenizer(str(tiny_encoder))
    shipped = len(tok)
    comp.adapt_tokenizer(tok, ["小孩咳嗽感冒过后久"], comp.Options(add_unknown_characters=8))
    rows = {}
    for init in ("mean", "distinct"):
        student = comp.build(str(tiny_encoder), 3, comp.Options(added_token_init=init), vocab_size=len(tok))
        weight = student.model.get_input_embeddings().weight.detach()
        rows[init] = weight[shipped:]
        assert torch.equal(weight[:shipped], comp.build(str(tiny_encoder), 3, comp.Options()).model
                           .get_input_embeddings().weight.detach())  # the shipped rows untouched
    apart = torch.cdist(weight[:shipped], weight[:shipped]).mean()  # the shipped rows' typical distance
    assert rows["mean"].shape == (8, weight.shape[1]) and torch.cdist(rows["mean"], rows["mean"]).max() < 1e-3 * apart
    distinct = torch.cdist(rows["distinct"], rows["distinct"])[~torch.eye(8, dtype=torch.bool)]
    assert distinct.min() > 0.5 * apart and distinct.mean() < 2 * apart
    assert torch.allclose(rows["distinct"].mean(0), weight[:shipped].mean(0), atol=3 * float(weight[:shipped].std(0).max()))
    again = comp.build(str(tiny_encoder), 3, comp.Options(added_token_init="distinct"), vocab_size=len(tok))
    assert torch.equal(again.model.get_input_embeddings().weight.detach()[shipped:], rows["distinct"])  # deterministic


def test_distill_adds_characters_and_serves_them(rd_engine, tmp_path):
    import json as _json

    # characters that only the reasoning has (龘靐齉) are added where the loss reads the reasoning
    rows = [{"query": q, "item": i, "label": k % 3, "rationale": "龘靐齉: 相关"} for k, (q, i) in enumerate(
        [("小孩咳嗽感冒", "小孩感冒过后久咳嗽该吃什么药"), ("英雄大作战", "英雄大作战无敌版小游戏"),
         ("复制文件", "怎么把文件复制到另一个文件")] * 12)]
    data = tmp_path / "zh.jsonl"
    data.write_text("".join(_json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = Recipe(name="zh", domain="web_search_zh", models={"student": "tiny-encoder"}, stages=[
        step("pairs", source=str(data), dev_source=str(data), dev_limit=9),
        step("distill", train_input="pairs", loss="ce", max_steps=4, batch_size=8, learning_rate=1e-3,
             student_options={"max_length": 48, "add_unknown_characters": 400}),
        step("distill", name="crsd", train_input="pairs", loss="crsd", reasoning_column="rationale", max_steps=2,
             batch_size=8, student_options={"max_length": 48, "reasoning_tokens": 16, "add_unknown_characters": 400})])
    res = rd_engine.run(recipe)
    m = res["distill"].metrics
    assert m["added_tokens"] > 20
    assert res["crsd"].metrics["added_tokens"] == m["added_tokens"] + 3
    folder = rd_engine.runs_dir / "zh" / "distill" / "student"
    pred = Predictor(folder)
    assert pred.tokenizer.unk_token_id not in pred.tokenizer("咳嗽", add_special_tokens=False)["input_ids"]
    assert pred.predict_proba(["小孩咳嗽"], ["小孩感冒"]).shape == (1, 3)


def test_view_layout_checks_and_reasoning_view_forward(tiny_encoder):
    """reasondistill.views: what a student's encoding must carry, and which logits are the reasoning view."""
    from reasondistill import PluginError
    from reasondistill.views import check_encoding, forward_reasoning, forward_view, forward_views

    std = {"std_input_ids": [[1]], "std_attention_mask": [[1]]}
    check_encoding({**std, "labels": [0]}, with_reasoning=False, student="s")  # labels may ride along
    bad = [({**std, "rsn_input_ids": [[1]], "shr_input_ids": [[1]], "shr_split": [1]}, "both rsn_\\* and shr_\\*"),
           ({**std, "shr_input_ids": [[1]], "shr_attention_mask": [[1]]}, "needs shr_split"),
           ({**std, "extra_ids": [[1]]}, "keys outside the view layout: extra_ids"),
           ({"std_input_ids": [[1]]}, "returned no std_input_ids/std_attention_mask"),
           (std, "needs the reasoning view")]
    for encoding, message in bad:
        with pytest.raises(PluginError, match=f"'s' failed in hook 'Student.encode': .*{message}"):
            check_encoding(encoding, with_reasoning=message == "needs the reasoning view", student="s")

    comp = EncoderClassifier()
    tok = comp.tokenizer(str(tiny_encoder))
    for layout in ("separate", "shared"):
        opts = comp.options({"max_length": 32, "reasoning_tokens": 16, "reasoning_layout": layout})
        net = comp.build(str(tiny_encoder), 3, opts).eval()
        enc = comp.encode(tok, ["cheap pizza", "hair salon"], ["Blue Door: pizza", "Cut: barber"],
                          ["pizza is what was asked", "a barber, not a salon"], opts)
        batch = PairCollator(tok)([{k: v[i] for k, v in enc.items()} for i in range(2)])
        with torch.no_grad():
            (s_logits, _), (r_logits, _) = forward_views(net, batch)
            assert torch.allclose(forward_reasoning(net, batch)[0], r_logits)
            assert torch.allclose(forward_view(net, batch, "std")[0], s_logits, atol=1e-5)
            assert not torch.allclose(r_logits, s_logits), "the reasoning view is not the standard one"


def test_dropout_option_reaches_every_dropout_the_encoder_has(tiny_encoder):
    """``dropout: 0.3`` sets the encoder's hidden, attention and classifier dropout; without it,
    the model's own values stay."""
    comp = EncoderClassifier()
    net = comp.build(str(tiny_encoder), 3, comp.Options(dropout=0.3))
    config = net.model.config
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.classifier_dropout) == (0.3, 0.3, 0.3)
    plain = comp.build(str(tiny_encoder), 3, comp.Options()).model.config
    assert plain.hidden_dropout_prob != 0.3 and plain.classifier_dropout != 0.3
