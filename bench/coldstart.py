"""Cold and warm start of anasim: the first call's time with an empty and with a filled Numba cache.

Used by ``bench/analog.py`` and ``bench/ideal.py`` (``--cold-start``); runs by itself too::

    python bench/coldstart.py MODEL.onnx [--config aihwkit] [--threads 2]

Each start is a fresh Python process (``NUMBA_CACHE_DIR`` pointing at a new, empty folder
for the cold one, the same folder again for the warm one) that imports anasim, loads the
model, maps it (``--config``; none: the ideal graph) and runs one batch of 8 random inputs;
it prints the seconds of each step. The cold first call is dominated by Numba compiling
the kernels the model needs; the warm one loads them from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import anasim
t1 = time.perf_counter()
graph = anasim.load(sys.argv[1])
run = graph if sys.argv[2] == "-" else anasim.analog(graph, sys.argv[2], seed=0)
t2 = time.perf_counter()
shape = [8] + [d if isinstance(d, int) else 1 for d in graph.inputs[0].shape[1:]]
run(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first call": t3 - t2}))
"""


def measure(model: str, config: str | None, threads: int) -> dict[str, dict[str, float]]:
    """{"cold": {...}, "warm": {...}} seconds of import, load (+ mapping) and first call."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    out = {}
    with tempfile.TemporaryDirectory(prefix="anasim-numba-cache-") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        for kind in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", _CHILD, str(model), config or "-"], env=env,
                                 capture_output=True, text=True, check=False)
            if res.returncode:
                raise RuntimeError(f"{kind} start failed:\n{res.stderr[-2000:]}")
            out[kind] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def describe(times: dict[str, dict[str, float]]) -> str:
    c, w = times["cold"], times["warm"]
    return (f"cold start (empty Numba cache): first call {c['first call']:.1f} s (import {c['import']:.1f} s, "
            f"load {c['load']:.1f} s); warm (cached): first call {w['first call']:.2f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--config", default=None, help="preset or config file (default: the ideal graph)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(describe(measure(a.model, a.config, a.threads)))
