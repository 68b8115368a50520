"""The network on the GPU: device ops (:mod:`anasim.ops.cuda`), ``Graph.to("cuda")`` and the
analog layers' device path, against the CPU.

Like ``test_cuda_kernels``: ``test_sim_*`` run under Numba's CUDA simulator in a child
process (:func:`test_simulator_suite`), on tiny graphs (the simulator runs one Python
thread per CUDA thread); :func:`test_digital_kernels_compile_to_ptx` compiles every
kernel of :mod:`anasim.kernels.cuda_digital` for a real GPU (NVVM, no GPU needed), which
catches what the simulator cannot (typing in the CUDA target, FMA contraction);
``test_gpu_*`` need a real GPU and run the shared models.
"""

from __future__ import annotations

import os
import textwrap
import warnings

import numpy as np
import pytest
from cuda_helpers import gpu_only, run_ptx_script, run_simulator_suite, sim_only

import onnx
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


# ---------------------------------------------------------------------- launchers


def test_simulator_suite():
    """Run this file's ``test_sim_*`` tests under the CUDA simulator (child process)."""
    run_simulator_suite(__file__)


_PTX_SCRIPT = textwrap.dedent(r'''
    import sys, types
    from numba.cuda.cudadrv import nvvm
    if not nvvm.is_available():
        print("SKIP: NVVM (libnvvm) not found"); sys.exit(0)
    from numba import cuda
    if not cuda.is_available():
        import numba.cuda.dispatcher as d
        d.get_current_device = lambda: types.SimpleNamespace(compute_capability=(8, 0))
    from anasim.kernels import cuda_digital as D
    T8 = "UniTuple(int64, 8)"
    F1, F2, F5, I1 = "float32[::1]", "float32[:, ::1]", "float32[:, :, :, :, ::1]", "int64[::1]"
    I15, I12 = ", ".join(["int64"] * 15), ", ".join(["int64"] * 12)
    # (signature, whether float32 FMAs are forbidden: kernels whose products go through
    # _fmul; the unary kernel's come from libdevice's expf / tanhf)
    sigs = {
        "_unary_kernel": (f"void({F1}, {F1}, int64, float32, float32)", False),
        "_binary_kernel": (f"void({F1}, int64, {T8}, {F1}, int64, {T8}, {F1}, {T8}, int64)", True),
        "_binary_same_kernel": (f"void({F1}, {F1}, {F1}, int64)", True),
        "_copy_kernel": (f"void({F1}, int64, {T8}, {F1}, int64, {T8}, {T8}, int64)", True),
        "_pad_kernel": (f"void({F1}, {T8}, {T8}, {F1}, {T8}, float32)", True),
        "_im2col_kernel": (f"void({F5}, {F2}, int64, int64, {I15})", True),
        "_rows_to_nchw_kernel": (f"void({F2}, float32[:, :, ::1], int64, int64, {F1}, boolean)", True),
        "_conv_direct_kernel": (f"void({F5}, {F5}, {F1}, boolean, {F5}, {I12})", True),
        "_pool_kernel": (f"void({F5}, {F5}, boolean, boolean, {I15})", True),
        "_plane_reduce_kernel": (f"void({F2}, {F1}, int64)", True),
        "_softmax_kernel": (f"void({F2}, {F2}, boolean)", False),
        "_bn_coefficients_kernel": (f"void({F1}, {F1}, {F1}, {F1}, float32, {F1}, {F1})", True),
        "_channel_affine_kernel": (f"void({F1}, {F1}, {F1}, {F1}, int64)", True),
        "_arange_kernel": (f"void({I1}, int64)", True),
        "_gather1_kernel": (f"void({I1}, {I1}, {I1})", True),
        "_count_nonfinite_kernel": (f"void({F1}, {I1})", True),
    }
    names = {n for n in dir(D) if n.endswith("_kernel")}
    assert names == set(sigs), sorted(names ^ set(sigs))
    for name, (sig, no_fma) in sigs.items():
        p = cuda.compile_ptx(getattr(D, name).py_func, sig, cc=(8, 0))[0]
        f32 = p.count("fma.rn.f32") + p.count("fma.rn.ftz.f32")
        print(name, "fma.f32", f32)
        assert not (no_fma and f32), name + ": a float32 product was contracted into an FMA"
    print("PTX OK")
''')


