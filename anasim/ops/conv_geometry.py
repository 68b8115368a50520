"""The geometry of a convolution, resolved from an ONNX node, and the argument checks and
block sizes shared by the convolution kernels.

* :func:`conv_geometry` resolves an ONNX ``Conv`` node's attributes (``auto_pad``,
  ``pads``, ``strides``, ``dilations``, ``group``) against concrete input and weight shapes
  into a frozen :class:`ConvGeometry`; :func:`conv_transpose_geometry` does the same for
  ``ConvTranspose`` (as the geometry of the forward convolution it transposes).
* ``_spatial_param`` / ``_auto_pads`` resolve per-axis attributes (also for pooling,
  :mod:`anasim.ops.pool`).
* ``_as5d`` / ``_params3``: 1-D and 2-D convolutions as 3-D ones with unit leading axes.
* ``_check_input`` / ``_bias_or_zeros``: checks of a convolution's input and bias.
* ``_chunk_bytes``: the size of one worker's block of the blocked products
  (:mod:`anasim.ops.conv`, :mod:`anasim.ops.winograd`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedOpError

__all__ = ["ConvGeometry", "conv_geometry", "conv_transpose_geometry"]


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ConvGeometry:
    """Resolved geometry of one convolution (batch-size independent).

    All per-axis tuples have one entry per spatial axis (1, 2 or 3 of them).
    """

    in_channels: int
    """C, input channels."""
    out_channels: int
    """OC, output channels (filters)."""
    group: int
    """Number of groups; ``C`` and ``OC`` are both divisible by it."""
    in_shape: tuple[int, ...]
    """Input spatial shape, e.g. (H, W)."""
    kernel: tuple[int, ...]
    """Kernel spatial shape, e.g. (kh, kw)."""
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    """Zero padding before each spatial axis (after auto_pad resolution)."""
    pads_end: tuple[int, ...]
    """Zero padding after each spatial axis."""
    out_shape: tuple[int, ...]
    """Output spatial shape, e.g. (OH, OW)."""

    @property
    def n_spatial(self) -> int:
        return len(self.in_shape)

    @property
    def kernel_size(self) -> int:
        """kk = product of the kernel's spatial dimensions."""
        return math.prod(self.kernel)

    @property
    def channels_per_group(self) -> int:
        return self.in_channels // self.group

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.group

    @property
    def k(self) -> int:
        """Columns of the im2col matrix: C * kk."""
        return self.in_channels * self.kernel_size

    @property
    def k_per_group(self) -> int:
        """Rows of one group's weight matrix: C/group * kk."""
        return self.channels_per_group * self.kernel_size

    @property
    def n_pixels(self) -> int:
        """P = number of output pixels per sample."""
        return math.prod(self.out_shape)

    # 3-D views (1-D and 2-D convolutions run as 3-D ones with unit leading axes)
    def _pad3(self, t: tuple[int, ...], fill: int) -> tuple[int, ...]:
        return (fill,) * (3 - len(t)) + tuple(t)


