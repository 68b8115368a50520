"""ONNX operators on the GPU: device twins of the CPU ops, so activations stay on the device.

A graph placed on ``"cuda"`` (:meth:`anasim.graph.executor.Graph.to`) binds every node
to the implementation registered here for its op, when there is one for the model's
opset and attributes; otherwise the node runs its CPU implementation on host copies of
its inputs (a *host fallback*, listed by :attr:`Graph.host_nodes` and announced by a
warning when the graph is placed). A device op also hands data it does not cover to
the CPU op at run time (:func:`on_host`): tensors of another type than float32, and
negative (cropping) pads; a warning says so, once per node. The networks in use (ResNets, VGG, MobileNetV2, the bundled
demo) run entirely on the device: data crosses the PCIe bus once per batch, in and out.

Contract of an implementation registered with :func:`register_cuda`: it is called as
``fn(cpu, *inputs, **attributes)`` -- the node's inputs and attributes as for the CPU
op, plus ``cpu``, the node's bound CPU implementation, for the cases it leaves to the
host (:func:`on_host`: e.g. float16 data, an unusual mode). Inputs listed in
``host_inputs`` (shape vectors, axes, scalars read on the host) arrive as NumPy
arrays; the others as device arrays (constants are uploaded once, when the graph is
bound). Outputs may be device arrays or, for shape-like results, NumPy arrays.

Versions: an implementation registered ``since=v`` serves a node only if the CPU
implementation resolved for the model's opset has ``since <= v`` (the device op covers
that version's semantics); a newer CPU version than any device one means a host
fallback. *Shape-view* ops (Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Slice,
Identity, Shape, Size) have a single implementation for every version: it runs the CPU
op on a stand-in array of the input's shape and reads the resulting view's offset
and strides, then gathers those elements on the device -- so they follow the CPU
semantics exactly (:func:`_view_op`).
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..kernels import cuda as K
from ..kernels import cuda_digital as D
from .conv_geometry import _params3, conv_geometry
from .pool import _p3, pool_geometry
from .tensor import _axis, pad_amounts, pad_value

__all__ = ["register_cuda", "resolve_cuda", "on_host"]


@dataclass(frozen=True)
class CudaImpl:
    """One registered device implementation of an ONNX operator."""

    op_type: str
    since: int
    fn: Callable
    host_inputs: tuple[int, ...] = ()
    """Input positions the implementation reads on the host (NumPy arrays)."""
    all_versions: bool = False
    """Serves every version of the op (the shape-view ops, which call the CPU op)."""
    supports: Callable[[dict], bool] | None = None
    """Whether it handles a node with these attributes (else the node is placed on the host)."""


_CUDA: dict[tuple[str, str], list[CudaImpl]] = {}


def register_cuda(op_type: str, since: int = 1, host_inputs: tuple[int, ...] = (), domain: str = "",
                  all_versions: bool = False, supports: Callable[[dict], bool] | None = None):
    """Decorator registering ``fn(cpu, *inputs, **attrs)`` as the device implementation of ``op_type``."""

    def deco(fn: Callable) -> Callable:
        impls = _CUDA.setdefault((domain, op_type), [])
        if any(i.since == since for i in impls):
            raise RuntimeError(f"CUDA {op_type} since {since} registered twice")
        impls.append(CudaImpl(op_type, since, fn, tuple(host_inputs), all_versions, supports))
        impls.sort(key=lambda i: i.since)
        return fn

    return deco


def resolve_cuda(domain: str, op_type: str, opset: int, cpu_since: int) -> CudaImpl | None:
    """The device implementation for a node whose CPU implementation is the ``cpu_since`` one."""
    domain = "" if domain == "ai.onnx" else domain
    usable = [i for i in _CUDA.get((domain, op_type), ()) if i.since <= opset]
    if not usable:
        return None
    impl = usable[-1]
    return impl if impl.all_versions or impl.since >= cpu_since else None


def on_host(cpu: Callable, *inputs):
    """Run the CPU implementation on host copies of ``inputs``; outputs stay on the host."""
    return cpu(*[None if a is None else K.to_host(a) for a in inputs])


def _f32(*arrays) -> bool:
    return all(a is None or np.dtype(a.dtype) == np.float32 for a in arrays)


# ------------------------------------------------------------------------------------
# shape views


def _view_op(cpu, data, *rest, **_attrs):
    """Run the CPU op on a stand-in of ``data``'s shape; gather the view it returns.

    ``cpu`` carries the attributes. The stand-in is a uint8 array (one byte per element,
    never read), so the returned view's byte offset and strides are element offsets and
    strides into ``data``. An op that returns something else than a view of it runs on
    the host instead (Shape and Size return their small host vector).
    """
    shape = tuple(int(s) for s in data.shape)
    if not K.is_device_array(data) or len(shape) > D.MAX_RANK:
        return on_host(cpu, data, *rest)  # host data (shape computations) stays on the host
    probe = np.empty(shape, np.uint8)
    res = cpu(probe, *[None if a is None else K.to_host(a) for a in rest])
    if not isinstance(res, np.ndarray) or res.dtype != np.uint8 or (
            res.size and not np.may_share_memory(res, probe)):
        if isinstance(res, np.ndarray) and res.dtype == np.int64 and res.ndim <= 1:
            return res  # Shape / Size: a host vector of the input's dimensions
        return on_host(cpu, data, *rest)
    if res.size == 0:
        return K.device_empty(res.shape, data.dtype)
    offset = res.__array_interface__["data"][0] - probe.__array_interface__["data"][0]
    if offset == 0 and res.flags.c_contiguous and res.size == probe.size:
        return data.reshape(res.shape)  # a reshape: no copy
    return D.copy_strided(data, offset, res.strides, res.shape)


for _op in ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Shape", "Size"):
    register_cuda(_op, since=1, host_inputs=tuple(range(1, 5)), all_versions=True)(_view_op)


@register_cuda("Concat", since=1)
def concat(cpu, *inputs, axis=1):
    rank = len(inputs[0].shape) if inputs else 0
    if not inputs or not _same_dtype(inputs) or rank > D.MAX_RANK:
        return on_host(cpu, *inputs)
    ax = _axis(axis, rank)
    shapes = [tuple(a.shape) for a in inputs]
    if any(len(s) != rank or s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:] for s in shapes):
        return on_host(cpu, *inputs)  # the CPU op raises the error
    out_shape = shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:]
    out = K.device_empty(out_shape, inputs[0].dtype)
    strides = D.contiguous_strides(out_shape)
    start = 0
    for a, s in zip(inputs, shapes):
        D.copy_strided(a, 0, D.contiguous_strides(s), s, out, start * strides[ax], strides)
        start += s[ax]
    return out


def _same_dtype(arrays) -> bool:
    return len({np.dtype(a.dtype) for a in arrays}) == 1


def _pad(cpu, data, begin, end, mode, value, *original):
    if mode != "constant" or min(begin + end, default=0) < 0 or not _f32(data) or len(data.shape) > D.MAX_RANK:
        return on_host(cpu, data, *original)
    return D.pad_constant(data, begin, end, value)


def _constant_mode(attrs) -> bool:
    mode = attrs.get("mode", "constant")
    return (mode.decode() if isinstance(mode, bytes) else mode) == "constant"


@register_cuda("Pad", since=2, supports=_constant_mode)
def pad_2(cpu, data, *, pads, mode="constant", value=0.0):
    begin, end = pad_amounts(len(data.shape), pads)
    return _pad(cpu, data, begin, end, mode, value)


@register_cuda("Pad", since=11, host_inputs=(1, 2, 3), supports=_constant_mode)
def pad_11(cpu, data, pads, constant_value=None, axes=None, *, mode="constant"):
    begin, end = pad_amounts(len(data.shape), pads, axes)
    return _pad(cpu, data, begin, end, mode, pad_value(constant_value), pads, constant_value, axes)


# ------------------------------------------------------------------------------------
# element-wise


def _unary(op, p0=0.0, p1=0.0):
    def impl(cpu, X, **_attrs):
        return D.unary(X, op, p0, p1) if _f32(X) else on_host(cpu, X)

    return impl


register_cuda("Relu", since=1)(_unary(D.RELU))
register_cuda("Sigmoid", since=1)(_unary(D.SIGMOID))
register_cuda("Tanh", since=1)(_unary(D.TANH))


@register_cuda("LeakyRelu", since=1)
def leaky_relu(cpu, X, *, alpha=0.01, consumed_inputs=None):
    return D.unary(X, D.LEAKY_RELU, alpha) if _f32(X) else on_host(cpu, X)


@register_cuda("HardSigmoid", since=1)
def hard_sigmoid(cpu, X, *, alpha=0.2, beta=0.5, consumed_inputs=None):
    return D.unary(X, D.HARD_SIGMOID, alpha, beta) if _f32(X) else on_host(cpu, X)


@register_cuda("HardSwish", since=14)
def hard_swish(cpu, X):
    return D.unary(X, D.HARD_SWISH, 1 / 6, 0.5) if _f32(X) else on_host(cpu, X)


_F32_MAX = float(np.finfo(np.float32).max)


@register_cuda("Clip", since=1)
def clip_v1(cpu, input, *, max=_F32_MAX, min=-_F32_MAX, consumed_inputs=None):
    return D.unary(input, D.CLIP, min, max) if _f32(input) else on_host(cpu, input)


@register_cuda("Clip", since=11, host_inputs=(1, 2))
def clip(cpu, input, min=None, max=None):
    if not _f32(input):
        return on_host(cpu, input, min, max)
    lo = -np.inf if min is None else np.asarray(min).reshape(())
    hi = np.inf if max is None else np.asarray(max).reshape(())
    return D.unary(input, D.CLIP, lo, hi)


def _binary(op):
    def impl(cpu, A, B):
        if not _f32(A, B) or len(A.shape) > D.MAX_RANK or len(B.shape) > D.MAX_RANK:
            return on_host(cpu, A, B)
        return D.binary(A, B, op)

    return impl


for _op, _code in (("Add", D.ADD), ("Sub", D.SUB), ("Mul", D.MUL), ("Div", D.DIV)):
    register_cuda(_op, since=7)(_binary(_code))


# ------------------------------------------------------------------------------------
# convolution, matrix products


_COLS_BYTES = 1 << 30
"""Largest im2col block of a device convolution (bytes); bigger products run in row blocks."""


def row_blocks(total_rows: int, row_bytes: int):
    """(r0, r1) blocks of at most ``_COLS_BYTES`` of im2col rows each."""
    per = max(1, _COLS_BYTES // max(1, row_bytes))
    return [(r0, min(total_rows, r0 + per)) for r0 in range(0, total_rows, per)] or [(0, 0)]


def conv_params(geom) -> tuple:
    """The 15 integers (kernel, strides, dilations, pads, output shape) of the device kernels."""
    return tuple(v for t in _params3(geom) for v in t)


def as5d(x, geom):
    """A (N, C, D, H, W) view of a contiguous (N, C, *spatial) device array."""
    return x.reshape(tuple(x.shape[:2]) + geom._pad3(geom.in_shape, 1))


@register_cuda("Conv", since=1)
def conv(cpu, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None):
    if not _f32(X, W, B):
        return on_host(cpu, X, W, B)
    geom = conv_geometry(tuple(X.shape), tuple(W.shape), auto_pad, dilations, group, kernel_shape, pads, strides)
    n, oc, p = X.shape[0], geom.out_channels, geom.n_pixels
    params = conv_params(geom)
    x5 = as5d(X, geom)
    if geom.group == 1:
        out = K.device_empty((n, oc, p))
        w2 = W.reshape(oc, geom.k)
        for r0, r1 in row_blocks(n * p, 4 * geom.k):
            cols = D.im2col(x5, params, r0, r1, 0, geom.in_channels)
            D.rows_to_nchw(K.matmul_nt(cols, w2), out, r0, 0, B)
        return out.reshape((n, oc) + geom.out_shape)
    out5 = K.device_empty((n, oc) + geom._pad3(geom.out_shape, 1))
    D.conv_direct(x5, W.reshape((oc, geom.channels_per_group) + geom._pad3(geom.kernel, 1)), B, params, out5)
    return out5.reshape((n, oc) + geom.out_shape)


_TRANSPOSED: dict[int, tuple] = {}
"""id(b) -> (weak reference to b, b.T): transposed weights, dropped when b is freed."""


def transposed(b):
    """``b.T`` (2-D) as a contiguous device array, cached while ``b`` lives (a weight
    uploaded once by :func:`bind_cuda` is transposed once, and freed with its graph)."""
    hit = _TRANSPOSED.get(id(b))
    if hit is not None and hit[0]() is b:
        return hit[1]
    t = D.copy_strided(b, 0, D.contiguous_strides(b.shape)[::-1], tuple(b.shape)[::-1])
    try:
        ref = weakref.ref(b)
    except TypeError:  # not weak-referenceable: no caching
        return t
    _TRANSPOSED[id(b)] = (ref, t)
    weakref.finalize(b, _TRANSPOSED.pop, id(b), None)
    return t


@register_cuda("Gemm", since=1)
def gemm(cpu, A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    if not _f32(A, B, C) or len(A.shape) != 2 or len(B.shape) != 2:
        return on_host(cpu, A, B, C)
    a = D.copy_strided(A, 0, (1, A.shape[1]), tuple(A.shape)[::-1]) if transA else A
    bt = B if transB else transposed(B)  # (N, K)
    y = K.matmul_nt(a, bt)
    if alpha != 1.0:
        y = D.unary(y, D.SCALE, alpha)
    if C is not None and beta != 0.0:
        c = C if beta == 1.0 else D.unary(C, D.SCALE, beta)
        y = D.binary(y, c, D.ADD)
    return y


register_cuda("Gemm", since=7)(gemm)


@register_cuda("MatMul", since=1)
def matmul(cpu, A, B):
    if not _f32(A, B) or len(B.shape) != 2 or len(A.shape) < 2:
        return on_host(cpu, A, B)
    shape = tuple(A.shape)  # (the simulator's shapes do not take negative indices)
    a2 = A.reshape(math.prod(shape[:-1]), shape[-1])
    return K.matmul_nt(a2, transposed(B)).reshape(shape[:-1] + (B.shape[1],))


# ------------------------------------------------------------------------------------
# pooling, normalization


@register_cuda("MaxPool", since=1, supports=lambda attrs: attrs.get("n_outputs", 1) == 1)
def max_pool(cpu, X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None, n_outputs=1):
    if n_outputs > 1 or not _f32(X):
        return on_host(cpu, X)
    return _pool(X, True, False, pool_geometry(tuple(X.shape), kernel_shape, auto_pad, ceil_mode, dilations,
                                               pads, strides))


@register_cuda("AveragePool", since=1)
def average_pool(cpu, X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                 kernel_shape=None, pads=None, strides=None):
    if not _f32(X):
        return on_host(cpu, X)
    return _pool(X, False, bool(count_include_pad),
                 pool_geometry(tuple(X.shape), kernel_shape, auto_pad, ceil_mode, dilations, pads, strides))


def _pool(x, is_max, include_pad, geom):
    n, c = x.shape[0], x.shape[1]
    out5 = K.device_empty((n, c) + geom._pad3(geom.out_shape, 1))
    D.pool(as5d(x, geom), out5, is_max, include_pad, _p3(geom))
    return out5.reshape((n, c) + geom.out_shape)


def _global(mode):
    def impl(cpu, X):
        if not _f32(X) or len(X.shape) < 3 or X.size == 0:
            return on_host(cpu, X)
        n, c = X.shape[0], X.shape[1]
        y = D.plane_reduce(X.reshape(n * c, X.size // (n * c)), mode)
        return y.reshape((n, c) + (1,) * (len(X.shape) - 2))

    return impl


register_cuda("GlobalAveragePool", since=1)(_global(D.MEAN))
register_cuda("GlobalMaxPool", since=1)(_global(D.MAX))


def _reduce(mode, cpu, data, axes, keepdims, noop_with_empty_axes=0, original=()):
    """Reductions over trailing axes (e.g. the spatial mean some exporters write instead of
    GlobalAveragePool) on the device; other axes, all axes or no axes on the host."""
    shape = tuple(data.shape)
    rank = len(shape)
    axes = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    axes = sorted(a + rank if a < 0 else a for a in axes)
    if (not _f32(data) or not axes or axes != list(range(axes[0], rank)) or axes[0] == 0
            or data.size == 0 or len(set(axes)) != len(axes)):
        return on_host(cpu, data, *original)
    lead = shape[:axes[0]]
    y = D.plane_reduce(data.reshape(math.prod(lead), math.prod(shape[axes[0]:])), mode)
    return y.reshape(lead + ((1,) * len(axes) if keepdims else ()))


def _register_reduce(kind, mode, input_since):
    def attr_form(cpu, data, *, axes=None, keepdims=1):
        return _reduce(mode, cpu, data, axes, keepdims)

    def input_form(cpu, data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return _reduce(mode, cpu, data, axes, keepdims, noop_with_empty_axes, (axes,))

    register_cuda(kind, since=1)(attr_form)
    register_cuda(kind, since=input_since, host_inputs=(1,))(input_form)


for _kind, _mode, _since in (("ReduceMean", D.MEAN, 18), ("ReduceMax", D.MAX, 18), ("ReduceSum", D.SUM, 13)):
    _register_reduce(_kind, _mode, _since)


def _softmax(log, coerced):
    def impl(cpu, input, *, axis=1 if coerced else -1):
        shape = tuple(input.shape)
        rank = len(shape)
        if not _f32(input) or rank == 0 or input.size == 0:
            return on_host(cpu, input)
        ax = axis % rank
        if not coerced and ax != rank - 1:
            return on_host(cpu, input)  # a softmax over an inner axis: not on the device
        rows = math.prod(shape[:ax]) if coerced else math.prod(shape[:-1])
        return D.softmax_rows(input.reshape(rows, input.size // rows), log).reshape(shape)

    return impl


register_cuda("Softmax", since=1)(_softmax(False, True))
register_cuda("Softmax", since=13)(_softmax(False, False))
register_cuda("LogSoftmax", since=1)(_softmax(True, True))
register_cuda("LogSoftmax", since=13)(_softmax(True, False))


def _batch_norm(cpu, X, scale, B, mean, var, epsilon):
    c = X.shape[1] if len(X.shape) >= 2 else -1
    if not _f32(X, scale, B, mean, var) or any(tuple(a.shape) != (c,) for a in (scale, B, mean, var)):
        return on_host(cpu, X, scale, B, mean, var)
    return D.batch_norm(X, scale, B, mean, var, epsilon)


@register_cuda("BatchNormalization", since=7)
def batch_normalization_v7(cpu, X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1):
    return _batch_norm(cpu, X, scale, B, mean, var, epsilon)


register_cuda("BatchNormalization", since=9)(batch_normalization_v7)


@register_cuda("BatchNormalization", since=14, supports=lambda attrs: not attrs.get("training_mode", 0))
def batch_normalization(cpu, X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        return on_host(cpu, X, scale, B, input_mean, input_var)  # the CPU op names the problem
    return _batch_norm(cpu, X, scale, B, input_mean, input_var, epsilon)


# ------------------------------------------------------------------------------------
# binding


def bind_cuda(node, impl, attrs: dict, constants: dict, opset: int) -> tuple[Callable, bool]:
    """``(fn, on_device)`` for a node of a graph placed on the GPU.

    ``impl`` is the node's resolved CPU :class:`~anasim.ops.registry.OpImpl` and
    ``attrs`` its bound attributes (with ``n_outputs`` where the op wants it),
    ``constants`` the graph's initializers (those the device implementation reads on
    the device are uploaded here, once) and ``opset`` the model's opset of the node's
    domain.

    At run time, a node whose inputs computed at run time are all on the host (shape
    arithmetic after a host fallback, say) runs its CPU op there: small integer tensors
    do not travel to the device and back.
    """
    cpu = functools.partial(impl.fn, **attrs) if attrs else impl.fn
    dev = resolve_cuda(node.domain, node.op_type, opset, impl.since)
    if dev is not None and dev.supports is not None and not dev.supports(attrs):
        dev = None
    if dev is None:
        return functools.partial(on_host, cpu), False
    host = set(dev.host_inputs)
    fixed = {}
    for pos, name in enumerate(node.inputs):
        if name and name in constants and pos not in host:
            arr = np.asarray(constants[name])
            if arr.dtype.kind in "fiub":
                fixed[pos] = K.as_device(arr, arr.dtype)

    warned = []

    def run(*args):
        if not any(K.is_device_array(a) for pos, a in enumerate(args) if pos not in fixed):
            return cpu(*args)  # nothing computed on the device: stay on the host
        args = list(args)
        for pos, a in enumerate(args):
            if pos in fixed:
                args[pos] = fixed[pos]
            elif a is not None:
                if pos in host:
                    args[pos] = K.to_host(a)
                else:
                    a = a if K.is_device_array(a) else np.asarray(a)
                    args[pos] = K.as_device(a, a.dtype)
        out = dev.fn(cpu, *args, **attrs)
        if not warned and node.op_type not in _HOST_RESULT_OPS and not any(
                K.is_device_array(o) for o in (out if isinstance(out, tuple) else (out,))):
            warned.append(True)
            warnings.warn(
                f"Node {node.name!r} ({node.op_type}) ran on the CPU on device 'cuda': its device implementation "
                "does not cover this case (data other than float32, negative Pad amounts, a softmax over an "
                "inner axis, ...); its inputs cross the PCIe bus (said once per node).", stacklevel=2)
        return out

    return run, True


_HOST_RESULT_OPS = frozenset({"Shape", "Size"})
"""Device ops whose result is a small host vector by design (not a fallback)."""
