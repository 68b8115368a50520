"""The calibration of one analog layer, as data: what a calibrated chip stores digitally.

A :class:`LayerCalibration` holds what :func:`anasim.experiment.calibrate` found for a
layer, and the layer applies it:

* ``weight_clip`` — per convolution group, the (out,) clip bounds of the logical weights
  (layer units); :meth:`AnalogSimulator.program` programs ``clip(W, ±bound)`` instead of W
  (:func:`clipped_target`);
* ``nm_thres`` — the layer's constant input range (``noise_management = "constant"``);
* ``out_bound`` — the layer's ADC bound;
* ``scale``, ``offset`` — (channels,) digital affine correction after the layer, before its
  activation: ``y ← scale · y + offset`` per output channel (:func:`apply_affine`).

Any of them may be None (not calibrated). :meth:`LayerCalibration.to_arrays` /
:meth:`LayerCalibration.from_arrays` give the flat arrays of
:meth:`AnalogSimulator.state_dict` (keys under ``<layer>/calibration/``, see
:mod:`anasim.analog.state`), so snapshots carry them. The formulas of the bounds live
here too (:func:`clip_bounds`): they need only the weights, as a chip's programming
software has them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

SCALARS = ("nm_thres", "out_bound")
VECTORS = ("scale", "offset")
CLIP = "weight_clip/group"
"""Key of group g's clip bounds within a layer's calibration arrays: ``weight_clip/group<g>``."""


@dataclass(eq=False)
class LayerCalibration:
    """One layer's calibration (every field None: not calibrated)."""

    weight_clip: list | None = None
    nm_thres: float | None = None
    out_bound: float | None = None
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, k) is None for k in ("weight_clip",) + SCALARS + VECTORS)

    @property
    def has_data(self) -> bool:
        """Whether it holds more than the weight clip (ranges or an affine correction)."""
        return any(getattr(self, k) is not None for k in SCALARS + VECTORS)

    @property
    def affine(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, offset), or None when the layer has no affine correction."""
        if self.scale is None:
            return None
        return self.scale, self.offset

    def without_data(self) -> "LayerCalibration":
        """Only the programming choice (the weight clip): what a freshly programmed chip has."""
        return LayerCalibration(weight_clip=self.weight_clip)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The calibration as ``{name: array}`` (only what is set)."""
        out: dict[str, np.ndarray] = {}
        if self.weight_clip is not None:
            for g, b in enumerate(self.weight_clip):
                out[f"{CLIP}{g}"] = np.array(b, np.float32)
        for k in SCALARS:
            if getattr(self, k) is not None:
                out[k] = np.asarray(getattr(self, k), np.float32)
        for k in VECTORS:
            if getattr(self, k) is not None:
                out[k] = np.array(getattr(self, k), np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, *, n_channels: int, group_outputs: list[int],
                    where: str) -> "LayerCalibration":
        """The inverse of :meth:`to_arrays`, checking names and shapes (InputError naming the key)."""
        known = {f"{CLIP}{g}" for g in range(len(group_outputs))} | set(SCALARS) | set(VECTORS)
        unknown = sorted(set(arrays) - known)
        if unknown:
            raise InputError(f"{where}: unknown calibration array(s) {unknown}; known: {sorted(known)}.")
        cal = cls()
        clips = [arrays.get(f"{CLIP}{g}") for g in range(len(group_outputs))]
        if any(c is not None for c in clips):
            if any(c is None for c in clips):
                raise InputError(f"{where}: weight_clip bounds for some convolution groups only; "
                                 f"expected all of {len(group_outputs)}.")
            for g, (c, n) in enumerate(zip(clips, group_outputs)):
                _check(c, (n,), f"{where}{CLIP}{g}", positive=True)
            cal.weight_clip = [np.array(c, np.float32) for c in clips]
        for k in SCALARS:
            if k in arrays:
                _check(arrays[k], (), where + k, positive=True)
                setattr(cal, k, float(np.asarray(arrays[k])))
        if ("scale" in arrays) != ("offset" in arrays):
            raise InputError(f"{where}: an affine correction needs both 'scale' and 'offset'.")
        for k in VECTORS:
            if k in arrays:
                _check(arrays[k], (n_channels,), where + k)
                setattr(cal, k, np.array(arrays[k], np.float32))
        return cal


def _check(a, shape, key: str, positive: bool = False) -> None:
    a = np.asarray(a)
    if a.shape != shape or a.dtype.kind != "f":
        raise InputError(f"{key}: shape {a.shape} ({a.dtype}), expected {shape} (float32).")
    if not np.isfinite(a).all() or (positive and not (a > 0).all()):
        raise InputError(f"{key}: values must be finite{' and > 0' if positive else ''}.")


def clip_bounds(w: np.ndarray, method: str, *, n_std: float = 3.0, percentile: float = 99.9,
                per: str = "layer") -> np.ndarray:
    """Clip bounds (out,) of an (out × in) weight matrix: ``n_std`` standard deviations of
    the weights (``method = "std"``; the std about 0, i.e. the RMS) or the ``percentile`` of
    |W| (``"percentile"``), over the whole matrix (``per = "layer"``: one bound repeated) or
    per output row (``"column"``: per crossbar column). Never below the smallest nonzero |w|
    nor 0 (an all-zero row keeps the bound 1e-7)."""
    a = np.abs(np.asarray(w, np.float64))
    rows = a if per == "column" else a.reshape(1, -1)
    if method == "std":
        b = n_std * np.sqrt(np.mean(rows * rows, axis=1))
    elif method == "percentile":
        b = np.percentile(rows, percentile, axis=1)
    else:
        raise ValueError(f"unknown clip method {method!r}")
    b = np.maximum(b, 1e-7)
    return np.broadcast_to(b, (w.shape[0],)).astype(np.float32)


