"""anasim.analog: mapping of ONNX layers onto tiles, reproducibility, devices workflow."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.errors import ConfigError, InputError
from anasim.graph.context import RunContext
from conftest import cifar10_test, shared_path

NOISY = {
    "forward": {"inp_res": 254, "out_res": 254, "out_bound": 10.0, "out_noise": 0.04, "inp_noise": 0.01,
                "w_noise": 0.02, "w_noise_type": "additive_constant", "bound_management": "iterative"},
    "mapping": {"max_input_size": 64, "max_output_size": 32},
}


def _small_cnn(rng, group=1):
    """Conv(3→8, 3x3, group) → Relu → MatMul-free Gemm head; N×3×6×6 input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    w1 = rng.standard_normal((8, 4 // group, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((5, 8 * 36)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1, alpha=0.7)]
    g = helper.make_graph(nodes, "small", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return anasim.load(m)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_ideal_preset_equals_digital_graph(group):
    rng = np.random.default_rng(0)
    g = _small_cnn(rng, group)
    sim = anasim.analog(g, "ideal")
    assert [x.name for x in sim.layers] == ["conv", "fc"]
    assert sim.layers[0].tile_grid == (group, 1, 1)
    x = rng.standard_normal((9, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(sim(x), g(x), rtol=1e-5, atol=1e-5)


def test_ideal_preset_on_resnet20_equals_digital():
    g = anasim.load(shared_path("models", "resnet20_cifar10.onnx"))
    x, _ = cifar10_test(32)
    ref = g(x)
    assert np.abs(anasim.analog(g)(x) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_noise_independent_of_batch_size_and_offset():
    rng = np.random.default_rng(1)
    g = _small_cnn(rng, group=2)
    sim = anasim.analog(g, NOISY, seed=3)
    x = rng.standard_normal((64, 4, 6, 6)).astype(np.float32)
    full = sim(x)
    for bs in (1, 7, 64):
        np.testing.assert_array_equal(sim(x, batch_size=bs), full)
    # the same samples evaluated as a later slice of the data set draw the same noise
    np.testing.assert_array_equal(sim(x[10:20], sample_offset=10), full[10:20])
    # and another slot in the data set draws different noise
    assert not np.array_equal(sim(x[10:20], sample_offset=0), full[10:20])
    # noise is really there, and a different seed gives different results
    assert np.abs(full - g(x)).max() > 1e-3
    assert not np.array_equal(anasim.analog(g, NOISY, seed=4)(x), full)


def test_small_batches_sum_like_large_ones():
    """A 16 x 144 analog Gemm run on 1, 7 or 75 samples at a time gives the rows of one run
    on 200, bit for bit: OpenBLAS's small-matrix kernels (products under about 10⁶
    multiply-adds) round the last bit of the sums differently, so the tile's products are
    made on rows padded to a large product (anasim.kernels.blas.rows_times). Without ADC or
    DAC rounding, every last-bit difference would show."""
    rng = np.random.default_rng(5)
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 144])
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    w = numpy_helper.from_array((rng.standard_normal((16, 144)) * 0.1).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "fc",
                          [x_in], [y_out], [w])
    graph = anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    sim = anasim.analog(graph, {"forward": {"inp_res": -1, "out_res": -1, "out_noise": 0.04, "out_bound": 1e9,
                                            "bound_management": "none"}}, seed=2)
    x = rng.standard_normal((200, 144)).astype(np.float32)
    full = sim(x)
    for bs in (1, 7, 75):
        np.testing.assert_array_equal(sim(x, batch_size=bs), full)


@pytest.mark.parametrize("group,digital_bias", [(2, True), (4, False)])
def test_grouped_conv_path_equals_unblocked_path(group, digital_bias):
    """The grouped path (per-group im2col, groups on worker threads) gives the numbers of
    the plain path (whole im2col matrix, each group's columns through its tiles), bit for
    bit: same rows, same row ids, same random numbers; also with an analog bias column,
    several tiles per group and bound management re-runs."""
    from anasim.ops.conv_geometry import conv_geometry
    from anasim.ops.im2col import cols_to_output, im2col

    rng = np.random.default_rng(5)
    g = _small_cnn(rng, group)
    cfg = {"forward": dict(NOISY["forward"], out_bound=1.0),  # saturates: bound management works
           "mapping": {"max_input_size": 5, "max_output_size": 1, "digital_bias": digital_bias}}
    sim = anasim.analog(g, cfg, seed=7)
    layer = sim.layer("conv")
    assert layer.tile_grid[0] == group and layer.n_tiles > group
    x = rng.standard_normal((6, 4, 6, 6)).astype(np.float32)
    ctx = RunContext(sample_offset=11, repetition=2)
    a = layer.attrs
    geom = conv_geometry(x.shape, layer.weight_shape, dilations=a.get("dilations"), group=group,
                         pads=a.get("pads"), strides=a.get("strides"))
    plain = cols_to_output(layer._run_rows(ctx, im2col(x, geom), layer._row_ids(ctx, 6, geom.n_pixels)), 6, geom)
    assert layer.epilogue == (0.0, np.inf)  # the Relu after it, folded into the layer
    np.testing.assert_array_equal(layer(x, context=ctx), np.maximum(plain, 0))
    assert np.abs(plain).max() > 0


def test_layers_report_tile_grid_and_digital_overrides():
    rng = np.random.default_rng(2)
    g = _small_cnn(rng)
    cfg = dict(NOISY, layers=[{"match": "f*", "digital": True}])
    sim = anasim.analog(g, cfg)
    assert [x.name for x in sim.layers] == ["conv"] and sim.digital_layers == ["fc"]
    sim2 = anasim.analog(g, NOISY)
    fc = sim2.layer("fc")
    assert fc.tile_grid == (1, 5, 1)  # 288 inputs in chunks of <= 64 → 5 × 57.6 → equal chunks
    assert sum(r for r, _ in fc.tile_shapes) == 288
    with pytest.raises(ConfigError, match="match no analog layer"):
        anasim.analog(g, dict(NOISY, layers=[{"match": "/typo/*", "digital": True}]))


def test_bad_arguments():
    g = _small_cnn(np.random.default_rng(3))
    with pytest.raises(ConfigError):
        anasim.analog(g, {"forward": {"out_noise": -1}})
    with pytest.raises(ConfigError, match="seed"):
        anasim.analog(g, None, seed=-1)
    sim = anasim.analog(g)
    with pytest.raises(InputError, match="sample_offset"):
        sim(np.zeros((1, 4, 6, 6), np.float32), sample_offset=-2)
    with pytest.raises(InputError, match="t_inference"):
        sim.drift(float("nan"))


PCM = {"noise_model": {"type": "pcm"}, "drift_compensation": {"type": "global"}}


def test_programming_is_deterministic_and_differs_per_repetition():
    rng = np.random.default_rng(4)
    g = _small_cnn(rng)
    x = rng.standard_normal((16, 4, 6, 6)).astype(np.float32)
    a = anasim.analog(g, PCM, seed=0)
    b = anasim.analog(g, PCM, seed=0)
    np.testing.assert_array_equal(a(x), b(x))
    y0 = a(x)
    a.program(1)
    y1 = a(x)
    assert not np.array_equal(y0, y1)
    a.program(0)
    np.testing.assert_array_equal(a(x), y0)
    a.drift(3600.0)
    y_t = a(x)
    b.drift(3600.0)
    np.testing.assert_array_equal(b(x), y_t)
    a.drift(0.0)
    np.testing.assert_array_equal(a(x), y0)


def test_drift_with_global_compensation_restores_noise_free_outputs():
    """All noise off, perfect periphery: drift by a constant ν + global compensation = undrifted."""
    rng = np.random.default_rng(5)
    g = _small_cnn(rng)
    cfg = {"forward": {"is_perfect": True},
           "noise_model": {"type": "state_independent", "prog_noise_scale": 0.0, "read_noise_scale": 0.0,
                           "drift_nu_std": 0.0, "drift_nu_mean": 0.1},
           "drift_compensation": {"type": "global"}}
    sim = anasim.analog(g, cfg)
    x = rng.standard_normal((8, 4, 6, 6)).astype(np.float32)
    y0 = sim(x)
    sim.drift(86400.0)
    np.testing.assert_allclose(sim(x), y0, rtol=1e-4, atol=1e-4)
    uncompensated = anasim.analog(g, dict(cfg, drift_compensation={"type": "none"}))
    uncompensated.drift(86400.0)
    assert np.abs(uncompensated(x) - y0).max() > 0.1 * np.abs(y0).max()


def test_device_cuda_matches_cpu_under_cuda_simulator():
    """anasim.analog(..., device="cuda") gives the CPU's numbers (numba's CUDA simulator)."""
    import os
    import subprocess
    import sys

    code = r'''
import numpy as np, anasim, sys
sys.path.insert(0, "tests")
from test_analog_simulator import _small_cnn, NOISY
rng = np.random.default_rng(0)
g = _small_cnn(rng, group=2)
x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
cpu = anasim.analog(g, NOISY, seed=1)(x)
gpu = anasim.analog(g, NOISY, seed=1, device="cuda")
assert all(type(m).__name__ == "CudaAnalogMatrix" for la in gpu.layers for m in la.matrices)
out = gpu(x)
print("maxdiff", float(np.abs(out - cpu).max()), float(np.abs(cpu).max()))
np.testing.assert_allclose(out, cpu, rtol=1e-5, atol=1e-5 * float(np.abs(cpu).max()))
'''
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def test_large_batches_are_chunked_automatically(monkeypatch):
    rng = np.random.default_rng(6)
    g = _small_cnn(rng)
    sim = anasim.analog(g, NOISY, seed=2)
    x = rng.standard_normal((40, 4, 6, 6)).astype(np.float32)
    full = sim(x)
    monkeypatch.setenv("ANASIM_MEMORY_BUDGET", str(16 * 8 * 36 * 4 * 3))  # 3 samples' worth
    assert g.auto_batch_size() == 3
    calls = []
    original = sim._executor._run_once
    monkeypatch.setattr(sim._executor, "_run_once", lambda f, w, c: calls.append(len(next(iter(f.values())))) or original(f, w, c))
    np.testing.assert_array_equal(sim(x), full)
    assert max(calls) == 3 and sum(calls) == 40
