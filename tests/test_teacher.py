"""Teacher adaptation on tiny models, for real: dapt -> reasoning -> sft -> preference (DPO)."""

import pytest
from datasets import load_from_disk
from transformers import AutoModelForCausalLM

from reasondistill import Recipe, step
from reasondistill.plugins.domains.local_services import LocalServices, generate_pairs

DOM = LocalServices()


def teacher_recipe(**over):
    stages = [
        step("pairs", n=160),
        step("dapt", max_steps=2, batch_size=4, max_length=64, lora=True, lora_r=4, eval_rows=4, eval_max_new_tokens=8),
        step("reasoning", source="column", limit=48),
        step("sft", max_steps=3, batch_size=4, max_length=256, eval_rows=4, eval_max_new_tokens=8),
        step("preference", prompts=6, candidates=3, max_new_tokens=12, min_margin=0.0, on_low_parse="warn", max_steps=2, batch_size=2,
             max_length=256, heldout_prompts=3),
        step("teacher_eval", name="after_dpo", rows=4, max_new_tokens=8, on_low_parse="warn"),
    ]
    return Recipe(name="teach", models={"teacher": "tiny-causal-lm"}, seed=2, **over, stages=stages)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from reasondistill.engine import Engine
    from reasondistill.manager import Hooks

    engine = Engine(Hooks(), tmp_path_factory.mktemp("teach") / "runs")
    return engine, engine.run(teacher_recipe())


@pytest.mark.parametrize("stage", ["dapt", "sft", "preference"])
def test_stage_trains_saves_and_reloads(teacher_run, stage):
    engine, results = teacher_run
    m = results[stage].metrics
    assert m["steps"] >= 2 and m["train_loss"] > 0 and m["step_seconds"] > 0
    folder = engine.runs_dir / "teach" / stage / "teacher"
    assert (folder / "model.safetensors").exists() and not list(folder.glob("adapter_*")), "LoRA is merged"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_each_stage_starts_from_the_previous_teacher(teacher_run):
    import json

    engine, _ = teacher_run
    sft = json.loads((engine.runs_dir / "teach" / "sft" / "manifest.json").read_text())
    assert sft["inputs"]["dapt"]["teacher"] == "dapt/teacher"


def test_teacher_evaluation_metrics(teacher_run):
    _, results = teacher_run
    m = results["sft"].metrics
    for key in ("teacher_parse_rate", "teacher_macro_f1", "teacher_reward_format", "teacher_reward_aggregate"):
        assert 0 <= m[key] <= 1, key
    p = results["preference"].metrics
    assert "before_reward_aggregate" in p and "after_reward_aggregate" in p


def test_teacher_eval_saves_each_answer_with_its_reward_vector(teacher_run):
    import json

    engine, results = teacher_run
    answers = load_from_disk(str(engine.runs_dir / "teach" / "after_dpo" / "answers"))
    m = results["after_dpo"].metrics
    assert len(answers) == m["rows"] == 4
    assert sum(a["label"] == a["gold"] for a in answers) / 4 == m["teacher_accuracy"]
    aggregate = sum(json.loads(a["scores"])["aggregate"] for a in answers) / 4
    assert round(aggregate, 4) == m["teacher_reward_aggregate"]
    for a in answers:
        assert DOM.parse_completion(a["completion"]).label in (a["label"], None)


def test_claims_dimension_comes_from_the_domain(rd_hooks):
    from reasondistill.plugins.domains.product_search import ProductSearch

    shop, row = ProductSearch(), {"query": "cordless pump", "item": "Ryobi Cordless Drill Kit", "label": 1}
    true = shop.format_completion(shop.rationale(row, 1), 1)
    false = true.replace("title: cordless", "title: @").replace("title: pump", "title: cordless").replace("@", "pump")
    assert "in the title: cordless. Not in the title: pump." in true and "title: pump. Not in the title: cordless" in false
    assert rd_hooks.score_reasoning(row, true, shop)["claims"] == 1.0
    assert rd_hooks.score_reasoning(row, false, shop)["claims"] == 0.0
    faithful = [rd_hooks.score_reasoning(row, text, shop)["faithfulness"] for text in (true, false)]
    assert faithful[0] == faithful[1], "word-level faithfulness can't tell them apart"
    assert "claims" not in rd_hooks.score_reasoning(row, true, DOM), "abstains where the domain can't check"


