"""ADC non-idealities (issue 12 item 3): per-column gain/offset mismatch drawn per chip, and an
INL transfer curve.

* zero mismatch is today's forward bit for bit (the ADC stage is skipped, and with gains 1 and
  offsets 0 forced through it the numbers do not change);
* every target computes the same numbers: the row kernels (parallel and serial), the NumPy
  twin (:mod:`naive_tile`), the fused convolution, and (under the CUDA simulator) the GPU
  finalize kernel;
* the draws have the configured statistics, are fixed per (seed, repetition) and new per
  repetition, and travel with the chip state (state_dict, snapshots);
* the INL curve is the configured piecewise-linear map (checked against ``np.interp``);
* bad values are ConfigErrors naming the key.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.analog import AnalogMatrix
from anasim.config import AIHWKIT_FORWARD, ForwardParameters, load_config
from anasim.errors import ConfigError, InputError
from anasim.kernels import cpu, cpu_conv
from cuda_helpers import run_simulator_suite, sim_only
from naive_tile import naive_forward

INL = [[-1.0, -1.0], [-0.5, -0.46], [0.0, 0.03], [0.5, 0.52], [1.0, 1.0]]


def fwd(**kw):
    return types.SimpleNamespace(**{**AIHWKIT_FORWARD, **kw})


def dyadic(rng, shape, scale=64):
    return (rng.integers(-scale, scale + 1, size=shape) / scale).astype(np.float32)


def _pair(rng, n_out=24, n_in=40, m=33):
    return dyadic(rng, (n_out, n_in)) * np.float32(0.25), dyadic(rng, (m, n_in))


# ------------------------------------------------------------------ zero mismatch = today


@pytest.mark.parametrize("extra", [{}, {"out_noise": 0.0, "bound_management": "none"},
                                   {"out_sto_round": True, "inp_noise": 0.02}])
def test_zero_mismatch_is_todays_forward_bit_for_bit(extra):
    rng = np.random.default_rng(0)
    w, x = _pair(rng)
    base = AnalogMatrix(w, forward=fwd(inp_res=1 / 64, out_bound=4.0, **extra), key=(3, 1))
    zero = AnalogMatrix(w, forward=fwd(inp_res=1 / 64, out_bound=4.0, adc_gain_std=0.0, adc_offset_std=0.0,
                                       adc_inl=[], **extra), key=(3, 1))
    assert all(t.adc_gain is None for t in zero.tiles)
    ref = base.forward(x)
    np.testing.assert_array_equal(zero.forward(x), ref)
    # the ADC stage forced on with gains 1 and offsets 0 changes no bit either
    on = AnalogMatrix(w, forward=fwd(inp_res=1 / 64, out_bound=4.0, adc_gain_std=0.1, **extra), key=(3, 1))
    on.set_adc_mismatch([np.zeros(t.n_out) for t in on.tiles], [np.ones(t.n_out) for t in on.tiles])
    np.testing.assert_array_equal(on.forward(x), ref)


# ------------------------------------------------------------------ every target, same numbers

PERIPHERIES = {
    "aihwkit + mismatch": dict(adc_gain_std=0.05, adc_offset_std=0.03),
    "INL only": dict(adc_inl=INL),
    "all, bound management": dict(adc_gain_std=0.1, adc_offset_std=0.05, adc_inl=INL, out_bound=2.0),
    "all, stochastic ADC": dict(adc_gain_std=0.1, adc_offset_std=0.05, adc_inl=INL, out_sto_round=True),
    "no ADC step": dict(adc_gain_std=0.1, adc_offset_std=0.05, adc_inl=INL, out_res=-1, out_noise=0.0),
}


@pytest.mark.parametrize("name", list(PERIPHERIES))
def test_kernels_equal_numpy_twin(name):
    rng = np.random.default_rng(1)
    w, x = _pair(rng)
    x[3] = 0  # the zero-output short cut
    m = AnalogMatrix(w, forward=fwd(inp_res=1 / 64, **PERIPHERIES[name]),
                     mapping=types.SimpleNamespace(max_input_size=16, max_output_size=10), key=(5, 2))
    assert len(m.tiles) == 9 and all(t.adc_gain is not None for t in m.tiles)
    rows = np.arange(100, 133, dtype=np.int64)
    y = m.forward(x, rows)
    np.testing.assert_array_equal(y, naive_forward(m, x, rows))
    from anasim.analog.tile import SERIAL

    acc = np.zeros_like(y)
    m.forward_into(x, rows, 0, acc, SERIAL)
    np.testing.assert_array_equal(acc, y)
    assert not np.array_equal(y, AnalogMatrix(w, forward=fwd(inp_res=1 / 64), key=(5, 2),
                                              mapping=types.SimpleNamespace(max_input_size=16,
                                                                            max_output_size=10)).forward(x, rows))


@st.composite
def _inl_tables(draw):
    """A monotone transfer curve: 2-6 points, inputs strictly increasing in [-1, 1]."""
    n = draw(st.integers(2, 6))
    xs = sorted(set(draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n))))
    xs = [v / 1000 for v in xs] if len(xs) >= 2 else [-1.0, 1.0]
    ys = sorted(draw(st.lists(st.floats(-1, 1), min_size=len(xs), max_size=len(xs))))
    return [[x, y] for x, y in zip(xs, ys)]


@settings(max_examples=25, deadline=None)
@given(gain=st.sampled_from([0.0, 0.02, 0.3]), offset=st.sampled_from([0.0, 0.01, 0.2]),
       inl=st.one_of(st.just([]), _inl_tables()), bm=st.booleans(), sto=st.booleans(),
       out_res=st.sampled_from([-1, 30, 254]), seed=st.integers(0, 2**16))
def test_property_kernels_equal_twin_and_zero_mismatch_is_today(gain, offset, inl, bm, sto, out_res, seed):
    rng = np.random.default_rng(seed)
    w, x = _pair(rng, n_out=9, n_in=12, m=7)
    base = dict(inp_res=1 / 64, out_res=out_res, out_bound=1.5, out_noise=0.02, out_sto_round=sto,
                bound_management="iterative" if bm else "none")
    m = AnalogMatrix(w, forward=fwd(**base, adc_gain_std=gain, adc_offset_std=offset, adc_inl=inl),
                     mapping=types.SimpleNamespace(max_input_size=8, max_output_size=5), key=(seed, 1))
    rows = np.arange(3, 10, dtype=np.int64)
    y = m.forward(x, rows)
    np.testing.assert_array_equal(y, naive_forward(m, x, rows))
    if gain == 0 and offset == 0 and not inl:
        today = AnalogMatrix(w, forward=fwd(**base), key=(seed, 1),
                             mapping=types.SimpleNamespace(max_input_size=8, max_output_size=5))
        np.testing.assert_array_equal(y, today.forward(x, rows))


def _conv_model(seed=0):
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 9, 8])
    inits = [numpy_helper.from_array((rng.standard_normal((6, 4, 3, 3)) * 0.4).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                          "conv", [x], [y], inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.skipif(not cpu_conv.available(), reason="NumPy's BLAS exports no ILP64 cblas_sgemm here")
@pytest.mark.parametrize("mapping", [{}, {"max_input_size": 7, "max_output_size": 4}])
def test_fused_conv_equals_tile_model(mapping):
    from anasim.ops.conv_geometry import conv_geometry
    from anasim.ops.im2col import cols_to_output, im2col

    g = _conv_model()
    fw = {"inp_res": 126, "out_res": 510, "out_bound": 12.0, "out_noise": 0.06, "adc_gain_std": 0.1,
          "adc_offset_std": 0.05, "adc_inl": INL}
    sim = anasim.analog(g, {"forward": fw, "mapping": mapping}, seed=4)
    layer = sim.layers[0]
    assert layer._fused is not None
    x = np.random.default_rng(3).standard_normal((3, 4, 9, 8)).astype(np.float32) * 2
    got = sim(x, sample_offset=2)
    geom = conv_geometry(x.shape, layer.weight_shape, "NOTSET", None, 1, None, [1, 1, 1, 1], None)
    cols = im2col(x, geom)
    ids = np.arange(2 * geom.n_pixels, 5 * geom.n_pixels, dtype=np.int64)
    ref = cols_to_output(layer.matrices[0].forward(cols, ids, 0), 3, geom)
    diff = np.abs(got - ref)
    step = layer.matrices[0].periphery.out_step * float(np.abs(x).max()) * 1.2
    # float32 rounding of the small sgemm sums, which may move a value across an ADC step
    assert np.mean(diff > 1e-4) <= 0.01 and diff.max() <= step
    plain = anasim.analog(g, {"forward": {k: v for k, v in fw.items() if not k.startswith("adc")},
                              "mapping": mapping}, seed=4)
    assert np.abs(plain(x, sample_offset=2) - got).mean() > 10 * diff.mean() + 1e-3


# ------------------------------------------------------------------ the draws


def test_mismatch_statistics_and_per_chip_draws():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((400, 8)).astype(np.float32)
    m = AnalogMatrix(w, forward=fwd(adc_gain_std=0.04, adc_offset_std=0.02), key=(11, 0),
                     mapping=types.SimpleNamespace(max_input_size=8, max_output_size=100))
    gains = np.concatenate([t.adc_gain for t in m.tiles]).astype(np.float64)
    offs = np.concatenate([t.adc_offset for t in m.tiles]).astype(np.float64)
    n = gains.size  # 400 columns, 4 tiles
    # mean within 4 standard errors, variance within the chi-square 99.99 % band (n-1 dof)
    assert abs(gains.mean() - 1) < 4 * 0.04 / np.sqrt(n) and abs(offs.mean()) < 4 * 0.02 / np.sqrt(n)
    for v, s in ((gains, 0.04), (offs, 0.02)):
        ratio = v.var(ddof=1) / s**2
        assert 1 - 4 * np.sqrt(2 / n) < ratio < 1 + 4 * np.sqrt(2 / n)
    assert abs(np.corrcoef(gains, offs)[0, 1]) < 4 / np.sqrt(n)  # independent streams
    assert not np.array_equal(m.tiles[0].adc_gain, m.tiles[1].adc_gain)  # per tile
    # fixed per (seed, repetition); a new chip per repetition
    again = AnalogMatrix(w, forward=fwd(adc_gain_std=0.04, adc_offset_std=0.02), key=(11, 0),
                         mapping=types.SimpleNamespace(max_input_size=8, max_output_size=100))
    np.testing.assert_array_equal(again.tiles[2].adc_offset, m.tiles[2].adc_offset)
    first = [t.adc_gain for t in m.tiles]
    m.draw_adc_mismatch(1)
    assert not np.array_equal(first[0], m.tiles[0].adc_gain)
    m.draw_adc_mismatch(0)
    np.testing.assert_array_equal(first[0], m.tiles[0].adc_gain)


def test_gain_and_offset_act_as_documented():
    """Without quantization, noise or clipping, column i reads (y_i + offset_i)·gain_i."""
    rng = np.random.default_rng(4)
    w, x = _pair(rng, n_out=12, n_in=16, m=20)
    fp = fwd(inp_res=-1, out_res=-1, out_bound=0.0, out_noise=0.0, noise_management="none", inp_bound=0.0,
             bound_management="none", adc_gain_std=0.1, adc_offset_std=0.05)
    m = AnalogMatrix(w, forward=fp)
    t = m.tiles[0]
    expect = (x.astype(np.float64) @ w.T.astype(np.float64) + t.adc_offset) * t.adc_gain
    np.testing.assert_allclose(m.forward(x), expect, rtol=1e-5, atol=1e-6)


def test_inl_curve_is_the_configured_interpolation():
    rng = np.random.default_rng(5)
    w, x = _pair(rng, n_out=10, n_in=16, m=50)
    x *= 3
    bound = 1.5
    fp = fwd(inp_res=-1, out_res=-1, out_bound=bound, out_noise=0.0, noise_management="none", inp_bound=0.0,
             bound_management="none", adc_inl=INL)
    y = AnalogMatrix(w, forward=fp).forward(x).astype(np.float64)
    raw = x.astype(np.float64) @ w.T.astype(np.float64)
    pts = np.asarray(INL) * bound
    curve = np.interp(raw, pts[:, 0], pts[:, 1])
    expect = np.clip(curve, -bound, bound)  # slope 1 beyond ±bound, then the clip: ±bound
    assert np.any(np.abs(raw) > bound)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
    # a flat segment (a missing code range) maps the whole segment to one output
    flat = fwd(**{**vars(fp), "adc_inl": [[-1, -1], [-0.2, 0.0], [0.2, 0.0], [1, 1]]})
    yf = AnalogMatrix(w, forward=flat).forward(x)
    inside = np.abs(raw) < 0.2 * bound - 1e-4
    assert inside.any() and np.all(yf[inside] == 0)


# ------------------------------------------------------------------ chip state


def _gemm_model():
    rng = np.random.default_rng(7)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 9])
    inits = [numpy_helper.from_array((rng.standard_normal((9, 20)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(9, np.float32), "b")]
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
                          "fc", [x], [y], inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


CFG = {"forward": {"inp_res": 126, "out_res": 254, "out_bound": 10.0, "adc_gain_std": 0.05,
                   "adc_offset_std": 0.05, "adc_inl": INL}, "mapping": {"max_output_size": 5}}


def test_state_dict_and_snapshot_carry_the_mismatch(tmp_path):
    from anasim.snapshot import load_snapshot, save_snapshot

    g = _gemm_model()
    x = np.random.default_rng(8).standard_normal((6, 20)).astype(np.float32)
    sim = anasim.analog(g, CFG, seed=3).program(2)
    state = sim.state_dict()
    keys = [k for k in state if k.endswith("adc_gain") or k.endswith("adc_offset")]
    assert len(keys) == 4  # two tiles
    ref = sim(x)
    other = anasim.analog(g, CFG, seed=3)  # repetition 0: another chip's ADCs
    assert not np.array_equal(other(x), ref)
    np.testing.assert_array_equal(other.load_state_dict(state)(x), ref)
    path = save_snapshot(sim, tmp_path / "chip.h5")
    third = anasim.analog(g, CFG, seed=3)
    load_snapshot(third, path)
    np.testing.assert_array_equal(third(x), ref)
    # a state without the arrays does not fit a configuration with ADC mismatch, and back
    bare = {k: v for k, v in state.items() if k not in keys}
    with pytest.raises(InputError, match="adc_"):
        anasim.analog(g, CFG, seed=3).load_state_dict(bare)
    plain = anasim.analog(g, {"forward": {"inp_res": 126}, "mapping": {"max_output_size": 5}}, seed=3)
    with pytest.raises(InputError, match="does not know"):
        plain.load_state_dict(state)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("forward, match", [
    ({"adc_gain_std": -0.1}, "'adc_gain_std' parameter of \\[forward\\]"),
    ({"adc_offset_std": float("nan")}, "'adc_offset_std'"),
    ({"adc_inl": [[0, 0]], "out_bound": 1.0}, "'adc_inl'.*at least two"),
    ({"adc_inl": [[-1, -1], [1, 0.5], [0.5, 1]], "out_bound": 1.0}, "not strictly increasing"),
    ({"adc_inl": [[-1, -1], [0.0, 0.0], [1e-9, 0.5], [1, 1]], "out_bound": 1.0}, "at least 1e-6"),
    ({"adc_inl": [[-1, 0.5], [1, 0.2]], "out_bound": 1.0}, "not monotone"),
    ({"adc_inl": [[-1, -1], [1, 1.5]], "out_bound": 1.0}, "in \\[-1, 1\\]"),
    ({"adc_inl": [[-1, -1], [1, 1]], "out_bound": 0.0}, "out_bound > 0"),
])
def test_bad_values_are_config_errors(forward, match):
    with pytest.raises(ConfigError, match=match):
        load_config({"forward": forward})


def test_config_fields_and_ideal_flag():
    fp = ForwardParameters(out_bound=2.0, adc_inl=INL)
    assert not fp.is_ideal and ForwardParameters().is_ideal
    assert not ForwardParameters(adc_gain_std=0.01).is_ideal
    with pytest.raises(ConfigError, match="adc_inl"):
        AnalogMatrix(np.ones((2, 2), np.float32), forward=fwd(adc_inl=[[0, 1], [0.5, 0]]))


# ------------------------------------------------------------------ CUDA (simulator)


def test_simulator_suite():
    """Run the ``test_sim_*`` tests of this file under the CUDA simulator (child process)."""
    run_simulator_suite(__file__, timeout=300)


@sim_only
def test_sim_finalize_with_adc_equals_cpu():
    from anasim.kernels import cuda as G

    rng = np.random.default_rng(3)
    y0 = (rng.standard_normal((5, 7)) * 3).astype(np.float32)
    skip = np.array([0, 0, 1, 0, 0], bool)
    rows = np.arange(5, dtype=np.int64) * 3 + 1
    m = AnalogMatrix(np.ones((7, 3), np.float32), forward=fwd(out_bound=4.0, adc_inl=INL))
    kw = dict(res=0.05, bound=4.0, bm=True, noise_vec=np.full(7, 0.1, np.float32), noise_key=(1, 2),
              adc_offset=(rng.standard_normal(7) * 0.1).astype(np.float32),
              adc_gain=(1 + rng.standard_normal(7) * 0.1).astype(np.float32), inl=m.inl)
    a, b = y0.copy(), y0.copy()
    fa = cpu.finalize_output(a, skip, rows, **kw)
    fb = G.finalize_output(b, skip, rows, **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)


@sim_only
def test_sim_cuda_matrix_equals_cpu_matrix():
    from anasim.analog.tile_cuda import to_cuda

    rng = np.random.default_rng(9)
    w, x = _pair(rng, n_out=6, n_in=8, m=5)
    m = AnalogMatrix(w, forward=fwd(inp_res=1 / 64, out_bound=2.0, adc_gain_std=0.1, adc_offset_std=0.05,
                                    adc_inl=INL), key=(2, 1))
    ref = m.forward(x)
    gm = to_cuda(m)
    np.testing.assert_array_equal(gm.forward(x), ref)
    gm.draw_adc_mismatch(1)  # a new chip: the device copies follow
    np.testing.assert_array_equal(gm.forward(x), m.forward(x))
    assert not np.array_equal(m.forward(x), ref)
