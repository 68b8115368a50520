"""Calibration ([calibration], anasim.experiment.calibrate, evaluate(calibrate=N), the CLI).

Toy models built with onnx.helper, a few dozen samples: the whole file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.analog.calibration import LayerCalibration, clip_bounds, fit_affine
from anasim.cli import main
from anasim.errors import ConfigError, InputError
from anasim.experiment import calibrate, evaluate
from anasim.snapshot import load_snapshot, open_snapshot, save_snapshot

ALL = {"affine": True, "input_range": True, "adc_range": True}
QUANTIZED = {"forward": {"inp_res": 62, "out_res": 126, "out_bound": 12.0}}
"""A noiseless chip whose DAC and ADC quantize: ranges matter, the noise does not."""


def toy_model(seed=0, bias=0.0):
    """Conv(1→4, 3×3, pad 1) → Relu → Flatten → Gemm(256 → 10); input N×1×8×8."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    w1 = rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5
    w1[0, 0, 0, 0] = 4.0  # an outlier for the weight clip
    inits = [numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(np.full(4, 0.1, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((10, 256)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array(np.linspace(-1, 1, 10).astype(np.float32) + bias, "b2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], name="fc", transB=1)]
    return helper.make_model(helper.make_graph(nodes, "toy", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def conv_out(x, seed=0):
    """The toy model's Conv in NumPy: (N, 4, 8, 8)."""
    w = numpy_helper.to_array(toy_model(seed).graph.initializer[0])
    xp = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    out = sum(w[None, :, 0, i, j, None, None] * xp[:, None, i:i + 8, j:j + 8] for i in range(3) for j in range(3))
    return out + np.float32(0.1)


def conv_relu(x, seed=0):
    """The toy model's Conv + Relu: the Gemm layer's ideal input (N, 256)."""
    return np.maximum(conv_out(x, seed), 0).reshape(len(x), -1)


@pytest.fixture(scope="module")
def graph():
    return anasim.load(toy_model())


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).random((24, 1, 8, 8)).astype(np.float32)


def aihwkit(**calibration):
    cfg = anasim.preset("aihwkit").to_dict()
    cfg["calibration"] = calibration
    return cfg


# ----------------------------------------------------------------------------- identity
def test_ideal_hardware_calibration_is_the_identity(graph, x):
    ideal = graph(x)
    sim = anasim.analog(graph, {"calibration": ALL})
    cal = calibrate(sim, x)
    assert cal.methods == ("input_range", "adc_range", "affine")
    for name, c in cal.layers.items():
        # the ideal DAC and ADC do not quantize: no range to calibrate
        assert c.nm_thres is None and c.out_bound is None, name
        np.testing.assert_allclose(c.scale, 1.0, atol=1e-5)
        np.testing.assert_allclose(c.offset, 0.0, atol=1e-5)
    np.testing.assert_allclose(sim(x), ideal, rtol=1e-5, atol=1e-5)


def test_weight_clip_at_the_maximum_is_the_identity(graph, x):
    sim = anasim.analog(graph, {"calibration": {"weight_clip": "percentile", "weight_clip_percentile": 100.0}})
    calibrate(sim, x)
    np.testing.assert_allclose(sim(x), graph(x), rtol=1e-6, atol=1e-6)


def test_weight_clip_of_sliced_weights_is_refused(graph, x):
    cfg = {"forward": {"inp_res": 62, "out_res": 126, "out_bound": 12.0},
           "bit_slicing": {"weight_slices": 2, "weight_bits_per_slice": 3},
           "calibration": {"weight_clip": "std"}}
    sim = anasim.analog(graph, cfg)
    with pytest.raises(ConfigError, match="weight_slices"):
        calibrate(sim, x)


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("method,per", [("std", "layer"), ("std", "column"), ("percentile", "layer"),
                                        ("percentile", "column")])
def test_clipped_weights_never_exceed_their_bound(graph, x, method, per):
    sim = anasim.analog(graph, {"calibration": {"weight_clip": method, "weight_clip_per": per,
                                                "weight_clip_std": 2.0, "weight_clip_percentile": 90.0}})
    calibrate(sim, x)
    for layer in sim.layers:
        bounds = layer.calibration.weight_clip[0]
        w = layer.matrices[0].effective_weight()
        assert (np.abs(w) <= bounds[:, None] * (1 + 1e-6)).all()
        assert (np.abs(w) > bounds[:, None] * (1 - 1e-6)).any()  # it did clip something
    conv = sim.layer("conv").calibration.weight_clip[0]
    assert conv.max() < 4.0  # the outlier is gone


def test_clip_bounds_honour_the_statistic():
    w = np.random.default_rng(2).standard_normal((50, 400)).astype(np.float32)
    b = clip_bounds(w, "percentile", percentile=95.0)
    assert b.shape == (50,) and np.all(b == b[0])
    assert abs(np.mean(np.abs(w) > b[0]) - 0.05) < 0.002
    b = clip_bounds(w, "percentile", percentile=90.0, per="column")
    np.testing.assert_allclose(np.mean(np.abs(w) > b[:, None], axis=1), 0.10, atol=0.005)
    b = clip_bounds(w, "std", n_std=2.5)
    assert b[0] == pytest.approx(2.5 * np.sqrt(np.mean(w.astype(np.float64) ** 2)), rel=1e-6)


def test_weight_clip_survives_programming_but_not_the_data_calibration(graph, x):
    cfg = aihwkit(weight_clip="std", affine=True)
    sim = anasim.analog(graph, cfg)
    calibrate(sim, x)
    clip = sim.layer("conv").calibration.weight_clip
    sim.program(1)  # a fresh chip: uncalibrated, programmed with the clipped weights
    cal = sim.layer("conv").calibration
    assert cal.scale is None and cal.weight_clip is clip and sim.calibration_samples is None
    targets = [st.target for (g, k), st in sorted(sim.layer("conv").states.items())]
    assert np.max(np.abs(targets[0])) > 0  # programmed from the clipped weights:
    fresh = anasim.analog(graph, cfg)
    fresh.program(1)
    assert not np.array_equal(fresh.layer("conv").states[(0, 0)].target, targets[0])


def test_affine_fit_recovers_a_known_scale_and_offset():
    rng = np.random.default_rng(3)
    ideal = rng.standard_normal((40, 6, 5)).astype(np.float32)
    s, o = np.linspace(0.5, 2.0, 6), np.linspace(-1, 1, 6)
    analog = (ideal - o[None, :, None]) / s[None, :, None]
    scale, offset = fit_affine(analog, ideal, channel_axis=1)
    np.testing.assert_allclose(scale, s, rtol=1e-5)
    np.testing.assert_allclose(offset, o, atol=1e-5)


def test_affine_fit_does_not_shrink_noisy_channels():
    """Noise on the analog output is not a gain error: the scale stays 1 (a fit of the ideal
    output on the analog one would give 1 / (1 + noise variance) = 0.5 here)."""
    rng = np.random.default_rng(8)
    ideal = rng.standard_normal((4000, 3)).astype(np.float32)
    analog = 0.8 * ideal + rng.standard_normal((4000, 3)).astype(np.float32) * 0.8
    analog[:, 2] = rng.standard_normal(4000)  # no relation to the ideal output: only an offset
    scale, offset = fit_affine(analog, ideal + 0.5, channel_axis=1)
    np.testing.assert_allclose(scale[:2], 1 / 0.8, rtol=0.05)
    assert scale[2] == 1.0 and offset[2] == pytest.approx(0.5 + ideal[:, 2].mean() - analog[:, 2].mean(), abs=1e-5)


def test_affine_calibration_undoes_a_gain_error_of_a_layer(graph, x):
    """A known per-output gain put into the Gemm layer's tiles (its digital post scale, as a
    mis-set drift compensation would): y = W x / s + b. The fit must give scale s and offset
    b (1 - s), and the calibrated chip the ideal logits."""
    sim = anasim.analog(graph, {"calibration": {"affine": True}})
    fc = sim.layer("fc").matrices[0]
    s_true = np.linspace(0.6, 1.5, 10).astype(np.float32)
    fc.set_post_scales([1.0 / s_true])
    calibrate(sim, x)
    cal = sim.layer("fc").calibration
    b = np.linspace(-1, 1, 10).astype(np.float32)
    np.testing.assert_allclose(cal.scale, s_true, rtol=1e-4)
    np.testing.assert_allclose(cal.offset, b * (1 - s_true), atol=1e-4)
    np.testing.assert_allclose(sim(x), graph(x), rtol=1e-4, atol=1e-4)


def test_input_range_is_the_percentile_of_the_layer_inputs(graph, x):
    p = 99.0
    sim = anasim.analog(graph, {**QUANTIZED, "calibration": {"input_range": True, "input_percentile": p}})
    calibrate(sim, x)
    conv = sim.layer("conv")
    assert conv.calibration.nm_thres == pytest.approx(float(np.percentile(np.abs(x), p)), rel=1e-6)
    assert conv.matrices[0].forward_params.noise_management == "constant"
    assert abs(np.mean(np.abs(x) > conv.calibration.nm_thres) - (1 - p / 100)) < 0.002
    relu = conv_relu(x)  # the fc layer's ideal input
    fc = sim.layer("fc").calibration.nm_thres
    assert 0 < fc <= relu.max() * 1.1  # of the (calibrated) analog input, close to the ideal one


def test_adc_range_is_the_percentile_of_the_outputs_before_the_adc(graph, x):
    """conv is one 9 × 4 tile with abs_max noise management: its outputs before the ADC are
    (r / max|r|) Wᵀ for its im2col rows r (noise-free); p % of the rows (bound management
    tests a row) have all their outputs within the bound; QUANTIZED has no output noise, so
    no margin."""
    p = 90.0
    sim = anasim.analog(graph, {**QUANTIZED, "calibration": {"adc_range": True, "adc_percentile": p}})
    calibrate(sim, x)
    xp = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    rows = np.stack([xp[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)], axis=-1).reshape(-1, 9)
    w = sim.layer("conv").matrices[0].tiles[0].weight
    pre = (rows / np.abs(rows).max(axis=1, keepdims=True)) @ w.T
    bound = sim.layer("conv").calibration.out_bound
    assert sim.layer("conv").matrices[0].periphery.out_bound == np.float32(bound)
    row_max = np.abs(pre).max(axis=1)
    assert bound == pytest.approx(np.percentile(row_max, p), rel=1e-5)
    assert abs(np.mean(row_max > bound) - (1 - p / 100)) < 0.01
    assert 0 < sim.layer("fc").calibration.out_bound < 12.0


def test_adc_range_leaves_room_for_the_output_noise(graph, x):
    noisy = {"forward": {**QUANTIZED["forward"], "out_noise": 0.05}}
    bounds = {}
    for name, cfg in (("quiet", QUANTIZED), ("noisy", noisy)):
        sim = anasim.analog(graph, {**cfg, "calibration": {"adc_range": True, "adc_percentile": 90.0}})
        calibrate(sim, x)
        bounds[name] = sim.layer("conv").calibration.out_bound
    from anasim.experiment.calibration import ADC_NOISE_MARGIN

    assert bounds["noisy"] == pytest.approx(bounds["quiet"] + ADC_NOISE_MARGIN * 0.05, rel=1e-5)


@pytest.mark.parametrize("method,forward", [
    # no noise management: the Gemm's inputs (up to ~4) clip at the DAC bound 1 until a range is set
    ("input_range", {"noise_management": "none", "inp_res": 62}),
    # an ADC whose bound (12) is far above the outputs (|y| < ~3): few of its 126 steps are used
    ("adc_range", {"out_res": 126, "out_bound": 12.0})])
def test_ranges_help_where_the_converter_wastes_its_range(graph, x, method, forward):
    x_test = np.random.default_rng(11).random((16, 1, 8, 8)).astype(np.float32)
    sim = anasim.analog(graph, {"forward": forward, "calibration": {method: True}})
    ideal = graph(x_test)
    before = np.abs(sim(x_test) - ideal).mean()
    calibrate(sim, x)
    after = np.abs(sim(x_test) - ideal).mean()
    assert after < 0.5 * before, (before, after)


def test_calibration_reduces_the_error_of_a_noisy_chip(graph, x):
    """Statistically, over 4 chips at 1 day: the mean |logit error| on unseen samples drops
    (all methods; a fixed seed, so this is a regression check of a large effect)."""
    x_cal, x_test = x[:16], np.random.default_rng(9).random((16, 1, 8, 8)).astype(np.float32)
    ideal = graph(x_test)
    before, after = [], []
    sim = anasim.analog(graph, aihwkit(weight_clip="std", **ALL))
    for r in range(4):
        sim.program(r)
        sim.drift(86400.0)
        before.append(np.abs(sim(x_test, sample_offset=100) - ideal).mean())
        calibrate(sim, x_cal)
        after.append(np.abs(sim(x_test, sample_offset=100) - ideal).mean())
    assert np.mean(after) < 0.9 * np.mean(before), (before, after)


# ----------------------------------------------------------------------------- held out
def test_held_out_samples_are_never_scored(tmp_path):
    graph = anasim.load(toy_model())
    rng = np.random.default_rng(4)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = graph(x).argmax(1)
    y[:10] = (y[:10] + 1) % 10  # every calibration sample mislabelled: scoring one would show
    seen = []

    def count(out, labels, ideal):
        seen.append(len(out))
        return (out.argmax(1) == labels).astype(float)

    res = evaluate(graph, (x, y), {"calibration": {"affine": True}}, times=[0], repeats=2,
                   calibrate=10, metric=count, batch_size=8, progress=False)
    assert all(r["count"] == 1.0 for r in res.rows)  # ideal and analog: samples 10.. only
    assert sum(seen) == 3 * 30  # ideal once, two chips; 30 samples each
    assert {r["calibration_samples"] for r in res.rows} == {"0:10"}
    assert {r["n_samples"] for r in res.rows} == {30}
    assert {r["calibration"] for r in res.rows} == {"affine"}
    plain = evaluate(graph, (x, y), None, times=[0], repeats=1, metric="top1", progress=False)
    assert plain.rows[0]["top1"] == pytest.approx(0.75)  # the 10 wrong labels count without holdout


def test_calibrate_at_each_t_recalibrates(tmp_path):
    graph = anasim.load(toy_model())
    x = np.random.default_rng(5).random((32, 1, 8, 8)).astype(np.float32)
    kw = dict(times=[0, 86400], repeats=1, calibrate=12, metric="logits_rel_error", progress=False)
    prog = evaluate(graph, (x, None), aihwkit(affine=True), **kw).rows
    each = evaluate(graph, (x, None), aihwkit(affine=True, calibrate_at="each_t"), **kw).rows
    none = evaluate(graph, (x, None), aihwkit(), **kw).rows
    err = {name: [r["logits_rel_error"] for r in rows if r["kind"] == "analog"]
           for name, rows in (("program", prog), ("each_t", each), ("none", none))}
    assert err["program"][0] == err["each_t"][0]  # the same calibration right after programming
    assert err["program"][1] != err["each_t"][1]
    assert err["each_t"][1] < err["none"][1]  # recalibrated after a day of drift


# ----------------------------------------------------------------------------- snapshots
def test_snapshot_round_trip_carries_the_calibration(graph, x, tmp_path):
    cfg = aihwkit(weight_clip="percentile", **ALL)
    sim = anasim.analog(graph, cfg)
    sim.program(2)
    calibrate(sim, x, sample_offset=5)
    path = save_snapshot(sim, tmp_path / "chip.h5")
    meta = open_snapshot(path)
    assert list(np.asarray(meta["calibration_samples"]).reshape(-1)) == [5, 5 + len(x)]
    other = anasim.analog(graph, aihwkit())  # how to calibrate is no part of the chip
    load_snapshot(other, path)
    assert other.calibration_samples == (5, 5 + len(x))
    np.testing.assert_array_equal(other(x, sample_offset=50), sim(x, sample_offset=50))
    for a, b in zip(sim.layers, other.layers):
        assert a.calibration.to_arrays().keys() == b.calibration.to_arrays().keys()
        for k, v in a.calibration.to_arrays().items():
            np.testing.assert_array_equal(v, b.calibration.to_arrays()[k])
    sim.drift(3600.0), other.drift(3600.0)
    np.testing.assert_array_equal(other(x), sim(x))


def test_state_dict_calibration_is_checked(graph, x):
    sim = anasim.analog(graph, {"calibration": {"affine": True}})
    calibrate(sim, x)
    state = sim.state_dict()
    bad = dict(state)
    bad["fc/calibration/scale"] = np.ones(3, np.float32)
    with pytest.raises(InputError, match="fc/calibration/scale"):
        anasim.analog(graph).load_state_dict(bad)
    bad = {k: v for k, v in state.items() if k != "fc/calibration/offset"}
    with pytest.raises(InputError, match="both"):
        anasim.analog(graph).load_state_dict(bad)
    fresh = anasim.analog(graph)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh(x), sim(x))
    fresh.clear_calibration()
    assert not fresh.calibrated and "fc/calibration/scale" not in fresh.state_dict()


def test_cli_calibrate_then_evaluate_the_snapshot(tmp_path, capsys):
    import onnx

    model = tmp_path / "toy.onnx"
    onnx.save(toy_model(), model)
    rng = np.random.default_rng(6)
    x = (rng.random((30, 8, 8)) * 255).astype(np.uint8)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=rng.integers(0, 10, 30))
    chip = tmp_path / "chip.h5"
    sets = ["--set", "calibration.affine=true", "--set", "calibration.adc_range=true"]
    assert main(["calibrate", str(model), "--data", str(data), "-n", "10", "--snapshot", str(chip)] + sets) == 0
    assert "calibrated on samples 0..9" in capsys.readouterr().out
    out = tmp_path / "r.csv"
    assert main(["evaluate", str(model), "--data", str(data), "--snapshot", str(chip), "--times", "0,1h",
                 "--out", str(out), "-q"] + sets) == 0
    res = anasim.experiment.Results.load(out)
    assert {r["calibration_samples"] for r in res.rows} == {"0:10"} and {r["n_samples"] for r in res.rows} == {20}
    assert main(["evaluate", str(model), "--data", str(data), "--calibrate", "10", "--repeats", "1",
                 "--times", "0", "-q"] + sets) == 0
    assert main(["calibrate", str(model), "--data", str(data), "-n", "10", "--snapshot",
                 str(tmp_path / "c2.h5")]) == 2  # no method on
    assert "no [calibration] method" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("table,key", [({"afine": True}, "afine"), ({"input_percentile": 0.0}, "input_percentile"),
                                       ({"adc_percentile": 101.0}, "adc_percentile"),
                                       ({"weight_clip": "sigma"}, "weight_clip"),
                                       ({"weight_clip_std": -1.0}, "weight_clip_std"),
                                       ({"calibrate_at": "never"}, "calibrate_at")])
def test_bad_calibration_config_is_a_config_error(table, key):
    with pytest.raises(ConfigError, match=key):
        anasim.load_config({"calibration": table})


def test_calibrate_refuses_what_it_cannot_do(graph, x):
    with pytest.raises(ConfigError, match="no \\[calibration\\] method"):
        calibrate(anasim.analog(graph), x)
    with pytest.raises(ConfigError, match="leaves no sample"):
        evaluate(graph, (x, None), {"calibration": {"affine": True}}, calibrate=len(x), metric="logits_rel_error",
                 progress=False)
    with pytest.raises(InputError, match="non-empty"):
        calibrate(anasim.analog(graph, {"calibration": {"affine": True}}), x[:0])
    assert LayerCalibration().empty


# ----------------------------------------------------------------------------- BatchNorm
def bn_model():
    """Conv(1→4) → BatchNormalization (running mean 0.2, var 2) → Relu → Flatten → Gemm."""
    m = toy_model()
    g = m.graph
    for name, v in (("s", 1.5), ("bb", 0.1), ("m", 0.2), ("v", 2.0)):
        g.initializer.append(numpy_helper.from_array(np.full(4, v, np.float32), name))
    g.node[1].input[0] = "cb"
    g.node.insert(1, helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["cb"], name="bn"))
    return m


def test_batchnorm_reestimation(x, tmp_path):
    graph = anasim.load(bn_model())
    unfolded = {"mapping": {"fold_batchnorm": False}}
    # ideal hardware: "shift" is the identity
    sim = anasim.analog(graph, {**unfolded, "calibration": {"batchnorm": "shift"}})
    cal = calibrate(sim, x)
    np.testing.assert_allclose(cal.batchnorm["bn"][0], 0.2, atol=1e-5)
    np.testing.assert_allclose(cal.batchnorm["bn"][1], 2.0, rtol=1e-5)
    np.testing.assert_allclose(sim(x), graph.folded(False)(x), rtol=1e-5, atol=1e-5)
    # "recompute" (AdaBS): the statistics of the BatchNorm's input activations themselves
    sim = anasim.analog(graph, {**unfolded, "calibration": {"batchnorm": "recompute"}})
    mean, var = calibrate(sim, x).batchnorm["bn"]
    c = conv_out(x).astype(np.float64)
    np.testing.assert_allclose(mean, c.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, c.var(axis=(0, 2, 3)), rtol=1e-4)
    # a noisy chip: shifted statistics follow the analog activations; snapshots carry them
    sim = anasim.analog(graph, aihwkit(batchnorm="shift"))
    calibrate(sim, x)
    assert set(sim.batchnorm) == {"bn"} and "batchnorm/bn/mean" in sim.state_dict()
    assert not np.allclose(sim.batchnorm["bn"][0], 0.2, atol=1e-4)
    path = save_snapshot(sim, tmp_path / "bn.h5")
    other = anasim.analog(graph, aihwkit())
    load_snapshot(other, path)
    np.testing.assert_array_equal(other(x), sim(x))
    np.testing.assert_array_equal(other.batchnorm["bn"][1], sim.batchnorm["bn"][1])
    bad = dict(sim.state_dict())
    bad["batchnorm/bn/var"] = -np.ones(4, np.float32)
    with pytest.raises(InputError, match="var >= 0"):
        anasim.analog(graph, aihwkit()).load_state_dict(bad)
    sim.program(1)  # a fresh chip: the model's own statistics again
    assert sim.batchnorm == {} and "batchnorm/bn/mean" not in sim.state_dict()
    # BatchNorm folded into the weights: nothing to re-estimate, and it says so
    cal = calibrate(anasim.analog(graph, {"calibration": {"batchnorm": "recompute"}}), x)
    assert "batchnorm" in cal.skipped and cal.batchnorm == {}


# ----------------------------------------------------------------------------- ResNet-20
def test_resnet20_recalibration_recovers_accuracy_after_a_day():
    """ResNet-20 (../shared), aihwkit preset, 2 chips, 100 calibration + 200 scored images:
    a day after programming the uncalibrated chips are near chance (~15 %); the affine
    correction recalibrated at t (calibrate_at = "each_t") must give every chip at least
    25 points more (measured: +44 on average; the full study is examples/calibration/run.py)."""
    from conftest import cifar10_test, shared_path

    model = shared_path("models", "resnet20_cifar10.onnx")
    x, y = cifar10_test(300)
    kw = dict(times=[86400.0], repeats=2, calibrate=100, seed=0, batch_size=100, progress=False)
    none = evaluate(model, (x, y), aihwkit(), **kw)
    each = evaluate(model, (x, y), aihwkit(affine=True, calibrate_at="each_t"), **kw)
    acc = {name: {r["repetition"]: r["top1"] for r in res.rows if r["kind"] == "analog"}
           for name, res in (("none", none), ("each", each))}
    assert all(acc["each"][r] - acc["none"][r] >= 0.25 for r in (0, 1)), acc
    assert {r["n_samples"] for r in each.rows} == {200}