def test_digital_kernels_compile_to_ptx():
    """Every digital kernel compiles for a real GPU (sm_80) and keeps its products unfused."""
    run_ptx_script(_PTX_SCRIPT)


# ---------------------------------------------------------------------- without a GPU


def test_cuda_placement_without_gpu_is_a_clear_error():
    import anasim
    from anasim.errors import ConfigError, InputError
    from anasim.kernels.cuda import available

    g = _tiny_cnn(np.random.default_rng(0))
    assert g.to("cpu") is g and g.device == "cpu" and g.host_nodes == []
    with pytest.raises(InputError, match="device must be one of"):
        g.to("tpu")
    if available():
        pytest.skip("a GPU (or the simulator) is available")
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        g.to("cuda")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        anasim.analog(g, "ideal", device="cuda")


def test_experiments_check_the_device_up_front(tmp_path):
    """evaluate / sweep refuse a bad or unavailable device before any work, naming the way out."""
    from anasim.errors import ConfigError
    from anasim.experiment import evaluate, sweep
    from anasim.kernels.cuda import available

    rng = np.random.default_rng(0)
    proto = _tiny_cnn(rng, host_tail=False, as_proto=True)
    data = (rng.standard_normal((2, 2, 5, 5)).astype(np.float32), np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"device must be one of \['cpu', 'cuda'\]"):
        evaluate(proto, data, "ideal", device="gpu", progress=False)
    if available():
        pytest.skip("a GPU (or the simulator) is available")
    out = tmp_path / "r.csv"
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*Use device 'cpu'"):
        evaluate(proto, data, "ideal", device="cuda", progress=False)
    grid = {"grid": {"forward.out_noise": [0.0, 0.1]}}
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        sweep(proto, data, grid, out=out, device="cuda", progress=False)
    assert not out.exists()


# ---------------------------------------------------------------------- models


