"""Neural-network ops (anasim.ops.nn / conv / pool) against onnxruntime on one-node models.

Each case builds a single-node ONNX model with onnx.helper, runs it in onnxruntime and
compares with the registered anasim implementation for that opset:
max |Δ| <= 1e-5 × max(1, max |reference|). im2col / cols_to_output are checked against
a slow NumPy reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import onnx
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from anasim.ops import conv as C  # noqa: E402
from anasim.ops import conv_geometry as CG  # noqa: E402
from anasim.ops import im2col as IC  # noqa: E402
from anasim.ops.registry import resolve  # noqa: E402
from thread_helpers import numba_threads, rerun_with_two_threads  # noqa: E402

RTOL = 1e-5


# ----------------------------------------------------------------------------- helpers
def _np_to_onnx(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def ort_run(op, inputs, attrs=None, opset=17, n_out=1, oracle="ort"):
    """Run one ``op`` node in onnxruntime (or the ONNX reference evaluator, ``oracle="onnx"``).

    ``None`` inputs are omitted (empty name).
    """
    attrs = attrs or {}
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    while names and names[-1] == "":
        names.pop()
    vis = [helper.make_tensor_value_info(nm, _np_to_onnx(v.dtype), v.shape)
           for nm, v in zip(names, inputs) if nm]
    outs = [helper.make_empty_tensor_value_info(f"out{k}") for k in range(n_out)]
    node = helper.make_node(op, names, [o.name for o in outs], **attrs)
    model = helper.make_model(helper.make_graph([node], "g", vis, outs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if oracle == "onnx":
        from onnx.reference import ReferenceEvaluator

        feeds = {nm: v for nm, v in zip(names, inputs) if nm}
        return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {nm: v for nm, v in zip(names, inputs) if nm})


def ana_run(op, inputs, attrs=None, opset=17, n_out=1):
    impl = resolve("", op, opset)
    kw = dict(attrs or {})
    if impl.wants_n_outputs:
        kw["n_outputs"] = n_out
    out = impl.fn(*inputs, **kw)
    return list(out) if isinstance(out, tuple) else [out]


def check(op, inputs, attrs=None, opset=17, n_out=1, rtol=RTOL, exact_outputs=(), oracle="ort"):
    ref = ort_run(op, inputs, attrs, opset, n_out, oracle)
    got = ana_run(op, inputs, attrs, opset, n_out)
    for k, (r, g) in enumerate(zip(ref, got)):
        assert g.shape == r.shape, f"{op} output {k}: shape {g.shape} != {r.shape}"
        assert g.dtype == r.dtype, f"{op} output {k}: dtype {g.dtype} != {r.dtype}"
        if k in exact_outputs:
            np.testing.assert_array_equal(g, r)
        else:
            scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
            err = float(np.abs(g.astype(np.float64) - r).max()) if r.size else 0.0
            assert err <= rtol * scale, f"{op} {attrs}: max |Δ| {err:.3g} > {rtol} × {scale:.3g}"
    return got


def rnd(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------- Conv
CONV_CASES = [
    # (x shape, w shape, attrs)
    ((2, 3, 9, 11), (4, 3, 3, 3), {}),
    ((2, 3, 9, 11), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 3, 9, 11), (4, 3, 3, 2), dict(pads=[1, 0, 2, 1], strides=[2, 1])),
    ((2, 3, 10, 11), (5, 3, 3, 3), dict(dilations=[2, 1], pads=[2, 1, 2, 1])),
    ((2, 3, 10, 11), (5, 3, 3, 3), dict(strides=[2, 3], dilations=[1, 2], pads=[0, 1, 1, 0])),
    ((2, 6, 9, 11), (4, 3, 3, 3), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])),
    ((2, 6, 9, 11), (6, 2, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    ((2, 4, 9, 11), (4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),  # depthwise
    ((2, 4, 9, 11), (8, 1, 3, 3), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),  # multiplier 2
    ((2, 4, 9, 11), (4, 1, 5, 3), dict(group=4, strides=[1, 2], dilations=[2, 1], pads=[3, 0, 1, 2])),
    ((2, 4, 9, 11), (8, 4, 1, 1), {}),  # pointwise
    ((2, 4, 9, 11), (8, 4, 1, 1), dict(strides=[2, 2])),
    ((2, 4, 9, 11), (8, 4, 3, 3), dict(auto_pad="SAME_UPPER")),
    ((2, 4, 9, 11), (8, 4, 3, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    ((2, 4, 8, 10), (8, 4, 4, 4), dict(auto_pad="SAME_UPPER", strides=[3, 2])),
    ((2, 4, 8, 10), (8, 4, 4, 4), dict(auto_pad="SAME_LOWER", strides=[3, 2])),
    ((2, 4, 9, 11), (8, 4, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    ((2, 4, 9), (8, 4, 3), dict(auto_pad="SAME_LOWER", strides=[2])),  # 1-D
    ((2, 4, 17), (6, 2, 5), dict(group=2, pads=[2, 1], dilations=[2])),
    ((2, 4, 5, 6, 7), (4, 2, 2, 3, 2), dict(group=2, strides=[1, 2, 1], pads=[0, 1, 1, 1, 0, 1])),  # 3-D
    ((1, 3, 5, 6, 7), (2, 3, 3, 3, 3), dict(pads=[1] * 6, dilations=[1, 2, 1])),
    ((8, 64, 16, 16), (32, 64, 3, 3), dict(pads=[1, 1, 1, 1])),  # Winograd, several chunks
    ((3, 64, 32, 32), (16, 64, 3, 3), dict(pads=[1, 1, 1, 1], strides=[1, 2])),  # bands of rows
    ((40, 32, 4, 4), (64, 32, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),  # several samples/chunk
    # Winograd F(2x2,3x3): odd/even sizes, asymmetric and large pads, no pads, 1x1 maps
    ((3, 16, 7, 9), (5, 16, 3, 3), dict(pads=[0, 2, 1, 0])),
    ((2, 20, 5, 6), (4, 20, 3, 3), {}),
    ((2, 24, 4, 4), (8, 24, 3, 3), dict(pads=[3, 2, 2, 3])),
    ((2, 16, 1, 1), (8, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((33, 32, 8, 8), (64, 32, 3, 3), dict(auto_pad="SAME_UPPER")),
    ((2, 16, 9, 10), (8, 16, 3, 3), dict(auto_pad="VALID")),
    # depthwise: multiplier, strides, dilation, 1-D
    ((2, 8, 7, 9), (16, 1, 3, 3), dict(group=8, strides=[2, 1], pads=[1, 0, 1, 2])),
    ((2, 8, 10, 9), (8, 1, 3, 2), dict(group=8, strides=[1, 3], dilations=[2, 2], pads=[2, 1, 0, 1])),
    ((2, 6, 11), (12, 1, 3), dict(group=6, strides=[2], pads=[1, 1])),
]


@pytest.mark.parametrize("xs, ws, attrs", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(xs, ws, attrs, bias):
    x, w = rnd(*xs, seed=1), rnd(*ws, seed=2)
    b = rnd(ws[0], seed=3) if bias else None
    check("Conv", [x, w, b], attrs, opset=11)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_same_with_dilation(auto_pad):
    """onnxruntime refuses SAME padding with dilations; the ONNX reference evaluator is the oracle."""
    x, w = rnd(2, 4, 9, 11), rnd(8, 4, 2, 3, seed=1)
    check("Conv", [x, w], dict(auto_pad=auto_pad, dilations=[2, 2], strides=[2, 1]), opset=11, oracle="onnx")


def test_conv_independent_of_thread_count(request):
    """1 against 2 threads (a child process with a 2-thread pool where this one has 1):
    Winograd, im2col + GEMM, grouped, depthwise convolutions, and a threaded element-wise op."""
    if rerun_with_two_threads(request):
        return
    x, w, b = rnd(9, 32, 12, 12), rnd(16, 32, 3, 3, seed=1), rnd(16, seed=2)
    cases = [([x, w, b], dict(pads=[1, 1, 1, 1])), ([x, w, b], dict(strides=[2, 2])),
             ([x, rnd(16, 2, 3, 3, seed=3), b], dict(group=16)),
             ([x, rnd(32, 1, 3, 3, seed=4)], dict(group=32))]
    results = []
    for t in (1, 2):
        with numba_threads(t):
            results.append([ana_run("Conv", inputs, kw, 11)[0] for inputs, kw in cases]
                            + [ana_run("Relu", [rnd(9, 32, 24, 24)], opset=14)[0]])
    assert len(results[0]) == len(results[1]) == len(cases) + 1
    for a, b_ in zip(results[0], results[1]):
        np.testing.assert_array_equal(a, b_)


def test_winograd_weight_cache_follows_weight_changes():
    x, w = rnd(2, 16, 6, 6), rnd(4, 16, 3, 3, seed=1)
    g = CG.conv_geometry(x.shape, w.shape, pads=[1, 1, 1, 1])
    y1 = C.conv(x, w, None, g)
    w[0] *= 2  # in-place change of a cached weight array
    y2 = C.conv(x, w, None, g)
    np.testing.assert_allclose(y2[:, 0], 2 * y1[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y2[:, 1:], y1[:, 1:])


def test_warmup_runs():
    from anasim.ops import nn

    nn.warmup()


def test_conv_kernel_shape_attribute_and_old_opset():
    x, w, b = rnd(1, 2, 7, 7), rnd(3, 2, 3, 3, seed=1), rnd(3, seed=2)
    check("Conv", [x, w, b], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), opset=1)


def test_conv_rejects_bad_group():
    with pytest.raises(ValueError):
        ana_run("Conv", [rnd(1, 6, 5, 5), rnd(4, 3, 3, 3)], dict(group=3))


# ----------------------------------------------------------------------------- im2col
def im2col_reference(x, g: CG.ConvGeometry):
    """Slow, obvious im2col: one row per output pixel, columns (c, *kernel)."""
    n = x.shape[0]
    nd = g.n_spatial
    xp = np.pad(x, [(0, 0), (0, 0)] + [(b, e) for b, e in zip(g.pads_begin, g.pads_end)])
    rows = []
    for i in range(n):
        for o in itertools.product(*[range(s) for s in g.out_shape]):
            patch = np.empty((g.in_channels,) + g.kernel, x.dtype)
            for k in itertools.product(*[range(s) for s in g.kernel]):
                idx = tuple(o[a] * g.strides[a] + k[a] * g.dilations[a] for a in range(nd))
                patch[(slice(None),) + k] = xp[(i, slice(None)) + idx]
            rows.append(patch.reshape(-1))
    return np.stack(rows)


IM2COL_CASES = [
    ((2, 3, 7, 8), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 3, 7, 8), (4, 3, 3, 2), dict(pads=[2, 0, 1, 1], strides=[2, 3], dilations=[1, 2])),
    ((1, 6, 6, 5), (6, 2, 3, 3), dict(group=3, auto_pad="SAME_LOWER", strides=[2, 2])),
    ((2, 2, 9), (3, 2, 4), dict(pads=[1, 2], dilations=[2])),
    ((1, 2, 4, 5, 3), (2, 2, 2, 3, 2), dict(pads=[1, 0, 1, 0, 1, 1], strides=[2, 1, 1])),
]


@pytest.mark.parametrize("xs, ws, attrs", IM2COL_CASES)
def test_im2col_matches_reference_and_conv(xs, ws, attrs):
    x, w, b = rnd(*xs), rnd(*ws, seed=1), rnd(ws[0], seed=2)
    g = CG.conv_geometry(xs, ws, **attrs)
    cols = IC.im2col(x, g)
    assert cols.dtype == np.float32 and cols.flags.c_contiguous
    assert cols.shape == (xs[0] * g.n_pixels, g.k)
    np.testing.assert_array_equal(cols, im2col_reference(x, g))
    # grouped product, one column block per group, back to NCHW: equals Conv
    kg, ocg = g.k_per_group, g.out_channels_per_group
    wm = w.reshape(g.out_channels, kg)
    y = np.concatenate([cols[:, j * kg:(j + 1) * kg] @ wm[j * ocg:(j + 1) * ocg].T for j in range(g.group)], axis=1)
    out = IC.cols_to_output(y, xs[0], g, b)
    assert out.shape == (xs[0], g.out_channels) + g.out_shape
    ref = ort_run("Conv", [x, w, b], attrs, opset=11)[0]
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL * max(1, np.abs(ref).max()))
    np.testing.assert_allclose(C.conv(x, w, b, g), ref, rtol=0, atol=RTOL * max(1, np.abs(ref).max()))


def test_cols_to_output_reference():
    g = CG.conv_geometry((3, 2, 4, 5), (6, 2, 3, 3), pads=[1, 1, 1, 1])
    y = rnd(3 * g.n_pixels, 6)
    ref = y.reshape(3, 4, 5, 6).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(IC.cols_to_output(y, 3, g), ref)
    b = rnd(6, seed=1)
    np.testing.assert_array_equal(IC.cols_to_output(y, 3, g, b), ref + b[:, None, None])
    with pytest.raises(ValueError):
        IC.cols_to_output(y[:-1], 3, g)


def test_geometry_fields():
    g = CG.conv_geometry((1, 4, 9, 11), (8, 2, 3, 3), auto_pad="SAME_UPPER", group=2, strides=[2, 2])
    assert g.out_shape == (5, 6) and g.pads_begin == (1, 1) and g.pads_end == (1, 1)
    assert (g.k, g.k_per_group, g.n_pixels, g.group) == (36, 18, 30, 2)
    with pytest.raises(Exception):
        g.group = 1  # frozen


@pytest.mark.parametrize("c, group, strides", [(3, 1, [1, 1]), (16, 1, [1, 1]), (16, 1, [2, 2]), (16, 16, [1, 1])])
def test_conv_keeps_float64(c, group, strides):
    x, w = rnd(2, c, 6, 6, dtype=np.float64), rnd(4 * group, c // group, 3, 3, seed=1, dtype=np.float64)
    g = CG.conv_geometry(x.shape, w.shape, pads=[1, 1, 1, 1], group=group, strides=strides)
    y = C.conv(x, w, None, g)
    assert y.dtype == np.float64
    assert IC.im2col(x, g).dtype == np.float64
    ref = ort_run("Conv", [x.astype(np.float32), w.astype(np.float32)], dict(pads=[1, 1, 1, 1], group=group,
                                                                           strides=strides), opset=11)[0]
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


# ----------------------------------------------------------------------------- ConvTranspose
CONVT_CASES = [
    ((2, 3, 5, 6), (3, 4, 3, 3), {}),
    ((2, 3, 5, 6), (3, 4, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 5, 6), (3, 4, 3, 2), dict(strides=[2, 3], pads=[1, 0, 0, 1], output_padding=[1, 1])),
    ((2, 4, 5, 6), (4, 2, 3, 3), dict(group=2, strides=[2, 1], dilations=[1, 2])),
    ((2, 4, 5, 6), (4, 1, 3, 3), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 5, 6), (3, 4, 3, 3), dict(strides=[2, 2], output_shape=[10, 12])),
    ((2, 3, 5, 6), (3, 4, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ((2, 3, 5, 6), (3, 4, 4, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ((2, 3, 7), (3, 2, 3), dict(strides=[3], pads=[1, 2])),
    ((1, 2, 3, 4, 3), (2, 3, 2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 1])),
]


@pytest.mark.parametrize("xs, ws, attrs", CONVT_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose(xs, ws, attrs, bias):
    x, w = rnd(*xs, seed=1), rnd(*ws, seed=2)
    b = rnd(ws[1] * attrs.get("group", 1), seed=3) if bias else None
    check("ConvTranspose", [x, w, b], attrs, opset=11)


# ----------------------------------------------------------------------------- Gemm / MatMul
@pytest.mark.parametrize("transA, transB", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (3, 1), (3, 5), ()])
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 2.0), (1.5, 0.0)])
def test_gemm(transA, transB, c_shape, alpha, beta):
    a = rnd(*((4, 3) if transA else (3, 4)))
    b = rnd(*((5, 4) if transB else (4, 5)), seed=1)
    c = None if c_shape is None else rnd(*c_shape, seed=2)
    check("Gemm", [a, b, c], dict(alpha=alpha, beta=beta, transA=transA, transB=transB), opset=13)


def test_gemm_opset6_broadcast_attribute():
    a, b, c = rnd(3, 4), rnd(4, 5, seed=1), rnd(5, seed=2)
    check("Gemm", [a, b, c], dict(broadcast=1), opset=6, oracle="onnx")  # not in onnxruntime


@pytest.mark.parametrize("sa, sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                                    ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 2)), ((2, 3, 4), (2, 4, 6))])
def test_matmul(sa, sb):
    check("MatMul", [rnd(*sa), rnd(*sb, seed=1)], opset=13)


# ----------------------------------------------------------------------------- normalization
@pytest.mark.parametrize("opset", [7, 9, 15])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3), (2, 3, 4), (1, 3, 2, 2, 2)])
def test_batch_normalization(opset, shape):
    c = shape[1]
    x, scale, b, mean = rnd(*shape), rnd(c, seed=1), rnd(c, seed=2), rnd(c, seed=3)
    var = np.abs(rnd(c, seed=4)) + 0.1
    check("BatchNormalization", [x, scale, b, mean, var], dict(epsilon=1e-3), opset=opset)


def test_batch_normalization_training_mode_unsupported():
    x = rnd(2, 3, 4)
    p = np.ones(3, np.float32)
    with pytest.raises(NotImplementedError):
        ana_run("BatchNormalization", [x, p, p, p, p], dict(training_mode=1), opset=15)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 2)])
def test_instance_normalization(shape):
    x, s, b = rnd(*shape) * 3 + 1, rnd(shape[1], seed=1), rnd(shape[1], seed=2)
    check("InstanceNormalization", [x, s, b], dict(epsilon=1e-4), opset=6)


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_normalization(axis, with_bias):
    x = rnd(2, 3, 4, 5) * 2 + 0.5
    nshape = x.shape[axis % 4:]
    s, b = rnd(*nshape, seed=1), (rnd(*nshape, seed=2) if with_bias else None)
    check("LayerNormalization", [x, s, b], dict(axis=axis, epsilon=1e-4), opset=17, n_out=3)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    x = rnd(2, 7, 4, 3)
    check("LRN", [x], dict(size=size, alpha=0.01, beta=0.6, bias=1.5), opset=13)


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size(size):
    """onnxruntime accepts odd sizes only (and the ONNX reference loops over N, not C): spec formula."""
    x = rnd(2, 7, 4, 3).astype(np.float64)
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.stack([(x[:, max(0, c - lo):min(7, c + hi + 1)] ** 2).sum(1) for c in range(7)], axis=1)
    ref = x / (1.5 + 0.01 / size * sq) ** 0.6
    (got,) = ana_run("LRN", [x.astype(np.float32)], dict(size=size, alpha=0.01, beta=0.6, bias=1.5), 13)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL)


# ----------------------------------------------------------------------------- pooling
POOL_CASES = [
    ((2, 3, 9, 11), dict(kernel_shape=[3, 3])),
    ((2, 3, 9, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 9, 11), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 0, 1], ceil_mode=1)),
    ((2, 3, 10, 11), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ((2, 3, 10, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ((2, 3, 9, 11), dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
    ((2, 3, 9, 11), dict(kernel_shape=[4, 4], auto_pad="SAME_LOWER", strides=[2, 3])),
    ((2, 3, 9, 11), dict(kernel_shape=[3, 3], auto_pad="VALID", strides=[2, 2])),
    ((2, 3, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0])),
]
DILATED_POOL_CASES = [
    ((2, 3, 10, 11), dict(kernel_shape=[3, 2], dilations=[2, 2], strides=[1, 2], pads=[2, 1, 1, 1])),
    ((2, 3, 10, 11), dict(kernel_shape=[2, 2], dilations=[2, 1], strides=[2, 2], ceil_mode=1)),
    ((2, 3, 12), dict(kernel_shape=[3], dilations=[3], strides=[2], pads=[1, 2])),
]


@pytest.mark.parametrize("xs, attrs", POOL_CASES + DILATED_POOL_CASES)
def test_max_pool(xs, attrs):
    check("MaxPool", [rnd(*xs)], attrs, opset=12)


@pytest.mark.parametrize("xs, attrs", POOL_CASES[:5] + POOL_CASES[8:] + DILATED_POOL_CASES)
@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(xs, attrs, storage_order):
    check("MaxPool", [rnd(*xs)], dict(attrs, storage_order=storage_order), opset=12, n_out=2,
          exact_outputs=(0, 1))


@pytest.mark.parametrize("xs, attrs", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(xs, attrs, count_include_pad):
    check("AveragePool", [rnd(*xs)], dict(attrs, count_include_pad=count_include_pad), opset=11)


@pytest.mark.parametrize("xs, attrs", DILATED_POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_dilations(xs, attrs, count_include_pad):
    check("AveragePool", [rnd(*xs)], dict(attrs, count_include_pad=count_include_pad), opset=19)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 2)])
def test_global_pool(op, shape):
    check(op, [rnd(*shape)], opset=1)


# ----------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset, axis", [(11, 1), (11, 0), (11, -1), (11, 2), (13, -1), (13, 1), (13, 0)])
def test_softmax(op, opset, axis):
    x = rnd(2, 3, 4) * 5
    check(op, [x], dict(axis=axis), opset=opset)


def test_softmax_default_axis_changed_in_13():
    x = rnd(2, 3, 4)
    check("Softmax", [x], opset=11)
    check("Softmax", [x], opset=13)


# ----------------------------------------------------------------------------- activations
ACTS = [
    ("Relu", {}, 14), ("LeakyRelu", {}, 16), ("LeakyRelu", dict(alpha=0.3), 16),
    ("Elu", {}, 6), ("Elu", dict(alpha=0.5), 6), ("Selu", {}, 6), ("Selu", dict(alpha=1.5, gamma=2.0), 6),
    ("Sigmoid", {}, 13), ("HardSigmoid", {}, 6), ("HardSigmoid", dict(alpha=0.3, beta=0.4), 6),
    ("HardSwish", {}, 14), ("Tanh", {}, 13), ("Erf", {}, 13),
    ("Gelu", {}, 20), ("Gelu", dict(approximate="tanh"), 20),
    ("Clip", dict(min=-0.5, max=1.5), 6), ("Clip", {}, 6),
]


@pytest.mark.parametrize("op, attrs, opset", ACTS)
@pytest.mark.parametrize("n", [37, 70_000])  # NumPy path and threaded-kernel path
def test_activation(op, attrs, opset, n):
    x = rnd(n) * 4
    x[:3] = [0.0, 40.0, -40.0]
    check(op, [x.reshape(-1, 1) if n > 100 else x], attrs, opset=opset)


@pytest.mark.parametrize("lo, hi", [(-0.5, 1.5), (None, 0.5), (-0.5, None), (None, None), (1.0, -1.0)])
def test_clip_inputs(lo, hi):
    x = rnd(50_000) * 2
    lo_a = None if lo is None else np.array(lo, np.float32)
    hi_a = None if hi is None else np.array(hi, np.float32)
    inputs = [x, lo_a, hi_a]
    check("Clip", inputs, opset=13)


def test_clip_int():
    x = np.arange(-5, 6, dtype=np.int64)
    check("Clip", [x, np.array(-2, np.int64), np.array(3, np.int64)], opset=13, exact_outputs=(0,))


@pytest.mark.parametrize("slope_shape", [(1,), (5,), (3, 1, 1), (3, 4, 5)])
def test_prelu(slope_shape):
    check("PRelu", [rnd(2, 3, 4, 5), rnd(*slope_shape, seed=1)], opset=16)


def test_activation_keeps_float64_and_shape():
    x = rnd(3, 4, 5, dtype=np.float64)
    for op, attrs, opset in ACTS:
        (y,) = ana_run(op, [x], attrs, opset)
        assert y.dtype == np.float64 and y.shape == x.shape, op


def test_relu_non_contiguous_input():
    x = rnd(4, 8, 40, 40).transpose(0, 2, 3, 1)
    (y,) = ana_run("Relu", [x], opset=14)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_registered_versions():
    assert resolve("", "Softmax", 12).since == 1 and resolve("", "Softmax", 13).since == 13
    assert resolve("", "Clip", 10).since == 1 and resolve("", "Clip", 11).since == 11
    assert resolve("", "BatchNormalization", 15).since == 14
    for op in ["Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "LRN",
               "InstanceNormalization", "GlobalAveragePool", "GlobalMaxPool", "PRelu", "Tanh"]:
        resolve("", op, 21)


@pytest.mark.parametrize("shape", [(128, 40, 4, 4), (3, 5, 7), (2, 3, 1, 1), (1, 9, 13, 11), (5, 3, 2, 3, 2)])
def test_global_average_pool_is_the_rounded_float64_mean(shape):
    """float32: each plane summed in float64 and rounded once (chunks of eight planes,
    leftover planes, every rank); float64 inputs keep NumPy's mean; NaN and inf propagate."""
    from anasim.ops.nn import global_average_pool

    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -np.inf][: min(3, x.size)]
    y = global_average_pool(x)
    assert y.shape == shape[:2] + (1,) * (len(shape) - 2) and y.dtype == np.float32
    ref = x.reshape(shape[0], shape[1], -1).astype(np.float64).mean(-1).astype(np.float32)
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(global_average_pool(x64).reshape(ref.shape),
                                  x64.reshape(ref.shape + (-1,)).mean(-1))
