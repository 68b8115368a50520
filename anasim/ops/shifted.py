"""2-D convolutions as sums of shifted matrix products: no im2col matrix at all.

For every kernel tap (a, b) the inputs the tap sees, over all output pixels of a band of
output rows, are one matrix with a constant row stride inside a copy of the input laid
out per *phase* of the stride: plane ``(r, e)`` of channel c holds the zero-padded input
at rows ``i·sh + r`` and columns ``j·sw + e``. Tap (a, b) reads plane
``(a·dh mod sh, b·dw mod sw)`` shifted by ``(a·dh div sh, b·dw div sw)``, so

    Y (OC × band pixels) = Σ_taps W[:, :, a, b] @ X_tap      (sgemm, β = 1 after the first)

with X_tap a strided view (leading dimension: one channel's planes) — K = C per product,
kh·kw products. Each output row carries ``wq - ow`` extra columns (the plane's width is
``ow + (kw-1)·dw / sw``) that are computed and dropped. A 1×1, stride-1, unpadded
convolution reads the input itself (no copy) and sgemm writes the output itself (the
epilogue then runs in place); on maps under :data:`SHIFTED_MIN_PIXELS` pixels several
samples share one product (their inputs packed side by side: N = samples × pixels; on
MobileNetV2's 4×4 and 8×8 maps 1.6-2.7× faster than one product per sample). Bias, the residual and the activation
(:class:`~anasim.ops.epilogue.Epilogue`) are applied while the band is copied to NCHW.

Blocks (one sample, or a band of output rows of one) run on the worker threads
(:func:`anasim.threads.run_chunks`, single-threaded BLAS in each); the sums are the same
for any thread count. The sum order (taps outer, channels inner) differs from im2col's,
so results agree with it to float32 rounding, not bit for bit. sgemm is the OpenBLAS
NumPy uses, called from the kernel (:mod:`anasim.kernels.blas`); without it
(:func:`available` false) the other paths of :func:`anasim.ops.conv.conv` are used.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels.blas import SGEMM_NAME, sgemm_type
from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _bias_or_zeros, _chunk_bytes
from .epilogue import Epilogue, activation, epilogue_codes
from .winograd import _winograd_applies

__all__ = ["available", "shifted_applies", "conv2d_shifted"]

_sgemm = sgemm_type() if SGEMM_NAME else None
_ROW_MAJOR, _NO_TRANS = np.int32(101), np.int32(111)
_F0, _F1 = np.float32(0.0), np.float32(1.0)


def available() -> bool:
    """Whether the kernels can run here (NumPy's BLAS exports an ILP64 CBLAS sgemm)."""
    return _sgemm is not None


@njit(nogil=True, cache=True, error_model="numpy")
def _fill_phases(x, s, c_, i0, hq, nrow, wq, sh, sw, ph, pw, used, xq):
    """xq (flat (C, sh, sw, hq, wq)) [c, r, e, i, j] = x[s, c, (i0 + i)·sh + r - ph, j·sw + e - pw]
    (0 outside the input) for plane rows i < nrow (<= hq) and columns j < wq, for the
    phases (r, e) the taps read (``used[r·sw + e]``).

    Only data columns are written: the columns that map outside the input are the same
    for every band, so they stay as the caller zeroed them once."""
    h, w = x.shape[2], x.shape[3]
    zero = np.float32(0.0)
    pl = hq * wq
    for r in range(sh):
        for e in range(sw):
            if not used[r * sw + e]:
                continue
            # columns j with 0 <= j·sw + e - pw < w
            jlo = max(0, -((e - pw) // sw))
            jhi = min(wq, (w - 1 - e + pw) // sw + 1) if w - 1 - e + pw >= 0 else 0
            nj = jhi - jlo
            if nj <= 0:
                continue
            c_lo = jlo * sw + e - pw
            for c in range(c_):
                base = ((c * sh + r) * sw + e) * pl + jlo
                for i in range(nrow):
                    o = base + i * wq
                    dst = xq[o:o + nj]
                    src_r = (i0 + i) * sh + r - ph
                    if src_r < 0 or src_r >= h:
                        for j in range(nj):
                            dst[j] = zero
                    elif sw == 1:
                        src = x[s, c, src_r, c_lo:c_lo + nj]
                        for j in range(nj):
                            dst[j] = src[j]
                    else:
                        src = x[s, c, src_r, c_lo:]
                        for j in range(nj):
                            dst[j] = src[j * sw]


@njit(nogil=True, cache=True, error_model="numpy")
def _band(x, s, i0, i1, wk, taps, used, g, cg, ocg, hq, eh, wq, sh, sw, ph, pw, direct, xq, y):
    """Y[:, 0:(i1-i0)·wq] of output rows i0..i1 of sample s: Σ over taps of W_tap @ X_tap
    per group (``taps`` (kk, 3): plane index, row shift, column shift; planes of ``hq``
    rows, of which the band uses i1 - i0 + eh)."""
    nq = (i1 - i0) * wq
    kk = taps.shape[0]
    if direct:  # 1x1, stride 1, unpadded: the input rows are the matrix
        xs = x[s].reshape(-1)
        chan = x.shape[2] * x.shape[3]
        for gi in range(g):
            _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, ocg, nq, cg, _F1, wk[0, gi * ocg:].ctypes, cg,
                   xs[gi * cg * chan + i0 * wq:].ctypes, chan, _F0, y[gi * ocg:].ctypes, y.shape[1])
        return
    chan = sh * sw * hq * wq
    _fill_phases(x, s, g * cg, i0, hq, i1 - i0 + eh, wq, sh, sw, ph, pw, used, xq)
    flat = xq
    for gi in range(g):
        for k in range(kk):
            off = gi * cg * chan + taps[k, 0] * hq * wq + taps[k, 1] * wq + taps[k, 2]
            _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, ocg, nq, cg, _F1, wk[k, gi * ocg:].ctypes, cg,
                   flat[off:].ctypes, chan, _F0 if k == 0 else _F1, y[gi * ocg:].ctypes, y.shape[1])


@njit(inline="always")
def _finish(src, dst, r, n, bo, has_res, kind, a, b):
    """dst[j] = act(src[j] + bo (+ r[j])) for j < n (``src`` may be ``dst``)."""
    for j in range(n):  # LLVM unswitches the loop on has_res and kind
        v = src[j] + bo
        if has_res:
            v = v + r[j]
        dst[j] = activation(v, kind, a, b)


@njit(nogil=True, cache=True, error_model="numpy")
def _store(y, bias, out, s, i0, i1, oh, wq, ow, res, has_res, kind, a, b):
    """Output rows i0..i1 of sample s = act(y + bias (+ residual)), dropping the extra
    columns (``out``/``res`` flat NCHW with ``oh`` × ``ow`` planes)."""
    oc = bias.shape[0]
    yf = y.reshape(-1)
    ld = y.shape[1]
    for o in range(oc):
        bo = bias[o]
        for i in range(i1 - i0):
            yo = o * ld + i * wq
            src = yf[yo:yo + ow]
            ob = ((s * oc + o) * oh + i0 + i) * ow
            dst = out[ob:ob + ow]
            _finish(src, dst, res[ob:ob + ow] if has_res else src, ow, bo, has_res, kind, a, b)


@njit(nogil=True, cache=True, error_model="numpy")
def _pointwise_block(x, s0, s1, wk, g, cg, ocg, xc, y):
    """Y (OC × m·P) of samples s0..s1 (m of them) of a 1×1, stride-1, unpadded convolution:
    their inputs packed side by side (``xc`` (C, m·P)), one sgemm per group with N = m·P."""
    c_ = x.shape[1]
    p_ = x.shape[2] * x.shape[3]
    m = s1 - s0
    for s in range(s0, s1):
        for c in range(c_):
            src = x[s, c].reshape(-1)
            dst = xc[c, (s - s0) * p_:(s - s0 + 1) * p_]
            for j in range(p_):
                dst[j] = src[j]
    for gi in range(g):
        _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, ocg, m * p_, cg, _F1, wk[0, gi * ocg:].ctypes, cg,
               xc[gi * cg:].ctypes, xc.shape[1], _F0, y[gi * ocg:].ctypes, y.shape[1])


@njit(nogil=True, cache=True, error_model="numpy")
def _pointwise_store(y, bias, out, s0, s1, p_, res, has_res, kind, a, b):
    """Samples s0..s1 of the output (flat NCHW, P = ``p_`` pixels per plane) = act(y + bias
    (+ residual)) from :func:`_pointwise_block`'s Y."""
    oc = bias.shape[0]
    for s in range(s0, s1):
        for o in range(oc):
            bo = bias[o]
            src = y[o, (s - s0) * p_:(s - s0 + 1) * p_]
            ob = (s * oc + o) * p_
            dst = out[ob:ob + p_]
            _finish(src, dst, res[ob:ob + p_] if has_res else src, p_, bo, has_res, kind, a, b)


@njit(nogil=True, cache=True, error_model="numpy")
def _pointwise_band(x, s, i0, i1, wk, g, cg, ocg, out, bias, res, has_res, kind, a, b):
    """Output rows i0..i1 of sample s of a 1×1, stride-1, unpadded convolution written by
    sgemm straight into ``out`` (flat NCHW; its rows of a channel are the product's rows),
    then act(· + bias (+ residual)) in place while they are in cache."""
    oc = bias.shape[0]
    p_ = x.shape[2] * x.shape[3]
    ow = x.shape[3]
    nq = (i1 - i0) * ow
    xs = x[s].reshape(-1)
    base = s * oc * p_ + i0 * ow
    for gi in range(g):
        _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, ocg, nq, cg, _F1, wk[0, gi * ocg:].ctypes, cg,
               xs[gi * cg * p_ + i0 * ow:].ctypes, p_, _F0, out[base + gi * ocg * p_:].ctypes, p_)
    for o in range(oc):
        ob = base + o * p_
        dst = out[ob:ob + nq]
        _finish(dst, dst, res[ob:ob + nq] if has_res else dst, nq, bias[o], has_res, kind, a, b)


