"""The run store (reasondistill.runstore): a stage folder's life on disk, one method at a time."""

from __future__ import annotations

import json

import pytest

from reasondistill import StageResult
from reasondistill.errors import ArtifactError
from reasondistill.runstore import MANIFEST, STATE, StageFolder, read_manifest, write_manifest


@pytest.fixture
def folder(tmp_path):
    return StageFolder(tmp_path / "run", "stage")


def _finished(folder: StageFolder, digest: str = "h1") -> StageFolder:
    folder.begin(digest, resuming=False)
    (folder.dir / "out.txt").write_text("result")
    folder.finish(StageResult(outputs={"out": "out.txt"}, metrics={"m": 1.5}, seconds=2.0),
                  {"stage": "stage", "hash": digest, "timings": {"seconds": 2.0}})
    return folder


def test_a_finished_folder_is_up_to_date_for_its_hash_only(folder):
    _finished(folder)
    result = folder.up_to_date("h1")
    assert result == StageResult(outputs={"out": "out.txt"}, metrics={"m": 1.5}, skipped=True, seconds=2.0)
    assert folder.up_to_date("h2") is None
    assert not (folder.dir / STATE).exists(), "finish removes the running mark"
    manifest = read_manifest(folder.dir)
    assert manifest["outputs"]["out"]["path"] == "out.txt" and manifest["versions"]["reasondistill"]


def test_a_changed_or_missing_output_or_an_edited_manifest_reruns_the_stage(folder):
    _finished(folder)
    (folder.dir / "out.txt").write_text("edited")
    assert folder.up_to_date("h1") is None
    (folder.dir / "out.txt").unlink()
    assert folder.up_to_date("h1") is None
    _finished(folder)
    data = json.loads((folder.dir / MANIFEST).read_text())
    data["metrics"]["m"] = 9.9
    (folder.dir / MANIFEST).write_text(json.dumps(data))
    assert folder.up_to_date("h1") is None


def test_a_manifest_that_is_not_text_is_an_artifact_error(folder):
    folder.dir.mkdir(parents=True)
    (folder.dir / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(folder.dir)
    assert folder.up_to_date("h1") is None


def test_a_stale_checksum_in_what_is_written_is_replaced(tmp_path):
    write_manifest(tmp_path, {"hash": "h", "checksum": "stale"})
    assert read_manifest(tmp_path)["hash"] == "h"


def test_only_an_interrupted_run_of_the_same_hash_resumes(folder):
    assert not folder.can_resume("h1"), "nothing there"
    folder.begin("h1", resuming=False)
    assert folder.can_resume("h1") and not folder.can_resume("h2")
    (folder.dir / STATE).write_text("{not json")
    assert not folder.can_resume("h1"), "a corrupt mark starts over"
    _finished(folder)
    (folder.dir / STATE).write_text(json.dumps({"hash": "h1"}))
    assert not folder.can_resume("h1"), "a finished stage is not resumed"


def test_begin_keeps_resumable_work_and_drops_half_written_files(folder):
    folder.begin("h1", resuming=False)
    (folder.dir / "shard-0.jsonl").write_text("{}")
    (folder.dir / ".shard-1.jsonl.tmp").write_text("half")
    folder.begin("h1", resuming=True)
    assert (folder.dir / "shard-0.jsonl").exists() and not (folder.dir / ".shard-1.jsonl.tmp").exists()
    assert json.loads((folder.dir / STATE).read_text()) == {"hash": "h1", "status": "running"}
    folder.begin("h2", resuming=False)
    assert not (folder.dir / "shard-0.jsonl").exists(), "a fresh start empties the folder"


def test_finish_refuses_an_output_the_stage_did_not_write(folder):
    folder.begin("h1", resuming=False)
    with pytest.raises(ArtifactError, match="'out'.*does not exist"):
        folder.finish(StageResult(outputs={"out": "missing.txt"}), {"hash": "h1"})
    assert not (folder.dir / MANIFEST).exists()


def test_another_process_reads_what_the_main_process_recorded(folder):
    folder.dir.mkdir(parents=True)
    assert folder.recorded_result() == StageResult()
    _finished(folder)
    assert folder.recorded_result() == StageResult(outputs={"out": "out.txt"}, metrics={"m": 1.5}, seconds=2.0)


def test_a_failed_stage_leaves_only_work_a_rerun_resumes_from(tmp_path):
    empty = StageFolder(tmp_path / "run", "a")
    empty.begin("h", resuming=False)
    (empty.dir / "sub").mkdir()
    (empty.dir / ".x.tmp").write_text("half")
    empty.discard_if_empty()
    assert not empty.dir.exists() and not empty.run_dir.exists(), "no work: the stage and the run folder go"
    worked = StageFolder(tmp_path / "run", "b")
    worked.begin("h", resuming=False)
    (worked.dir / "shard-0.jsonl").write_text("{}")
    worked.discard_if_empty()
    assert (worked.dir / "shard-0.jsonl").exists()
    other = StageFolder(tmp_path / "run", "c")
    other.begin("h", resuming=False)
    other.discard_if_empty()
    assert not other.dir.exists() and other.run_dir.exists(), "the run folder stays while another stage has one"
    StageFolder(tmp_path / "nowhere", "d").discard_if_empty()  # never created: nothing to do


def test_what_counts_as_work_when_a_failed_stage_is_cleaned_up(tmp_path):
    for name in ("notes.tmp", ".settings"):  # only hidden *.tmp files are half-written atomic writes
        kept = StageFolder(tmp_path / name.strip("."), "s")
        kept.begin("h", resuming=False)
        (kept.dir / name).write_text("x")
        kept.discard_if_empty()
        assert (kept.dir / name).exists(), name


def test_finish_without_a_running_mark_still_writes_the_manifest(folder):
    folder.dir.mkdir(parents=True)
    (folder.dir / "out.txt").write_text("result")
    folder.finish(StageResult(outputs={"out": "out.txt"}), {"hash": "h1"})
    assert folder.up_to_date("h1") is not None


def test_a_package_that_is_not_installed_is_recorded_as_absent(monkeypatch):
    from reasondistill import runstore

    monkeypatch.setattr(runstore, "TRACKED_PACKAGES", ("reasondistill", "no-such-package-here"))
    versions = runstore.package_versions()
    assert versions["no-such-package-here"] == "absent" and versions["reasondistill"] != "absent"
