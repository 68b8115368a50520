"""Element-wise ONNX operators: arithmetic, comparisons, logic, Where, Cast.

Every function follows the registry contract (see :mod:`anasim.ops.registry`): input
names and attribute keywords copied from the ONNX specification. Types follow ONNX,
not NumPy's promotion rules: a binary op returns the type of its first operand
(ONNX requires both to match, but NumPy 2 would promote ``float32 + float64[()]``),
integer ``Div`` truncates toward zero as C does, ``Pow`` keeps the base's type.

Opset history handled here: before opset 7, binary ops carried ``broadcast``/``axis``
attributes (:func:`_legacy_broadcast`); ``consumed_inputs`` (opset 1) is accepted and
ignored; ``Cast``'s ``to`` was a string in opset 1; float8/int4 targets are not supported.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .registry import register


# ---------------------------------------------------------------------- helpers
def _legacy_broadcast(A: np.ndarray, B: np.ndarray, broadcast: int, axis: int | None) -> np.ndarray:
    """Opset < 7 broadcasting: ``B`` aligns with ``A`` starting at ``axis`` (default: suffix)."""
    if broadcast and axis is not None and B.ndim:
        axis = axis + A.ndim if axis < 0 else axis
        B = B.reshape(B.shape + (1,) * (A.ndim - axis - B.ndim))
    return B


def _same_type(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    return out if out.dtype == like.dtype else out.astype(like.dtype)


def _int_div(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C semantics), division by zero -> 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.floor_divide(A, B)
        if A.dtype.kind == "i":
            r = np.remainder(A, B)
            q = q + ((r != 0) & ((A < 0) != (B < 0)))
    return q


# ---------------------------------------------------------------- binary arithmetic
def _binary(np_fn, A, B):
    return _same_type(np_fn(A, B), A)


@register("Add", since=1)
def add_1(A, B, *, broadcast=0, axis=None, consumed_inputs=None):
    return _binary(np.add, A, _legacy_broadcast(A, B, broadcast, axis))


@register("Add", since=7)
def add(A, B):
    return _binary(np.add, A, B)


@register("Sub", since=1)
def sub_1(A, B, *, broadcast=0, axis=None, consumed_inputs=None):
    return _binary(np.subtract, A, _legacy_broadcast(A, B, broadcast, axis))


@register("Sub", since=7)
def sub(A, B):
    return _binary(np.subtract, A, B)


@register("Mul", since=1)
def mul_1(A, B, *, broadcast=0, axis=None, consumed_inputs=None):
    return _binary(np.multiply, A, _legacy_broadcast(A, B, broadcast, axis))


@register("Mul", since=7)
def mul(A, B):
    return _binary(np.multiply, A, B)


@register("Div", since=7)
def div(A, B):
    if A.dtype.kind in "iu":
        return _same_type(_int_div(A, B), A)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _binary(np.divide, A, B)


@register("Div", since=1)
def div_1(A, B, *, broadcast=0, axis=None, consumed_inputs=None):
    return div(A, _legacy_broadcast(A, B, broadcast, axis))


@register("Pow", since=7)
def pow_(X, Y):
    """``X ** Y`` in ``X``'s type (opset 12+ allows a different exponent type)."""
    if X.dtype.kind in "iu":
        if Y.dtype.kind in "iu" and not (Y < 0).any():
            return _same_type(np.power(X, Y.astype(X.dtype)), X)
        out = np.power(X.astype(np.float64), Y.astype(np.float64))
        return out.astype(X.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _same_type(np.power(X, Y.astype(X.dtype, copy=False)), X)


@register("Pow", since=1)
def pow_1(X, Y, *, broadcast=0, axis=None):
    return pow_(X, _legacy_broadcast(X, Y, broadcast, axis))


@register("Mod", since=10)
def mod(A, B, *, fmod=0):
    """Remainder: sign of the divisor (``fmod=0``, integers only) or of the dividend (``fmod=1``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.fmod(A, B) if fmod else np.mod(A, B)
    return _same_type(out, A)


# ------------------------------------------------------------------- unary maths
def _unary(np_fn):
    def fn(X, *, consumed_inputs=None):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _same_type(np_fn(X), X)

    fn.__name__ = np_fn.__name__
    fn.__doc__ = f"Element-wise ``numpy.{np_fn.__name__}`` in the input's type."
    return fn


for _name, _since, _fn in [
    ("Sqrt", 1, np.sqrt), ("Exp", 1, np.exp), ("Log", 1, np.log), ("Neg", 1, np.negative),
    ("Abs", 1, np.abs), ("Reciprocal", 1, np.reciprocal), ("Floor", 1, np.floor),
    ("Ceil", 1, np.ceil), ("Sign", 9, np.sign), ("Round", 11, np.round),  # half to even
]:
    register(_name, since=_since)(_unary(_fn))


@register("IsNaN", since=9)
def isnan(X):
    return np.isnan(X)


@register("IsInf", since=10)
def isinf(X, *, detect_negative=1, detect_positive=1):
    pos = np.isposinf(X) if detect_positive else np.zeros(X.shape, bool)
    return pos | np.isneginf(X) if detect_negative else pos


# -------------------------------------------------------------- variadic reductions
@register("Sum", since=1)
def sum_(*data_0, consumed_inputs=None):
    out = data_0[0]
    for x in data_0[1:]:
        out = np.add(out, x)
    return _same_type(out, data_0[0])


@register("Mean", since=1)
def mean(*data_0, consumed_inputs=None):
    out = sum_(*data_0)
    return _same_type(out / np.asarray(len(data_0), dtype=out.dtype), data_0[0])


@register("Max", since=1)
def max_(*data_0, consumed_inputs=None):
    out = data_0[0]
    for x in data_0[1:]:
        out = np.maximum(out, x)
    return _same_type(out, data_0[0])


@register("Min", since=1)
def min_(*data_0, consumed_inputs=None):
    out = data_0[0]
    for x in data_0[1:]:
        out = np.minimum(out, x)
    return _same_type(out, data_0[0])


# --------------------------------------------------------------- comparisons, logic
def _compare(np_fn, since_legacy: int, name: str):
    def legacy(A, B, *, broadcast=0, axis=None):
        return np_fn(A, _legacy_broadcast(A, B, broadcast, axis))

    def modern(A, B):
        return np_fn(A, B)

    legacy.__name__, modern.__name__ = f"{np_fn.__name__}_legacy", np_fn.__name__
    register(name, since=since_legacy)(legacy)
    register(name, since=7)(modern)


for _name, _fn in [("Equal", np.equal), ("Less", np.less), ("Greater", np.greater),
                   ("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)]:
    _compare(_fn, 1, _name)


@register("LessOrEqual", since=12)
def less_equal(A, B):
    return np.less_equal(A, B)


@register("GreaterOrEqual", since=12)
def greater_equal(A, B):
    return np.greater_equal(A, B)


@register("Not", since=1)
def not_(X):
    return np.logical_not(X)


@register("Where", since=9)
def where(condition, X, Y):
    return _same_type(np.where(condition, X, Y), X)


# --------------------------------------------------------------------------- Cast
def _is_plain(dt: np.dtype) -> bool:
    """bool, integer or IEEE float of NumPy itself (not ml_dtypes' bfloat16/float8/int4)."""
    return dt.kind in "biuf" and dt.type.__module__ == "numpy"


def _check_cast(src: np.dtype, dst: np.dtype, name: str) -> None:
    # Narrow exotic sources (bfloat16, float8, int4 from ml_dtypes) widen exactly.
    if not _is_plain(dst) or not (_is_plain(src) or src.type.__module__ == "ml_dtypes"):
        raise UnsupportedOpError(
            f"Cast from {src} to {name} is not supported: anasim computes in bool, integer and "
            "IEEE float (16/32/64-bit) types; bfloat16/float8/int4 tensors can only be cast to those."
        )


@register("Cast", since=1)
def cast(input, *, to, saturate=1, round_mode="up"):
    """Convert to type ``to`` (a TensorProto code; its name in opset 1). ``saturate`` and
    ``round_mode`` only concern float8/float4 targets, which are not supported."""
    from onnx import TensorProto, helper

    code = TensorProto.DataType.Value(to.upper()) if isinstance(to, str) else int(to)
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(code))
    _check_cast(input.dtype, dt, TensorProto.DataType.Name(code))
    if dt == input.dtype:
        return input
    with np.errstate(invalid="ignore", over="ignore"):
        return input.astype(dt)


@register("CastLike", since=15)
def cast_like(input, target_type, *, saturate=1, round_mode="up"):
    _check_cast(input.dtype, target_type.dtype, str(target_type.dtype))
    with np.errstate(invalid="ignore", over="ignore"):
        return input.astype(target_type.dtype, copy=False)