def _model(nodes, inputs, output, inits, opset=17, as_proto=False):
    """An anasim Graph of ``nodes`` (or its ModelProto); the output's shape is taken from the
    ONNX reference run."""
    import anasim
    from onnx.reference import ReferenceEvaluator

    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    untyped = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["?"])
    probe = helper.make_model(helper.make_graph(nodes, "t", inputs, [untyped], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    feeds = {i.name: np.zeros([d.dim_value or 2 for d in i.type.tensor_type.shape.dim], np.float32)
             for i in inputs}
    shape = list(ReferenceEvaluator(probe).run(None, feeds)[0].shape)
    shape[0] = "N" if len(shape) > 1 and any(not d.dim_value for d in inputs[0].type.tensor_type.shape.dim[:1]) \
        else shape[0]
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)
    proto = helper.make_model(helper.make_graph(nodes, "t", inputs, [out], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    return proto if as_proto else anasim.load(proto, fold_batchnorm=False)


def _tiny_cnn(rng, host_tail=True, as_proto=False):
    """Every op the shared models use, and more, on (N, 2, 5, 5) inputs.

    conv (pads, bias) → BatchNorm → Relu → depthwise conv → Clip → Add (residual) →
    ResNet-20's shortcut (Slice ::2 spatially, Pad channels) → Concat → MaxPool (ceil) and
    AveragePool (count_include_pad) → Mul/Sub/Div by constants, LeakyRelu, Sigmoid, Tanh,
    HardSwish → Transpose → GlobalAveragePool → Flatten → Gemm → MatMul, then (``host_tail``)
    ReduceMean → Softmax → Abs (no device implementation: the host fallback).
    """
    f = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    inits = {
        "w1": f(3, 2, 3, 3), "b1": f(3), "bn_s": 1 + f(3) * 0.2, "bn_b": f(3), "bn_m": f(3),
        "bn_v": 1 + np.abs(f(3)), "w2": f(3, 1, 3, 3), "lo": np.float32(0), "hi": np.float32(2.5),
        "st": np.array([0, 0], np.int64), "en": np.array([99, 99], np.int64), "ax": np.array([2, 3], np.int64),
        "sp": np.array([2, 2], np.int64), "pads": np.array([0, 1, 0, 0, 0, 2, 0, 0], np.int64),
        "c3": f(1, 6, 1, 1), "c4": np.float32(1.5), "wg": f(4, 6), "bg": f(4), "wm": f(4, 3),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn", epsilon=1e-3),
        n("Relu", ["bn"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], group=3, kernel_shape=[3, 3]),
        n("Clip", ["c2", "lo", "hi"], ["cl"], name="clip"),
        n("Add", ["cl", "r1"], ["res"], name="add"),
        n("Slice", ["res", "st", "en", "ax", "sp"], ["sl"], name="slice"),  # (N, 3, 3, 3)
        n("Pad", ["sl", "pads"], ["pd"], name="pad", mode="constant"),  # (N, 6, 3, 3)
        n("MaxPool", ["pd"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        n("AveragePool", ["pd"], ["ap"], name="avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          strides=[2, 2], count_include_pad=1),
        n("Concat", ["mp", "ap"], ["cc"], name="concat", axis=1),  # (N, 12, 2, 2)
        n("Slice", ["cc", "st", "en", "ax"], ["cc2"], name="slice_all"),
        n("Reshape", ["cc2", "rs"], ["r6"], name="reshape"),  # (N, 6, 2, 4)
        n("Mul", ["r6", "c3"], ["m1"], name="mul"),
        n("Sub", ["m1", "c4"], ["s1"], name="sub"),
        n("Div", ["s1", "c4"], ["d1"], name="div"),
        n("LeakyRelu", ["d1"], ["lr"], name="leaky", alpha=0.1),
        n("Sigmoid", ["lr"], ["sg"], name="sigmoid"),
        n("HardSwish", ["d1"], ["hs"], name="hardswish"),
        n("Tanh", ["hs"], ["th"], name="tanh"),
        n("Add", ["sg", "th"], ["a2"], name="add2"),
        n("Transpose", ["a2"], ["tr"], name="transpose", perm=[0, 1, 3, 2]),
        n("GlobalAveragePool", ["tr"], ["gp"], name="gap"),
        n("Flatten", ["gp"], ["fl"], name="flatten"),
        n("Gemm", ["fl", "wg", "bg"], ["fc"], name="fc", transB=1),
        n("MatMul", ["fc", "wm"], ["mm"], name="matmul"),
    ]
    inits["rs"] = np.array([0, 6, 2, -1], np.int64)
    out = "mm"
    if host_tail:
        inits["rm"] = np.array([1], np.int64)
        nodes += [n("Unsqueeze", ["mm", "rm"], ["mu"], name="unsq"),
                  n("ReduceMean", ["mu"], ["mr"], name="mean", axes=[2], keepdims=0),
                  n("Softmax", ["mr"], ["sm"], name="softmax", axis=-1),
                  n("Abs", ["sm"], ["y"], name="abs")]
        out = "y"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])
    return _model(nodes, [x], out, inits, opset=14, as_proto=as_proto)


# ---------------------------------------------------------------------- simulator: digital


@sim_only
def test_sim_graph_on_cuda_equals_cpu():
    rng = np.random.default_rng(1)
    g = _tiny_cnn(rng)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gd = g.to("cuda")
    assert gd.host_nodes == ["abs"]
    assert any("(Abs)" in str(w.message) and "host_nodes" in str(w.message) for w in caught)
    assert all(n.on_device for n in gd.nodes if n.name != "abs")
    np.testing.assert_allclose(gd(x), g(x), rtol=2e-5, atol=2e-6)
    # every node's output, not just the end: ANASIM_STOP_AFTER returns all values so far
    from anasim.kernels.cuda import to_host

    os.environ["ANASIM_STOP_AFTER"] = str(len(g.nodes) - 2)
    try:
        ref = g.run({"x": x}, outputs=[])
        got = gd.run({"x": x}, outputs=[])
    finally:
        del os.environ["ANASIM_STOP_AFTER"]
    for name in ref:
        if name in g.ir.constants:
            continue
        a, b = np.asarray(ref[name]), np.asarray(to_host(got[name]))
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=name)


@sim_only
def test_sim_graph_on_cuda_no_fallback_and_chunking():
    rng = np.random.default_rng(2)
    g = _tiny_cnn(rng, host_tail=False)
    gd = g.to("cuda")
    assert gd.host_nodes == []
    x = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    want = g(x)
    np.testing.assert_allclose(gd(x), want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(gd(x, batch_size=2), want, rtol=2e-5, atol=2e-6)


def _one_node(op, shapes, attrs=None, consts=None, opset=17, rng=None):
    """A one-node model with float inputs of ``shapes`` and constant inputs ``consts``."""
    rng = rng or np.random.default_rng(0)
    ins, feeds, names = [], {}, []
    for k, s in enumerate(shapes):
        ins.append(helper.make_tensor_value_info(f"i{k}", TensorProto.FLOAT, list(s)))
        feeds[f"i{k}"] = rng.standard_normal(s).astype(np.float32)
        names.append(f"i{k}")
    consts = consts or {}
    names += list(consts)
    node = helper.make_node(op, names, ["y"], name="op", **(attrs or {}))
    return _model([node], ins, "y", consts, opset), feeds


OP_CASES = [
    ("Add", [(2, 3, 1, 4), (3, 5, 1)], {}, None),
    ("Sub", [(4,), (2, 3, 4)], {}, None),
    ("Mul", [(2, 1, 3), (1, 4, 1)], {}, None),
    ("Div", [(2, 3), (2, 3)], {}, None),
    ("Transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}, None),
    ("Slice", [(5, 6)], {}, {"s": np.array([4, -1], np.int64), "e": np.array([0, -7], np.int64),
                              "a": np.array([0, 1], np.int64), "st": np.array([-2, -2], np.int64)}),
    ("Squeeze", [(2, 1, 3)], {}, {"ax": np.array([1], np.int64)}),
    ("Unsqueeze", [(2, 3)], {}, {"ax": np.array([0, 3], np.int64)}),
    ("Concat", [(2, 1, 3), (2, 4, 3), (2, 2, 3)], {"axis": -2}, None),
    ("Pad", [(2, 3, 4)], {"mode": "constant"}, {"p": np.array([1, 0, 2, 0, 3, 1], np.int64),
                                               "v": np.array(-0.5, np.float32)}),
    ("Pad", [(2, 3, 4)], {"mode": "reflect"}, {"p": np.array([0, 1, 2, 0, 1, 1], np.int64)}),
    ("Conv", [(2, 4, 7, 6)], {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1], "group": 2},
     {"w": (np.arange(4 * 2 * 3 * 2).reshape(4, 2, 3, 2) / 50 - 0.4).astype(np.float32)}),
    ("Conv", [(2, 3, 9)], {"strides": [3], "pads": [2, 1]},
     {"w": np.linspace(-1, 1, 5 * 3 * 4).reshape(5, 3, 4).astype(np.float32),
      "b": np.linspace(-1, 1, 5).astype(np.float32)}),
    ("MaxPool", [(2, 3, 7, 6)], {"kernel_shape": [3, 2], "strides": [2, 2], "dilations": [2, 1], "pads": [1, 0, 1, 1]},
     None),
    ("AveragePool", [(1, 2, 6, 5)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                     "ceil_mode": 1}, None),
    ("GlobalMaxPool", [(2, 3, 4, 5)], {}, None),
    ("Gemm", [(3, 4)], {"transA": 1, "alpha": 0.5, "beta": 2.0},
     {"b": np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32), "c": np.float32(0.25) * np.ones((1, 4),
                                                                                                     np.float32)}),
    ("MatMul", [(2, 3, 5)], {}, {"w": np.linspace(-1, 1, 10).reshape(5, 2).astype(np.float32)}),
    ("HardSigmoid", [(3, 4)], {"alpha": 0.3, "beta": 0.4}, None),
    ("Softmax", [(2, 3, 5)], {}, None),
    ("LogSoftmax", [(2, 3, 5)], {"axis": 1}, None),  # (opset 17: over axis 1 only: on the host)
    ("ReduceMean", [(2, 3, 4, 5)], {"axes": [-1, 2], "keepdims": 0}, None),
    ("ReduceMax", [(2, 3, 4)], {"axes": [2]}, None),
    ("ReduceSum", [(2, 3, 4)], {"keepdims": 1}, {"ax": np.array([1, 2], np.int64)}),
    ("Clip", [(3, 4)], {}, {"lo": np.float32(-0.2)}),
]


@sim_only
@pytest.mark.parametrize("case", range(len(OP_CASES)), ids=[c[0] for c in OP_CASES])
def test_sim_device_op_equals_cpu(case):
    op, shapes, attrs, consts = OP_CASES[case]
    g, feeds = _one_node(op, shapes, attrs, consts, opset=18 if op == "Pad" else 17)
    gd = g.to("cuda")
    host = op == "Pad" and attrs["mode"] != "constant"
    assert gd.host_nodes == (["op"] if host else []), (op, gd.host_nodes)
    want = g.run(feeds)["y"]
    got = gd.run(feeds)["y"]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@sim_only
def test_sim_review_regressions():
    """Cases a review found: 0-d values keep their rank on upload (PyTorch's flatten chain),
    GlobalMaxPool propagates NaN, transposed weights are freed with their graph, float64
    data through an analog layer, and small shape arithmetic stays on the host."""
    import gc

    import anasim
    from anasim.ops import cuda as ops_cuda

    n = helper.make_node
    nodes = [n("Shape", ["x"], ["s"], name="shape"), n("Gather", ["s", "i0"], ["d0"], name="gather", axis=0),
             n("Unsqueeze", ["d0", "ax"], ["u"], name="unsq"), n("Concat", ["u", "m1"], ["shp"], name="cat", axis=0),
             n("Reshape", ["x", "shp"], ["r"], name="reshape"), n("Gemm", ["r", "w"], ["y"], name="fc")]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])
    consts = {"i0": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64),
              "w": np.linspace(-1, 1, 24).reshape(12, 2).astype(np.float32)}
    g = _model(nodes, [x_info], "y", consts)
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    gd = g.to("cuda")
    assert gd.host_nodes == ["gather"]
    np.testing.assert_allclose(gd(x), g(x), rtol=1e-6, atol=1e-6)
    del gd
    gc.collect()
    assert not ops_cuda._TRANSPOSED  # the Gemm's transposed weight went with its graph

    i32 = [helper.make_tensor_value_info(v, TensorProto.INT32, [2, 3]) for v in ("a", "b")]
    g3 = anasim.load(helper.make_model(helper.make_graph([n("Relu", ["a"], ["b"], name="op")], "i", i32[:1],
                                                         i32[1:]), opset_imports=[helper.make_opsetid("", 14)]))
    gd3 = g3.to("cuda")
    assert gd3.host_nodes == []  # decided at run time: int32 data runs the CPU op
    feeds = {"a": np.arange(-3, 3, dtype=np.int32).reshape(2, 3)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(gd3.run(feeds)["b"], g3.run(feeds)["b"])
        gd3.run(feeds)
    said = [w for w in caught if "ran on the CPU" in str(w.message)]
    assert len(said) == 1 and "'op' (Relu)" in str(said[0].message)

    g2, feeds = _one_node("GlobalMaxPool", [(1, 2, 2, 2)])
    feeds["i0"][0, 1, 1, 0] = np.nan
    got = g2.to("cuda").run(feeds)["y"]
    assert np.isnan(got[0, 1, 0, 0]) and np.isfinite(got[0, 0, 0, 0])

    w = np.linspace(-1, 1, 2 * 3 * 9).reshape(2, 3, 3, 3)
    node = n("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    x64 = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 3, 3, 3])
    y64 = helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 2, 3, 3])
    proto = helper.make_model(helper.make_graph([node], "f64", [x64], [y64], [numpy_helper.from_array(w, "w")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    xd = np.random.default_rng(1).standard_normal((1, 3, 3, 3))
    want = anasim.analog(proto, NOISY, seed=1)(xd)
    np.testing.assert_allclose(anasim.analog(proto, NOISY, seed=1, device="cuda")(xd), want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- simulator: analog

NOISY = {"forward": {"inp_res": 126, "out_res": 254, "out_bound": 4.0, "out_noise": 0.05,
                     "w_noise": 0.01, "w_noise_type": "additive_constant",
                     "bound_management": "iterative", "noise_management": "abs_max"},
         "mapping": {"max_input_size": 10, "max_output_size": 4, "weight_scaling_omega": 1.0}}


@sim_only
def test_sim_analog_network_on_cuda_equals_cpu():
    """The analog simulator with device="cuda" (digital ops on the device too) draws the same
    noise as on the CPU: outputs agree to float rounding, whatever the batch split."""
    import anasim

    rng = np.random.default_rng(3)
    g = _tiny_cnn(rng, host_tail=False)
    cfg = dict(NOISY, noise_model={"type": "pcm"}, drift_compensation={"type": "global"})
    cpu = anasim.analog(g, cfg, seed=5)
    dev = anasim.analog(g, cfg, seed=5, device="cuda")
    assert dev._executor.device == "cuda" and dev._executor.host_nodes == []
    assert [la.name for la in dev.layers] == ["conv1", "conv2", "fc", "matmul"]
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    want = cpu(x)
    np.testing.assert_allclose(dev(x, batch_size=1), want, rtol=1e-4, atol=1e-4)
    ideal = g(x)
    assert np.abs(want - ideal).max() > 1e-3  # the noise is there (and equal on both)
    cpu.drift(86400.0)
    dev.drift(86400.0)
    # the compensation reads each tile through its forward pass (readout = "forward"): the
    # same readout, hence the same factors, on both devices
    post = lambda sim: np.concatenate([t.post_scale for la in sim.layers for m in la.matrices for t in m.tiles])
    assert not np.all(post(cpu) == 1)
    np.testing.assert_array_equal(post(dev), post(cpu))
    np.testing.assert_allclose(dev(x), cpu(x), rtol=1e-4, atol=1e-4)


@sim_only
def test_sim_evaluate_on_cuda_equals_cpu():
    """evaluate(..., device="cuda"): the ideal and the analog rows of the CPU's table."""
    from anasim.experiment import evaluate

    rng = np.random.default_rng(6)
    proto = _tiny_cnn(rng, host_tail=False, as_proto=True)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = rng.integers(0, 3, 2)
    cfg = dict(NOISY, noise_model={"type": "pcm"}, drift_compensation={"type": "global"})
    kw = dict(times=(86400.0,), seed=2, batch_size=1, metric="logits_rel_error", progress=False)
    want = evaluate(proto, (x, y), cfg, **kw).rows
    got = evaluate(proto, (x, y), cfg, device="cuda", **kw).rows
    assert [r["kind"] for r in got] == ["ideal", "analog"]
    for a, b in zip(want, got):
        assert a["t_inference"] == b["t_inference"]
        assert b["logits_rel_error"] == pytest.approx(a["logits_rel_error"], rel=1e-3, abs=1e-6)
    assert got[1]["logits_rel_error"] > 0.01  # noise and drift are there


@sim_only
def test_sim_analog_layer_nan_is_reported_on_cuda():
    import anasim
    from anasim.errors import ExecutionError, InputError

    rng = np.random.default_rng(4)
    g = _tiny_cnn(rng, host_tail=False)
    dev = anasim.analog(g, NOISY, seed=0, device="cuda")
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        dev(x)  # the simulator checks its inputs first
    layer = dev.layers[0]
    from anasim.graph.context import RunContext
    from anasim.kernels.cuda import as_device

    with pytest.raises(ExecutionError, match="its input"):
        layer(as_device(x), context=RunContext())


# ---------------------------------------------------------------------- real GPU


@gpu_only
@pytest.mark.parametrize("name", ["resnet20_cifar10.onnx", "resnet18_fmnist.onnx", "mobilenet_v2_fmnist.onnx",
                                  "vgg16_fmnist.onnx"])
def test_gpu_shared_model_runs_on_device(name):
    """Ideal: whole network on the device, no host fallback, logits equal to the CPU's."""
    import anasim
    from conftest import MODEL_DATA, shared_path

    g = anasim.load(shared_path("models", name))
    x, _ = MODEL_DATA[name](64)
    gd = g.to("cuda")
    assert gd.host_nodes == []
    want, got = g(x), gd(x)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale
    assert (got.argmax(1) == want.argmax(1)).mean() == 1.0


@gpu_only
@pytest.mark.parametrize("name,n", [("resnet20_cifar10.onnx", 128), ("mobilenet_v2_fmnist.onnx", 32)])
def test_gpu_analog_model_equals_cpu(name, n):
    """aihwkit preset + PCM at 1 day: the GPU draws the CPU's noise (ResNet-20; MobileNetV2
    for the grouped path), and repeats itself exactly."""
    import anasim
    from conftest import MODEL_DATA, shared_path

    x, _ = MODEL_DATA[name](n)
    path = shared_path("models", name)
    cpu = anasim.analog(path, "aihwkit", seed=3)
    dev = anasim.analog(path, "aihwkit", seed=3, device="cuda")
    assert dev._executor.host_nodes == []
    cpu.drift(86400.0)
    dev.drift(86400.0)
    want, got = cpu(x), dev(x)
    # float rounding can move an ADC level now and then; the noise itself is identical
    assert np.mean(np.abs(got - want) <= 1e-3 * np.abs(want).max()) > 0.99
    assert np.mean(got.argmax(1) == want.argmax(1)) > 0.97
    np.testing.assert_array_equal(dev(x), got)  # deterministic on the device


@sim_only
def test_sim_recurrent_layer_on_cuda_equals_cpu():
    """An analog GRU on device="cuda": the recurrence runs on the host with the tiles' device
    copies, drawing the CPU's numbers."""
    import anasim
    from test_analog_recurrent import NOISY as RNOISY, recurrent_model

    g = recurrent_model("GRU", "bidirectional", T=3, linear_before_reset=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 7)).astype(np.float32)
    cpu = anasim.analog(g, RNOISY, seed=1).run({"x": x})
    dev = anasim.analog(g, RNOISY, seed=1, device="cuda").run({"x": x})
    for k in cpu:
        np.testing.assert_allclose(dev[k], cpu[k], rtol=1e-5, atol=1e-6)
    assert np.abs(cpu["y"] - g.run({"x": x})["y"]).max() > 1e-3
