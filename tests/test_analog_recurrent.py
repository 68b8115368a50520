"""Analog LSTM / GRU / RNN: per direction the gates' W and R on tiles, one MVM per step."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
NOISY = {"forward": {"inp_res": 1 / 126, "out_res": 1 / 254, "out_bound": 10.0, "out_noise": 0.04,
                     "inp_noise": 0.01, "w_noise": 0.02, "w_noise_type": "additive_constant",
                     "bound_management": "iterative"},
         "mapping": {"max_input_size": 5, "max_output_size": 8}}


def recurrent_model(op="LSTM", direction="bidirectional", T=6, I=7, H=5, seed=0, lens=False, **attrs):
    """x (N, T, I) -> Transpose -> op (layout 0, constant W, R, B) -> Y (T, D, N, H) -> Transpose
    -> y (N, T, D, H), plus Y_h; samples on axis 0 of the graph's input."""
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    r = lambda *s: (0.5 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(r(nd, G * H, I), "W"), numpy_helper.from_array(r(nd, G * H, H), "R"),
             numpy_helper.from_array(r(nd, 2 * G * H), "B")]
    inputs = ["xt", "W", "R", "B"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, I])
    graph_inputs = [x]
    if lens:
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"]))
        inputs.append("lens")
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="to_time"),
             helper.make_node(op, inputs, ["Y", "Y_h"], name="rnn", hidden_size=H, direction=direction, **attrs),
             helper.make_node("Transpose", ["Y"], ["y"], perm=[2, 0, 1, 3], name="to_batch")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, nd, H]),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [nd, "N", H])]
    g = helper.make_graph(nodes, "rec", graph_inputs, outs, inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]))


CASES = [("LSTM", "bidirectional", {}), ("LSTM", "forward", {"input_forget": 1}),
         ("GRU", "bidirectional", {"linear_before_reset": 0}), ("GRU", "reverse", {"linear_before_reset": 1}),
         ("RNN", "forward", {})]


@pytest.mark.parametrize("op,direction,attrs", CASES)
def test_ideal_preset_equals_the_digital_op(op, direction, attrs):
    g = recurrent_model(op, direction, **attrs)
    sim = anasim.analog(g, "ideal")
    layer = sim.layer("rnn")
    nd = 2 if direction == "bidirectional" else 1
    assert layer.op_type == op and len(layer.matrices) == 2 * nd
    x = np.random.default_rng(1).standard_normal((4, 6, 7)).astype(np.float32)
    for a, b in zip(sim.run({"x": x}).values(), g.run({"x": x}).values()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,direction,attrs", CASES)
def test_noise_is_per_sample_whatever_the_batch(op, direction, attrs):
    g = recurrent_model(op, direction, lens=True, **attrs)
    sim = anasim.analog(g, NOISY, seed=3)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32)
    lens = np.array([6, 3, 5, 1, 6], np.int32)
    whole = sim.run({"x": x, "lens": lens}, sample_offset=10)
    parts = [sim.run({"x": x[s:e], "lens": lens[s:e]}, sample_offset=10 + s) for s, e in ((0, 2), (2, 5))]
    np.testing.assert_array_equal(np.concatenate([p["y"] for p in parts]), whole["y"])
    np.testing.assert_array_equal(np.concatenate([p["Y_h"] for p in parts], axis=1), whole["Y_h"])
    digital = g.run({"x": x, "lens": lens})["y"]
    assert np.abs(whole["y"] - digital).max() > 1e-3  # the tiles' noise is there
    assert not np.array_equal(sim.run({"x": x, "lens": lens}, sample_offset=11)["y"], whole["y"])


def test_layers_config_keeps_a_recurrent_layer_digital_and_devices_program_it():
    g = recurrent_model("LSTM")
    x = np.random.default_rng(4).standard_normal((3, 6, 7)).astype(np.float32)
    kept = anasim.analog(g, {**NOISY, "layers": [{"match": "rnn", "digital": True}]})
    assert kept.digital_layers == ["rnn"] and kept.layers == []
    np.testing.assert_array_equal(kept.run({"x": x})["y"], g.run({"x": x})["y"])
    pcm = {**NOISY, "noise_model": {"type": "pcm"}, "drift_compensation": {"type": "global"}}
    sim = anasim.analog(g, pcm, seed=1)
    y0 = sim.run({"x": x})["y"]
    y1 = sim.drift(86400.0).run({"x": x})["y"]
    assert not np.array_equal(y0, y1)
    other = anasim.analog(g, pcm, seed=1).load_state_dict(sim.state_dict())
    np.testing.assert_array_equal(other.run({"x": x})["y"], y1)


def test_output_noise_of_a_recurrent_layer_has_the_predicted_variance():
    """A linear RNN (Affine activation, identity) on zero input and state, one step: each
    output is W·0 + R·0 + b plus the output noise of one W tile and one R tile, so
    y − b ~ N(0, 2σ²). Checked with a χ² interval on 2 × 4000 × 5 draws."""
    from scipy import stats

    sigma = 0.05
    cfg = {"forward": {"out_noise": sigma, "inp_res": 0.0, "out_res": 0.0, "inp_bound": 0.0, "out_bound": 0.0,
                       "noise_management": "none", "bound_management": "none"}}
    g = recurrent_model("RNN", "bidirectional", T=1, activations=["Affine", "Affine"],
                        activation_alpha=[1.0, 1.0], activation_beta=[0.0, 0.0])
    sim = anasim.analog(g, cfg, seed=11)
    x = np.zeros((4000, 1, 7), np.float32)
    y = sim.run({"x": x})["y"]  # (N, 1, 2, 5)
    b = g.run({"x": x[:1]})["y"][0]  # the bias alone (inputs and state are zero)
    e = (y - b).reshape(-1).astype(np.float64)
    n = e.size
    lo, hi = stats.chi2.ppf([0.0005, 0.9995], n)
    assert lo < (e ** 2).sum() / (2 * sigma ** 2) < hi
    assert abs(e.mean()) < 4 * np.sqrt(2) * sigma / np.sqrt(n)
