"""Resize (opsets 10, 11/13, 18/19) and the deprecated Upsample (7, 9), N-dimensional.

Interpolation is separable, so an N-D resize is a sequence of 1-D resizes, one per
resized axis. Along one axis every output position ``y`` maps to a source coordinate
``x`` (``coordinate_transformation_mode``) and reads a few neighbouring input samples
("taps", clamped to the edge) with weights:

* ``nearest``: one tap, rounded per ``nearest_mode``;
* ``linear``: two taps (more with ``antialias`` when downsampling: a triangle filter
  stretched by 1/scale);
* ``cubic``: four taps of Keys' kernel with ``cubic_coeff_a`` (more with ``antialias``);
  ``exclude_outside`` drops taps outside the input and renormalises.

``tf_crop_and_resize`` samples the ``roi`` box and writes ``extrapolation_value`` outside
the input. Resize-10 and Upsample use the pre-opset-11 convention that onnxruntime keeps:
asymmetric coordinates and, for nearest, floor when upsampling / ceil when downsampling.
Coordinates follow the ONNX specification and onnxruntime (see :func:`_source_coords`).
Output sizes follow the ONNX reference: ``floor(scale * input)`` with scales; with
sizes, ``scale = size / input`` (``keep_aspect_ratio_policy`` may rescale them).
Computation happens in the input's float type (float64 weights cast once); integer
inputs are rounded and saturated back to their type.
"""

from __future__ import annotations

import numpy as np

from .registry import register

_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _source_coords(mode: str, n_out: int, n_in: int, scale: float, roi=(0.0, 1.0)):
    """Source coordinate of every output index along one axis; and the out-of-ROI mask.

    Formulas of the ONNX specification, with ``length_resized`` the integer output length
    (as onnxruntime does; the ONNX reference implementation uses the fractional
    ``scale * n_in`` for align_corners, pytorch_half_pixel and tf_crop_and_resize).
    """
    y = np.arange(n_out, dtype=np.float64)
    outside = None
    if mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        x = (y + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    elif mode == "align_corners":
        x = y * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    elif mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / (scale * n_in))
        x = offset + (y + 0.5) / scale - 0.5
    elif mode == "tf_crop_and_resize":
        lo, hi = float(roi[0]), float(roi[1])
        if n_out > 1:
            x = lo * (n_in - 1) + y * (hi - lo) * (n_in - 1) / (n_out - 1)
        else:
            x = np.full(n_out, 0.5 * (lo + hi) * (n_in - 1))
        outside = (x < 0) | (x > n_in - 1)
    else:
        raise ValueError(f"Unknown coordinate_transformation_mode {mode!r}")
    return x, outside


def _taps(x, n_in, scale, mode, nearest_mode, a, antialias, exclude_outside):
    """Tap indices (n_out, k), clamped to the input, and their weights (n_out, k)."""
    if mode == "nearest":
        floor = np.floor(x)
        frac = x - floor
        if nearest_mode == "round_prefer_floor":
            idx = np.where(frac <= 0.5, floor, floor + 1)
        elif nearest_mode == "round_prefer_ceil":
            idx = np.where(frac < 0.5, floor, floor + 1)
        elif nearest_mode == "floor":
            idx = floor
        elif nearest_mode == "ceil" or (nearest_mode == "simple" and scale < 1):
            idx = np.ceil(x)
        elif nearest_mode == "simple":
            idx = floor
        else:
            raise ValueError(f"Unknown nearest_mode {nearest_mode!r}; expected one of {_NEAREST[:4]}")
        return np.clip(idx, 0, n_in - 1).astype(np.intp)[:, None], None
    s = min(scale, 1.0) if antialias else 1.0
    support = 1.0 if mode == "linear" else 2.0
    start = int(np.floor(-support / s)) + 1
    k = 2 - 2 * start
    base = np.floor(x)
    idx = base[:, None] + (start + np.arange(k))[None, :]
    t = np.abs((idx - x[:, None]) * s)
    if mode == "linear":
        w = np.clip(1.0 - t, 0.0, 1.0)
    elif mode == "cubic":
        w = np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                     np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))
    else:
        raise ValueError(f"Unknown Resize mode {mode!r}; expected nearest, linear or cubic")
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    if exclude_outside:
        w = np.where((idx < 0) | (idx > n_in - 1), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, n_in - 1).astype(np.intp), w


