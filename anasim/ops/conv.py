"""The ideal convolutions: dispatch to the kernels, im2col + GEMM, ConvTranspose.

:func:`conv` is the ideal (float) ``Conv``; it does not go through
:func:`~anasim.ops.im2col.im2col`: depthwise 1-D/2-D convolutions use a direct kernel
(:mod:`anasim.ops.depthwise`), float32 3×3 stride-1 ones with 1–4 input channels direct sums
(:mod:`anasim.ops.thin`), float32 ones with enough output pixels per sample sums of
shifted products (:mod:`anasim.ops.shifted`, no im2col matrix), 3×3 stride-1 ones with
at least 32 channels Winograd F(4×4, 3×3) (:mod:`anasim.ops.winograd_f4`), and with 16–31
channels on small maps Winograd F(2×2, 3×3) (:mod:`anasim.ops.winograd`), other 1-D/2-D ones a
cache-blocked transposed im2col (rows
(c, kh, kw), columns = pixels) so that ``[W | b] @ cols`` lands directly in NCHW order
(:func:`_conv2d_gemm`), 3-D ones a plain im2col + stacked product.
:func:`conv_transpose` is the ideal ``ConvTranspose``; :func:`warmup` compiles the kernels.

The geometry is :mod:`anasim.ops.conv_geometry`'s, the layout kernels
:mod:`anasim.ops.im2col`'s. Blocks run on the worker threads of
:func:`anasim.threads.run_chunks` (single-threaded BLAS per worker); results do not depend
on the thread count. 1-D convolutions run as 2-D ones with a unit leading axis. All
kernels keep the input's float dtype (float32 in practice).
"""

from __future__ import annotations

import math

import numpy as np

from ..threads import run_chunks
from .conv_geometry import (ConvGeometry, _as5d, _bias_or_zeros, _check_input, _chunk_bytes, _params3,
                            conv_geometry)
from .depthwise import _conv2d_depthwise
from .epilogue import Epilogue
from .shifted import conv2d_shifted, shifted_applies
from .im2col import (_add_bias_inplace, _col2im_kernel, _im2col_t, cols_to_output, im2col, im2col_rows,
                     padded_input, rows_to_nchw)
from .winograd import _conv2d_winograd, _winograd_applies
from .thin import conv2d_thin, thin_applies
from .winograd_f4 import conv2d_winograd_f4, f4_applies

__all__ = ["conv", "conv_transpose", "warmup"]


# --------------------------------------------------------------------------- Conv
def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry,
         epilogue: Epilogue | None = None) -> np.ndarray:
    """Ideal (float) convolution of ``x`` (N, C, *in_shape) with ``w`` (OC, C/g, *kernel).

    ``epilogue`` (:class:`~anasim.ops.epilogue.Epilogue`, which must :meth:`fit
    <anasim.ops.epilogue.Epilogue.fits>` the output) is applied to each block of samples
    as soon as it is computed.

    Depthwise 1-D/2-D convolutions use a direct kernel
    (:func:`~anasim.ops.depthwise._conv2d_depthwise`), those
    :func:`~anasim.ops.winograd_f4.f4_applies` takes Winograd F(4×4, 3×3), those
    :func:`~anasim.ops.shifted.shifted_applies` takes shifted products, 3×3 stride-1 ones
    with at least ``_WINO_MIN_CHANNELS`` input channels Winograd F(2×2, 3×3)
    (:func:`~anasim.ops.winograd._conv2d_winograd`), other 1-D/2-D ones :func:`_conv2d_gemm`; 3-D
    convolutions a plain im2col + stacked product.
    """
    _check_input(x, geom)
    dtype = x.dtype
    n, g = x.shape[0], geom.group
    w = np.asarray(w, dtype=dtype)
    out_shape = (n, geom.out_channels) + geom.out_shape
    if b is not None:
        b = _bias_or_zeros(b, geom.out_channels, dtype)
    if g > 1 and g == geom.in_channels and geom.n_spatial <= 2:  # depthwise: direct kernel
        return _conv2d_depthwise(np.ascontiguousarray(x), w, b, geom, epilogue).reshape(out_shape)
    if thin_applies(geom, dtype):  # 1-4 input channels: too thin for sgemm
        return conv2d_thin(x, w, b, geom, epilogue)
    if f4_applies(geom, dtype):
        return conv2d_winograd_f4(x, w, b, geom, epilogue)
    if shifted_applies(geom, dtype):
        return conv2d_shifted(x, w, b, geom, epilogue).reshape(out_shape)
    if _winograd_applies(geom):
        return _conv2d_winograd(np.ascontiguousarray(x), w, b, geom, epilogue)
    if geom.n_spatial <= 2:
        return _conv2d_gemm(np.ascontiguousarray(x), w, b, geom, epilogue).reshape(out_shape)
    x5 = _as5d(x, geom)
    cols = _im2col_t(x5, geom)
    p = geom.n_pixels
    if g == 1:
        y = np.matmul(w.reshape(geom.out_channels, -1), cols)
    else:
        wg = w.reshape(g, geom.out_channels_per_group, geom.k_per_group)
        y = np.matmul(wg, cols.reshape(n, g, geom.k_per_group, p)).reshape(n, geom.out_channels, p)
    if b is not None:
        _add_bias_inplace(y, b)
    if epilogue is not None:
        epilogue.apply(y.reshape(-1), 0, y.size)
    return y.reshape(out_shape)


