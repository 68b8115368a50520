"""Bit slicing (issue 12 item 2): weights split over several arrays, inputs applied bit-serially.

* with ideal devices and an ideal periphery, sliced == unsliced for any slicing (weight
  slices: the unsliced tile of the quantized weight; bit-serial input: the one-cycle tile);
* the quantization error of a sliced weight is at most half its LSB;
* output noise variance grows as the slice/cycle place values predict (chi-square band);
* the kernels equal the NumPy twin bit for bit, the fused convolution equals the tile
  model, the CUDA tile (simulator) equals the CPU one;
* every slice is its own array: own programming noise, own tiles in the chip state and
  snapshots;
* nonsensical combinations are ConfigErrors that say why.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anasim
from anasim.analog import AnalogMatrix
from anasim.analog.slicing import slice_weights, weight_lsb
from anasim.analog.tile import SERIAL
from anasim.config import AIHWKIT_FORWARD, BitSlicingParameters, ForwardParameters, load_config
from anasim.errors import ConfigError
from anasim.kernels import cpu_conv
from cuda_helpers import run_simulator_suite, sim_only
from naive_tile import naive_forward
from test_adc_mismatch import _conv_model, _gemm_model

SETTINGS = settings(max_examples=25, deadline=None)


def fwd(**kw):
    return types.SimpleNamespace(**{**AIHWKIT_FORWARD, **kw})


def mapping(**kw):
    return types.SimpleNamespace(**{"max_input_size": 512, "max_output_size": 512, "digital_bias": True,
                                    "weight_scaling_omega": 0.0, "weight_scaling_columnwise": False, **kw})


def bits(**kw):
    return BitSlicingParameters(**kw)


#: an ideal periphery with a quantizing DAC (bit-serial input needs one), nothing else
IDEAL_DAC = dict(inp_res=254, out_res=-1, out_bound=0.0, out_noise=0.0, bound_management="none")


def _data(seed, n_out=12, n_in=40, m=25):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal((n_out, n_in)) * 0.3).astype(np.float32),
            rng.standard_normal((m, n_in)).astype(np.float32))


def _close(a, b):
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale)


# ------------------------------------------------------------------ ideal: sliced == unsliced


@SETTINGS
@given(n_slices=st.integers(1, 6), b=st.integers(1, 4), seed=st.integers(0, 2**20), split=st.booleans())
def test_weight_slices_equal_the_unsliced_quantized_tile(n_slices, b, seed, split):
    w, x = _data(seed)
    mp = mapping(max_input_size=16, max_output_size=5) if split else mapping()
    sliced = AnalogMatrix(w, forward=ForwardParameters(), mapping=mp,
                          slicing=bits(weight_slices=n_slices, weight_bits_per_slice=b))
    assert len(sliced.tiles) == n_slices * sliced.n_in_chunks * sliced.n_out_chunks
    wq = sliced.effective_weight()
    unsliced = AnalogMatrix(wq, forward=ForwardParameters(), mapping=mp)
    _close(sliced.forward(x), unsliced.forward(x))
    # the same bits grouped differently give the same quantized weight
    if n_slices * b <= 12 and n_slices > 1:
        one = AnalogMatrix(w, forward=ForwardParameters(), mapping=mp,
                           slicing=bits(weight_slices=1, weight_bits_per_slice=n_slices * b))
        np.testing.assert_allclose(one.effective_weight(), wq, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(k=st.integers(1, 8), twos=st.booleans(), seed=st.integers(0, 2**20), nm=st.sampled_from(["abs_max", "none"]))
def test_bit_serial_input_equals_one_cycle(k, twos, seed, nm):
    w, x = _data(seed)
    fp = fwd(**IDEAL_DAC, noise_management=nm, inp_bound=1.0)
    if nm == "none":
        x = np.clip(x * 0.3, -1, 1)
    enc = "twos_complement" if twos else "sign_magnitude"
    serial = AnalogMatrix(w, forward=fp, slicing=bits(input_bits_per_cycle=k, input_encoding=enc))
    assert serial.input_cycles.n_cycles == -(-(8 if twos else 7) // k)  # 254 steps: |code| <= 127
    _close(serial.forward(x), AnalogMatrix(w, forward=fp).forward(x))


@SETTINGS
@given(n_slices=st.integers(1, 5), b=st.integers(1, 5), seed=st.integers(0, 2**20))
def test_quantization_error_at_most_half_an_lsb(n_slices, b, seed):
    rng = np.random.default_rng(seed)
    t = (rng.standard_normal((7, 9)) * rng.uniform(0.01, 3)).astype(np.float32)
    parts = slice_weights(t, n_slices, b)
    assert len(parts) == n_slices
    digit_max = 2**b - 1
    total = sum(place[:, None].astype(np.float64) * part for part, place in parts)
    lsb = weight_lsb(float(np.abs(t).max()), n_slices, b)
    assert np.all(np.abs(total - t) <= lsb / 2 * (1 + 1e-5) + 1e-6 * np.abs(t))
    for part, _ in parts:  # each slice a signed digit at full scale
        k = np.abs(part.astype(np.float64)) * digit_max
        np.testing.assert_allclose(k, np.rint(k), atol=1e-4)
        assert np.all(np.abs(part) <= 1) and np.all((part == 0) | (np.sign(part) == np.sign(t)))


# ------------------------------------------------------------------ noise statistics


@pytest.mark.parametrize("n_slices, b, k", [(1, 0, 0), (3, 2, 0), (1, 0, 2), (2, 3, 3)])
def test_output_noise_variance_follows_the_place_values(n_slices, b, k):
    """out_noise σ on every slice array and input cycle: Var = σ² Σ_s Σ_j (place_s · shift_j)²."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 10)) * 0.5).astype(np.float32)
    x = np.tile(rng.uniform(-1, 1, (1, 10)).astype(np.float32), (4000, 1))
    sigma = 0.02
    fp = fwd(**{**IDEAL_DAC, "out_noise": sigma}, noise_management="none")
    m = AnalogMatrix(w, forward=fp, slicing=bits(weight_slices=n_slices, weight_bits_per_slice=b,
                                                  input_bits_per_cycle=k))
    ideal = AnalogMatrix(w, forward=fwd(**IDEAL_DAC, noise_management="none"),
                         slicing=bits(weight_slices=n_slices, weight_bits_per_slice=b)).forward(x[:1])
    noise = (m.forward(x) - ideal).astype(np.float64)
    wmax = float(np.abs(w).max())
    places = ([wmax * (2**b - 1) * 2.0 ** (b * s) / (2 ** (n_slices * b) - 1) for s in range(n_slices)]
              if b else [1.0])
    shifts = [(2**k - 1) * 2.0 ** (k * j) / 127 for j in range(-(-7 // k))] if k else [1.0]
    expect = sigma**2 * sum((p * q) ** 2 for p in places for q in shifts)
    n = noise.shape[0]
    ratio = noise.var(axis=0, ddof=1) / expect  # per column ~ chi2(n-1)/(n-1)
    band = 4.5 * np.sqrt(2 / n)
    assert np.all(np.abs(ratio - 1) < band), (ratio, band)
    if n_slices * len(shifts) > 1:  # more than one read of unit noise: the growth is real
        assert expect > sigma**2 * 1.05 or expect < sigma**2 * 0.95


# ------------------------------------------------------------------ every target, same numbers

NOISY = dict(out_noise=0.05, inp_noise=0.01, w_noise=0.02, w_noise_type="pcm_read", bound_management="none")


@pytest.mark.parametrize("kw", [dict(weight_slices=3, weight_bits_per_slice=2),
                                dict(input_bits_per_cycle=2, input_encoding="twos_complement"),
                                dict(weight_slices=2, weight_bits_per_slice=3, input_bits_per_cycle=3)])
def test_kernels_equal_numpy_twin(kw):
    w, x = _data(3, n_out=10, n_in=30, m=21)
    x[4] = 0  # the zero-output short cut
    m = AnalogMatrix(w, forward=fwd(**NOISY, adc_gain_std=0.05, adc_offset_std=0.02),
                     mapping=mapping(max_input_size=16, max_output_size=6), slicing=bits(**kw), key=(7, 3))
    rows = np.arange(50, 71, dtype=np.int64)
    y = m.forward(x, rows)
    np.testing.assert_array_equal(y, naive_forward(m, x, rows))
    acc = np.zeros_like(y)
    m.forward_into(x, rows, 0, acc, SERIAL)
    np.testing.assert_array_equal(acc, y)


@pytest.mark.skipif(not cpu_conv.available(), reason="NumPy's BLAS exports no ILP64 cblas_sgemm here")
def test_conv_layers_fused_with_weight_slices_and_unfused_with_bit_serial_input():
    from anasim.ops.conv_geometry import conv_geometry
    from anasim.ops.im2col import cols_to_output, im2col

    g = _conv_model()
    x = np.random.default_rng(3).standard_normal((2, 4, 9, 8)).astype(np.float32) * 2
    fw = {"inp_res": 126, "out_res": 510, "out_bound": 12.0, "out_noise": 0.06}
    for slicing, fused in (({"weight_slices": 2, "weight_bits_per_slice": 4}, True),
                           ({"input_bits_per_cycle": 2}, False)):
        sim = anasim.analog(g, {"forward": fw, "bit_slicing": slicing, "mapping": {"max_output_size": 4}}, seed=4)
        layer = sim.layers[0]
        assert (layer._fused is not None) == fused
        got = sim(x, sample_offset=1)
        geom = conv_geometry(x.shape, layer.weight_shape, "NOTSET", None, 1, None, [1, 1, 1, 1], None)
        ids = np.arange(geom.n_pixels, 3 * geom.n_pixels, dtype=np.int64)
        ref = cols_to_output(layer.matrices[0].forward(im2col(x, geom), ids, 0), 2, geom)
        diff = np.abs(got - ref)
        step = layer.matrices[0].periphery.out_step * float(np.abs(x).max()) * 1.2
        assert np.mean(diff > 1e-4) <= 0.01 and diff.max() <= step  # small-sgemm rounding at most


# ------------------------------------------------------------------ arrays of their own

PCM = {"forward": {"inp_res": 126, "out_res": 254, "out_bound": 10.0}, "noise_model": {"type": "pcm"},
       "bit_slicing": {"weight_slices": 3, "weight_bits_per_slice": 3}}


def test_every_slice_is_programmed_and_saved(tmp_path):
    from anasim.snapshot import load_snapshot, save_snapshot

    g = _gemm_model()
    x = np.random.default_rng(8).standard_normal((6, 20)).astype(np.float32)
    sim = anasim.analog(g, PCM, seed=2)
    layer = sim.layers[0]
    assert layer.n_tiles == 3 and len(layer.states) == 3
    # each slice its own programming noise: the error of slice s is not a copy of another's
    errs = [layer.states[(0, k)].weights(sim.converter_for(layer)) - t.target
            for k, t in enumerate(layer.matrices[0].tiles)]
    assert all(np.abs(e).max() > 0 for e in errs)
    assert not np.allclose(errs[0], errs[1]) and not np.allclose(errs[1], errs[2])
    sim.drift(3600.0)
    ref = sim(x)
    state = sim.state_dict()
    assert sum(k.endswith("/weight") for k in state) == 3
    path = save_snapshot(sim, tmp_path / "sliced.h5")
    other = anasim.analog(g, PCM, seed=2).program(1)
    assert not np.array_equal(other(x), ref)
    load_snapshot(other, path)
    np.testing.assert_array_equal(other(x), ref)
    # sliced and unsliced chips are different chips
    plain = anasim.analog(g, {k: v for k, v in PCM.items() if k != "bit_slicing"}, seed=2)
    with pytest.raises(Exception, match="tile"):
        plain.load_state_dict(state)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("section, match", [
    ({"weight_slices": 2}, "weight_bits_per_slice >= 1"),
    ({"weight_slices": 5, "weight_bits_per_slice": 5}, "exceeds 24"),
    ({"weight_slices": 0}, "'weight_slices' parameter of \\[bit_slicing\\]"),
    ({"input_bits_per_cycle": -1}, "'input_bits_per_cycle'"),
    ({"input_encoding": "twos"}, "'input_encoding'.*sign_magnitude"),
    ({"weight_slice": 2}, "Unknown parameter 'weight_slice'.*weight_slices"),
])
def test_bad_sections_are_config_errors(section, match):
    with pytest.raises(ConfigError, match=match):
        load_config({"bit_slicing": section})


@pytest.mark.parametrize("forward, slicing, match", [
    ({"inp_res": -1}, {"input_bits_per_cycle": 2}, "needs a quantizing DAC"),
    ({"inp_sto_round": True}, {"input_bits_per_cycle": 2}, "stochastic rounding"),
    ({"bound_management": "iterative"}, {"input_bits_per_cycle": 2}, "bound_management = 'none'"),
    ({"inp_res": 14}, {"input_bits_per_cycle": 5}, "exceeds the DAC's precision.*at most 4"),
    ({"out_res": 6, "out_bound": 10.0}, {"weight_slices": 2, "weight_bits_per_slice": 3},
     "ADC.*only 6 steps.*at most 2 bits"),
])
def test_nonsensical_combinations_are_explained(forward, slicing, match):
    fp = fwd(**{"inp_res": 254, "bound_management": "none", **forward})
    with pytest.raises(ConfigError, match=match):
        AnalogMatrix(np.ones((3, 4), np.float32), forward=fp, slicing=bits(**slicing))


def test_defaults_are_todays_tile_bit_for_bit():
    w, x = _data(5)
    fp = fwd(out_noise=0.06)
    a = AnalogMatrix(w, forward=fp, key=(1, 2)).forward(x)
    b = AnalogMatrix(w, forward=fp, key=(1, 2), slicing=BitSlicingParameters()).forward(x)
    np.testing.assert_array_equal(a, b)
    assert BitSlicingParameters().is_default


# ------------------------------------------------------------------ CUDA (simulator)


def test_simulator_suite():
    """Run the ``test_sim_*`` tests of this file under the CUDA simulator (child process)."""
    run_simulator_suite(__file__, timeout=300)


@sim_only
def test_sim_weight_slices_on_cuda_equal_cpu():
    from anasim.analog.tile_cuda import to_cuda

    rng = np.random.default_rng(9)
    w = (rng.integers(-64, 65, (5, 6)) / 256).astype(np.float32)
    x = (rng.integers(-64, 65, (4, 6)) / 64).astype(np.float32)
    m = AnalogMatrix(w, forward=fwd(inp_res=1 / 64, out_bound=2.0), mapping=mapping(max_output_size=3),
                     slicing=bits(weight_slices=2, weight_bits_per_slice=3), key=(2, 1))
    np.testing.assert_array_equal(to_cuda(m).forward(x), m.forward(x))


@sim_only
@pytest.mark.parametrize("enc, noisy", [("sign_magnitude", False), ("twos_complement", True)])
def test_sim_bit_serial_input_on_cuda_equals_cpu(enc, noisy):
    from anasim.analog.tile_cuda import to_cuda

    rng = np.random.default_rng(10)
    w = (rng.integers(-64, 65, (5, 6)) / 256).astype(np.float32)
    x = (rng.integers(-64, 65, (4, 6)) / 64).astype(np.float32)
    x[2] = 0
    extra = dict(inp_noise=0.01, w_noise=0.02, w_noise_type="additive_constant") if noisy else {}
    m = AnalogMatrix(w, forward=fwd(inp_res=1 / 64, out_bound=2.0, bound_management="none", **extra),
                     mapping=mapping(max_output_size=3), key=(2, 1),
                     slicing=bits(input_bits_per_cycle=2, input_encoding=enc, weight_slices=2,
                                  weight_bits_per_slice=2))
    np.testing.assert_array_equal(to_cuda(m).forward(x), m.forward(x))
