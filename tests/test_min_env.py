"""The environment a test run uses is the one it claims to test (issue 32).

``make test-min`` once built ``.venv-min`` with ``--system-site-packages``: it saw the main
environment's newer packages (a ``kernels`` entry point imported by every setuptools build), so a
new upstream release failed the lowest-versions run without anything in the project changing. These
checks run in both halves of ``make test``; in the min environment (``REASONDISTILL_MIN_ENV=1``) they
also hold the installed versions to ``requirements-min.txt``.
"""

import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

import pytest

from .test_docs import ROOT

IN_MIN_ENV = os.environ.get("REASONDISTILL_MIN_ENV") == "1"


def _declared_dependencies():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    reqs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9_.-]+", r)[0].lower() for r in reqs]


def _min_pins():
    return dict(line.split("==") for line in (ROOT / "requirements-min.txt").read_text().splitlines()
                if line and not line.startswith("#"))


def _inside(path: Path, root: str) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def test_every_declared_dependency_resolves_inside_this_environment():
    """Each declared dependency is installed in ``sys.prefix`` itself: a venv that can see another
    environment's site-packages (the leak of issue 32) resolves some of them outside and fails here."""
    outside = {}
    for name in _declared_dependencies():
        dist = md.distribution(name)
        where = Path(dist.locate_file(""))
        if not _inside(where, sys.prefix):
            outside[name] = str(where)
    assert not outside, f"declared dependencies resolve outside {sys.prefix}: {outside}"


@pytest.mark.skipif(not IN_MIN_ENV, reason="only in make test-min's environment")
def test_min_env_is_isolated_and_holds_the_pinned_versions():
    """The min venv cannot see the base interpreter's site-packages, and every pin of
    ``requirements-min.txt`` is the version installed there (not a newer one leaking in)."""
    assert sys.prefix != sys.base_prefix, "make test-min must run inside .venv-min"
    cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg, cfg
    base_site = [p for p in sys.path if p and _inside(Path(p), sys.base_prefix) and "site-packages" in p]
    assert not base_site, f"the base interpreter's site-packages is on sys.path: {base_site}"
    installed = {name: md.version(name) for name in _min_pins()}
    assert installed == _min_pins()
    leaked = sorted(d.metadata["Name"] for d in md.distributions()  # the checkout's own egg-info aside
                    if not (_inside(Path(d.locate_file("")), sys.prefix) or _inside(Path(d.locate_file("")), ROOT)))
    assert not leaked, f"distributions visible from outside the venv: {leaked}"
