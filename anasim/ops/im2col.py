"""im2col, col2im and the row kernels of the convolutions (NumPy + Numba).

* :func:`im2col` turns an input batch into the matrix whose rows are the input vectors of
  the layer: shape ``(N*P, C*kk)`` with ``P`` output pixels per sample, rows in
  ``(n, od, oh, ow)`` order and columns in ``(c, kd, kh, kw)`` order, so that
  ``im2col(x, g) @ W.reshape(OC, -1).T`` is the (ungrouped) convolution. For a grouped
  convolution, group ``k`` uses the contiguous column block
  ``[k*K_g, (k+1)*K_g)`` with ``K_g = C/group * kk`` (``geom.k_per_group``).
* :func:`cols_to_output` turns the ``(N*P, OC)`` product back into ``(N, OC, *out_shape)``.
* The row-block form, for worker threads that each take a block of rows (the analog
  layers): :func:`padded_input`, then :func:`im2col_rows` per block and
  :func:`rows_to_nchw` for its product (serial, GIL-free kernels).
* ``_im2col_t`` (per-sample transposed im2col, the 3-D ideal convolution),
  ``_col2im_kernel`` (the scatter-add of ``ConvTranspose``) and ``_add_bias_inplace``.

Numba note (the CPU kernels' indexing, here and in :mod:`anasim.ops.depthwise`,
:mod:`anasim.ops.thin`, :mod:`anasim.kernels.cpu_conv`): a signed index like ``base + i``
makes Numba emit a negative-index wrap-around check that keeps LLVM from vectorizing the
loop (about 4× slower), so loops index either a view sliced before the loop by the bare
loop variable, or a flat array by an unsigned (``np.uint64``) index, which has no such
check. Inside loops with branches or many short trips (per output row, run or tap) only the
second: every view made there costs two reference-count calls, which measured as much as
the work on a row of 8-32 pixels (the analog gather + DAC of ResNet-20: -20 % without them).
All kernels keep the input's float dtype (float32 in practice).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..errors import UnsupportedOpError
from .conv_geometry import ConvGeometry, _as5d, _bias_or_zeros, _check_input, _params3

__all__ = ["im2col", "cols_to_output", "padded_input", "im2col_rows", "rows_to_nchw"]


# --------------------------------------------------------------------------- kernels
@njit(cache=True, inline="always")
def _valid_range(o_n, s, p, off, size):
    """Output indices o in [lo, hi) for which 0 <= o*s - p + off < size."""
    start = p - off  # o*s >= start
    lo = 0 if start <= 0 else (start + s - 1) // s
    hi_num = size - 1 + p - off  # o*s <= hi_num
    hi = 0 if hi_num < 0 else hi_num // s + 1
    if hi > o_n:
        hi = o_n
    if lo > hi:
        lo = hi
    return lo, hi


@njit(parallel=True, cache=True)
def _im2col_t_kernel(x, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    """out[n, (c, a, b, e), (i, j, k)] = x[n, c, i*sd-pd+a*dd, j*sh-ph+b*dh, k*sw-pw+e*dw] (0 outside)."""
    n_, c_, d_, h_, w_ = x.shape
    od, oh, ow = out.shape[2], out.shape[3], out.shape[4]
    kk = kd * kh * kw
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc - n * c_
        for a in range(kd):
            i_lo, i_hi = _valid_range(od, sd, pd, a * dd, d_)
            for b in range(kh):
                j_lo, j_hi = _valid_range(oh, sh, ph, b * dh, h_)
                for e in range(kw):
                    k_lo, k_hi = _valid_range(ow, sw, pw, e * dw, w_)
                    row = c * kk + (a * kh + b) * kw + e
                    dst = out[n, row]
                    for i in range(od):
                        for j in range(oh):
                            if i < i_lo or i >= i_hi or j < j_lo or j >= j_hi:
                                for k in range(ow):
                                    dst[i, j, k] = 0
                                continue
                            src = x[n, c, i * sd - pd + a * dd, j * sh - ph + b * dh]
                            for k in range(k_lo):
                                dst[i, j, k] = 0
                            x0 = -pw + e * dw
                            if sw == 1:
                                for k in range(k_lo, k_hi):
                                    dst[i, j, k] = src[k + x0]
                            else:
                                for k in range(k_lo, k_hi):
                                    dst[i, j, k] = src[k * sw + x0]
                            for k in range(k_hi, ow):
                                dst[i, j, k] = 0


@njit(parallel=True, cache=True)
def _im2col_kernel(x, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, od, oh, ow):
    """out[(n, i, j, k), (c, a, b, e)] = x[n, c, i*sd-pd+a*dd, j*sh-ph+b*dh, k*sw-pw+e*dw]."""
    n_, c_, d_, h_, w_ = x.shape
    kk = kd * kh * kw
    for nij in prange(n_ * od * oh):
        n = nij // (od * oh)
        ij = nij - n * (od * oh)
        i = ij // oh
        j = ij - i * oh
        r0 = nij * ow
        for k in range(ow):
            row = out[r0 + k]
            for c in range(c_):
                for a in range(kd):
                    zi = i * sd - pd + a * dd
                    for b in range(kh):
                        yi = j * sh - ph + b * dh
                        inside = 0 <= zi < d_ and 0 <= yi < h_
                        col = c * kk + (a * kh + b) * kw
                        for e in range(kw):
                            xi = k * sw - pw + e * dw
                            if inside and 0 <= xi < w_:
                                row[col + e] = x[n, c, zi, yi, xi]
                            else:
                                row[col + e] = 0


@njit(parallel=True, cache=True)
def _nhwc_to_nchw_bias(y, b, out):
    """out[n, o, p] = y[n*P + p, o] + b[o]."""
    n_, o_, p_ = out.shape
    for no in prange(n_ * o_):
        n = no // o_
        o = no - n * o_
        bias = b[o]
        dst = out[n, o]
        base = n * p_
        for p in range(p_):
            dst[p] = y[base + p, o] + bias


@njit(parallel=True, cache=True)
def _add_bias_inplace(y, b):
    """y[n, o, :] += b[o] for y of shape (N, OC, P)."""
    n_, o_, p_ = y.shape
    for no in prange(n_ * o_):
        n = no // o_
        o = no - n * o_
        bias = b[o]
        dst = y[n, o]
        for p in range(p_):
            dst[p] += bias


@njit(parallel=True, cache=True)
def _col2im_kernel(cols, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    """Scatter-add for ConvTranspose: out[n, o, i*sd-pd+a*dd, ...] += cols[n, (o,a,b,e), (i,j,k)]."""
    n_, o_, d_, h_, w_ = out.shape
    idd, ih, iw = cols.shape[2], cols.shape[3], cols.shape[4]
    kk = kd * kh * kw
    for no in prange(n_ * o_):
        n = no // o_
        o = no - n * o_
        dst = out[n, o]
        for a in range(kd):
            i_lo, i_hi = _valid_range(idd, sd, pd, a * dd, d_)
            for b in range(kh):
                j_lo, j_hi = _valid_range(ih, sh, ph, b * dh, h_)
                for e in range(kw):
                    k_lo, k_hi = _valid_range(iw, sw, pw, e * dw, w_)
                    src = cols[n, o * kk + (a * kh + b) * kw + e]
                    x0 = -pw + e * dw
                    for i in range(i_lo, i_hi):
                        for j in range(j_lo, j_hi):
                            row = dst[i * sd - pd + a * dd, j * sh - ph + b * dh]
                            s = src[i, j]
                            for k in range(k_lo, k_hi):
                                row[k * sw + x0] += s[k]


@njit(nogil=True, cache=True)
def _im2col_rows_kernel(xp, out, r0, r1, kh, kw, sh, sw, dh, dw, oh, ow):
    """Rows r0..r1 of the im2col matrix of a zero-padded 2-D input, into ``out[0:r1-r0]``.

    ``xp`` is (N, C, Hp, Wp) with the padding already in place; row ``r`` is output
    pixel ``(n, i, k)`` = ``(r // P, (r % P) // ow, r % ow)``, columns (c, b, e); only
    the first ``C*kh*kw`` columns of ``out`` are written. No bounds tests: every tap of
    a padded input is inside it. Each row is written front to back from ``C*kh`` input
    rows (flat indices: no slicing per tap; 3-wide taps unrolled).
    """
    c_, hp, wp = xp.shape[1], xp.shape[2], xp.shape[3]
    kx = out.shape[1]
    xf = xp.reshape(-1)
    of = out.reshape(-1)
    p_ = oh * ow
    r = r0
    while r < r1:
        n = r // p_
        q = r - n * p_
        i = q // ow
        k0 = q - i * ow
        cnt = min(ow - k0, r1 - r)  # pixels of this output row in the block
        obase = (r - r0) * kx
        sbase = (n * c_ * hp + i * sh) * wp + k0 * sw
        for k in range(cnt):
            o = obase + k * kx
            for c in range(c_):
                for b in range(kh):
                    s = sbase + (c * hp + b * dh) * wp + k * sw
                    if kw == 3 and dw == 1:
                        of[o] = xf[s]
                        of[o + 1] = xf[s + 1]
                        of[o + 2] = xf[s + 2]
                    else:
                        for e in range(kw):
                            of[o + e] = xf[s + e * dw]
                    o += kw
        r += cnt


@njit(nogil=True, cache=True)
def _rows_to_nchw_kernel(y, b, out, r0):
    """out[n, o, p] = y[r - r0, o] + b[o] for the rows r = n*P + p in r0 .. r0 + len(y)."""
    m, o_ = y.shape
    p_ = out.shape[2]
    r = r0
    r1 = r0 + m
    while r < r1:
        n = r // p_
        p0 = r - n * p_
        p1 = min(p_, p0 + (r1 - r))
        blk = y[r - r0:r - r0 + p1 - p0]
        for o in range(o_):
            bias = b[o]
            dst = out[n, o, p0:p1]
            for p in range(p1 - p0):
                dst[p] = blk[p, o] + bias
        r += p1 - p0


def padded_input(x: np.ndarray, geom: ConvGeometry) -> tuple[np.ndarray, tuple]:
    """The input as (N, C, Hp, Wp) with its zero padding in place, and the 2-D parameters.

    For :func:`im2col_rows`; 1-D convolutions become 2-D ones with a unit row axis. The
    parameters are ``(kh, kw, sh, sw, dh, dw, oh, ow)``. Padding that no tap reaches is
    not allocated.
    """
    _check_input(x, geom)
    if geom.n_spatial > 2:
        raise UnsupportedOpError("padded_input supports 1-D and 2-D convolutions")
    n, c = x.shape[:2]
    if geom.n_spatial == 1:
        x = x.reshape(n, c, 1, x.shape[2])
        (h, wd), (kh, kw), (sh, sw), (dh, dw) = (1, geom.in_shape[0]), (1, geom.kernel[0]), (1, geom.strides[0]), (1, geom.dilations[0])
        (ph, pw), (oh, ow) = (0, geom.pads_begin[0]), (1, geom.out_shape[0])
    else:
        (h, wd), (kh, kw), (sh, sw), (dh, dw) = geom.in_shape, geom.kernel, geom.strides, geom.dilations
        (ph, pw), (oh, ow) = geom.pads_begin, geom.out_shape
    hp = max(h + ph, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pw, (ow - 1) * sw + (kw - 1) * dw + 1)
    if (hp, wp) == (h, wd) and not (ph or pw):
        xp = np.ascontiguousarray(x)
    else:
        xp = np.zeros((n, c, hp, wp), x.dtype)
        hh, ww = min(h, hp - ph), min(wd, wp - pw)  # rows/columns past every tap are dropped
        xp[:, :, ph:ph + hh, pw:pw + ww] = x[:, :, :hh, :ww]
    return xp, (kh, kw, sh, sw, dh, dw, oh, ow)


def im2col_rows(xp: np.ndarray, params: tuple, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
    """Rows ``r0 .. r1`` of :func:`im2col` from :func:`padded_input`'s result, into ``out``.

    ``out`` is a C-contiguous (>= r1 - r0, >= C*kk) array; its first ``C*kk`` columns
    of rows ``0 .. r1 - r0`` are written (the same values as :func:`im2col`). Single
    threaded and GIL-free, for worker threads that each take a block of rows.
    """
    _im2col_rows_kernel(xp, out, r0, r1, *params)
    return out[:r1 - r0]


def rows_to_nchw(y: np.ndarray, bias: np.ndarray, out: np.ndarray, r0: int) -> None:
    """Write the product rows ``r0 .. r0 + len(y)`` (rows (n, p), columns OC) plus ``bias``
    into ``out`` (N, OC, P): the row-block form of :func:`cols_to_output` (serial, GIL-free)."""
    _rows_to_nchw_kernel(y, bias, out, r0)


# --------------------------------------------------------------------------- public API
def im2col(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The input vectors of a convolution, one row per output pixel.

    Parameters
    ----------
    x : array (N, C, *in_shape)
        Input batch (float; the dtype is kept).
    geom : ConvGeometry
        From :func:`~anasim.ops.conv_geometry.conv_geometry`.

    Returns
    -------
    cols : C-contiguous array (N*P, C*kk)
        Row ``(n*OD + od)*OH*OW + oh*OW + ow`` (i.e. (n, od, oh, ow) order) holds the
        input patch of that output pixel, columns in (c, kd, kh, kw) order; positions in
        the padding are zero. ``cols @ W.reshape(OC, -1).T`` is the convolution for
        ``group == 1``; group ``g`` uses columns ``[g*K_g, (g+1)*K_g)``.
    """
    _check_input(x, geom)
    x5 = _as5d(x, geom)
    (kd, kh, kw), (sd, sh, sw), (dd, dh, dw), (pd, ph, pw), (od, oh, ow) = _params3(geom)
    out = np.empty((x.shape[0] * geom.n_pixels, geom.k), dtype=x.dtype)
    _im2col_kernel(x5, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, od, oh, ow)
    return out


def cols_to_output(y: np.ndarray, n: int, geom: ConvGeometry, bias: np.ndarray | None = None) -> np.ndarray:
    """Reorder the ``(N*P, OC)`` product of :func:`im2col` rows into ``(N, OC, *out_shape)``.

    ``bias`` (OC,), if given, is added on the way (no extra pass).
    """
    y = np.ascontiguousarray(y)
    if y.shape != (n * geom.n_pixels, geom.out_channels):
        raise ValueError(f"y has shape {y.shape}; expected {(n * geom.n_pixels, geom.out_channels)}")
    out = np.empty((n, geom.out_channels, geom.n_pixels), dtype=y.dtype)
    b = _bias_or_zeros(bias, geom.out_channels, y.dtype)
    _nhwc_to_nchw_bias(y, b, out)
    return out.reshape((n, geom.out_channels) + geom.out_shape)


def _im2col_t(x5: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Per-sample transposed im2col: (N, C*kk, P) with rows in (c, kd, kh, kw) order."""
    (kd, kh, kw), (sd, sh, sw), (dd, dh, dw), (pd, ph, pw), (od, oh, ow) = _params3(geom)
    out = np.empty((x5.shape[0], geom.k, od, oh, ow), dtype=x5.dtype)
    _im2col_t_kernel(x5, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw)
    return out.reshape(x5.shape[0], geom.k, od * oh * ow)
