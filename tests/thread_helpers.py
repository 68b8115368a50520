"""Helpers for the 1-vs-N-thread tests: they really compare 1 against 2 threads.

Numba's pool size is fixed when Numba starts (``NUMBA_NUM_THREADS``, which ``import anasim``
defaults to ``$ANASIM_NUM_THREADS``). With a pool of one thread -- e.g. the suite run under
``ANASIM_NUM_THREADS=1`` -- ``numba.set_num_threads(2)`` is refused, so a 1-vs-2 test calls
:func:`rerun_with_two_threads` first: it runs the test again in a child pytest process whose
pool has 2 threads, and the test returns once the child passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import numba
import pytest

_CHILD = "ANASIM_TEST_TWO_THREAD_CHILD"


def rerun_with_two_threads(request) -> bool:
    """False if Numba's pool has >= 2 threads (the test runs here). Otherwise run the test in
    a child process with a 2-thread pool and return True once it passed there (the test then
    returns); fails with the child's output if it failed. Skips only if even the child's
    pool has a single thread."""
    if numba.config.NUMBA_NUM_THREADS >= 2:
        return False
    if os.environ.get(_CHILD):
        pytest.skip("Numba's thread pool has a single thread even with NUMBA_NUM_THREADS=2")
    env = dict(os.environ, ANASIM_NUM_THREADS="2", NUMBA_NUM_THREADS="2", **{_CHILD: "1"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           request.node.nodeid], cwd=str(request.config.rootpath), env=env,
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the 2-thread run in a child process failed:\n{out[-6000:]}"
    assert " passed" in out and " skipped" not in out, out[-3000:]
    return True


@contextmanager
def numba_threads(n: int):
    """Numba's (and so the convolutions' worker-thread) count set to ``n`` meanwhile."""
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)
