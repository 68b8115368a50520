"""Where an analog simulation spends its time: per layer and per stage of the tile pipeline.

Usage::

    python bench/profile.py [--model resnet20] [--config aihwkit] [--threads 2] [--batch 128]
                            [--runs 2] [--shared ../shared] [--top 12]

After a warm-up run, ``--runs`` runs of the analog model on one batch of real test images:

* the time of every analog layer (and, as the remainder, of the digital ops between them);
* for every fused analog convolution (:mod:`anasim.kernels.cpu_conv`), the split of its time
  into the kernel's stages, read from the CPU cycle counter inside the kernel (summed over
  the worker threads and shown as their mean wall time), plus its host-side preparation
  (zero padding, channel maps);
* the stage totals over the whole model.

Times are per image. Thread counts are set before NumPy is imported, as in the other
benches; run it with no other job on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys

_ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_ap.add_argument("--model", default="resnet20")
_ap.add_argument("--config", default="aihwkit", help="a preset name or a config file")
_ap.add_argument("--threads", type=int, default=int(os.environ.get("ANASIM_NUM_THREADS", 2)))
_ap.add_argument("--batch", type=int, default=128)
_ap.add_argument("--runs", type=int, default=2)
_ap.add_argument("--top", type=int, default=12, help="layers to list (slowest first)")
_ap.add_argument("--shared", default=None, help="path of the shared/ folder (default: ../shared)")
ARGS = _ap.parse_args()

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

import anasim  # noqa: E402
from anasim.analog.layer import AnalogLayer  # noqa: E402
from anasim.kernels import cpu_conv  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    from ideal import MODELS, SHARED, load_data  # the same data and model table

    numba.set_num_threads(ARGS.threads)
    fname, kind = MODELS[ARGS.model]
    x = load_data(kind, ARGS.batch)
    sim = anasim.analog(anasim.load(SHARED / "models" / fname), ARGS.config, seed=0)
    sim(x)  # warm-up: compilation, packing

    layer_time: dict[str, float] = defaultdict(float)
    call = AnalogLayer.__call__

    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return call(self, *args, **kwargs)
        finally:
            layer_time[self.name] += time.perf_counter() - t

    AnalogLayer.__call__ = timed
    cycles: dict = {}
    t0 = time.perf_counter()
    try:
        for _ in range(ARGS.runs):
            sim.run({sim.inputs[0].name: x}, profile=cycles)
    finally:
        AnalogLayer.__call__ = call
    total = time.perf_counter() - t0
    hz = cpu_conv.cycles_per_second()
    per_img = 1e3 / (ARGS.runs * len(x))  # seconds of all runs -> ms per image

    analog = sum(layer_time.values())
    print(f"{ARGS.model}, config {ARGS.config!r}, batch {len(x)}, {ARGS.threads} threads, {ARGS.runs} runs: "
          f"{total * per_img:.3f} ms/img; analog layers {analog * per_img:.3f} ms/img "
          f"({100 * analog / total:.0f} %), digital ops and executor {(total - analog) * per_img:.3f} ms/img")

    stages = list(cpu_conv.STAGES) + ["host: padding, channel maps"]
    totals = np.zeros(len(stages))
    rows = []
    for layer in sim.layers:
        t = layer_time.get(layer.name, 0.0)
        split = np.zeros(len(stages))
        if layer.name in cycles:
            c = cycles[layer.name]
            split[:-1] = c.sum(axis=0) / hz / ARGS.threads  # mean over the threads: wall time
            split[-1] = cycles.get((layer.name, "host"), 0.0)
            split[4] -= split[5]  # "output stages" excluding the random numbers drawn inside
        totals += split
        rows.append((t, layer, split))
    shown = [s for s in range(len(stages)) if totals[s] > 0]
    print(f"\nslowest {ARGS.top} analog layers (ms/img, share of the layer's time per stage):")
    head = " ".join(f"{stages[s][:11]:>11s}" for s in shown)
    print(f"{'ms/img':>7s} {'layer':<60s} {head}")
    for t, layer, split in sorted(rows, key=lambda r: -r[0])[:ARGS.top]:
        parts = " ".join(f"{100 * split[s] / t:10.0f}%" if t else f"{'':>11s}" for s in shown)
        print(f"{t * per_img:7.3f} {layer.describe()[-60:]:<60s} {parts}")
    print("\nstages over all fused convolutions (ms/img, share of the analog layers' time):")
    for s in shown:
        print(f"  {stages[s]:<32s} {totals[s] * per_img:7.3f}  {100 * totals[s] / analog:5.1f} %")
    rest = analog - totals.sum()
    print(f"  {'other (Gemm/MatMul, checks, waits)':<32s} {rest * per_img:7.3f}  {100 * rest / analog:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
