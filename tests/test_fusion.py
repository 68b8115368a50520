"""Element-wise epilogues fused into convolutions, and convolutions as shifted products.

* :func:`anasim.graph.passes.fuse_conv_epilogues` rewrites ``Conv → [Add] → [activation]``
  chains (and ``Add → activation`` pairs) only where the intermediate values have no
  other use, and the fused graph gives the unfused graph's numbers bit for bit;
* :func:`anasim.ops.shifted.conv2d_shifted` equals the im2col convolution (to float32
  rounding) for every geometry: strides, dilations, asymmetric padding, groups, 1-D, with
  every epilogue.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.graph import passes
from anasim.ops import shifted
from anasim.ops.conv import _conv2d_gemm
from anasim.ops.conv_geometry import conv_geometry
from anasim.ops.epilogue import Epilogue

RNG = np.random.default_rng(7)


def _model(nodes, inits, outputs=("y",), opset=13) -> bytes:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 10, 10])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _conv_inits(c=8, oc=8):
    return {"w": RNG.standard_normal((oc, c, 3, 3)) * 0.2, "b": RNG.standard_normal(oc) * 0.1,
            "w2": RNG.standard_normal((oc, c, 3, 3)) * 0.2}


def _conv(name, x, y, w="w", b="b"):
    return helper.make_node("Conv", [x, w, b], [y], name=name, pads=[1, 1, 1, 1])


def _fused_ops(graph):
    ir = passes.fuse_conv_epilogues(graph.ir)
    return [n.op_type for n in ir.nodes if n.domain == "anasim"], len(ir.nodes)


def _same_as_unfused(graph, x, inner):
    """The fused run equals the run that must stay unfused because it asks for ``inner``."""
    fused = graph.run({"x": x})
    out = graph.outputs[0].name
    unfused = graph.run({"x": x}, outputs=[out, inner])
    np.testing.assert_array_equal(fused[out], unfused[out])
    return fused[out]


X = RNG.standard_normal((3, 8, 10, 10)).astype(np.float32)


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "Clip"])
def test_conv_add_activation_fuses_and_matches(act):
    inits = _conv_inits()
    nodes = [_conv("c1", "x", "a"), _conv("c2", "a", "c", "w2")]
    nodes.append(helper.make_node("Add", ["c", "x"], ["s"], name="add"))
    if act == "Clip":
        inits.update(lo=np.float32(-0.3), hi=np.float32(0.4))
        nodes.append(helper.make_node("Clip", ["s", "lo", "hi"], ["y"], name="act"))
    else:
        nodes.append(helper.make_node(act, ["s"], ["y"], name="act", **({"alpha": 0.2} if act == "LeakyRelu" else {})))
    g = anasim.load(_model(nodes, inits))
    ops, n_nodes = _fused_ops(g)
    assert ops == ["ConvEpilogue"] and n_nodes == 2  # c1 alone, c2 + Add + act fused
    y = _same_as_unfused(g, X, "c")
    import onnxruntime as ort

    ref = ort.InferenceSession(_model(nodes, inits), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_no_fusion_where_the_intermediate_is_used_elsewhere():
    inits = _conv_inits()
    # the conv output is also a graph output; the Add output feeds two nodes
    nodes = [_conv("c1", "x", "a"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["t"], name="relu2"),
             helper.make_node("Add", ["s", "t"], ["y"], name="add2")]
    g = anasim.load(_model(nodes, inits, outputs=("y", "a")))
    ops, n_nodes = _fused_ops(g)
    assert ops == [] and n_nodes == 5
    res = g.run({"x": X})
    a = np.asarray(res["a"])
    s = np.maximum(a, 0) + X
    np.testing.assert_allclose(res["y"], s + np.maximum(s, 0), rtol=1e-6, atol=1e-6)


def test_clip_with_computed_bounds_is_not_fused():
    inits = _conv_inits()
    inits.update(hi=np.float32(0.5))
    nodes = [_conv("c1", "x", "a"), helper.make_node("ReduceMax", ["x"], ["m"], name="m", keepdims=0),
             helper.make_node("Clip", ["a", "m", "hi"], ["y"], name="clip")]
    g = anasim.load(_model(nodes, inits))
    assert _fused_ops(g)[0] == []  # the lower bound is computed from the input
    nodes[1] = helper.make_node("Neg", ["hi"], ["m"], name="m")  # constant-folded: fusable
    nodes[2] = helper.make_node("Clip", ["a", "m", "hi"], ["y"], name="clip")
    g = anasim.load(_model(nodes, inits))
    assert _fused_ops(g)[0] == ["ConvEpilogue"]
    y = _same_as_unfused(g, X, "a")
    assert y.min() >= -0.5 and y.max() <= 0.5


def test_broadcasting_residual_falls_back_to_the_unfused_ops():
    inits = _conv_inits()
    inits["r"] = RNG.standard_normal((1, 8, 1, 1))
    nodes = [_conv("c1", "x", "a"), helper.make_node("Add", ["r", "a"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    g = anasim.load(_model(nodes, inits))
    assert _fused_ops(g)[0] == ["ConvEpilogue"]
    y = _same_as_unfused(g, X, "a")
    a = g.run({"x": X}, outputs=["a"])["a"]
    np.testing.assert_array_equal(y, np.maximum(a + inits["r"].astype(np.float32), 0))


def test_add_activation_after_a_node_that_takes_no_epilogue():
    inits = _conv_inits()
    nodes = [_conv("c1", "x", "a"), helper.make_node("Add", ["a", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    g = anasim.load(_model(nodes, inits))
    ir = passes.fuse_conv_epilogues(g.ir, keep={"c1"})  # c1 runs an injected callable
    assert [n.op_type for n in ir.nodes] == ["Conv", "AddActivation"]
    calls = []

    def analog(xx, w, b, context=None):
        calls.append(context)
        return anasim.ops.nn.conv(xx, w, b, pads=[1, 1, 1, 1]) * np.float32(1.5)

    g2 = g.with_overrides({"c1": analog})
    y = g2.run({"x": X})["y"]
    a = g.run({"x": X}, outputs=["a"])["a"] * np.float32(1.5)
    np.testing.assert_array_equal(y, np.maximum(a + X, 0))
    assert calls


def _reference(x, w, b, geom, epi):
    y = _conv2d_gemm(x, w, b, geom).reshape((x.shape[0], geom.out_channels) + tuple(geom.out_shape))
    if epi.residual is not None:
        y = y + epi.residual
    if epi.activation == "Relu":
        y = np.maximum(y, 0)
    elif epi.activation == "Clip":
        y = np.clip(y, np.float32(epi.a), np.float32(epi.b))
    elif epi.activation == "LeakyRelu":
        y = np.where(y < 0, y * np.float32(epi.a), y)
    return y


@pytest.mark.skipif(not shifted.available(), reason="NumPy's BLAS exports no ILP64 CBLAS sgemm")
def test_shifted_products_equal_im2col_for_every_geometry():
    rng = np.random.default_rng(11)
    cases = 0
    while cases < 120:
        nsp = int(rng.integers(1, 3))
        g = int(rng.choice([1, 1, 2, 3]))
        cg, ocg = int(rng.integers(4, 9)), int(rng.integers(1, 6))
        k = [int(rng.integers(1, 6)) for _ in range(nsp)]
        st = [int(rng.integers(1, 4)) for _ in range(nsp)]
        dl = [int(rng.integers(1, 3)) for _ in range(nsp)]
        pads = [int(rng.integers(0, 3)) for _ in range(2 * nsp)]
        ins = [int(rng.integers(1, 15)) for _ in range(nsp)]
        x = rng.standard_normal((int(rng.integers(1, 4)), cg * g, *ins)).astype(np.float32)
        w = rng.standard_normal((ocg * g, cg, *k)).astype(np.float32)
        b = rng.standard_normal(ocg * g).astype(np.float32) if rng.random() < 0.7 else None
        try:
            geom = conv_geometry(x.shape, w.shape, group=g, pads=pads, strides=st, dilations=dl)
        except (ValueError, anasim.errors.AnasimError):  # an empty output: not a convolution
            continue
        if min(geom.out_shape) < 1:
            continue
        out_shape = (x.shape[0], geom.out_channels) + tuple(geom.out_shape)
        act = str(rng.choice(["", "Relu", "Clip", "LeakyRelu"]))
        r = rng.standard_normal(out_shape).astype(np.float32) if rng.random() < 0.5 else None
        epi = Epilogue(r, act, -0.5 if act == "Clip" else 0.1, 0.7)
        y = shifted.conv2d_shifted(x, w, b, geom, epi)
        ref = _reference(x, w, b, geom, epi)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
        cases += 1


@pytest.mark.skipif(not shifted.available(), reason="NumPy's BLAS exports no ILP64 CBLAS sgemm")
def test_shifted_products_do_not_depend_on_threads_or_bands(monkeypatch):
    x = RNG.standard_normal((2, 8, 40, 40)).astype(np.float32)
    w = RNG.standard_normal((16, 8, 3, 3)).astype(np.float32)
    geom = conv_geometry(x.shape, w.shape, pads=[1, 1, 1, 1])
    ref = shifted.conv2d_shifted(x, w, None, geom)
    from anasim.ops import conv_geometry as cg

    monkeypatch.setattr(cg, "_CHUNK_MAX_BYTES", 4096)  # bands of a few rows each
    monkeypatch.setattr(cg, "_CHUNK_MIN_BYTES", 4096)
    banded = shifted.conv2d_shifted(x, w, None, geom)
    # Other bands are other sgemm shapes: OpenBLAS's small-matrix kernels (DYNAMIC_ARCH
    # builds on AMD Zen, for one) sum those in another order, so across band sizes the
    # outputs agree to float32 rounding, not bit for bit. The bands are fixed by the
    # shapes alone; across thread counts the outputs are identical.
    scale = np.abs(ref).max()
    assert np.abs(banded - ref).max() <= 1e-6 * scale
    from anasim import threads

    monkeypatch.setattr(threads, "num_threads", lambda: 1)  # every band in the calling thread
    np.testing.assert_array_equal(shifted.conv2d_shifted(x, w, None, geom), banded)
    monkeypatch.undo()
    np.testing.assert_array_equal(shifted.conv2d_shifted(x, w, None, geom), ref)


def test_onnx_model_roundtrip_unchanged():
    """The fusion is an executor detail: the IR the graph reports keeps the model's nodes."""
    inits = _conv_inits()
    nodes = [_conv("c1", "x", "a"), helper.make_node("Relu", ["a"], ["y"], name="relu")]
    g = anasim.load(_model(nodes, inits))
    assert [n.op_type for n in g.ir.nodes] == ["Conv", "Relu"]
    assert g.analog_candidates == ["c1"]
    assert onnx.load_from_string(_model(nodes, inits)).graph.node[0].op_type == "Conv"


