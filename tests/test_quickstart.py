"""The quickstart recipe end to end with the tiny profile, then a rerun that does no work."""

import json

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
    shown = capsys.readouterr().out
    table = "\n".join(line for line in shown.splitlines() if not line.startswith(("warning:", "gate")))
    assert "distill" in table and "dev_macro_f1=" in table
    assert table in report  # the report carries the same table
    assert max(len(line) for line in table.splitlines()) < 160  # headline numbers, not every metric (~900 chars)
    assert main(["show", "quickstart", "--runs-dir", str(runs), "--all"]) == 0
    assert "train_loss=" in capsys.readouterr().out
    assert main(["show", "quickstart", "--runs-dir", str(runs), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["distill"]["status"] == "complete" and "train_loss" in data["distill"]["metrics"]


def test_run_warns_in_plain_words(tiny_quickstart, capsys):
    """The tiny profile's teacher parses about a third of its answers: the end of the run says so,
    and names every class the student never predicts on dev (read from its predictions)."""
    run = tiny_quickstart / "quickstart"
    assert main(["show", "quickstart", "--runs-dir", str(tiny_quickstart)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    parse = json.loads((run / "annotate" / "manifest.json").read_text())["metrics"]["parse_rate"]
    assert f"warning: annotate: only {parse:.0%} of the teacher's answers parsed (parse_rate)" in warnings
    preds = json.loads((run / "distill" / "dev_predictions.json").read_text())
    never = {label for i, label in enumerate(preds["labels"]) if i not in preds["pred"]}
    said = {line.split("never predicts ")[1].split(" on")[0].strip("'") for line in warnings
            if line.startswith("warning: distill: the student never predicts")}
    assert said == never
    assert all(line in (run / "report.md").read_text() for line in warnings)


def test_never_predicted_classes_are_named_with_their_dev_counts(tmp_path):
    """Hand-made predictions: the warning names exactly the classes the student never predicts."""
    from reasondistill.run_summary import _never_predicted

    path = tmp_path / "dev_predictions.json"
    path.write_text(json.dumps({"gold": [0, 1, 2, 2, 1], "pred": [0, 0, 1, 1, 0],
                                "labels": ["irrelevant", "partly relevant", "relevant"]}))
    assert _never_predicted("distill", path) == [
        "warning: distill: the student never predicts 'relevant' on the 5 dev pairs (2 of them are 'relevant'): "
        "its F1 for it is 0"]
    path.write_text(json.dumps({"gold": [0, 1, 2], "pred": [0, 1, 2], "labels": ["a", "b", "c"]}))
    assert _never_predicted("distill", path) == []


def test_the_quickstart_package_names_its_teacher_and_annotations(tiny_quickstart):
    """The lineage a served student reports (``/metadata``) after the whole recipe: the teacher it
    learned from, the annotations, the student's retention of the teacher; the card names the teacher."""
    from huggingface_hub import ModelCard

    from reasondistill.student_package import read_lineage

    package = tiny_quickstart / "quickstart" / "export" / "model"
    lineage = read_lineage(package)
    assert lineage["teacher"].startswith("preference/teacher@") and len(lineage["recipe_hash"]) == 16
    assert lineage["annotations"]["pairs"] == 160 and "retention_macro_f1" in lineage["retention"]
    assert f"`{lineage['teacher']}`" in ModelCard((package / "README.md").read_text()).text
