"""Metrics: how an output batch is scored, sample by sample.

A metric turns the model's output for a batch (``outputs``, N×…), the labels (``labels``,
N, or None) and the ideal network's output for the same samples (``ideal``, or None) into
one number per sample; an evaluation reports the mean over the data set. Built in:

``top1``
    1 if the label is the arg-max of the output (classification accuracy), else 0.
``top5`` (``topK`` for any K)
    1 if the label is among the K largest outputs.
``logits_rel_error``
    ‖y_analog − y_ideal‖₂ / ‖y_ideal‖₂ per sample (outputs flattened per sample): how far
    the analog network's raw outputs are from the ideal network's; needs no labels and
    works for any output (regression, segmentation, embeddings).

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
    """Top-k accuracy per sample (a picklable callable, so metrics travel to workers)."""

    def __init__(self, k: int):
        self.k = int(k)

    def __repr__(self) -> str:
        return f"topk({self.k})"

    def __call__(self, outputs, labels, ideal=None):
        s = _scores(outputs)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.shape[0] != s.shape[0]:
            raise InputError(f"{labels.shape[0]} labels for {s.shape[0]} outputs.")
        if self.k == 1:
            return (np.argmax(s, axis=1) == labels).astype(np.float64)
        kk = min(self.k, s.shape[1])
        # correct if fewer than k classes score strictly higher than the label's class
        valid = (labels >= 0) & (labels < s.shape[1])
        own = s[np.arange(s.shape[0]), np.clip(labels, 0, s.shape[1] - 1)]
        higher = (s > own[:, None]).sum(axis=1)
        return ((higher < kk) & valid).astype(np.float64)


def logits_rel_error(outputs, labels, ideal):
    a = np.asarray(outputs, np.float64).reshape(outputs.shape[0], -1)
    b = np.asarray(ideal, np.float64).reshape(ideal.shape[0], -1)
    if a.shape != b.shape:
        raise InputError(f"Analog outputs {a.shape} and ideal outputs {b.shape} differ in shape.")
    num = np.linalg.norm(a - b, axis=1)
    den = np.linalg.norm(b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, 0.0))


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


__all__ = ["Metric", "get_metric", "register_metric", "topk", "logits_rel_error", "default_metrics"]
