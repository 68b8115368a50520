"""Quantization operators: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul.

Arithmetic follows onnxruntime's CPU kernels (and the ONNX reference implementation
where the two agree):

* ``QuantizeLinear``: ``y = saturate(rint(x / y_scale) + y_zero_point)``, ``rint`` rounding
  half to even, the division in the input's float type (or ``precision``); per-tensor,
  per-axis (``axis``) and blocked (``block_size``, opset 21) scales and zero points; the
  output type is the zero point's, else ``output_dtype``, else uint8. NaN quantizes to the
  zero point.
* ``DequantizeLinear``: ``y = float32(int32(x) - int32(x_zero_point)) * x_scale`` in
  float32 (float64 scales: float64), cast to the scale's type or ``output_dtype``.
* ``ConvInteger`` / ``MatMulInteger``: ``(x - x_zp) ⊛ (w - w_zp)`` accumulated exactly and
  returned as int32. The products run in float64 (BLAS / the float convolution kernels):
  every partial sum of int8/uint8/int16 products is an integer far below 2**53, so the sum
  is exact (the Winograd transforms only introduce multiples of 1/4), and ``rint`` recovers
  it. Zero points: scalar, per output channel (ConvInteger's ``w_zero_point``), per row of
  ``A`` / per column of ``B`` (MatMulInteger).
* ``QLinearConv`` / ``QLinearMatMul``: the exact int32 accumulation (plus QLinearConv's int32
  bias), then onnxruntime's requantization ``saturate(rint(float32(acc) * M) + y_zp)`` with
  ``M = x_scale * w_scale / y_scale`` computed in the scales' float type (per output
  channel / per column when ``w_scale`` / ``b_scale`` is a vector).

Quantized types: int8, uint8, int16, uint16 (and int32 as a DequantizeLinear input).
int4/uint4/int2/uint2, float8 and float4 tensors raise :class:`UnsupportedOpError`, as
anasim computes in bool, integer and IEEE float types only.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .conv import conv as _float_conv
from .conv_geometry import conv_geometry
from .registry import register

__all__: list[str] = []

_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127),
           np.dtype(np.uint16): (0, 65535), np.dtype(np.int16): (-32768, 32767)}
"""The quantized integer types and their saturation ranges."""

# TensorProto data type codes of the output_dtype / precision attributes
_TP_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
             10: np.float16, 11: np.float64}
_TP_NAMES = {7: "int64", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2",
             20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1", 25: "uint2", 26: "int2"}

_WHY = ("anasim computes in bool, integer and IEEE float (16/32/64-bit) types; quantized types "
        "supported: int8, uint8, int16, uint16")


def _unsupported(op: str, what) -> UnsupportedOpError:
    return UnsupportedOpError(f"{op}: {what} is not supported ({_WHY}).")


def _tp_dtype(op: str, code: int, what: str) -> np.dtype:
    if code not in _TP_NUMPY:
        name = _TP_NAMES.get(code, f"TensorProto type {code}")
        raise _unsupported(op, f"{what} {name}")
    return np.dtype(_TP_NUMPY[code])


def _quant_dtype(op: str, dtype: np.dtype, what: str, allow_int32: bool = False) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype in _RANGES or (allow_int32 and dtype == np.int32):
        return dtype
    raise _unsupported(op, f"{what} of type {dtype}")


def _float_dtype(op: str, a: np.ndarray, what: str) -> None:
    if a.dtype.name not in ("float16", "float32", "float64"):
        raise _unsupported(op, f"{what} of type {a.dtype}")


def _param(value: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int, what: str) -> np.ndarray:
    """A scale or zero point reshaped to broadcast against a tensor of ``shape``."""
    value = np.asarray(value)
    if value.ndim == 0 or (value.size == 1 and not block_size):
        return value.reshape(())
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an input of rank {ndim}")
    axis %= ndim
    if not block_size:
        if value.ndim != 1 or value.size != shape[axis]:
            raise ValueError(f"{what} of shape {value.shape} does not match axis {axis} of the input "
                             f"(shape {shape}): expected a scalar or {shape[axis]} values")
        dims = [1] * ndim
        dims[axis] = value.size
        return value.reshape(dims)
    if block_size < 0:
        raise ValueError(f"block_size must be positive; got {block_size}")
    n_blocks = -(-shape[axis] // block_size)
    expected = shape[:axis] + (n_blocks,) + shape[axis + 1:]
    if value.shape != expected:
        raise ValueError(f"blocked quantization: {what} has shape {value.shape}; an input of shape {shape} "
                         f"with block_size {block_size} along axis {axis} needs {expected}")
    return np.repeat(value, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def _saturate(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    lo, hi = _RANGES[dtype]
    return np.clip(v, lo, hi).astype(dtype)


# --------------------------------------------------------------------------- Q / DQ
@register("QuantizeLinear", since=10)
def quantize_linear(x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0, output_dtype=0,
                    precision=0):
    op = "QuantizeLinear"
    if y_zero_point is not None:
        dtype = _quant_dtype(op, y_zero_point.dtype, "a zero point")
        if output_dtype and _tp_dtype(op, output_dtype, "output_dtype") != dtype:
            raise ValueError(f"output_dtype {output_dtype} differs from the zero point's type {dtype}")
    else:
        dtype = _quant_dtype(op, _tp_dtype(op, output_dtype, "output_dtype") if output_dtype else np.uint8,
                             "output_dtype")
    _float_dtype(op, y_scale, "a scale")
    scale = _param(y_scale, x.shape, axis, block_size, "y_scale")
    if precision:
        p = _tp_dtype(op, precision, "precision")
        v = x.astype(p) / scale.astype(p)
    else:
        if x.dtype.kind != "f":  # opset 10/13 allow int32 inputs
            x = x.astype(np.float32)
        v = x / scale
    work = np.float64 if v.dtype == np.float64 else np.float32
    v = np.rint(v).astype(work, copy=False)
    zp = 0 if y_zero_point is None else _param(y_zero_point, x.shape, axis, block_size, "y_zero_point").astype(work)
    v = v + zp
    if np.isnan(v).any():
        v = np.where(np.isnan(v), zp, v)
    return _saturate(v, dtype)


@register("DequantizeLinear", since=10)
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    op = "DequantizeLinear"
    _quant_dtype(op, x.dtype, "an input", allow_int32=True)
    _float_dtype(op, x_scale, "a scale")
    if x_zero_point is not None and x_zero_point.dtype != x.dtype:
        raise ValueError(f"the zero point's type {x_zero_point.dtype} differs from the input's {x.dtype}")
    out = _tp_dtype(op, output_dtype, "output_dtype") if output_dtype else x_scale.dtype
    if out.kind != "f":
        raise ValueError(f"output_dtype must be a float type; got {out}")
    work = np.float64 if np.float64 in (x_scale.dtype, out) else np.float32
    dx = x.astype(np.int32)
    if x_zero_point is not None:
        dx = dx - _param(x_zero_point, x.shape, axis, block_size, "x_zero_point").astype(np.int32)
    y = dx.astype(work) * _param(x_scale, x.shape, axis, block_size, "x_scale").astype(work)
    return y.astype(out, copy=False)


@register("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(x):
    _float_dtype("DynamicQuantizeLinear", x, "an input")
    f = np.float32
    qmin, qmax = f(0), f(255)
    if x.size:
        maxx, minx = f(max(0.0, f(np.max(x)))), f(min(0.0, f(np.min(x))))
    else:
        maxx = minx = f(0)
    scale = f(1.0) if maxx == minx else f((maxx - minx) / (qmax - qmin))
    zp = np.rint(np.clip(qmin - minx / scale, qmin, qmax))
    y = quantize_linear(x.astype(f, copy=False), np.array(scale, f), np.array(zp, np.uint8))
    return y, np.array(scale).astype(x.dtype), np.array(zp, np.uint8)


# ------------------------------------------------------------------ integer products
def _exact_int32(y: np.ndarray) -> np.ndarray:
    return np.rint(y).astype(np.int32)


def _centered(op: str, a: np.ndarray, zp, what: str, zp_shape=None) -> np.ndarray:
    """``a - zp`` as float64 (exact), ``zp`` reshaped to ``zp_shape`` when it is a vector."""
    _quant_dtype(op, a.dtype, what)
    a64 = a.astype(np.float64)
    if zp is None:
        return a64
    zp = np.asarray(zp)
    if zp.dtype != a.dtype:
        raise ValueError(f"{what}'s zero point has type {zp.dtype}, {what} has {a.dtype}")
    if zp.size == 1:
        return a64 - np.float64(zp.reshape(()))
    if zp_shape is not None and zp.ndim == 1:
        zp = zp.reshape(zp_shape)
    return a64 - zp.astype(np.float64)


def _int_conv(op, x, w, x_zero_point, w_zero_point, auto_pad, dilations, group, kernel_shape, pads, strides):
    if x.ndim < 3:
        raise ValueError(f"the input must have at least 3 dimensions; got shape {x.shape}")
    if x_zero_point is not None and np.size(x_zero_point) != 1:
        raise ValueError(f"x_zero_point must be a scalar (per-tensor); got shape {np.shape(x_zero_point)}")
    if w_zero_point is not None and np.size(w_zero_point) not in (1, w.shape[0]):
        raise ValueError(f"w_zero_point must be a scalar or one value per output channel ({w.shape[0]}); "
                         f"got shape {np.shape(w_zero_point)}")
    xf = _centered(op, x, x_zero_point, "x")
    wf = _centered(op, w, w_zero_point, "w", (-1,) + (1,) * (w.ndim - 1))
    geom = conv_geometry(x.shape, w.shape, auto_pad, dilations, group, kernel_shape, pads, strides)
    return _float_conv(np.ascontiguousarray(xf), np.ascontiguousarray(wf), None, geom)


def _int_matmul(op, a, b, a_zero_point, b_zero_point):
    # a zero-point vector of A is per row (M values -> (M, 1)); of B per column (broadcasts)
    af = _centered(op, a, a_zero_point, "A", (-1, 1))
    bf = _centered(op, b, b_zero_point, "B")
    return np.matmul(af, bf)


@register("ConvInteger", since=10)
def conv_integer(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                 kernel_shape=None, pads=None, strides=None):
    return _exact_int32(_int_conv("ConvInteger", x, w, x_zero_point, w_zero_point, auto_pad, dilations, group,
                                  kernel_shape, pads, strides))


@register("MatMulInteger", since=10)
def matmul_integer(A, B, a_zero_point=None, b_zero_point=None):
    return _exact_int32(_int_matmul("MatMulInteger", A, B, a_zero_point, b_zero_point))


def _requantize(acc: np.ndarray, multiplier: np.ndarray, y_zero_point, like: np.ndarray, op: str) -> np.ndarray:
    """onnxruntime's requantization: ``saturate(rint(float32(acc) * multiplier) + y_zp)``."""
    dtype = _quant_dtype(op, y_zero_point.dtype if y_zero_point is not None else like.dtype, "an output")
    if y_zero_point is not None and np.size(y_zero_point) != 1:
        raise ValueError(f"y_zero_point must be a scalar; got shape {np.shape(y_zero_point)}")
    v = np.rint(acc.astype(np.float32) * multiplier.astype(np.float32))
    if y_zero_point is not None:
        v += np.float32(np.asarray(y_zero_point).reshape(()))
    return _saturate(v, dtype)


