"""What a person reads about a run: ``show``'s table and JSON, the plain-words warnings, the
terminal's line per stage and report.md, from stage manifests written here (a run's own stages:
``test_quickstart``)."""

import json
import re
from types import SimpleNamespace

from reasondistill.plugins.pipeline import lifecycle_log
from reasondistill.run_summary import run_json, run_stages, run_table, warning_lines
from reasondistill.runstore import write_manifest


def make_run(tmp_path, stages: dict, unfinished=("distill",)):
    """A run folder: ``stages`` maps a stage name to (uses, metrics); ``unfinished`` have no manifest."""
    run = tmp_path / "run"
    run.mkdir()
    recipe = [{"name": n, "uses": u} for n, (u, _) in stages.items()] + [{"uses": n} for n in unfinished]
    (run / "recipe.json").write_text(json.dumps({"name": "run", "domain": "local_services", "stages": recipe}))
    for name, (uses, metrics) in stages.items():
        (run / name).mkdir()
        write_manifest(run / name, {"uses": uses, "metrics": metrics, "timings": {"seconds": 12.345}, "outputs": {}})
    return run


def test_show_table_pads_every_column_and_marks_unfinished_stages(tmp_path):
    run = make_run(tmp_path, {"gold": ("pairs", {"pairs": 120, "dev": 30, "dev_macro_f1": 0.51234, "steps": 9})})
    assert run_table(run).splitlines() == [
        "stage   | uses  | status       | seconds | metrics",
        "--------+-------+--------------+---------+--------",
        "gold    | pairs | complete     | 12.3    | dev_macro_f1=0.5123, pairs=120, dev=30",
        "distill | ?     | not finished |         | ",
    ]
    assert json.loads(run_json(run)) == {
        "gold": {"uses": "pairs", "status": "complete", "seconds": 12.345,
                 "metrics": {"pairs": 120, "dev": 30, "dev_macro_f1": 0.51234, "steps": 9}},
        "distill": {"status": "not finished"}}


def test_the_full_table_shows_numbers_only(tmp_path):
    run = make_run(tmp_path, {"gold": ("pairs", {"pairs": 120, "ok": True, "note": "text", "share": 0.25})}, unfinished=())
    assert run_table(run, full=True).splitlines()[2].endswith("| pairs=120, share=0.25")


def test_teacher_warnings_are_for_annotating_stages_only(tmp_path):
    shares = {"pairs": 40, "share_irrelevant": 0.0, "share_partly_relevant": 0.5, "share_relevant": 0.5,
              "label_probs_share": 0.625}
    run = make_run(tmp_path, {"ann": ("annotate", shares), "act": ("active", shares), "gold": ("pairs", shares)})
    assert warning_lines(run) == [
        "warning: ann: the teacher never labelled a pair 'irrelevant' (0 of 40); a student trained on these labels "
        "cannot learn it",
        "warning: ann: label probabilities for 62% of the rows only (a server without logprobs): the others record none"]


def test_a_stage_not_finished_before_others_hides_none_of_their_warnings(tmp_path):
    run = make_run(tmp_path, {"ann": ("annotate", {"pairs": 10, "parse_rate": 0.3})}, unfinished=("first",))
    recipe = json.loads((run / "recipe.json").read_text())
    recipe["stages"].reverse()  # the unfinished stage comes first
    (run / "recipe.json").write_text(json.dumps(recipe))
    assert [name for name, _ in run_stages(run)] == ["first", "ann"]
    assert warning_lines(run) == ["warning: ann: only 30% of the teacher's answers parsed (parse_rate)"]


def test_unreadable_dev_predictions_give_no_warning_and_no_error(tmp_path):
    run = make_run(tmp_path, {}, unfinished=())
    (run / "student").mkdir()
    (run / "student" / "dev_predictions.json").write_text("{not json")
    write_manifest(run / "student", {"uses": "distill", "metrics": {}, "timings": {"seconds": 1.0},
                                     "outputs": {"dev_predictions": {"path": "dev_predictions.json"}}})
    recipe = json.loads((run / "recipe.json").read_text())
    (run / "recipe.json").write_text(json.dumps({**recipe, "stages": [{"name": "student", "uses": "distill"}]}))
    assert warning_lines(run) == []


