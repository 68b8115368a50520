"""The fused CPU analog convolution (anasim.kernels.cpu_conv) against the tile model on im2col rows.

The reference is the plain path: the whole im2col matrix, every group's columns through its
:class:`AnalogMatrix` (``forward`` with the global row ids), then the NCHW layout. The fused
kernel does the same float32 operations in the same order with the same random numbers, and
its products (W · Xᵀ per block of pixels) sum like NumPy's X · Wᵀ for the sizes of real
layers: ResNet-20 and ResNet-18 outputs are identical bit for bit (``test_real_models_bit_for_bit``).
For *small* products OpenBLAS switches to its small-matrix kernels, which sum in another
order for the two orientations; the small synthetic layers below therefore agree to
float32 rounding of the sums, and where that rounding moves a value across an ADC
boundary, by one ADC step in a few elements (:func:`_assert_same`).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.analog.fused import fused_available
from anasim.errors import ExecutionError
from anasim.kernels import cpu_conv
from anasim.ops.conv_geometry import conv_geometry
from anasim.ops.im2col import cols_to_output, im2col
from conftest import cifar10_test, shared_path
from thread_helpers import numba_threads, rerun_with_two_threads

EPS32 = float(np.finfo(np.float32).eps)

pytestmark = pytest.mark.skipif(not cpu_conv.available(), reason="NumPy's BLAS exports no ILP64 cblas_sgemm here")

AIHWKIT_LIKE = {"forward": {"inp_res": 126, "out_res": 510, "out_bound": 12.0, "out_noise": 0.06,
                            "noise_management": "abs_max", "bound_management": "iterative"}}


def _conv_model(c, oc, kernel, group=1, strides=None, pads=None, dilations=None, bias=True, seed=0, op="Conv",
                pre=None, width=8):
    """x (N, c, 9, width) [-> pre op] -> Conv -> y; 1-D (N, c, 11 or 3·width) when len(kernel) == 1."""
    rng = np.random.default_rng(seed)
    spatial = [9, width] if len(kernel) == 2 else [11 if width == 8 else 3 * width]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c] + spatial)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", oc] + [f"s{i}" for i in range(len(kernel))])
    w = (rng.standard_normal((oc, c // group) + tuple(kernel)) * 0.4).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x" if pre is None else "p", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(oc).astype(np.float32), "b"))
        inputs.append("b")
    attrs = {"group": group}
    for name, v in (("strides", strides), ("pads", pads), ("dilations", dilations)):
        if v is not None:
            attrs[name] = v
    nodes = [] if pre is None else [helper.make_node(pre, ["x"], ["p"], name="pre")]
    nodes.append(helper.make_node(op, inputs, ["y"], name="conv", **attrs))
    g = helper.make_graph(nodes, "conv", [x], [y], inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _reference(layer, x, sample_offset=0, repetition=0):
    """The layer through its tiles on the whole im2col matrix (the unfused path)."""
    a = layer.attrs
    geom = conv_geometry(x.shape, layer.weight_shape, a.get("auto_pad", "NOTSET"), a.get("dilations"),
                         a.get("group", 1), a.get("kernel_shape"), a.get("pads"), a.get("strides"))
    cols = im2col(x, geom)
    p = geom.n_pixels
    ids = np.arange(sample_offset * p, (sample_offset + x.shape[0]) * p, dtype=np.int64)
    k = geom.k_per_group
    y = np.concatenate([m.forward(cols[:, g * k:(g + 1) * k], ids, repetition)
                        for g, m in enumerate(layer.matrices)], axis=1)
    return cols_to_output(y, x.shape[0], geom)


def _check(graph, config, x, seed=0, sample_offset=0):
    sim = anasim.analog(graph, config, seed=seed)
    layer = sim.layers[0]
    assert layer._fused is not None, "the fused kernel should serve this layer"
    got = sim(x, sample_offset=sample_offset)
    _assert_same(got, _reference(layer, x, sample_offset), layer, x)
    return got


def _assert_same(got, ref, layer, x):
    """Equal to float32 rounding of the sums; quantized outputs may be one ADC step away in
    at most 1 % of the elements (a sum on a rounding boundary). Random numbers, stage order
    or scaling gone wrong show as differences everywhere."""
    diff = np.abs(got.astype(np.float64) - ref)
    fp_tol = 64 * EPS32 * max(1.0, float(np.abs(ref).max()))
    off = diff > fp_tol
    p = layer.matrices[0].periphery
    if p.out_step <= 0 or not off.any():
        assert not off.any(), f"{int(off.sum())} outputs off by up to {diff.max():.3g} (float32 rounding {fp_tol:.3g})"
        return
    assert off.mean() <= 0.01, f"{int(off.sum())} of {off.size} outputs off"
    ms = max(float(t.mapping_scale.max()) for m in layer.matrices for t in m.tiles)
    one_step = p.out_step * max(1.0, float(np.abs(x).max())) * ms * (2.0**10 if p.bm else 1.0) * p.out_scale
    assert diff.max() <= 1.01 * one_step + fp_tol, "off by more than one ADC step"


GEOMETRIES = {
    "3x3 pad 1": dict(c=4, oc=8, kernel=[3, 3], pads=[1, 1, 1, 1]),
    "strided, dilated, asymmetric pads": dict(c=3, oc=5, kernel=[3, 2], strides=[2, 3], dilations=[2, 1],
                                              pads=[2, 0, 1, 1]),
    "1x1": dict(c=6, oc=7, kernel=[1, 1]),
    "grouped": dict(c=6, oc=4, kernel=[3, 3], group=2, pads=[1, 1, 1, 1]),
    "depthwise x2": dict(c=5, oc=10, kernel=[3, 3], group=5, pads=[1, 1, 1, 1], strides=[2, 2]),
    "depthwise": dict(c=5, oc=5, kernel=[3, 3], group=5, pads=[1, 1, 1, 1]),  # one-output tiles, one pass
    "depthwise, stride 2, no bias": dict(c=4, oc=4, kernel=[3, 3], group=4, pads=[1, 1, 1, 1], strides=[2, 2],
                                         bias=False),
    "1-D": dict(c=3, oc=4, kernel=[5], pads=[2, 1], strides=[2]),
    "no bias": dict(c=4, oc=3, kernel=[2, 2], bias=False),
}

MAPPINGS = {
    "one tile": {},
    "split at channel ends": {"max_input_size": 18, "max_output_size": 3},
    "split inside taps": {"max_input_size": 7, "max_output_size": 4},
}


@pytest.mark.parametrize("width", [8, 40])  # output rows gathered per pixel (short) or per row
@pytest.mark.parametrize("mapping", list(MAPPINGS))
@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_fused_equals_tile_model(geom, mapping, width):
    g = _conv_model(**GEOMETRIES[geom], width=width)
    shape = {"1-D": (3, 3, 11 if width == 8 else 3 * width)}.get(geom, (3, GEOMETRIES[geom]["c"], 9, width))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 2
    _check(g, {**AIHWKIT_LIKE, "mapping": MAPPINGS[mapping]}, x, sample_offset=5)


PERIPHERIES = {
    "bound management re-runs": {"out_bound": 1.5, "out_res": 254},
    "bm positive bound only": {"out_bound": 1.5, "bm_test_negative_bound": False},
    "nm max": {"noise_management": "max"},
    "nm constant": {"noise_management": "constant", "nm_thres": 2.0},
    "nm none, no DAC step": {"noise_management": "none", "inp_res": -1, "inp_bound": 4.0},
    "input noise": {"inp_noise": 0.05},
    "stochastic rounding": {"inp_sto_round": True, "out_sto_round": True, "out_bound": 2.0},
    "additive weight noise": {"w_noise": 0.03, "w_noise_type": "additive_constant"},
    "pcm read noise": {"w_noise": 0.03, "w_noise_type": "pcm_read"},
    "ir drop": {"ir_drop": 1.0, "ir_drop_g_ratio": 2000.0},
    "non-linearity": {"out_nonlinearity": 0.3},
    "no ADC step, no noise": {"out_res": -1, "out_noise": 0.0},
}


@pytest.mark.parametrize("width", [8, 40])
@pytest.mark.parametrize("mapping", ["one tile", "split inside taps"])
@pytest.mark.parametrize("name", list(PERIPHERIES))
def test_fused_equals_tile_model_for_every_periphery(name, mapping, width):
    g = _conv_model(c=4, oc=6, kernel=[3, 3], pads=[1, 1, 1, 1], strides=[1, 2], seed=2, width=width)
    x = np.random.default_rng(3).standard_normal((4, 4, 9, width)).astype(np.float32) * 2
    x[1, :, :3] = 0  # all-zero receptive fields: aihwkit's zero-output short cut
    x[2] = -np.abs(x[2])  # max noise management on all-negative inputs
    config = {"forward": {**AIHWKIT_LIKE["forward"], **PERIPHERIES[name]}, "mapping": MAPPINGS[mapping]}
    _check(g, config, x, seed=4, sample_offset=2)


def test_bound_management_reruns_change_the_result():
    """The re-run branch is exercised: with a tight bound the iterative result differs from
    the saturated one (and still equals the tile model, above)."""
    g = _conv_model(c=4, oc=6, kernel=[3, 3], pads=[1, 1, 1, 1])
    x = np.random.default_rng(5).standard_normal((2, 4, 9, 8)).astype(np.float32) * 2
    fw = {**AIHWKIT_LIKE["forward"], "out_bound": 1.5, "out_noise": 0.0}
    with_bm = _check(g, {"forward": fw}, x)
    without = _check(g, {"forward": {**fw, "bound_management": "none"}}, x)
    assert (np.abs(with_bm - without) > 0.5).mean() > 0.01


@pytest.mark.parametrize("mapping", [{}, {"max_input_size": 7}])
def test_analog_bias_and_weight_scaling(mapping):
    g = _conv_model(c=3, oc=5, kernel=[3, 3], pads=[1, 1, 1, 1], seed=6)
    x = np.random.default_rng(7).standard_normal((2, 3, 9, 8)).astype(np.float32)
    config = {**AIHWKIT_LIKE, "mapping": {"digital_bias": False, "weight_scaling_omega": 0.8,
                                         "weight_scaling_columnwise": True, **mapping}}
    sim = anasim.analog(g, config)
    assert sim.layers[0].matrices[0].analog_bias == (not mapping)
    _check(g, config, x)


def test_fused_after_programming_and_drift():
    """The packed weights follow the device state (programming, drift, compensation) and the repetition."""
    g = _conv_model(c=4, oc=8, kernel=[3, 3], pads=[1, 1, 1, 1])
    x = np.random.default_rng(8).standard_normal((2, 4, 9, 8)).astype(np.float32)
    config = {**AIHWKIT_LIKE, "noise_model": {"type": "pcm"}, "drift_compensation": {"type": "global"}}
    sim = anasim.analog(g, config, seed=1)
    layer = sim.layers[0]
    outs = []
    for rep, t in ((1, 0.0), (1, 3600.0), (2, 86400.0)):
        sim.program(repetition=rep)
        if t:
            sim.drift(t)
        y = sim(x)
        _assert_same(y, _reference(layer, x, repetition=rep), layer, x)
        outs.append(y)
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])


def test_fused_repacks_when_a_tile_changes_after_a_run():
    """The packed weights and scales are cached between runs; any assignment to a tile
    (through the matrix's setters or directly) is seen by the next run, and a pickled
    simulator does not reuse another process's pack."""
    import pickle

    g = _conv_model(c=4, oc=8, kernel=[3, 3], pads=[1, 1, 1, 1])
    x = np.random.default_rng(9).standard_normal((2, 4, 9, 8)).astype(np.float32)
    sim = anasim.analog(g, AIHWKIT_LIKE, seed=1)
    layer = sim.layers[0]
    first = sim(x)
    matrix = layer.matrices[0]
    tile = matrix.tiles[0]
    matrix.set_tile_weights([t.weight * 0.5 for t in matrix.tiles])
    halved = sim(x)
    assert not np.array_equal(first, halved)
    _assert_same(halved, _reference(layer, x), layer, x)
    tile.post_scale = tile.post_scale * 2.0  # a direct assignment
    scaled = sim(x)
    assert not np.array_equal(halved, scaled)
    _assert_same(scaled, _reference(layer, x), layer, x)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sim))(x), scaled)


