"""numba.cuda kernels of the digital ops, so that a network runs on the GPU end to end.

The analog tiles' periphery lives in :mod:`anasim.kernels.cuda`; this module holds what
the rest of the network needs on the device: element-wise maps, broadcasting binary
arithmetic, strided copies (transpose, slice, concat), constant padding, im2col and
its inverse layout change for convolutions, a direct kernel for grouped convolutions,
pooling, row reductions (mean, max, sum) and softmax, the BatchNorm channel affine,
and the small helpers of the analog layers (row ids, NaN counting). :mod:`anasim.ops.cuda`
builds the device ops on top of them.

Every kernel is a 1-D grid-stride loop over its output elements (rows, for the row
reductions and softmax: one thread sums a row in element order) with the launch
geometry of :func:`anasim.kernels.cuda._launch_flat`; shapes and strides of up to
:data:`MAX_RANK` dimensions are passed as tuples (kernel arguments, no host-device
copies). Arithmetic is float32 in the CPU kernels' order; products that meet an
addition go through ``_fmul`` so the compiler cannot fuse them (results then equal
the CPU ops' to the last bit where the CPU op does the same operations; sums of many
terms -- convolutions, pooling averages -- agree to float32 rounding).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .cuda import SIMULATOR, _F0, _F1, _fmul, _launch_flat, _min2, as_device, device_empty

MAX_RANK = 8
"""Largest tensor rank the strided kernels handle (the ONNX models in use stay at 5)."""

# unary op codes
RELU, LEAKY_RELU, CLIP, SIGMOID, TANH, HARD_SIGMOID, HARD_SWISH, SCALE = range(8)
# binary op codes
ADD, SUB, MUL, DIV = range(4)


def pad_tuple(values, fill: int) -> tuple:
    """``values`` left-padded with ``fill`` to :data:`MAX_RANK` int64 entries."""
    values = tuple(int(v) for v in values)
    if len(values) > MAX_RANK:
        raise ValueError(f"rank {len(values)} exceeds the device kernels' maximum of {MAX_RANK}")
    return tuple(np.int64(v) for v in (fill,) * (MAX_RANK - len(values)) + values)


def _flat(n: int):
    return _launch_flat(n)


# ------------------------------------------------------------------------------------
# element-wise


@cuda.jit(cache=not SIMULATOR)
def _unary_kernel(x, out, op, p0, p1):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if op == RELU:
            r = _F0 if v < _F0 else v
        elif op == LEAKY_RELU:
            r = _fmul(v, p0) if v < _F0 else v
        elif op == CLIP:
            r = p0 if v < p0 else v
            r = p1 if r > p1 else r
        elif op == SIGMOID:
            if v >= _F0:
                r = _F1 / (_F1 + math.exp(-v))
            else:
                e = math.exp(v)
                r = e / (_F1 + e)
        elif op == TANH:
            r = math.tanh(v)
        elif op == HARD_SIGMOID or op == HARD_SWISH:
            h = _fmul(p0, v) + p1
            h = _F0 if h < _F0 else (_F1 if h > _F1 else h)
            r = _fmul(v, h) if op == HARD_SWISH else h
        else:  # SCALE
            r = _fmul(v, p0)
        out[i] = r


def unary(x, op: int, p0=0.0, p1=0.0):
    """A new device array ``f(x)`` for the unary op code ``op`` (float32)."""
    out = device_empty(x.shape)
    if x.size:
        blocks, threads = _flat(x.size)
        _unary_kernel[blocks, threads](x.reshape(-1), out.reshape(-1), np.int64(op), np.float32(p0),
                                       np.float32(p1))
    return out


@cuda.jit(device=True)
def _two_offsets(i, shape, a_off, a_str, b_off, b_str):
    """Offsets in two strided views of the element with flat index ``i`` in ``shape``."""
    for d in range(MAX_RANK - 1, -1, -1):
        if shape[d] == 1:  # the padding axes (and real unit ones) cost no division
            continue
        q = i // shape[d]
        j = i - q * shape[d]
        i = q
        a_off += j * a_str[d]
        b_off += j * b_str[d]
    return a_off, b_off


@cuda.jit(device=True)
def _arith(u, v, op):
    if op == ADD:
        return u + v
    if op == SUB:
        return u - v
    if op == MUL:
        return _fmul(u, v)
    return u / v


@cuda.jit(cache=not SIMULATOR)
def _binary_kernel(a, a_off, a_str, b, b_off, b_str, out, shape, op):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ao, bo = _two_offsets(i, shape, a_off, a_str, b_off, b_str)
        out[i] = _arith(a[ao], b[bo], op)


@cuda.jit(cache=not SIMULATOR)
def _binary_same_kernel(a, b, out, op):
    """Both operands of the output's shape (a residual Add): no index arithmetic."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = _arith(a[i], b[i], op)