def _spatial_param(value, n: int, default: int, name: str) -> tuple[int, ...]:
    if value is None or len(value) == 0:
        return (default,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries; expected {n} (one per spatial axis)")
    return value


def _auto_pads(auto_pad: str, in_shape, kernel, strides, dilations, pads, *, pool_ceil=False):
    """Resolve ``auto_pad``/``pads`` into (pads_begin, pads_end) as onnxruntime does."""
    n = len(in_shape)
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    if auto_pad in ("NOTSET", ""):
        if pads is None or len(pads) == 0:
            return (0,) * n, (0,) * n
        pads = tuple(int(p) for p in pads)
        if len(pads) != 2 * n:
            raise ValueError(f"pads has {len(pads)} entries; expected {2 * n}")
        return pads[:n], pads[n:]
    if auto_pad == "VALID":
        return (0,) * n, (0,) * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER; got {auto_pad!r}")
    begin, end = [], []
    for i, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-i // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - i)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return tuple(begin), tuple(end)


def conv_geometry(x_shape, w_shape, auto_pad="NOTSET", dilations=None, group=1,
                  kernel_shape=None, pads=None, strides=None) -> ConvGeometry:
    """Resolve an ONNX ``Conv`` node's attributes for input ``x_shape`` and weight ``w_shape``.

    ``x_shape`` is ``(N, C, *spatial)`` (N is ignored), ``w_shape`` is
    ``(OC, C/group, *kernel)``; the keyword arguments are the node's attributes with the
    ONNX defaults. Raises ValueError for inconsistent shapes.
    """
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    n = len(x_shape) - 2
    if n < 1 or len(w_shape) != n + 2:
        raise ValueError(f"Conv needs X of rank >= 3 and W of the same rank; got X {x_shape}, W {w_shape}")
    if n > 3:
        raise UnsupportedOpError(f"Conv with {n} spatial dimensions is not supported (1 to 3 are)")
    group = int(group)
    c, oc = x_shape[1], w_shape[0]
    if group < 1 or c % group or oc % group or w_shape[1] * group != c:
        raise ValueError(f"Conv with group={group}: X has {c} channels and W shape {w_shape}; "
                         f"expected W of shape (OC, C/group, ...) with OC divisible by group")
    kernel = w_shape[2:]
    if kernel_shape is not None and len(kernel_shape) and tuple(int(k) for k in kernel_shape) != kernel:
        raise ValueError(f"kernel_shape {list(kernel_shape)} does not match W's shape {w_shape}")
    in_shape = x_shape[2:]
    strides = _spatial_param(strides, n, 1, "strides")
    dilations = _spatial_param(dilations, n, 1, "dilations")
    pb, pe = _auto_pads(auto_pad, in_shape, kernel, strides, dilations, pads)
    out = tuple((i + b + e - ((k - 1) * d + 1)) // s + 1
                for i, k, s, d, b, e in zip(in_shape, kernel, strides, dilations, pb, pe))
    if any(o < 1 for o in out):
        raise ValueError(f"Conv output would be empty: input {in_shape}, kernel {kernel}, "
                         f"dilations {dilations}, pads {pb + pe}")
    return ConvGeometry(c, oc, group, in_shape, kernel, strides, dilations, pb, pe, out)


def conv_transpose_geometry(x_shape, w_shape, auto_pad="NOTSET", dilations=None, group=1,
                            kernel_shape=None, output_padding=None, output_shape=None,
                            pads=None, strides=None) -> ConvGeometry:
    """Resolve an ONNX ``ConvTranspose`` node's attributes (W is (C, OC/group, *kernel)).

    The returned geometry describes the *forward* convolution whose transpose this is:
    ``in_shape`` is the ConvTranspose output, ``out_shape`` its input.
    """
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    n = len(x_shape) - 2
    if n < 1 or len(w_shape) != n + 2:
        raise ValueError(f"ConvTranspose needs X of rank >= 3 and W of the same rank; got {x_shape}, {w_shape}")
    if n > 3:
        raise UnsupportedOpError(f"ConvTranspose with {n} spatial dimensions is not supported (1 to 3 are)")
    group = int(group)
    c = x_shape[1]
    if group < 1 or c % group or w_shape[0] != c:
        raise ValueError(f"ConvTranspose with group={group}: X has {c} channels, W shape {w_shape}")
    oc = w_shape[1] * group
    kernel = w_shape[2:]
    if kernel_shape is not None and len(kernel_shape) and tuple(int(k) for k in kernel_shape) != kernel:
        raise ValueError(f"kernel_shape {list(kernel_shape)} does not match W's shape {w_shape}")
    in_shape = x_shape[2:]
    strides = _spatial_param(strides, n, 1, "strides")
    dilations = _spatial_param(dilations, n, 1, "dilations")
    opad = _spatial_param(output_padding, n, 0, "output_padding")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    full = [s * (i - 1) + op + (k - 1) * d + 1 for i, s, op, k, d in zip(in_shape, strides, opad, kernel, dilations)]
    if output_shape is not None and len(output_shape):
        out = tuple(int(o) for o in output_shape)[-n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = tuple(i * s for i, s in zip(in_shape, strides))
    else:
        out = None
    if out is not None:
        pb, pe = [], []
        for f, o in zip(full, out):
            total = max(0, f - o)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                pb.append(small), pe.append(big)
            else:
                pb.append(big), pe.append(small)
        pb, pe = tuple(pb), tuple(pe)
    else:
        pb, pe = _auto_pads("NOTSET" if auto_pad != "VALID" else "VALID", in_shape, kernel, strides,
                            dilations, pads)
        out = tuple(f - b - e for f, b, e in zip(full, pb, pe))
    if any(o < 1 for o in out):
        raise ValueError(f"ConvTranspose output would be empty: {out}")
    # forward-conv view: input = ConvTranspose output (out), output = ConvTranspose input
    return ConvGeometry(oc, c, group, out, kernel, strides, dilations, pb, pe, in_shape)


# --------------------------------------------------------------------------- 3-D views
def _as5d(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """View (N, C, *spatial) as (N, C, D, H, W), C-contiguous."""
    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[:2] + g._pad3(g.in_shape, 1))


def _params3(g: ConvGeometry):
    return (g._pad3(g.kernel, 1), g._pad3(g.strides, 1), g._pad3(g.dilations, 1),
            g._pad3(g.pads_begin, 0), g._pad3(g.out_shape, 1))


# --------------------------------------------------------------------------- checks, block sizes
def _bias_or_zeros(b, oc: int, dtype) -> np.ndarray:
    if b is None:
        return np.zeros(oc, dtype)
    b = np.ascontiguousarray(b, dtype=dtype).reshape(-1)
    if b.shape[0] != oc:
        raise ValueError(f"bias has {b.shape[0]} entries; expected {oc}")
    return b


def _check_input(x: np.ndarray, geom: ConvGeometry) -> None:
    if x.ndim != geom.n_spatial + 2 or x.shape[1] != geom.in_channels or tuple(x.shape[2:]) != geom.in_shape:
        raise ValueError(f"input of shape {x.shape} does not match the geometry "
                         f"(C={geom.in_channels}, spatial {geom.in_shape})")


_CHUNK_MIN_BYTES, _CHUNK_MAX_BYTES = 1 << 20, 8 << 20
"""Bounds of the per-worker block size: blocks stay near a core's L2 cache, but grow with the
weights (up to twice their size) so that streaming large weights is amortized over more columns."""


def _chunk_bytes(weight_bytes: int) -> int:
    return int(min(_CHUNK_MAX_BYTES, max(_CHUNK_MIN_BYTES, 2 * weight_bytes)))