def _random_depthwise(rng, nsp, kernel=None, max_in=12):
    """A random depthwise convolution: (x, w, b, geometry, pads, strides, dilations), or None
    when the drawn geometry has no output."""
    c = int(rng.integers(1, 40 if kernel is None else 20))
    k = [int(rng.integers(1, 6)) for _ in range(nsp)] if kernel is None else kernel
    st = [int(rng.integers(1, 4)) for _ in range(nsp)]
    dl = [int(rng.integers(1, 3)) for _ in range(nsp)]
    pads = [int(rng.integers(0, 3)) for _ in range(2 * nsp)]
    ins = [int(rng.integers(1, max_in)) for _ in range(nsp)]
    x = rng.standard_normal((int(rng.integers(1, 4)), c, *ins)).astype(np.float32)
    w = rng.standard_normal((c, 1, *k)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    try:
        geom = conv_geometry(x.shape, w.shape, group=c, pads=pads, strides=st, dilations=dl)
    except ValueError:
        return None
    return x, w, b, geom, pads, st, dl


def _ordered_depthwise_sums(x, w, b, geom, pads, st, dl):
    """bias + Σ taps w·x in (row, column) order, in float32: the depthwise kernels' sums."""
    nsp, c = len(st), x.shape[1]
    shape = (x.shape[0], c) + tuple(geom.out_shape)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nsp]) for i in range(nsp)])
    ref = np.zeros(shape, np.float32) + b.reshape((1, c) + (1,) * nsp)
    for tap in np.ndindex(*w.shape[2:]):
        sl = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dl, geom.out_shape, st))
        ref = ref + w[(slice(None), 0) + tap].reshape((1, c) + (1,) * nsp) * xp[(slice(None), slice(None)) + sl]
    return ref