def broadcast_strides(shape, out_shape) -> tuple:
    """Element strides of a C-contiguous ``shape`` broadcast to ``out_shape`` (0 on broadcast axes)."""
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(0 if d == 1 else acc)
        acc *= d
    strides = strides[::-1]
    return pad_tuple(strides, 0)


def binary(a, b, op: int):
    """``a (op) b`` with NumPy broadcasting; float32 device arrays in, a new one out."""
    out_shape = np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    out = device_empty(out_shape)
    if out.size and tuple(a.shape) == tuple(b.shape):
        blocks, threads = _flat(out.size)
        _binary_same_kernel[blocks, threads](a.reshape(-1), b.reshape(-1), out.reshape(-1), np.int64(op))
    elif out.size:
        blocks, threads = _flat(out.size)
        _binary_kernel[blocks, threads](
            a.reshape(-1), np.int64(0), broadcast_strides(a.shape, out_shape), b.reshape(-1), np.int64(0),
            broadcast_strides(b.shape, out_shape), out.reshape(-1), pad_tuple(out_shape, 1), np.int64(op))
    return out


@cuda.jit(cache=not SIMULATOR)
def _copy_kernel(src, s_off, s_str, dst, d_off, d_str, shape, n):
    """dst[d_off + Σ j_d·d_str_d] = src[s_off + Σ j_d·s_str_d] over the index space ``shape``."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        so, do = _two_offsets(i, shape, s_off, s_str, d_off, d_str)
        dst[do] = src[so]


def contiguous_strides(shape) -> tuple:
    """Element strides of a C-contiguous array of ``shape``."""
    strides, acc = [], 1
    for d in reversed(tuple(shape)):
        strides.append(acc)
        acc *= int(d)
    return tuple(strides[::-1])


def copy_strided(src, src_offset: int, src_strides, shape, dst=None, dst_offset: int = 0, dst_strides=None):
    """Copy the strided view (``src_offset``, ``src_strides``, ``shape``) of the flat ``src``.

    Into a new C-contiguous array of ``shape`` (``dst`` None), or into the strided view
    (``dst_offset``, ``dst_strides``) of ``dst`` (any contiguous device array). Strides
    are in elements and may be 0 or negative.
    """
    shape = tuple(int(s) for s in shape)
    if dst is None:
        dst = device_empty(shape, src.dtype)
        dst_offset, dst_strides = 0, contiguous_strides(shape)
    n = math.prod(shape)
    if n:
        blocks, threads = _flat(n)
        _copy_kernel[blocks, threads](src.reshape(-1), np.int64(src_offset), pad_tuple(src_strides, 0),
                                      dst.reshape(-1), np.int64(dst_offset), pad_tuple(dst_strides, 0),
                                      pad_tuple(shape, 1), np.int64(n))
    return dst


def to_float32(x):
    """A float32 copy of a float64 device array (the copy kernel converts on assignment)."""
    shape = tuple(x.shape)
    strides = contiguous_strides(shape)
    return copy_strided(x, 0, strides, shape, device_empty(shape, np.float32), 0, strides)


@cuda.jit(cache=not SIMULATOR)
def _pad_kernel(x, x_shape, begin, out, out_shape, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        rem = i
        xo = 0
        mult = 1
        inside = True
        for d in range(MAX_RANK - 1, -1, -1):
            q = rem // out_shape[d]
            j = rem - q * out_shape[d] - begin[d]
            rem = q
            if j < 0 or j >= x_shape[d]:
                inside = False
            xo += j * mult
            mult *= x_shape[d]
        out[i] = x[xo] if inside else value


def pad_constant(x, begin, end, value):
    """``x`` padded with ``value``: ``begin[d]`` / ``end[d]`` (>= 0) elements on axis d."""
    out_shape = tuple(int(b) + int(d) + int(e) for b, d, e in zip(begin, x.shape, end))
    out = device_empty(out_shape, x.dtype)
    if out.size:
        blocks, threads = _flat(out.size)
        _pad_kernel[blocks, threads](x.reshape(-1), pad_tuple(x.shape, 1), pad_tuple(begin, 0), out.reshape(-1),
                                     pad_tuple(out_shape, 1), x.dtype.type(value))
    return out


# ------------------------------------------------------------------------------------
# convolution layout


@cuda.jit(cache=not SIMULATOR)
def _im2col_kernel(x, out, r0, c0, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, od, oh, ow):
    """out[r, (c, a, b, e)] = x[n, c0+c, i·sd-pd+a·dd, j·sh-ph+b·dh, k·sw-pw+e·dw] (0 outside),
    for the output pixel (n, i, j, k) of global row r0 + r."""
    rows, kg = out.shape
    d_, h_, w_ = x.shape[2], x.shape[3], x.shape[4]
    kk = kd * kh * kw
    khw = kh * kw
    ohw = oh * ow
    p_ = od * ohw
    for t in range(cuda.grid(1), rows * kg, cuda.gridsize(1)):
        r = t // kg
        col = t - r * kg
        g = r0 + r
        n = g // p_
        p = g - n * p_
        i = p // ohw
        p -= i * ohw
        j = p // ow
        k = p - j * ow
        c = col // kk
        q = col - c * kk
        a = q // khw
        q -= a * khw
        b = q // kw
        e = q - b * kw
        z = i * sd - pd + a * dd
        y = j * sh - ph + b * dh
        xx = k * sw - pw + e * dw
        if 0 <= z < d_ and 0 <= y < h_ and 0 <= xx < w_:
            out[r, col] = x[n, c0 + c, z, y, xx]
        else:
            out[r, col] = 0


def im2col(x5, params, r0: int, r1: int, c0: int, cg: int):
    """Rows ``r0:r1`` of the im2col matrix of channels ``c0:c0+cg`` of ``x5`` (N, C, D, H, W).

    ``params`` is ``(kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, od, oh, ow)``; the
    columns are in (channel, kd, kh, kw) order, as :func:`anasim.ops.im2col.im2col`.
    """
    kk = params[0] * params[1] * params[2]
    out = device_empty((r1 - r0, cg * kk), x5.dtype)
    if out.size:
        blocks, threads = _flat(out.size)
        _im2col_kernel[blocks, threads](x5, out, np.int64(r0), np.int64(c0), *(np.int64(v) for v in params))
    return out


@cuda.jit(cache=not SIMULATOR)
def _rows_to_nchw_kernel(y, out, r0, oc0, bias, has_bias):
    """out[n, oc0+o, p] = y[r, o] (+ bias[oc0+o]) for global row r0 + r = n·P + p."""
    rows, ocg = y.shape
    p_ = out.shape[2]
    for t in range(cuda.grid(1), rows * ocg, cuda.gridsize(1)):
        o = t // rows
        r = t - o * rows
        g = r0 + r
        n = g // p_
        v = y[r, o]
        if has_bias:
            v = v + bias[oc0 + o]
        out[n, oc0 + o, g - n * p_] = v


def rows_to_nchw(y, out, r0: int, oc0: int, bias=None) -> None:
    """Write the (rows, OCg) product of im2col rows ``r0:`` into channels ``oc0:`` of ``out`` (N, OC, P)."""
    if y.size:
        blocks, threads = _flat(y.size)
        _rows_to_nchw_kernel[blocks, threads](y, out, np.int64(r0), np.int64(oc0),
                                              device_empty(0) if bias is None else bias, bias is not None)


@cuda.jit(device=True)
def _unravel5(t, c_, od, oh, ow):
    """(n, c, i, j, k) of the flat index ``t`` of a C-contiguous (N, C, OD, OH, OW) array."""
    k = t % ow
    t //= ow
    j = t % oh
    t //= oh
    i = t % od
    t //= od
    return t // c_, t % c_, i, j, k


@cuda.jit(cache=not SIMULATOR)
def _conv_direct_kernel(x, w, bias, has_bias, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    """Grouped convolution, one thread per output element: x (N,C,D,H,W), w (OC,Cg,KD,KH,KW)."""
    n_, oc_, od, oh, ow = out.shape
    d_, h_, w_ = x.shape[2], x.shape[3], x.shape[4]
    cg = w.shape[1]
    groups = x.shape[1] // cg
    ocg = oc_ // groups
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, oc, i, j, k = _unravel5(t, oc_, od, oh, ow)
        c0 = (oc // ocg) * cg
        acc = _F0
        for c in range(cg):
            for a in range(kd):
                z = i * sd - pd + a * dd
                if z < 0 or z >= d_:
                    continue
                for b in range(kh):
                    y = j * sh - ph + b * dh
                    if y < 0 or y >= h_:
                        continue
                    for e in range(kw):
                        xx = k * sw - pw + e * dw
                        if 0 <= xx < w_:
                            acc += _fmul(x[n, c0 + c, z, y, xx], w[oc, c, a, b, e])
        if has_bias:
            acc += bias[oc]
        out[n, oc, i, j, k] = acc


def conv_direct(x5, w5, bias, params, out5) -> None:
    """``out5`` (N, OC, OD, OH, OW) = the grouped convolution of ``x5`` with ``w5`` (+ bias)."""
    if out5.size:
        blocks, threads = _flat(out5.size)
        _conv_direct_kernel[blocks, threads](x5, w5, device_empty(0) if bias is None else bias, bias is not None,
                                             out5, *(np.int64(v) for v in params[:12]))


# ------------------------------------------------------------------------------------
# pooling and normalization


@cuda.jit(cache=not SIMULATOR)
def _pool_kernel(x, out, is_max, include_pad, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, ed, eh, ew):
    """Max or average pooling, one thread per output element (the CPU kernels' loop order)."""
    n_, c_, od, oh, ow = out.shape
    d_, h_, w_ = x.shape[2], x.shape[3], x.shape[4]
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, i, j, k = _unravel5(t, c_, od, oh, ow)
        z0 = i * sd - pd
        y0 = j * sh - ph
        x0 = k * sw - pw
        best = -np.inf
        found = False
        acc = _F0
        cnt = 0
        for a in range(kd):
            z = z0 + a * dd
            if z < 0 or z >= d_:
                continue
            for b in range(kh):
                y = y0 + b * dh
                if y < 0 or y >= h_:
                    continue
                for e in range(kw):
                    xx = x0 + e * dw
                    if 0 <= xx < w_:
                        v = x[n, c, z, y, xx]
                        if v > best or not found:
                            best = v
                            found = True
                        acc += v
                        cnt += 1
        if is_max:
            out[n, c, i, j, k] = best
        elif cnt == 0:
            out[n, c, i, j, k] = 0
        elif include_pad:
            cz = 1 + (_min2(z0 + kd * dd, d_ + ed) - z0 - 1) // dd
            cy = 1 + (_min2(y0 + kh * dh, h_ + eh) - y0 - 1) // dh
            cx = 1 + (_min2(x0 + kw * dw, w_ + ew) - x0 - 1) // dw
            out[n, c, i, j, k] = acc / (cz * cy * cx)
        else:
            out[n, c, i, j, k] = acc / cnt


def pool(x5, out5, is_max: bool, include_pad: bool, params) -> None:
    """Max / average pooling of ``x5`` into ``out5``; ``params`` as :func:`anasim.ops.pool._p3`."""
    if out5.size:
        blocks, threads = _flat(out5.size)
        _pool_kernel[blocks, threads](x5, out5, bool(is_max), bool(include_pad), *(np.int64(v) for v in params))


MEAN, MAX, SUM = range(3)  # plane_reduce modes


@cuda.jit(cache=not SIMULATOR)
def _plane_reduce_kernel(x, out, mode):
    """out[r] = mean, max (NaN if any) or sum of row r of x (planes × pixels), in element order."""
    rows, cols = x.shape
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        acc = _F0
        best = x[r, 0]
        for c in range(cols):
            v = x[r, c]
            acc += v
            if v > best or v != v:  # NaN propagates, as np.max does
                best = v
        if mode == MAX:
            out[r] = best
        elif mode == SUM:
            out[r] = acc
        else:
            out[r] = acc / cols


def plane_reduce(x2, mode: int):
    """Mean, max or sum (``mode``: MEAN, MAX, SUM) over axis 1 of the (planes, pixels) device array ``x2``."""
    out = device_empty(x2.shape[0], x2.dtype)
    if out.size and x2.shape[1]:
        blocks, threads = _flat(out.size)
        _plane_reduce_kernel[blocks, threads](x2, out, np.int64(mode))
    return out


@cuda.jit(cache=not SIMULATOR)
def _softmax_kernel(x, out, log):
    """Softmax (or log-softmax) of every row: the CPU op's max shift, exp, sum, divide."""
    rows, cols = x.shape
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        m = x[r, 0]
        for c in range(cols):
            if x[r, c] > m or x[r, c] != x[r, c]:
                m = x[r, c]
        acc = _F0
        for c in range(cols):
            e = math.exp(x[r, c] - m)
            out[r, c] = e
            acc += e
        if log:
            lg = math.log(acc)
            for c in range(cols):
                out[r, c] = (x[r, c] - m) - lg
        else:
            for c in range(cols):
                out[r, c] = out[r, c] / acc


def softmax_rows(x2, log: bool):
    """Softmax (``log``: log-softmax) along axis 1 of a (rows, classes) float32 device array."""
    out = device_empty(x2.shape, x2.dtype)
    if out.size:
        blocks, threads = _flat(x2.shape[0])
        _softmax_kernel[blocks, threads](x2, out, bool(log))
    return out


@cuda.jit(cache=not SIMULATOR)
def _bn_coefficients_kernel(scale, bias, mean, var, eps, a, b):
    """a = scale / sqrt(var + eps); b = bias - mean·a (the CPU op's float32 order)."""
    for c in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        ac = scale[c] / math.sqrt(var[c] + eps)
        a[c] = ac
        b[c] = bias[c] - _fmul(mean[c], ac)


@cuda.jit(cache=not SIMULATOR)
def _channel_affine_kernel(x, a, b, out, inner):
    c_ = a.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ch = (i // inner) % c_
        out[i] = _fmul(x[i], a[ch]) + b[ch]


def batch_norm(x, scale, bias, mean, var, eps):
    """Inference BatchNorm of ``x`` (N, C, ...) with per-channel (C,) device parameters."""
    c = x.shape[1]
    a, b = device_empty(c, x.dtype), device_empty(c, x.dtype)
    if c:
        blocks, threads = _flat(c)
        _bn_coefficients_kernel[blocks, threads](scale, bias, mean, var, x.dtype.type(eps), a, b)
    out = device_empty(x.shape, x.dtype)
    if x.size:
        inner = x.size // (x.shape[0] * c)
        blocks, threads = _flat(x.size)
        _channel_affine_kernel[blocks, threads](x.reshape(-1), a, b, out.reshape(-1), np.int64(inner))
    return out


# ------------------------------------------------------------------------------------
# helpers of the analog layers


@cuda.jit(cache=not SIMULATOR)
def _arange_kernel(out, start):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = start + i


def arange(start: int, n: int):
    """int64 device array ``start, start+1, ..., start+n-1`` (row ids made on the device)."""
    out = device_empty(n, np.int64)
    if n:
        blocks, threads = _flat(n)
        _arange_kernel[blocks, threads](out, np.int64(start))
    return out


@cuda.jit(cache=not SIMULATOR)
def _gather1_kernel(src, idx, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = src[idx[i]]


def gather1(src, idx):
    """``src[idx]`` for 1-D device arrays."""
    out = device_empty(idx.shape[0], src.dtype)
    if out.size:
        blocks, threads = _flat(out.size)
        _gather1_kernel[blocks, threads](src, idx, out)
    return out


@cuda.jit(cache=not SIMULATOR)
def _count_nonfinite_kernel(x, count):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if not (v - v == 0):  # NaN or ±inf
            cuda.atomic.add(count, 0, 1)


def count_nonfinite(x) -> int:
    """Number of NaN / infinite entries of a float device array (one int crosses the bus)."""
    if x.size == 0:
        return 0
    count = as_device(np.zeros(1, np.int64), np.int64)
    blocks, threads = _flat(x.size)
    _count_nonfinite_kernel[blocks, threads](x.reshape(-1), count)
    return int(count.copy_to_host()[0])
