"""3×3 stride-1 convolutions by Winograd F(4×4, 3×3), with the transforms vectorised over channels.

Each 4×4 block of output pixels (a *tile*) comes from a 6×6 patch d of the zero-padded
input; per (input channel c, output channel o) the tile is

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

with Lavin & Gray's matrices for the points 0, ±1, ±2 (``_BT``, ``_G``, ``_AT``). Summed
over c, the 36 element-wise products become 36 matrix products, one per position ξ of the
6×6 transform:

    M[ξ] (tiles × OC) = V[ξ] (tiles × C) @ Uᵀ[ξ] (C × OC)

9·16 = 144 multiplications of the direct sum per tile and channel pair become 36: 4×
fewer (F(2×2, 3×3) in :mod:`anasim.ops.winograd` saves 2.25×). The transforms only add
and multiply by 2, 4, 5 and 8, and the float32 result stays within a few 1e-6 of the
output's scale (the direct sum: about 1e-7; tested against it).

Layout: a block of samples is copied channels-last into a zero-padded buffer
``(m, Hp, Wp, C)``, so that every transform step is a loop over contiguous channels
(vectorised, and long even for 8×8 or 4×4 maps, where loops over tiles would be 1–2 long);
the products run with the tile index as rows; the output transform writes channels-last
and one transpose per sample gives NCHW, with bias and the epilogue applied on the block.
Blocks of samples run on the worker threads (:func:`anasim.threads.run_chunks`,
single-threaded BLAS in each), so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _bias_or_zeros, _chunk_bytes
from .epilogue import Epilogue
from .winograd import _cached_weight_transform

__all__ = ["f4_applies", "conv2d_winograd_f4", "F4_MIN_CHANNELS"]

F4_MIN_CHANNELS = 32
"""F(4×4, 3×3) takes 3×3 stride-1 convolutions with at least this many input channels.
Measured at batch 128 on 2 threads against the next best path: 64 ch, 8×8: 3.8 -> 1.7 ms;
32 ch, 16×16: 3.3 -> 2.7 ms; 64 ch, 32×32: 34 -> 26 ms; 512 ch, 2×2: 24 -> 16 ms; with 16
channels the thin products lose (16×16: 1.4 -> 1.7 ms, 32×32: 3.7 -> 6.8 ms)."""

_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)


def f4_applies(geom: ConvGeometry, dtype) -> bool:
    """Whether :func:`anasim.ops.conv.conv` takes :func:`conv2d_winograd_f4`: float32, 2-D,
    3×3, stride 1, undilated, ungrouped, at least :data:`F4_MIN_CHANNELS` input channels
    and an output at least 2 pixels high and wide (on a 1×1 map 8 of the 9 taps read
    padding, which the direct product skips for free and the transform does not)."""
    return (np.dtype(dtype) == np.float32 and geom.n_spatial == 2 and geom.kernel == (3, 3)
            and geom.strides == (1, 1) and geom.dilations == (1, 1) and geom.group == 1
            and geom.in_channels >= F4_MIN_CHANNELS and min(geom.out_shape) >= 2)


def _f4_weights(w: np.ndarray) -> np.ndarray:
    """Uᵀ: (G g Gᵀ)[ξ] for every (oc, c) filter as (36, C, OC) float32 (computed in float64)."""
    u = np.einsum("ia,ocab,jb->ijco", _G, w.astype(np.float64), _G)  # [i, j, c, oc]
    return np.ascontiguousarray(u.reshape(36, w.shape[1], w.shape[0]), dtype=np.float32)


@njit(nogil=True, cache=True)
def _pack(x, s0, m, c_, h_, w_, ph, pw, hp, wp, xq):
    """xq[(s·Hp + y + ph)·Wp + j + pw, c] = x[s0 + s, c, y, j]: the block's samples
    channels-last in the padded buffer (its padding is zeroed once by the caller)."""
    for s in range(m):
        for y in range(h_):
            for c in range(c_):
                src = x[((s0 + s) * c_ + c) * h_ * w_ + y * w_:((s0 + s) * c_ + c) * h_ * w_ + (y + 1) * w_]
                r0 = (s * hp + y + ph) * wp + pw
                for j in range(w_):
                    xq[r0 + j, c] = src[j]


@njit(nogil=True, cache=True, inline="always")
def _bt6(x0, x1, x2, x3, x4, x5, o0, o1, o2, o3, o4, o5, n):
    """(o0..o5) = Bᵀ (x0..x5), element-wise over n channels."""
    four = np.float32(4.0)
    five = np.float32(5.0)
    two = np.float32(2.0)
    for c in range(n):
        a0, a1, a2, a3, a4, a5 = x0[c], x1[c], x2[c], x3[c], x4[c], x5[c]
        o0[c] = (four * a0 - five * a2) + a4
        o1[c] = (a3 + a4) - four * (a1 + a2)
        o2[c] = (a4 - a3) + four * (a1 - a2)
        o3[c] = (a4 - a2) + two * (a3 - a1)
        o4[c] = (a4 - a2) - two * (a3 - a1)
        o5[c] = (four * a1 - five * a3) + a5


@njit(nogil=True, cache=True)
def _input_transform(xq, m, th, tw, hp, wp, c_, z, v):
    """v[ξ, t, :] = (Bᵀ d B)[ξ] of tile t = (s·TH + ti)·TW + tj over all channels.
    ``z`` (6, 6, C) is scratch: the row pass d B, then the column pass Bᵀ (d B)."""
    for s in range(m):
        for ti in range(th):
            for tj in range(tw):
                t = (s * th + ti) * tw + tj
                for i in range(6):  # z[i, k] = (d B)[i, k]: row i of the patch
                    r = (s * hp + 4 * ti + i) * wp + 4 * tj
                    _bt6(xq[r], xq[r + 1], xq[r + 2], xq[r + 3], xq[r + 4], xq[r + 5],
                         z[i, 0], z[i, 1], z[i, 2], z[i, 3], z[i, 4], z[i, 5], c_)
                for k in range(6):  # v[a·6 + k] = (Bᵀ z)[a, k]: column k
                    _bt6(z[0, k], z[1, k], z[2, k], z[3, k], z[4, k], z[5, k],
                         v[k, t], v[6 + k, t], v[12 + k, t], v[18 + k, t], v[24 + k, t], v[30 + k, t], c_)


@njit(nogil=True, cache=True, inline="always")
def _at6(x0, x1, x2, x3, x4, x5, o0, o1, o2, o3, n):
    """(o0..o3) = Aᵀ (x0..x5), element-wise over n channels."""
    two = np.float32(2.0)
    four = np.float32(4.0)
    eight = np.float32(8.0)
    for c in range(n):
        a0, a1, a2, a3, a4, a5 = x0[c], x1[c], x2[c], x3[c], x4[c], x5[c]
        p12 = a1 + a2
        m12 = a1 - a2
        p34 = a3 + a4
        m34 = a3 - a4
        o0[c] = (a0 + p12) + p34
        o1[c] = m12 + two * m34
        o2[c] = p12 + four * p34
        o3[c] = (m12 + eight * m34) + a5


@njit(nogil=True, cache=True)
def _output_transform(mm, bias, m, th, tw, oh, ow, oc_, z, yb):
    """yb[(s·OH + y)·OW + x, :] = (Aᵀ M A) + bias for every tile, channels-last (the
    pixels of partial tiles beyond OH × OW are dropped). ``z`` (4, 6, OC) and the last
    four rows of ``yb`` are scratch."""
    nrow = yb.shape[0] - 4
    for s in range(m):
        for ti in range(th):
            for tj in range(tw):
                t = (s * th + ti) * tw + tj
                for j in range(6):  # z[a, j] = (Aᵀ M)[a, j]
                    _at6(mm[j, t], mm[6 + j, t], mm[12 + j, t], mm[18 + j, t], mm[24 + j, t], mm[30 + j, t],
                         z[0, j], z[1, j], z[2, j], z[3, j], oc_)
                for a in range(4):  # row a of the tile: (z A)[a, 0..3]
                    y = 4 * ti + a
                    r = (s * oh + y) * ow + 4 * tj
                    full = y < oh and 4 * tj + 4 <= ow
                    if full:
                        d0, d1, d2, d3 = yb[r], yb[r + 1], yb[r + 2], yb[r + 3]
                    else:  # a partial tile: compute into scratch, copy what is inside
                        d0, d1, d2, d3 = yb[nrow], yb[nrow + 1], yb[nrow + 2], yb[nrow + 3]
                    _at6(z[a, 0], z[a, 1], z[a, 2], z[a, 3], z[a, 4], z[a, 5], d0, d1, d2, d3, oc_)
                    for o in range(oc_):
                        b = bias[o]
                        d0[o] += b
                        d1[o] += b
                        d2[o] += b
                        d3[o] += b
                    if not full and y < oh:
                        for b4 in range(min(4, ow - 4 * tj)):
                            yb[r + b4, :] = yb[nrow + b4, :]


@njit(nogil=True, cache=True)
def _unpack(yb, s0, m, oc_, p_, out):
    """out[s0 + s, o, p] = yb[s·P + p, o] (channels-last to NCHW), in blocks of 8 channels."""
    for s in range(m):
        src = yb[s * p_:(s + 1) * p_]
        for o0 in range(0, oc_, 8):
            o1 = min(oc_, o0 + 8)
            for o in range(o0, o1):
                dst = out[((s0 + s) * oc_ + o) * p_:((s0 + s) * oc_ + o + 1) * p_]
                for p in range(p_):
                    dst[p] = src[p, o]


def conv2d_winograd_f4(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry,
                       epilogue: Epilogue | None = None) -> np.ndarray:
    """3×3 stride-1 convolution of ``x`` (float32 NCHW) by Winograd F(4×4, 3×3) (module docstring)."""
    n, c, h, wd = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    oc = geom.out_channels
    (oh, ow), (ph, pw) = geom.out_shape, geom.pads_begin
    th, tw = -(-oh // 4), -(-ow // 4)
    hp, wp = 4 * th + 2, 4 * tw + 2  # the padded patch grid (zeros beyond the input)
    ut = _cached_weight_transform(np.asarray(w, np.float32), "winograd_f4x3", _f4_weights)
    bias = _bias_or_zeros(b, oc, np.float32)
    tiles = th * tw
    per_sample = 4 * (36 * tiles * (c + oc) + hp * wp * c + oh * ow * oc)
    nc = max(1, min(n, _chunk_bytes(ut.nbytes) // per_sample))
    out = np.empty((n, oc, oh, ow), np.float32)
    of = out.reshape(-1)
    xf = x.reshape(-1)
    p_ = oh * ow

    def make_state():
        xq = np.zeros((nc * hp * wp, c), np.float32)  # the padding stays zero
        v = np.empty((36, nc * tiles, c), np.float32)
        mm = np.empty((36, nc * tiles, oc), np.float32)
        yb = np.empty((nc * p_ + 4, oc), np.float32)
        zi = np.empty((6, 6, c), np.float32)
        zo = np.empty((4, 6, oc), np.float32)
        return xq, v, mm, yb, zi, zo

    def do_chunk(state, i):
        xq, v, mm, yb, zi, zo = state
        s0 = i * nc
        m = min(nc, n - s0)
        t = m * tiles
        _pack(xf, s0, m, c, h, wd, ph, pw, hp, wp, xq)
        _input_transform(xq, m, th, tw, hp, wp, c, zi, v)
        np.matmul(v[:, :t], ut, out=mm[:, :t])
        _output_transform(mm, bias, m, th, tw, oh, ow, oc, zo, yb)
        _unpack(yb, s0, m, oc, p_, of)
        if epilogue is not None:  # on the block just written, while it is in cache
            epilogue.apply(of, s0 * oc * p_, (s0 + m) * oc * p_)

    run_chunks(-(-n // nc), make_state, do_chunk)
    return out
