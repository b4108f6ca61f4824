"""Run recipes in a child process so that faults (SIGKILL) hit a real, separate run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def cmd(recipe: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "reasondistill", "run", str(recipe), "--runs-dir", str(runs)]


def run(recipe: Path, runs: Path) -> None:
    out = subprocess.run(cmd(recipe, runs), env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def kill_when(recipe: Path, runs: Path, ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start the run, SIGKILL it as soon as ``ready()`` holds, and check it really was cut off."""
    proc = subprocess.Popen(cmd(recipe, runs), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not ready():
            if proc.poll() is not None:
                raise AssertionError("the run finished before the fault could be injected")
            time.sleep(0.05)
        assert ready(), "fault point never reached"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
