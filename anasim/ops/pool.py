"""Pooling geometry and Numba kernels for MaxPool / AveragePool.

1-D and 2-D pooling run through the same 3-D kernels with unit leading spatial axes.
Output shapes, ``auto_pad`` and the ``count_include_pad`` divisor follow onnxruntime's
CPU implementation (which the ONNX reference evaluator also follows), including its
legacy SAME padding (computed from the undilated kernel) and the rule that, in
``ceil_mode``, a window starting in the end padding is dropped.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import UnsupportedOpError
from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _spatial_param

__all__ = ["pool_geometry", "max_pool", "average_pool"]


def pool_geometry(x_shape, kernel_shape, auto_pad="NOTSET", ceil_mode=0, dilations=None,
                  pads=None, strides=None) -> ConvGeometry:
    """Resolve a MaxPool / AveragePool node's attributes for input ``x_shape`` (N, C, *spatial).

    Returns a :class:`~anasim.ops.conv_geometry.ConvGeometry` with ``group == in_channels ==
    out_channels == C``.
    """
    x_shape = tuple(int(s) for s in x_shape)
    n = len(x_shape) - 2
    if n < 1:
        raise ValueError(f"pooling needs an input of rank >= 3; got shape {x_shape}")
    if n > 3:
        raise UnsupportedOpError(f"pooling over {n} spatial dimensions is not supported (1 to 3 are)")
    if kernel_shape is None or len(kernel_shape) != n:
        raise ValueError(f"kernel_shape must have {n} entries; got {kernel_shape}")
    kernel = tuple(int(k) for k in kernel_shape)
    in_shape = x_shape[2:]
    strides = _spatial_param(strides, n, 1, "strides")
    dilations = _spatial_param(dilations, n, 1, "dilations")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    pb, pe, out = [], [], []
    for ax, (i, k, s, d) in enumerate(zip(in_shape, kernel, strides, dilations)):
        if auto_pad in ("NOTSET", ""):
            if pads is not None and len(pads):
                if len(pads) != 2 * n:
                    raise ValueError(f"pads has {len(pads)} entries; expected {2 * n}")
                b, e = int(pads[ax]), int(pads[ax + n])
            else:
                b = e = 0
        elif auto_pad == "VALID":
            b = e = 0
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (-(-i // s) - 1) * s + k - i)  # legacy: undilated kernel
            b = total // 2 if auto_pad == "SAME_UPPER" else (total + 1) // 2
            e = total - b
        else:
            raise ValueError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER; got {auto_pad!r}")
        span = i + b + e - d * (k - 1) - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= i + b:
            o -= 1  # the last window would start in the end padding
        if o < 1:
            raise ValueError(f"pooling output would be empty: input {in_shape}, kernel {kernel}")
        pb.append(b), pe.append(e), out.append(o)
    c = x_shape[1]
    return ConvGeometry(c, c, c, in_shape, kernel, strides, dilations, tuple(pb), tuple(pe), tuple(out))


def _p3(g: ConvGeometry):
    pad = g._pad3
    return (pad(g.kernel, 1) + pad(g.strides, 1) + pad(g.dilations, 1) + pad(g.pads_begin, 0)
            + pad(g.pads_end, 0))


@njit(nogil=True, cache=True)
def _max_pool_kernel(x, out, idx, want_idx, col_major, nc0, nc1, kd, kh, kw, sd, sh, sw, dd, dh, dw,
                     pd, ph, pw, ed, eh, ew):
    """Planes nc0 <= n*C + c < nc1."""
    n_, c_, d_, h_, w_ = x.shape
    od, oh, ow = out.shape[2], out.shape[3], out.shape[4]
    for nc in range(nc0, nc1):
        n = nc // c_
        c = nc - n * c_
        src = x[n, c]
        base = nc * d_ * h_ * w_
        for i in range(od):
            for j in range(oh):
                for k in range(ow):
                    best = np.float32(-np.inf)
                    bi = -1
                    for a in range(kd):
                        z = i * sd - pd + a * dd
                        if z < 0 or z >= d_:
                            continue
                        for b in range(kh):
                            y = j * sh - ph + b * dh
                            if y < 0 or y >= h_:
                                continue
                            row = src[z, y]
                            for e in range(kw):
                                xx = k * sw - pw + e * dw
                                if xx >= 0 and xx < w_:
                                    v = row[xx]
                                    if v > best or bi < 0:
                                        best = v
                                        bi = (z * h_ + y) * w_ + xx if col_major == 0 else z + (y + xx * h_) * d_
                    out[n, c, i, j, k] = best
                    if want_idx:
                        idx[n, c, i, j, k] = base + bi


@njit(nogil=True, cache=True)
def _avg_pool_kernel(x, out, include_pad, nc0, nc1, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, ed, eh, ew):
    """Planes nc0 <= n*C + c < nc1."""
    n_, c_, d_, h_, w_ = x.shape
    od, oh, ow = out.shape[2], out.shape[3], out.shape[4]
    for nc in range(nc0, nc1):
        n = nc // c_
        c = nc - n * c_
        src = x[n, c]
        for i in range(od):
            z0 = i * sd - pd
            cz = 1 + (min(z0 + kd * dd, d_ + ed) - z0 - 1) // dd
            for j in range(oh):
                y0 = j * sh - ph
                cy = 1 + (min(y0 + kh * dh, h_ + eh) - y0 - 1) // dh
                for k in range(ow):
                    x0 = k * sw - pw
                    cx = 1 + (min(x0 + kw * dw, w_ + ew) - x0 - 1) // dw
                    acc = np.float32(0.0)  # widens to float64 for float64 inputs
                    cnt = 0
                    for a in range(kd):
                        z = z0 + a * dd
                        if z < 0 or z >= d_:
                            continue
                        for b in range(kh):
                            y = y0 + b * dh
                            if y < 0 or y >= h_:
                                continue
                            row = src[z, y]
                            for e in range(kw):
                                xx = x0 + e * dw
                                if xx >= 0 and xx < w_:
                                    acc += row[xx]
                                    cnt += 1
                    if cnt == 0:
                        out[n, c, i, j, k] = 0
                    elif include_pad:
                        out[n, c, i, j, k] = acc / (cz * cy * cx)
                    else:
                        out[n, c, i, j, k] = acc / cnt


def _as5d(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[:2] + g._pad3(g.in_shape, 1))


def _over_planes(x5: np.ndarray, fn) -> None:
    """Call ``fn(first, last)`` over blocks of the N*C planes on the worker threads."""
    planes = x5.shape[0] * x5.shape[1]
    per = max(1, (1 << 16) // max(1, x5[0, 0].size))  # ~256 KiB of input per block
    run_chunks(-(-planes // per), lambda: None, lambda _s, i: fn(i * per, min(planes, (i + 1) * per)))


def max_pool(x: np.ndarray, geom: ConvGeometry, *, indices: bool = False, storage_order: int = 0):
    """Max pooling; returns ``y`` or ``(y, indices)`` (int64 flat indices into ``x``)."""
    x5 = _as5d(x, geom)
    n = x.shape[0]
    shape5 = (n, geom.in_channels) + geom._pad3(geom.out_shape, 1)
    out = np.empty(shape5, dtype=x.dtype)
    idx = np.empty(shape5 if indices else (0, 0, 0, 0, 0), dtype=np.int64)
    p3 = _p3(geom)
    _over_planes(x5, lambda a, b: _max_pool_kernel(x5, out, idx, indices, int(storage_order), a, b, *p3))
    shape = (n, geom.in_channels) + geom.out_shape
    return (out.reshape(shape), idx.reshape(shape)) if indices else out.reshape(shape)


def average_pool(x: np.ndarray, geom: ConvGeometry, *, count_include_pad: int = 0) -> np.ndarray:
    """Average pooling (padding excluded from the divisor unless ``count_include_pad``)."""
    x5 = _as5d(x, geom)
    n = x.shape[0]
    out = np.empty((n, geom.in_channels) + geom._pad3(geom.out_shape, 1), dtype=x.dtype)
    p3 = _p3(geom)
    _over_planes(x5, lambda a, b: _avg_pool_kernel(x5, out, bool(count_include_pad), a, b, *p3))
    return out.reshape((n, geom.in_channels) + geom.out_shape)
