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
