"""The test kit for plugin authors, shipped as a pytest plugin (entry point ``pytest11``).

Fixtures:

- ``rd_hooks``: a fresh plugin facade with every installed plugin loaded.
- ``register_plugin``: ``register_plugin(obj, name=None)`` adds an inline plugin to ``rd_hooks``
  for one test (a misspelled hookimpl fails at once).
- ``rd_engine``: an :class:`~reasondistill.Engine` on ``rd_hooks`` writing under ``tmp_path``.
- ``tiny_causal_lm`` / ``tiny_encoder``: folders with a tiny Llama / BERT and a tokenizer trained
  offline (built once per session).
- ``tiny_teacher``: the tiny causal LM taught the ``local_services`` answer format (it writes
  parsable chains and varied labels under greedy decoding; built once per session, ~20 s).
- ``tiny_pairs``: 64 graded pairs from the embedded ``local_services`` generator.

All imports of the ML stack happen inside fixtures, so installing reasondistill never slows down
an unrelated pytest session. With ``REASONDISTILL_FIXTURE_CACHE=<folder>`` the three model fixtures
are built once into that folder and reused by later sessions (keyed by the source of
``reasondistill.tiny`` and the transformers version); mutation testing starts hundreds of short
sessions and would otherwise rebuild the tiny teacher (~20 s) in each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

import reasondistill.tiny as tiny
from reasondistill.data import rows_to_pairs
from reasondistill.engine import Engine
from reasondistill.manager import Hooks
from reasondistill.tiny import build_tiny_causal_lm, build_tiny_encoder, build_tiny_teacher, default_domain


@pytest.fixture
def rd_hooks():
    return Hooks()


@pytest.fixture
def register_plugin(rd_hooks) -> Callable[..., str]:
    names: list[str] = []

    def register(plugin: Any, name: str | None = None) -> str:
        names.append(rd_hooks.register(plugin, name))
        return names[-1]

    yield register
    for name in names:
        if rd_hooks.pm.has_plugin(name):
            rd_hooks.unregister(name)


@pytest.fixture
def rd_engine(rd_hooks, tmp_path):
    return Engine(rd_hooks, runs_dir=tmp_path / "runs")


def fixture_cache_path(name: str) -> Path | None:
    """Where fixture ``name`` is kept in ``REASONDISTILL_FIXTURE_CACHE``, keyed by the builders' source
    and transformers' version (a change to either builds it again); None without that variable."""
    import hashlib
    import os

    import transformers

    cache = os.environ.get("REASONDISTILL_FIXTURE_CACHE")
    if not cache:
        return None
    key = hashlib.sha256((Path(tiny.__file__).read_text() + transformers.__version__).encode()).hexdigest()[:12]
    return Path(cache) / f"{name}-{key}"


def _built(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build`` into a fresh session folder, or once into ``REASONDISTILL_FIXTURE_CACHE``."""
    import os
    import shutil

    final = fixture_cache_path(name)
    if final is None:
        return build(tmp_path_factory.mktemp(name))
    if not final.exists():
        scratch = build(tmp_path_factory.mktemp(name))
        staged = final.with_name(final.name + f".{os.getpid()}.tmp")
        shutil.copytree(scratch, staged)
        try:
            staged.rename(final)
        except OSError:  # another session got there first
            shutil.rmtree(staged, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    return _built(tmp_path_factory, "tiny-causal-lm", build_tiny_causal_lm)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return _built(tmp_path_factory, "tiny-teacher", build_tiny_teacher)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return _built(tmp_path_factory, "tiny-encoder", build_tiny_encoder)


@pytest.fixture
def tiny_pairs():
    return rows_to_pairs(default_domain().generate(n=64, seed=0), "tiny_pairs", num_labels=3)
