"""3×3 stride-1 convolutions by Winograd F(2×2, 3×3), and the cache of transformed weights.

16 products (OC, C) @ (C, tiles) per block of samples instead of the direct 9·C-term sums;
blocks of samples run on the worker threads (:func:`anasim.threads.run_chunks`).
:func:`_winograd_applies` says which convolutions take this path (:func:`anasim.ops.conv.conv`
dispatches). See :mod:`anasim.ops.im2col` for the Numba indexing note.
"""

from __future__ import annotations

import weakref

import numpy as np
from numba import njit

from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _bias_or_zeros, _chunk_bytes
from .epilogue import Epilogue


_WINO_MIN_CHANNELS = 16
"""Winograd is used for 3×3, stride-1, undilated, ungrouped 2-D convolutions with at least
this many input channels (below it the transforms cost more than the product saves)."""

_WEIGHT_CACHE: dict[int, tuple] = {}


def _cached_weight_transform(w: np.ndarray, key: str, fn):
    """``fn(w)``, cached per weight array (constant weights are transformed once).

    The cache holds a weak reference to ``w`` and a fingerprint: data pointer, shape,
    strides and a checksum of all its bytes (about 1 ms per 10 MB), so a weight array
    changed in place is transformed again.
    """
    def fingerprint(a):
        words = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        words = words[:words.size // 8 * 8].view(np.uint64)
        mixed = int(np.bitwise_xor.reduce(words)) if words.size else 0
        return (a.ctypes.data, a.shape, a.strides, a.dtype.str, int(words.sum(dtype=np.uint64)), mixed,
                bytes(np.ascontiguousarray(a).reshape(-1).view(np.uint8)[words.size * 8:]))

    k = id(w)
    hit = _WEIGHT_CACHE.get(k)
    fp = fingerprint(w)
    if hit is not None and hit[0]() is w and hit[1] == fp and key in hit[2]:
        return hit[2][key]
    try:
        ref = weakref.ref(w, lambda _r, k=k: _WEIGHT_CACHE.pop(k, None))
    except TypeError:
        return fn(w)
    value = fn(w)
    if hit is not None and hit[0]() is w and hit[1] == fp:
        hit[2][key] = value
    else:
        _WEIGHT_CACHE[k] = (ref, fp, {key: value})
    return value


def _winograd_weights(w: np.ndarray) -> np.ndarray:
    """U = G g Gᵀ for every (oc, c) 3×3 filter, as (16, OC, C) in ``w``'s dtype (computed in float64)."""
    oc, c = w.shape[:2]
    g_mat = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
    t = (w.astype(np.float64).reshape(oc * c * 3, 3) @ g_mat.T).reshape(oc * c, 3, 4)  # [f, i, b]
    t = t.transpose(0, 2, 1).reshape(-1, 3) @ g_mat.T  # [(f, b), a]
    u = t.reshape(oc, c, 4, 4).transpose(3, 2, 0, 1)  # [a, b, oc, c]
    return np.ascontiguousarray(u.reshape(16, oc, c), dtype=w.dtype)


@njit(nogil=True, cache=True)
def _wino_in_kernel(x, s0, m, c_, h_, w_, ph, pw, th_, tw_, dummy, xeo, z, v):
    """Winograd input transform V = Bᵀ d B of samples [s0, s0+m) of ``x`` (flat NCHW).

    ``xeo[0]``/``xeo[1]`` receive the even/odd rows of the zero-padded input planes,
    (m, C, TH+1, 2·TW+2) flat with slack at the end (the caller zeroes them once; only
    data positions are written), so that the row pass runs as one flat loop over the
    block. ``z`` (8 rows) is scratch; ``v`` gets the 16 planes (C, T). With ``dummy``
    each tile row carries one extra (ignored) tile, which keeps the column pass flat
    too; tiles per sample are then TH·(TW+1), else TH·TW.
    """
    xe, xo = xeo[0], xeo[1]
    ze0, ze1, ze2, ze3, zo0, zo1, zo2, zo3 = z[0], z[1], z[2], z[3], z[4], z[5], z[6], z[7]
    v0, v1, v2, v3, v4, v5, v6, v7 = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
    v8, v9, v10, v11, v12, v13, v14, v15 = v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]
    twp = tw_ + 1
    wp = 2 * twp
    tws = twp if dummy else tw_
    t_all = m * th_ * tws
    nq = m * c_ * (th_ + 1) * twp
    plane = (th_ + 1) * wp
    for s in range(m):
        for c in range(c_):
            xb = ((s0 + s) * c_ + c) * h_ * w_
            pb = (s * c_ + c) * plane
            for y in range(h_):
                r = y + ph
                o = pb + (r // 2) * wp + pw
                src = x[xb + y * w_:xb + (y + 1) * w_]
                dst = xe[o:o + w_] if r % 2 == 0 else xo[o:o + w_]
                for j in range(w_):
                    dst[j] = src[j]
    for q in range(nq):  # d B along each padded row (tiles start every 2 columns)
        x0 = xe[2 * q]
        x1 = xe[2 * q + 1]
        x2 = xe[2 * q + 2]
        x3 = xe[2 * q + 3]
        ze0[q] = x0 - x2
        ze1[q] = x1 + x2
        ze2[q] = x2 - x1
        ze3[q] = x1 - x3
    for q in range(nq):
        x0 = xo[2 * q]
        x1 = xo[2 * q + 1]
        x2 = xo[2 * q + 2]
        x3 = xo[2 * q + 3]
        zo0[q] = x0 - x2
        zo1[q] = x1 + x2
        zo2[q] = x2 - x1
        zo3[q] = x1 - x3
    # Bᵀ (d B) across rows 2th .. 2th+3 = even[th], odd[th], even[th+1], odd[th+1]
    for s in range(m):
        for c in range(c_):
            zb = (s * c_ + c) * (th_ + 1) * twp
            if dummy:
                o = c * t_all + s * th_ * twp
                n2 = th_ * twp
                _wino_cols(ze0, zo0, zb, twp, n2, v0, v4, v8, v12, o)
                _wino_cols(ze1, zo1, zb, twp, n2, v1, v5, v9, v13, o)
                _wino_cols(ze2, zo2, zb, twp, n2, v2, v6, v10, v14, o)
                _wino_cols(ze3, zo3, zb, twp, n2, v3, v7, v11, v15, o)
            else:
                for th in range(th_):
                    o = c * t_all + (s * th_ + th) * tw_
                    ra = zb + th * twp
                    _wino_cols(ze0, zo0, ra, twp, tw_, v0, v4, v8, v12, o)
                    _wino_cols(ze1, zo1, ra, twp, tw_, v1, v5, v9, v13, o)
                    _wino_cols(ze2, zo2, ra, twp, tw_, v2, v6, v10, v14, o)
                    _wino_cols(ze3, zo3, ra, twp, tw_, v3, v7, v11, v15, o)


@njit(nogil=True, cache=True, inline="always")
def _wino_cols(ze, zo, zb, twp, n, va, vb, vc, vd, o):
    """One column pass: rows (even[k], odd[k], even[k+1], odd[k+1]) -> 4 planes of V.

    Slices first, then index by the loop variable only: an index like ``zb + q`` makes
    Numba emit a negative-index wrap-around check that stops LLVM from vectorizing.
    """
    a = ze[zb:zb + n]
    b = zo[zb:zb + n]
    cc = ze[zb + twp:zb + twp + n]
    d = zo[zb + twp:zb + twp + n]
    oa = va[o:o + n]
    ob = vb[o:o + n]
    oc = vc[o:o + n]
    od = vd[o:o + n]
    for q in range(n):
        oa[q] = a[q] - cc[q]
        ob[q] = b[q] + cc[q]
        oc[q] = cc[q] - b[q]
        od[q] = b[q] - d[q]


@njit(nogil=True, cache=True)
def _wino_out_kernel(bias, out, s0, m, oc_, oh, ow, th_, tw_, tws, ys, mm):
    """Winograd output transform Y = Aᵀ M A (+ bias) of samples [s0, s0+m) into NCHW ``out``.

    ``ys`` (4, TH·tws) is scratch; ``mm`` holds the 16 product planes (OC, T). Arrays are
    sliced before each loop so that every index is a bare loop variable (see
    :func:`_wino_cols`).
    """
    y0, y1, y2, y3 = ys[0], ys[1], ys[2], ys[3]
    m0, m1, m2, m3, m4, m5, m6, m7 = mm[0], mm[1], mm[2], mm[3], mm[4], mm[5], mm[6], mm[7]
    m8, m9, m10, m11, m12, m13, m14, m15 = mm[8], mm[9], mm[10], mm[11], mm[12], mm[13], mm[14], mm[15]
    t_all = m * th_ * tws
    p_ = oh * ow
    fth = oh // 2
    ftw = ow // 2
    nt = th_ * tws
    for s in range(m):
        for o in range(oc_):
            bo = bias[o]
            t0 = o * t_all + s * nt
            t1 = t0 + nt
            a0, a1, a2, a3 = m0[t0:t1], m1[t0:t1], m2[t0:t1], m3[t0:t1]
            a4, a5, a6, a7 = m4[t0:t1], m5[t0:t1], m6[t0:t1], m7[t0:t1]
            a8, a9, a10, a11 = m8[t0:t1], m9[t0:t1], m10[t0:t1], m11[t0:t1]
            a12, a13, a14, a15 = m12[t0:t1], m13[t0:t1], m14[t0:t1], m15[t0:t1]
            for t in range(nt):  # all tiles of the plane in one flat loop
                p0 = a0[t] + a1[t] + a2[t]
                q0 = a1[t] - a2[t] - a3[t]
                p1 = a4[t] + a5[t] + a6[t]
                q1 = a5[t] - a6[t] - a7[t]
                p2 = a8[t] + a9[t] + a10[t]
                q2 = a9[t] - a10[t] - a11[t]
                p3 = a12[t] + a13[t] + a14[t]
                q3 = a13[t] - a14[t] - a15[t]
                y0[t] = p0 + p1 + p2 + bo
                y1[t] = q0 + q1 + q2 + bo
                y2[t] = p1 - p2 - p3 + bo
                y3[t] = q1 - q2 - q3 + bo
            ob = ((s0 + s) * oc_ + o) * p_
            for th in range(th_):
                r0 = ob + 2 * th * ow
                yb = th * tws
                e0, e1 = y0[yb:yb + tw_], y1[yb:yb + tw_]
                row = out[r0:r0 + ow]
                for t in range(ftw):
                    row[2 * t] = e0[t]
                    row[2 * t + 1] = e1[t]
                if ow % 2:
                    row[ow - 1] = e0[tw_ - 1]
                if th < fth:
                    e2, e3 = y2[yb:yb + tw_], y3[yb:yb + tw_]
                    row = out[r0 + ow:r0 + 2 * ow]
                    for t in range(ftw):
                        row[2 * t] = e2[t]
                        row[2 * t + 1] = e3[t]
                    if ow % 2:
                        row[ow - 1] = e2[tw_ - 1]


def _winograd_applies(geom: ConvGeometry) -> bool:
    return (geom.n_spatial == 2 and geom.kernel == (3, 3) and geom.strides == (1, 1)
            and geom.dilations == (1, 1) and geom.group == 1
            and geom.in_channels >= _WINO_MIN_CHANNELS)


def _conv2d_winograd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry,
                     epilogue: Epilogue | None = None) -> np.ndarray:
    """3×3 stride-1 convolution by Winograd F(2×2, 3×3): 16 products (OC, C) @ (C, tiles).

    2.25× fewer multiplications than the direct product; the transforms only add and
    halve, so the float32 error stays at the level of the direct sum (about 1e-6
    relative). Blocks of samples run on worker threads like
    :func:`~anasim.ops.conv._conv2d_gemm`.
    """
    n, c, h, wd = x.shape
    oc = geom.out_channels
    (oh, ow), (ph, pw) = geom.out_shape, geom.pads_begin
    th_, tw_ = (oh + 1) // 2, (ow + 1) // 2
    dummy = tw_ >= 8  # flat loops win once the extra tile per row costs <= 1/8 more product
    tws = tw_ + 1 if dummy else tw_
    dtype = x.dtype
    u = _cached_weight_transform(w, "winograd_f2x3", _winograd_weights)
    bias = _bias_or_zeros(b, oc, dtype)
    tiles = th_ * tws
    budget = _chunk_bytes(u.nbytes)
    nc = max(1, min(n, budget // (16 * (c + oc) * tiles * dtype.itemsize)))
    out = np.empty((n, oc, oh, ow), dtype)
    of = out.reshape(-1)
    n_chunks = -(-n // nc)
    wp = 2 * tw_ + 2
    plane = (th_ + 1) * wp
    xf = x.reshape(-1)

    def make_state():
        v = np.empty((16, c * nc * tiles), dtype)
        mm = np.empty((16, oc * nc * tiles), dtype)
        xeo = np.zeros((2, nc * c * plane + 4), dtype)  # zero padding stays zero
        z = np.empty((8, nc * c * (th_ + 1) * (tw_ + 1)), dtype)
        ys = np.empty((4, th_ * tws), dtype)
        return v, mm, xeo, z, ys

    def do_chunk(state, i):
        v, mm, xeo, z, ys = state
        s0 = i * nc
        m = min(nc, n - s0)
        t = m * tiles
        if t != v.shape[1] // c:  # last, partial chunk
            v, mm = v[:, :c * t], mm[:, :oc * t]
        _wino_in_kernel(xf, s0, m, c, h, wd, ph, pw, th_, tw_, dummy, xeo, z, v)
        np.matmul(u, v.reshape(16, c, t), out=mm.reshape(16, oc, t))
        _wino_out_kernel(bias, of, s0, m, oc, oh, ow, th_, tw_, tws, ys, mm)
        if epilogue is not None:  # on the block just written, while it is in cache
            epilogue.apply(of, s0 * oc * oh * ow, (s0 + m) * oc * oh * ow)

    run_chunks(n_chunks, make_state, do_chunk)
    return out
