"""Properties of the tile model: quantizers, scale invariance, noise statistics, splitting,
bound management, reproducibility (batch size, threads) and the NumPy twin as oracle.

Exact comparisons use *dyadic* data where the float32 MVM is exact whatever BLAS's
summation order (weights k/64, DAC step 1/64, sums far below 2**24 ulps), because
OpenBLAS sums a row differently depending on the batch size; everything else about
the pipeline (noise, rounding, bound management, digital sums) is then bit-exact.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anasim.analog import tile as tile_mod
from anasim.analog import AnalogMatrix, split_sizes
from anasim.config import AIHWKIT_FORWARD, AIHWKIT_MAPPING
from anasim.kernels import cpu
from naive_tile import naive_forward
from thread_helpers import numba_threads, rerun_with_two_threads

SETTINGS = settings(max_examples=30, deadline=None)


def fwd(**kw):
    """aihwkit IOParameters defaults (as InferenceRPUConfig sets them), overridden by kw."""
    return types.SimpleNamespace(**{**AIHWKIT_FORWARD, **kw})


def mapping(**kw):
    """aihwkit MappingParameter defaults, overridden by kw."""
    return types.SimpleNamespace(**{**AIHWKIT_MAPPING, **kw})


def dyadic(rng, shape, scale=64):
    """Values k/scale, |k| <= scale: products and sums are exact in float32."""
    return (rng.integers(-scale, scale + 1, size=shape) / scale).astype(np.float32)


# ---------------------------------------------------------------------- quantizers


@SETTINGS
@given(
    steps=st.integers(2, 600),
    bound=st.floats(0.25, 20.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_dac_quantization_error_and_clipping(steps, bound, seed):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-2, 2, size=(5, 33)) * bound).astype(np.float32)
    res = np.float32(np.float32(1 / steps) * np.float32(2 * bound))
    p = cpu.prepare_input(x, 0, 33, np.arange(5), nm_type=cpu.NM_NONE, res=res, bound=bound)
    xt = p["xt"]
    inside = np.abs(x) <= bound
    assert np.all(np.abs(xt - x)[inside] <= res / 2 * (1 + 1e-5) + 1e-6 * np.abs(x[inside]))
    # quantize first, then clip (aihwkit order): beyond the last half step -> exactly the bound
    far = np.abs(x) > bound + res / 2
    np.testing.assert_array_equal(xt[far], np.sign(x[far]) * np.float32(bound))
    assert np.all(np.abs(xt) <= np.float32(bound))
    # the grid: every value is a whole number of steps (or the bound)
    k = xt[inside] / res
    assert np.allclose(k, np.rint(k), atol=1e-3)


@SETTINGS
@given(
    steps=st.integers(2, 600),
    bound=st.floats(0.5, 20.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_adc_quantization_error_and_clipping(steps, bound, seed):
    rng = np.random.default_rng(seed)
    y0 = (rng.uniform(-2, 2, size=(6, 21)) * bound).astype(np.float32)
    res = np.float32(np.float32(1 / steps) * np.float32(2 * bound))
    y = y0.copy()
    cpu.finalize_output(y, np.zeros(6, bool), np.arange(6), res=res, bound=bound)
    inside = np.abs(y0) <= bound - res / 2
    assert np.all(np.abs(y - y0)[inside] <= res / 2 * (1 + 1e-5) + 1e-6 * np.abs(y0[inside]))
    far = np.abs(y0) > bound + res / 2
    np.testing.assert_array_equal(y[far], np.sign(y0[far]) * np.float32(bound))
    assert np.all(np.abs(y) <= np.float32(bound))


def test_rounding_is_half_to_even():
    x = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 3.5]], np.float32)
    p = cpu.prepare_input(x, 0, 6, np.arange(1), nm_type=cpu.NM_NONE, res=1.0, bound=10.0)
    np.testing.assert_array_equal(p["xt"][0], [0, 2, 2, -0, -2, 4])


def test_stochastic_rounding_is_unbiased():
    x = np.full((400, 50), 0.3, np.float32)
    p = cpu.prepare_input(x, 0, 50, np.arange(400), nm_type=cpu.NM_NONE, res=1.0, bound=10.0,
                          sto_round=True, sto_key=(5, 6))
    vals = p["xt"]
    assert set(np.unique(vals)) <= {0.0, 1.0}
    n = vals.size
    assert abs(vals.mean() - 0.3) < 4 * math.sqrt(0.21 / n)


# ---------------------------------------------------------------------- scale invariance


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(-6, 6))
def test_abs_max_scale_invariance_power_of_two_exact(seed, k):
    """With ABS_MAX, y(2**k x) == 2**k y(x) bit for bit, noise, DAC, ADC and BM included."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((9, 30)).astype(np.float32) * 0.3
    x = rng.standard_normal((8, 30)).astype(np.float32)
    am = AnalogMatrix(w, None, fwd(out_bound=2.0, w_noise=0.02, w_noise_type="additive_constant"),
                      mapping(weight_scaling_omega=1.0), key=(seed, 1))
    c = np.float32(2.0**k)
    np.testing.assert_array_equal(am.forward(c * x), c * am.forward(x))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), c=st.floats(1e-3, 1e3))
