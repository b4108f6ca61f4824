"""What the model card and ``GET /metadata`` say produced a student (``lineage``), read from stage
manifests written here: the teacher of the annotations, the loss of the stage that trained the
exported student, whichever stage that was."""

import json

import pytest
from datasets import Dataset

from reasondistill.runstore import write_manifest
from reasondistill.student_package import lineage


def stage(run, name, uses, options=None, metrics=None, outputs=None):
    (run / name).mkdir(parents=True, exist_ok=True)
    write_manifest(run / name, {"uses": uses, "options": options or {}, "metrics": metrics or {}, "hash": "h" * 64,
                                "timings": {"seconds": 1.0}, "outputs": outputs or {}})


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    names = [("ann", "annotate"), ("student", "distill"), ("act", "active")]
    (run / "recipe.json").write_text(json.dumps({"name": "run", "domain": "local_services", "models": {},
                                                 "stages": [{"name": n, "uses": u} for n, u in names]}))
    Dataset.from_list([{"label": 1, "teacher": "my-teacher@abc"}]).save_to_disk(str(run / "ann" / "annotations"))
    stage(run, "ann", "annotate", metrics={"pairs": 1}, outputs={"annotations": {"path": "annotations"}})
    stage(run, "student", "distill", options={"loss": "crsd"}, metrics={"train_rows": 10})
    stage(run, "act", "active", options={"distill": {"loss": "ce"}}, metrics={"train_rows": 20})
    return run


def test_the_exported_students_own_stage_and_loss_are_named(run, tmp_path):
    own = lineage(run, {}, run / "student" / "student")
    assert own["teacher"] == "my-teacher@abc" and own["student"]["loss"] == "crsd"
    active = lineage(run, {}, run / "act" / "round_2" / "distill" / "student")  # a stage whose students nest
    assert active["student"]["loss"] == "ce" and active["student"]["train_rows"] == 20
    for elsewhere in (tmp_path / "elsewhere", run):  # outside the run, or the run folder itself: the distill stage
        assert lineage(run, {}, elsewhere)["student"]["train_rows"] == 10


def test_annotations_that_cannot_be_read_name_no_teacher(run):
    (run / "ann" / "annotations" / "dataset_info.json").write_text("{")
    assert lineage(run, {})["teacher"] is None
    import shutil

    shutil.rmtree(run / "ann" / "annotations")
    assert lineage(run, {})["teacher"] is None


def test_the_gate_the_student_read_is_named_with_its_verdict_and_both_numbers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    names = [("my_gate", "gate"), ("student", "distill")]
    (run / "recipe.json").write_text(json.dumps({"name": "run", "domain": "local_services", "models": {},
                                                 "stages": [{"name": n, "uses": u} for n, u in names]}))
    stage(run, "my_gate", "gate", metrics={"verdict": "fallback", "teacher_macro_f1": 0.41, "reference_macro_f1": 0.45,
                                           "pairs": 300, "verdict_line": "gate: fallback"})
    stage(run, "student", "distill", options={"loss": "ce", "gate": "my_gate.verdict"}, metrics={"train_rows": 10})
    assert lineage(run, {})["gate"] == {"verdict": "fallback", "teacher_macro_f1": 0.41, "reference_macro_f1": 0.45,
                                        "pairs": 300, "line": "gate: fallback"}
    stage(run, "student", "distill", options={"loss": "ce"}, metrics={"train_rows": 10})  # read no gate
    assert "gate" not in lineage(run, {})

