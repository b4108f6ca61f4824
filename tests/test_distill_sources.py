"""Training sources for the distill stage (``distill_sources``): which rows each source keeps and
why it drops the others, their weights, and the merge of several sources into one dataset."""

from __future__ import annotations

import numpy as np
import pytest

from reasondistill.plugins.domains.local_services import LocalServices


def test_merged_sources_scale_weights_to_mean_one_and_give_gold_rows_one_hot_probs():
    from reasondistill.plugins.student.sources import merge_sources

    teacher = [{"query": f"q{i}", "item": "x", "label": 1, "reasoning": "r", "label_probs": [0.2, 0.7, 0.1],
                "weight": 0.5, "source": "annotations", "confidence": 0.7, "parse_ok": True} for i in range(3)]
    gold = [{"query": "g", "item": "y", "label": 2, "reasoning": "d", "weight": 2.0, "source": "pairs",
             "confidence": None, "district": "Harbor"}]
    ds = merge_sources([teacher, gold], num_labels=3)
    assert set(ds.column_names) == {"query", "item", "label", "reasoning", "source", "label_probs", "weight"}
    scale = 4 / (3 * 0.5 + 2.0)
    assert ds["weight"] == pytest.approx([0.5 * scale] * 3 + [2.0 * scale])
    assert np.mean(ds["weight"]) == pytest.approx(1.0)
    assert ds["label_probs"][3] == [0.0, 0.0, 1.0] and ds["label_probs"][0] == pytest.approx([0.2, 0.7, 0.1])
    uniform = merge_sources([[{**r, "weight": 3.0} for r in teacher]], num_labels=3)
    assert "weight" not in uniform.column_names
    close = merge_sources([teacher[:1], [{**teacher[1], "weight": 0.6}]], num_labels=3)  # 0.5 and 0.6: not uniform
    assert close["weight"] == pytest.approx([0.5 / 0.55, 0.6 / 0.55])


def test_a_source_counts_dropped_rows_weighs_by_confidence_and_needs_its_reasoning_column():
    """Hand-made sources: a teacher row without a label counts as unparsed (not unlabelled), a
    gold row without a label as unlabelled, counters are absent when nothing was dropped;
    ``confidence_weight`` multiplies the source's weight by the teacher's probability; a loss that
    needs reasoning names the missing column."""
    from types import SimpleNamespace

    from datasets import Dataset

    from reasondistill.errors import DataError
    from reasondistill.plugins.student.sources import TrainSource, load_source

    teacher = [{"query": f"q{i}", "item": "x", "label": lab, "parse_ok": lab >= 0, "teacher": "t",
                "label_probs": probs, "reasoning": "r", "gold_label": 1}
               for i, (lab, probs) in enumerate([(1, [0.1, 0.8, 0.1]), (-1, [1 / 3] * 3), (2, [0.3, 0.3, 0.4]),
                                                 (-1, [1 / 3] * 3), (1, [0.2, 0.7, 0.1])])]
    gold = [{"query": f"g{i}", "item": "y", "label": lab, "rationale": "d"} for i, lab in enumerate([0, None, 2, -1, 1])]
    data = {"annotations": teacher, "pairs": gold}
    ctx = SimpleNamespace(load_dataset=lambda name: Dataset.from_list(data[name]), domain=LocalServices())

    def load(source):
        return load_source(ctx, source, label_column="label", reasoning_column="reasoning", default_reasoning="column",
                           needs_reasoning=False, strip=lambda text: text)

    rows, m, is_teacher = load(TrainSource(input="annotations", min_confidence=0.5))
    assert is_teacher and [r["query"] for r in rows] == ["q0", "q4"]
    assert [r["weight"] for r in rows] == [1.0, 1.0]  # filtered by confidence, not weighted by it
    assert m == {"source_annotations_rows": 2, "source_annotations_teacher": True,
                 "source_annotations_dropped_unparsed": 2, "source_annotations_dropped_below_min_confidence": 1,
                 "source_annotations_gold_agreement": 1.0}
    at_bar, _, _ = load(TrainSource(input="annotations", min_confidence=0.7))  # q4's label has exactly 0.7
    assert [r["query"] for r in at_bar] == ["q0", "q4"], "a confidence equal to min_confidence is kept"
    above, _, _ = load(TrainSource(input="annotations", min_confidence=0.7000001))
    assert [r["query"] for r in above] == ["q0"]
    weighted, _, _ = load(TrainSource(input="annotations", weight=2.0, confidence_weight=True))
    assert [r["weight"] for r in weighted] == pytest.approx([1.6, 0.8, 1.4])  # weight x the teacher's probability
    assert [r["confidence"] for r in weighted] == pytest.approx([0.8, 0.4, 0.7])
    rows, m, is_teacher = load(TrainSource(input="pairs", reasoning_column="rationale"))
    assert not is_teacher and [r["label"] for r in rows] == [0, 2, 1]
    assert m == {"source_pairs_rows": 3, "source_pairs_teacher": False, "source_pairs_dropped_unlabelled": 2}
    with pytest.raises(DataError, match="pairs: loss needs reasoning, but there is no column 'reasoning'"):
        load_source(ctx, TrainSource(input="pairs"), label_column="label", reasoning_column="reasoning",
                    default_reasoning="column", needs_reasoning=True, strip=lambda text: text)


