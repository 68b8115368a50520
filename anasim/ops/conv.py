"""Convolution geometry, im2col and the convolution kernels (NumPy BLAS + Numba).

The public functions here are shared by the ideal ``Conv`` op and the analog layers:

* :func:`conv_geometry` resolves an ONNX ``Conv`` node's attributes (``auto_pad``,
  ``pads``, ``strides``, ``dilations``, ``group``) against concrete input and weight shapes
  into a frozen :class:`ConvGeometry`.
* :func:`im2col` turns an input batch into the matrix whose rows are the input vectors of
  the layer: shape ``(N*P, C*kk)`` with ``P`` output pixels per sample, rows in
  ``(n, od, oh, ow)`` order and columns in ``(c, kd, kh, kw)`` order, so that
  ``im2col(x, g) @ W.reshape(OC, -1).T`` is the (ungrouped) convolution. For a grouped
  convolution, group ``k`` uses the contiguous column block
  ``[k*K_g, (k+1)*K_g)`` with ``K_g = C/group * kk`` (``geom.k_per_group``).
* :func:`cols_to_output` turns the ``(N*P, OC)`` product back into ``(N, OC, *out_shape)``.
* :func:`conv` is the ideal convolution. It does not go through :func:`im2col`:
  3×3 stride-1 convolutions use Winograd F(2×2, 3×3) (:func:`_conv2d_winograd`), other
  1-D/2-D ones a cache-blocked transposed im2col (rows (c, kh, kw), columns = pixels) so
  that ``[W | b] @ cols`` lands directly in NCHW order (:func:`_conv2d_gemm`),
  depthwise ones a direct kernel, 3-D ones a plain im2col + stacked product.

Threads: :func:`run_chunks` runs blocks of the batch on ``numba.get_num_threads()``
Python worker threads that call GIL-free Numba kernels and single-threaded BLAS (the
OpenBLAS thread count is lowered to 1 meanwhile). Blocks are taken from a shared
counter, so a worker that the OS deschedules (a loaded machine) takes fewer blocks
instead of stalling a barrier. Results do not depend on the thread count.

Numba note: inside kernels, arrays are sliced before a loop and indexed by the bare
loop variable; an index like ``base + i`` makes Numba emit a negative-index
wrap-around check that keeps LLVM from vectorizing the loop (about 4× slower).

1-D convolutions run as 2-D ones with a unit leading axis. All kernels keep the
input's float dtype (float32 in practice).
"""

from __future__ import annotations

import ctypes
import itertools
import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from ..errors import UnsupportedOpError

__all__ = [
    "ConvGeometry",
    "conv_geometry",
    "im2col",
    "cols_to_output",
    "conv",
    "conv_transpose",
    "conv_transpose_geometry",
    "padded_input",
    "im2col_rows",
    "rows_to_nchw",
    "run_blocks",
]


# --------------------------------------------------------------------------- threads
class _Blas:
    """Run-time control of the OpenBLAS thread count used by NumPy (no-op where unavailable).

    The convolution runs its own worker threads, each calling single-threaded BLAS on a
    cache-sized chunk; letting BLAS also spawn threads would oversubscribe the cores.
    """

    _NAMES = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
              ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
              ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
              ("openblas_set_num_threads", "openblas_get_num_threads"))
    _lock = threading.Lock()
    _probed = False
    _set = _get = None

    @classmethod
    def _probe(cls) -> None:
        cls._probed = True
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
        except OSError:
            return
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in cls._NAMES:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    cls._set, cls._get = getattr(lib, set_name), getattr(lib, get_name)
                    cls._set.argtypes, cls._set.restype = [ctypes.c_int], None
                    cls._get.argtypes, cls._get.restype = [], ctypes.c_int
                    return

    @classmethod
    def available(cls) -> bool:
        if not cls._probed:
            with cls._lock:
                if not cls._probed:
                    cls._probe()
        return cls._set is not None

    @classmethod
    @contextmanager
    def single_threaded(cls):
        old = cls._get()
        if old != 1:
            cls._set(1)
        try:
            yield
        finally:
            if old != 1:
                cls._set(old)


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def num_threads() -> int:
    """Worker threads for the convolution (Numba's thread count, ``numba.set_num_threads``)."""
    return numba.get_num_threads()


