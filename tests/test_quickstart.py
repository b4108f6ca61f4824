"""The quickstart recipe end to end with the tiny profile, then a rerun that does no work."""

from reasondistill.cli import main


def test_quickstart_tiny_profile_end_to_end(tiny_quickstart, capsys):
    runs = tiny_quickstart
    run = runs / "quickstart"
    assert (run / "distill" / "student" / "model.safetensors").exists()
    assert (run / "export" / "model" / "onnx" / "model.int8.onnx").exists()
    report = (run / "report.md").read_text()
    for plot in ("distill_confusion.png", "annotate_teacher_confusion.png", "preference_rewards.png", "latency.png",
                 "metrics.png", "sft_loss.png"):
        assert (run / "plots" / plot).stat().st_size > 1000, plot
        assert f"plots/{plot}" in report, plot
    assert main(["run", "quickstart", "--profile", "tiny", "--runs-dir", str(runs)]) == 0
    assert "0 stage(s) ran" in capsys.readouterr().out
    assert main(["show", "quickstart", "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "distill" in table and "dev_macro_f1=" in table
    assert table in report  # the report carries the same table
