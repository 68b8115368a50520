"""Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare, ArgMax/ArgMin.

Two forms per op, as in ONNX: ``axes`` as an attribute (opset 1; negative axes from 11)
and ``axes`` as an optional input with ``noop_with_empty_axes`` (ReduceSum from 13, the
others from 18). The result keeps the input's type. Reducing an empty set gives the
operation's identity (0 for sums, 1 for products, -inf/+inf or the integer limits for
max/min), as the ONNX reference does.
"""

from __future__ import annotations

import numpy as np

from .registry import register


def _identity_max(dtype):
    if dtype.kind == "f":
        return -np.inf
    return False if dtype.kind == "b" else np.iinfo(dtype).min


def _identity_min(dtype):
    if dtype.kind == "f":
        return np.inf
    return True if dtype.kind == "b" else np.iinfo(dtype).max


def _max(x, axis, keepdims):
    extra = {"initial": _identity_max(x.dtype)} if x.size == 0 else {}
    return np.max(x, axis=axis, keepdims=keepdims, **extra)


def _min(x, axis, keepdims):
    extra = {"initial": _identity_min(x.dtype)} if x.size == 0 else {}
    return np.min(x, axis=axis, keepdims=keepdims, **extra)


def _sum(x, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype)


def _mean(x, axis, keepdims):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(x, axis=axis, keepdims=keepdims)


def _logsumexp(x, axis, keepdims):
    if x.size == 0:
        with np.errstate(divide="ignore"):
            return np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    s = np.sum(np.exp(x - m), axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        out = np.log(s) + m
    return out if keepdims else np.squeeze(out, axis=axis)


_KINDS = {
    "ReduceSum": _sum,
    "ReduceMean": _mean,
    "ReduceMax": _max,
    "ReduceMin": _min,
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=x.dtype),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k, dtype=x.dtype),
    "ReduceL2": lambda x, a, k: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k, dtype=x.dtype)),
    "ReduceSumSquare": lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k, dtype=x.dtype),
    "ReduceLogSum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k, dtype=x.dtype)),
    "ReduceLogSumExp": _logsumexp,
}


def _reduce(kind, data, axes, keepdims, noop_with_empty_axes=0):
    axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if not axes:
        if noop_with_empty_axes:
            return data
        axis = None
    else:
        axis = tuple(sorted(a + data.ndim if a < 0 else a for a in axes))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.asarray(_KINDS[kind](data, axis, bool(keepdims)))
    return out if out.dtype == data.dtype else out.astype(data.dtype)


def _register_reduce(kind: str, input_since: int) -> None:
    def attr_form(data, *, axes=None, keepdims=1):
        return _reduce(kind, data, axes, keepdims)

    def input_form(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return _reduce(kind, data, axes, keepdims, noop_with_empty_axes)

    attr_form.__name__ = f"{kind}_attr_axes"
    input_form.__name__ = f"{kind}_input_axes"
    attr_form.__doc__ = f"{kind} with ``axes`` as an attribute (all axes when absent)."
    input_form.__doc__ = f"{kind} with ``axes`` as an optional input (opset {input_since}+)."
    register(kind, since=1)(attr_form)
    register(kind, since=input_since)(input_form)


for _kind in _KINDS:
    _register_reduce(_kind, 13 if _kind == "ReduceSum" else 18)


def _arg(fn, data, axis, keepdims, select_last_index):
    axis = int(axis) + data.ndim if int(axis) < 0 else int(axis)
    if select_last_index:
        idx = data.shape[axis] - 1 - fn(np.flip(data, axis), axis=axis, keepdims=bool(keepdims))
    else:
        idx = fn(data, axis=axis, keepdims=bool(keepdims))
    return np.asarray(idx, dtype=np.int64)


@register("ArgMax", since=1)
def argmax(data, *, axis=0, keepdims=1, select_last_index=0):
    """Index (int64) of the largest element along ``axis``; first occurrence unless ``select_last_index``."""
    return _arg(np.argmax, data, axis, keepdims, select_last_index)


@register("ArgMin", since=1)
def argmin(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmin, data, axis, keepdims, select_last_index)