def test_gold_pairs_take_the_reasoning_stage_chains_by_pair_id(rd_engine, tmp_path):
    """``reasoning_from: <reasoning stage>.sft_data`` (STaR chains for gold pairs, as docs/recipes.md
    shows): each pair with a chain keeps it as its reasoning view; a pair without one is dropped,
    counted."""
    import json

    from reasondistill import Recipe, step
    from reasondistill.plugins.domains.local_services import generate_pairs

    rows = generate_pairs(n=40, seed=5)
    for r in rows[::2]:
        r["rationale"] = ""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = Recipe(name="chains", models={"teacher": "tiny-causal-lm", "student": "tiny-encoder"}, stages=[
        step("pairs", source=str(path), dev_fraction=0.0),
        step("reasoning", name="star", source="column_then_rationalize", samples=1, max_new_tokens=16),
        step("distill", loss="crsd", max_steps=1, batch_size=8, sources=[{"input": "pairs.pairs", "reasoning_from": "star.sft_data"}],
             student_options={"max_length": 48, "reasoning_tokens": 32})])
    res = rd_engine.run(recipe)
    chains = res["star"].metrics["examples"]
    m = res["distill"].metrics
    assert chains >= 20 and m["source_pairs_pairs_rows"] == chains
    assert m["source_pairs_pairs_dropped_without_chain"] == 40 - chains


def test_class_weights_multiply_each_rows_weight_by_its_labels_before_the_mean_one_scaling():
    from reasondistill.plugins.student.sources import class_weight_vector, merge_sources

    labels = [0, 0, 0, 1, 2, 2]
    rows = [{"query": f"q{i}", "item": "x", "label": label, "reasoning": "r", "weight": 1.0, "source": "pairs"}
            for i, label in enumerate(labels)]
    balanced = class_weight_vector(labels, "balanced", 3)
    assert balanced == pytest.approx([6 / 9, 6 / 3, 6 / 6])  # n / (k * n_c), scikit-learn's rule
    ds = merge_sources([rows], 3, balanced)
    per_class = [sum(w for w, y in zip(ds["weight"], ds["label"]) if y == c) for c in range(3)]
    assert per_class == pytest.approx([2.0, 2.0, 2.0]) and np.mean(ds["weight"]) == pytest.approx(1.0)
    assert class_weight_vector([0, 0], "balanced", 3) == pytest.approx([1 / 3, 1.0, 1.0])  # absent classes: 1
    assert class_weight_vector(labels, [1, 5, 2], 3) == [1.0, 5.0, 2.0] and class_weight_vector(labels, None, 3) is None
    listed = merge_sources([rows], 3, [1.0, 5.0, 2.0])
    assert list(listed["weight"]) == pytest.approx([w * 6 / 12 for w in (1, 1, 1, 5, 2, 2)])
    assert "weight" not in merge_sources([rows], 3, [2.0, 2.0, 2.0]).column_names  # uniform: no column


def test_class_weights_are_recorded_in_the_run_and_the_card_and_checked_against_the_labels(rd_engine, tmp_path):
    import json
    from collections import Counter

    from reasondistill import Recipe, step
    from reasondistill.errors import RecipeError
    from reasondistill.plugins.domains.local_services import generate_pairs
    from reasondistill.student_package import lineage, model_card

    rows = generate_pairs(n=40, seed=5)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def recipe(weights):
        return Recipe(name="weighted", models={"student": "tiny-encoder"}, stages=[
            step("pairs", source=str(path), dev_fraction=0.0),
            step("distill", loss="ce", max_steps=1, batch_size=8, sources=[{"input": "pairs.pairs"}],
                 class_weights=weights, student_options={"max_length": 48})])

    with pytest.raises(RecipeError, match=r"class_weights.*2 weights for 3 labels \(irrelevant, partly relevant, "
                                          r"relevant\)"):
        rd_engine.validate(recipe([1.0, 2.0]))
    res = rd_engine.run(recipe("balanced"))
    counts = Counter(r["label"] for r in rows if r.get("label") is not None and r["label"] >= 0)
    names = LocalServices.labels
    expected = {names[c]: round(sum(counts.values()) / (3 * counts[c]), 4) for c in range(3)}
    assert res["distill"].metrics["class_weights"] == expected
    info = lineage(rd_engine.runs_dir / "weighted", {})
    assert info["student"]["class_weights"] == expected
    card = model_card(info, list(names))
    assert "| class weights | " + ", ".join(f"{n} {w:g}" for n, w in expected.items()) + " |" in card
