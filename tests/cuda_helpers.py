"""What the CUDA test files share: markers for simulator-only and GPU-only tests, and the
launchers that run a file's simulator tests and a PTX compilation script in child processes
(the simulator must be chosen before Numba is imported; PTX needs the real numba.cuda)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

IN_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ROOT = Path(__file__).resolve().parents[1]

sim_only = pytest.mark.skipif(not IN_SIM,
                              reason="simulator test: run by test_simulator_suite in a child process")


def have_gpu() -> bool:
    """A real CUDA GPU usable by numba (never under the simulator)."""
    if IN_SIM:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


gpu_only = pytest.mark.skipif(not have_gpu(), reason="needs a CUDA GPU (numba.cuda.is_available())")


def run_simulator_suite(test_file: str, timeout: int = 600) -> None:
    """Run the ``test_sim_*`` tests of ``test_file`` under the CUDA simulator; fail on any failure or skip."""
    if IN_SIM:
        pytest.skip("already running under the simulator")
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "test_sim_",
           str(Path(test_file).resolve())]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"simulator tests failed:\n{tail}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], tail


def run_ptx_script(script: str) -> None:
    """Run a PTX-compiling script with the real numba.cuda; it must print ``PTX OK`` (or ``SKIP: why``)."""
    if IN_SIM:
        pytest.skip("needs the real numba.cuda (not the simulator)")
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0 and out.startswith("SKIP"):
        pytest.skip(out.strip())
    assert proc.returncode == 0 and "PTX OK" in out, out[-4000:]
