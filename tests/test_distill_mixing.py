"""Gold + teacher rows in one student, per-row weights in every loss, the CRSD view KL term, and
the quality gate between annotation and distillation (issue #18)."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from reasondistill.metrics import classification_metrics
from reasondistill.plugins.domains.local_services import LocalServices, generate_pairs

from .test_ml_core import CLS, LABELS, LOGITS, PROBS, R_CLS, R_LOGITS, _batch, _log_softmax

WEIGHTS = [0.5, 2.0, 0.5]  # mean 1, as the stage scales them


def _compute(name: str, weights=None, soft: bool = True, **options):
    from reasondistill.manager import get_hooks

    loss = get_hooks().catalogue.get("loss", name)
    student, batch = _batch(soft)
    if weights is not None:
        batch["weight"] = torch.tensor(weights)
    return loss.compute(student, batch, loss.options(options)), student


def _rows_ce(logits, labels):
    ls = _log_softmax(logits)
    return np.array([-ls[i, y] for i, y in enumerate(labels)])


def _rows_nce(a, b, t):
    a = np.asarray(a) / np.linalg.norm(a, axis=-1, keepdims=True)
    b = np.asarray(b) / np.linalg.norm(b, axis=-1, keepdims=True)
    return _rows_ce(a @ b.T / t, list(range(len(a))))


def _rows_kl(p_logits, q_logits):
    """KL(p || q) per row, from logits."""
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def test_row_weights_scale_every_term_of_every_loss_hand_computed():
    w = np.asarray(WEIGHTS)
    ce, _ = _compute("ce", WEIGHTS)
    assert float(ce["loss"]) == pytest.approx(np.mean(w * _rows_ce(LOGITS, LABELS)), abs=1e-6)
    soft, _ = _compute("ce", WEIGHTS, soft_targets=True)
    assert float(soft["loss"]) == pytest.approx(np.mean(w * -(np.asarray(PROBS) * _log_softmax(LOGITS)).sum(-1)), abs=1e-6)

    kd, _ = _compute("kd", WEIGHTS, alpha=0.3, temperature=2.0)
    teacher = np.asarray(PROBS) ** 0.5
    teacher /= teacher.sum(-1, keepdims=True)
    kl_rows = (teacher * (np.log(teacher) - _log_softmax(np.asarray(LOGITS) / 2.0))).sum(-1) * 4.0
    assert float(kd["kl"]) == pytest.approx(np.mean(w * kl_rows), abs=1e-5)
    assert float(kd["loss"]) == pytest.approx(0.3 * np.mean(w * _rows_ce(LOGITS, LABELS)) + 0.7 * np.mean(w * kl_rows), abs=1e-5)

    opts = {"symmetric": True, "w_point": 0.3, "w_kl": 0.7, "temperature": 0.5}
    crsd, _ = _compute("crsd", WEIGHTS, **opts)
    nce = 0.5 * (_rows_nce(CLS, R_CLS, 0.5) + _rows_nce(R_CLS, CLS, 0.5))
    z = np.asarray(CLS) / np.linalg.norm(CLS, axis=-1, keepdims=True)
    zr = np.asarray(R_CLS) / np.linalg.norm(R_CLS, axis=-1, keepdims=True)
    point = 1 - (z * zr).sum(-1)
    kl = _rows_kl(R_LOGITS, LOGITS)
    expected = {"ce_std": np.mean(w * _rows_ce(LOGITS, LABELS)), "ce_reasoning": np.mean(w * _rows_ce(R_LOGITS, LABELS)),
                "infonce": np.mean(w * nce), "pointwise": np.mean(w * point), "kl_views": np.mean(w * kl)}
    for term, value in expected.items():
        assert float(crsd[term]) == pytest.approx(value, abs=1e-5), term
    total = expected["ce_std"] + expected["ce_reasoning"] + 0.5 * expected["infonce"] + 0.3 * expected["pointwise"] + 0.7 * expected["kl_views"]
    assert float(crsd["loss"]) == pytest.approx(total, abs=1e-5)


@pytest.mark.parametrize("name, options", [("ce", {}), ("kd", {}), ("crsd", {"w_kl": 1.0, "w_point": 0.2})])
def test_uniform_weights_train_as_no_weights(name, options):
    plain, _ = _compute(name, None, **options)
    ones, _ = _compute(name, [1.0, 1.0, 1.0], **options)
    skewed, _ = _compute(name, WEIGHTS, **options)
    assert float(ones["loss"]) == pytest.approx(float(plain["loss"]), abs=1e-6)
    assert float(skewed["loss"]) != pytest.approx(float(plain["loss"]), abs=1e-4)


def test_view_kl_pulls_only_the_standard_view():
    """KL(p(.|x,r) || p(.|x)): the reasoning view is the (detached) target, the standard view moves."""
    out, student = _compute("crsd", w_std=0.0, w_reasoning=0.0, w_nce=0.0, w_kl=1.0)
    assert float(out["kl_views"]) == pytest.approx(np.mean(_rows_kl(R_LOGITS, LOGITS)), abs=1e-6)
    out["loss"].backward()
    std_logits, rsn_logits = student.views["std"][0], student.views["rsn"][0]
    assert std_logits.grad is not None and float(std_logits.grad.abs().sum()) > 0
    assert rsn_logits.grad is None or float(rsn_logits.grad.abs().sum()) == 0


def test_collator_carries_row_weights(tiny_encoder):
    from transformers import AutoTokenizer

    from reasondistill.training import PairCollator

    tok = AutoTokenizer.from_pretrained(str(tiny_encoder))
    rows = [{"std_input_ids": tok("a b c")["input_ids"], "std_attention_mask": [1, 1, 1, 1, 1][: len(tok("a b c")["input_ids"])],
             "labels": i, "weight": w} for i, w in enumerate([0.25, 1.75])]
    batch = PairCollator(tok)(rows)
    assert batch["weight"].tolist() == [0.25, 1.75] and batch["labels"].tolist() == [0, 1]
    assert "weight" not in PairCollator(tok)([{k: v for k, v in r.items() if k != "weight"} for r in rows])


# --- the pipeline: gold pairs, a hidden-label pool the tiny teacher annotates, gates, mixed students ---

MIN_CONF = 0.6


def _recipe(tmp, teacher, extra: str = "") -> str:
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in generate_pairs(n=96, seed=11)))
    return f"""
