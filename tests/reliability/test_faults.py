"""SIGKILL during annotation, DPO, CRSD training and a manifest write: nothing lost or duplicated."""

import json

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
DPO_OPTS = ("{input: pairs, prompts: 8, candidates: 2, max_new_tokens: 8, min_margin: 0.0, max_steps: 8, save_steps: 2, "
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
    assert _close(_weights(tmp_path / "ref" / "f" / stage / out), _weights(tmp_path / "cut" / "f" / stage / out))
    if stage == "distill":
        assert m["metrics"]["dev_macro_f1"] == pytest.approx(ref["metrics"]["dev_macro_f1"], abs=1e-6)


def test_sigkill_during_manifest_write_leaves_no_half_manifest(tmp_path, monkeypatch, rd_engine):
    """Die between writing the temp file and renaming it: the old state stays, the rerun completes."""
    import os

    from reasondistill import Recipe, step

    recipe = Recipe(name="m", stages=[step("pairs", n=40)])
    real_replace = os.replace

    def die(src, dst):
        if str(dst).endswith(MANIFEST):
            raise KeyboardInterrupt("killed mid-write")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        rd_engine.run(recipe)
    FAULTS["injected"] += 1
    stage_dir = rd_engine.runs_dir / "m" / "pairs"
    assert not (stage_dir / MANIFEST).exists()
    assert not list(stage_dir.glob(".manifest.json.*")), "the temp file is cleaned up"
    monkeypatch.setattr(os, "replace", real_replace)
    res = rd_engine.run(recipe)
    assert not res["pairs"].skipped and (stage_dir / MANIFEST).exists()


def test_truncated_shard_is_detected_and_redone(tmp_path):
    """A run cut off after a shard was truncated (the manifest never written, the stage's state
    left as running): the rerun resumes, finds the shard by its sha256, redoes it alone."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CRSD.format(stage="annotate", options="{shard_size: 16, annotator_options: {max_new_tokens: 6}}"))
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


def test_deleted_model_file_is_recomputed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CRSD.format(stage="distill", options=DISTILL_OPTS))
    run(recipe, tmp_path / "runs")
    model = tmp_path / "runs" / "f" / "distill" / "student" / "model.safetensors"
    model.unlink()
    FAULTS["injected"] += 1
    run(recipe, tmp_path / "runs")
    assert model.exists()
