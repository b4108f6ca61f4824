"""Annotation: contract, resume after SIGKILL, 1 vs 2 processes, label probabilities."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from datasets import load_from_disk

from reasondistill.local_decoding import TeacherGenerator, label_stop_strings
from reasondistill.plugins.domains.local_services import LocalServices, generate_pairs

RECIPE = """
name: ann
models: {{teacher: tiny-causal-lm}}
seed: 3
stages:
  - uses: pairs
    options: {{n: {n}, dev_fraction: 0.0}}
  - uses: annotate
    options: {{shard_size: 20, on_low_parse: warn, annotator_options: {{max_new_tokens: 12, batch_size: 8, retries: 0}}}}
"""


def _cmd(runs, recipe, procs=1):
    if procs == 1:
        return [sys.executable, "-m", "reasondistill", "run", str(recipe), "--runs-dir", str(runs)]
    from .served import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(free_port()),
            "-m", "reasondistill", "run", str(recipe), "--runs-dir", str(runs)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _rows(runs):
    ds = load_from_disk(str(runs / "ann" / "annotate" / "annotations"))
    return [{k: r[k] for k in ("pair_id", "label", "reasoning", "completion", "label_probs", "parse_ok")} for r in ds]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run over 200 pairs."""
    folder = tmp_path_factory.mktemp("ann-ref")
    recipe = folder / "r.yaml"
    recipe.write_text(RECIPE.format(n=200))
    subprocess.run(_cmd(folder / "runs", recipe), check=True, env=_env(), capture_output=True, timeout=600)
    return recipe, _rows(folder / "runs")


def test_annotations_contract(reference):
    _, rows = reference
    assert len(rows) == 200 and len({r["pair_id"] for r in rows}) == 200
    for r in rows:
        assert r["label"] in (-1, 0, 1, 2) and (r["label"] >= 0) == r["parse_ok"]
        # a local teacher gives the label tokens' probabilities wherever it wrote a label; a row
        # without one records none (never a made-up uniform distribution)
        if r["parse_ok"]:
            assert len(r["label_probs"]) == 3 and abs(sum(r["label_probs"]) - 1) < 1e-4
            assert r["confidence"] == r["label_probs"][r["label"]]
        else:
            assert r["label_probs"] is None or len(r["label_probs"]) == 3


def test_sigkill_then_rerun_equals_uninterrupted(reference, tmp_path):
    recipe, expected = reference
    runs = tmp_path / "runs"
    shards = runs / "ann" / "annotate" / "annotations_shards"
    proc = subprocess.Popen(_cmd(runs, recipe), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # a shard is done once its sha256 sidecar is written after it (a kill between the two redoes it)
    while time.time() < deadline and len(list(shards.glob("shard-*.sha256"))) < 3:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(shards.glob("shard-*.sha256")))
    assert 3 <= done < 10, f"killed after {done} of 10 shards"
    assert not (runs / "ann" / "annotate" / "manifest.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl") if p.with_suffix(".sha256").exists()}
    subprocess.run(_cmd(runs, recipe), check=True, env=_env(), capture_output=True, timeout=600)
    assert {p: (shards / p).stat().st_mtime_ns for p in finished} == finished, "the rerun resumed: no shard redone"
    got = _rows(runs)
    assert [r["pair_id"] for r in got] == [r["pair_id"] for r in expected]
    assert got == expected