name: mix
models: {{teacher: {teacher}, student: tiny-encoder}}
seed: 0
stages:
  - uses: pairs
    name: gold
    options: {{n: 200, dev_fraction: 0.4}}
  - uses: pairs
    name: pool
    options: {{source: {pool}, hide_labels: true, dev_fraction: 0.0}}
  - uses: annotate
    inputs: {{pairs: pool, dev: gold}}
    options: {{shard_size: 64, dev_rows: 40, annotator_options: {{max_new_tokens: 48, batch_size: 16, retries: 0}}}}
  - uses: distill
    name: gold_ce
    inputs: {{dev: gold}}
    options: {{train_input: gold.pairs, loss: ce, max_steps: 6, batch_size: 8, learning_rate: 0.002,
              student_options: {{max_length: 48}}}}
  - uses: gate
    name: gate_ref
    options: {{reference: gold_ce.student, policy: warn}}
  - uses: gate
    name: gate_high
    options: {{reference_macro_f1: 1.0, on_fail: gold_only}}
  - uses: distill
    name: mixed
    inputs: {{dev: gold}}
    options: {{loss: crsd, max_steps: 2, batch_size: 8, gate: gate_ref.verdict,
              sources: [{{input: annotate.annotations, min_confidence: {MIN_CONF}, confidence_weight: true}},
                        {{input: gold.pairs, weight: 2.0, reasoning_column: rationale}}],
              student_options: {{max_length: 48, reasoning_tokens: 32}}}}
  - uses: distill
    name: fallen_back
    inputs: {{dev: gold}}
    options: {{loss: crsd, max_steps: 2, batch_size: 8, gate: gate_high.verdict,
              sources: [{{input: annotate.annotations}}, {{input: gold.pairs, reasoning_column: rationale}}],
              student_options: {{max_length: 48, reasoning_tokens: 32}}}}
{extra}"""


def _cli(*args) -> tuple[int, str]:
    from reasondistill.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, tiny_teacher):
    tmp = tmp_path_factory.mktemp("mix")
    recipe = tmp / "mix.yaml"
    recipe.write_text(_recipe(tmp, tiny_teacher))
    code, printed = _cli("run", str(recipe), "--runs-dir", str(tmp / "runs"))
    assert code == 0
    return tmp, tiny_teacher, tmp / "runs" / "mix", printed


def _metrics(run, stage):
    return json.loads((run / stage / "manifest.json").read_text())["metrics"]


def test_sources_are_filtered_weighted_and_counted_per_source(mixed_run):
    _, _, run, _ = mixed_run
    ann = load_from_disk(str(run / "annotate" / "annotations")).to_list()
    gold = load_from_disk(str(run / "gold" / "pairs")).to_list()
    m = _metrics(run, "mixed")
    assert m["gate_verdict"] == "warn" or m["gate_verdict"] == "pass"
    parsed = [r for r in ann if r["parse_ok"] and r["label"] >= 0]
    kept = [r for r in parsed if r["label_probs"][r["label"]] >= MIN_CONF]
    assert 0 < len(kept) < len(ann), "the filter must keep some rows and drop some (the tiny teacher varies)"
    assert m["source_annotate_annotations_rows"] == len(kept)
    assert m.get("source_annotate_annotations_dropped_unparsed", 0) == len(ann) - len(parsed)
    assert m.get("source_annotate_annotations_dropped_below_min_confidence", 0) == len(parsed) - len(kept)
    agreement = sum(r["label"] == r["gold_label"] for r in kept) / len(kept)
    assert m["source_annotate_annotations_gold_agreement"] == pytest.approx(agreement, abs=1e-4)
    assert m["source_annotate_annotations_teacher"] is True and m["source_gold_pairs_teacher"] is False
    assert m["source_gold_pairs_rows"] == len(gold) and "source_gold_pairs_gold_agreement" not in m
    assert m["train_rows"] == len(kept) + len(gold)


def test_gate_numbers_are_the_teachers_and_the_reference_students_on_the_same_pairs(mixed_run):
    from reasondistill.predictor import Predictor, render_items
    from reasondistill.plugins.domains.local_services import LocalServices

    _, _, run, printed = mixed_run
    dev_ann = [r for r in load_from_disk(str(run / "annotate" / "dev_annotations")) if r["gold_label"] >= 0]
    gold = [r["gold_label"] for r in dev_ann]
    teacher = [r["label"] if r["label"] >= 0 else (g + 1) % 3 for r, g in zip(dev_ann, gold)]
    labels = LocalServices.labels
    teacher_f1 = classification_metrics(gold, teacher, labels)["macro_f1"]
    queries, items = render_items(dev_ann, LocalServices())
    pred = Predictor(run / "gold_ce" / "student").predict_proba(queries, items).argmax(-1).tolist()
    ref_f1 = classification_metrics(gold, pred, labels)["macro_f1"]
    m = _metrics(run, "gate_ref")
    assert m["teacher_macro_f1"] == round(teacher_f1, 5)  # recorded to 5 decimals, like the bar
    assert m["reference_macro_f1"] == pytest.approx(ref_f1, abs=1e-4)
    assert m["pairs"] == len(dev_ann) == 40  # the gold dev split has more; annotate's dev_rows
    assert m["verdict"] == ("pass" if teacher_f1 >= ref_f1 else "warn")
    line = m["verdict_line"]
    assert f"{teacher_f1:.3f}" in line and f"{ref_f1:.3f}" in line and m["verdict"].upper() in line
    verdict = json.loads((run / "gate_ref" / "verdict.json").read_text())
    assert verdict["line"] == line
    assert line in printed and _metrics(run, "gate_high")["verdict_line"] in printed  # the CLI summary
    assert line in (run / "report.md").read_text()
    code, shown = _cli("show", str(run))
    assert code == 0 and line in shown


def test_fallback_drops_the_teacher_sources(mixed_run):
    _, _, run, _ = mixed_run
    ann = load_from_disk(str(run / "annotate" / "annotations")).to_list()
    gold = load_from_disk(str(run / "gold" / "pairs"))
    high = _metrics(run, "gate_high")
    assert high["verdict"] == "fallback" and high["reference_macro_f1"] == 1.0 and not high["passed"]
    m = _metrics(run, "fallen_back")
    assert m["gate_verdict"] == "fallback"
    assert m["source_annotate_annotations_dropped_by_gate"] == sum(r["parse_ok"] for r in ann)
    assert "source_annotate_annotations_rows" not in m
    assert m["train_rows"] == m["source_gold_pairs_rows"] == len(gold)
    assert m["gate_line"] == high["verdict_line"] and "vs the recipe's reference 1.000" in m["gate_line"]
    assert "on_fail gold_only" in m["gate_line"]
    from reasondistill.student_package import lineage, model_card

    info = lineage(run, {})
    assert info["gate"]["verdict"] == "fallback" and info["gate"]["reference_macro_f1"] == 1.0
    assert f"| quality gate | {high['verdict_line']} |" in model_card(info, ["a", "b", "c"])


def test_failing_gate_stops_the_run_with_both_numbers_and_keeps_earlier_stages(mixed_run):
    tmp, teacher, run, _ = mixed_run
    recipe = tmp / "fail.yaml"
    recipe.write_text(_recipe(tmp, teacher, """  - uses: gate
    name: gate_fail
    options: {reference_macro_f1: 1.0, policy: fail}
  - uses: distill
    name: never
    options: {loss: ce, max_steps: 1, batch_size: 8, gate: gate_fail.verdict,
              sources: [{input: gold.pairs}], student_options: {max_length: 48}}