def run_chunks(n_chunks: int, make_state, do_chunk) -> None:
    """Run ``do_chunk(state, i)`` for i in range(n_chunks) on :func:`num_threads` workers.

    Each worker makes its own ``state`` (scratch buffers) once and takes chunk indices
    from a shared counter, so a worker slowed down by other processes takes fewer chunks.
    BLAS runs single-threaded meanwhile. Without BLAS thread control (non-OpenBLAS NumPy)
    the chunks run in the calling thread and BLAS parallelizes each product instead.
    """
    global _POOL, _POOL_SIZE
    n = min(num_threads(), n_chunks)
    if n <= 1 or not _Blas.available():
        state = make_state()
        for i in range(n_chunks):
            do_chunk(state, i)
        return
    if _POOL is None or _POOL_SIZE < n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="anasim")
        _POOL_SIZE = n
    counter = itertools.count()
    failed: list[bool] = []

    def worker(_):
        state = make_state()
        while not failed:
            i = next(counter)
            if i >= n_chunks:
                return
            try:
                do_chunk(state, i)
            except BaseException:
                failed.append(True)
                raise

    with _Blas.single_threaded():
        for f in [_POOL.submit(worker, k) for k in range(n)]:
            f.result()


def run_blocks(n_blocks: int, make_state, do_block) -> None:
    """:func:`run_chunks` for blocks whose BLAS products are small (the analog layers'
    row blocks): BLAS stays single-threaded also when the blocks run in the calling
    thread (one worker), where its own threads would only add overhead."""
    if min(num_threads(), n_blocks) <= 1 and _Blas.available():
        with _Blas.single_threaded():
            run_chunks(n_blocks, make_state, do_block)
    else:
        run_chunks(n_blocks, make_state, do_block)


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ConvGeometry:
    """Resolved geometry of one convolution (batch-size independent).

    All per-axis tuples have one entry per spatial axis (1, 2 or 3 of them).
    """

    in_channels: int
    """C, input channels."""
    out_channels: int
    """OC, output channels (filters)."""
    group: int
    """Number of groups; ``C`` and ``OC`` are both divisible by it."""
    in_shape: tuple[int, ...]
    """Input spatial shape, e.g. (H, W)."""
    kernel: tuple[int, ...]
    """Kernel spatial shape, e.g. (kh, kw)."""
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    """Zero padding before each spatial axis (after auto_pad resolution)."""
    pads_end: tuple[int, ...]
    """Zero padding after each spatial axis."""
    out_shape: tuple[int, ...]
    """Output spatial shape, e.g. (OH, OW)."""

    @property
    def n_spatial(self) -> int:
        return len(self.in_shape)

    @property
    def kernel_size(self) -> int:
        """kk = product of the kernel's spatial dimensions."""
        return math.prod(self.kernel)

    @property
    def channels_per_group(self) -> int:
        return self.in_channels // self.group

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.group

    @property
    def k(self) -> int:
        """Columns of the im2col matrix: C * kk."""
        return self.in_channels * self.kernel_size

    @property
    def k_per_group(self) -> int:
        """Rows of one group's weight matrix: C/group * kk."""
        return self.channels_per_group * self.kernel_size

    @property
    def n_pixels(self) -> int:
        """P = number of output pixels per sample."""
        return math.prod(self.out_shape)

    @property
    def is_pointwise(self) -> bool:
        """A 1×1 convolution with unit strides and no padding (a plain matrix product)."""
        return (all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides)
                and not any(self.pads_begin) and not any(self.pads_end))

    # 3-D views (1-D and 2-D convolutions run as 3-D ones with unit leading axes)
    def _pad3(self, t: tuple[int, ...], fill: int) -> tuple[int, ...]:
        return (fill,) * (3 - len(t)) + tuple(t)


