"""GPU speed: anasim ideal and analog on the GPU, PyTorch fp32 ideal, and anasim on the CPU.

Usage::

    python bench/gpu.py [--batch 1024] [--runs 3] [--models resnet18 resnet20]
                        [--config aihwkit] [--check 64] [--threads 16] [--shared ../shared]
                        [--cpu-batch 128]

Needs a CUDA GPU visible to numba (``numba.cuda.is_available()``); exits with status 2
and a message otherwise. CuPy, when installed, makes the matrix products cuBLAS calls
(else a numba kernel; ``ANASIM_CUDA_MATMUL=numba`` forces it).

For each model (ResNet-18 on Fashion-MNIST, ResNet-20 on CIFAR-10) and one batch of
``--batch`` real test images (host arrays: each run includes the copy to the GPU and of
the logits back), prints images/s of:

* ``anasim ideal (GPU)``: ``anasim.load(model).to("cuda")``, the digital network with
  every op on the device;
* ``anasim analog (GPU)``: ``anasim.analog(model, --config, device="cuda")``, the tiles,
  their periphery, im2col and the digital ops on the device;
* ``pytorch fp32 ideal (GPU)``: the same (BN-folded) graph run with
  ``torch.nn.functional`` on the GPU, TF32 off, input already on the device, when
  PyTorch with CUDA is installed (the line is skipped otherwise);
* ``anasim ideal (CPU)`` / ``anasim analog (CPU)`` on ``--cpu-batch`` images, for scale;

and the ratio analog (GPU) / PyTorch throughput (issue target: >= 0.30). A first check
runs ``--check`` images through the ideal and the analog model on the CPU and on the
GPU and prints the largest difference relative to the logits' scale and the top-1
agreement (they differ only by the matrix products' summation order).
"""

from __future__ import annotations

import argparse
import os
import sys

_ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_ap.add_argument("--batch", type=int, default=1024)
_ap.add_argument("--runs", type=int, default=3)
_ap.add_argument("--models", nargs="+", default=["resnet18", "resnet20"],
                 choices=["resnet18", "resnet20"])
_ap.add_argument("--config", default="aihwkit",
                 help="anasim preset or configuration file (default aihwkit)")
_ap.add_argument("--check", type=int, default=64,
                 help="images compared between CPU and CUDA analog (0: skip)")
_ap.add_argument("--threads", type=int,
                 default=int(os.environ.get("ANASIM_NUM_THREADS", os.cpu_count() or 1)))
_ap.add_argument("--shared", default=None, help="path of the shared/ folder (default: ../shared)")
_ap.add_argument("--cpu-batch", type=int, default=128, help="images of the CPU lines (0: skip them)")
ARGS = _ap.parse_args()

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(ARGS.shared) if ARGS.shared else ROOT.parent / "shared"
MODELS = {"resnet18": ("resnet18_fmnist.onnx", "fmnist"), "resnet20": ("resnet20_cifar10.onnx", "cifar10")}