def _resize_axis(data, axis, n_out, scale, roi, p):
    n_in = data.shape[axis]
    x, outside = _source_coords(p["coordinate_transformation_mode"], n_out, n_in, scale, roi)
    idx, w = _taps(x, n_in, scale, p["mode"], p["nearest_mode"], p["cubic_coeff_a"],
                   p["antialias"], p["exclude_outside"])
    if w is None:
        out = np.take(data, idx[:, 0], axis=axis)
    else:
        shape = (1,) * axis + (n_out,) + (1,) * (data.ndim - axis - 1)
        w = w.astype(data.dtype)
        out = np.take(data, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
        for j in range(1, idx.shape[1]):
            out += np.take(data, idx[:, j], axis=axis) * w[:, j].reshape(shape)
    if outside is not None and outside.any():
        shape = (1,) * axis + (n_out,) + (1,) * (data.ndim - axis - 1)
        out = np.where(outside.reshape(shape), np.asarray(p["extrapolation_value"], out.dtype), out)
    return out


def _resize(X, roi, scales, sizes, **p):
    rank = X.ndim
    axes = p.pop("axes", None)
    axes = list(range(rank)) if axes is None else [int(a) + rank if int(a) < 0 else int(a) for a in axes]
    lo, hi = [0.0] * rank, [1.0] * rank
    if roi is not None and np.asarray(roi).size:
        roi = np.asarray(roi, dtype=np.float64).reshape(-1)
        for i, a in enumerate(axes):
            lo[a], hi[a] = roi[i], roi[i + len(axes)]
    scale, out = [1.0] * rank, list(X.shape)
    if scales is not None and np.asarray(scales).size:
        for a, s in zip(axes, np.asarray(scales).reshape(-1)):
            scale[a] = float(s)
            out[a] = int(np.floor(np.float64(s) * X.shape[a]))
    elif sizes is not None and np.asarray(sizes).size:
        for a, n in zip(axes, np.asarray(sizes).reshape(-1)):
            out[a] = int(n)
            scale[a] = out[a] / X.shape[a]
        policy = p.pop("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = (min if policy == "not_larger" else max)(scale[a] for a in axes)
            for a in axes:
                scale[a], out[a] = s, int(s * X.shape[a] + 0.5)
    else:
        raise ValueError("Resize needs either scales or sizes")
    p.pop("keep_aspect_ratio_policy", None)
    work = X if X.dtype.kind == "f" else X.astype(np.float64)
    for a in axes:
        if out[a] == X.shape[a] and scale[a] == 1.0 and lo[a] == 0.0 and hi[a] == 1.0:
            continue
        work = _resize_axis(work, a, out[a], scale[a], (lo[a], hi[a]), p)
    if X.dtype.kind in "iu":
        info = np.iinfo(X.dtype)
        return np.clip(np.rint(work), info.min, info.max).astype(X.dtype)
    return work.astype(X.dtype, copy=False)


def _legacy(X, scales, mode):
    """Resize-10 / Upsample: asymmetric coordinates, onnxruntime's "simple" nearest rounding."""
    return _resize(X, None, scales, None, mode=mode, coordinate_transformation_mode="asymmetric",
                   nearest_mode="simple", cubic_coeff_a=-0.75, antialias=0, exclude_outside=0,
                   extrapolation_value=0.0)


@register("Resize", since=10)
def resize_10(X, scales, *, mode="nearest"):
    return _legacy(X, scales, mode)


@register("Resize", since=11)
def resize_11(X, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
              cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
              nearest_mode="round_prefer_floor"):
    """Resize-11/13 (roi, scales, sizes inputs; scales may be an empty tensor)."""
    return resize(X, roi, scales, sizes, coordinate_transformation_mode=coordinate_transformation_mode,
                  cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                  extrapolation_value=extrapolation_value, mode=mode, nearest_mode=nearest_mode)


@register("Resize", since=18)
def resize(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
           nearest_mode="round_prefer_floor"):
    """Resize-18/19: adds ``antialias``, ``axes``, ``keep_aspect_ratio_policy``, half_pixel_symmetric."""
    return _resize(X, roi, scales, sizes, antialias=antialias, axes=axes,
                   coordinate_transformation_mode=coordinate_transformation_mode,
                   cubic_coeff_a=float(cubic_coeff_a), exclude_outside=exclude_outside,
                   extrapolation_value=float(extrapolation_value),
                   keep_aspect_ratio_policy=keep_aspect_ratio_policy, mode=mode, nearest_mode=nearest_mode)


@register("Upsample", since=7)
def upsample_7(X, *, mode="nearest", scales):
    return _legacy(X, np.asarray(scales, dtype=np.float32), mode)


@register("Upsample", since=9)
def upsample(X, scales, *, mode="nearest"):
    """Deprecated since opset 10; same results as Resize-10."""
    return _legacy(X, scales, mode)
