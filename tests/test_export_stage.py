"""The export stage's own arithmetic (its ONNX round trip and package are tested through the served
student in tests/test_serve.py and tests/test_student_roundtrip.py)."""


def test_export_latency_is_the_median_of_timed_calls_after_three_warm_ups(monkeypatch):
    """A clock that each call advances by a known time (a stand-in predictor: what is measured here
    is the arithmetic, not a model)."""
    import time

    from reasondistill.plugins.export.export_stage import median_ms

    now = [0.0]
    durations = [9.0, 9.0, 9.0, 0.001, 0.005, 0.002, 0.004, 0.0030004]  # 3 warm-ups (untimed), then 5 calls

    class Clocked:
        def predict_proba(self, queries, items):
            assert len(queries) == len(items) == 1  # batch 1
            now[0] += durations.pop(0)

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    assert median_ms(Clocked(), ["q"] * 5, ["i"] * 5, n=50) == 3.0  # n capped at the 5 pairs; 3 decimals
    assert not durations


def test_agreement_is_the_share_of_labels_each_onnx_variant_keeps_to_4_decimals(tiny_served_run, served_recipe, tmp_path,
                                                                                   monkeypatch):
    """The export stage again on the served run, with each ONNX predictor moving the first of its 48
    reference rows to another label: both variants keep 47 of 48 (0.9792; 3 decimals would say
    0.979). A stand-in around the real predictor: what is measured is the stage's arithmetic."""
    import shutil

    import numpy as np

    import reasondistill.plugins.export.export_stage as export_stage
    from reasondistill import Engine
    from reasondistill.manager import Hooks

    class OneMoved(export_stage.OnnxPredictor):
        def predict_proba(self, queries, items):
            probs = np.array(super().predict_proba(queries, items))
            probs[0] = np.roll(probs[0], 1)  # its argmax moves to the next class
            return probs

    runs = tmp_path / "runs"
    shutil.copytree(tiny_served_run, runs)
    shutil.rmtree(runs / "served" / "export")
    monkeypatch.setattr(export_stage, "OnnxPredictor", OneMoved)
    results = Engine(Hooks(), runs_dir=runs).run(served_recipe)
    metrics = results["export"].metrics
    assert metrics["agreement_fp32"] == metrics["agreement_int8"] == round(47 / 48, 4) == 0.9792
