"""Calibration study: accuracy over time of chips uncalibrated and calibrated, per method.

For each network (default ResNet-20 on CIFAR-10, from ../shared), the ``aihwkit`` preset
(PCM devices, global drift compensation), ``--repeats`` freshly programmed chips, the data
set's first ``--n-cal`` samples calibrate every chip (never scored) and the next
``--n-eval`` are scored, at ``--times``. One evaluation per method (``[calibration]``
switched on alone), one with all of them, one with all of them recalibrated at every t
(``calibrate_at = "each_t"``: affine alone, all four, all but the input range), and the
uncalibrated chips on the same samples. Every
configuration uses the same seed, so chip r is the same programmed chip in every one
(weight clipping aside, which programs other weights with the same random streams): the
table gives each method's mean accuracy ± 95 % t-interval over the chips and the paired
difference to the uncalibrated chips (mean ± 95 % t-interval of the per-chip difference).

    nice -n 19 python examples/calibration/run.py                       # ResNet-20, 5 chips
    python examples/calibration/run.py --models resnet20,vgg16 --repeats 3 --times 1,1h,1d,1y

Writes ``results/<model>.csv`` (all rows), ``results/<model>.txt`` (the table) and
``results/<model>.png`` (accuracy vs time, one line per method; needs matplotlib).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import anasim
from anasim.cli import parse_times
from anasim.experiment import Results, evaluate, format_time
from anasim.experiment.stats import describe

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1].parent / "shared"

MODELS = {  # name: (model file, data file, preprocessing)
    "resnet20": ("resnet20_cifar10.onnx", "cifar10_test1000.npz", "cifar10"),
    "resnet18": ("resnet18_fmnist.onnx", "fashion_mnist_test.npz", "fmnist32"),
    "resnet34": ("resnet34_fmnist.onnx", "fashion_mnist_test.npz", "fmnist32"),
    "vgg16": ("vgg16_fmnist.onnx", "fashion_mnist_test.npz", "fmnist32"),
    "mobilenet_v2": ("mobilenet_v2_fmnist.onnx", "fashion_mnist_test.npz", "fmnist32"),
}

METHODS = {  # label: [calibration] table
    "none": {},
    "weight_clip": {"weight_clip": "std", "weight_clip_std": 3.0},
    "input_range": {"input_range": True},
    "adc_range": {"adc_range": True},
    "affine": {"affine": True},
    "all": {"weight_clip": "std", "input_range": True, "adc_range": True, "affine": True},
    "affine_each_t": {"affine": True, "calibrate_at": "each_t"},
    "all_each_t": {"weight_clip": "std", "input_range": True, "adc_range": True, "affine": True,
                   "calibrate_at": "each_t"},
    "no_input_each_t": {"weight_clip": "std", "adc_range": True, "affine": True, "calibrate_at": "each_t"},
}


def study(name: str, args) -> str:
    model_file, data_file, pre = MODELS[name]
    model, data = SHARED / "models" / model_file, SHARED / "data" / data_file
    base = anasim.preset("aihwkit").to_dict()
    methods = [m for m in METHODS if m in args.methods]
    per_method: dict = {}
    t0 = time.perf_counter()
    for label in methods:
        cfg = dict(base, calibration=METHODS[label])
        res = evaluate(model, data, cfg, preprocessing=pre, limit=args.n_cal + args.n_eval,
                       calibrate=args.n_cal, times=args.times, repeats=args.repeats, seed=args.seed,
                       batch_size=200, progress=False)
        per_method[label] = res
        print(f"  {name}: {label} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    table = format_table(name, per_method, args)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    rows = [row for res in per_method.values() for row in res.rows]
    first = next(iter(per_method.values()))
    Results(rows, params=first.params, metrics=first.metrics, meta=first.meta).save(
        out / f"{name}.csv", overwrite=True)
    (out / f"{name}.txt").write_text(table + "\n")
    plot(name, per_method, args, out / f"{name}.png")
    return table


def _by_t(res: Results) -> dict:
    """{t: {repetition: top-1}} and the ideal top-1 of one evaluation."""
    out: dict = {}
    for r in res.rows:
        if r["kind"] == "analog":
            out.setdefault(r["t_inference"], {})[r["repetition"]] = r["top1"]
    return out


def _ci(values, bounded: bool = True) -> str:
    """mean [95 % t-interval] in %; an accuracy's interval clipped to [0, 100]."""
    st = describe(values)
    if st["ci_low"] is None:
        return f"{100 * st['mean']:.1f}"
    lo, hi = st["ci_low"], st["ci_high"]
    if bounded:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return f"{100 * st['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def format_table(name: str, per_method: dict, args) -> str:
    ideal = next(r["top1"] for r in per_method["none" if "none" in per_method else next(iter(per_method))].rows
                 if r["kind"] == "ideal")
    base = _by_t(per_method["none"]) if "none" in per_method else None
    lines = [f"{name}: top-1 accuracy (%) on samples {args.n_cal}..{args.n_cal + args.n_eval - 1} "
             f"(calibration on samples 0..{args.n_cal - 1}), aihwkit preset, {args.repeats} chips, "
             f"seed {args.seed}; ideal (digital) {100 * ideal:.1f} %",
             "mean [95 % CI of the mean over chips]; Δ: paired difference to 'none' "
             "(mean [95 % CI] in points)", ""]
    head = f"{'method':<17}" + "".join(f"{format_time(t):>42}" for t in args.times)
    lines += [head, "-" * len(head)]
    for label, res in per_method.items():
        by_t = _by_t(res)
        cells = []
        for t in args.times:
            acc = [by_t[t][r] for r in sorted(by_t[t])]
            cell = _ci(acc)
            if base is not None and label != "none":
                d = [by_t[t][r] - base[t][r] for r in sorted(by_t[t])]
                cell += f"  Δ {_ci(d, bounded=False)}"
            cells.append(f"{cell:>42}")
        lines.append(f"{label:<17}" + "".join(cells))
    return "\n".join(lines)


def plot(name: str, per_method: dict, args, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.arange(len(args.times))
    for k, (label, res) in enumerate(per_method.items()):
        by_t = _by_t(res)
        st = [describe([by_t[t][r] for r in sorted(by_t[t])]) for t in args.times]
        mean = np.array([100 * s["mean"] for s in st])
        lo = np.array([100 * (s["ci_low"] if s["ci_low"] is not None else s["mean"]) for s in st])
        hi = np.array([100 * (s["ci_high"] if s["ci_high"] is not None else s["mean"]) for s in st])
        off = (k - len(per_method) / 2) * 0.04
        ax.errorbar(xs + off, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3,
                    label=label, linestyle="--" if label == "none" else "-")
    ideal = next(r["top1"] for r in next(iter(per_method.values())).rows if r["kind"] == "ideal")
    ax.axhline(100 * ideal, color="grey", linewidth=0.8, label="ideal")
    ax.set_xticks(xs, [format_time(t) for t in args.times])
    ax.set_xlabel("time after programming")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{name}, aihwkit preset: calibrated vs not ({args.repeats} chips, 95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--methods", default=",".join(m for m in METHODS if m != "all_each_t"),
                   help=f"comma-separated, of {', '.join(METHODS)} (default all but all_each_t)")
    p.add_argument("--n-cal", type=int, default=200)
    p.add_argument("--n-eval", type=int, default=800)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--times", default="1,1d")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.times = parse_times(args.times)
    args.methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}")
    if not SHARED.is_dir():
        p.error(f"{SHARED} is absent: the study needs the shared models and data")
    for name in args.models.split(","):
        print(study(name.strip(), args))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
