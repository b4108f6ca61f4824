import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Materialised models go to a per-session cache, unless the caller pins one."""
    if "REASONDISTILL_CACHE" not in os.environ:
        os.environ["REASONDISTILL_CACHE"] = str(tmp_path_factory.mktemp("rd-cache"))
    yield


@pytest.fixture
def homedepot() -> Path:
    folder = SHARED_DATA / "homedepot"
    if not folder.exists():
        pytest.skip("../shared/data/homedepot is not beside this checkout")
    return folder


@pytest.fixture(scope="session")
def tiny_quickstart(tmp_path_factory) -> Path:
    """One run of the quickstart's tiny profile, shared by the tests that only read it."""
    from reasondistill.cli import main

    runs = tmp_path_factory.mktemp("quickstart") / "runs"
    assert main(["run", "quickstart", "--profile", "tiny", "--runs-dir", str(runs)]) == 0
    return runs