def test_two_processes_equal_one(reference, tmp_path):
    recipe, expected = reference
    out = subprocess.run(_cmd(tmp_path / "runs", recipe, procs=2), env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _rows(tmp_path / "runs") == expected
    manifest = json.loads((tmp_path / "runs" / "ann" / "annotate" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["metrics"]["pairs"] == 200


def test_stop_strings_and_label_probs(tiny_causal_lm):
    dom = LocalServices()
    assert "Label: partly relevant" in label_stop_strings(dom)
    gen = TeacherGenerator(str(tiny_causal_lm), dom, batch_size=4, max_new_tokens=8)
    # teacher-force a completion that writes the label, then read its probabilities
    ids = gen.tokenizer("Reasoning: ok\nLabel: relevant", add_special_tokens=False)["input_ids"]
    import torch

    scores = [torch.randn(1, len(gen.tokenizer)) for _ in ids]
    probs = gen._label_probs(ids, scores, 0)
    assert probs is not None and abs(sum(probs) - 1) < 1e-5
    out = gen.generate([dom.messages(r) for r in generate_pairs(n=6)], n=2, do_sample=True, seed=0)
    assert len(out) == 6 and all(len(o) == 2 for o in out)


def test_hidden_labels_keep_their_gold_label(rd_engine):
    """``pairs`` with ``hide_labels`` moves ``label`` to ``gold_label``; annotation keeps it (it
    used to write -1 for every row) and scores the teacher against it."""
    from reasondistill import Recipe, step

    from .served import FaultServer

    server = FaultServer()  # answers "relevant" (2) to every pair
    try:
        recipe = Recipe(name="hidden", backends={"teacher": {"uses": "openai",
                                                            "options": {"model": server.model, "base_url": server.url}}},
                        stages=[step("pairs", n=30, dev_fraction=0.0, hide_labels=True),
                                step("annotate", annotator_options={"retries": 0})])
        res = rd_engine.run(recipe)
    finally:
        server.close()
    pool = load_from_disk(str(rd_engine.runs_dir / "hidden" / "pairs" / "pairs")).to_list()
    rows = load_from_disk(str(rd_engine.runs_dir / "hidden" / "annotate" / "annotations")).to_list()
    assert "label" not in pool[0]
    assert [r["gold_label"] for r in rows] == [p["gold_label"] for p in pool]
    assert len({r["gold_label"] for r in rows}) == 3 and all(r["label"] == 2 for r in rows)
    share = sum(p["gold_label"] == 2 for p in pool) / len(pool)
    assert res["annotate"].metrics["teacher_accuracy"] == pytest.approx(share, abs=1e-4)


def test_bf16_teacher_is_checked_against_fp32_labels_and_falls_back(rd_engine, tiny_teacher, monkeypatch, caplog):
    """``runtime.dtype: fastest`` on a CPU whose probe favours bf16: annotate labels its first pairs
    in both precisions first. Demanding full agreement makes the tiny teacher (bf16 changes some of
    its labels) fall back, and its annotations are then exactly the fp32 run's; with no demand,
    bf16 stays."""
    from datasets import load_from_disk

    from reasondistill import Recipe, runtime, step

    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 2.0)

    def annotate(name, dtype, min_agreement):
        recipe = Recipe(name=name, models={"teacher": str(tiny_teacher)}, runtime={"dtype": dtype}, stages=[
            step("pairs", n=60, dev_fraction=0.0),
            step("annotate", annotator_options={"max_new_tokens": 48, "batch_size": 16, "retries": 0,
                                                "bf16_check_rows": 40, "bf16_min_agreement": min_agreement})])
        m = rd_engine.run(recipe)["annotate"].metrics
        return m, load_from_disk(str(rd_engine.runs_dir / name / "annotate" / "annotations"))["label"]

    import logging

    def fallback_warnings():
        return [r.getMessage() for r in caplog.records if "annotating in fp32" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="reasondistill"):
        strict, strict_labels = annotate("strict", "fastest", 1.0)
    assert strict["bf16_check_rows"] == 40 and strict["bf16_check_label_agreement"] < 1.0
    assert strict["bf16_check_dtype"] == "float32"
    share = round(100 * strict["bf16_check_label_agreement"])
    assert fallback_warnings() == [f"annotate: bf16 labels agree with fp32 on {share}% of 40 pairs (< 100%): "
                                   "annotating in fp32"]
    caplog.clear()
    exact, exact_labels = annotate("exact", "float32", 1.0)
    assert "bf16_check_rows" not in exact and strict_labels == exact_labels
    with caplog.at_level(logging.WARNING, logger="reasondistill"):
        lax, lax_labels = annotate("lax", "fastest", 0.0)
    assert lax["bf16_check_dtype"] == "bfloat16" and not fallback_warnings()  # bf16 kept: nothing to warn of
    assert lax["bf16_check_label_agreement"] == strict["bf16_check_label_agreement"]
    assert lax_labels != exact_labels  # bf16 kept: some labels differ from fp32's


@pytest.mark.parametrize("teacher", ["tiny_causal_lm", "tiny_teacher"])
def test_only_unparsable_rows_are_retried(teacher, request):
    """Each retry asks again for exactly the rows with no label yet: all of them, ``retries`` times,
    for the untrained model (it never writes one); the few the tiny teacher missed, for it."""
    from reasondistill.plugins.annotation.teacher_annotator import TeacherAnnotatorOptions, annotate_rows

    dom = LocalServices()
    gen = TeacherGenerator(str(request.getfixturevalue(teacher)), dom, batch_size=8, max_new_tokens=32)
    rows = generate_pairs(n=12, seed=4)
    first = [dom.parse_completion(o[0].text).ok for o in gen.generate([dom.messages(r) for r in rows])]
    asked, generate = [], gen.generate

    def counted(messages, **kw):
        asked.append(len(messages))
        return generate(messages, **kw)

    gen.generate = counted
    out = annotate_rows(gen, rows, dom, TeacherAnnotatorOptions(retries=2), seed=0, teacher="t")
    if teacher == "tiny_causal_lm":
        assert not any(first) and asked == [12, 12, 12] and not any(r["parse_ok"] for r in out)
    else:
        assert sum(first) > 0
        if all(first):  # nothing to retry
            assert asked == [12]
        else:  # at 32 new tokens it misses a few rows (2 of 12 here)
            assert asked[:2] == [12, 12 - sum(first)] and all(a <= asked[1] for a in asked[1:])
        assert sum(r["parse_ok"] for r in out) >= sum(first)
    # the greedy first answers are recorded apart from the retries: teacher_eval's comparable figure
    assert [r["first_try_ok"] for r in out] == first


def test_summary_counts_failures_and_leaves_out_speed_when_nothing_ran():
    """Hand-computed: 4 rows, one failed in the backend, one unparsed (counted wrong against gold)."""
    from datasets import Dataset

    from reasondistill.plugins.annotation.annotate_stage import summarize

    ds = Dataset.from_list([
        {"label": 2, "gold_label": 2, "parse_ok": True, "new_tokens": 10, "error": None},
        {"label": 0, "gold_label": 1, "parse_ok": True, "new_tokens": 12, "error": None},
        {"label": -1, "gold_label": 0, "parse_ok": False, "new_tokens": 5, "error": None},
        {"label": -1, "gold_label": 2, "parse_ok": False, "new_tokens": 0, "error": "HTTP 500"}])
    resumed = summarize(ds, LocalServices(), {"seconds_now": 0.5, "pairs_now": 0, "tokens_now": 0})
    assert resumed["failed"] == 1 and resumed["pairs"] == 4 and resumed["tokens"] == 27
    assert resumed["parse_rate"] == 0.5 and resumed["share_irrelevant"] == 0.25 and resumed["share_relevant"] == 0.25
    assert "pairs_per_s" not in resumed and "tokens_per_s" not in resumed
    assert resumed["teacher_accuracy"] == 0.25  # only the first row is right
    # an unparsed answer counts as the grade after gold: predictions 2, 0, 1, 0 against gold 2, 1, 0, 2
    # give F1 0, 0 and 2/3 (precision 1, recall 1/2) per label, macro-F1 2/9
    assert resumed["teacher_macro_f1"] == 0.2222
    ran = summarize(ds, LocalServices(), {"seconds_now": 2.0, "pairs_now": 4, "tokens_now": 27})
    assert ran["pairs_per_s"] == 2.0 and ran["tokens_per_s"] == 13.5
    quick = summarize(ds, LocalServices(), {"seconds_now": 0.5, "pairs_now": 4, "tokens_now": 27})
    assert quick["pairs_per_s"] == 8.0 and quick["tokens_per_s"] == 54.0  # under a second is a speed too
    thirds = summarize(ds.select([0, 1, 2]).remove_columns("error"), LocalServices(),
                       {"seconds_now": 1.0, "pairs_now": 3, "tokens_now": 27})
    assert thirds["share_relevant"] == 0.3333 and thirds["parse_rate"] == 0.6667  # 4 decimals
    assert thirds["failed"] == 0  # annotations with no error column (a plugin's) failed nowhere
    # the shards' recorded seconds: a resumed stage's speed covers the kept rows too, not the redone one
    whole = summarize(ds, LocalServices(), {"seconds_now": 0.01, "pairs_now": 1, "tokens_now": 5, "seconds_all": 2.0})
    assert whole["pairs_per_s"] == 2.0 and whole["tokens_per_s"] == 13.5
    sevenths = summarize(ds, LocalServices(), {"seconds_now": 1.0, "pairs_now": 4, "tokens_now": 27, "seconds_all": 7.0})
    assert sevenths["pairs_per_s"] == 0.571 and sevenths["tokens_per_s"] == 3.86  # 3 and 2 decimals
    one = summarize(Dataset.from_list([{"label": 2, "gold_label": 2, "parse_ok": True, "first_try_ok": True,
                                        "new_tokens": 3, "label_probs": [0.1, 0.2, 0.7]}]), LocalServices(),
                    {"seconds_now": 0.0, "pairs_now": 0, "tokens_now": 0})
    assert one["parse_rate"] == one["first_try_parse_rate"] == one["label_probs_share"] == one["share_relevant"] == 1.0


def test_seconds_of_kept_shards_count_after_a_resume(tmp_path):
    from reasondistill.plugins.annotation.shards import read_seconds, write_shard

    write_shard(tmp_path, 0, [{"a": 1}], 1.5)
    write_shard(tmp_path, 1, [{"a": 2}], 0.25)
    write_shard(tmp_path, 2, [{"a": 3}])  # a plugin's shard with no time: counts 0
    assert read_seconds(tmp_path) == 1.75 and read_seconds(tmp_path, 1) == 0.25 and read_seconds(tmp_path, 2) == 0


def test_retries_draw_new_samples_and_an_unparsed_row_keeps_its_first_chain(tiny_causal_lm):
    """Each retry samples under its own seed (a repeated seed would redraw the same chains), and a
    row no chain could label keeps the first of its chains: one rule for every backend."""
    from reasondistill.plugins.annotation.teacher_annotator import TeacherAnnotatorOptions, annotate_rows

    dom = LocalServices()
    gen = TeacherGenerator(str(tiny_causal_lm), dom, batch_size=8, max_new_tokens=12)
    rows = generate_pairs(n=4, seed=6)
    calls, generate = [], gen.generate

    def recorded(messages, **kw):
        calls.append((kw["seed"], generate(messages, **kw)))
        return calls[-1][1]

    gen.generate = recorded
    out = annotate_rows(gen, rows, dom, TeacherAnnotatorOptions(retries=3, self_consistency=2), seed=7, teacher="t")
    seeds = [seed for seed, _ in calls]
    assert len(seeds) == 4 and len(set(seeds)) == 4 and seeds[0] == 7  # the untrained model never writes a label
    last = calls[-1][1]
    assert [r["completion"] for r in out] == [cands[0].text for cands in last]
    assert any(cands[0].text != cands[1].text for cands in last), "the two chains must differ to tell first from last"


def test_a_resumed_annotation_with_another_teacher_names_both(tmp_path):
    from reasondistill.errors import DataError
    from reasondistill.plugins.annotation.shards import check_teacher

    check_teacher(tmp_path, [{"teacher": "sft/teacher@aa"}, {"teacher": "x", "error": "HTTP 500"}])
    assert (tmp_path / "teacher.txt").read_text() == "sft/teacher@aa"
    check_teacher(tmp_path, [{"teacher": "sft/teacher@aa"}])
    with pytest.raises(DataError, match="written by teacher 'sft/teacher@aa', but the teacher now is 'dpo/teacher@bb'"):
        check_teacher(tmp_path, [{"teacher": "sft/teacher@aa"}, {"teacher": "dpo/teacher@bb"}])


def test_teacher_identity_is_the_folder_and_its_weights_digest(rd_engine, tiny_teacher, tmp_path):
    """Annotations name their teacher as ``<name>@<config digest>+<weights digest>`` (12 hex
    digits of each file's sha256): the run-relative folder for a teacher the run trained, the
    recipe's model reference for one from outside, the bare name for a teacher with no folder."""
    import shutil
    from types import SimpleNamespace

    from reasondistill import Recipe, step
    from reasondistill.fingerprint import fingerprint
    from reasondistill.plugins.annotation.sharded_run import identify_teacher

    digest = "+".join(fingerprint(tiny_teacher / f)[7:19] for f in ("config.json", "model.safetensors"))
    assert len(digest) == 25
    recipe = Recipe(name="who", models={"teacher": str(tiny_teacher)}, stages=[
        step("pairs", n=10, dev_fraction=0.0),
        step("annotate", on_low_parse="warn", annotator_options={"max_new_tokens": 8, "retries": 0})])
    rd_engine.run(recipe)
    rows = load_from_disk(str(rd_engine.runs_dir / "who" / "annotate" / "annotations")).to_list()
    assert {r["teacher"] for r in rows} == {f"{tiny_teacher.name}@{digest}"}  # the name, not the path

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_teacher, run_dir / "sft" / "teacher")
    ctx = SimpleNamespace(run=SimpleNamespace(dir=run_dir), recipe=SimpleNamespace(models={"teacher": "smol"}))
    assert identify_teacher(ctx, str(run_dir / "sft" / "teacher")) == f"sft/teacher@{digest}"
    assert identify_teacher(ctx, str(tiny_teacher)) == f"smol@{digest}"  # outside the run: the recipe's name
    (run_dir / "empty").mkdir()
    assert identify_teacher(ctx, str(run_dir / "empty")) == "empty"  # no config, no weights: no digest
    assert identify_teacher(ctx, "served:teacher-7b") == "served:teacher-7b"
    assert identify_teacher(ctx, "") == ""


def test_self_consistency_label_probs_are_vote_shares(tiny_teacher):
    """With N sampled chains a row's label is the majority (ties: the lower grade), its label
    probabilities the vote shares and its confidence the winner's share, recomputed here from the
    chains the generator returned; with one chain they are the teacher's own label probabilities."""
    from collections import Counter

    from reasondistill.plugins.annotation.teacher_annotator import TeacherAnnotatorOptions, annotate_rows

    dom = LocalServices()
    gen = TeacherGenerator(str(tiny_teacher), dom, batch_size=16, max_new_tokens=48)
    rows = generate_pairs(n=16, seed=5)
    seen, generate = [], gen.generate

    def kept(messages, **kw):
        seen.append(generate(messages, **kw))
        return seen[-1]

    gen.generate = kept
    out = annotate_rows(gen, rows, dom, TeacherAnnotatorOptions(self_consistency=3, temperature=1.5, retries=0),
                        seed=0, teacher="t")
    split = 0
    for row, cands in zip(out, seen[0]):
        votes = Counter(p.label for p in (dom.parse_completion(c.text) for c in cands) if p.ok)
        if not votes:
            assert row["label"] == -1 and row["confidence"] == 0.0 and row["label_probs"] is None  # none, not 1/3 each
            continue
        top = max(votes.values())
        assert row["label"] == min(lab for lab, v in votes.items() if v == top)
        total = sum(votes.values())
        assert row["label_probs"] == pytest.approx([votes.get(i, 0) / total for i in range(3)])
        assert row["confidence"] == pytest.approx(top / 3)
        split += top < total
    assert split >= 2, "the sampled chains never disagreed: the vote shares were not tested"

    seen.clear()
    single = annotate_rows(gen, rows, dom, TeacherAnnotatorOptions(retries=0), seed=0, teacher="t")
    own = [c[0].label_probs for c in seen[0]]
    assert any(p is not None for p in own)
    for row, probs in zip(single, own):
        if probs is not None:
            assert row["label_probs"] == pytest.approx(probs)
        else:
            assert row["label_probs"] is None
            assert all(0 < p < 1 for p in row["label_probs"])  # the teacher's probabilities, not a vote


def test_one_generator_per_settings_kept_across_calls(rd_hooks, tiny_causal_lm):
    """The annotator reuses its generator while teacher and sizes stay, and loads a fresh one
    when any changes, whichever way (a larger or a smaller batch)."""
    from types import SimpleNamespace

    from reasondistill import Recipe
    from reasondistill.plugins.annotation.teacher_annotator import TeacherAnnotator, TeacherAnnotatorOptions

    ctx = SimpleNamespace(hooks=rd_hooks, domain=LocalServices(), recipe=Recipe(name="r", stages=[{"uses": "pairs"}]))
    annotator, teacher = TeacherAnnotator(), str(tiny_causal_lm)
    small = annotator.generator(ctx, teacher, TeacherAnnotatorOptions(batch_size=8, max_new_tokens=16))
    assert annotator.generator(ctx, teacher, TeacherAnnotatorOptions(batch_size=8, max_new_tokens=16)) is small
    large = annotator.generator(ctx, teacher, TeacherAnnotatorOptions(batch_size=16, max_new_tokens=16))
    assert large is not small and (large.batch_size, large.max_new_tokens) == (16, 16)
    again = annotator.generator(ctx, teacher, TeacherAnnotatorOptions(batch_size=8, max_new_tokens=16))
    assert again is not large and again.batch_size == 8
    longer = annotator.generator(ctx, teacher, TeacherAnnotatorOptions(batch_size=8, max_new_tokens=32))
    assert longer is not again and longer.max_new_tokens == 32
