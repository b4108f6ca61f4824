"""Content fingerprints (what makes a changed input file rerun a stage) and atomic writes."""

from __future__ import annotations

import hashlib
import json

import pytest

from reasondistill.fingerprint import canonical_hash, file_sha256, fingerprint, portable_ref, write_atomic, write_json_atomic


def test_file_fingerprint_is_the_sha256_of_its_bytes(tmp_path):
    f = tmp_path / "pairs.jsonl"
    data = b'{"query": "q"}\n' * 200_000  # over one read chunk
    f.write_bytes(data)
    assert file_sha256(f) == hashlib.sha256(data).hexdigest()
    assert fingerprint(f) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert fingerprint(str(f)) == fingerprint(f)


def test_folder_fingerprint_covers_names_and_contents_and_nothing_else(tmp_path):
    folder = tmp_path / "pool"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    expected = hashlib.sha256()
    for rel, text in (("a.txt", b"alpha"), ("sub/b.txt", b"beta")):
        expected.update(rel.encode() + b"\0" + hashlib.sha256(text).hexdigest().encode())
    first = fingerprint(folder)
    assert first == "sha256:" + expected.hexdigest()

    (folder / "sub" / "b.txt").write_text("gamma")  # a changed file
    changed = fingerprint(folder)
    (folder / "sub" / "b.txt").write_text("beta")
    assert changed != first and fingerprint(folder) == first
    (folder / "sub" / "b.txt").rename(folder / "sub" / "c.txt")  # a renamed file, same bytes
    assert fingerprint(folder) != first
    (folder / "sub" / "c.txt").rename(folder / "sub" / "b.txt")
    (folder / "empty").mkdir()  # an empty folder adds no file
    assert fingerprint(folder) == first


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        fingerprint(tmp_path / "nope.jsonl")


def test_canonical_hash_ignores_key_order_only():
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1, "b": [1, 2]}) != canonical_hash({"a": 1, "b": [2, 1]})
    blob = json.dumps({"a": 1, "b": [1, 2]}, sort_keys=True, separators=(",", ":"))
    assert canonical_hash({"b": [1, 2], "a": 1}) == hashlib.sha256(blob.encode()).hexdigest()


def test_json_is_written_whole_with_sorted_keys(tmp_path):
    path = tmp_path / "deep" / "deeper" / "manifest.json"  # parents are created
    write_json_atomic(path, {"b": 1, "a": {"d": 2, "c": 3}})
    text = path.read_text()
    assert text == json.dumps({"a": {"c": 3, "d": 2}, "b": 1}, indent=2) + "\n"
    assert list(path.parent.iterdir()) == [path]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "manifest.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, object())  # not text: the write fails part way
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_fingerprint_of_a_model_reference_keeps_names_and_digests_folders(tmp_path, monkeypatch):
    """``portable_ref``: what exports, model cards and served ids record for a model."""
    assert portable_ref("") == "" and portable_ref(None) is None
    assert portable_ref("tiny-encoder") == "tiny-encoder"
    assert portable_ref("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    folder = tmp_path / "models" / "my-model"
    folder.mkdir(parents=True)
    assert portable_ref(str(folder)) == "my-model"  # a folder with neither file: its name
    (folder / "config.json").write_text("{}")
    config = hashlib.sha256(b"{}").hexdigest()[:12]
    assert portable_ref(str(folder)) == f"my-model@{config}"
    (folder / "model.safetensors").write_bytes(b"weights")
    both = f"my-model@{config}+{hashlib.sha256(b'weights').hexdigest()[:12]}"
    assert portable_ref(str(folder)) == both
    (folder / "config.json").write_text('{"a": 1}')
    assert portable_ref(str(folder)) != both  # the content, not the place
    monkeypatch.chdir(tmp_path)
    assert portable_ref("models/my-model").startswith("my-model@")  # a relative folder that exists
    monkeypatch.chdir(tmp_path / "models")
    assert portable_ref("my-model") == "my-model"  # no separator: a name, even where a folder has it
    assert portable_ref(str(folder / "config.json")) == "config.json"  # a file: its name, no digest
