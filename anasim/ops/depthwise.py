"""Depthwise (``group == C``) 1-D/2-D convolution: direct multiply-adds, no im2col.

Three kernels, the same sums in the same order (bias, then the taps in (row, column)
order), so the same float32 numbers:

* 3×3, one output per channel, more than :data:`_CL_MAX_PIXELS` output pixels:
  :func:`_dw3x3_kernel`, plane by plane from the plane's stride phases (any stride reads
  contiguously), the nine taps written out so the sum over taps stays in registers;
* at most :data:`_CL_MAX_PIXELS` output pixels: :func:`_depthwise_cl_kernel`,
  channels-last, vectorised over the channels (3×3 written out there too);
* otherwise :func:`_depthwise_kernel`, one flat multiply-add per tap over a padded plane.

Blocks of samples run on the worker threads (:func:`anasim.threads.run_chunks`); see
:mod:`anasim.ops.im2col` for the Numba indexing note. On MobileNetV2's layers (batch 128,
2 threads) the 3×3 kernels are 1.2–1.7× faster on strided and 16×16 maps and about equal on
32×32 maps, whose time is memory traffic.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _bias_or_zeros
from .epilogue import Epilogue, activation, epilogue_codes

_U = np.uint64  # unsigned flat indices (the Numba note of anasim.ops.im2col)


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
def _depthwise_cl_kernel(xf, dims, wt, b, s0, s1, xt, yt, of, rf, kh, kw, sh, sw, dh, dw, ph, pw, has_res, kind,
                         lo, hi):
    """Depthwise 2-D convolution (one output channel per input channel) of samples s0..s1,
    vectorised over the channels: each sample's zero-padded input is transposed to
    channels-last ``xt`` (hp·wp·C, flat; its padding stays zero: only data positions are
    written), every output pixel accumulates its taps over all channels at once into
    ``yt`` (oh·ow·C), then bias, the epilogue and the NCHW layout. ``xf``, ``of``, ``rf``:
    the flat input, output and residual; ``dims`` = (C, H, W, OH, OW, Hp, Wp). The same
    sums in the same order (bias, then the taps in (row, column) order) as
    :func:`_depthwise_kernel`; for small planes, whose per-plane loops are too short to
    vectorise. Flat uint64 indices (no views in the loops); the input transposed in
    blocks of 16 channels (writes at the channel pitch instead ran 2.8x slower on 192
    channels of 16×16, cache-set conflicts), the output plane by plane (one thread, per
    sample: 576 channels of 8×8 83 → 52 µs, 192 of 16×16 stride 2 45 → 33 µs, 960 of
    4×4 33 → 23 µs against array views and pixel-major output)."""
    c_, h_, w_, oh, ow, hp, wp = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]
    hw = h_ * w_
    npx = oh * ow
    uc = _U(c_)
    for s in range(s0, s1):
        xb = s * c_ * hw
        for c0 in range(0, c_, 16):  # blocks of 16 channels: each pixel's 16 values one cache line
            nc = _U(min(c_, c0 + 16) - c0)
            for i in range(h_):
                for j in range(w_):
                    d = _U(((i + ph) * wp + j + pw) * c_ + c0)
                    src = _U(xb + c0 * hw + i * w_ + j)
                    for k in range(nc):
                        xt[d + k] = xf[src + k * _U(hw)]
        for i in range(oh):
            for j in range(ow):
                a0 = _U((i * ow + j) * c_)
                if kh == 3 and kw == 3:  # the nine taps written out: the sum stays in registers
                    r0, r1, r2 = i * sh * wp, (i * sh + dh) * wp, (i * sh + 2 * dh) * wp
                    q0, q1, q2 = j * sw, j * sw + dw, j * sw + 2 * dw
                    p0, p1, p2 = _U((r0 + q0) * c_), _U((r0 + q1) * c_), _U((r0 + q2) * c_)
                    p3, p4, p5 = _U((r1 + q0) * c_), _U((r1 + q1) * c_), _U((r1 + q2) * c_)
                    p6, p7, p8 = _U((r2 + q0) * c_), _U((r2 + q1) * c_), _U((r2 + q2) * c_)
                    for c in range(uc):
                        v = b[c] + wt[0, c] * xt[p0 + c]
                        v = v + wt[1, c] * xt[p1 + c]
                        v = v + wt[2, c] * xt[p2 + c]
                        v = v + wt[3, c] * xt[p3 + c]
                        v = v + wt[4, c] * xt[p4 + c]
                        v = v + wt[5, c] * xt[p5 + c]
                        v = v + wt[6, c] * xt[p6 + c]
                        v = v + wt[7, c] * xt[p7 + c]
                        yt[a0 + c] = v + wt[8, c] * xt[p8 + c]
                    continue
                for c in range(uc):
                    yt[a0 + c] = b[c]
                for a in range(kh):
                    for e in range(kw):
                        pt = _U(((i * sh + a * dh) * wp + j * sw + e * dw) * c_)
                        t = a * kw + e
                        for c in range(uc):
                            yt[a0 + c] += wt[t, c] * xt[pt + c]
        ob = s * c_ * npx
        for c in range(c_):
            d = _U(ob + c * npx)
            for q in range(_U(npx)):
                v = yt[q * uc + _U(c)]
                if has_res:
                    v = v + rf[d + q]
                of[d + q] = activation(v, kind, lo, hi)


@njit(inline="always")
def _col_lo(cp, sw, pw):
    """First phase-plane column j of phase cp whose input column j·sw + cp - pw is >= 0."""
    return max(0, -((cp - pw) // sw))


@njit(inline="always")
def _col_hi(cp, sw, pw, wq, w_):
    """One past the last phase-plane column (< wq) whose input column is < w_."""
    return min(wq, (w_ - 1 - cp + pw) // sw + 1) if w_ - 1 - cp + pw >= 0 else 0


@njit(inline="always")
def _split_phases(xf, xb, h_, w_, xq, sh, sw, ph, pw, hq, wq, pl):
    """The stride phases of one zero-padded input plane: ``xq[(rp·sw + cp)·pl + i·wq + j] =
    xf[xb + r·w_ + c]`` for every data position (r, c), with ``r + ph = i·sh + rp`` and
    ``c + pw = j·sw + cp`` (only data positions are written: the padding stays as zeroed).

    Flat uint64 indices, no array views in these branchy row loops (the Numba note of
    :mod:`anasim.ops.im2col`; MobileNetV2's 144-channel 32×32 stride-2 layer, one thread:
    53 → 8 ms per batch for the split)."""
    for r in range(h_):
        i = (r + ph) // sh
        if i >= hq:
            continue
        rp = (r + ph) % sh
        src = _U(xb + r * w_)
        if sw == 2:  # both column phases in one pass over the row (an interleaved load)
            lo0, lo1 = _col_lo(0, 2, pw), _col_lo(1, 2, pw)
            hi0, hi1 = _col_hi(0, 2, pw, wq, w_), _col_hi(1, 2, pw, wq, w_)
            jlo, jhi = max(lo0, lo1), max(max(lo0, lo1), min(hi0, hi1))
            b0 = _U((rp * 2) * pl + i * wq + jlo)
            b1 = _U((rp * 2 + 1) * pl + i * wq + jlo)
            sb = src + _U(jlo * 2 - pw)
            for j in range(_U(jhi - jlo)):
                xq[b0 + j] = xf[sb + _U(2) * j]
                xq[b1 + j] = xf[sb + _U(2) * j + _U(1)]
            for cp, lo, hi in ((0, lo0, hi0), (1, lo1, hi1)):  # the ends, one phase each
                bb = (rp * 2 + cp) * pl + i * wq
                for j in range(lo, min(jlo, hi)):
                    xq[_U(bb + j)] = xf[src + _U(j * 2 + cp - pw)]
                for j in range(max(jhi, lo), hi):
                    xq[_U(bb + j)] = xf[src + _U(j * 2 + cp - pw)]
            continue
        for cp in range(sw):
            jlo = _col_lo(cp, sw, pw)
            jhi = max(jlo, _col_hi(cp, sw, pw, wq, w_))
            bb = _U((rp * sw + cp) * pl + i * wq + jlo)
            sb = src + _U(jlo * sw + cp - pw)
            for j in range(_U(jhi - jlo)):
                xq[bb + j] = xf[sb + _U(sw) * j]


@njit(nogil=True, cache=True)
def _dw3x3_kernel(xf, dims, w9, b, s0, s1, xq, acc, of, rf, has_res, kind, lo, hi, sh, sw, dh, dw, ph, pw, hq,
                  wq, pl):
    """3×3 depthwise convolution (one output channel per input channel) of samples s0..s1,
    one plane at a time, with the epilogue. ``xf``, ``of``, ``rf``: the flat input, output
    and residual; ``dims`` = (C, H, W, OH, OW).

    The plane's zero-padded input is first split by the phases of the strides
    (:func:`_split_phases`): phase plane (rp, cp) holds the padded input at rows
    ``i·sh + rp`` and columns ``j·sw + cp`` (``hq`` rows of ``wq`` columns, ``pl`` floats
    apart in ``xq``). Tap (a, e) then reads phase plane ``(a·dh mod sh, e·dw mod sw)``
    shifted by ``(a·dh div sh, e·dw div sw)``: for every output pixel q = i·wq + j one
    contiguous load per tap, the nine taps written out so the loop over pixels vectorises
    with the sum in registers (columns ow..wq of each row are computed into ``acc`` and
    dropped). The same sums in the same order as :func:`_depthwise_kernel`: bias, then the
    taps in (row, column) order."""
    c_, h_, w_, oh, ow = dims[0], dims[1], dims[2], dims[3], dims[4]
    n_acc = oh * wq
    # flat offset of each tap in the phase-plane buffer
    offs = np.empty(9, np.int64)
    for a in range(3):
        for e in range(3):
            offs[a * 3 + e] = ((a * dh % sh) * sw + (e * dw % sw)) * pl + (a * dh // sh) * wq + (e * dw // sw)
    t0, t1, t2, t3, t4, t5, t6, t7, t8 = offs[0], offs[1], offs[2], offs[3], offs[4], offs[5], offs[6], offs[7], offs[8]
    x0 = xq[t0:t0 + n_acc]
    x1 = xq[t1:t1 + n_acc]
    x2 = xq[t2:t2 + n_acc]
    x3 = xq[t3:t3 + n_acc]
    x4 = xq[t4:t4 + n_acc]
    x5 = xq[t5:t5 + n_acc]
    x6 = xq[t6:t6 + n_acc]
    x7 = xq[t7:t7 + n_acc]
    x8 = xq[t8:t8 + n_acc]
    for s in range(s0, s1):
        for c in range(c_):
            _split_phases(xf, (s * c_ + c) * h_ * w_, h_, w_, xq, sh, sw, ph, pw, hq, wq, pl)
            w0, w1, w2, w3, w4 = w9[c, 0], w9[c, 1], w9[c, 2], w9[c, 3], w9[c, 4]
            w5, w6, w7, w8 = w9[c, 5], w9[c, 6], w9[c, 7], w9[c, 8]
            bc = b[c]
            for q in range(n_acc):
                v = bc + w0 * x0[q]
                v = v + w1 * x1[q]
                v = v + w2 * x2[q]
                v = v + w3 * x3[q]
                v = v + w4 * x4[q]
                v = v + w5 * x5[q]
                v = v + w6 * x6[q]
                v = v + w7 * x7[q]
                acc[q] = v + w8 * x8[q]
            ob = (s * c_ + c) * oh * ow
            for i in range(oh):
                d = _U(ob + i * ow)
                a_ = _U(i * wq)
                for j in range(_U(ow)):
                    v = acc[a_ + j]
                    if has_res:
                        v = v + rf[d + j]
                    of[d + j] = activation(v, kind, lo, hi)


_PHASE_3X3 = True
"""3×3 depthwise convolutions (float32, one output per channel) take :func:`_dw3x3_kernel`
(False: the generic kernels below; the same numbers, for comparisons)."""

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
    if mult == 1 and dtype == np.float32 and kh == kw == 3 and _PHASE_3X3 and oh * ow > _CL_MAX_PIXELS:
        return _depthwise_3x3(x, wf.reshape(c, 9), bias, out, (sh, sw), (dh, dw), (ph, pw), epilogue)
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
    of = out.reshape(-1)
    rf = of if res is None else np.ascontiguousarray(res).reshape(-1)
    wt = np.ascontiguousarray(w2.T)  # (taps, C)
    oh, ow = out.shape[2], out.shape[3]
    dims = np.array([c, x.shape[2], x.shape[3], oh, ow, hp, wp], np.int64)
    xf = x.reshape(-1)
    per = max(1, min(n, (1 << 20) // max(1, 4 * c * (hp * wp + oh * ow))))  # about 1 MiB per block
    blocks = -(-n // per)

    def make_state():
        return np.zeros(hp * wp * c, np.float32), np.empty(oh * ow * c, np.float32)

    def do_block(state, i):
        xt, yt = state
        _depthwise_cl_kernel(xf, dims, wt, bias, i * per, min(n, (i + 1) * per), xt, yt, of, rf, k[0], k[1], st[0],
                             st[1], dl[0], dl[1], pads[0], pads[1], res is not None, kind, a, b)

    run_chunks(blocks, make_state, do_block)
    return out


def _depthwise_3x3(x, w9, bias, out, st, dl, pads, epilogue):
    """:func:`_dw3x3_kernel` over blocks of samples on the worker threads."""
    n, c = x.shape[:2]
    (sh, sw), (dh, dw), (ph, pw) = st, dl, pads
    oh, ow = out.shape[2], out.shape[3]
    hq, wq = oh + 2 * dh // sh, ow + 2 * dw // sw
    pl = hq * wq + wq  # one phase plane and the slack its last row's dropped columns read
    kind, a, b, res = epilogue_codes(epilogue)
    of = out.reshape(-1)
    rf = of if res is None else np.ascontiguousarray(res).reshape(-1)
    xf = x.reshape(-1)
    dims = np.array([c, x.shape[2], x.shape[3], oh, ow], np.int64)
    per = max(1, min(n, (1 << 18) // max(1, 4 * c * oh * ow)))  # about 256 KiB of output per block
    blocks = -(-n // per)

    def make_state():
        return np.zeros(sh * sw * pl, np.float32), np.empty(oh * wq, np.float32)

    def do_block(state, i):
        xq, acc = state
        _dw3x3_kernel(xf, dims, w9, bias, i * per, min(n, (i + 1) * per), xq, acc, of, rf, res is not None, kind,
                      a, b, sh, sw, dh, dw, ph, pw, hq, wq, pl)

    run_chunks(blocks, make_state, do_block)
    return out
