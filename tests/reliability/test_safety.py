"""Safe by default: no remote code, safetensors only, no pickle in run artifacts, explicit plugins."""

import logging
import re
from pathlib import Path

from reasondistill import Recipe, step

ROOT = Path(__file__).resolve().parents[2]


def test_trust_remote_code_is_off_unless_set_and_logged(rd_engine, caplog):
    assert Recipe(name="x", stages=[step("pairs")]).trust_remote_code is False
    with caplog.at_level(logging.WARNING, logger="reasondistill"):
        rd_engine.run(Recipe(name="trusting", trust_remote_code=True, stages=[step("pairs", n=20)]))
    assert "trust_remote_code" in caplog.text


def test_source_never_calls_unsafe_loaders():
    for path in list((ROOT / "sdk").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "pickle" not in text or path.name == "test_safety.py", path
        assert "trust_remote_code=True" not in text, path


def test_no_pickle_in_run_artifacts(tiny_quickstart):
    tmp_path = tiny_quickstart
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert f.suffix not in (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt"), f
            head = f.read_bytes()[:2]
            assert not (len(head) == 2 and head[0] == 0x80 and head[1] in range(2, 6)), f"pickle stream: {f}"
    assert list(tmp_path.rglob("*.safetensors"))


def test_plugins_only_from_entry_points(monkeypatch):
    """A module on sys.path that is not an installed entry point is never loaded as a plugin."""
    from reasondistill.manager import build_plugin_manager

    names = {n for n, _ in build_plugin_manager().list_name_plugin()}
    from importlib.metadata import entry_points

    assert names == {ep.name for ep in entry_points(group="reasondistill")}