def test_depthwise_channels_last_equals_the_direct_sums():
    """Small-plane depthwise convolutions run channels-last; the numbers are the plain
    multiply-add sums for every geometry, with the epilogue applied."""
    from anasim.ops import depthwise

    rng = np.random.default_rng(5)
    cases = 0
    while cases < 80:
        drawn = _random_depthwise(rng, int(rng.integers(1, 3)))
        if drawn is None or int(np.prod(drawn[3].out_shape)) > depthwise._CL_MAX_PIXELS:
            continue
        x, w, b, geom = drawn[:4]
        shape = (x.shape[0], x.shape[1]) + tuple(geom.out_shape)
        r = rng.standard_normal(shape).astype(np.float32)
        y = depthwise._conv2d_depthwise(x, w, b, geom, Epilogue(r, "Relu")).reshape(shape)
        np.testing.assert_allclose(y, np.maximum(_ordered_depthwise_sums(*drawn) + r, 0), rtol=1e-5, atol=1e-5)
        cases += 1


def test_depthwise_3x3_equals_the_ordered_sums_bit_for_bit():
    """3×3 depthwise convolutions (phase planes for large maps, channels-last for small
    ones; any stride, dilation and padding) give exactly the float32 sums in the order of
    the generic kernel -- bias, then the taps in (row, column) order -- with the epilogue,
    and the same numbers as the generic kernel."""
    from anasim.ops import depthwise

    rng = np.random.default_rng(11)
    cases = 0
    routes = set()
    while cases < 120:
        drawn = _random_depthwise(rng, 2, kernel=[3, 3], max_in=24)
        if drawn is None:
            continue
        x, w, b, geom = drawn[:4]
        shape = (x.shape[0], x.shape[1]) + tuple(geom.out_shape)
        large = int(np.prod(geom.out_shape)) > depthwise._CL_MAX_PIXELS
        routes.add(large)
        r = rng.standard_normal(shape).astype(np.float32)
        y = depthwise._conv2d_depthwise(x, w, b, geom, Epilogue(r, "Relu")).reshape(shape)
        np.testing.assert_array_equal(y, np.maximum(_ordered_depthwise_sums(*drawn) + r, np.float32(0)))
        if large:
            try:
                depthwise._PHASE_3X3 = False
                generic = depthwise._conv2d_depthwise(x, w, b, geom, Epilogue(r, "Relu")).reshape(shape)
            finally:
                depthwise._PHASE_3X3 = True
            np.testing.assert_array_equal(y, generic)
        cases += 1
    assert routes == {False, True}  # both kernels were exercised


