"""Analog-mode speed: onnxruntime ideal, anasim ideal and anasim analog, side by side.

Usage::

    python bench/analog.py [--threads 2] [--batch 128] [--runs 5] [--models resnet20 resnet18]
                           [--configs aihwkit full] [--shared ../shared] [--cold-start] [--ort-spin]

Configurations timed for anasim (besides ``ideal``):

* ``aihwkit``: the ``aihwkit`` preset (aihwkit 1.2 InferenceRPUConfig: 7-bit DAC, 9-bit ADC,
  out_noise 0.06, abs_max noise management, iterative bound management, 512x512 tiles, PCM
  programming noise; the tiles hold the programmed weights);
* ``full``: DESIGN.md's "full analog mode": 8-bit DAC/ADC, out_noise 0.04, additive weight
  noise 0.02, abs_max noise and iterative bound management, PCM programming + drift to
  1 day with global compensation, 512-row tiles;
* ``quant8``: 8-bit DAC/ADC, out_bound 10, no noise.

Each row prints the median time per image over ``--runs`` alternating runs after a
warm-up (Numba compilation excluded; programming/drift is done once, outside the timing,
as in a Monte-Carlo evaluation), and the ratio to onnxruntime ideal (target: <= 3 for
the analog configurations); then the process's peak RSS. ``--cold-start`` adds the first
call's time in fresh processes with an empty and with a filled Numba cache (preset
configurations; :mod:`coldstart`). Thread counts are set before NumPy is imported;
onnxruntime's idle threads do not spin (they would take CPU from the interleaved anasim
runs), unless ``--ort-spin``. ``bench/profile.py`` shows where anasim's time goes.
"""

from __future__ import annotations

import argparse
import os
import sys

_ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_ap.add_argument("--threads", type=int, default=int(os.environ.get("ANASIM_NUM_THREADS", 2)))
_ap.add_argument("--batch", type=int, default=128)
_ap.add_argument("--runs", type=int, default=5)
_ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
_ap.add_argument("--configs", nargs="+", default=["aihwkit", "full"])
_ap.add_argument("--shared", default=None, help="path of the shared/ folder (default: ../shared)")
_ap.add_argument("--cold-start", action="store_true",
                 help="also time the first call in fresh processes with an empty and a filled Numba cache")
_ap.add_argument("--ort-spin", action="store_true",
                 help="let onnxruntime's idle threads spin (its default; they then take CPU from the "
                      "anasim runs interleaved with them)")
ARGS = _ap.parse_args()

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import anasim  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(ARGS.shared) if ARGS.shared else ROOT.parent / "shared"

CONFIGS = {
    "aihwkit": "aihwkit",
    "quant8": {"forward": {"inp_res": 254, "out_res": 254, "out_bound": 10.0, "bound_management": "none"}},
    "full": {
        "forward": {"inp_res": 254, "out_res": 254, "out_bound": 10.0, "out_noise": 0.04, "w_noise": 0.02,
                    "w_noise_type": "additive_constant", "noise_management": "abs_max",
                    "bound_management": "iterative"},
        "mapping": {"max_input_size": 512, "max_output_size": 512},
        "noise_model": {"type": "pcm"},
        "drift_compensation": {"type": "global"},
    },
}


ALIASES = {"mobilenetv2": "mobilenet_v2"}


def main() -> int:
    from ideal import MODELS, load_data, peak_rss_mib  # the same data and model table

    numba.set_num_threads(ARGS.threads)
    print(f"threads {ARGS.threads}, batch {ARGS.batch}, runs {ARGS.runs} (median), onnxruntime "
          f"{ort.__version__}, anasim {anasim.__version__}")
    worst = 0.0
    for name in ARGS.models:
        fname, kind = MODELS[ALIASES.get(name, name)]
        path = SHARED / "models" / fname
        x = load_data(kind, ARGS.batch)
        so = ort.SessionOptions()
        so.intra_op_num_threads = ARGS.threads
        so.inter_op_num_threads = 1
        if not ARGS.ort_spin:  # idle onnxruntime threads would spin into anasim's timed runs
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = anasim.load(path)
        runners = {"onnxruntime": lambda: sess.run(None, {"input": x}), "anasim ideal": lambda: graph(x)}
        for cfg in ARGS.configs:
            t0 = time.perf_counter()
            sim = anasim.analog(graph, CONFIGS[cfg], seed=0)
            if cfg == "full":
                sim.drift(86400.0)
            setup = time.perf_counter() - t0
            runners[f"anasim {cfg}"] = (lambda s=sim: s(x))
            print(f"  [{name}] {cfg}: mapping + programming {setup:.2f} s, {len(sim.layers)} analog layers, "
                  f"{sum(la.n_tiles for la in sim.layers)} tiles")
        for fn in runners.values():  # warm-up (compilation)
            fn()
        times = {k: [] for k in runners}
        for _ in range(ARGS.runs):
            for k, fn in runners.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        base = np.median(times["onnxruntime"]) / len(x)
        for k, ts in times.items():
            per = np.median(ts) / len(x)
            ratio = per / base
            if k not in ("onnxruntime", "anasim ideal"):
                worst = max(worst, ratio)
            print(f"{name:>10s}  {k:<18s} {per * 1e3:8.3f} ms/img  ratio {ratio:5.2f}")
    print(f"worst analog ratio {worst:.2f} (target <= 3); peak RSS {peak_rss_mib():.0f} MiB")
    if ARGS.cold_start:
        from coldstart import describe, measure

        for name in ARGS.models:
            for cfg in ARGS.configs:
                if isinstance(CONFIGS[cfg], str):
                    print(f"{name:>10s}  {cfg}: {describe(measure(SHARED / 'models' / MODELS[ALIASES.get(name, name)][0], CONFIGS[cfg], ARGS.threads))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
