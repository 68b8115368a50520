"""3×3 stride-1 convolutions with few input channels (a network's first layer): direct sums.

With 1–4 input channels a convolution's im2col product has K = 9–36, too thin for sgemm
(ResNet-20's 3 → 16 first layer: 2.5 ms per batch of 128 on 2 threads against
onnxruntime's 0.8 in the network, most of it spent building and transposing the im2col
matrix). :func:`conv2d_thin` instead pads each sample's planes once into a small scratch,
then for every output channel sums the nine taps of each input channel, the taps written
out so that the loop over the plane's (padded-pitch) positions vectorises with the sum in
a register, and writes the plane with the bias and the epilogue. The sums are fused
multiply-adds from 0 in (channel, row, column) order, then the bias: the order and the
rounding of OpenBLAS's sgemm kernel on the im2col product with the bias as its last row,
so the numbers are those of the im2col path (equal on the real first layers; the one
difference is where OpenBLAS splits a tiny product differently), which keeps quantized
models' parity with onnxruntime where it was (``tests/test_quantized.py``; bias-first
separate multiply-adds lost 1-2 % of its exactly equal outputs).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels.simd import wide_vectors
from ..threads import run_chunks
from .conv_geometry import ConvGeometry, _bias_or_zeros
from .epilogue import Epilogue, activation, epilogue_codes

__all__ = ["thin_applies", "conv2d_thin", "THIN_MAX_CHANNELS"]

THIN_MAX_CHANNELS = 4
"""Float32 3×3 stride-1 undilated convolutions (one group) with at most this many input
channels run as direct sums."""

_U = np.uint64


def thin_applies(geom: ConvGeometry, dtype) -> bool:
    """Whether :func:`anasim.ops.conv.conv` takes :func:`conv2d_thin`: float32, 2-D, one
    group, at most :data:`THIN_MAX_CHANNELS` input channels, a 3×3 kernel, unit strides
    and dilations, padding of at most 1 on every side."""
    return (np.dtype(dtype) == np.float32 and geom.n_spatial == 2 and geom.group == 1
            and geom.in_channels <= THIN_MAX_CHANNELS and tuple(geom.kernel) == (3, 3)
            and tuple(geom.strides) == (1, 1) and tuple(geom.dilations) == (1, 1)
            and max(tuple(geom.pads_begin) + tuple(geom.pads_end)) <= 1)


@njit(nogil=True, cache=True, fastmath={"contract"})
def _thin3x3_kernel(xf, dims, w, b, s0, s1, xq, acc, of, rf, has_res, kind, lo, hi):
    """Samples s0..s1 of a 3×3 stride-1 convolution: ``xf``, ``of``, ``rf`` the flat input,
    output and residual; ``dims`` = (C, H, W, OC, OH, OW, ph, pw, hq, wq); ``xq`` the
    scratch of the C zero-padded planes (hq rows of pitch wq, zeros outside the data kept
    from the first call), ``acc`` (OH·wq) one output plane at the padded pitch (columns
    OW..wq of each row are computed and dropped). ``contract``: each ``v + w·x`` is one
    fused multiply-add (the only fast-math flag; no reassociation). Flat uint64 indices,
    no array views."""
    wide_vectors()
    c_, h_, w_, oc, oh, ow, ph, pw, hq, wq = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                                             dims[6], dims[7], dims[8], dims[9])
    pl = hq * wq
    n_acc = _U(oh * wq)
    for s in range(s0, s1):
        for c in range(c_):
            src = _U((s * c_ + c) * h_ * w_)
            for i in range(h_):
                d = _U(c * pl + (i + ph) * wq + pw)
                sr = src + _U(i * w_)
                for j in range(_U(w_)):
                    xq[d + j] = xf[sr + j]
        for o in range(oc):
            for q in range(n_acc):
                acc[q] = np.float32(0.0)
            for c in range(c_):
                k = (o * c_ + c) * 9
                w0, w1, w2, w3, w4 = w[k], w[k + 1], w[k + 2], w[k + 3], w[k + 4]
                w5, w6, w7, w8 = w[k + 5], w[k + 6], w[k + 7], w[k + 8]
                t0 = _U(c * pl)
                t3 = t0 + _U(wq)
                t6 = t3 + _U(wq)
                for q in range(n_acc):
                    v = acc[q] + w0 * xq[t0 + q]
                    v = v + w1 * xq[t0 + q + _U(1)]
                    v = v + w2 * xq[t0 + q + _U(2)]
                    v = v + w3 * xq[t3 + q]
                    v = v + w4 * xq[t3 + q + _U(1)]
                    v = v + w5 * xq[t3 + q + _U(2)]
                    v = v + w6 * xq[t6 + q]
                    v = v + w7 * xq[t6 + q + _U(1)]
                    acc[q] = v + w8 * xq[t6 + q + _U(2)]
            ob = (s * oc + o) * oh * ow
            for i in range(oh):
                d = _U(ob + i * ow)
                a = _U(i * wq)
                for j in range(_U(ow)):
                    v = acc[a + j] + b[o]
                    if has_res:
                        v = v + rf[d + j]
                    of[d + j] = activation(v, kind, lo, hi)


def conv2d_thin(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry,
                epilogue: Epilogue | None = None) -> np.ndarray:
    """The convolution (module docstring) over blocks of samples on the worker threads."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, wd = x.shape
    oc = geom.out_channels
    (ph, pw), (oh, ow) = geom.pads_begin, geom.out_shape
    hq, wq = oh + 2, ow + 2  # the rows and columns every tap of every output reads
    out = np.empty((n, oc, oh, ow), np.float32)
    kind, a, bb, res = epilogue_codes(epilogue)
    of = out.reshape(-1)
    rf = of if res is None else np.ascontiguousarray(res, dtype=np.float32).reshape(-1)
    wf = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    bias = _bias_or_zeros(b, oc, np.float32)
    dims = np.array([c, h, wd, oc, oh, ow, ph, pw, hq, wq], np.int64)
    per = max(1, min(n, (1 << 18) // max(1, 4 * oc * oh * ow)))  # about 256 KiB of output per block
    blocks = -(-n // per)

    def make_state():
        # + 2: the last row's dropped columns read two positions past the last plane
        return np.zeros(c * hq * wq + 2, np.float32), np.empty(oh * wq, np.float32)

    def do_block(state, i):
        xq, acc = state
        _thin3x3_kernel(x.reshape(-1), dims, wf, bias, i * per, min(n, (i + 1) * per), xq, acc, of, rf,
                        res is not None, kind, a, bb)

    run_chunks(blocks, make_state, do_block)
    return out
