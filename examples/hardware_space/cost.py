"""Cost of the ADC non-idealities and of bit slicing relative to the plain analog forward.

ResNet-20 (CIFAR-10) on one batch, aihwkit's periphery (``preset = "aihwkit"``, ideal
devices, bound management off so that bit-serial input applies), each configuration
timed ``--runs`` times after a warm-up run, in interleaved rounds (a change of the machine's
load hits every configuration alike); prints the median seconds, the ratio to the plain
analog forward and how many convolutions ran on the fused kernel (bit-serial layers run the
blocked path). Figures are rough on a shared machine; run it with ``nice``::

    nice -n 19 python examples/hardware_space/cost.py [--batch 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import anasim

SHARED = Path(os.environ.get("ANASIM_SHARED", Path(__file__).resolve().parents[3] / "shared"))
INL = [[-1.0, -1.0], [-0.5, -0.48], [0.0, 0.01], [0.5, 0.51], [1.0, 1.0]]
CONFIGS = {
    "plain analog": {},
    "ADC gain+offset mismatch": {"forward": {"adc_gain_std": 0.02, "adc_offset_std": 0.02}},
    "ADC INL curve": {"forward": {"adc_inl": INL}},
    "2 weight slices x 4 bits": {"bit_slicing": {"weight_slices": 2, "weight_bits_per_slice": 4}},
    "4 weight slices x 2 bits": {"bit_slicing": {"weight_slices": 4, "weight_bits_per_slice": 2}},
    "input 4 bits/cycle (2 cycles)": {"bit_slicing": {"input_bits_per_cycle": 4}},
    "input 1 bit/cycle (6 cycles)": {"bit_slicing": {"input_bits_per_cycle": 1}},
}


def config(extra: dict) -> dict:
    cfg = {"preset": "aihwkit", "forward": {"bound_management": "none"}, "noise_model": {"type": "none"}}
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    graph = anasim.load(SHARED / "models" / "resnet20_cifar10.onnx")
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    print(f"ResNet-20, batch {args.batch}, median of {args.runs} interleaved rounds")
    sims = {name: anasim.analog(graph, config(extra), seed=0) for name, extra in CONFIGS.items()}
    for sim in sims.values():
        sim(x)  # warm-up (compilation, packing)
    times = {name: [] for name in sims}
    for _ in range(args.runs):  # round-robin: a change of the machine's load hits every configuration
        for name, sim in sims.items():
            t0 = time.perf_counter()
            sim(x)
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["plain analog"]))
    for name, sim in sims.items():
        med = float(np.median(times[name]))
        fused = sum(layer._fused is not None for layer in sim.layers)
        print(f"  {name:32s} {med:7.3f} s   x{med / base:5.2f}   ({fused} fused conv layers)")

if __name__ == "__main__":
    main()