"""))
    annotated_at = json.loads((run / "annotate" / "manifest.json").read_text())["timings"]["started"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, _ = _cli("run", str(recipe), "--runs-dir", str(tmp / "runs"))
    assert code == 2
    verdict = json.loads((run / "gate_fail" / "verdict.json").read_text())
    assert verdict["verdict"] == "fail" and verdict["reference_macro_f1"] == 1.0 and not verdict["passed"]
    assert verdict["line"] in err.getvalue() and "FAIL" in verdict["line"]
    assert not (run / "never" / "manifest.json").exists()
    # the teacher's annotations were reused, not redone
    assert json.loads((run / "annotate" / "manifest.json").read_text())["timings"]["started"] == annotated_at


def test_gate_options_need_exactly_one_bar_and_sources_exclude_train_input(rd_hooks):
    from reasondistill import Recipe, step
    from reasondistill.engine import Engine
    from reasondistill.errors import RecipeError

    eng = Engine(rd_hooks)
    for bad, field in ((step("gate", policy="fallback"), "exactly one"),
                       (step("gate", reference="s.student", reference_macro_f1=0.4), "exactly one"),
                       (step("distill", train_input="pairs", sources=[{"input": "pairs"}]), "not both"),
                       (step("distill", sources=[{"input": "pairs", "weight": 0}]), "weight")):
        recipe = Recipe(name="bad", models={"student": "tiny-encoder"}, stages=[step("pairs", n=40), bad])
        with pytest.raises(RecipeError, match=field):
            eng.validate(recipe)


def test_gate_margin_chains_by_pair_id_and_a_domain_without_rationale(mixed_run, caplog):
    """The margin is added to the bar (a teacher 0.005 above it fails a 0.01 margin); a source whose
    ``reasoning_from`` has no chain for its pairs drops each of them, counted; ``reasoning: domain``
    on a domain that writes no rationale is a recipe error naming the option."""
    tmp, teacher, run, _ = mixed_run
    ann = load_from_disk(str(run / "annotate" / "annotations")).to_list()
    teacher_f1 = _metrics(run, "gate_ref")["teacher_macro_f1"]
    bar = teacher_f1 - 0.0050037  # a sixth decimal that the record's 5 decimals drop
    extra = f"""  - uses: gate
    name: gate_margin
    options: {{reference_macro_f1: {bar:.7f}, margin: 0.01, policy: warn}}
  - uses: gate
    name: gate_no_margin
    options: {{reference_macro_f1: {bar:.7f}, policy: warn}}
  - uses: distill
    name: chained
    inputs: {{dev: gold}}
    options: {{loss: crsd, max_steps: 1, batch_size: 8,
              sources: [{{input: annotate.annotations, reasoning_from: annotate.dev_annotations}},
                        {{input: gold.pairs, reasoning_column: rationale}}],
              student_options: {{max_length: 48, reasoning_tokens: 32}}}}
