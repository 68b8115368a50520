"""Shape, indexing and data-movement ONNX operators (Reshape, Slice, Pad, Gather, ...).

Registry contract: see :mod:`anasim.ops.registry`. Where an attribute became an input
(Reshape 5, Slice 10, Pad 11, Squeeze/Unsqueeze 13, Split 13, Tile 6, Upsample 9) both
forms are registered. Outputs may be NumPy views of their inputs (Slice, Transpose,
Squeeze, Split...): no op in anasim writes into its inputs. Integer index/shape inputs
may arrive as any integer type; shape outputs are int64 as ONNX requires.

Reductions live in :mod:`anasim.ops.reduce` and Resize/Upsample in
:mod:`anasim.ops.resize`; importing this module registers them as well.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UnsupportedOpError
from .registry import register


def _ints(values) -> list[int]:
    """An attribute list or a 1-D integer tensor as a list of Python ints."""
    return [int(v) for v in np.asarray(values).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    axis = int(axis)
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


# -------------------------------------------------------------- constants, identity
@register("Constant", since=1)
def constant(*, value=None, sparse_value=None, value_float=None, value_floats=None,
             value_int=None, value_ints=None, value_string=None, value_strings=None):
    """The tensor held by exactly one of the ``value*`` attributes."""
    if value is not None:
        return np.asarray(value)
    if value_float is not None:
        return np.array(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.array(value_floats, dtype=np.float32).reshape(-1)
    if value_int is not None:
        return np.array(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.array(value_ints, dtype=np.int64).reshape(-1)
    if value_string is not None:
        return np.array(value_string, dtype=object)
    if value_strings is not None:
        return np.array(value_strings, dtype=object).reshape(-1)
    if sparse_value is not None:
        return _dense_from_sparse(sparse_value)
    raise ValueError("Constant node without a value attribute")


def _dense_from_sparse(sp) -> np.ndarray:
    if isinstance(sp, np.ndarray):
        return sp
    from onnx import numpy_helper

    values = numpy_helper.to_array(sp.values)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    out = np.zeros(tuple(sp.dims), dtype=values.dtype)
    if indices.ndim == 1:  # linearised indices
        out.reshape(-1)[indices] = values
    else:  # [NNZ, rank] coordinates
        out[tuple(indices.T)] = values
    return out


@register("ConstantOfShape", since=9)
def constant_of_shape(input, *, value=None):
    """A tensor of shape ``input`` filled with the one element of ``value`` (float32 0 by default)."""
    v = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return np.full(tuple(_ints(input)), v.reshape(-1)[0], dtype=v.dtype)


@register("Identity", since=1)
def identity(input):
    return input


@register("Dropout", since=1, wants_n_outputs=True)
def dropout_1(data, *, is_test=0, ratio=0.5, consumed_inputs=None, n_outputs=1):
    """Inference: identity; the mask (opsets < 10: input type) is all ones."""
    return data if n_outputs < 2 else (data, np.ones(data.shape, data.dtype))


@register("Dropout", since=10, wants_n_outputs=True)
def dropout_10(data, *, ratio=0.5, n_outputs=1):
    return data if n_outputs < 2 else (data, np.ones(data.shape, bool))


@register("Dropout", since=12, wants_n_outputs=True)
def dropout(data, ratio=None, training_mode=None, *, seed=None, n_outputs=1):
    """Inference: identity, boolean mask of ones. Training mode with ratio > 0 is refused."""
    if training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0]):
        r = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if r != 0.0:
            raise UnsupportedOpError(
                "Dropout with training_mode=True and ratio > 0 is random; anasim runs "
                "inference only. Export the model in eval mode."
            )
    return data if n_outputs < 2 else (data, np.ones(data.shape, bool))


# ------------------------------------------------------------------- shape queries
@register("Shape", since=1)
def shape_1(data):
    return np.array(data.shape, dtype=np.int64)


@register("Shape", since=15)
def shape(data, *, start=0, end=None):
    """``data.shape[start:end]`` as int64 (out-of-range bounds are clamped)."""
    return np.array(data.shape[int(start):None if end is None else int(end)], dtype=np.int64)


@register("Size", since=1)
def size(data):
    return np.array(data.size, dtype=np.int64)


# --------------------------------------------------------------------- reshaping
def _reshape(data, shape, allowzero=0):
    shape = _ints(shape)
    if not allowzero:
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return data.reshape(shape)


@register("Reshape", since=1)
def reshape_1(data, *, shape, consumed_inputs=None):
    return _reshape(data, shape)


@register("Reshape", since=5)
def reshape(data, shape, *, allowzero=0):
    """``0`` copies the input dimension (unless ``allowzero``), ``-1`` is inferred."""
    return _reshape(data, shape, allowzero)


@register("Flatten", since=1)
def flatten(input, *, axis=1):
    axis = int(axis) + input.ndim if int(axis) < 0 else int(axis)
    return input.reshape(math.prod(input.shape[:axis]), math.prod(input.shape[axis:]))


@register("Squeeze", since=1)
def squeeze_1(data, *, axes=None):
    return squeeze(data, axes)


@register("Squeeze", since=13)
def squeeze(data, axes=None):
    """Remove the given size-1 axes, or every size-1 axis if ``axes`` is absent."""
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(_axis(a, data.ndim) for a in _ints(axes)))


@register("Unsqueeze", since=1)
def unsqueeze_1(data, *, axes):
    return unsqueeze(data, axes)


@register("Unsqueeze", since=13)
def unsqueeze(data, axes):
    """Insert size-1 axes; ``axes`` index the output (negative ones from its end)."""
    rank = data.ndim + len(_ints(axes))
    return np.expand_dims(data, tuple(sorted(_axis(a, rank) for a in _ints(axes))))


@register("Transpose", since=1)
def transpose(data, *, perm=None):
    return np.transpose(data, None if perm is None else _ints(perm))


@register("Expand", since=8)
def expand(input, shape):
    """Bidirectional broadcast of ``input`` to ``shape`` (a materialised copy)."""
    out_shape = np.broadcast_shapes(input.shape, tuple(_ints(shape)))
    return np.array(np.broadcast_to(input, out_shape))


@register("Tile", since=6)
def tile(input, repeats):
    return np.tile(input, tuple(_ints(repeats)))


@register("DepthToSpace", since=1)
def depth_to_space(input, *, blocksize, mode="DCR"):
    b, c, h, w = input.shape
    bs = int(blocksize)
    if mode == "DCR":
        x = input.reshape(b, bs, bs, c // bs**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:  # CRD
        x = input.reshape(b, c // bs**2, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // bs**2, h * bs, w * bs)


@register("SpaceToDepth", since=1)
def space_to_depth(input, *, blocksize, mode="DCR"):
    """Inverse of DepthToSpace (``mode`` CRD appeared in opset 28)."""
    b, c, h, w = input.shape
    bs = int(blocksize)
    x = input.reshape(b, c, h // bs, bs, w // bs, bs)
    x = x.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else x.transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * bs * bs, h // bs, w // bs)


# ------------------------------------------------------------------ join and split
@register("Concat", since=1)
def concat(*inputs, axis=1):
    return np.concatenate(inputs, axis=_axis(axis, inputs[0].ndim))


def _split(input, split, axis, n_outputs, num_outputs=None):
    axis = _axis(axis, input.ndim)
    dim = input.shape[axis]
    if split is None or np.asarray(split).size == 0:
        n = int(num_outputs) if num_outputs is not None else n_outputs
        chunk = -(-dim // n)  # ceil; equal to dim / n when it divides
        split = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    split = _ints(split)
    if sum(split) != dim or min(split) < 0:
        raise ValueError(f"split sizes {split} do not add up to dimension {dim} of axis {axis}")
    return tuple(np.split(input, np.cumsum(split)[:-1], axis=axis))


@register("Split", since=1, wants_n_outputs=True)
def split_1(input, split=None, *, axis=0, n_outputs=1):
    """Opset 1: ``split`` is an optional input or an attribute (same keyword either way)."""
    return _split(input, split, axis, n_outputs)


@register("Split", since=2, wants_n_outputs=True)
def split_2(input, *, axis=0, split=None, n_outputs=1):
    return _split(input, split, axis, n_outputs)


@register("Split", since=13, wants_n_outputs=True)
def split_13(input, split=None, *, axis=0, n_outputs=1):
    return _split(input, split, axis, n_outputs)


@register("Split", since=18, wants_n_outputs=True)
def split(input, split=None, *, axis=0, num_outputs=None, n_outputs=1):
    """Split along ``axis`` by sizes, or into ``num_outputs`` chunks (the last may be smaller)."""
    return _split(input, split, axis, n_outputs, num_outputs)


# -------------------------------------------------------------------------- Slice
def _slice_index(shape, starts, ends, axes=None, steps=None) -> tuple:
    rank = len(shape)
    starts, ends = _ints(starts), _ints(ends)
    axes = range(len(starts)) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, rank)
        d = shape[a]
        if st == 0:
            raise ValueError("Slice step must not be 0")
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:  # the end may be -1: "up to and including element 0"
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        index[a] = slice(s, e if e >= 0 else None, st)
    return tuple(index)


@register("Slice", since=1)
def slice_1(data, *, starts, ends, axes=None):
    return data[_slice_index(data.shape, starts, ends, axes)]


@register("Slice", since=10)
def slice_(data, starts, ends, axes=None, steps=None):
    """NumPy basic slicing with ONNX clamping (a view of ``data``)."""
    return data[_slice_index(data.shape, starts, ends, axes, steps)]


# ---------------------------------------------------------------------------- Pad
_PAD_MODES = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def pad_amounts(rank: int, pads, axes=None) -> tuple[list[int], list[int]]:
    """Elements added (negative: removed) before and after each of ``rank`` axes."""
    pads = _ints(pads)
    axes = list(range(rank)) if axes is None else [_axis(a, rank) for a in _ints(axes)]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad needs 2 x {len(axes)} pads; got {len(pads)}")
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + len(axes)]
    return begin, end


def pad_value(constant_value) -> float:
    """The Pad-11 ``constant_value`` input as a scalar (0 when absent or empty)."""
    cv = None if constant_value is None else np.asarray(constant_value).reshape(-1)
    return cv[0] if cv is not None and cv.size else 0


def _pad(data, pads, mode="constant", value=0.0, axes=None):
    begin, end = pad_amounts(data.ndim, pads, axes)
    if min(begin + end, default=0) < 0:  # negative pads crop
        data = data[tuple(slice(max(-b, 0), d - max(-e, 0)) for b, e, d in zip(begin, end, data.shape))]
        begin, end = [max(b, 0) for b in begin], [max(e, 0) for e in end]
    if not any(begin) and not any(end):
        return data
    if mode == "constant":
        out = np.full([b + d + e for b, d, e in zip(begin, data.shape, end)], value, dtype=data.dtype)
        out[tuple(slice(b, b + d) for b, d in zip(begin, data.shape))] = data
        return out
    if mode not in _PAD_MODES:
        raise ValueError(f"Unknown Pad mode {mode!r}; expected constant, reflect, edge or wrap")
    return np.pad(data, list(zip(begin, end)), mode=_PAD_MODES[mode])


@register("Pad", since=1)
def pad_1(data, *, paddings, mode="constant", value=0.0):
    return _pad(data, paddings, mode, value)


@register("Pad", since=2)
def pad_2(data, *, pads, mode="constant", value=0.0):
    return _pad(data, pads, mode, value)


@register("Pad", since=11)
def pad(data, pads, constant_value=None, axes=None, *, mode="constant"):
    """Pad (or, with negative pads, crop) ``data``; modes constant, reflect, edge, wrap (19)."""
    return _pad(data, pads, mode, pad_value(constant_value), axes)


# ------------------------------------------------------------------------- Gather
@register("Gather", since=1)
def gather(data, indices, *, axis=0):
    """``numpy.take`` along ``axis``; negative indices count from the end."""
    return np.take(data, indices.astype(np.intp, copy=False), axis=_axis(axis, data.ndim))


@register("GatherElements", since=11)
def gather_elements(data, indices, *, axis=0):
    axis = _axis(axis, data.ndim)
    idx = np.where(indices < 0, indices + data.shape[axis], indices).astype(np.intp)
    return np.take_along_axis(data, idx, axis=axis)


@register("GatherND", since=11)
def gather_nd(data, indices, *, batch_dims=0):
    b = int(batch_dims)
    batch = data.shape[:b]
    nb = math.prod(batch)
    d = data.reshape((nb,) + data.shape[b:])
    ind = indices.astype(np.intp).reshape((nb,) + indices.shape[b:])
    k = ind.shape[-1]
    rows = np.arange(nb).reshape((nb,) + (1,) * (ind.ndim - 2))
    out = d[(rows,) + tuple(np.moveaxis(ind, -1, 0))]
    return out.reshape(batch + ind.shape[1:-1] + d.shape[1 + k:])


@register("NonZero", since=9)
def nonzero(X):
    return np.array(np.nonzero(X), dtype=np.int64).reshape(X.ndim, -1)


@register("Range", since=11)
def range_(start, limit, delta):
    """``start + k * delta`` for k = 0 .. ceil((limit - start) / delta) - 1, in ``start``'s type."""
    s, lim, d = start.item(), limit.item(), delta.item()
    n = max(int(math.ceil((lim - s) / d)), 0)
    if start.dtype.kind in "iu":
        t = start.dtype.type
        return (np.arange(n, dtype=start.dtype) * t(d) + t(s)).astype(start.dtype)
    return (s + d * np.arange(n, dtype=np.float64)).astype(start.dtype)