@pytest.mark.parametrize("hw", [(4, 4), (8, 8), (1, 7), (20, 16)])
@pytest.mark.parametrize("group", [1, 2])
def test_pointwise_conv_batched_and_in_place(hw, group):
    """1×1 stride-1 unpadded convolutions: small maps several samples per product, large
    ones written by sgemm straight into the output; with bias, residual and activation
    applied as the unfused ops would, to float32 rounding of the sums."""
    from anasim.ops import shifted

    rng = np.random.default_rng(21)
    n, c, oc = 37, 12, 10
    x = rng.standard_normal((n, c) + hw).astype(np.float32)
    w = rng.standard_normal((oc, c // group, 1, 1)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    r = rng.standard_normal((n, oc) + hw).astype(np.float32)
    geom = conv_geometry(x.shape, w.shape, group=group)
    assert shifted.shifted_applies(geom, np.float32)
    y = shifted.conv2d_shifted(x, w, b, geom, Epilogue(r, "Relu"))
    xg = x.reshape(n, group, c // group, -1).astype(np.float64)
    wg = w.reshape(group, oc // group, c // group).astype(np.float64)
    ref = np.einsum("goc,ngcp->ngop", wg, xg).reshape((n, oc) + hw) + b.reshape(1, oc, 1, 1) + r
    np.testing.assert_allclose(y, np.maximum(ref, 0), rtol=1e-5, atol=1e-5)


def test_run_context_profile_times_the_nodes_as_they_run():
    """A run with ``RunContext(profile=dict)`` adds (seconds, count) per op type of the nodes
    the executor actually runs: the fused ConvEpilogue, not the Conv and Relu it replaced;
    the numbers are those of a run without the profile."""
    from anasim.graph.context import RunContext

    nodes = [_conv("c1", "x", "h"), helper.make_node("Relu", ["h"], ["a"], name="r1"),
             _conv("c2", "a", "g", w="w2"), helper.make_node("Sigmoid", ["g"], ["y"], name="s")]
    graph = anasim.load(_model(nodes, _conv_inits()))
    x = RNG.standard_normal((2, 8, 10, 10)).astype(np.float32)
    prof: dict = {}
    out = graph.run({"x": x}, context=RunContext(profile=prof))["y"]
    ops = {k[1]: v for k, v in prof.items() if k[0] == "op"}
    assert {op: count for op, (_, count) in ops.items()} == {"ConvEpilogue": 1, "Conv": 1, "Sigmoid": 1}
    assert all(t > 0 for t, _ in ops.values())
    graph.run({"x": x}, context=RunContext(profile=prof))
    assert prof[("op", "ConvEpilogue")][1] == 2  # added to, not replaced
    np.testing.assert_array_equal(out, graph.run({"x": x})["y"])


def test_thin_first_layer_convolutions_are_the_ordered_sums_bit_for_bit():
    """3×3 stride-1 convolutions with 1-4 input channels (a network's first layer) run as
    direct sums: exactly the fused multiply-adds from 0 over (channel, row, column), then the
    bias, the residual and the activation (the reference: each fma as one rounding of the
    extended-precision w·x + acc, exact but for a double rounding of odds ~2^-40); every
    padding of 0 or 1 per side, planes from 1×1 to 40×40; through the dispatch (conv)."""
    from anasim.ops import conv as C
    from anasim.ops import thin

    rng = np.random.default_rng(17)
    cases = 0
    while cases < 60:
        c, oc = int(rng.integers(1, 5)), int(rng.integers(1, 20))
        pads = [int(v) for v in rng.integers(0, 2, 4)]
        h, wd = int(rng.integers(1, 41)), int(rng.integers(1, 41))
        x = rng.standard_normal((int(rng.integers(1, 4)), c, h, wd)).astype(np.float32)
        w = rng.standard_normal((oc, c, 3, 3)).astype(np.float32)
        b = rng.standard_normal(oc).astype(np.float32)
        try:
            geom = conv_geometry(x.shape, w.shape, pads=pads)
        except ValueError:
            continue
        if min(geom.out_shape) < 1:
            continue
        assert thin.thin_applies(geom, np.float32)
        shape = (x.shape[0], oc) + tuple(geom.out_shape)
        r = rng.standard_normal(shape).astype(np.float32)
        xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
        ld = np.longdouble
        acc = np.zeros(shape, np.float32)
        for ci in range(c):
            for a in range(3):
                for e in range(3):
                    wx = (w[:, ci, a, e].reshape(1, oc, 1, 1).astype(ld)
                          * xp[:, ci:ci + 1, a:a + shape[2], e:e + shape[3]].astype(ld))
                    acc = (acc.astype(ld) + wx).astype(np.float32)
        ref = acc + b.reshape(1, oc, 1, 1)
        y = C.conv(x, w, b, geom, Epilogue(r, "Relu"))
        np.testing.assert_array_equal(y, np.maximum(ref + r, np.float32(0)))
        cases += 1
    g5 = conv_geometry((1, 5, 8, 8), (4, 5, 3, 3), pads=[1, 1, 1, 1])
    g2 = conv_geometry((1, 2, 8, 8), (4, 2, 3, 3), pads=[1, 1, 1, 1], strides=[2, 2])
    assert not thin.thin_applies(g5, np.float32) and not thin.thin_applies(g2, np.float32)
