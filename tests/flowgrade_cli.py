"""`python -m flowgrade` as the grading tests run it: one thread per process, timed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def flowgrade(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m flowgrade --root course *args``; the result carries ``.seconds``."""
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "flowgrade", "--root", str(course), *args],
                          capture_output=True, text=True, env=env, timeout=3000)
    proc.seconds = time.perf_counter() - t0
    return proc
