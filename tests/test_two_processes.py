"""Every stage that trains, under ``torchrun`` with 2 CPU processes (gloo): the multi-GPU launch
path without GPUs. One run covers dapt, sft, preference, reward_model, annotate and distill; after
training the ranks compare weight checksums, so a rank whose gradients were never averaged fails
the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from .served import free_port

RECIPE = """
name: ddp
models: {teacher: tiny-causal-lm, student: tiny-encoder}
seed: 5
stages:
  - uses: pairs
    options: {n: 160}
  - uses: dapt
    options: {max_steps: 2, batch_size: 2, max_length: 64, lora: true, lora_r: 4, eval_rows: 0}
  - uses: reasoning
    options: {source: column, limit: 32}
  - uses: sft
    options: {max_steps: 2, batch_size: 2, max_length: 256, eval_rows: 0}
  - uses: preference
    options: {prompts: 6, candidates: 2, max_new_tokens: 8, min_margin: 0.0, on_low_parse: warn, max_steps: 2, batch_size: 2,
              max_length: 256, heldout_prompts: 0, eval_rows: 0}
  - uses: reward_model
    options: {epochs: 1, batch_size: 2, max_length: 128}
  - uses: annotate
    options: {shard_size: 16, dev_rows: 0, on_low_parse: warn, annotator_options: {max_new_tokens: 8, batch_size: 8, retries: 0}}
  - uses: distill
    options: {train_input: pairs, reasoning_column: rationale, max_steps: 4, batch_size: 4, learning_rate: 0.002,
              student_options: {max_length: 48, reasoning_tokens: 32}}
"""


def test_every_training_stage_runs_in_two_processes(tmp_path):
    from reasondistill.manager import get_hooks
    from reasondistill.models import resolve_model
    from reasondistill.recipe import load_recipe, resolve_domain

    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(RECIPE)
    # the models are built here first: two ranks building one model into the cache at once can
    # still collide (seen with the per-domain tiny encoder; open in issue #15's notes)
    hooks = get_hooks()
    domain = resolve_domain(load_recipe(str(recipe)), hooks.catalogue)
    for ref in ("tiny-causal-lm", "tiny-encoder"):
        resolve_model(ref, hooks, domain)
    resolve_model("tiny-encoder", hooks)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "reasondistill", "run", str(recipe), "--runs-dir", str(runs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    run = runs / "ddp"
    for stage in ("dapt", "sft", "preference", "reward_model", "annotate", "distill"):
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["processes"] == 2, stage
        if stage in ("dapt", "sft", "preference", "distill"):
            assert manifest["metrics"]["steps"] >= 2, stage
    # both ranks trained one model: rank 0 wrote it once, and it moved away from its base
    sft, dpo = load_file(str(run / "sft" / "teacher" / "model.safetensors")), load_file(str(run / "preference" / "teacher" / "model.safetensors"))
    assert any(not torch.equal(sft[k], dpo[k]) for k in sft)
    ann = json.loads((run / "annotate" / "manifest.json").read_text())["metrics"]
    assert ann["pairs"] == 160 - json.loads((run / "pairs" / "manifest.json").read_text())["metrics"]["dev"]
    assert (run / "distill" / "student" / "reasondistill.json").exists()
