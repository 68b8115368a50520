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
* :func:`conv` is the ideal convolution. It does not go through :func:`im2col`: it uses
  the transposed per-sample layout ``(N, K, P)`` (each row is a shifted copy of an input
  plane, cheap to build) so that one stacked BLAS product ``W @ cols`` lands directly in
  NCHW order; 1×1 convolutions skip the copy altogether and depthwise convolutions use a
  direct Numba kernel.

1-D and 2-D convolutions are run by the same 3-D kernels with unit leading spatial
dimensions. All kernels keep the input's float dtype (float32 in practice).
"""

from __future__ import annotations

import ctypes
import itertools
import math
import threading
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


@njit(parallel=True, cache=True)
def _depthwise_kernel(x, w, b, out, mult, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    """Direct depthwise convolution: out[n, c*mult+m] = sum_taps w[c*mult+m] * x[n, c] (+ b)."""
    n_, c_, d_, h_, w_ = x.shape
    oc_ = out.shape[1]
    od, oh, ow = out.shape[2], out.shape[3], out.shape[4]
    for no in prange(n_ * oc_):
        n = no // oc_
        o = no - n * oc_
        c = o // mult
        dst = out[n, o]
        init = b[o]
        for i in range(od):
            for j in range(oh):
                for k in range(ow):
                    dst[i, j, k] = init
        for a in range(kd):
            i_lo, i_hi = _valid_range(od, sd, pd, a * dd, d_)
            for bb in range(kh):
                j_lo, j_hi = _valid_range(oh, sh, ph, bb * dh, h_)
                for e in range(kw):
                    k_lo, k_hi = _valid_range(ow, sw, pw, e * dw, w_)
                    wt = w[o, 0, a, bb, e]
                    x0 = -pw + e * dw
                    for i in range(i_lo, i_hi):
                        for j in range(j_lo, j_hi):
                            src = x[n, c, i * sd - pd + a * dd, j * sh - ph + bb * dh]
                            row = dst[i, j]
                            if sw == 1:
                                for k in range(k_lo, k_hi):
                                    row[k] += wt * src[k + x0]
                            else:
                                for k in range(k_lo, k_hi):
                                    row[k] += wt * src[k * sw + x0]


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


_CHUNK_BYTES = 1 << 20
"""Target size of one worker's im2col block: small enough to stay in a core's L2 cache."""


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geom: ConvGeometry) -> np.ndarray:
    """Ideal (float) convolution of ``x`` (N, C, *in_shape) with ``w`` (OC, C/g, *kernel).

    Depthwise convolutions use a direct kernel; other 1-D and 2-D convolutions use
    :func:`_conv2d_gemm` (cache-sized im2col blocks, one BLAS product each, on worker
    threads); 3-D convolutions a plain im2col + stacked product.
    """
    _check_input(x, geom)
    dtype = x.dtype
    n, g = x.shape[0], geom.group
    w = np.asarray(w, dtype=dtype)
    out_shape = (n, geom.out_channels) + geom.out_shape
    if b is not None:
        b = _bias_or_zeros(b, geom.out_channels, dtype)
    if g > 1 and g == geom.in_channels:  # depthwise: direct kernel
        x5 = _as5d(x, geom)
        (kd, kh, kw), (sd, sh, sw), (dd, dh, dw), (pd, ph, pw), (od, oh, ow) = _params3(geom)
        w5 = np.ascontiguousarray(w).reshape((geom.out_channels, 1, kd, kh, kw))
        out = np.empty((n, geom.out_channels, od, oh, ow), dtype=dtype)
        _depthwise_kernel(x5, w5, _bias_or_zeros(b, geom.out_channels, dtype), out,
                          geom.out_channels // g, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw)
        return out.reshape(out_shape)
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
    sample (large ones), sized by ``_CHUNK_BYTES``. Its im2col matrix (rows (c, kh, kw),
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
    cg, ocg, kg = c // g, oc // g, geom.k_per_group
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
    if per_sample >= _CHUNK_BYTES:  # bands of output rows of one sample
        rb = max(1, min(oh, _CHUNK_BYTES // (k_rows * ow * it)))
        bands = -(-oh // rb)
        n_chunks, nc = n, 1
    else:  # groups of whole samples
        rb, bands = oh, 1
        nc = max(1, min(n, _CHUNK_BYTES // per_sample))
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
