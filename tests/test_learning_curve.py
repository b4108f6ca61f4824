"""The learning curve's bookkeeping: training seconds leave evaluation out, to the millisecond, and
examples count every process and accumulation step. (The curve's points against the teacher they
measure: ``test_teacher::test_learning_curve_points_match_the_teacher_they_measure``.)"""

import json
from types import SimpleNamespace

from reasondistill.plugins.teacher import learning_curve
from reasondistill.plugins.teacher.learning_curve import LearningCurve


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def test_training_seconds_leave_evaluation_out(tmp_path, monkeypatch):
    clock = Clock(1000.0)
    monkeypatch.setattr(learning_curve.time, "perf_counter", clock)

    class Timed(LearningCurve):
        def evaluate(self, model):  # evaluation takes 5 s of the clock, which training seconds leave out
            clock.now += 5.0
            return {"macro_f1": 0.5}

    curve = Timed(SimpleNamespace(dir=tmp_path), rows=[], every=2, max_new_tokens=8, tokenizer=None)
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=3)
    curve.on_train_begin(args, SimpleNamespace(global_step=0), None)
    for step, seconds in ((1, 0.1), (2, 0.12345), (3, 0.2), (4, 0.3)):
        clock.now += seconds
        curve.on_step_end(args, SimpleNamespace(global_step=step), None)
    points = json.loads((tmp_path / "curve.json").read_text())
    assert [(p["step"], p["examples"], p["train_seconds"]) for p in points] == [(2, 48, 0.223), (4, 96, 0.723)]
    assert points[0]["macro_f1"] == 0.5


def test_a_resumed_curve_keeps_its_points_up_to_the_checkpoint_and_counts_on(tmp_path, monkeypatch):
    clock = Clock(50.0)
    monkeypatch.setattr(learning_curve.time, "perf_counter", clock)
    points = [{"step": s, "examples": 8 * s, "train_seconds": s / 10} for s in (2, 4, 6, 8)]
    (tmp_path / "curve.json").write_text(json.dumps(points))

    class Timed(LearningCurve):
        def evaluate(self, model):
            return {}

    curve = Timed(SimpleNamespace(dir=tmp_path), rows=[], every=2, max_new_tokens=8, tokenizer=None)
    args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=1, world_size=1)
    curve.on_train_begin(args, SimpleNamespace(global_step=6), None)  # the checkpoint was at step 6
    clock.now += 0.25
    curve.on_step_end(args, SimpleNamespace(global_step=8), None)
    again = json.loads((tmp_path / "curve.json").read_text())
    assert [(p["step"], p["train_seconds"]) for p in again] == [(2, 0.2), (4, 0.4), (6, 0.6), (8, 0.85)]
