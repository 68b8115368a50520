"""Metrics: how an output batch is scored, sample by sample.

A metric turns the model's output for a batch (``outputs``, N×…), the labels (``labels``,
N, or None) and the ideal network's output for the same samples (``ideal``, or None) into
one number per sample; an evaluation reports the mean over the data set. Built in:

``top1``
    1 if the label is the arg-max of the output (classification accuracy), else 0.
``top5`` (``topK`` for any K)
    1 if the label is among the K largest outputs. A sample with NaN scores counts as
    wrong; K at least the number of classes is refused (always 100 %).
``logits_rel_error``
    ‖y_analog − y_ideal‖₂ / ‖y_ideal‖₂ per sample (outputs flattened per sample): how far
    the analog network's raw outputs are from the ideal network's; needs no labels and
    works for any output (regression, segmentation, embeddings). NaN in either output (or
    an infinite ideal output) gives NaN for that sample, never a number.

Before an evaluation scores anything, :func:`check_output` refuses an output the metrics
cannot score meaningfully: a scalar or an output without the batch axis, and for top-k
integer outputs (class indices), one value per sample, K at least the number of classes,
or labels that are not classes of the output.

Register your own with :func:`register_metric`; a metric is any callable
``fn(outputs, labels, ideal) -> array of N floats``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError, InputError, closest


@dataclass(frozen=True)
class Metric:
    """A per-sample score. ``percent``: shown as a percentage (accuracies);
    ``higher_is_better``: False puts "lower is better" on plots' metric axis;
    ``needs_labels`` / ``needs_ideal``: what the function reads besides the outputs."""

    name: str
    fn: Callable
    label: str
    percent: bool = False
    higher_is_better: bool = True
    needs_labels: bool = False
    needs_ideal: bool = False

    def __call__(self, outputs, labels=None, ideal=None) -> np.ndarray:
        if self.needs_labels and labels is None:
            raise InputError(f"Metric {self.name!r} needs labels; the data set has none.")
        if self.needs_ideal and ideal is None:
            raise InputError(f"Metric {self.name!r} needs the ideal network's outputs.")
        values = np.asarray(self.fn(outputs, labels, ideal), dtype=np.float64).reshape(-1)
        if values.shape[0] != outputs.shape[0]:
            raise InputError(f"Metric {self.name!r} returned {values.shape[0]} values for "
                             f"{outputs.shape[0]} samples; it must return one per sample.")
        return values

    def format(self, value: float | None) -> str:
        """``value`` as shown in tables (percent for accuracies)."""
        if value is None or not np.isfinite(value):
            return "n/a"
        if self.percent:
            return f"{100.0 * value:.2f}"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.4g}"

    @property
    def unit(self) -> str:
        return "%" if self.percent else ""


def _scores(outputs: np.ndarray) -> np.ndarray:
    out = np.asarray(outputs)
    if out.ndim != 2:
        out = out.reshape(out.shape[0], -1)
    return out


class topk:
    """Top-k accuracy per sample (a picklable callable, so metrics travel to workers).
    A sample whose scores contain NaN counts as wrong; k at least the number of classes is
    refused (that accuracy is 100 % whatever the network computes)."""

    def __init__(self, k: int):
        self.k = int(k)

    def __repr__(self) -> str:
        return f"topk({self.k})"

    def __call__(self, outputs, labels, ideal=None):
        s = _scores(outputs)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.shape[0] != s.shape[0]:
            raise InputError(f"{labels.shape[0]} labels for {s.shape[0]} outputs.")
        if self.k >= s.shape[1]:
            raise InputError(f"top-{self.k} accuracy of {s.shape[1]} class(es) is 100 % whatever the "
                             f"network computes; choose k < {s.shape[1]}.")
        valid = (labels >= 0) & (labels < s.shape[1]) & ~np.isnan(s).any(axis=1)
        if self.k == 1:
            return ((np.argmax(s, axis=1) == labels) & valid).astype(np.float64)
        # correct if fewer than k classes score strictly higher than the label's class
        own = s[np.arange(s.shape[0]), np.clip(labels, 0, s.shape[1] - 1)]
        higher = (s > own[:, None]).sum(axis=1)
        return ((higher < self.k) & valid).astype(np.float64)


def logits_rel_error(outputs, labels, ideal):
    a = np.asarray(outputs, np.float64).reshape(outputs.shape[0], -1)
    b = np.asarray(ideal, np.float64).reshape(ideal.shape[0], -1)
    if a.shape != b.shape:
        raise InputError(f"Analog outputs {a.shape} and ideal outputs {b.shape} differ in shape.")
    with np.errstate(invalid="ignore", over="ignore"):
        num = np.linalg.norm(a - b, axis=1)
    den = np.linalg.norm(b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, 0.0))
    # NaN anywhere, or an infinite ideal output: undefined, never a (perfect) number
    undefined = np.isnan(a).any(axis=1) | ~np.isfinite(b).all(axis=1)
    return np.where(undefined, np.nan, err)


def builtin_scores(metric: "Metric") -> bool:
    """Whether ``metric`` is a built-in one that reads the outputs as scores (top-k) or
    compares them with the ideal outputs (``logits_rel_error``): NaN ideal outputs make
    either meaningless."""
    return isinstance(metric.fn, topk) or metric.fn is logits_rel_error


def n_classes(shape) -> int | None:
    """Scores per sample of an output of ``shape`` (the product of the axes after the
    first, as top-k flattens them); None when an axis is unknown or there is no batch axis."""
    if shape is None or len(shape) < 1:
        return None
    n = 1
    for d in shape[1:]:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            return None
        n *= int(d)
    return n


def _shape_text(shape, declared: bool) -> str:
    if declared:
        return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    return str(tuple(int(d) for d in shape))


def metric_problem(metric: "Metric", name: str, shape, dtype, labels=None, declared: bool = False,
                   advice: bool = True) -> str | None:
    """Why ``metric`` cannot score output ``name`` (``shape``, ``dtype``; declared by the
    model or as computed) with ``labels`` meaningfully, or None. Only top-k is checked
    here: it needs one float score per class, k below the number of classes and labels
    that are classes of the output. ``advice``: prefixed with the metric and followed by
    the way out (else the reason alone)."""
    found = _metric_problem(metric, name, shape, dtype, labels, declared)
    if found is None:
        return None
    return f"--metric {metric.name}: {found[0]} {found[1]}" if advice else found[0]


def _metric_problem(metric, name, shape, dtype, labels, declared):
    """``(what is wrong, the way out)`` or None; see :func:`metric_problem`."""
    if not isinstance(metric.fn, topk) or shape is None or len(shape) == 0:
        return None
    k, shown = metric.fn.k, _shape_text(shape, declared)
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        return (f"output {name!r} holds {np.dtype(dtype)} values (shape {shown}), class indices (from an "
                "ArgMax?) rather than one score per class, so top-k accuracy cannot be read from it.",
                "Score the output before the ArgMax (--output NAME), or use --metric logits_rel_error.")
    classes = n_classes(shape)
    if classes is None:
        return None
    if classes == 1:
        return (f"output {name!r} has one value per sample (shape {shown}), so there is nothing to rank: "
                "its arg-max is class 0 for every sample and the accuracy would only count the labels "
                "that are 0.",
                "Choose an output with one score per class (--output NAME), or use --metric "
                "logits_rel_error.")
    if k >= classes:
        return (f"output {name!r} (shape {shown}) has {classes} classes, so top-{k} accuracy is 100 % "
                "whatever the network computes.",
                f"Choose k < {classes} (e.g. --metric top{5 if classes > 5 else 1}).")
    if labels is not None and len(labels):
        y = np.asarray(labels).reshape(-1)
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            i = int(bad[0])
            return (f"{bad.size} of {y.size} labels (e.g. sample {i}: label {int(y[i])}; the labels range "
                    f"{int(y.min())}..{int(y.max())}) are not among the classes 0..{classes - 1} that output "
                    f"{name!r} (shape {shown}) can give, so those samples could never count as correct.",
                    "Check that the data set belongs to this model (and --output), or use --metric "
                    "logits_rel_error (needs no labels).")
    return None


def shape_problem(name: str, shape, batch: int | None = None, declared: bool = False) -> str | None:
    """Why output ``name`` of ``shape`` cannot be scored per sample at all (a scalar, or a
    first axis that is not the ``batch`` samples), or None."""
    if shape is None:
        return None
    src = "as the model declares it" if declared else "as the ideal network computes it"
    if len(shape) == 0:
        return (f"The scored output {name!r} is a scalar (shape (), {src}); a metric needs one value or row "
                "per sample (shape N×...).")
    if batch is not None and not declared and int(shape[0]) != batch:
        return (f"The scored output {name!r} has shape {_shape_text(shape, False)} for a batch of {batch} "
                "samples; its first axis must be the samples (one row per sample).")
    return None


def check_output(metrics, name: str, shape, dtype, *, labels=None, batch: int | None = None,
                 declared: bool = False, outputs=()) -> None:
    """Refuse (InputError) to score output ``name`` with ``metrics`` when the numbers
    would be meaningless or the metric would crash: see :func:`shape_problem` and
    :func:`metric_problem`. ``outputs``: the model's output names, for the way out."""
    problem = shape_problem(name, shape, batch, declared)
    if problem is not None:
        raise InputError(f"{problem} Choose another output with --output NAME (the model's outputs: "
                         f"{list(outputs)}), or make the model keep the batch axis.")
    for m in metrics:
        problem = metric_problem(m, name, shape, dtype, labels, declared)
        if problem is not None:
            others = [o for o in outputs if o != name]
            raise InputError(problem + (f" Other outputs: {others}." if others else ""))


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Make ``metric`` available by name (``evaluate(..., metric=name)``, ``--metric name``)."""
    if not isinstance(metric, Metric):
        raise ConfigError(f"register_metric needs a Metric; got {type(metric).__name__}.")
    _REGISTRY[metric.name] = metric
    return metric


register_metric(Metric("top1", topk(1), "top-1 accuracy", percent=True, needs_labels=True))
register_metric(Metric("top5", topk(5), "top-5 accuracy", percent=True, needs_labels=True))
register_metric(Metric("logits_rel_error", logits_rel_error, "relative output error",
                       higher_is_better=False, needs_ideal=True))


def get_metric(metric) -> Metric:
    """A :class:`Metric` from a name (``top1``, ``top5``, ``topK``, ``logits_rel_error``,
    or a registered name), a Metric, or a callable ``fn(outputs, labels, ideal)``."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        name = getattr(metric, "__name__", "custom")
        return Metric(name, metric, name, needs_labels=False, needs_ideal=False)
    if not isinstance(metric, str):
        raise ConfigError(f"metric must be a name or a callable; got {type(metric).__name__}.")
    key = metric.strip().lower().replace("-", "")
    if key in _REGISTRY:
        return _REGISTRY[key]
    m = re.fullmatch(r"top(\d+)", key)
    if m and int(m.group(1)) >= 1:
        k = int(m.group(1))
        return Metric(key, topk(k), f"top-{k} accuracy", percent=True, needs_labels=True)
    raise ConfigError(f"Unknown metric {metric!r}.{closest(key, list(_REGISTRY))} "
                      f"Known metrics: {', '.join(_REGISTRY)} (or topK for any K).")


def default_metrics(primary: Metric, n_outputs: int | None, has_labels: bool) -> list[Metric]:
    """The metrics an evaluation records: the requested one first, then top-1 and top-5
    accuracy when there are labels and a classifier output (top-5 only with > 5 classes)."""
    out = [primary]
    if has_labels and n_outputs is not None and n_outputs >= 2:
        for name, need in (("top1", 2), ("top5", 6)):
            if n_outputs >= need and all(m.name != name for m in out):
                out.append(_REGISTRY[name])
    return out


__all__ = ["Metric", "get_metric", "register_metric", "topk", "logits_rel_error", "default_metrics",
           "check_output", "metric_problem", "shape_problem", "n_classes", "builtin_scores"]
