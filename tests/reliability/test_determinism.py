"""The same recipe and seed twice on CPU: identical annotations and identical student metrics."""

import json

from datasets import load_from_disk

from reasondistill.cli import main


def test_same_seed_same_results(tmp_path, tiny_quickstart):
    assert main(["run", "quickstart", "--profile", "tiny", "--runs-dir", str(tmp_path)]) == 0
    runs = [tiny_quickstart, tmp_path]
    ann = [load_from_disk(str(r / "quickstart" / "annotate" / "annotations")).to_list() for r in runs]
    assert ann[0] == ann[1]
    metrics = [json.loads((r / "quickstart" / "distill" / "manifest.json").read_text())["metrics"] for r in runs]
    for m in metrics:
        m.pop("step_seconds")
    assert metrics[0] == metrics[1]
