"""Element-wise and tensor ops against onnxruntime, one-node models, many attribute combinations.

Each case builds a one-node ONNX model with ``onnx.helper`` at a given opset, runs it in
onnxruntime (the oracle) and runs anasim's implementation resolved from the registry
for that opset, with attributes passed as the importer passes them (Python values).
Outputs must have the same dtype and shape and agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from anasim.ops.registry import resolve

import onnxruntime as ort

RNG = np.random.default_rng(20240601)
F32 = np.float32


def rand(*shape, dtype=F32, lo=-3.0, hi=3.0):
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
    if np.dtype(dtype) == bool:
        return RNG.random(shape) < 0.5
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


def i64(*v):
    return np.array(v, dtype=np.int64)


def _attr_value(a):
    v = helper.get_attribute_value(a)
    if hasattr(v, "dims"):  # TensorProto
        return numpy_helper.to_array(v)
    if isinstance(v, bytes):
        return v.decode()
    return v


def check(op, inputs, attrs=None, opset=17, n_out=1, rtol=1e-5, atol=1e-6):
    """Run ``op`` in onnxruntime and in anasim; compare every output."""
    attrs = attrs or {}
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    feeds = {n: v for n, v in zip(names, inputs) if n}
    outs = [f"out{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outs],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    want = sess.run(outs, feeds)

    impl = resolve("", op, opset)
    kw = {a.name: _attr_value(a) for a in node.attribute}
    if impl.wants_n_outputs:
        kw["n_outputs"] = n_out
    got = impl.fn(*inputs, **kw)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) >= n_out
    for g_, w in zip(got, want):
        g_ = np.asarray(g_)
        assert g_.dtype == w.dtype, f"{op}: dtype {g_.dtype} != onnxruntime {w.dtype}"
        assert g_.shape == w.shape, f"{op}: shape {g_.shape} != onnxruntime {w.shape}"
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g_, w, rtol=rtol, atol=atol, equal_nan=True)
        else:
            np.testing.assert_array_equal(g_, w)
    return got


# ----------------------------------------------------------------------- element-wise
BIN_SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((3, 4), ()), ((), (2, 2))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", BIN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_binary_arith(op, shapes, dtype):
    a = rand(*shapes[0], dtype=dtype, lo=-20, hi=20)
    b = rand(*shapes[1], dtype=dtype, lo=-5, hi=5)
    if op == "Div":
        b = np.where(b == 0, 3, b).astype(dtype)  # integer division by zero is undefined
    check(op, [a, b], opset=14)


@pytest.mark.parametrize("op", ["Add", "Mul", "Div"])
def test_binary_float64_opset7(op):
    check(op, [rand(3, 4, dtype=np.float64), rand(4, dtype=np.float64, lo=0.5, hi=2)], opset=7)


@pytest.mark.parametrize("base,exp", [
    (rand(2, 3, lo=0.1, hi=3), rand(2, 3, lo=-2, hi=2)),
    (rand(2, 3), np.array(2.0, F32)),
    (rand(2, 3), np.array(3, np.int64)),
    (rand(4, dtype=np.int64, lo=-4, hi=4), np.array([0, 1, 2, 3], np.int64)),
    (rand(4, dtype=np.int32, lo=0, hi=4), np.array([0.5, 1.0, 2.0, 3.0], F32)),
], ids=["ff", "f-scalar", "f-int", "ii", "i-f"])
def test_pow(base, exp):
    check("Pow", [base, exp], opset=15, rtol=1e-5)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_mod(fmod, dtype):
    if dtype == np.float32 and not fmod:
        pytest.skip("fmod=0 is defined for integers only")
    a = rand(3, 5, dtype=dtype, lo=-20, hi=20)
    b = rand(5, dtype=dtype, lo=1, hi=6) * np.where(np.arange(5) % 2, 1, -1).astype(dtype)
    check("Mod", [a, b], {"fmod": fmod}, opset=13)


@pytest.mark.parametrize("op,lo,hi", [
    ("Sqrt", 0.0, 4.0), ("Exp", -3, 3), ("Log", 0.01, 5), ("Neg", -3, 3), ("Abs", -3, 3),
    ("Reciprocal", 0.5, 3), ("Floor", -3, 3), ("Ceil", -3, 3), ("Sign", -3, 3),
])
def test_unary(op, lo, hi):
    check(op, [rand(2, 3, 5, lo=lo, hi=hi)], opset=13)


def test_round_half_to_even():
    check("Round", [np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6], F32)], opset=11)


@pytest.mark.parametrize("op", ["Neg", "Abs"])
def test_unary_int(op):
    check(op, [rand(3, 4, dtype=np.int64, lo=-9, hi=9)], opset=13)


@pytest.mark.parametrize("op", ["Min", "Max", "Sum", "Mean"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_variadic(op, n):
    shapes = [(2, 3, 4), (3, 1), (4,)][:n]
    check(op, [rand(*s) for s in shapes], opset=13)


@pytest.mark.parametrize("op", ["Min", "Max"])
def test_variadic_int(op):
    check(op, [rand(3, 4, dtype=np.int32, lo=-9, hi=9), rand(4, dtype=np.int32, lo=-9, hi=9)], opset=13)


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_compare(op, dtype):
    a = rand(3, 4, dtype=dtype, lo=-2, hi=2)
    b = rand(4, dtype=dtype, lo=-2, hi=2)
    if dtype == np.float32:
        a, b = np.round(a), np.round(b)  # make equality happen
    check(op, [a, b], opset=13)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op):
    check(op, [rand(3, 4, dtype=bool), rand(4, dtype=bool)], opset=7)
    check("Not", [rand(3, 4, dtype=bool)], opset=1)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_where(dtype):
    check("Where", [rand(3, 1, 4, dtype=bool), rand(2, 4, dtype=dtype), rand(1, dtype=dtype)], opset=16)


def test_isnan_isinf():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 1.5], F32)
    check("IsNaN", [x], opset=13)
    for pos, neg in [(1, 1), (1, 0), (0, 1)]:
        check("IsInf", [x], {"detect_positive": pos, "detect_negative": neg}, opset=10)


CASTS = [
    (np.float32, TensorProto.INT32), (np.float32, TensorProto.INT64), (np.float32, TensorProto.FLOAT16),
    (np.float32, TensorProto.DOUBLE), (np.float32, TensorProto.BOOL), (np.float32, TensorProto.UINT8),
    (np.float16, TensorProto.FLOAT), (np.int64, TensorProto.FLOAT), (np.int32, TensorProto.INT64),
    (np.int64, TensorProto.INT32), (np.bool_, TensorProto.FLOAT), (np.float64, TensorProto.FLOAT),
    (np.float32, TensorProto.FLOAT),
]


@pytest.mark.parametrize("src,to", CASTS, ids=lambda v: str(v))
@pytest.mark.parametrize("opset", [9, 13, 19])
def test_cast(src, to, opset):
    lo = 0 if to == TensorProto.UINT8 else -100
    x = rand(3, 5, dtype=src, lo=lo, hi=100)
    check("Cast", [x], {"to": to}, opset=opset)
    check("CastLike", [x, np.zeros(1, helper.tensor_dtype_to_np_dtype(to))], opset=15)


def test_cast_opset1_string_to():
    impl = resolve("", "Cast", 1)
    assert impl.fn(np.array([1.7, -2.2], F32), to="INT32").tolist() == [1, -2]


def test_cast_unsupported_target():
    from anasim.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="FLOAT8E4M3FN"):
        resolve("", "Cast", 19).fn(np.zeros(2, F32), to=TensorProto.FLOAT8E4M3FN)


def test_legacy_broadcast_opset6():
    # onnxruntime has no Add-6 kernel; check the axis rule directly.
    a, b = rand(2, 3, 4, 5), rand(3, 4)
    got = resolve("", "Add", 6).fn(a, b, broadcast=1, axis=1)
    np.testing.assert_array_equal(got, a + b[None, :, :, None])
    got = resolve("", "Mul", 6).fn(a, rand(5), broadcast=1)
    assert got.shape == a.shape


# --------------------------------------------------------------------- constants
def test_constant_forms():
    t = numpy_helper.from_array(rand(2, 3), "t")
    check("Constant", [], {"value": t}, opset=13)
    check("Constant", [], {"value_float": 2.5}, opset=13)
    check("Constant", [], {"value_floats": [1.0, 2.0]}, opset=13)
    check("Constant", [], {"value_int": 7}, opset=13)
    check("Constant", [], {"value_ints": [1, -2, 3]}, opset=13)


@pytest.mark.parametrize("value", [None, np.array([3], np.int64), np.array([0.5], F32),
                                   np.array([1], np.int32)])
@pytest.mark.parametrize("shape", [i64(2, 3), i64(4), np.zeros(0, np.int64)], ids=str)
def test_constant_of_shape(value, shape):
    attrs = {} if value is None else {"value": numpy_helper.from_array(value, "v")}
    check("ConstantOfShape", [shape], attrs, opset=9)


def test_identity_and_dropout():
    x = rand(2, 3, 4)
    check("Identity", [x], opset=16)
    check("Dropout", [x], opset=13, n_out=2)
    check("Dropout", [x, np.array(0.3, F32)], opset=13, n_out=2)
    check("Dropout", [x, np.array(0.3, F32), np.array(False)], opset=13, n_out=2)
    check("Dropout", [x], {"ratio": 0.2}, opset=10)
    check("Dropout", [x], opset=7)
    # Before opset 12 onnxruntime returns an all-false mask in inference; the ONNX reference
    # (and the spec's meaning: nothing was dropped) gives ones, as anasim does.
    _, mask = resolve("", "Dropout", 10).fn(x, ratio=0.2, n_outputs=2)
    assert mask.dtype == bool and mask.all()


def test_dropout_training_refused():
    from anasim.errors import UnsupportedOpError

    fn = resolve("", "Dropout", 13).fn
    with pytest.raises(UnsupportedOpError):
        fn(rand(3), np.array(0.5, F32), np.array(True))
    out, mask = fn(rand(3), np.array(0.0, F32), np.array(True), n_outputs=2)
    assert mask.all()


# --------------------------------------------------------------- shapes and copies
@pytest.mark.parametrize("start,end", [(None, None), (1, None), (-1, None), (0, -1), (-10, 10), (2, 1),
                                       (1, 3)])
def test_shape(start, end):
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    check("Shape", [rand(2, 3, 4, 5)], attrs, opset=15)
    check("Shape", [rand(2, 3)], opset=13)
    check("Size", [rand(2, 3, 4)], opset=13)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis):
    check("Flatten", [rand(2, 3, 4)], {"axis": axis}, opset=13)


@pytest.mark.parametrize("shape,allowzero,xshape", [
    (i64(4, 6), 0, (2, 3, 4)), (i64(-1), 0, (2, 3, 4)), (i64(0, -1), 0, (2, 3, 4)),
    (i64(0, 0, 2, 2), 0, (2, 3, 4)), (i64(2, 0, 4), 1, (2, 0, 4)), (i64(-1, 2), 0, (0, 4)),
    (i64(0, 4), 1, (0, 4)),
], ids=str)
def test_reshape(shape, allowzero, xshape):
    check("Reshape", [rand(*xshape), shape], {"allowzero": allowzero}, opset=14)


@pytest.mark.parametrize("perm", [None, [0, 2, 1, 3], [3, 2, 1, 0], [1, 0, 3, 2]], ids=str)
def test_transpose(perm):
    check("Transpose", [rand(2, 3, 4, 5)], {} if perm is None else {"perm": perm}, opset=13)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 4]] * 3
    for k, s in enumerate(shapes):
        s = list(s)
        s[axis] = k + 1
        shapes[k] = s
    check("Concat", [rand(*s) for s in shapes], {"axis": axis}, opset=13)


@pytest.mark.parametrize("opset,split,axis,n", [
    (13, None, 0, 2), (13, i64(1, 3), 1, 2), (13, i64(2, 0, 2), -1, 3), (11, [1, 2, 1], 2, 3),
    (11, None, 1, 4), (18, None, 2, 3), (18, i64(1, 1, 2), 2, 3),
], ids=str)
def test_split(opset, split, axis, n):
    x = rand(4, 4, 4)
    if opset < 13:
        attrs = {"axis": axis, **({"split": split} if split is not None else {})}
        check("Split", [x], attrs, opset=opset, n_out=n)
        return
    attrs = {"axis": axis}
    if opset >= 18 and split is None:
        attrs["num_outputs"] = n
    check("Split", [x] + ([split] if split is not None else []), attrs, opset=opset, n_out=n)


SLICES = [
    (i64(0), i64(2), None, None),
    (i64(1, 0), i64(3, -1), i64(0, 2), None),
    (i64(-1), i64(-1000), i64(1), i64(-1)),
    (i64(10), i64(-10), i64(2), i64(-2)),
    (i64(0, 1), i64(2**63 - 1, 2**63 - 1), i64(1, 2), i64(2, 3)),
    (i64(-2**63), i64(2), i64(-1), None),
    (i64(3), i64(0), i64(0), i64(-1)),
    (i64(5), i64(5), i64(1), None),
    (i64(-3, 0, 1), i64(-1, 4, 5), i64(-1, 0, 1), i64(1, 1, 2)),
    (i64(2**63 - 1), i64(-2**63), i64(2), i64(-3)),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES, ids=[f"s{k}" for k in range(len(SLICES))])
def test_slice(starts, ends, axes, steps):
    x = rand(4, 5, 6)
    check("Slice", [x, starts, ends, axes, steps], opset=13)


def test_slice_opset1():
    check("Slice", [rand(4, 5, 6)], {"starts": [1, -3], "ends": [3, 100], "axes": [0, 2]}, opset=9)


PADS = [
    ([1, 2, 0, 3, 0, 1], "constant"), ([0, 0, 1, 2, 0, 0, 1, 2], "constant"),
    ([1, 1, 2, 2], "reflect"), ([2, 0, 1, 3], "edge"), ([1, 2, 2, 1], "wrap"),
    ([-1, 1, 0, -2], "constant"), ([0, 0, -1, 2, 0, 0, 1, -1], "constant"),
]


@pytest.mark.parametrize("pads,mode", PADS, ids=str)
def test_pad(pads, mode):
    x = rand(*([2, 3, 4, 5][-len(pads) // 2:]))
    opset = 19 if mode == "wrap" else 13
    check("Pad", [x, np.array(pads, np.int64), np.array(1.5, F32)], {"mode": mode}, opset=opset)
    if mode == "constant":
        check("Pad", [x, np.array(pads, np.int64)], opset=11)
        check("Pad", [x], {"pads": pads, "value": -2.0}, opset=2)


def test_pad_axes_and_int():
    x = rand(2, 3, 4, dtype=np.int32, lo=-9, hi=9)
    check("Pad", [x, i64(1, 2, 0, 3), np.array(7, np.int32), i64(0, -1)], opset=18)
    check("Pad", [rand(2, 3, 4), i64(2, 1), None, i64(1)], {"mode": "reflect"}, opset=18)


@pytest.mark.parametrize("axes", [None, [0], [-1], [0, 3]], ids=str)
def test_squeeze(axes):
    x = rand(1, 3, 1, 1)
    check("Squeeze", [x] + ([] if axes is None else [np.array(axes, np.int64)]), opset=13)
    check("Squeeze", [x], {} if axes is None else {"axes": axes}, opset=11)


@pytest.mark.parametrize("axes", [[0], [-1], [0, 3], [1, -1], [2, 0]], ids=str)
def test_unsqueeze(axes):
    x = rand(3, 4)
    check("Unsqueeze", [x, np.array(axes, np.int64)], opset=13)
    check("Unsqueeze", [x], {"axes": axes}, opset=11)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [i64(0, 2, -1), np.array(1, np.int64),
                                     np.array([[0, -2], [1, 1]], np.int32)],
                         ids=["vec", "scalar", "mat"])
def test_gather(axis, indices):
    check("Gather", [rand(3, 4, 5), indices], {"axis": axis}, opset=13)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = rand(3, 4)
    idx = RNG.integers(-x.shape[axis], x.shape[axis], size=(3, 4)).astype(np.int64)
    check("GatherElements", [x, idx], {"axis": axis}, opset=13)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd(batch_dims):
    x = rand(2, 3, 4)
    idx = np.array([[[1, 2]], [[0, -1]]], np.int64) if batch_dims else np.array([[1, 2], [0, -3]], np.int64)
    check("GatherND", [x, idx], {"batch_dims": batch_dims}, opset=13)


@pytest.mark.parametrize("xshape,shape", [((3, 1), i64(2, 1, 6)), ((1, 4), i64(3, 1)), ((2, 3), i64(1)),
                                         ((3,), i64(2, 3))], ids=str)
def test_expand(xshape, shape):
    check("Expand", [rand(*xshape), shape], opset=13)


@pytest.mark.parametrize("reps", [i64(1, 1), i64(2, 3), i64(3, 1)], ids=str)
def test_tile(reps):
    check("Tile", [rand(2, 3), reps], opset=13)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_space(mode):
    check("DepthToSpace", [rand(2, 8, 3, 4)], {"blocksize": 2, "mode": mode}, opset=13)
    check("SpaceToDepth", [rand(2, 2, 4, 6)], {"blocksize": 2}, opset=13)


@pytest.mark.parametrize("args", [(0, 10, 3), (10, 0, -3), (1.0, 2.0, 0.25), (5, 5, 1), (-3.5, 1.0, 1.5)],
                         ids=str)
def test_range(args):
    dtype = F32 if isinstance(args[0], float) else np.int64
    check("Range", [np.array(a, dtype) for a in args], opset=11)


def test_nonzero():
    check("NonZero", [np.array([[1, 0, 2], [0, 0, 3]], np.int64)], opset=13)


# ---------------------------------------------------------------------- reductions
REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes", [None, [1], [0, 2], [-1]], ids=str)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(op, axes, keepdims):
    x = rand(3, 4, 5, lo=0.1, hi=2.0)
    input_since = 13 if op == "ReduceSum" else 18
    attrs = {"keepdims": keepdims}
    # attribute form (opset 11/13) and input form (13/18)
    check(op, [x], {**attrs, **({"axes": axes} if axes else {})}, opset=input_since - 2, rtol=1e-5)
    check(op, [x] + ([np.array(axes, np.int64)] if axes else []), attrs, opset=input_since, rtol=1e-5)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
def test_reduce_noop_and_empty_axes(op):
    x = rand(2, 3)
    opset = 13 if op == "ReduceSum" else 18
    check(op, [x, np.zeros(0, np.int64)], {"noop_with_empty_axes": 1}, opset=opset)
    check(op, [x, np.zeros(0, np.int64)], {"noop_with_empty_axes": 0}, opset=opset)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceSum"])
def test_reduce_int(op):
    check(op, [rand(3, 4, dtype=np.int32, lo=-9, hi=9)], {"axes": [1], "keepdims": 0}, opset=11)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_arg(op, axis, keepdims, last):
    x = rand(3, 4, 5, dtype=np.int64, lo=0, hi=3)  # many ties
    check(op, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last}, opset=13)


# -------------------------------------------------------------------------- Resize
CTMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 0.5, 0.5), (1, 1, 1.5, 0.75), (1, 1, 3, 1)], ids=str)
@pytest.mark.parametrize("ctm", CTMS + ["half_pixel_symmetric"])
@pytest.mark.parametrize("nearest_mode", NEAREST)
def test_resize_nearest_scales(scales, ctm, nearest_mode):
    x = rand(2, 3, 6, 8)
    attrs = {"mode": "nearest", "coordinate_transformation_mode": ctm, "nearest_mode": nearest_mode}
    check("Resize", [x, None, np.array(scales, F32)], attrs, opset=19)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 0.5, 0.6), (1, 1, 1.7, 0.8)], ids=str)
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_resize_linear_cubic_scales(mode, ctm, scales, exclude_outside):
    if mode == "linear" and exclude_outside:
        pytest.skip("exclude_outside only changes cubic")
    x = rand(1, 2, 7, 9)
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm, "exclude_outside": exclude_outside}
    check("Resize", [x, None, np.array(scales, F32)], attrs, opset=13, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("sizes", [(2, 3, 12, 5), (2, 3, 3, 17), (2, 3, 4, 4)], ids=str)
def test_resize_sizes(mode, sizes):
    x = rand(2, 3, 6, 8)
    check("Resize", [x, np.zeros(0, F32), np.zeros(0, F32), np.array(sizes, np.int64)], {"mode": mode},
          opset=11, rtol=1e-4, atol=1e-5)
    check("Resize", [x, None, None, np.array(sizes, np.int64)], {"mode": mode}, opset=13,
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("scales", [(1, 1, 0.5, 0.6), (1, 1, 0.3, 2.0)], ids=str)
def test_resize_antialias(mode, scales):
    x = rand(1, 2, 10, 12)
    check("Resize", [x, None, np.array(scales, F32)], {"mode": mode, "antialias": 1}, opset=18,
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_resize_axes_and_policy(policy):
    x = rand(1, 2, 6, 8)
    attrs = {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": policy}
    check("Resize", [x, None, None, i64(9, 10)], attrs, opset=18, rtol=1e-4, atol=1e-5)
    check("Resize", [x, None, np.array([2.0, 0.5], F32)], {"mode": "nearest", "axes": [3, 2]}, opset=18)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_tf_crop_and_resize(mode):
    x = rand(1, 1, 6, 6)
    roi = np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 0.7], F32)
    attrs = {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize",
             "extrapolation_value": 10.0}
    check("Resize", [x, roi, None, i64(1, 1, 4, 5)], attrs, opset=13, rtol=1e-4, atol=1e-5)


def test_resize_3d_and_5d():
    check("Resize", [rand(2, 3, 5), None, np.array([1, 1, 2.0], F32)], {"mode": "linear"}, opset=13,
          rtol=1e-5)
    check("Resize", [rand(1, 2, 3, 4, 5), None, np.array([1, 1, 2, 0.5, 1.5], F32)], {"mode": "nearest"},
          opset=13)


def test_resize_uint8():
    x = rand(1, 1, 5, 5, dtype=np.uint8, lo=0, hi=255)
    check("Resize", [x, None, np.array([1, 1, 2, 2], F32)], {"mode": "nearest"}, opset=13)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 2, 3), (1, 1, 0.5, 0.5), (1, 1, 1.5, 2.5)], ids=str)
def test_resize10_and_upsample(mode, scales):
    x = rand(2, 2, 4, 6)
    s = np.array(scales, F32)
    check("Resize", [x, s], {"mode": mode}, opset=10, rtol=1e-5)
    if min(scales) >= 1:  # Upsample
        check("Upsample", [x, s], {"mode": mode}, opset=9, rtol=1e-5)
        check("Upsample", [x], {"mode": mode, "scales": [float(v) for v in scales]}, opset=7, rtol=1e-5)


@pytest.mark.parametrize("ctm", ["pytorch_half_pixel", "align_corners", "tf_crop_and_resize", "half_pixel"])
def test_resize_output_length_one(ctm):
    x = rand(1, 1, 5, 6)
    attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    roi = np.array([0, 0, 0.1, 0.2, 1, 1, 0.8, 0.9], F32) if ctm == "tf_crop_and_resize" else None
    check("Resize", [x, roi, None, i64(1, 1, 1, 4)], attrs, opset=13, rtol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_half_pixel_symmetric(mode):
    x = rand(1, 2, 7, 9)
    attrs = {"mode": mode, "coordinate_transformation_mode": "half_pixel_symmetric"}
    check("Resize", [x, None, np.array([1, 1, 1.7, 0.7], F32)], attrs, opset=19, rtol=1e-4, atol=1e-5)