def test_preference_pairs_carry_reward_vectors(teacher_run):
    engine, results = teacher_run
    prefs = load_from_disk(str(engine.runs_dir / "teach" / "preference" / "preferences"))
    assert len(prefs) == results["preference"].metrics["pairs"] > 0
    dims = {"label_agreement", "format", "faithfulness", "self_consistency", "length"}
    for row in prefs:
        assert dims <= set(row["chosen_scores"]) and row["margin"] >= 0
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    # pairs per gold label: counted from the pairs' prompts, the preference split's labels
    m = results["preference"].metrics
    pairs_data = load_from_disk(str(engine.runs_dir / "teach" / "pairs" / "pairs"))
    gold_of = dict(zip(pairs_data["pair_id"], pairs_data["label"]))
    for label_id, name in enumerate(DOM.labels):
        want = sum(gold_of[p] == label_id for p in prefs["pair_id"])
        assert m[f"pairs_gold_{name.replace(' ', '_')}"] == want, name


def test_sft_data_is_prompt_completion_chat(teacher_run):
    engine, _ = teacher_run
    data = load_from_disk(str(engine.runs_dir / "teach" / "reasoning" / "sft_data"))
    row = data[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert DOM.parse_completion(row["completion"][0]["content"]).label == row["label"]


def test_star_rationalization_keeps_only_agreeing_chains(rd_engine, tmp_path):
    """Half the pairs lack a chain; the base teacher is asked to explain their gold label."""
    import json

    rows = generate_pairs(n=40, seed=5)
    for r in rows[::2]:
        r["rationale"] = ""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = Recipe(name="star", models={"teacher": "tiny-causal-lm"}, stages=[
        step("pairs", source=str(path), dev_fraction=0.0),
        step("reasoning", source="column_then_rationalize", samples=2, max_new_tokens=24)])
    m = rd_engine.run(recipe)["reasoning"].metrics
    assert m["examples"] == 20 + m["rationalized"] and m["dropped"] == 20 - m["rationalized"]
    data = load_from_disk(str(rd_engine.runs_dir / "star" / "reasoning" / "sft_data"))
    assert len(data) == m["examples"]
    for row in data:
        assert DOM.parse_completion(row["completion"][0]["content"]).label == row["label"]
        assert row["reasoning"] and DOM.parse_completion(row["completion"][0]["content"]).reasoning == row["reasoning"]
    with pytest.raises(Exception, match="no 'rationale'|have no"):
        rd_engine.run(Recipe(name="star2", models={"teacher": "tiny-causal-lm"}, stages=[
            step("pairs", source=str(path), dev_fraction=0.0), step("reasoning", source="column")]))


@pytest.mark.parametrize("completion", ["", "Label:", "Label: maybe", "\x00\x00", "Reasoning: ok", "Label: relevant" * 500,
                                        "Reasoning: 🙂 非常相关\nLabel: RELEVANT"])
def test_malformed_outputs_are_scored(rd_hooks, completion):
    ex = {"query": "pizza", "item": "Blue Door: pizza", "label": 2}
    vec = rd_hooks.score_reasoning(ex, completion, DOM)
    assert {"label_agreement", "format", "faithfulness", "self_consistency", "length"} <= set(vec)
    assert all(0 <= v <= 1 for v in vec.values())
    assert 0 <= rd_hooks.aggregate_reward(vec, {"label_agreement": 2}) <= 1


def test_learned_multi_head_reward_model(teacher_run):
    """Trained on the preference pairs, one head per dimension, then scoring as learned_<dim>."""
    from reasondistill.engine import Engine

    engine, _ = teacher_run
    recipe = teacher_recipe()
    recipe.stages.append(step("reward_model", epochs=2, batch_size=4, max_length=128))
    recipe.stages.append(step("preference", name="preference2", prompts=4, candidates=3, max_new_tokens=12,
                              min_margin=0.0, max_steps=1, batch_size=2, max_length=256, learned_reward=True,
                              on_low_parse="warn",
                              sft_weight=0.5))
    results = Engine(engine.hooks, engine.runs_dir).run(recipe)
    rm = results["reward_model"].metrics
    assert rm["dims"] >= 5 and rm["steps"] >= 1
    from reasondistill.plugins.rewards.reward_model import MultiHeadRewardModel

    model, _ = MultiHeadRewardModel.load(engine.runs_dir / "teach" / "reward_model" / "reward_model")
    assert len(model.dims) == rm["dims"] and model.heads.out_features == rm["dims"]
    prefs = load_from_disk(str(engine.runs_dir / "teach" / "preference2" / "preferences"))
    assert all(f"learned_{d}" in row["chosen_scores"] for row in prefs for d in model.dims)
    assert "learned_reward" not in engine.hooks.implementers()["score_reasoning"], "unregistered after the stage"
    assert results["preference2"].metrics["train_loss"] > 0  # DPO + NLL on the chosen answers (sft_weight)


def test_bradley_terry_loss_orders_by_sign():
    import torch

    from reasondistill.plugins.rewards.bradley_terry import bradley_terry_loss

    rc, rr = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    good = bradley_terry_loss(rc, rr, torch.tensor([[1.0, -1.0]]))
    bad = bradley_terry_loss(rc, rr, torch.tensor([[-1.0, 1.0]]))
    assert good < 0.2 < bad
    assert float(bradley_terry_loss(rc, rr, torch.zeros(1, 2))) == 0.0


def test_prompts_are_drawn_evenly_across_gold_labels():
    from reasondistill.plugins.teacher.preference import pick_prompts

    pool = [{"pair_id": str(i), "label": 2} for i in range(10)] + [{"pair_id": "a", "label": 0}, {"pair_id": "b", "label": 1}]
    picked = pick_prompts(pool, 6, balance=True)
    assert [r["label"] for r in picked] == [0, 1, 2, 2, 2, 2]  # minority labels first, then what is left
    assert pick_prompts(pool, 6, balance=False) == pool[:6]
    assert pick_prompts([{"label": -1}] * 3, 2, balance=True) == [{"label": -1}] * 2


def test_chosen_prefers_the_gold_label(rd_hooks):
    import warnings
    from types import SimpleNamespace

    from reasondistill import Recipe
    from reasondistill.plugins.domains.local_services import LocalServices
    from reasondistill.plugins.teacher.preference import build_pairs

    dom = LocalServices()
    ctx = SimpleNamespace(hooks=rd_hooks, domain=dom, recipe=Recipe(name="r", stages=[{"uses": "pairs"}],
                                                                   reward_weights={"format": 5.0, "label_agreement": 1.0}))
    row = {"pair_id": "p", "query": "pizza", "item": "Blue Door: pizza", "label": 0}
    wrong_but_tidy = f"Reasoning: pizza is served.\nLabel: {dom.labels[2]}"
    right_but_messy = f"Label: {dom.labels[0]}\nand some text after the label"
    garbage = "???"
    plain, _ = build_pairs(ctx, [row], [[wrong_but_tidy, right_but_messy, garbage]], 0.0, match_gold=False)
    gold, _ = build_pairs(ctx, [row], [[wrong_but_tidy, right_but_messy, garbage]], 0.0, match_gold=True)
    assert plain[0]["chosen"][0]["content"] == wrong_but_tidy
    assert gold[0]["chosen"][0]["content"] == right_but_messy and gold[0]["rejected"][0]["content"] == garbage
    right = f"Reasoning: no pizza, so {dom.labels[0]}.\nLabel: {dom.labels[0]}"
    flips, _ = build_pairs(ctx, [row], [[right, wrong_but_tidy]], 0.0, match_gold=True, label_flips=True)
    assert [p["label_flip"] for p in flips] == [False, True, True]
    assert flips[0]["rejected"][0]["content"] == wrong_but_tidy
    for pair, wrong in zip(flips[1:], (1, 2)):
        assert pair["chosen"][0]["content"] == right
        assert pair["rejected"][0]["content"] == f"Reasoning: no pizza, so {dom.labels[wrong]}.\nLabel: {dom.labels[wrong]}"
        assert pair["margin"] > 0 and pair["rejected_scores"]["label_agreement"] == 0
    no_gold, _ = build_pairs(ctx, [row], [[wrong_but_tidy, garbage]], 0.0, match_gold=True, label_flips=True)
    assert len(no_gold) == 1  # no candidate carries the gold label: nothing to flip


def test_a_pair_whose_margin_equals_min_margin_is_kept(rd_hooks):
    """``min_margin`` is the least reward gap a pair may have: a gap equal to it is kept, the
    nearest float above it drops the prompt (and counts it)."""
    import math
    from types import SimpleNamespace

    from reasondistill import Recipe
    from reasondistill.plugins.domains.local_services import LocalServices
    from reasondistill.plugins.teacher.preference import build_pairs

    dom = LocalServices()
    ctx = SimpleNamespace(hooks=rd_hooks, domain=dom, recipe=Recipe(name="r", stages=[{"uses": "pairs"}]))
    row = {"pair_id": "p", "query": "pizza", "item": "Blue Door: pizza", "label": 0}
    cands = [[f"Reasoning: no pizza here.\nLabel: {dom.labels[0]}", "???"]]
    [pair], dropped = build_pairs(ctx, [row], cands, 0.0)
    margin = pair["margin"]
    assert margin > 0 and dropped == 0
    kept, dropped = build_pairs(ctx, [row], cands, margin)
    assert len(kept) == 1 and dropped == 0, "a gap equal to min_margin is kept"
    kept, dropped = build_pairs(ctx, [row], cands, math.nextafter(margin, math.inf))
    assert kept == [] and dropped == 1


def test_lora_layers_trains_only_the_top_layers(rd_engine):
    """``lora_layers: 1`` on the 2-layer tiny teacher: the merged teacher differs from its start in
    the top layer's linear weights only (the bottom layer, embeddings and norms are bit-equal)."""
    import torch

    from reasondistill.model_refs import resolve_model
    from reasondistill.plugins.domains.local_services import LocalServices

    recipe = Recipe(name="top", models={"teacher": "tiny-causal-lm"}, seed=0, stages=[
        step("pairs", n=40), step("reasoning", source="column", limit=16),
        step("sft", max_steps=3, batch_size=4, max_length=256, learning_rate=5e-2, lora_layers=1, lora_dropout=0.0)])
    rd_engine.run(recipe)
    start = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-causal-lm", rd_engine.hooks, LocalServices()))
    after = AutoModelForCausalLM.from_pretrained(rd_engine.runs_dir / "top" / "sft" / "teacher")
    before = dict(start.named_parameters())
    changed = {n for n, p in after.named_parameters() if not torch.equal(p, before[n])}
    linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert changed == {f"model.layers.1.{part}.{name}.weight" for name in linear
                       for part in (["self_attn"] if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else ["mlp"])}


def test_activation_checkpointing_is_off_on_a_cpu_unless_asked(tmp_path):
    """trl's configs turn it on by default (1.26x slower SFT steps on this CPU); the stages decide."""
    import warnings
    from types import SimpleNamespace

    from reasondistill.plugins.teacher.sft import SFTOptions
    from reasondistill.plugins.teacher.train_options import common_args

    from trl import SFTConfig

    ctx = SimpleNamespace(dir=tmp_path, seed=0)
    assert SFTConfig(output_dir=str(tmp_path), use_cpu=True).gradient_checkpointing is True  # trl's default
    with warnings.catch_warnings():  # named as this transformers reads it, not by a deprecated alias
        warnings.simplefilter("error", FutureWarning)
        assert SFTConfig(**common_args(ctx, SFTOptions())).gradient_checkpointing is False
    assert SFTConfig(**common_args(ctx, SFTOptions(gradient_checkpointing=True))).gradient_checkpointing is True


def test_group_by_length_batches_rows_of_similar_length(tmp_path, tiny_teacher):
    """``group_by_length`` reaches trl's trainer as transformers' LengthGroupedSampler (under either
    name the installed transformers reads): each batch's lengths span less than random batches'."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reasondistill.plugins.teacher.loading import load_causal_lm
    from reasondistill.plugins.teacher.train_options import common_args
    from reasondistill.plugins.teacher.sft import SFTOptions

    model, tok = load_causal_lm(str(tiny_teacher))
    rows = [{"prompt": [{"role": "user", "content": "q " * (1 + (7 * i) % 40)}],
             "completion": [{"role": "assistant", "content": "a"}]} for i in range(64)]
    ctx = SimpleNamespace(dir=tmp_path, seed=0)

    def spread(grouped: bool) -> float:
        args = SFTConfig(**common_args(ctx, SFTOptions(batch_size=4, max_length=128, group_by_length=grouped)),
                         completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        order = list(trainer._get_train_sampler())
        batches = [[lengths[i] for i in order[k:k + 4]] for k in range(0, len(order), 4)]
        return sum(max(b) - min(b) for b in batches) / len(batches)

    assert spread(True) < 0.5 * spread(False)


def test_learning_curve_points_match_the_teacher_they_measure(rd_engine, tiny_teacher):
    """``eval_every``: one point per N steps with examples seen and training seconds; the last
    point measures the same weights as the stage's final evaluation, so their metrics agree."""
    import json

    recipe = Recipe(name="curve", models={"teacher": str(tiny_teacher)}, seed=0, stages=[
        step("pairs", n=60), step("reasoning", source="column", limit=24),
        step("sft", max_steps=4, batch_size=2, max_length=256, learning_rate=1e-3, eval_every=2, eval_rows=12,
             eval_max_new_tokens=48)])
    result = rd_engine.run(recipe)["sft"]
    points = json.loads((rd_engine.runs_dir / "curve" / "sft" / result.outputs["curve"]).read_text())
    assert [(p["step"], p["examples"]) for p in points] == [(2, 4), (4, 8)]
    assert 0 < points[0]["train_seconds"] < points[1]["train_seconds"]
    assert points[-1]["parse_rate"] == result.metrics["teacher_parse_rate"] > 0
    assert points[-1]["macro_f1"] == result.metrics["teacher_macro_f1"]
    shares = [v for k, v in result.metrics.items() if k.startswith("teacher_answer_share_")]
    assert len(shares) == 3 and sum(shares) == pytest.approx(result.metrics["teacher_parse_rate"])  # each answer once
    assert not (rd_engine.runs_dir / "curve" / "sft" / "curve-teacher").exists()


def test_dapt_reads_text_files_once_per_unique_line_and_names_a_bad_file(rd_engine, tmp_path):
    from reasondistill.errors import DataError

    notes = tmp_path / "notes.txt"
    notes.write_text("a cordless drill for brick walls\n\n   \na cordless drill for brick walls\nplumbers near the harbor\n")

    def dapt(name, files):
        stages = [step("pairs", n=20), step("dapt", max_steps=1, batch_size=2, max_length=32, text_files=files)]
        return rd_engine.run(Recipe(name=name, models={"teacher": "tiny-causal-lm"}, stages=stages))["dapt"].metrics

    plain = dapt("plain", [])["documents"]
    assert dapt("notes", [str(notes)])["documents"] == plain + 2  # the blank lines and the repeat add nothing
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"^stage 'dapt': text_files: .*latin1\.txt: 'utf-8' codec can't decode"):
        dapt("binary", [str(binary)])
    with pytest.raises(DataError, match=r"text_files: .*missing\.txt.*no such file"):
        dapt("missing", [str(tmp_path / "missing.txt")])


def test_reasoning_stage_keeps_only_gold_labelled_rows(rd_engine, tmp_path):
    """Unjudged rows (label -1 in a labelled file) have no label for a chain to end in: left out."""
    import json

    from reasondistill.plugins.domains.local_services import generate_pairs

    rows = generate_pairs(n=10, seed=3)
    for r in rows[6:]:
        del r["label"]
    src = tmp_path / "partly_judged.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = Recipe(name="judged", stages=[step("pairs", source=str(src), dev_fraction=0.0),
                                           step("reasoning", source="column")])
    m = rd_engine.run(recipe)["reasoning"].metrics
    data = load_from_disk(str(rd_engine.runs_dir / "judged" / "reasoning" / "sft_data")).to_list()
    assert m["examples"] == len(data) == 6
    assert sorted(ex["label"] for ex in data) == sorted(r["label"] for r in rows[:6])
