"""Depthwise (``group == C``) 1-D/2-D convolution: direct multiply-adds, no im2col.

One sample per chunk on the worker threads (:func:`anasim.threads.run_chunks`); see
:mod:`anasim.ops.im2col` for the Numba indexing note.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _bias_or_zeros
from .epilogue import Epilogue, activation, epilogue_codes


@njit(nogil=True, cache=True)
def _depthwise_kernel(xp, w, b, acc, out, s, c_, mult, oh, ow, owp, hp, wp, kh, kw, sh, sw, dh, dw):
    """Depthwise 2-D convolution of one sample, from its zero-padded planes.

    ``xp``: padded planes of sample ``s``, (C, hp, wp) flat with wp = sw·owp (+ slack);
    ``acc``: scratch (oh·owp); ``out``: flat NCHW output. With unit row stride every
    tap is one flat multiply-add over the plane (the extra owp - ow columns per row are
    scratch); otherwise one loop per output row.
    """
    n_acc = oh * owp
    for c in range(c_):
        xb = c * hp * wp
        for mi in range(mult):
            o = c * mult + mi
            bo = b[o]
            for q in range(n_acc):
                acc[q] = bo
            for a in range(kh):
                for e in range(kw):
                    wt = w[(o * kh + a) * kw + e]
                    base = xb + a * dh * wp + e * dw
                    # slice, then index by loop variables only (lets LLVM vectorize)
                    if sh == 1:
                        src = xp[base:base + n_acc * sw]
                        if sw == 1:
                            for q in range(n_acc):
                                acc[q] += wt * src[q]
                        else:
                            for q in range(n_acc):
                                acc[q] += wt * src[q * sw]
                    else:
                        for i in range(oh):
                            rb = base + i * sh * wp
                            src = xp[rb:rb + ow * sw]
                            dst = acc[i * owp:i * owp + ow]
                            for k in range(ow):
                                dst[k] += wt * src[k * sw]
            ob = (s * c_ * mult + o) * oh * ow
            for i in range(oh):
                src = acc[i * owp:i * owp + ow]
                dst = out[ob + i * ow:ob + (i + 1) * ow]
                for k in range(ow):
                    dst[k] = src[k]


@njit(nogil=True, cache=True)
def _depthwise_cl_kernel(x, wt, b, s0, s1, xt, yt, out, kh, kw, sh, sw, dh, dw, ph, pw, res, has_res, kind,
                         lo, hi):
    """Depthwise 2-D convolution (one output channel per input channel) of samples s0..s1,
    vectorised over the channels: each sample's zero-padded input is transposed to
    channels-last ``xt`` (hp, wp, C) (its padding stays zero: only data positions are
    written), every output pixel accumulates its taps over all channels at once into
    ``yt`` (oh·ow, C), then bias, the epilogue and the NCHW layout. The same sums in the
    same order (bias, then the taps in (row, column) order) as :func:`_depthwise_kernel`;
    for small planes, whose per-plane loops are too short to vectorise."""
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[2], out.shape[3]
    for s in range(s0, s1):
        for c0 in range(0, c_, 16):  # transposed in blocks of 16 channels
            c1 = min(c_, c0 + 16)
            for i in range(h_):
                for j in range(w_):
                    dst = xt[i + ph, j + pw, c0:c1]
                    for k in range(c1 - c0):
                        dst[k] = x[s, c0 + k, i, j]
        for i in range(oh):
            for j in range(ow):
                acc = yt[i * ow + j]
                for c in range(c_):
                    acc[c] = b[c]
                for a in range(kh):
                    for e in range(kw):
                        src = xt[i * sh + a * dh, j * sw + e * dw]
                        wv = wt[a * kw + e]
                        for c in range(c_):
                            acc[c] += wv[c] * src[c]
        for c in range(c_):
            for i in range(oh):
                dst = out[s, c, i]
                rr = res[s, c, i]
                for j in range(ow):
                    v = yt[i * ow + j, c]
                    if has_res:
                        v = v + rr[j]
                    dst[j] = activation(v, kind, lo, hi)


_CL_MAX_PIXELS = 64
"""Depthwise convolutions with at most this many output pixels per sample run channels-last
(:func:`_depthwise_cl_kernel`; measured on MobileNetV2's layers: 1.2-3.5x faster on 8x8 and
4x4 maps, slower from 16x16 on, where the per-plane loops are long enough)."""


def _conv2d_depthwise(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry,
                      epilogue: Epilogue | None = None) -> np.ndarray:
    """Depthwise (group == C) 1-D/2-D convolution: direct multiply-adds, one sample per chunk."""
    n, c = x.shape[:2]
    if geom.n_spatial == 1:
        x = x.reshape(n, c, 1, x.shape[2])
        (h, wd), (kh, kw), (sh, sw), (dh, dw) = (1, geom.in_shape[0]), (1, geom.kernel[0]), (1, geom.strides[0]), (1, geom.dilations[0])
        (ph, pw), (oh, ow) = (0, geom.pads_begin[0]), (1, geom.out_shape[0])
    else:
        (h, wd), (kh, kw), (sh, sw), (dh, dw) = geom.in_shape, geom.kernel, geom.strides, geom.dilations
        (ph, pw), (oh, ow) = geom.pads_begin, geom.out_shape
    dtype = x.dtype
    oc = geom.out_channels
    mult = oc // c
    # padded plane: rows cover every tap of every output row; width a multiple of sw
    hp = max(h + ph, (oh - 1) * sh + (kh - 1) * dh + 1)
    owp = -(-max(wd + pw, (ow - 1) * sw + (kw - 1) * dw + 1) // sw)
    wp = owp * sw
    # flat taps of the last row may run (kw - 1) * dw past the plane: slack
    size = c * hp * wp + (kw - 1) * dw + sw * owp
    wf = np.ascontiguousarray(w, dtype=dtype).reshape(-1)
    bias = _bias_or_zeros(b, oc, dtype)
    out = np.empty((n, oc, oh, ow), dtype)
    of = out.reshape(-1)
    if mult == 1 and dtype == np.float32 and oh * ow <= _CL_MAX_PIXELS:
        return _depthwise_channels_last(x, wf.reshape(c, kh * kw), bias, out, (kh, kw), (sh, sw), (dh, dw),
                                        (ph, pw), hp, wp, epilogue)

    def make_state():
        return np.zeros(size, dtype), np.empty(oh * owp, dtype)

    def do_chunk(state, i):
        xp, acc = state
        xp[:c * hp * wp].reshape(c, hp, wp)[:, ph:ph + h, pw:pw + wd] = x[i]
        _depthwise_kernel(xp, wf, bias, acc, of, i, c, mult, oh, ow, owp, hp, wp, kh, kw, sh, sw, dh, dw)
        if epilogue is not None:
            epilogue.apply(of, i * oc * oh * ow, (i + 1) * oc * oh * ow)

    run_chunks(n, make_state, do_chunk)
    return out


def _depthwise_channels_last(x, w2, bias, out, k, st, dl, pads, hp, wp, epilogue):
    """:func:`_depthwise_cl_kernel` over blocks of samples on the worker threads."""
    n, c = x.shape[:2]
    kind, a, b, res = epilogue_codes(epilogue)
    res4 = out if res is None else res.reshape(out.shape)
    wt = np.ascontiguousarray(w2.T)  # (taps, C)
    oh, ow = out.shape[2], out.shape[3]
    per = max(1, min(n, (1 << 20) // max(1, 4 * c * (hp * wp + oh * ow))))  # about 1 MiB per block
    blocks = -(-n // per)

    def make_state():
        return np.zeros((hp, wp, c), np.float32), np.empty((oh * ow, c), np.float32)

    def do_block(state, i):
        xt, yt = state
        _depthwise_cl_kernel(x, wt, bias, i * per, min(n, (i + 1) * per), xt, yt, out, k[0], k[1], st[0], st[1],
                             dl[0], dl[1], pads[0], pads[1], res4, res is not None, kind, a, b)

    run_chunks(blocks, make_state, do_block)
    return out
