"""The distill stage's trainer settings, seen from what a run records: whole batches per epoch,
the time per step, the trackers named in ``report_to``."""

import importlib.util

import pytest

from reasondistill.failures import StageError

from .test_student import distill_recipe


def test_distill_epochs_train_whole_batches_and_time_each_step(rd_engine, capfd):
    """In-batch InfoNCE needs full batches: an epoch is ``rows // batch_size`` steps (the last
    partial batch dropped); ``step_seconds`` is the trainer's runtime over its steps; training
    shows its progress (the trainer's bar counts steps) and leaves no checkpoint behind."""
    res = rd_engine.run(distill_recipe(epochs=1, batch_size=16))["distill"]
    m = res.metrics
    assert m["train_rows"] % 16, "a partial last batch is what this test needs"
    assert m["steps"] == m["train_rows"] // 16
    assert 0 < m["step_seconds"] and m["step_seconds"] * m["steps"] <= res.seconds
    assert f"| {m['steps']}/{m['steps']} [" in capfd.readouterr().err
    assert not (rd_engine.runs_dir / "stu" / "distill" / "checkpoints").exists()


@pytest.mark.skipif(importlib.util.find_spec("dvclive") is not None, reason="needs a tracker that is not installed")
def test_distill_passes_report_to_the_trainer(rd_engine):
    """``report_to`` reaches ``TrainingArguments``: naming a tracker that is not installed fails
    with transformers' own message naming it (an empty list reports to none)."""
    with pytest.raises(StageError, match="stage 'distill' failed .*DVCLiveCallback requires dvclive"):
        rd_engine.run(distill_recipe(max_steps=1, report_to=["dvclive"]))