def _scale_vec(op, s, n: int, what: str) -> np.ndarray:
    _float_dtype(op, s, what)
    if s.size != 1 and (s.ndim != 1 or s.size != n):
        raise ValueError(f"{what} must be a scalar or a vector of {n} values; got shape {s.shape}")
    return s.reshape(-1) if s.size != 1 else s.reshape(())


@register("QLinearConv", since=10)
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, *,
                 auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    op = "QLinearConv"
    acc = _exact_int32(_int_conv(op, x, w, x_zero_point, w_zero_point, auto_pad, dilations, group, kernel_shape,
                                 pads, strides)).astype(np.int64)
    oc = w.shape[0]
    if B is not None:
        if B.dtype != np.int32 or B.size != oc:
            raise ValueError(f"the bias must be int32 with {oc} values; got {B.dtype} of shape {B.shape}")
        acc += B.reshape((1, oc) + (1,) * (acc.ndim - 2))
    xs = _scale_vec(op, x_scale, 1, "x_scale")
    ws = _scale_vec(op, w_scale, oc, "w_scale")
    ys = _scale_vec(op, y_scale, 1, "y_scale")
    m = xs * ws / ys
    if m.ndim:
        m = m.reshape((1, oc) + (1,) * (acc.ndim - 2))
    return _requantize(acc.astype(np.int32), m, y_zero_point, x, op)


@register("QLinearMatMul", since=10)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    op = "QLinearMatMul"
    acc = _exact_int32(_int_matmul(op, a, b, a_zero_point, b_zero_point))
    m_rows = a.shape[-2] if a.ndim >= 2 else 1
    n_cols = b.shape[-1] if b.ndim >= 2 else 1
    sa = _scale_vec(op, a_scale, m_rows, "a_scale")
    sb = _scale_vec(op, b_scale, n_cols, "b_scale")
    ys = _scale_vec(op, y_scale, 1, "y_scale")
    if sa.ndim:
        sa = sa.reshape(-1, 1)
    m = sa * sb / ys
    return _requantize(acc, m, y_zero_point, a, op)
