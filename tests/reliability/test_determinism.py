"""The same recipe and seed twice on CPU: identical annotations and identical student metrics."""

import json

from datasets import load_from_disk

from reasondistill.cli import main


def test_same_seed_same_results(tmp_path):
    for name in ("a", "b"):
        assert main(["run", "quickstart", "--profile", "tiny", "--runs-dir", str(tmp_path / name)]) == 0
    ann = [load_from_disk(str(tmp_path / n / "quickstart" / "annotate" / "annotations")).to_list() for n in "ab"]
    assert ann[0] == ann[1]
    metrics = [json.loads((tmp_path / n / "quickstart" / "distill" / "manifest.json").read_text())["metrics"] for n in "ab"]
    for m in metrics:
        m.pop("step_seconds")
    assert metrics[0] == metrics[1]
