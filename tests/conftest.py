import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # pytest -n N: each worker gets its share of the cores. torch's default (one thread per core
    # in every worker) oversubscribes them, and its spinning threads then make each step several
    # times slower (docs/testing.md); set before torch is imported, so subprocesses inherit it too.
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))

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


@pytest.fixture(scope="session")
def served_recipe():
    """A tiny student trained on the quickstart domain's gold pairs and exported (run ``served``)."""
    from reasondistill import Recipe, step

    return Recipe(name="served", domain="local_services", models={"student": "tiny-encoder"}, stages=[
        step("pairs", n=400), step("distill", train_input="pairs", loss="ce", epochs=3, batch_size=16, learning_rate=0.001,
                                   student_options={"max_length": 64}),
        step("export", agreement_rows=300)])


@pytest.fixture(scope="session")
def tiny_served_run(tmp_path_factory, served_recipe) -> Path:
    """:func:`served_recipe`, run once: what the serve tests serve. Seconds, where
    :func:`tiny_quickstart`'s teacher stages take minutes; the quickstart's own package and its full
    lineage are tested in test_quickstart."""
    from reasondistill import Engine
    from reasondistill.manager import Hooks

    runs = tmp_path_factory.mktemp("served") / "runs"
    Engine(Hooks(), runs_dir=runs).run(served_recipe)
    return runs