def test_fused_results_do_not_depend_on_batch_or_threads(request):
    if rerun_with_two_threads(request):  # this process's pool has a single thread
        return
    g = _conv_model(c=4, oc=8, kernel=[3, 3], pads=[1, 1, 1, 1])
    x = np.random.default_rng(9).standard_normal((7, 4, 9, 8)).astype(np.float32)
    sim = anasim.analog(g, {**AIHWKIT_LIKE, "forward": {**AIHWKIT_LIKE["forward"], "inp_noise": 0.02}}, seed=2)
    with numba_threads(2):
        full = sim(x)
        parts = np.concatenate([sim(x[:3], sample_offset=0), sim(x[3:], sample_offset=3)])
    np.testing.assert_array_equal(full, parts)
    with numba_threads(1):
        np.testing.assert_array_equal(sim(x), full)


@pytest.mark.parametrize("c, oc", [(16, 16), (64, 8)])
def test_sgemm_sums_do_not_depend_on_where_a_block_ends(c, oc):
    """Batches of 7 and of 3 + 4 images of 9 x 8 pixels end their blocks 8 pixels past a
    multiple of 16 in one and not in the other (OpenBLAS rounds such remainder columns
    differently), and with 64 x 9 = 576 inputs the 3-image product is under 10⁶
    multiply-adds (its small-matrix kernel sums the inputs in another order than the blocked
    path): the fused kernel pads its products so that neither changes a pixel's numbers."""
    g = _conv_model(c=c, oc=oc, kernel=[3, 3], pads=[1, 1, 1, 1], bias=False)
    x = np.random.default_rng(4).standard_normal((7, c, 9, 8)).astype(np.float32)
    sim = anasim.analog(g, {"forward": {"out_noise": 0.0, "inp_res": -1, "out_res": -1, "out_bound": 1e9,
                                        "noise_management": "none", "bound_management": "none"}}, seed=1)
    assert sim.layers[0]._fused is not None
    with numba_threads(1):
        full = sim(x)
        parts = np.concatenate([sim(x[:3], sample_offset=0), sim(x[3:], sample_offset=3)])
    np.testing.assert_array_equal(full, parts)


