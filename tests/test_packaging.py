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
    for path in ("reasondistill/hookspecs.py", "reasondistill/plugins/local_services.py",
                 "reasondistill/recipes/quickstart.yaml", "reasondistill/testing.py"):
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[reasondistill]" in text and "local_services = reasondistill.plugins.local_services" in text
    assert "[pytest11]" in text


def test_wheel_installs_and_imports(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import reasondistill, reasondistill.plugins.local_services as l, "
            "reasondistill.recipes.__init__; from reasondistill.recipe import builtin_recipes; "
            "assert reasondistill.__file__.startswith(sys.argv[1]), reasondistill.__file__; "
            "assert 'quickstart' in builtin_recipes(); print(l.LocalServices.name)")
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "local_services"
