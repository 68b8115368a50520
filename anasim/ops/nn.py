"""Neural-network operators: convolution, pooling, normalization, activations.

Each function is registered for the ONNX opset in which its current semantics began;
keyword names and defaults are the ONNX attribute names and defaults. Inputs are
float arrays (float32 in practice) and outputs keep the input dtype.

Hot element-wise activations run as parallel Numba kernels on the flattened array
(they stay separate ops: nothing is fused across nodes). Convolutions and pooling
live in :mod:`anasim.ops.conv` and :mod:`anasim.ops.pool`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..threads import run_chunks
from .conv import conv as _conv
from .conv import conv_transpose as _conv_transpose
from .conv_geometry import conv_geometry, conv_transpose_geometry
from .elementwise import add as _add
from .epilogue import FUSED_DOMAIN, Epilogue
from .pool import average_pool as _average_pool
from .pool import max_pool as _max_pool
from .pool import pool_geometry
from .registry import register

_SMALL = 1 << 15
"""Arrays with fewer elements than this use NumPy instead of a threaded kernel."""


# =========================================================================== kernels
# Element-wise kernels are serial and release the GIL; _flat_apply splits big arrays into
# blocks that the convolution's worker threads take from a shared counter (a worker that
# the OS deschedules takes fewer blocks, where a barrier-synchronized prange would stall).
@njit(nogil=True, cache=True)
def _relu_k(x, out, zero):
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = zero if v < zero else v


@njit(nogil=True, cache=True)
def _leaky_relu_k(x, out, alpha, zero):
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = v * alpha if v < zero else v


@njit(nogil=True, cache=True)
def _clip_k(x, out, lo, hi):
    for i in range(x.shape[0]):
        v = x[i]
        v = lo if v < lo else v
        out[i] = hi if v > hi else v


@njit(nogil=True, cache=True)
def _sigmoid_k(x, out, one):
    for i in range(x.shape[0]):
        v = x[i]
        if v >= 0:
            out[i] = one / (one + math.exp(-v))
        else:
            e = math.exp(v)
            out[i] = e / (one + e)


@njit(nogil=True, cache=True)
def _hard_sigmoid_k(x, out, alpha, beta, zero, one, gate):
    """out = max(0, min(1, alpha*x + beta)), times x when ``gate`` (HardSwish)."""
    for i in range(x.shape[0]):
        v = x[i]
        h = alpha * v + beta
        h = zero if h < zero else (one if h > one else h)
        out[i] = v * h if gate else h


@njit(nogil=True, cache=True)
def _erf_k(x, out):
    for i in range(x.shape[0]):
        out[i] = math.erf(x[i])


@njit(nogil=True, cache=True)
def _gelu_k(x, out, half, one, c, k3, tanh_approx):
    """Gelu; ``c`` is 1/sqrt(2) (exact) or sqrt(2/pi) (tanh approximation), k3 = 0.044715."""
    for i in range(x.shape[0]):
        v = x[i]
        if tanh_approx:
            out[i] = half * v * (one + math.tanh(c * (v + k3 * v * v * v)))
        else:
            out[i] = half * v * (one + math.erf(v * c))


@njit(nogil=True, cache=True)
def _channel_affine_k(x, a, b, out, r0, r1):
    """out[r] = x[r] * a[r % C] + b[r % C] for rows r0 <= r < r1 of (N*C, P) arrays."""
    c_ = a.shape[0]
    for r in range(r0, r1):
        ac, bc = a[r % c_], b[r % c_]
        src, dst = x[r], out[r]
        for p in range(src.shape[0]):
            dst[p] = src[p] * ac + bc


_BLOCK = 1 << 16
"""Elements per block of a threaded element-wise op (256 KiB of float32)."""


def _flat_apply(x: np.ndarray, kernel, *args) -> np.ndarray:
    """Apply an element-wise kernel to (a C-contiguous copy-free flat view of) ``x``."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    n = xf.shape[0]
    if n <= _BLOCK:
        kernel(xf, of, *args)
        return out

    def block(_state, i):
        lo, hi = i * _BLOCK, min(n, (i + 1) * _BLOCK)
        kernel(xf[lo:hi], of[lo:hi], *args)

    run_chunks(-(-n // _BLOCK), lambda: None, block)
    return out


def _float(x: np.ndarray):
    """Scalar constructor of x's float dtype (float32 for non-float inputs)."""
    return x.dtype.type if x.dtype.kind == "f" else np.float32


# =========================================================================== conv
@register("Conv", since=1)
def conv(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
         pads=None, strides=None):
    geom = conv_geometry(X.shape, W.shape, auto_pad, dilations, group, kernel_shape, pads, strides)
    if X.dtype == np.float16:  # Numba has no float16: compute in float32, round back
        b32 = None if B is None else B.astype(np.float32)
        return _conv(X.astype(np.float32), W.astype(np.float32), b32, geom).astype(np.float16)
    return _conv(X, W, B, geom)


@register("ConvEpilogue", since=1, domain=FUSED_DOMAIN)
def conv_epilogue(X, W, B=None, R=None, *, activation="", act_a=0.0, act_b=0.0, auto_pad="NOTSET",
                  dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    """``act(Conv(X, W, B) + R)`` in one pass over the output (the node
    :func:`anasim.graph.passes.fuse_conv_epilogues` makes of a Conv, the residual ``Add``
    consuming it and/or the activation after them; ``R`` absent: no Add). The numbers
    equal the unfused ops'; they run unfused when the epilogue cannot run in place (a
    broadcasting ``R``, a dtype other than float32)."""
    geom = conv_geometry(X.shape, W.shape, auto_pad, dilations, group, kernel_shape, pads, strides)
    epi = Epilogue(R, activation, act_a, act_b)
    if X.dtype == np.float32 and epi.fits((X.shape[0], geom.out_channels) + geom.out_shape, X.dtype):
        return _conv(X, W, B, geom, epi)
    y = conv(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
             strides=strides)
    return _activation(y if R is None else _add(y, R), activation, act_a, act_b)


@register("AddActivation", since=1, domain=FUSED_DOMAIN)
def add_activation(A, B, *, activation="Relu", act_a=0.0, act_b=0.0):
    """``act(A + B)`` in one pass and one output array (the node
    :func:`anasim.graph.passes.fuse_conv_epilogues` makes of an ``Add`` and the activation
    consuming it when the Add's producer takes no epilogue, e.g. an analog convolution)."""
    if not (A.dtype == B.dtype == np.float32 and A.shape == B.shape):
        return _activation(_add(A, B), activation, act_a, act_b)
    out = np.empty_like(A, order="C")
    af, bf, of = np.ascontiguousarray(A).reshape(-1), np.ascontiguousarray(B).reshape(-1), out.reshape(-1)
    epi = Epilogue(None, activation, act_a, act_b)

    def block(_state, i):
        lo, hi = i * _BLOCK, min(of.shape[0], (i + 1) * _BLOCK)
        np.add(af[lo:hi], bf[lo:hi], out=of[lo:hi])
        epi.apply(of, lo, hi)

    run_chunks(max(1, -(-of.shape[0] // _BLOCK)), lambda: None, block)
    return out


def _activation(y, activation, a, b):
    """The unfused activation ops of the fused nodes."""
    if activation == "Relu":
        return relu(y)
    if activation == "Clip":
        return _clip(y, a, b)
    if activation == "LeakyRelu":
        return leaky_relu(y, alpha=a)
    return y


@register("ConvTranspose", since=1)
def conv_transpose(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    geom = conv_transpose_geometry(X.shape, W.shape, auto_pad, dilations, group, kernel_shape,
                                   output_padding, output_shape, pads, strides)
    return _conv_transpose(X, W, B, geom)


# =========================================================================== matrix products
@register("Gemm", since=1)
def gemm_v1(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    return gemm(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB)


@register("Gemm", since=7)
def gemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = A.T if transA else A
    b = B.T if transB else B
    y = a @ b
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if C is not None and beta != 0.0:
        if beta == 1.0:
            y += C
        else:
            y += y.dtype.type(beta) * C
    return y


@register("MatMul", since=1)
def matmul(A, B):
    return np.matmul(A, B)


# =========================================================================== normalization
def _bn(X, scale, B, mean, var, epsilon):
    f = _float(X)
    a = (np.asarray(scale, X.dtype) / np.sqrt(np.asarray(var, X.dtype) + f(epsilon))).astype(X.dtype)
    b = (np.asarray(B, X.dtype) - np.asarray(mean, X.dtype) * a).astype(X.dtype)
    if a.ndim == 1 and X.ndim >= 2 and a.shape[0] == X.shape[1]:
        x2 = np.ascontiguousarray(X).reshape(X.shape[0] * X.shape[1], -1)
        out = np.empty_like(x2)
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
        rows = max(1, _BLOCK // max(1, x2.shape[1]))
        run_chunks(-(-x2.shape[0] // rows), lambda: None,
                   lambda _s, i: _channel_affine_k(x2, a, b, out, i * rows, min(x2.shape[0], (i + 1) * rows)))
        return out.reshape(X.shape)
    # per-activation statistics (spatial=0): parameters of shape (C, D1, ...)
    shape = (1,) + a.shape + (1,) * (X.ndim - 1 - a.ndim)
    return X * a.reshape(shape) + b.reshape(shape)


@register("BatchNormalization", since=1)
def batch_normalization_v1(X, scale, B, mean, var, *, epsilon=1e-5, is_test=0, momentum=0.9,
                           spatial=1, consumed_inputs=None):
    return _bn(X, scale, B, mean, var, epsilon)


@register("BatchNormalization", since=7)
def batch_normalization_v7(X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1):
    return _bn(X, scale, B, mean, var, epsilon)


@register("BatchNormalization", since=9)
def batch_normalization_v9(X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9):
    return _bn(X, scale, B, mean, var, epsilon)


@register("BatchNormalization", since=14)
def batch_normalization(X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9,
                        training_mode=0):
    if training_mode:
        from ..errors import UnsupportedOpError

        raise UnsupportedOpError("BatchNormalization with training_mode=1 is not supported "
                                 "(anasim runs inference only)")
    return _bn(X, scale, B, input_mean, input_var, epsilon)


@register("InstanceNormalization", since=1)
def instance_normalization(input, scale, B, *, epsilon=1e-5, consumed_inputs=None):
    x = input
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = (1.0 / np.sqrt(var + _float(x)(epsilon))).astype(x.dtype)
    return d * inv * np.asarray(scale, x.dtype).reshape(shape) + np.asarray(B, x.dtype).reshape(shape)


@register("LayerNormalization", since=17)
def layer_normalization(X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    axis = axis % X.ndim
    dt = np.dtype(np.float32) if stash_type == 1 and X.dtype.itemsize < 4 else X.dtype
    f = dt.type
    x = X.astype(dt, copy=False)
    axes = tuple(range(axis, X.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    inv = f(1) / np.sqrt(var + f(epsilon))
    y = d * inv * Scale.astype(dt, copy=False)
    if B is not None:
        y += B.astype(dt, copy=False)
    return y.astype(X.dtype, copy=False), mean, inv


@register("LRN", since=1)
def lrn(X, *, alpha=0.0001, beta=0.75, bias=1.0, size=1):
    f = _float(X)
    c = X.shape[1]
    sq = X * X
    lo = (size - 1) // 2  # window [c - lo, c + size - 1 - lo]
    padded = np.zeros((X.shape[0], c + size - 1) + X.shape[2:], X.dtype)
    padded[:, lo:lo + c] = sq
    acc = np.zeros_like(X)
    for k in range(size):  # a loop over the window taps, not over pixels
        acc += padded[:, k:k + c]
    return X / (f(bias) + f(alpha / size) * acc) ** f(beta)


# =========================================================================== pooling
@register("MaxPool", since=1, wants_n_outputs=True)
def max_pool(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None, n_outputs=1):
    geom = pool_geometry(X.shape, kernel_shape, auto_pad, ceil_mode, dilations, pads, strides)
    return _max_pool(X, geom, indices=n_outputs > 1, storage_order=storage_order)


@register("AveragePool", since=1)
def average_pool(X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                 kernel_shape=None, pads=None, strides=None):
    geom = pool_geometry(X.shape, kernel_shape, auto_pad, ceil_mode, dilations, pads, strides)
    return _average_pool(X, geom, count_include_pad=count_include_pad)


@njit(nogil=True, cache=True)
def _plane_means(xf, r0, r1, p, out):
    """out[r] = the mean of plane r (the ``p`` values of ``xf`` from r·p) for r0 <= r < r1:
    a float64 sum in element order, divided and rounded once; eight planes at a time, so
    that their sums' dependency chains overlap (NumPy's mean over a short last axis pays
    its reduction set-up per plane: 11x onnxruntime's time on MobileNetV2's 4x4 maps)."""
    up = np.uint64(p)
    r = r0
    while r + 8 <= r1:
        b = np.uint64(r) * up
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for k in range(up):
            s0 += xf[b + k]
            s1 += xf[b + up + k]
            s2 += xf[b + np.uint64(2) * up + k]
            s3 += xf[b + np.uint64(3) * up + k]
            s4 += xf[b + np.uint64(4) * up + k]
            s5 += xf[b + np.uint64(5) * up + k]
            s6 += xf[b + np.uint64(6) * up + k]
            s7 += xf[b + np.uint64(7) * up + k]
        out[r], out[r + 1], out[r + 2], out[r + 3] = s0 / p, s1 / p, s2 / p, s3 / p
        out[r + 4], out[r + 5], out[r + 6], out[r + 7] = s4 / p, s5 / p, s6 / p, s7 / p
        r += 8
    for q in range(r, r1):
        b = np.uint64(q) * up
        s = 0.0
        for k in range(up):
            s += xf[b + k]
        out[q] = s / p


@register("GlobalAveragePool", since=1)
def global_average_pool(X):
    n, c = X.shape[:2]
    x3 = np.ascontiguousarray(X).reshape(n, c, -1)
    if X.dtype != np.float32 or x3.shape[2] == 0:
        y = x3.mean(axis=2, dtype=X.dtype)
    else:  # float32: each plane summed in float64 (as accurate as NumPy's pairwise sum, or more)
        rows, p = n * c, x3.shape[2]
        y = np.empty((n, c), np.float32)
        xf, yf = x3.reshape(-1), y.reshape(-1)
        per = max(8, (_BLOCK // p) & ~7)
        run_chunks(-(-rows // per), lambda: None,
                   lambda _s, i: _plane_means(xf, i * per, min(rows, (i + 1) * per), p, yf))
    return y.reshape((n, c) + (1,) * (X.ndim - 2))


@register("GlobalMaxPool", since=1)
def global_max_pool(X):
    n, c = X.shape[:2]
    y = np.ascontiguousarray(X).reshape(n, c, -1).max(axis=2)
    return y.reshape((n, c) + (1,) * (X.ndim - 2))


# =========================================================================== softmax
def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _log_softmax(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _coerced(fn, x, axis):
    """Opset < 13 semantics: flatten to 2-D at ``axis`` and normalize each row."""
    axis = axis % x.ndim if x.ndim else 0
    rows = math.prod(x.shape[:axis])
    return fn(x.reshape(rows, -1), 1).reshape(x.shape)


@register("Softmax", since=1)
def softmax_v1(input, *, axis=1):
    return _coerced(_softmax, input, axis)


@register("Softmax", since=13)
def softmax(input, *, axis=-1):
    return _softmax(input, axis)


@register("LogSoftmax", since=1)
def log_softmax_v1(input, *, axis=1):
    return _coerced(_log_softmax, input, axis)


@register("LogSoftmax", since=13)
def log_softmax(input, *, axis=-1):
    return _log_softmax(input, axis)


# =========================================================================== activations
@register("Relu", since=1)
def relu(X, *, consumed_inputs=None):
    if X.dtype.kind != "f" or X.size < _SMALL:
        return np.maximum(X, X.dtype.type(0))
    return _flat_apply(X, _relu_k, X.dtype.type(0))


@register("LeakyRelu", since=1)
def leaky_relu(X, *, alpha=0.01, consumed_inputs=None):
    a = _float(X)(alpha)
    if X.size < _SMALL:
        return np.where(X >= 0, X, X * a)
    return _flat_apply(X, _leaky_relu_k, a, _float(X)(0))


@register("PRelu", since=1)
def prelu_v1(X, slope, *, consumed_inputs=None):
    slope = np.asarray(slope, X.dtype)
    if X.ndim > 2 and slope.ndim == 1 and slope.shape[0] == X.shape[1] != X.shape[-1]:
        slope = slope.reshape((-1,) + (1,) * (X.ndim - 2))  # pre-7 per-channel slope
    return prelu(X, slope)


@register("PRelu", since=7)
def prelu(X, slope):
    return np.where(X < 0, X * np.asarray(slope, X.dtype), X)


@register("Elu", since=1)
def elu(X, *, alpha=1.0, consumed_inputs=None):
    f = _float(X)
    return np.where(X > 0, X, f(alpha) * np.expm1(np.minimum(X, f(0))))


@register("Selu", since=1)
def selu(X, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875, consumed_inputs=None):
    f = _float(X)
    neg = f(alpha) * np.expm1(np.minimum(X, f(0)))
    return f(gamma) * np.where(X > 0, X, neg)


@register("Clip", since=1)
def clip_v1(input, *, max=3.4028234663852886e38, min=-3.4028234663852886e38, consumed_inputs=None):
    return _clip(input, min, max)


@register("Clip", since=11)
def clip(input, min=None, max=None):
    lo = None if min is None else np.asarray(min).reshape(())
    hi = None if max is None else np.asarray(max).reshape(())
    return _clip(input, lo, hi)


def _clip(x, lo, hi):
    if x.dtype.kind != "f":
        info = np.iinfo(x.dtype)
        lo = info.min if lo is None else lo
        hi = info.max if hi is None else hi
        return np.minimum(np.maximum(x, x.dtype.type(lo)), x.dtype.type(hi))
    f = x.dtype.type
    lo = f(-np.inf) if lo is None else f(lo)
    hi = f(np.inf) if hi is None else f(hi)
    if x.size < _SMALL:
        return np.minimum(np.maximum(x, lo), hi)
    return _flat_apply(x, _clip_k, lo, hi)


@register("Sigmoid", since=1)
def sigmoid(X, *, consumed_inputs=None):
    return _flat_apply(X, _sigmoid_k, _float(X)(1))


@register("HardSigmoid", since=1)
def hard_sigmoid(X, *, alpha=0.2, beta=0.5, consumed_inputs=None):
    f = _float(X)
    return _flat_apply(X, _hard_sigmoid_k, f(alpha), f(beta), f(0), f(1), False)


@register("HardSwish", since=14)
def hard_swish(X):
    f = _float(X)
    return _flat_apply(X, _hard_sigmoid_k, f(1.0 / 6.0), f(0.5), f(0), f(1), True)


@register("Tanh", since=1)
def tanh(input, *, consumed_inputs=None):
    return np.tanh(input)


@register("Erf", since=9)
def erf(input):
    return _flat_apply(input, _erf_k)


@register("Gelu", since=20)
def gelu(X, *, approximate="none"):
    f = _float(X)
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    if approximate == "tanh":
        return _flat_apply(X, _gelu_k, f(0.5), f(1), f(math.sqrt(2.0 / math.pi)), f(0.044715), True)
    if approximate != "none":
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh'; got {approximate!r}")
    return _flat_apply(X, _gelu_k, f(0.5), f(1), f(1.0 / math.sqrt(2.0)), f(0.044715), False)


def warmup(dtype=np.float32) -> None:
    """Compile (or load from Numba's cache) the kernels of these ops on small inputs.

    Numba compiles a kernel on its first call (``cache=True`` keeps the result on disk);
    calling this once up front moves that cost out of the first timed run.
    """
    from .conv import warmup as conv_warmup

    conv_warmup(dtype)
    x = np.linspace(-3, 3, 2 * _SMALL, dtype=dtype).reshape(2, 4, -1, 64)
    for fn in (relu, sigmoid, hard_swish, erf, gelu):
        fn(x)
    leaky_relu(x)
    clip(x, np.array(0, dtype), np.array(6, dtype))
    max_pool(x, kernel_shape=[2, 2], strides=[2, 2], n_outputs=2)
    average_pool(x, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    p = np.ones(4, dtype)
    batch_normalization(x, p, p, p, p)
