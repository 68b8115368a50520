"""Ideal-mode speed: anasim versus onnxruntime, side by side, same thread count.

Usage::

    python bench/ideal.py [--threads 2] [--batch 128] [--runs 7] [--models resnet20 resnet18]
                          [--shared ../shared] [--profile] [--ort-spin]

For each model: both runtimes run the same preprocessed batch of real test images, a
warm-up run each, then ``--runs`` alternating timed runs; prints the median time per
image for each, their ratio (anasim / onnxruntime; the target is <= 1.5), the max
|difference| of the logits relative to their scale, and the process's peak RSS.
``--profile`` adds anasim's time per op type (summed over the nodes as they run, fused ones
included; one extra run);
``--cold-start`` the first call's time in fresh processes with an empty and with a filled
Numba cache (:mod:`coldstart`).
The load average is printed because other processes on the machine distort the ratio.
onnxruntime's idle threads do not spin (as in bench/analog.py; ``--ort-spin`` restores its
default, under which the interleaved runtimes slow each other down).

Threads: BLAS (OpenBLAS/MKL/OpenMP) thread counts are read from environment variables
when NumPy loads, so this script sets them before importing NumPy; Numba's thread
count is set with ``numba.set_num_threads`` and onnxruntime's with
``SessionOptions.intra_op_num_threads``.
"""

from __future__ import annotations

import argparse
import os
import sys

_ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_ap.add_argument("--threads", type=int, default=int(os.environ.get("ANASIM_NUM_THREADS", 2)))
_ap.add_argument("--batch", type=int, default=128)
_ap.add_argument("--runs", type=int, default=7)
_ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
_ap.add_argument("--shared", default=None, help="path of the shared/ folder (default: ../shared)")
_ap.add_argument("--profile", action="store_true", help="also print anasim's time per op type")
_ap.add_argument("--cold-start", action="store_true",
                 help="also time the first call in fresh processes with an empty and a filled Numba cache")
_ap.add_argument("--ort-spin", action="store_true",
                 help="let onnxruntime's idle threads spin (its default; interleaved with anasim, its "
                      "threads and Numba's then take CPU from each other: onnxruntime measured up to 1.7x "
                      "slower than alone)")
_ap.add_argument("--heap-malloc", action="store_true",
                 help="re-run with glibc's mmap allocation off (MALLOC_MMAP_MAX_=0, no trimming), so "
                      "large arrays reuse freed heap memory instead of page-faulting fresh pages")
# imported by bench/analog.py for its model table: ignore that script's own options
ARGS = _ap.parse_args() if __name__ == "__main__" else _ap.parse_known_args()[0]

if ARGS.heap_malloc and os.environ.get("MALLOC_MMAP_MAX_") != "0":
    os.environ.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 40))
    os.execv(sys.executable, [sys.executable] + sys.argv)

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import anasim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(ARGS.shared) if ARGS.shared else ROOT.parent / "shared"

MODELS = {
    "resnet20": ("resnet20_cifar10.onnx", "cifar10"),
    "resnet32": ("resnet32_cifar10.onnx", "cifar10"),
    "resnet44": ("resnet44_cifar10.onnx", "cifar10"),
    "resnet56": ("resnet56_cifar10.onnx", "cifar10"),
    "resnet18": ("resnet18_fmnist.onnx", "fmnist"),
    "resnet34": ("resnet34_fmnist.onnx", "fmnist"),
    "vgg16": ("vgg16_fmnist.onnx", "fmnist"),
    "mobilenet_v2": ("mobilenet_v2_fmnist.onnx", "fmnist"),
}


def load_data(kind: str, n: int) -> np.ndarray:
    """The first ``n`` test images, preprocessed as ../shared/README.md describes."""
    if kind == "cifar10":
        x = np.load(SHARED / "data" / "cifar10_test1000.npz")["x"]
        reps = -(-n // len(x))
        x = np.concatenate([x] * reps)[:n].astype(np.float32) / 255.0
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))
    x = np.load(SHARED / "data" / "fashion_mnist_test.npz")["x"][:n]
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - 0.2860) / 0.3530)[:, None])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def profile(graph, x: np.ndarray) -> None:
    """One run with every node timed by the executor, as it runs (fused nodes included);
    prints the time per op type."""
    from anasim.graph.context import RunContext

    prof: dict = {}
    t0 = time.perf_counter()
    graph.run({graph.inputs[0].name: x}, context=RunContext(profile=prof))
    total = time.perf_counter() - t0
    print(f"    profile: {total * 1e3:.1f} ms per batch")
    ops = sorted(((k[1], v) for k, v in prof.items() if isinstance(k, tuple) and k[0] == "op"),
                 key=lambda kv: -kv[1][0])
    for op, (t, count) in ops:
        print(f"      {op:>20s} x{count:<3d} {t * 1e3:8.2f} ms  {100 * t / total:5.1f} %")


def bench(name: str) -> float:
    fname, kind = MODELS[name]
    path = SHARED / "models" / fname
    x = load_data(kind, ARGS.batch)
    so = ort.SessionOptions()
    so.intra_op_num_threads = ARGS.threads
    so.inter_op_num_threads = 1
    if not ARGS.ort_spin:  # as bench/analog.py: idle threads would spin into the other runtime's runs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    graph = anasim.load(path)
    ref = sess.run(None, {in_name: x})[0]
    got = graph(x)
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    t_ort, t_ana = [], []
    for _ in range(ARGS.runs):
        t = time.perf_counter()
        sess.run(None, {in_name: x})
        t_ort.append(time.perf_counter() - t)
        t = time.perf_counter()
        graph(x)
        t_ana.append(time.perf_counter() - t)
    m_ort, m_ana = np.median(t_ort) / len(x), np.median(t_ana) / len(x)
    ratio = m_ana / m_ort
    print(f"{name:>12s}: onnxruntime {m_ort * 1e3:7.3f} ms/img  anasim {m_ana * 1e3:7.3f} ms/img  "
          f"ratio {ratio:5.2f}  max|Δ|/scale {err:.1e}  peak RSS {peak_rss_mib():.0f} MiB")
    if ARGS.profile:
        profile(graph, x)
    return ratio


def main() -> int:
    numba.set_num_threads(ARGS.threads)
    print(f"threads {ARGS.threads} (numba {numba.get_num_threads()}), batch {ARGS.batch}, "
          f"runs {ARGS.runs} (median), onnxruntime {ort.__version__}, anasim {anasim.__version__}, "
          f"malloc {'heap only' if os.environ.get('MALLOC_MMAP_MAX_') == '0' else 'default'}, "
          f"load average {os.getloadavg()[0]:.1f}")
    from anasim.ops import nn

    nn.warmup()
    ratios = [bench(m) for m in ARGS.models]
    print(f"worst ratio {max(ratios):.2f} (target <= 1.5); peak RSS {peak_rss_mib():.0f} MiB")
    if ARGS.cold_start:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from coldstart import describe, measure

        for name in ARGS.models:
            print(f"{name:>10s}  ideal: {describe(measure(SHARED / 'models' / MODELS[name][0], None, ARGS.threads))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
