"""PCM device model: statistics against aihwkit's golden data and against its formulas.

Statistical tests use confidence bounds with a multiple-comparison-aware threshold
(Bonferroni over all columns/bins of a test, family-wise error 1e-3 unless stated), so a
correct implementation fails with probability < 0.1 %, and the seeds are fixed so the
outcome is reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from anasim.devices import (
    build_converter,
    build_noise_model,
    drifted_weights,
    program_weights,
    rng_factory,
)
from anasim.devices.base import DeviceContext
from anasim.devices.pcm import pcm_nu_moments
from anasim.errors import ConfigError

from conftest import shared_path

TIMES = (1, 3600, 86400, 31536000)
FAMILY_ALPHA = 1e-3


def z_bound(n_tests: int, alpha: float = FAMILY_ALPHA) -> float:
    """Two-sided Bonferroni z threshold for n_tests comparisons."""
    return float(stats.norm.isf(alpha / (2 * n_tests)))


def column_stats(x: np.ndarray):
    """Per-column mean, variance and the (kurtosis-aware) variance of the sample variance."""
    n = x.shape[0]
    m = x.mean(0)
    v = x.var(0, ddof=1)
    m4 = ((x - m) ** 4).mean(0)
    var_v = (m4 - v**2 * (n - 3) / (n - 1)) / n
    return m, v, var_v


def golden_z_scores(table: dict, seed: int = 0):
    """z-scores of per-column means and variances against aihwkit, for each stage."""
    g = np.load(shared_path("golden", "aihwkit_pcm_stats.npz"))
    w = np.tile(g["w_target"], (4000, 1))
    n = w.shape[0]
    conv, model = build_converter({"type": "single_pair"}), build_noise_model(table)
    rngs = rng_factory(seed, "golden", 0, 0)
    state = program_weights(w, conv, model, rngs)
    out = {}
    for t in (0,) + TIMES:
        x = drifted_weights(state, t, conv, model, rngs).astype(np.float64)
        m, v, var_v = column_stats(x)
        key = "prog" if t == 0 else f"drift"
        suffix = "" if t == 0 else f"_t{t}"
        gm = g[f"{key}_mean{suffix}"].astype(np.float64)
        gs = g[f"{key}_std{suffix}"].astype(np.float64)
        z_mean = (m - gm) / np.sqrt(v / n + gs**2 / n)
        # the golden variance has the same sampling variance as ours (same n, same law)
        z_var = (v - gs**2) / np.sqrt(2.0 * var_v)
        out[t] = (z_mean, z_var)
    return out


def test_pcm_matches_aihwkit_golden_statistics():
    """Mean and std of programmed and drifted weights agree with aihwkit 1.2.0 (4000 x 201)."""
    z = golden_z_scores({"type": "pcm"})
    n_tests = 2 * len(z) * 201
    bound = z_bound(n_tests)  # ~5.0
    worst = {t: (float(np.abs(zm).max()), float(np.abs(zv).max())) for t, (zm, zv) in z.items()}
    for t, (wm, wv) in worst.items():
        assert wm < bound, f"t={t}: worst mean z = {wm:.2f} (bound {bound:.2f})"
        assert wv < bound, f"t={t}: worst variance z = {wv:.2f} (bound {bound:.2f})"
    # aggregate: mean of z^2 over the 201 columns ~ chi2(201)/201 (power against small
    # systematic deviations); Bonferroni over the 10 statistics
    chi_bound = stats.chi2.isf(FAMILY_ALPHA / 10, 201) / 201  # ~1.38
    for t, (zm, zv) in z.items():
        assert np.mean(zm**2) < chi_bound, (t, np.mean(zm**2))
        assert np.mean(zv**2) < chi_bound, (t, np.mean(zv**2))


@pytest.mark.parametrize("change", [{"read_noise_reference": "target"}, {"drift_source": "conductances"}])
def test_golden_comparison_has_power(change):
    """The same comparison rejects the non-aihwkit options: read noise from the target
    (aihwkit issue #436) and drift of the devices' own programmed conductances."""
    z = golden_z_scores({"type": "pcm", **change})
    chi_bound = stats.chi2.isf(FAMILY_ALPHA / 10, 201) / 201
    assert np.mean(z[1][1] ** 2) > 2 * chi_bound


def test_programming_noise_std_follows_polynomial():
    """Binned by conductance, the programming-noise variance is within a chi2 bound of
    (c0 + c1 x + c2 x^2)^2 (x = g_T / g_max)."""
    model = build_noise_model({"type": "pcm"})
    ctx = DeviceContext(g_min=0.0, g_max=25.0)
    levels = np.linspace(5.0, 25.0, 21)  # >= 5 µS: clipping at 0 is > 7 sigma away
    n = 3000
    g_t = np.repeat(levels[:, None], n, axis=1)[None]
    g_p = model.program(g_t, ctx, np.random.default_rng(1))[0]
    x = levels / 25.0
    sigma = 0.26348 + 1.9650 * x - 1.1731 * x**2
    s2 = g_p.var(axis=1, ddof=1)
    lo = stats.chi2.ppf(FAMILY_ALPHA / (2 * len(levels)), n - 1) / (n - 1)
    hi = stats.chi2.isf(FAMILY_ALPHA / (2 * len(levels)), n - 1) / (n - 1)
    ratio = s2 / sigma**2
    assert np.all((ratio > lo) & (ratio < hi)), ratio
    zm = (g_p.mean(axis=1) - levels) / (sigma / math.sqrt(n))
    assert np.abs(zm).max() < z_bound(len(levels))


def test_programming_noise_scale_and_reference():
    model = build_noise_model({"type": "pcm", "prog_noise_scale": 0.5, "g_max": 50.0})
    ctx = DeviceContext(0.0, 50.0)
    g = np.full((1, 20000), 30.0)
    x = 30.0 / 50.0
    sigma = (0.26348 + 1.9650 * x - 1.1731 * x**2) * 50.0 / 25.0  # default reference 25 µS
    s = model.program(g, ctx, np.random.default_rng(2)).std()
    assert abs(s / (0.5 * sigma) - 1) < 0.03
    # explicit coefficients are referred to g_max (aihwkit)
    model = build_noise_model({"type": "pcm", "prog_coeff": [1.0], "g_max": 50.0})
    assert np.allclose(model.prog_sigma(g, ctx), 1.0)
    model = build_noise_model({"type": "pcm", "prog_coeff": [1.0], "prog_coeff_g_max_reference": 25.0})
    assert np.allclose(model.prog_sigma(g, ctx), 2.0)
    # programmed conductances are never negative
    g0 = model.program(np.zeros((1, 1000)), ctx, np.random.default_rng(3))
    assert g0.min() >= 0.0 and g0.max() > 0.0


@settings(max_examples=40, deadline=None)
@given(
    nu=st.floats(0.0, 0.5),
    g=st.floats(0.01, 25.0),
    t=st.floats(1e-3, 1e9),
    t2=st.floats(1e-3, 1e9),
)
def test_drift_is_exactly_a_power_law(nu, g, t, t2):
    """Without read noise, g(t) = g_prog ((t + t_0)/t_0)^(-nu), so g(t)/g(t') is a power law."""
    model = build_noise_model({"type": "pcm", "read_noise_scale": 0.0})
    ctx = DeviceContext(0.0, 25.0)
    args = dict(g_target=np.array([[g]]), drift_param=np.array([[nu]]))
    g_t = model.drift(np.array([[g]]), t, ctx, None, **args)[0, 0]
    g_t2 = model.drift(np.array([[g]]), t2, ctx, None, **args)[0, 0]
    assert g_t == pytest.approx(g * ((t + 20.0) / 20.0) ** (-nu), rel=1e-12)
    assert g_t / g_t2 == pytest.approx(((t + 20.0) / (t2 + 20.0)) ** (-nu), rel=1e-10)


def test_drift_power_law_through_the_workflow():
    """Public path, all noise off except drift: log w(t) is linear in log((t + t0)/t0) per device."""
    conv = build_converter({"type": "single_pair"})
    model = build_noise_model({"type": "pcm", "prog_noise_scale": 0.0, "read_noise_scale": 0.0,
                               "drift_source": "conductances"})
    w = np.linspace(0.05, 1.0, 50, dtype=np.float32)[None]
    rngs = rng_factory(7, 0, 0, 0)
    state = program_weights(w, conv, model, rngs)
    nu = state.drift_param[0].astype(np.float64)
    ts = np.array([1.0, 100.0, 1e4, 1e6, 1e8])
    logw = np.array([np.log(drifted_weights(state, t, conv, model, rngs)[0]) for t in ts])
    slope = -(logw[-1] - logw[0]) / (np.log((ts[-1] + 20) / 20) - np.log((ts[0] + 20) / 20))
    assert np.allclose(slope, nu, rtol=0, atol=2e-6)
    pred = np.log(w[0])[None] - nu[None] * np.log((ts[:, None] + 20.0) / 20.0)
    assert np.allclose(logw, pred, atol=3e-6)


def folded_normal_moments(mu, sigma):
    mean = sigma * np.sqrt(2 / np.pi) * np.exp(-(mu**2) / (2 * sigma**2))
    mean = mean + mu * (1 - 2 * stats.norm.cdf(-mu / sigma))
    return mean, mu**2 + sigma**2 - mean**2


def test_nu_distribution_moments():
    """nu = |mu_nu + sigma_nu xi| (folded normal) with aihwkit's clipped log-linear mu, sigma."""
    model = build_noise_model({"type": "pcm"})
    ctx = DeviceContext(0.0, 25.0)
    levels = np.array([0.0, 0.01, 0.5, 2.0, 6.0, 12.5, 20.0, 25.0])
    n = 20000
    g = np.repeat(levels[:, None], n, axis=1)
    nu = model.drift_parameters(g, ctx, np.random.default_rng(4))
    mu, sig = pcm_nu_moments(levels, 25.0)
    # spot values of aihwkit's fit
    assert mu[0] == 0.1 and sig[0] == 0.045
    assert mu[-1] == pytest.approx(0.049) and sig[-1] == pytest.approx(0.008)
    mean, var = folded_normal_moments(mu, sig)
    bound = z_bound(2 * len(levels))
    z = (nu.mean(1) - mean) / np.sqrt(var / n)
    assert np.abs(z).max() < bound, z
    lo = stats.chi2.ppf(FAMILY_ALPHA / (4 * len(levels)), n - 1) / (n - 1)
    hi = stats.chi2.isf(FAMILY_ALPHA / (4 * len(levels)), n - 1) / (n - 1)
    ratio = nu.var(1, ddof=1) / var
    assert np.all((ratio > lo * 0.97) & (ratio < hi * 1.03)), ratio  # folded normal is near-Gaussian here
    # drift_scale multiplies nu
    doubled = build_noise_model({"type": "pcm", "drift_scale": 2.0})
    nu2 = doubled.drift_parameters(g, ctx, np.random.default_rng(4))
    assert np.allclose(nu2, 2 * nu)


def test_read_noise_std_grows_with_time():
    """With nu = 0 and no programming noise, g(t) - g ~ N(0, (g Q_s sqrt(ln((t+t0+t_r)/(2 t_r))))^2)."""
    model = build_noise_model({"type": "pcm", "drift_scale": 0.0})
    ctx = DeviceContext(0.0, 25.0)
    levels = np.array([2.0, 10.0, 25.0])
    n = 4000
    g = np.repeat(levels[:, None], n, axis=1)
    nu = np.zeros_like(g)
    ts = np.array([1.0, 3600.0, 86400.0, 31536000.0, 1e10])
    lo = stats.chi2.ppf(FAMILY_ALPHA / (2 * len(ts) * len(levels)), n - 1) / (n - 1)
    hi = stats.chi2.isf(FAMILY_ALPHA / (2 * len(ts) * len(levels)), n - 1) / (n - 1)
    stds = []
    for i, t in enumerate(ts):
        out = model.drift(g, t, ctx, np.random.default_rng(10 + i), g_target=g, drift_param=nu)
        q_s = np.minimum(0.0088 / (levels / 25.0) ** 0.65, 0.2)
        sigma = levels * q_s * np.sqrt(np.log((t + 20.0 + 250e-9) / (2 * 250e-9)))
        ratio = (out - g).var(1, ddof=1) / sigma**2
        assert np.all((ratio > lo) & (ratio < hi)), (t, ratio)
        stds.append((out - g).std(1))
    assert np.all(np.diff(np.array(stds), axis=0) > 0)  # grows monotonically with t


def test_read_noise_reference_option():
    """'programmed' takes Q_s from the programmed conductance (aihwkit code), 'target' from g_T."""
    ctx = DeviceContext(0.0, 25.0)
    g_prog = np.array([[5.0, 20.0]])
    g_target = np.array([[20.0, 5.0]])
    nu = np.zeros_like(g_prog)
    t = 3600.0
    xi = np.random.default_rng(5).standard_normal(g_prog.shape)
    for ref, g_ref in (("programmed", g_prog), ("target", g_target)):
        model = build_noise_model({"type": "pcm", "read_noise_reference": ref})
        out = model.drift(g_prog, t, ctx, np.random.default_rng(5), g_target=g_target, drift_param=nu)
        q_s = np.minimum(0.0088 / (g_ref / 25.0) ** 0.65, 0.2)
        expect = g_prog + g_prog * q_s * np.sqrt(np.log((t + 20.0 + 250e-9) / 500e-9)) * xi
        assert np.allclose(out, expect, rtol=1e-12)


def test_t0_returns_programmed_weights_and_inputs_untouched():
    conv = build_converter({"type": "single_pair"})
    model = build_noise_model({"type": "pcm"})
    w = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    w_copy = w.copy()
    rngs = rng_factory(3, 1, 2, 0)
    state = program_weights(w, conv, model, rngs)
    g_copy = state.conductances.copy()
    w0 = drifted_weights(state, 0.0, conv, model, rngs)
    assert np.array_equal(w0, state.weights(conv))
    assert np.array_equal(drifted_weights(state, -5.0, conv, model, rngs), w0)
    w1 = drifted_weights(state, 3600.0, conv, model, rngs)
    assert not np.array_equal(w1, w0)
    assert np.array_equal(w, w_copy) and np.array_equal(state.conductances, g_copy)
    assert not state.conductances.flags.writeable
    # programmed weights are close to the targets (a few % of max|W|)
    assert np.abs(w0 - w).max() < 0.3 * np.abs(w).max()


def test_determinism_per_seed_layer_tile_repetition_and_time():
    conv = build_converter({"type": "single_pair"})
    model = build_noise_model({"type": "pcm"})
    w = np.random.default_rng(0).normal(size=(32, 16))

    def run(seed=1, layer="fc", tile=(0, 1), rep=0, t=3600.0):
        rngs = rng_factory(seed, layer, tile, rep)
        state = program_weights(w, conv, model, rngs)
        return drifted_weights(state, t, conv, model, rngs)

    ref = run()
    assert np.array_equal(ref, run())
    for kwargs in ({"seed": 2}, {"layer": "fc2"}, {"tile": (1, 0)}, {"rep": 1}, {"t": 3601.0}):
        assert not np.array_equal(ref, run(**kwargs)), kwargs
    # the read noise at t does not depend on which other times were evaluated before
    rngs = rng_factory(1, "fc", (0, 1), 0)
    state = program_weights(w, conv, model, rngs)
    drifted_weights(state, 1.0, conv, model, rngs)
    assert np.array_equal(drifted_weights(state, 3600.0, conv, model, rngs), ref)


def test_custom_drift_interpolates_nu_tables():
    table = {"type": "pcm_custom_drift", "g_lst": [0.0, 10.0, 25.0], "nu_mean_lst": [0.08, 0.05, 0.03],
             "nu_std_lst": [0.0, 0.0, 0.0]}
    model = build_noise_model(table)
    ctx = DeviceContext(0.0, 25.0)
    g = np.array([[0.0, 5.0, 10.0, 17.5, 25.0, 30.0]])
    nu = model.drift_parameters(g, ctx, np.random.default_rng(0))
    assert np.allclose(nu, [[0.08, 0.065, 0.05, 0.04, 0.03, 0.03]])
    # std tables: nu = |mean + std xi|
    model = build_noise_model({**table, "nu_std_lst": [0.01, 0.01, 0.01]})
    nu = model.drift_parameters(np.full((1, 20000), 10.0), ctx, np.random.default_rng(1))
    assert abs(nu.mean() - 0.05) < 4 * 0.01 / math.sqrt(20000)
    assert abs(nu.std() / 0.01 - 1) < 0.03
    # the converter's range must lie inside the table
    conv = build_converter({"type": "single_pair", "g_max": 40.0})
    with pytest.raises(ConfigError, match="outside the drift table"):
        program_weights(np.ones((2, 2)), conv, model, rng_factory(0))
    with pytest.raises(ConfigError, match="same length"):
        build_noise_model({**table, "nu_std_lst": [0.0, 0.0]})
    with pytest.raises(ConfigError, match="g_lst"):
        build_noise_model({**table, "g_lst": [0.0, 30.0, 25.0]})