"""
    recipe = tmp / "margin.yaml"
    recipe.write_text(_recipe(tmp, teacher, extra))
    with caplog.at_level(logging.INFO, logger="reasondistill"):
        code, _ = _cli("run", str(recipe), "--runs-dir", str(tmp / "runs"))
    assert code == 0
    assert _metrics(run, "gate_margin")["verdict"] == "warn" and _metrics(run, "gate_no_margin")["verdict"] == "pass"
    assert _metrics(run, "gate_no_margin")["reference_macro_f1"] == round(bar, 5)
    # a teacher below the bar is a warning in the log; one above it is not
    gate_lines = {r.levelname: r.getMessage() for r in caplog.records if r.getMessage().startswith("gate: ")}
    assert ": WARN," in gate_lines["WARNING"] and ": PASS," in gate_lines["INFO"], gate_lines
    m = _metrics(run, "chained")
    usable = sum(r["parse_ok"] and r["label"] >= 0 for r in ann)  # the dev annotations are of other pairs
    assert m["source_annotate_annotations_dropped_without_chain"] == usable and m["source_annotate_annotations_rows"] == 0

    from reasondistill import Recipe, step
    from reasondistill.engine import Engine
    from reasondistill.errors import RecipeError

    bad = Recipe(name="nodomain", models={"student": "tiny-encoder"}, stages=[
        step("pairs", n=40), step("distill", loss="crsd", max_steps=1, sources=[{"input": "pairs", "reasoning": "domain"}])])
    with pytest.raises(RecipeError, match=r"sources: .*domain 'local_services' writes no rationale .*set the source's "
                                          r"reasoning: column"):  # before any work; load_source checks again at run time
        Engine(runs_dir=tmp / "runs").run(bad)


def test_the_student_encodes_each_rows_own_reasoning(rd_engine, register_plugin):
    """What the distill stage hands ``Student.encode`` as reasonings: every training row's chain, as
    the input has it (a loss without the reasoning view gets none)."""
    from reasondistill import Recipe, hookimpl, step
    from reasondistill.plugins.student.encoder import EncoderClassifier

    seen: list = []

    class Recording(EncoderClassifier):
        name = "recording-student"

        def encode(self, tokenizer, queries, items, reasonings, options):
            seen.append(reasonings)
            return super().encode(tokenizer, queries, items, reasonings, options)

    class P:
        @hookimpl
        def register_students(self, register):
            register(Recording())

    register_plugin(P(), "recording_student")
    recipe = Recipe(name="rec", models={"student": "tiny-encoder"}, stages=[
        step("pairs", n=60, dev_fraction=0.0),
        step("distill", student="recording-student", train_input="pairs", loss="crsd", reasoning_column="rationale",
             max_steps=1, batch_size=4, student_options={"max_length": 48, "reasoning_tokens": 32}),
        step("distill", name="plain", student="recording-student", train_input="pairs", loss="ce", max_steps=1,
             batch_size=4, student_options={"max_length": 48})])
    from reasondistill.engine import Engine

    # the run's dry call encodes two sample rows first; this test is about the training rows
    Engine(rd_engine.hooks, rd_engine.runs_dir, preflight=False).run(recipe)
    rationales = load_from_disk(str(rd_engine.runs_dir / "rec" / "pairs" / "pairs"))["rationale"]
    crsd = [r for batch in seen if batch is not None for r in batch]
    assert sorted(crsd) == sorted(rationales) and all(crsd)
    assert any(batch is None for batch in seen), "ce encodes no reasoning"


def test_gate_scores_the_teacher_on_rows_with_a_gold_label_only(tmp_path):
    """Dev annotations whose gold label is unknown (-1) are left out of the teacher's figure:
    hand-computed on 3 of 5 rows (2 right, 1 unparsed), macro-F1 of golds 0, 2, 2 vs 0, 2, 0."""
    from types import SimpleNamespace

    from datasets import Dataset

    from reasondistill.plugins.student.gate_stage import GateOptions, QualityGate

    rows = [{"label": 0, "gold_label": 0}, {"label": 2, "gold_label": -1}, {"label": 2, "gold_label": 2},
            {"label": -1, "gold_label": 2}, {"label": 1, "gold_label": -1}]
    ctx = SimpleNamespace(domain=LocalServices(), dir=tmp_path, load_dataset=lambda name: Dataset.from_list(rows))
    res = QualityGate().run(ctx, GateOptions(reference_macro_f1=0.5, policy="warn"))
    # the unparsed row counts as grade (2 + 1) % 3 = 0: F1 of label 0 = 2/3, of label 1 = 0, of label 2 = 2/3
    assert res.metrics["pairs"] == 3 and res.metrics["teacher_macro_f1"] == round(4 / 9, 5)
    assert res.metrics["verdict"] == "warn" and "on 3 gold dev pairs" in res.metrics["verdict_line"]