SHIFTED_MIN_PIXELS = 256
"""Output pixels per sample from which the shifted products are used: below it one
sample's products are too short for sgemm (N = pixels), and the batched im2col product
of :func:`anasim.ops.conv._conv2d_gemm` wins (measured on the ResNet and MobileNet layers)."""
SHIFTED_MAX_WINOGRAD_CHANNELS = 32
"""Convolutions Winograd can take (3×3, stride 1) go to Winograd above this many input channels."""


def _pointwise(geom: ConvGeometry) -> bool:
    """1×1, stride 1, unpadded: the input itself is the product's right-hand matrix."""
    return (all(k == 1 for k in geom.kernel) and all(st == 1 for st in geom.strides)
            and not any(geom.pads_begin) and not any(geom.pads_end)
            and tuple(geom.out_shape) == tuple(geom.in_shape))


def shifted_applies(geom: ConvGeometry, dtype) -> bool:
    """Whether :func:`anasim.ops.conv.conv` takes :func:`conv2d_shifted` for this convolution:
    float32, 1-D/2-D, at least 4 input channels per group (thinner products do not suit
    sgemm), at least :data:`SHIFTED_MIN_PIXELS` output pixels per sample or a pointwise
    (1×1, stride 1, unpadded) convolution (whose small maps are batched, several samples per
    product), and, for a convolution Winograd can take, at most
    :data:`SHIFTED_MAX_WINOGRAD_CHANNELS` input channels."""
    if not (available() and np.dtype(dtype) == np.float32 and geom.n_spatial in (1, 2)
            and geom.in_channels // geom.group >= 4
            and (geom.n_pixels >= SHIFTED_MIN_PIXELS or _pointwise(geom))):
        return False
    return not (_winograd_applies(geom) and geom.in_channels > SHIFTED_MAX_WINOGRAD_CHANNELS)


