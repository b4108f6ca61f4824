"""Both an editable install and a built wheel import the three mapped packages."""

import subprocess
import sys
import zipfile

import pytest

from .test_docs import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    return next(out.glob("reasondistill-*.whl"))


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("reasondistill/hookspecs.py", "reasondistill/plugins/domains/local_services.py",
                 "reasondistill/recipes/quickstart.yaml", "reasondistill/testing.py"):
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[reasondistill]" in text and "local_services = reasondistill.plugins.domains.local_services" in text
    assert "[pytest11]" in text


def test_wheel_installs_and_imports(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import reasondistill, reasondistill.plugins.domains.local_services as l, "
            "reasondistill.recipes.__init__; from reasondistill.recipe import builtin_recipes; "
            "assert reasondistill.__file__.startswith(sys.argv[1]), reasondistill.__file__; "
            "assert 'quickstart' in builtin_recipes(); print(l.LocalServices.name)")
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "local_services"


def test_min_pins_are_the_declared_lower_bounds():
    """``make test-min`` tests exactly the bounds users are promised: one pin per Hugging Face
    package, each equal to its ``>=`` bound in pyproject.toml."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = {}
    for req in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", req.split(";")[0].strip())
        if m:
            declared[m[1].lower()] = m[2]
    pins = dict(line.split("==") for line in (ROOT / "requirements-min.txt").read_text().split("\n")
                if line and not line.startswith("#"))
    assert set(pins) == {"transformers", "trl", "peft", "datasets", "accelerate"}
    for name, version in pins.items():
        padded = declared[name] + ".0" * (version.count(".") - declared[name].count("."))
        assert padded == version, f"requirements-min.txt pins {name}=={version}, pyproject says >={declared[name]}"
