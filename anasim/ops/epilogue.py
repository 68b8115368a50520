"""Element-wise epilogues fused into the op that produces their input: ``y = act(y + r)``.

A convolution followed by a residual ``Add`` and/or an activation (``Relu``, ``Clip``
with constant bounds, ``LeakyRelu``) writes its output once and applies the rest to each
block of it while the block is still in cache, instead of three passes over memory and
two more arrays (:func:`anasim.graph.passes.fuse_conv_epilogues` rewrites the graph; the
rewritten node is :func:`anasim.ops.nn.conv_epilogue`). The same kernel fuses an ``Add``
with the activation after it when the producer cannot take them (an analog convolution).

The arithmetic is the unfused ops', value by value: one float addition (commutative, so
``Add(y, r)`` and ``Add(r, y)`` agree bit for bit), then the comparisons of
:mod:`anasim.ops.nn`'s kernels (NaN passes through as there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["Epilogue", "ACTIVATIONS", "FUSED_DOMAIN", "activation", "epilogue_codes"]

FUSED_DOMAIN = "anasim"
"""Domain of the fused nodes (``anasim::ConvEpilogue``, ``anasim::AddActivation``) that
:func:`anasim.graph.passes.fuse_conv_epilogues` makes."""

NONE, RELU, CLIP, LEAKY_RELU = 0, 1, 2, 3
ACTIVATIONS = {"": NONE, "Relu": RELU, "Clip": CLIP, "LeakyRelu": LEAKY_RELU}
"""Activation name (the ONNX op) -> kernel code."""


@njit(inline="always")
def activation(v, kind, a, b):
    """The activation of one value, by ``kind``: Relu ``0 if v < 0``, Clip ``a if v < a``,
    ``b if v > b``, LeakyRelu ``v a if v < 0`` (the comparisons of :mod:`anasim.ops.nn`'s
    kernels; NaN passes through). Inlined into every kernel that applies an epilogue."""
    zero = np.float32(0.0)  # float32 outputs only (Epilogue.fits)
    if kind == RELU:
        return zero if v < zero else v
    if kind == CLIP:
        v = a if v < a else v
        return b if v > b else v
    if kind == LEAKY_RELU:
        return v * a if v < zero else v
    return v


@njit(nogil=True, cache=True)
def _epilogue_k(y, r, has_r, kind, a, b):
    """y[i] = act(y[i] + r[i]) in place (``r`` ignored unless ``has_r``; :func:`activation`)."""
    n = y.shape[0]
    if has_r:
        for i in range(n):
            y[i] = activation(y[i] + r[i], kind, a, b)
    else:
        for i in range(n):
            y[i] = activation(y[i], kind, a, b)


@dataclass(frozen=True)
class Epilogue:
    """``y = act(y + residual)``, applied block by block by the producing op.

    ``residual`` must have the output's shape and dtype (C-contiguous); ``activation`` is
    a key of :data:`ACTIVATIONS`; ``a``/``b`` are Clip's bounds or LeakyRelu's alpha (a).
    """

    residual: np.ndarray | None = None
    activation: str = ""
    a: float = 0.0
    b: float = 0.0

    def fits(self, out_shape: tuple, dtype) -> bool:
        """Whether it can run in place on an output of this shape and dtype (else the caller
        applies the unfused ops: a broadcasting residual, another dtype)."""
        r = self.residual
        return np.dtype(dtype) == np.float32 and (
            r is None or (r.shape == tuple(out_shape) and r.dtype == np.float32))

    def apply(self, flat: np.ndarray, lo: int, hi: int) -> None:
        """Apply to ``flat[lo:hi]`` (the output, flat) in place."""
        if hi <= lo:
            return
        r = self.residual
        f = flat.dtype.type
        rf = flat[lo:hi] if r is None else np.ascontiguousarray(r).reshape(-1)[lo:hi]
        _epilogue_k(flat[lo:hi], rf, r is not None, ACTIVATIONS[self.activation], f(self.a), f(self.b))


def epilogue_codes(epilogue: Epilogue | None):
    """(activation code, a, b, residual or None) for kernels that apply it themselves."""
    if epilogue is None:
        return NONE, np.float32(0), np.float32(0), None
    r = epilogue.residual
    return (ACTIVATIONS[epilogue.activation], np.float32(epilogue.a), np.float32(epilogue.b),
            None if r is None else np.ascontiguousarray(r))


def warmup() -> None:
    """Compile the kernel (or load it from Numba's cache)."""
    y = np.zeros(4, np.float32)
    _epilogue_k(y, y, True, RELU, np.float32(0), np.float32(0))