def conv2d_shifted(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry,
                   epilogue: Epilogue | None = None) -> np.ndarray:
    """The convolution of ``x`` (float32 NCHW or NCW) as shifted products (module docstring)."""
    n, c = x.shape[:2]
    if geom.n_spatial == 1:
        x = x.reshape(n, c, 1, x.shape[2])
        (kh, kw), (sh, sw), (dh, dw) = (1, geom.kernel[0]), (1, geom.strides[0]), (1, geom.dilations[0])
        (ph, pw), (oh, ow) = (0, geom.pads_begin[0]), (1, geom.out_shape[0])
    else:
        (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilations
        (ph, pw), (oh, ow) = geom.pads_begin, geom.out_shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    h, wd = x.shape[2], x.shape[3]
    oc, g = geom.out_channels, geom.group
    cg, ocg = c // g, oc // g
    wk = np.ascontiguousarray(np.asarray(w, np.float32).reshape(oc, cg, kh, kw).transpose(2, 3, 0, 1)
                              ).reshape(kh * kw, oc, cg)
    taps = np.array([[(a * dh % sh) * sw + (e * dw % sw), a * dh // sh, e * dw // sw]
                     for a in range(kh) for e in range(kw)], np.int64).reshape(-1, 3)
    used = np.zeros(sh * sw, np.bool_)
    used[taps[:, 0]] = True
    eh, ew = (kh - 1) * dh // sh, (kw - 1) * dw // sw  # extra plane rows / columns
    wq = ow + ew
    direct = kh == kw == sh == sw == 1 and ph == pw == 0 and oh == h and ow == wd
    bias = _bias_or_zeros(b, oc, np.float32)
    out = np.empty((n, oc, oh, ow), np.float32)
    kind, ea, eb, res = epilogue_codes(epilogue)
    of = out.reshape(-1)
    rf = of if res is None else res.reshape(-1)
    if direct and oh * ow < SHIFTED_MIN_PIXELS:  # small maps: several samples per product
        p_ = oh * ow
        per = max(1, min(n, _chunk_bytes(wk.nbytes) // ((c + oc) * p_ * 4)))
        blocks = -(-n // per)

        def make_block_state():
            return np.empty((c, per * p_), np.float32), np.empty((oc, per * p_), np.float32)

        def do_block(state, k):
            xc, y = state
            s0, s1 = k * per, min(n, (k + 1) * per)
            _pointwise_block(x, s0, s1, wk, g, cg, ocg, xc, y)
            _pointwise_store(y, bias, of, s0, s1, p_, rf, res is not None, kind, ea, eb)

        run_chunks(blocks, make_block_state, do_block)
        return out if geom.n_spatial == 2 else out.reshape((n, oc, ow))
    # bands of output rows sized so that one band's inputs and outputs stay in cache
    per_row = (c * sh * sw + oc) * wq * 4
    budget = _chunk_bytes(wk.nbytes)
    rb = max(1, min(oh, budget // max(per_row, 1)))
    bands = -(-oh // rb)

    def make_state():  # the phase planes of one band (+ slack: the last tap's extra columns)
        xq = np.zeros(1 if direct else c * sh * sw * (rb + eh) * wq + wq, np.float32)
        return xq, np.empty((0 if direct else oc, rb * wq), np.float32)

    def do_chunk(state, k):
        xq, y = state
        s, j = divmod(k, bands)
        i0 = j * rb
        i1 = min(oh, i0 + rb)
        if direct:
            _pointwise_band(x, s, i0, i1, wk, g, cg, ocg, of, bias, rf, res is not None, kind, ea, eb)
            return
        _band(x, s, i0, i1, wk, taps, used, g, cg, ocg, rb + eh, eh, wq, sh, sw, ph, pw, direct, xq, y)
        _store(y, bias, of, s, i0, i1, oh, wq, ow, rf, res is not None, kind, ea, eb)

    run_chunks(n * bands, make_state, do_chunk)
    return out if geom.n_spatial == 2 else out.reshape((n, oc, ow))


def warmup() -> None:
    """Compile the kernels (or load them from Numba's cache) on a tiny convolution."""
    from .conv_geometry import conv_geometry

    if not available():
        return
    x = np.ones((1, 4, 5, 5), np.float32)
    for kw in (dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2]), {}):
        w = np.ones((4, 4, 3, 3) if "pads" in kw else (4, 4, 1, 1), np.float32)
        conv2d_shifted(x, w, None, conv_geometry(x.shape, w.shape, **kw))
    x16 = np.ones((1, 4, 16, 16), np.float32)  # a pointwise convolution on a large map (one sample per band)
    w1 = np.ones((4, 4, 1, 1), np.float32)
    conv2d_shifted(x16, w1, None, conv_geometry(x16.shape, w1.shape))