def _conv2d_gemm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry,
                 epilogue: Epilogue | None = None) -> np.ndarray:
    """1-D/2-D convolution as blocked im2col + BLAS, parallel over blocks of the batch.

    A block is a few whole samples (small feature maps) or a band of output rows of one
    sample (large ones), sized by
    :func:`~anasim.ops.conv_geometry._chunk_bytes`. Its im2col matrix (rows (c, kh, kw),
    columns (n, oh, ow)) is a strided NumPy copy from a zero-padded copy of the input
    (no per-element bounds checks), with an extra row of ones so the bias rides in the
    product ``[W | b] @ cols``, which lands directly in NCHW order.
    """
    n, c = x.shape[:2]
    if geom.n_spatial == 1:
        x = x.reshape(n, c, 1, x.shape[2])
        h, wd = 1, geom.in_shape[0]
        (kh, kw), (sh, sw), (dh, dw) = (1, geom.kernel[0]), (1, geom.strides[0]), (1, geom.dilations[0])
        (ph, pw), (eh, ew), (oh, ow) = (0, geom.pads_begin[0]), (0, geom.pads_end[0]), (1, geom.out_shape[0])
    else:
        (h, wd), (kh, kw), (sh, sw), (dh, dw) = geom.in_shape, geom.kernel, geom.strides, geom.dilations
        (ph, pw), (eh, ew), (oh, ow) = geom.pads_begin, geom.pads_end, geom.out_shape
    dtype, it = x.dtype, x.dtype.itemsize
    oc, g = geom.out_channels, geom.group
    ocg, kg = oc // g, geom.k_per_group
    p = oh * ow
    ones = 1 if g == 1 else 0  # grouped: bias added after the products
    k_rows = c * kh * kw + ones
    wmat = np.empty((oc, kg + ones), dtype)
    wmat[:, :kg] = w.reshape(oc, kg)
    if ones:
        wmat[:, kg] = 0 if b is None else b
    padded = bool(ph or pw or eh or ew)
    hp, wp = h + ph + eh, wd + pw + ew
    out = np.empty((n, oc, p), dtype)
    per_sample = k_rows * p * it
    budget = _chunk_bytes(wmat.nbytes)
    if per_sample >= budget:  # bands of output rows of one sample
        rb = max(1, min(oh, budget // (k_rows * ow * it)))
        n_chunks, nc = n, 1
    else:  # groups of whole samples
        rb = oh
        nc = max(1, min(n, budget // per_sample))
        n_chunks = -(-n // nc)

    def make_state():
        xp = np.zeros((nc, c, hp, wp), dtype) if padded else None
        cols = np.empty(k_rows * nc * rb * ow, dtype)
        y = np.empty(oc * nc * p, dtype) if nc > 1 else None
        return xp, cols, y

    def do_chunk(state, i):
        xp, colbuf, ybuf = state
        s0 = i * nc
        s1 = min(n, s0 + nc)
        m = s1 - s0
        if padded:
            xp[:m, :, ph:ph + h, pw:pw + wd] = x[s0:s1]
            src, base = xp, 0
        else:
            src, base = x, s0 * c * hp * wp * it
        for j0 in range(0, oh, rb):
            j1 = min(oh, j0 + rb)
            cols_n = m * (j1 - j0) * ow
            cols = colbuf[:k_rows * cols_n].reshape(k_rows, cols_n)
            # patches as a strided view (np.ndarray is much cheaper than as_strided)
            view = np.ndarray((c, kh, kw, m, j1 - j0, ow), dtype, src, base + j0 * sh * wp * it,
                              (hp * wp * it, dh * wp * it, dw * it, c * hp * wp * it, sh * wp * it, sw * it))
            np.copyto(cols[:k_rows - ones].reshape(c, kh, kw, m, j1 - j0, ow), view)
            if ones:
                cols[k_rows - 1] = 1
            if m == 1:
                dst = out[s0][:, j0 * ow:j1 * ow]
                if g == 1:
                    np.matmul(wmat, cols, out=dst)
                else:
                    for gi in range(g):
                        np.matmul(wmat[gi * ocg:(gi + 1) * ocg], cols[gi * kg:(gi + 1) * kg],
                                  out=dst[gi * ocg:(gi + 1) * ocg])
            else:
                y = ybuf[:oc * cols_n].reshape(oc, cols_n)
                if g == 1:
                    np.matmul(wmat, cols, out=y)
                else:
                    for gi in range(g):
                        np.matmul(wmat[gi * ocg:(gi + 1) * ocg], cols[gi * kg:(gi + 1) * kg],
                                  out=y[gi * ocg:(gi + 1) * ocg])
                np.copyto(out[s0:s1].transpose(1, 0, 2), y.reshape(oc, m, p))
        if not ones and b is not None:
            out[s0:s1] += b[:, None]
        if epilogue is not None:
            epilogue.apply(out.reshape(-1), s0 * oc * p, s1 * oc * p)

    run_chunks(n_chunks, make_state, do_chunk)
    return out


# --------------------------------------------------------------------------- ConvTranspose
def conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
    """Ideal ConvTranspose with the geometry of
    :func:`~anasim.ops.conv_geometry.conv_transpose_geometry`."""
    dtype = x.dtype
    n, g = x.shape[0], geom.group
    c = geom.out_channels  # ConvTranspose input channels
    oc = geom.in_channels  # ConvTranspose output channels
    cg, ocg, kk = c // g, oc // g, geom.kernel_size
    p_in = math.prod(x.shape[2:])
    xs = np.ascontiguousarray(x).reshape(n, g, cg, p_in)
    # W (C, OC/g, *k) -> per group (OCg*kk, Cg)
    wt = np.ascontiguousarray(np.asarray(w, dtype=dtype).reshape(g, cg, ocg * kk).transpose(0, 2, 1))
    cols = np.matmul(wt, xs)  # (N, G, OCg*kk, P_in)
    (kd, kh, kw), (sd, sh, sw), (dd, dh, dw), (pd, ph, pw), (idd, ih, iw) = _params3(geom)
    cols = cols.reshape(n, oc * kk, idd, ih, iw)
    od, oh, ow = geom._pad3(geom.in_shape, 1)
    out = np.zeros((n, oc, od, oh, ow), dtype=dtype)
    _col2im_kernel(cols, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw)
    out = out.reshape((n, oc, od * oh * ow))
    if b is not None:
        _add_bias_inplace(out, np.ascontiguousarray(b, dtype=dtype).reshape(-1))
    return out.reshape((n, oc) + geom.in_shape)


def warmup(dtype=np.float32) -> None:
    """Compile (or load from Numba's cache) the convolution kernels on tiny inputs."""
    from . import epilogue, shifted

    epilogue.warmup()
    shifted.warmup()
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((2, 32, 4, 4)).astype(dtype)  # Winograd F(4×4, 3×3)
    w32 = rng.standard_normal((4, 32, 3, 3)).astype(dtype)
    conv(x32, w32, None, conv_geometry(x32.shape, w32.shape, pads=[1, 1, 1, 1]))
    x3 = x32[:, :3]  # a first layer: direct sums (anasim.ops.thin)
    conv(x3, w32[:, :3], None, conv_geometry(x3.shape, (4, 3, 3, 3), pads=[1, 1, 1, 1]))
    x = rng.standard_normal((2, 16, 6, 6)).astype(dtype)
    for w_shape, kw in [((4, 16, 3, 3), dict(pads=[1, 1, 1, 1])),            # Winograd
                        ((4, 16, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),  # im2col + GEMM
                        ((16, 1, 3, 3), dict(pads=[1, 1, 1, 1], group=16))]:   # depthwise
        w = rng.standard_normal(w_shape).astype(dtype)
        g = conv_geometry(x.shape, w.shape, **kw)
        conv(x, w, np.zeros(w_shape[0], dtype), g)
        cols_to_output(im2col(x, g) @ w.reshape(w_shape[0], -1)[:, :g.k_per_group].T if g.group == 1
                       else np.zeros((2 * g.n_pixels, w_shape[0]), dtype), 2, g)
        if dtype == np.float32:  # the analog layers' row-block kernels
            xp, params = padded_input(x, g)
            cols = im2col_rows(xp, params, 0, 2 * g.n_pixels, np.empty((2 * g.n_pixels, g.k), dtype))
            rows_to_nchw(np.ascontiguousarray(cols[:, :w_shape[0]]), np.zeros(w_shape[0], dtype),
                         np.empty((2, w_shape[0], g.n_pixels), dtype), 0)