def _spatial_param(value, n: int, default: int, name: str) -> tuple[int, ...]:
    if value is None or len(value) == 0:
        return (default,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries; expected {n} (one per spatial axis)")
    return value


def _auto_pads(auto_pad: str, in_shape, kernel, strides, dilations, pads, *, pool_ceil=False):
    """Resolve ``auto_pad``/``pads`` into (pads_begin, pads_end) as onnxruntime does."""
    n = len(in_shape)
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    if auto_pad in ("NOTSET", ""):
        if pads is None or len(pads) == 0:
            return (0,) * n, (0,) * n
        pads = tuple(int(p) for p in pads)
        if len(pads) != 2 * n:
            raise ValueError(f"pads has {len(pads)} entries; expected {2 * n}")
        return pads[:n], pads[n:]
    if auto_pad == "VALID":
        return (0,) * n, (0,) * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER; got {auto_pad!r}")
    begin, end = [], []
    for i, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-i // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - i)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return tuple(begin), tuple(end)


def conv_geometry(x_shape, w_shape, auto_pad="NOTSET", dilations=None, group=1,
                  kernel_shape=None, pads=None, strides=None) -> ConvGeometry:
    """Resolve an ONNX ``Conv`` node's attributes for input ``x_shape`` and weight ``w_shape``.

    ``x_shape`` is ``(N, C, *spatial)`` (N is ignored), ``w_shape`` is
    ``(OC, C/group, *kernel)``; the keyword arguments are the node's attributes with the
    ONNX defaults. Raises ValueError for inconsistent shapes.
    """
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    n = len(x_shape) - 2
    if n < 1 or len(w_shape) != n + 2:
        raise ValueError(f"Conv needs X of rank >= 3 and W of the same rank; got X {x_shape}, W {w_shape}")
    if n > 3:
        raise UnsupportedOpError(f"Conv with {n} spatial dimensions is not supported (1 to 3 are)")
    group = int(group)
    c, oc = x_shape[1], w_shape[0]
    if group < 1 or c % group or oc % group or w_shape[1] * group != c:
        raise ValueError(f"Conv with group={group}: X has {c} channels and W shape {w_shape}; "
                         f"expected W of shape (OC, C/group, ...) with OC divisible by group")
    kernel = w_shape[2:]
    if kernel_shape is not None and len(kernel_shape) and tuple(int(k) for k in kernel_shape) != kernel:
        raise ValueError(f"kernel_shape {list(kernel_shape)} does not match W's shape {w_shape}")
    in_shape = x_shape[2:]
    strides = _spatial_param(strides, n, 1, "strides")
    dilations = _spatial_param(dilations, n, 1, "dilations")
    pb, pe = _auto_pads(auto_pad, in_shape, kernel, strides, dilations, pads)
    out = tuple((i + b + e - ((k - 1) * d + 1)) // s + 1
                for i, k, s, d, b, e in zip(in_shape, kernel, strides, dilations, pb, pe))
    if any(o < 1 for o in out):
        raise ValueError(f"Conv output would be empty: input {in_shape}, kernel {kernel}, "
                         f"dilations {dilations}, pads {pb + pe}")
    return ConvGeometry(c, oc, group, in_shape, kernel, strides, dilations, pb, pe, out)


def _as5d(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """View (N, C, *spatial) as (N, C, D, H, W), C-contiguous."""
    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[:2] + g._pad3(g.in_shape, 1))


def _params3(g: ConvGeometry):
    return (g._pad3(g.kernel, 1), g._pad3(g.strides, 1), g._pad3(g.dilations, 1),
            g._pad3(g.pads_begin, 0), g._pad3(g.out_shape, 1))


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


def _conv2d_depthwise(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
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

    run_chunks(n, make_state, do_chunk)
    return out


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
        From :func:`conv_geometry`.

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


def _bias_or_zeros(b, oc: int, dtype) -> np.ndarray:
    if b is None:
        return np.zeros(oc, dtype)
    b = np.ascontiguousarray(b, dtype=dtype).reshape(-1)
    if b.shape[0] != oc:
        raise ValueError(f"bias has {b.shape[0]} entries; expected {oc}")
    return b


def _check_input(x: np.ndarray, geom: ConvGeometry) -> None:
    if x.ndim != geom.n_spatial + 2 or x.shape[1] != geom.in_channels or tuple(x.shape[2:]) != geom.in_shape:
        raise ValueError(f"input of shape {x.shape} does not match the geometry "
                         f"(C={geom.in_channels}, spatial {geom.in_shape})")


def _im2col_t(x5: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Per-sample transposed im2col: (N, C*kk, P) with rows in (c, kd, kh, kw) order."""
    (kd, kh, kw), (sd, sh, sw), (dd, dh, dw), (pd, ph, pw), (od, oh, ow) = _params3(geom)
    out = np.empty((x5.shape[0], geom.k, od, oh, ow), dtype=x5.dtype)
    _im2col_t_kernel(x5, out, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw)
    return out.reshape(x5.shape[0], geom.k, od * oh * ow)


# --------------------------------------------------------------------------- Winograd F(2x2, 3x3)
_WINO_MIN_CHANNELS = 16
"""Winograd is used for 3×3, stride-1, undilated, ungrouped 2-D convolutions with at least
this many input channels (below it the transforms cost more than the product saves)."""
_CHUNK_MIN_BYTES, _CHUNK_MAX_BYTES = 1 << 20, 8 << 20
"""Bounds of the per-worker block size: blocks stay near a core's L2 cache, but grow with the
weights (up to twice their size) so that streaming large weights is amortized over more columns."""


def _chunk_bytes(weight_bytes: int) -> int:
    return int(min(_CHUNK_MAX_BYTES, max(_CHUNK_MIN_BYTES, 2 * weight_bytes)))

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


def _conv2d_winograd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
    """3×3 stride-1 convolution by Winograd F(2×2, 3×3): 16 products (OC, C) @ (C, tiles).

    2.25× fewer multiplications than the direct product; the transforms only add and
    halve, so the float32 error stays at the level of the direct sum (about 1e-6
    relative). Blocks of samples run on worker threads like :func:`_conv2d_gemm`.
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

    run_chunks(n_chunks, make_state, do_chunk)
    return out


# --------------------------------------------------------------------------- im2col + GEMM


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
    """Ideal (float) convolution of ``x`` (N, C, *in_shape) with ``w`` (OC, C/g, *kernel).

    Depthwise 1-D/2-D convolutions use a direct kernel (:func:`_conv2d_depthwise`),
    3×3 stride-1 ones with at least ``_WINO_MIN_CHANNELS`` input channels Winograd
    (:func:`_conv2d_winograd`), other 1-D/2-D ones :func:`_conv2d_gemm`; 3-D
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
        return _conv2d_depthwise(np.ascontiguousarray(x), w, b, geom).reshape(out_shape)
    if _winograd_applies(geom):
        return _conv2d_winograd(np.ascontiguousarray(x), w, b, geom)
    if geom.n_spatial <= 2:
        return _conv2d_gemm(np.ascontiguousarray(x), w, b, geom).reshape(out_shape)
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
    return y.reshape(out_shape)


def _conv2d_gemm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
    """1-D/2-D convolution as blocked im2col + BLAS, parallel over blocks of the batch.

    A block is a few whole samples (small feature maps) or a band of output rows of one
    sample (large ones), sized by :func:`_chunk_bytes`. Its im2col matrix (rows (c, kh, kw),
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

    run_chunks(n_chunks, make_state, do_chunk)
    return out


# --------------------------------------------------------------------------- ConvTranspose
def conv_transpose_geometry(x_shape, w_shape, auto_pad="NOTSET", dilations=None, group=1,
                            kernel_shape=None, output_padding=None, output_shape=None,
                            pads=None, strides=None) -> ConvGeometry:
    """Resolve an ONNX ``ConvTranspose`` node's attributes (W is (C, OC/group, *kernel)).

    The returned geometry describes the *forward* convolution whose transpose this is:
    ``in_shape`` is the ConvTranspose output, ``out_shape`` its input.
    """
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    n = len(x_shape) - 2
    if n < 1 or len(w_shape) != n + 2:
        raise ValueError(f"ConvTranspose needs X of rank >= 3 and W of the same rank; got {x_shape}, {w_shape}")
    if n > 3:
        raise UnsupportedOpError(f"ConvTranspose with {n} spatial dimensions is not supported (1 to 3 are)")
    group = int(group)
    c = x_shape[1]
    if group < 1 or c % group or w_shape[0] != c:
        raise ValueError(f"ConvTranspose with group={group}: X has {c} channels, W shape {w_shape}")
    oc = w_shape[1] * group
    kernel = w_shape[2:]
    if kernel_shape is not None and len(kernel_shape) and tuple(int(k) for k in kernel_shape) != kernel:
        raise ValueError(f"kernel_shape {list(kernel_shape)} does not match W's shape {w_shape}")
    in_shape = x_shape[2:]
    strides = _spatial_param(strides, n, 1, "strides")
    dilations = _spatial_param(dilations, n, 1, "dilations")
    opad = _spatial_param(output_padding, n, 0, "output_padding")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    full = [s * (i - 1) + op + (k - 1) * d + 1 for i, s, op, k, d in zip(in_shape, strides, opad, kernel, dilations)]
    if output_shape is not None and len(output_shape):
        out = tuple(int(o) for o in output_shape)[-n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = tuple(i * s for i, s in zip(in_shape, strides))
    else:
        out = None
    if out is not None:
        pb, pe = [], []
        for f, o in zip(full, out):
            total = max(0, f - o)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                pb.append(small), pe.append(big)
            else:
                pb.append(big), pe.append(small)
        pb, pe = tuple(pb), tuple(pe)
    else:
        pb, pe = _auto_pads("NOTSET" if auto_pad != "VALID" else "VALID", in_shape, kernel, strides,
                            dilations, pads)
        out = tuple(f - b - e for f, b, e in zip(full, pb, pe))
    if any(o < 1 for o in out):
        raise ValueError(f"ConvTranspose output would be empty: {out}")
    # forward-conv view: input = ConvTranspose output (out), output = ConvTranspose input
    return ConvGeometry(oc, c, group, out, kernel, strides, dilations, pb, pe, in_shape)


def conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
    """Ideal ConvTranspose with the geometry of :func:`conv_transpose_geometry`."""
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
    rng = np.random.default_rng(0)
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