@pytest.mark.slow
@pytest.mark.parametrize("model, config", [("resnet20_cifar10", "aihwkit"), ("resnet20_cifar10", "full"),
                                           ("resnet18_fmnist", "aihwkit")])
def test_real_models_bit_for_bit(model, config):
    """On real networks every output of the fused path equals the unfused path's, bit for
    bit: the aihwkit preset, and a noisy drifted PCM chip (input noise, additive weight
    noise, bound management, global compensation)."""
    g = anasim.load(shared_path("models", f"{model}.onnx"))
    if model.startswith("resnet20"):
        x, _ = cifar10_test(6)
    else:
        d = np.load(shared_path("data", "fashion_mnist_test.npz"))
        x = ((np.pad(d["x"][:3], ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255 - 0.2860) / 0.3530)[:, None]
    cfg = config if config == "aihwkit" else {
        "forward": {"inp_res": 254, "out_res": 254, "out_bound": 10.0, "out_noise": 0.04, "inp_noise": 0.01,
                    "w_noise": 0.02, "w_noise_type": "additive_constant", "bound_management": "iterative"},
        "noise_model": {"type": "pcm"}, "drift_compensation": {"type": "global"}}
    sim = anasim.analog(g, cfg, seed=3)
    if config != "aihwkit":
        sim.drift(3600.0)
    assert all(la._fused is not None for la in sim.layers if la.op_type == "Conv")
    fused = sim(x, sample_offset=11)
    for la in sim.layers:
        la._fused = None
    np.testing.assert_array_equal(fused, sim(x, sample_offset=11))


def test_true_depthwise_close_to_tile_model():
    """One-output tiles: NumPy's product of an (M, K) by a (K, 1) matrix is a gemv, whose sums
    differ in the last bit from sgemm's (which the fused kernel calls for every tile, as for
    multi-output tiles); the outputs then agree except for rare values that a last-bit
    difference moves across an ADC rounding boundary (one step)."""
    g = _conv_model(c=6, oc=6, kernel=[3, 3], group=6, pads=[1, 1, 1, 1])
    x = np.random.default_rng(10).standard_normal((8, 6, 9, 8)).astype(np.float32)
    sim = anasim.analog(g, AIHWKIT_LIKE)
    layer = sim.layers[0]
    assert layer._fused is not None
    got, ref = sim(x), _reference(layer, x)
    diff = np.abs(got - ref)
    assert (diff > 0).mean() < 0.01
    one_step = layer.matrices[0].periphery.out_step * np.abs(x).max()  # ADC step × the largest α
    assert diff.max() <= 1.001 * one_step


def test_fused_not_used_for_perfect_tiles_or_without_blas(monkeypatch):
    g = _conv_model(c=4, oc=8, kernel=[3, 3], pads=[1, 1, 1, 1])
    assert anasim.analog(g, {"forward": {"is_perfect": True}}).layers[0]._fused is None
    monkeypatch.setattr(cpu_conv, "_sgemm", None)
    assert not fused_available(anasim.analog(g, AIHWKIT_LIKE).layers[0].matrices)


def test_nan_from_the_input_of_a_fused_layer_is_reported():
    g = _conv_model(c=2, oc=3, kernel=[3, 3], pads=[1, 1, 1, 1], pre="Log")
    x = np.abs(np.random.default_rng(11).standard_normal((2, 2, 9, 8)).astype(np.float32)) + 0.1
    x[1, 0, 4, 4] = -1.0  # log(-1) = NaN reaches the analog layer
    sim = anasim.analog(g, AIHWKIT_LIKE)
    assert sim.layers[0]._fused is not None
    with pytest.raises(ExecutionError, match=r"'conv' \(Conv\) produced \d+ NaN/infinite output\(s\); they come from its input"):
        sim(x)


def _conv_act_model(act):
    """x -> Conv -> act -> Conv -> act -> y."""
    rng = np.random.default_rng(12)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    inits = [numpy_helper.from_array((rng.standard_normal((5, 3, 3, 3)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4, 5, 3, 3)) * 0.5).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b1"),
             numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(1.5), "hi")]
    extra = ["lo", "hi"] if act == "Clip" else []
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node(act, ["c1"] + extra, ["a1"], name="act1"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node(act, ["c2"] + extra, ["y"], name="act2")]
    g = helper.make_graph(nodes, "acts", [x], [y], inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_activation_folded_into_the_layer_gives_the_same_numbers(act, monkeypatch):
    """A Relu/Clip that alone consumes a fused convolution is applied by the kernel (the node
    becomes a pass-through): the outputs are those of the unfolded graph, bit for bit."""
    from anasim.analog import simulator

    g = _conv_act_model(act)
    x = np.random.default_rng(13).standard_normal((3, 3, 8, 8)).astype(np.float32)
    folded = anasim.analog(g, AIHWKIT_LIKE, seed=1)
    assert [la.epilogue for la in folded.layers] == [(0.0, np.inf) if act == "Relu" else (0.0, 1.5)] * 2
    monkeypatch.setattr(simulator, "fold_activations", lambda ir, layers: {})
    plain = anasim.analog(g, AIHWKIT_LIKE, seed=1)
    assert all(la.epilogue is None for la in plain.layers)
    np.testing.assert_array_equal(folded(x), plain(x))


def _residual_model(swap):
    """x -> conv1 -> Relu = a1; conv2(a1) + a1 -> Relu = a2; a2 + conv3(a2) = y (Add's inputs
    in the other order when ``swap``)."""
    rng = np.random.default_rng(14)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((6, 6, 3, 3)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal((6, 6, 3, 3)) * 0.3).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b2")]

    def add(a, b, out, name):
        return helper.make_node("Add", [b, a] if swap else [a, b], [out], name=name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"], name="act1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             add("c2", "a1", "s2", "add2"),
             helper.make_node("Relu", ["s2"], ["a2"], name="act2"),
             helper.make_node("Conv", ["a2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             add("c3", "a2", "y", "add3")]
    g = helper.make_graph(nodes, "residual", [x], [y], inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("mapping", [{}, {"max_input_size": 20, "max_output_size": 4}])
def test_residual_add_folded_into_the_layer_gives_the_same_numbers(swap, mapping, monkeypatch):
    """A residual Add (and the Relu after it) that alone consumes a fused convolution's
    output is applied by the kernel, on the single-tile store and on the multi-tile
    accumulator path alike: the outputs are those of the unfolded graph, bit for bit."""
    from anasim.analog import simulator

    g = _residual_model(swap)
    x = np.random.default_rng(15).standard_normal((3, 3, 8, 8)).astype(np.float32)
    cfg = dict(AIHWKIT_LIKE, mapping=mapping)
    folded = anasim.analog(g, cfg, seed=2)
    assert [(la.residual, la.epilogue) for la in folded.layers] == [
        ("", (0.0, np.inf)), ("a1", (0.0, np.inf)), ("a2", None)]
    monkeypatch.setattr(simulator, "fold_activations", lambda ir, layers: {})
    plain = anasim.analog(g, cfg, seed=2)
    assert all(not la.residual and la.epilogue is None for la in plain.layers)
    np.testing.assert_array_equal(folded(x), plain(x))
    # calibration runs the layers raw, the Add and the Relu digital: the same fits, then the
    # affine correction applied before the folded residual: the same numbers again
    from anasim.experiment.calibration import calibrate

    params = {"affine": True, "input_range": True}
    cal_f, cal_p = calibrate(folded, x, params), calibrate(plain, x, params)
    for name in ("conv1", "conv2", "conv3"):
        assert cal_f.layers[name].scale is not None
        np.testing.assert_array_equal(cal_f.layers[name].scale, cal_p.layers[name].scale)
    np.testing.assert_array_equal(folded(x), plain(x))


@pytest.mark.parametrize("nm", ["abs_max", "max"])
@pytest.mark.parametrize("case", [
    dict(c=5, oc=5, kernel=[3, 3], group=5, pads=[1, 1, 1, 1], width=40),                  # wide rows
    dict(c=5, oc=5, kernel=[3, 3], group=5, pads=[1, 1, 1, 1], width=6),                   # short rows
    dict(c=4, oc=4, kernel=[3, 3], group=4, pads=[1, 1, 1, 1], strides=[2, 2], width=40),
    dict(c=4, oc=4, kernel=[3, 3], group=4, pads=[2, 2, 2, 2], dilations=[2, 2], width=8),
    dict(c=3, oc=3, kernel=[2, 3], group=3, pads=[0, 1, 1, 0], strides=[1, 2], width=9),
    dict(c=3, oc=3, kernel=[5], group=3, pads=[2, 1], strides=[2]),                       # 1-D
    dict(c=3, oc=3, kernel=[5, 5], group=3, pads=[2, 2, 2, 2], width=12),                  # 5x5: separable statistic
    dict(c=3, oc=3, kernel=[5, 5], group=3, pads=[2, 2, 2, 2], strides=[2, 2], dilations=[1, 2], width=16),
])
def test_one_channel_tiles_equal_the_generic_route_bit_for_bit(case, nm, monkeypatch):
    """Depthwise tiles (one input channel each) take their noise-management statistic from
    the input itself and do DAC, MVM and the PCM read-noise product in one pass, flat over
    the unit-stride (phase-split, channel-major) layout; the generic route (gather, then
    the statistic of the gathered inputs, then the product), in that layout and in the
    (N, C, Hp, Wp) one, gives the same numbers bit for bit, with and without an analog
    bias, through bound-management re-runs. 2-D kernels take the statistic separably (row
    maxima, then over rows), 1-D ones tap by tap."""
    from anasim.analog.fused import FusedConv

    g = _conv_model(**case)
    shape = (6, case["c"], 9, case.get("width", 8)) if len(case["kernel"]) == 2 else (6, case["c"], 11)
    x = np.random.default_rng(16).standard_normal(shape).astype(np.float32) * 2
    x[0, 0, :3] = 0.0
    fw = {**AIHWKIT_LIKE["forward"], "noise_management": nm, "out_bound": 3.0, "w_noise": 0.02,
          "w_noise_type": "pcm_read"}
    for mapping in ({}, {"digital_bias": False}):
        cfg = {"forward": fw, "mapping": mapping}
        got = anasim.analog(g, cfg, seed=5)(x)
        with monkeypatch.context() as mp:
            orig = FusedConv._tile_modes

            def generic(self, geom):
                tiles, ranges = orig(self, geom)
                assert (tiles[:, 8] == cpu_conv.MAP_DIRECT).all()  # the route under test
                tiles = tiles.copy()
                tiles[:, 8] = cpu_conv.MAP_GENERIC
                return tiles, ranges

            mp.setattr(FusedConv, "_tile_modes", generic)
            ref = anasim.analog(g, cfg, seed=5)(x)
            mp.setattr(FusedConv, "phased", lambda self, geom, tiles, ranges: False)  # (N, C, Hp, Wp)
            ref_nchw = anasim.analog(g, cfg, seed=5)(x)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, ref_nchw)


@pytest.mark.parametrize("h,w,ph,pw,sh,sw,hs,ws", [
    (4, 4, 1, 1, 1, 1, 6, 6),  # narrow planes: zeroed whole, rows copied in
    (8, 7, 1, 2, 2, 2, 5, 6),
    (5, 9, 0, 3, 3, 2, 2, 8),  # planes cut before the input ends (rows past every tap)
    (20, 33, 2, 1, 1, 1, 24, 35),  # wide rows: margins zeroed around the copy
    (17, 40, 1, 1, 2, 2, 10, 21),
])
def test_pad_phases_equals_numpy_reference(h, w, ph, pw, sh, sw, hs, ws):
    """:func:`cpu_conv.pad_phases` against slicing: phase (u, v) of channel c and image a is
    rows u, u + sh, … and columns v, v + sw, … of the zero-padded input, cut to hs × ws."""
    n, c = 3, 5
    x = np.random.default_rng(h * w).standard_normal((n, c, h, w)).astype(np.float32) + 2.0
    big = np.zeros((n, c, hs * sh + h + ph, ws * sw + w + pw), np.float32)
    big[:, :, ph:ph + h, pw:pw + w] = x
    want = np.stack([big[:, :, u::sh, v::sw][:, :, :hs, :ws] for u in range(sh) for v in range(sw)])
    want = want.transpose(2, 0, 1, 3, 4)  # (C, sh·sw, N, hs, ws)
    xp = np.full(c * sh * sw * n * hs * ws, np.nan, np.float32)
    cpu_conv.pad_phases(x, *(np.int64(v) for v in (ph, pw, sh, sw, hs, ws)), xp)
    np.testing.assert_array_equal(xp.reshape(want.shape), want)


def _expand_depthwise_model(extra_output: bool):
    """x (N, 4, 9, 8) -> Conv 1x1 (8) -> Clip(0, 6) -> depthwise Conv 3x3 (pads 1) -> y."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["e"], name="expand"),
             helper.make_node("Clip", ["e", "lo", "hi"], ["a"], name="clip"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="dw", group=8, pads=[1, 1, 1, 1])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_output:
        outs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "ed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 8])], outs,
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")])
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize("extra_output", [False, True])
def test_expand_output_written_in_the_depthwise_planes(extra_output, monkeypatch):
    """A fused convolution whose output only a depthwise layer reads writes it straight into
    that layer's zero-padded planes (no padding pass), with the numbers of the plain route;
    an output others read as well stays plain. Runs repeat with the reused buffers."""
    from anasim.analog import fused

    x = np.random.default_rng(4).standard_normal((5, 4, 9, 8)).astype(np.float32)
    sim = anasim.analog(_expand_depthwise_model(extra_output), AIHWKIT_LIKE, seed=2)
    planned = {la.name: la.next_depthwise for la in sim.layers}
    assert (planned["expand"] is not None) != extra_output
    calls = []
    orig = cpu_conv.pad_phases
    monkeypatch.setattr(cpu_conv, "pad_phases", lambda *a: (calls.append(1), orig(*a))[1])
    def run():
        out = sim.run({"x": x})
        return [np.array(out[k]) for k in sorted(out)]

    got = [run() for _ in range(3)]
    assert len(calls) == (3 if extra_output else 0)
    for la in sim.layers:
        la.next_depthwise = None
    ref = run()
    for g in got:
        for a, b in zip(g, ref):
            np.testing.assert_array_equal(a, b)
    assert fused._OUT_POOL  # outputs are handed out from the pool