def test_abs_max_scale_invariance_any_factor(seed, c):
    """Any c > 0: equal up to float32 rounding (no converters, so no rounding flips)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((7, 25)).astype(np.float32) * 0.3
    x = rng.standard_normal((6, 25)).astype(np.float32)
    am = AnalogMatrix(w, None, fwd(inp_res=-1, out_res=-1, out_bound=100.0, inp_noise=0.01),
                      mapping(), key=(seed, 0))
    c = np.float32(c)
    np.testing.assert_allclose(am.forward(c * x), c * am.forward(x), rtol=2e-5, atol=2e-5 * c)


def test_abs_max_all_zero_input_gives_exactly_zero_then_bias():
    w = np.ones((4, 6), np.float32)
    b = np.arange(4, dtype=np.float32)
    am = AnalogMatrix(w, b, fwd(out_noise=0.5), mapping())
    np.testing.assert_array_equal(am.forward(np.zeros((3, 6), np.float32)), np.tile(b, (3, 1)))


# ---------------------------------------------------------------------- noise statistics


def _chi2_var_ok(sample, sigma, z=3.29):
    """Sample variance within the two-sided 99.9 % chi-square bound (normal approximation)."""
    n = sample.size
    return abs(sample.var(ddof=1) / sigma**2 - 1) < z * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("sigma", [0.01, 0.06, 0.3])
def test_out_noise_std(sigma):
    m, n = 400, 50
    x = np.ones((m, 10), np.float32)  # alpha = 1
    am = AnalogMatrix(np.zeros((n, 10), np.float32), None,
                      fwd(out_noise=sigma, out_res=-1, out_bound=100.0), mapping(), key=(1, 2))
    y = am.forward(x)
    assert abs(y.mean()) < 4 * sigma / math.sqrt(y.size)
    assert _chi2_var_ok(y.ravel(), sigma)


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_inp_noise_std(sigma):
    m, n = 400, 40
    # all-zero input: alpha = 0 -> no scaling (inp_noise > 0 disables the zero short cut)
    am = AnalogMatrix(np.eye(n, dtype=np.float32), None,
                      fwd(inp_noise=sigma, out_noise=0.0, out_res=-1, inp_res=-1), mapping(), key=(3, 0))
    y = am.forward(np.zeros((m, n), np.float32))
    assert _chi2_var_ok(y.ravel(), sigma)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_w_noise_additive_constant_std(sigma):
    m, k, n = 300, 16, 50
    x = np.full((m, k), 0.5, np.float32)  # nm none: ||x|| = 0.5 * 4 = 2
    am = AnalogMatrix(np.zeros((n, k), np.float32), None,
                      fwd(w_noise=sigma, w_noise_type="additive_constant", out_noise=0.0, out_res=-1,
                          inp_res=-1, noise_management="none", inp_bound=10.0, out_bound=100.0),
                      mapping(), key=(4, 0))
    y = am.forward(x)
    assert _chi2_var_ok(y.ravel(), sigma * 2.0)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_w_noise_pcm_read_std(sigma):
    rng = np.random.default_rng(0)
    m, k, n = 300, 16, 50
    w = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    kw = dict(out_noise=0.0, out_res=-1, inp_res=-1, noise_management="none", out_bound=1e3)
    noisy = AnalogMatrix(w, None, fwd(w_noise=sigma, w_noise_type="pcm_read", **kw), mapping(), key=(5, 0))
    clean = AnalogMatrix(w, None, fwd(**kw), mapping())
    std = sigma * np.sqrt((x**2) @ np.abs(w).T)
    z = (noisy.forward(x) - clean.forward(x)) / std
    assert _chi2_var_ok(z.ravel(), 1.0)


# ---------------------------------------------------------------------- splitting


def test_split_sizes_follow_aihwkit():
    assert split_sizes(1152, 512) == [384, 384, 384]
    assert split_sizes(70, 32) == [24, 23, 23]
    assert split_sizes(300, 128) == [100, 100, 100]
    assert split_sizes(72, 40) == [36, 36]
    assert split_sizes(512, 512) == [512]
    assert split_sizes(100, 0) == [100]


@SETTINGS
@given(
    n_out=st.integers(1, 70), n_in=st.integers(1, 90),
    max_in=st.integers(1, 40), max_out=st.integers(1, 40),
    omega=st.sampled_from([0.0, 1.0, 0.6]), columnwise=st.booleans(), seed=st.integers(0, 1000),
)
def test_split_with_perfect_periphery_equals_unsplit(n_out, n_in, max_in, max_out, omega, columnwise, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    am = AnalogMatrix(w, b, fwd(is_perfect=True),
                      mapping(max_input_size=max_in, max_output_size=max_out,
                              weight_scaling_omega=omega, weight_scaling_columnwise=columnwise))
    sizes = [t.n_in for t in am.tiles]
    assert all(s <= max_in for s in sizes) and max(am.in_sizes) - min(am.in_sizes) <= 1
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    tol = 1e-5 * (np.abs(x) @ np.abs(w).T + np.abs(b)) + 1e-6
    assert np.all(np.abs(am.forward(x) - ref) <= tol)
    np.testing.assert_allclose(am.effective_weight(), w, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- bound management


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), out_bound=st.floats(0.2, 3.0), test_neg=st.booleans(),
       max_bm_factor=st.sampled_from([4, 1000]))
def test_bound_management_never_returns_saturated_unless_limit(seed, out_bound, test_neg, max_bm_factor):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((20, 40)).astype(np.float32)
    x = rng.standard_normal((16, 40)).astype(np.float32)
    am = AnalogMatrix(w, None, fwd(out_res=-1, out_bound=out_bound, noise_management="none",
                                   inp_bound=10.0, bm_test_negative_bound=test_neg,
                                   max_bm_factor=max_bm_factor),
                      mapping(), key=(seed, 0))
    seen = {}
    real = cpu.accumulate_output

    def spy(y, scale, acc, col0=0, **kw):
        seen["y"], seen["scale"] = y.copy(), scale.copy()
        return real(y, scale, acc, col0, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tile_mod.cpu, "accumulate_output", spy)
        am.forward(x)
    y, red = seen["y"], 1 / seen["scale"].astype(np.float64)  # nm none: scale = 1/red
    p = am.periphery
    sat = (y >= p.out_bound) | ((y <= -p.out_bound) & test_neg)
    for r in np.flatnonzero(sat.any(1)):
        assert p.bm_limit_reached(np.float32(red[r])), f"row {r} saturated at reduction {red[r]}"
    assert np.all(np.log2(red) == np.rint(np.log2(red)))


def test_bound_management_stops_at_max_bm_res():
    # 8-bit DAC (step 2/254): 0.25 * 127 = 31.75, so the last factor tried is 32
    w = np.full((1, 10), 1.0, np.float32)
    x = np.ones((1, 10), np.float32)
    am = AnalogMatrix(w, None, fwd(inp_res=1 / 254, out_res=-1, out_noise=0.0, out_bound=0.01), mapping())
    # input 1.0/32 quantizes to 4/127; 10 * 4/127 > 0.01 so every round saturates
    y = am.forward(x)
    np.testing.assert_allclose(y, [[0.01 * 32]], rtol=1e-6)


# ---------------------------------------------------------------------- reproducibility


def _dyadic_layer(seed, **extra):
    rng = np.random.default_rng(seed)
    w = dyadic(rng, (30, 48))
    am = AnalogMatrix(
        w, dyadic(rng, 30),
        fwd(inp_res=1 / 128, out_bound=3.0, out_noise=0.05, w_noise=0.02, inp_sto_round=True,
            out_sto_round=True, **extra),
        mapping(max_input_size=20, max_output_size=16), key=(seed, 3))
    return am, rng


@pytest.mark.parametrize("w_noise_type", ["additive_constant", "pcm_read"])
def test_batch_size_does_not_change_results(w_noise_type):
    am, rng = _dyadic_layer(11, w_noise_type=w_noise_type)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    rows = np.arange(1000, 1064, dtype=np.int64)
    full = am.forward(x, rows, repetition=2)
    for bs, stop in ((1, 12), (7, 64)):
        parts = [am.forward(x[s:s + bs], rows[s:s + bs], repetition=2) for s in range(0, stop, bs)]
        np.testing.assert_array_equal(np.concatenate(parts), full[:stop])
    # and a permutation of the batch permutes the result
    perm = rng.permutation(64)
    np.testing.assert_array_equal(am.forward(x[perm], rows[perm], repetition=2), full[perm])
    assert not np.array_equal(am.forward(x, rows, repetition=3), full)


def test_input_noise_does_not_depend_on_batch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 37)).astype(np.float32)
    rows = np.arange(64, dtype=np.int64) * 3
    kw = dict(res=2 / 254, inp_noise=0.05, sto_round=True, noise_key=(1, 2), sto_key=(3, 4))
    full = cpu.prepare_input(x, 5, 30, rows, **kw)["xt"]
    for bs in (1, 7):
        part = np.concatenate([cpu.prepare_input(x[s:s + bs], 5, 30, rows[s:s + bs], **kw)["xt"]
                               for s in range(0, 64, bs)])
        np.testing.assert_array_equal(part, full)


def test_one_and_two_numba_threads_identical(request):
    if rerun_with_two_threads(request):  # this process's pool has a single thread
        return
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 90)).astype(np.float32) * 0.2
    x = rng.standard_normal((200, 90)).astype(np.float32)
    am = AnalogMatrix(w, None, fwd(out_bound=1.0, inp_noise=0.02, inp_sto_round=True, w_noise=0.02,
                                   w_noise_type="pcm_read", ir_drop=1.0, out_nonlinearity=0.3),
                      mapping(max_input_size=32, weight_scaling_omega=1.0), key=(7, 7))
    with numba_threads(1):
        one = am.forward(x)
    with numba_threads(2):
        two = am.forward(x)
    np.testing.assert_array_equal(one, two)


# ---------------------------------------------------------------------- the NumPy twin

TWIN_EXACT = [
    dict(),
    dict(bound_management="none", out_bound=2.0),
    dict(out_bound=1.0, bm_test_negative_bound=False, out_noise=0.1),
    dict(noise_management="max", out_bound=2.0),
    dict(noise_management="constant", nm_thres=2.0, out_bound=1.5),
    dict(noise_management="none", inp_bound=1.0),
    dict(w_noise=0.05, w_noise_type="additive_constant", inp_sto_round=True, out_sto_round=True),
    dict(w_noise=0.05, w_noise_type="pcm_read", out_bound=1.0),
    dict(out_nonlinearity=0.5, out_bound=2.0),
    dict(max_bm_factor=2, out_bound=0.5),
]


@pytest.mark.parametrize("kw", TWIN_EXACT, ids=[",".join(k for k in d) or "defaults" for d in TWIN_EXACT])
@pytest.mark.parametrize("seed", [0, 1])
def test_kernels_equal_numpy_twin_exactly(kw, seed):
    rng = np.random.default_rng(seed)
    n_out, n_in = 21, 45
    w = dyadic(rng, (n_out, n_in))
    w[:, 0] = 1.0  # max |w| = 1 per output: omega scaling keeps dyadic values
    b = dyadic(rng, n_out)
    x = rng.standard_normal((16, n_in)).astype(np.float32)
    params = dict(inp_res=1 / 128, out_noise=0.05)
    params.update(kw)
    for mp in (mapping(max_input_size=16, max_output_size=8, weight_scaling_omega=1.0),
               mapping(weight_scaling_omega=1.0, weight_scaling_columnwise=True, digital_bias=False)):
        am = AnalogMatrix(w, b, fwd(**params), mp, key=(seed, 5))
        rows = np.arange(16, dtype=np.int64) * 7 + 3
        np.testing.assert_array_equal(am.forward(x, rows, repetition=1), naive_forward(am, x, rows, repetition=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernels_equal_numpy_twin_with_input_noise_and_ir_drop(seed):
    """Non-dyadic paths (input noise, IR drop): equal to float32 rounding without an ADC."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((17, 60)).astype(np.float32) * 0.3
    x = rng.standard_normal((20, 60)).astype(np.float32)
    am = AnalogMatrix(w, None, fwd(inp_noise=0.03, ir_drop=2.0, out_res=-1, out_bound=50.0,
                                   w_noise=0.02, w_noise_type="pcm_read"),
                      mapping(max_input_size=25), key=(seed, 9))
    np.testing.assert_allclose(am.forward(x), naive_forward(am, x), rtol=1e-5, atol=1e-5)


def test_ir_drop_reduces_outputs_of_far_inputs():
    w = np.ones((3, 200), np.float32)
    x = np.ones((1, 200), np.float32)
    kw = dict(out_res=-1, out_noise=0.0, out_bound=1e3, inp_res=-1)
    ideal = AnalogMatrix(w, None, fwd(**kw), mapping()).forward(x)
    dropped = AnalogMatrix(w, None, fwd(ir_drop=1.0, **kw), mapping()).forward(x)
    assert np.all(dropped < ideal) and np.all(dropped > 0.5 * ideal)


def test_set_tile_weights_replaces_effective_weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 30)).astype(np.float32)
    am = AnalogMatrix(w, None, fwd(is_perfect=True), mapping(max_input_size=16, weight_scaling_omega=1.0))
    assert len(am.tiles) == 2
    am.set_tile_weights([2 * t.weight for t in am.tiles])
    x = rng.standard_normal((4, 30)).astype(np.float32)
    np.testing.assert_allclose(am.forward(x), 2 * (x @ w.T), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        am.set_tile_weights([np.zeros((3, 3))])


def test_warmup_runs():
    cpu.warmup()
