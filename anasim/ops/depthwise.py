"""Depthwise (``group == C``) 1-D/2-D convolution: direct multiply-adds, no im2col.

One sample per chunk on the worker threads (:func:`anasim.threads.run_chunks`); see
:mod:`anasim.ops.im2col` for the Numba indexing note.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _bias_or_zeros
from .epilogue import Epilogue


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
