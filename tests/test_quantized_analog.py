"""Integer-weight ops on tiles: QLinearConv / QLinearMatMul / ConvInteger / MatMulInteger with a
constant integer weight become float Conv / MatMul of the dequantized weight between digital
steps (graph.passes.quantized_as_float), so an analog simulation maps that weight."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import anasim
from anasim.graph.passes import INTEGER_WEIGHT_OPS, quantized_as_float

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_quantized  # noqa: E402

NOISY = {"forward": {"out_noise": 0.05, "inp_res": 1 / 126, "out_res": 1 / 254, "out_bound": 10.0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_quantized.make_all(tmp_path_factory.mktemp("qa"))


def _x(n=32):
    return np.random.default_rng(5).standard_normal((n,) + make_quantized.TINY_INPUT[1:]).astype(np.float32)


@pytest.mark.parametrize("variant", ["qop", "dyn"])
def test_integer_weight_ops_map_onto_tiles_and_ideal_matches_digital(tiny, variant):
    path = tiny[f"tiny_{variant}"]
    int_nodes = [n.name for n in onnx.load(str(path)).graph.node if n.op_type in INTEGER_WEIGHT_OPS]
    assert int_nodes, "the fixture uses integer-weight ops"
    g = anasim.load(path)
    assert not set(int_nodes) & set(g.analog_candidates)  # digitally they stay integer ops
    rewritten = quantized_as_float(g.ir)
    assert rewritten is not g.ir and g.ir.nodes != rewritten.nodes  # the caller's graph is untouched
    sim = anasim.analog(g, "ideal")
    names = {layer.name for layer in sim.layers}
    assert set(int_nodes) <= names, (int_nodes, names)
    x = _x()
    name = g.inputs[0].name
    ours, ref = sim.run({name: x}), g.run({name: x})
    for k in ref:
        a, b = ours[k], ref[k]
        assert a.dtype == b.dtype and a.shape == b.shape
        d = np.abs(a.astype(np.float64) - b)
        assert np.mean(d == 0) >= 0.9 and d.max() <= 0.05 * np.abs(b).max()
        assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.95


@pytest.mark.parametrize("variant", ["qop", "dyn"])
def test_their_tiles_draw_noise_per_sample(tiny, variant):
    """Per-sample noise, whatever the batch -- except that DynamicQuantizeLinear (the dynamic
    variant) takes its range from the whole chunk, in anasim as in onnxruntime."""
    g = anasim.load(tiny[f"tiny_{variant}"])
    sim = anasim.analog(g, NOISY, seed=2)
    name, x = g.inputs[0].name, _x(6)
    whole = next(iter(sim.run({name: x}, sample_offset=4).values()))
    assert not np.array_equal(whole, next(iter(g.run({name: x}).values())))  # the noise is there
    if variant == "qop":
        parts = [next(iter(sim.run({name: x[s:e]}, sample_offset=4 + s).values())) for s, e in ((0, 1), (1, 6))]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