def test_the_terminal_line_says_done_or_up_to_date(capsys):
    run = SimpleNamespace(name="qs")
    metrics = {"pairs": 3, "share": 0.123456, "note": "text", **{f"m{i}": i for i in range(6)}}
    lifecycle_log.on_stage_end(run, "pairs", SimpleNamespace(skipped=False, seconds=2.25, metrics=metrics))
    lifecycle_log.on_stage_end(run, "pairs", SimpleNamespace(skipped=True, seconds=0.0, metrics={}))
    assert capsys.readouterr().err.splitlines() == [
        "[qs] pairs: done in 2.2s (pairs=3, share=0.1235, m0=0, m1=1, m2=2, m3=3)", "[qs] pairs: up to date"]


def test_the_report_is_rewritten_after_every_stage_through_the_plugin_manager(rd_hooks, tmp_path):
    run = make_run(tmp_path, {"gold": ("pairs", {"pairs": 120, "dev_macro_f1": 0.5})})
    rd_hooks.on_stage_end(SimpleNamespace(name="run", dir=run), "gold",
                          SimpleNamespace(skipped=False, seconds=1.0, metrics={}))
    report = (run / "report.md").read_text()
    assert report.startswith("# Run `run`") and re.search(r"gold +\| pairs \| complete", report)
    assert "![metrics](plots/metrics.png)" in report and (run / "plots" / "metrics.png").stat().st_size > 1000
    # no verdict: the metrics figure right under the table, then every metric, one blank line apart
    assert "```\n\n## Metrics per stage\n\n![metrics](plots/metrics.png)\n\n## Every metric\n" in report
    assert "\n\n\n" not in report


def test_the_report_has_a_section_for_each_stage_file_and_warns_on_a_class_never_predicted(tmp_path):
    from datasets import Dataset

    from reasondistill.plugins.pipeline.run_report import write_report

    run = make_run(tmp_path, {
        "ann": ("annotate", {"pairs": 4, "pairs_per_s": 4.0}),
        "student": ("distill", {"dev_macro_f1": 0.4, "latency_ms_student": 2.0}),
        "dpo": ("preference", {"before_reward_format": 0.5, "after_reward_format": 0.9})}, unfinished=())
    Dataset.from_list([{"gold_label": g, "label": p} for g, p in ((0, 0), (1, 2), (2, 2))]).save_to_disk(
        str(run / "ann" / "dev_annotations"))
    (run / "student" / "loss_history.json").write_text(json.dumps([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.7}]))
    (run / "student" / "dev_predictions.json").write_text(json.dumps(
        {"gold": [0, 1, 2], "pred": [0, 0, 1], "labels": ["irrelevant", "partly relevant", "relevant"]}))
    write_manifest(run / "student", {"uses": "distill", "metrics": {"dev_macro_f1": 0.4, "latency_ms_student": 2.0},
                                     "timings": {"seconds": 1.0},
                                     "outputs": {"dev_predictions": {"path": "dev_predictions.json"}}})
    report = write_report(run).read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections == ["## Metrics per stage", "## Every metric", "## ann: teacher confusion (dev)", "## student: loss",
                        "## student: student confusion (dev)", "## dpo: reward dimensions before/after DPO",
                        "## Teacher vs student latency"]
    assert all((run / "plots" / name).exists() for name in ("ann_teacher_confusion.png", "student_loss.png",
                                                            "student_confusion.png", "dpo_rewards.png", "latency.png"))
    assert ("**warning: student: the student never predicts 'relevant' on the 3 dev pairs (1 of them are "
            "'relevant'): its F1 for it is 0**") in report
    lines = report.splitlines()
    table_end = lines.index("```", lines.index("```") + 1)  # the summary table's closing fence
    assert lines[table_end + 1:table_end + 6] == ["", "## Metrics per stage", "", "![metrics](plots/metrics.png)", ""]
    assert lines[table_end + 6].startswith("**warning") and "\n\n\n" not in report  # one blank after the verdicts
    # one latency alone is no comparison
    write_manifest(run / "ann", {"uses": "annotate", "metrics": {"pairs": 4}, "timings": {"seconds": 1.0}, "outputs": {}})
    assert "## Teacher vs student latency" not in write_report(run).read_text()