def load_data(kind: str, n: int) -> np.ndarray:
    """``n`` test images (repeated if needed), preprocessed as ../shared/README.md describes."""
    if kind == "cifar10":
        x = np.load(SHARED / "data" / "cifar10_test1000.npz")["x"]
        x = np.concatenate([x] * -(-n // len(x)))[:n].astype(np.float32) / 255.0
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    x = np.load(SHARED / "data" / "fashion_mnist_test.npz")["x"]
    x = np.concatenate([x] * -(-n // len(x)))[:n]
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - 0.2860) / 0.3530)[:, None])


def timed(fn, runs: int, sync=None) -> float:
    """Median seconds of ``runs`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(runs):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def torch_runner(graph):
    """A function x (torch CUDA tensor) -> logits running ``graph``'s IR with torch.nn.functional.

    Covers the ops of the two benchmark models (Conv, Relu, Add, GlobalAveragePool,
    Flatten, Gemm, Slice, Pad); raises NotImplementedError for others.
    """
    import torch
    import torch.nn.functional as F

    ir = graph.ir
    dev = torch.device("cuda")
    host = {k: np.asarray(v) for k, v in ir.constants.items()}
    const = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev)
             for k, v in host.items() if v.dtype.kind == "f"}
    for n in ir.nodes:
        if n.op_type not in ("Conv", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm", "Slice", "Pad"):
            raise NotImplementedError(f"op {n.op_type} ({n.name})")

    def run(x):
        env = {ir.inputs[0].name: x}
        val = lambda name: env[name] if name in env else const[name]  # noqa: E731
        for n in ir.nodes:
            a, i = n.attrs, n.inputs
            if n.op_type == "Conv":
                p = list(a.get("pads", [0, 0, 0, 0]))
                h = val(i[0])
                if p[:2] != p[2:]:
                    h, p = F.pad(h, (p[1], p[3], p[0], p[2])), [0, 0]
                out = F.conv2d(h, const[i[1]], const[i[2]] if len(i) > 2 and i[2] else None,
                               stride=tuple(a.get("strides", [1, 1])), padding=tuple(p[:2]),
                               dilation=tuple(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)))
            elif n.op_type == "Relu":
                out = F.relu(val(i[0]))
            elif n.op_type == "Add":
                out = val(i[0]) + val(i[1])
            elif n.op_type == "GlobalAveragePool":
                out = val(i[0]).mean(dim=(2, 3), keepdim=True)
            elif n.op_type == "Flatten":
                h = val(i[0])
                out = h.reshape(int(np.prod(h.shape[:a.get("axis", 1)])), -1)
            elif n.op_type == "Gemm":
                A, B = val(i[0]), const[i[1]]
                A = A.T if a.get("transA", 0) else A
                B = B.T if a.get("transB", 0) else B
                out = a.get("alpha", 1.0) * (A @ B)
                if len(i) > 2 and i[2]:
                    out = out + a.get("beta", 1.0) * const[i[2]]
            elif n.op_type == "Slice":
                h = val(i[0])
                starts, ends = host[i[1]], host[i[2]]
                axes = host[i[3]] if len(i) > 3 and i[3] else np.arange(len(starts))
                steps = host[i[4]] if len(i) > 4 and i[4] else np.ones(len(starts), np.int64)
                idx = [slice(None)] * h.dim()
                for s, e, ax, st in zip(starts, ends, axes, steps):
                    if st <= 0:
                        raise NotImplementedError("Slice with a negative step")
                    idx[int(ax) % h.dim()] = slice(int(s), int(min(e, 2**62)), int(st))
                out = h[tuple(idx)]
            else:  # Pad, constant mode
                h = val(i[0])
                pads = host[i[1]].tolist()
                value = float(host[i[2]]) if len(i) > 2 and i[2] else 0.0
                r = h.dim()
                tp = []
                for d in reversed(range(r)):
                    tp += [pads[d], pads[d + r]]
                out = F.pad(h, tuple(int(v) for v in tp), mode="constant", value=value)
            env[n.outputs[0]] = out
        return env[ir.outputs[0].name]

    return run


def main() -> int:
    try:
        from numba import cuda
        have = cuda.is_available()
    except Exception as e:  # numba without CUDA support
        have, why = False, str(e)
    else:
        why = "numba.cuda.is_available() is False (no GPU or no CUDA driver)"
    if not have:
        print(f"bench/gpu.py needs a CUDA GPU: {why}. Nothing to measure.", file=sys.stderr)
        return 2
    import numba

    import anasim
    from anasim.kernels import cuda as G

    numba.set_num_threads(ARGS.threads)
    if G.SIMULATOR:  # a smoke test of this script (tiny --batch): the timings mean nothing
        gpu_name = "Numba CUDA simulator"
    else:
        dev = cuda.get_current_device()
        gpu_name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    print(f"GPU {gpu_name}, batch {ARGS.batch}, "
          f"runs {ARGS.runs} (median), CPU threads {ARGS.threads}, config {ARGS.config!r}, "
          f"tile matmul {G.matmul_backend()}, anasim {anasim.__version__}")
    t = time.perf_counter()
    G.warmup()
    print(f"  CUDA kernels warm-up (compile or cache load): {time.perf_counter() - t:.1f} s")
    try:
        import torch
        torch_ok = torch.cuda.is_available()
    except ImportError:
        torch_ok = False
    if torch_ok:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    for name in ARGS.models:
        fname, kind = MODELS[name]
        graph = anasim.load(SHARED / "models" / fname)
        x = load_data(kind, ARGS.batch)
        ips = {}
        gpu_graph = graph.to("cuda")
        assert not gpu_graph.host_nodes, gpu_graph.host_nodes
        t = time.perf_counter()
        sim = anasim.analog(graph, ARGS.config, seed=0, device="cuda")
        setup = time.perf_counter() - t
        print(f"[{name}] mapping + programming {setup:.1f} s, {len(sim.layers)} analog layers, "
              f"{sum(la.n_tiles for la in sim.layers)} tiles")
        if ARGS.check:
            cpu_sim = anasim.analog(graph, ARGS.config, seed=0)
            xc = x[:ARGS.check]
            for label, ref, got in (("ideal", graph(xc), gpu_graph(xc)), ("analog", cpu_sim(xc), sim(xc))):
                rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
                agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
                print(f"  check on {ARGS.check} images: {label} GPU vs CPU max|Δ|/scale {rel:.1e}, "
                      f"top-1 agreement {agree:.3f}")
        ips["anasim ideal (GPU)"] = ARGS.batch / timed(lambda: gpu_graph(x), ARGS.runs, cuda.synchronize)
        ips["anasim analog (GPU)"] = ARGS.batch / timed(lambda: sim(x), ARGS.runs, cuda.synchronize)
        if ARGS.cpu_batch:
            xc = x[:ARGS.cpu_batch]
            ips["anasim ideal (CPU)"] = len(xc) / timed(lambda: graph(xc), 1)
            cpu_sim = anasim.analog(graph, ARGS.config, seed=0)
            ips["anasim analog (CPU)"] = len(xc) / timed(lambda: cpu_sim(xc), 1)
        if torch_ok:
            try:
                run = torch_runner(graph)
            except NotImplementedError as e:
                print(f"  pytorch line skipped: {e}")
            else:
                xt = torch.from_numpy(x).cuda()
                with torch.inference_mode():
                    logits = run(xt).cpu().numpy()
                    ideal = graph(x)
                    rel = float(np.abs(logits - ideal).max() / max(np.abs(ideal).max(), 1e-30))
                    print(f"  pytorch graph vs anasim ideal: max|Δ|/scale {rel:.1e}")
                    t_torch = timed(lambda: run(xt), ARGS.runs, torch.cuda.synchronize)
                    ips["pytorch fp32 ideal (GPU)"] = ARGS.batch / t_torch
        else:
            print("  pytorch line skipped: PyTorch with CUDA is not installed")
        for k, v in ips.items():
            print(f"{name:>10s}  {k:<28s} {v:10.1f} images/s")
        if "pytorch fp32 ideal (GPU)" in ips:
            r = ips["anasim analog (GPU)"] / ips["pytorch fp32 ideal (GPU)"]
            print(f"{name:>10s}  analog / pytorch throughput ratio {r:.3f} (target >= 0.30)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
