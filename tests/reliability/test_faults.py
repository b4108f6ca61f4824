"""SIGKILL during annotation, DPO, CRSD training and a manifest write: nothing lost or duplicated."""

import json
import re

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from reasondistill.runstore import MANIFEST

from .helpers import kill_when, run

FAULTS = {"injected": 0}

CRSD = """
name: f
models: {{student: tiny-encoder, teacher: tiny-causal-lm}}
seed: 4
stages:
  - uses: pairs
    options: {{n: 200}}
  - uses: {stage}
    options: {options}
"""
DISTILL_OPTS = ("{train_input: pairs, reasoning_column: rationale, max_steps: 16, save_steps: 4, batch_size: 8, "
                "learning_rate: 0.002, student_options: {max_length: 48, reasoning_tokens: 32}}")
DPO_OPTS = ("{input: pairs, on_low_parse: warn, prompts: 8, candidates: 2, max_new_tokens: 8, min_margin: 0.0, max_steps: 8, save_steps: 2, "
            "batch_size: 2, max_length: 512, lora: false}")


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _close(a, b, tol=1e-4):
    return set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=tol) for k in a)


@pytest.mark.parametrize("stage, options, out", [("distill", DISTILL_OPTS, "student"), ("preference", DPO_OPTS, "teacher")])
def test_sigkill_during_training_resumes_to_the_same_model(tmp_path, stage, options, out):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CRSD.format(stage=stage, options=options))
    run(recipe, tmp_path / "ref")
    ckpts = tmp_path / "cut" / "f" / stage / "checkpoints"
    kill_when(recipe, tmp_path / "cut", lambda: any((p / "trainer_state.json").exists() for p in ckpts.glob("checkpoint-*")))
    FAULTS["injected"] += 1
    assert not (tmp_path / "cut" / "f" / stage / MANIFEST).exists()
    run(recipe, tmp_path / "cut")
    m = json.loads((tmp_path / "cut" / "f" / stage / MANIFEST).read_text())
    assert m["metrics"]["resumed_from"] is not None, "the rerun resumed from a checkpoint"
    ref = json.loads((tmp_path / "ref" / "f" / stage / MANIFEST).read_text())
    assert m["metrics"]["steps"] == ref["metrics"]["steps"]
    # the checkpoint's global step: a multiple of save_steps before the last step
    resumed, every = int(m["metrics"]["resumed_from"]), int(re.search(r"save_steps: (\d+)", options)[1])
    assert 0 < resumed < m["metrics"]["steps"] and resumed % every == 0, m["metrics"]["resumed_from"]
    assert _close(_weights(tmp_path / "ref" / "f" / stage / out), _weights(tmp_path / "cut" / "f" / stage / out))
    if stage == "distill":
        assert m["metrics"]["dev_macro_f1"] == pytest.approx(ref["metrics"]["dev_macro_f1"], abs=1e-6)


def test_sigkill_during_manifest_write_leaves_no_half_manifest(tmp_path, rd_engine):
    """A child process SIGKILLed between writing the manifest's temp file and renaming it (a real
    kill: no ``finally``, no cleanup): no manifest, the rerun completes and sweeps the leftover."""
    import os
    import signal
    import subprocess
    import sys

    from reasondistill import Recipe, step

    runs = rd_engine.runs_dir
    child = f"""
import os, signal
from reasondistill import Recipe, step
from reasondistill.engine import Engine
real = os.replace
def die(src, dst):
    if str(dst).endswith("{MANIFEST}"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = die
Engine(runs_dir={str(runs)!r}).run(Recipe(name="m", stages=[step("pairs", n=40)]))
"""
    proc = subprocess.run([sys.executable, "-c", child], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    FAULTS["injected"] += 1
    stage_dir = runs / "m" / "pairs"
    assert not (stage_dir / MANIFEST).exists()
    assert list(stage_dir.glob(f".{MANIFEST}.*")), "a real kill leaves the temp file behind"
    res = rd_engine.run(Recipe(name="m", stages=[step("pairs", n=40)]))
    assert not res["pairs"].skipped and (stage_dir / MANIFEST).exists()
    assert not list(stage_dir.glob(f".{MANIFEST}.*")), "the rerun sweeps the dead run's temp files"


def test_truncated_shard_is_detected_and_redone(tmp_path):
    """A run cut off after a shard was truncated (the manifest never written, the stage's state
    left as running): the rerun resumes, finds the shard by its sha256, redoes it alone."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CRSD.format(stage="annotate", options="{shard_size: 16, on_low_parse: warn, annotator_options: {max_new_tokens: 6}}"))
    run(recipe, tmp_path / "runs")
    stage = tmp_path / "runs" / "f" / "annotate"
    before = load_from_disk(str(stage / "annotations")).to_list()
    shards = sorted((stage / "annotations_shards").glob("shard-*.jsonl"))
    shard = shards[2]
    shard.write_text(shard.read_text()[:100])  # truncated by a full disk, say
    manifest = json.loads((stage / MANIFEST).read_text())
    (stage / MANIFEST).unlink()  # the run was cut before it finished: state still "running"
    (stage / ".state.json").write_text(json.dumps({"hash": manifest["hash"], "status": "running"}))
    untouched = {p.name: p.stat().st_mtime_ns for p in shards if p != shard}
    FAULTS["injected"] += 1
    run(recipe, tmp_path / "runs")
    after = load_from_disk(str(stage / "annotations")).to_list()
    assert after == before and len({r["pair_id"] for r in after}) == len(after)
    assert {p.name: p.stat().st_mtime_ns for p in shards if p != shard} == untouched, "only the bad shard is redone"
    # the resumed stage's record covers every row: the same counts and rates, and a speed over all rows
    resumed = json.loads((stage / MANIFEST).read_text())["metrics"]
    for key in ("pairs", "parse_rate", "tokens", "failed", "teacher_accuracy", "teacher_macro_f1"):
        assert resumed.get(key) == manifest["metrics"].get(key), key
    from reasondistill.plugins.annotation.shards import read_seconds

    folder = stage / "annotations_shards"
    assert read_seconds(folder) > read_seconds(folder, 2) > 0  # the kept shards' time counts too
    assert resumed["pairs_per_s"] == round(len(after) / read_seconds(folder), 3)


def test_deleted_model_file_is_recomputed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CRSD.format(stage="distill", options=DISTILL_OPTS))
    run(recipe, tmp_path / "runs")
    model = tmp_path / "runs" / "f" / "distill" / "student" / "model.safetensors"
    model.unlink()
    FAULTS["injected"] += 1
    run(recipe, tmp_path / "runs")
    assert model.exists()