def clipped_target(tile, bounds: np.ndarray) -> np.ndarray:
    """Tile ``tile``'s target weights clipped at the layer bounds (layer units, (out,) of its
    group): in the tile's units the bound of row r is ``bound[r] / mapping_scale[r]``."""
    b = (np.asarray(bounds, np.float32)[tile.out_start:tile.out_stop] / tile.mapping_scale)[:, None]
    return np.ascontiguousarray(np.clip(tile.target, -b, b), dtype=np.float32)


def apply_affine(y: np.ndarray, scale: np.ndarray, offset: np.ndarray, channel_axis: int) -> np.ndarray:
    """``scale · y + offset`` per channel along ``channel_axis`` (float32)."""
    shape = [1] * y.ndim
    shape[channel_axis] = -1
    out = y * scale.reshape(shape)
    out += offset.reshape(shape)
    return out.astype(np.float32, copy=False)


def fit_affine(y_analog: np.ndarray, y_ideal: np.ndarray, channel_axis: int,
               min_r2: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel correction ``y ← scale · y + offset`` that undoes a gain and offset error.

    Least squares per channel, over every sample and position, of the analog output on the
    ideal one: ``y_analog ≈ g · y_ideal + c`` (the analog output as the ideal one with a gain
    and an offset error, plus noise); the correction inverts it: ``scale = 1/g``,
    ``offset = −c/g``. Fitting the other way round (ideal on analog) would shrink every
    noisy channel towards its mean (regression dilution), and the shrinkage compounds
    from layer to layer. A channel whose analog output follows its ideal one too weakly to
    estimate a gain — ideal output constant, g <= 0, or r² < ``min_r2`` — gets scale 1 and
    the mean difference as offset. In float64; returns float32 (channels,) arrays."""
    a = np.moveaxis(np.asarray(y_analog, np.float64), channel_axis, 0).reshape(y_analog.shape[channel_axis], -1)
    b = np.moveaxis(np.asarray(y_ideal, np.float64), channel_axis, 0).reshape(a.shape)
    ma, mb = a.mean(axis=1), b.mean(axis=1)
    da, db = a - ma[:, None], b - mb[:, None]
    va, vb, cov = (da * da).mean(axis=1), (db * db).mean(axis=1), (da * db).mean(axis=1)
    scale_b = np.maximum(1.0, (b * b).mean(axis=1))
    ok = (vb > 1e-12 * scale_b) & (va > 1e-12 * scale_b)
    r2 = np.where(ok, cov * cov / np.where(ok, va * vb, 1.0), 0.0)
    gain = np.where(ok, cov / np.where(ok, vb, 1.0), 1.0)
    ok &= (gain > 0) & (r2 >= min_r2)
    scale = np.where(ok, 1.0 / np.where(ok, gain, 1.0), 1.0)
    offset = mb - scale * ma
    return scale.astype(np.float32), offset.astype(np.float32)


class BatchNormOverride:
    """A digital BatchNormalization node run with re-estimated statistics (calibration's
    BatchNorm re-estimation): the node's own op, ``mean`` and ``var`` in place of its
    running statistics."""

    def __init__(self, fn, mean: np.ndarray, var: np.ndarray):
        self.fn, self.mean, self.var = fn, np.asarray(mean, np.float32), np.asarray(var, np.float32)

    def __call__(self, x, scale, bias, _mean, _var, *rest, context=None):
        return self.fn(x, scale, bias, self.mean.astype(_mean.dtype), self.var.astype(_var.dtype), *rest)


def channel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) mean and biased variance over every other axis, in float64."""
    a = np.moveaxis(np.asarray(x, np.float64), 1, 0).reshape(x.shape[1], -1)
    return a.mean(axis=1), a.var(axis=1)


def reestimated_statistics(mode: str, stored_mean, stored_var, analog: tuple, ideal: tuple | None = None):
    """BatchNorm running statistics from calibration activations, given the per-channel
    (mean, variance) of the analog activations (``analog``) and of the ideal network's
    (``ideal``, for "shift"; :func:`channel_moments`): ``"recompute"`` the analog ones
    (AdaBS, Joshi et al. 2020); ``"shift"`` the stored statistics moved by what the chip
    changes, mean + (μ_analog − μ_ideal) and var · σ²_analog / σ²_ideal (the identity on
    ideal hardware; a channel with no ideal variance keeps its variance). Returns float32
    (mean, var)."""
    ma, va = (np.asarray(a, np.float64) for a in analog)
    if mode == "recompute":
        return ma.astype(np.float32), va.astype(np.float32)
    mi, vi = (np.asarray(a, np.float64) for a in ideal)
    mean = np.asarray(stored_mean, np.float64) + (ma - mi)
    ratio = np.where(vi > 0, va / np.where(vi > 0, vi, 1.0), 1.0)
    return mean.astype(np.float32), (np.asarray(stored_var, np.float64) * ratio).astype(np.float32)
