"""Converters, ReRAM / state-independent / generic models, faults, drift compensation,
random streams, configuration factories and the user-model protocol."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

import anasim.devices as dev
from anasim.devices import (
    DeviceContext,
    NoiseModel,
    ProgrammedState,
    build_compensation,
    build_converter,
    build_faults,
    build_noise_model,
    device_rng,
    drifted_weights,
    program_weights,
    rng_factory,
)
from anasim.errors import ConfigError

FAMILY_ALPHA = 1e-3

weights = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-4, 4, width=32),
)


def binomial_ok(k: int, n: int, p: float, alpha: float) -> bool:
    return stats.binom.cdf(k, n, p) > alpha / 2 and stats.binom.sf(k - 1, n, p) > alpha / 2


def var_ratio_bounds(n: int, n_tests: int = 1):
    a = FAMILY_ALPHA / (2 * n_tests)
    return stats.chi2.ppf(a, n - 1) / (n - 1), stats.chi2.isf(a, n - 1) / (n - 1)


# --------------------------------------------------------------------------- converters

CONVERTERS = [
    {"type": "single_pair"},
    {"type": "single_pair", "g_min": 2.0, "g_max": 30.0},
    {"type": "dual_pair", "f_lst": [1.0, 3.0], "g_min": 0.5, "g_max": 10.0},
    {"type": "n_pair", "f_lst": [1.0, 2.0, 4.0]},
    {"type": "single_device"},
    {"type": "single_device", "offset": "symmetric", "g_min": 1.0, "g_max": 20.0},
]


@pytest.mark.parametrize("table", CONVERTERS, ids=lambda t: "-".join(str(v) for v in t.values()))
@settings(max_examples=25, deadline=None)
@given(w=weights)
def test_converters_stay_in_range_and_round_trip(table, w):
    conv = build_converter(table)
    w_in = w.copy()
    g, params = conv.to_conductances(w.astype(np.float64))
    assert g.shape == (conv.n_slices,) + w.shape
    assert g.min() >= conv.g_min and g.max() <= conv.g_max * (1 + 1e-12)
    back = conv.to_weights(g, params)
    scale = max(float(np.abs(w).max()), 1e-7)
    assert np.allclose(back, w, rtol=0, atol=1e-12 * scale + 1e-15)
    # the full workflow with ideal devices: exact to float32 rounding
    state = program_weights(w, conv, build_noise_model({"type": "none"}), rng_factory(0))
    w0 = drifted_weights(state, 1e6, conv, build_noise_model({"type": "none"}), rng_factory(0))
    assert np.allclose(w0, w, rtol=1e-6, atol=1e-6 * scale)
    assert np.array_equal(w, w_in)


def test_n_pair_fills_least_significant_pair_first():
    conv = build_converter({"type": "dual_pair", "f_lst": [1.0, 3.0], "g_max": 10.0})
    w = np.array([0.1, 0.25, 0.5, 1.0, -0.5])
    g, params = conv.to_conductances(w)  # scale = 4 * 10 / 1 = 40 µS per unit
    # w = 0.1 -> 4 µS on the first pair; 0.25 -> 10 µS (full); 0.5 -> 10 + 10/3 on the second
    assert np.allclose(g[0], [4.0, 10.0, 10.0, 10.0, 0.0])
    assert np.allclose(g[2], [0.0, 0.0, 10.0 / 3.0, 10.0, 0.0])
    assert np.allclose(g[1], [0, 0, 0, 0, 10.0]) and np.allclose(g[3], [0, 0, 0, 0, 10.0 / 3.0])
    assert np.allclose(conv.to_weights(g, params), w)
    with pytest.raises(ConfigError, match="exactly 2"):
        build_converter({"type": "dual_pair", "f_lst": [1.0, 2.0, 4.0]})
    with pytest.raises(ConfigError, match="positive"):
        build_converter({"type": "n_pair", "f_lst": [1.0, -2.0]})


@settings(max_examples=30, deadline=None)
@given(
    levels=st.lists(st.floats(0, 50), min_size=2, max_size=12, unique=True).map(sorted),
    w=weights,
)
def test_lookup_table_snaps_to_nearest_level(levels, w):
    if min(b - a for a, b in zip(levels, levels[1:])) < 1e-3:
        return
    conv = build_converter({"type": "lookup_table", "levels": levels})
    g, params = conv.to_conductances(w.astype(np.float64))
    lv = np.asarray(levels)
    assert np.isin(g, lv).all()
    ideal = np.stack([np.clip(w, 0, None), np.clip(-w, 0, None)]).astype(np.float64) * params["scale"] + lv[0]
    dist = np.abs(ideal[..., None] - lv).min(axis=-1)
    assert np.allclose(np.abs(g - ideal), dist, atol=1e-9)


def test_lookup_table_exact_on_grid():
    levels = [0.0, 1.0, 3.0, 7.5, 12.0, 25.0]
    conv = build_converter({"type": "lookup_table", "levels": levels})
    grid = np.array(levels) / 25.0
    w = np.concatenate([grid, -grid]).astype(np.float32).reshape(3, 4)
    state = program_weights(w, conv, build_noise_model({"type": "none"}), rng_factory(0))
    assert np.isin(state.conductances, np.float32(levels)).all()
    assert np.allclose(state.weights(conv), w, rtol=1e-6, atol=1e-7)
    # an off-grid weight snaps to the nearest level
    g, _ = conv.to_conductances(np.array([1.0, 0.2]))  # 0.2 * 25 = 5 µS -> 3 or 7.5: 3 is nearer
    assert g[0, 1] == 3.0
    with pytest.raises(ConfigError, match="ascending"):
        build_converter({"type": "lookup_table", "levels": [0.0, 5.0, 2.0]})


# --------------------------------------------------------------------------- ReRAM


def _poly(x, c):
    return sum(ci * x**i for i, ci in enumerate(c))


def test_reram_wan2022_programming_and_long_term_noise():
    model = build_noise_model({"type": "reram_wan2022"})
    ctx = DeviceContext(0.0, 25.0)
    levels = np.array([8.0, 15.0, 25.0])  # the fitted std is ~1 µS here: no clipping at 0
    n = 5000
    g = np.repeat(levels[:, None], n, axis=1)
    lo, hi = var_ratio_bounds(n, 3 * len(levels))
    coeff = {1.0: [0.348, 16.030, -43.853, 45.393, -16.815],
             86400.0: [0.701, 22.086, -50.773, 47.095, -16.458],
             172800.0: [0.782, 20.274, -43.507, 37.062, -11.934]}
    g_prog = model.program(g, ctx, np.random.default_rng(0))
    ratio = g_prog.var(1, ddof=1) / _poly(levels / 25.0, coeff[1.0]) ** 2
    assert np.all((ratio > lo) & (ratio < hi)), ratio
    for i, t in enumerate((86400.0, 172800.0)):
        g_t = model.drift(g_prog, t, ctx, np.random.default_rng(i + 1), g_target=g, drift_param=None)
        # a fresh deviation around the target, independent of the programming draw
        ratio = (g_t - g).var(1, ddof=1) / _poly(levels / 25.0, coeff[t]) ** 2
        assert np.all((ratio > lo) & (ratio < hi)), (t, ratio)
        assert abs(np.corrcoef((g_t - g).ravel(), (g_prog - g).ravel())[0, 1]) < 0.03
    with pytest.raises(ConfigError, match="86400"):
        model.drift(g_prog, 3600.0, ctx, np.random.default_rng(0), g_target=g, drift_param=None)
    # TOML-style string keys are accepted
    m2 = build_noise_model({"type": "reram_wan2022", "coeff_dic": {"1": [0.5], "3600": [1.0]}})
    assert m2.times == [1.0, 3600.0]


def test_reram_workflow_and_t0():
    conv = build_converter()
    model = build_noise_model({"type": "reram_wan2022"})
    w = np.random.default_rng(1).uniform(-1, 1, size=(64, 32))
    rngs = rng_factory(0, 0, 0, 0)
    state = program_weights(w, conv, model, rngs)
    assert np.array_equal(drifted_weights(state, 0.0, conv, model, rngs), state.weights(conv))
    w_day = drifted_weights(state, 86400.0, conv, model, rngs)
    assert w_day.shape == w.shape and np.abs(w_day - w).mean() < 0.2


# --------------------------------------------------------------------------- state independent


def test_state_independent_model():
    p = {"type": "state_independent", "drift_nu_mean": 0.1, "drift_nu_std": 0.05}
    model = build_noise_model(p)
    ctx = DeviceContext(0.0, 25.0)
    n = 40000
    g = np.full((1, n), 12.0)
    # programming: constant 0.2 µS
    s2 = model.program(g, ctx, np.random.default_rng(0)).var(ddof=1)
    lo, hi = var_ratio_bounds(n, 3)
    assert lo < s2 / 0.2**2 < hi
    # nu: folded normal with mean 0.1, std 0.05 (mean 2 sigma from 0: nearly normal)
    nu = model.drift_parameters(g, ctx, np.random.default_rng(1))
    mean = 0.05 * math.sqrt(2 / math.pi) * math.exp(-2) + 0.1 * (1 - 2 * stats.norm.cdf(-2))
    var = 0.1**2 + 0.05**2 - mean**2
    assert abs(nu.mean() - mean) < 4.5 * math.sqrt(var / n)
    # read noise: sigma = |g_d / g_max| * sqrt(ln((t + t0 + t_read) / (2 t_read))) µS
    t = 3600.0
    out = model.drift(g, t, ctx, np.random.default_rng(2), g_target=g, drift_param=np.zeros_like(g))
    sigma = 12.0 / 25.0 * math.sqrt(math.log((t + 20.0 + 250e-9) / 500e-9))
    assert lo < (out - g).var(ddof=1) / sigma**2 < hi


# --------------------------------------------------------------------------- generic


@pytest.mark.parametrize("dependence", ["independent", "proportional", "inverse_proportional"])
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_generic_programming_errors(dependence, distribution):
    m = 0.02
    model = build_noise_model({"type": "generic", "magnitude": m, "dependence": dependence,
                               "distribution": distribution, "clip": "none"})
    ctx = DeviceContext(0.0, 25.0)
    levels = np.array([5.0, 12.5, 20.0])
    n = 20000
    g = np.repeat(levels[:, None], n, axis=1)
    out = model.program(g, ctx, np.random.default_rng(3))
    gn = levels / 25.0
    unit_sd = 1.0 if distribution == "normal" else math.sqrt(1 / 12)
    sd_n = {"independent": m * unit_sd + 0 * gn, "proportional": m * unit_sd * gn,
            "inverse_proportional": m * unit_sd / gn}[dependence]
    ratio = (out / 25.0).var(1, ddof=1) / sd_n**2
    lo, hi = var_ratio_bounds(n, 18)
    if distribution == "uniform":  # the chi2 bound is for normal data; uniform data vary less
        lo, hi = 1 - (1 - lo) * 0.7, 1 + (hi - 1) * 0.7
    assert np.all((ratio > lo) & (ratio < hi)), ratio
    # a zero conductance gets no error unless the error is independent
    z = model.program(np.zeros((1, 100)), ctx, np.random.default_rng(4))
    assert (np.abs(z).max() > 0) == (dependence == "independent")
    # clipping to the converter's range
    wide = build_noise_model({"type": "generic", "magnitude": 0.5})
    clipped = wide.program(g, ctx, np.random.default_rng(5))
    assert clipped.min() >= 0.0 and clipped.max() <= 25.0


# --------------------------------------------------------------------------- faults


def test_stuck_at_faults_rates_and_persistence():
    conv = build_converter()
    model = build_noise_model({"type": "pcm"})
    faults = build_faults({"stuck_at_g_min_rate": 0.02, "stuck_at_g_max_rate": 0.01})
    w = np.random.default_rng(0).uniform(-1, 1, size=(200, 100))
    rngs = rng_factory(5, 0, 0, 0)
    state = program_weights(w, conv, model, rngs, faults)
    n = state.stuck.size
    k_min, k_max = int((state.stuck == 1).sum()), int((state.stuck == 2).sum())
    assert binomial_ok(k_min, n, 0.02, FAMILY_ALPHA / 2) and binomial_ok(k_max, n, 0.01, FAMILY_ALPHA / 2)
    assert np.all(state.conductances[state.stuck == 1] == 0.0)
    assert np.all(state.conductances[state.stuck == 2] == 25.0)
    g_t = model.drifted_conductances(state, 86400.0, conv, rngs)
    assert np.array_equal(g_t[state.stuck > 0], state.conductances[state.stuck > 0].astype(np.float64))
    assert build_faults({}) is None and build_faults(None) is None
    with pytest.raises(ConfigError, match="must not exceed 1"):
        build_faults({"stuck_at_g_min_rate": 0.7, "stuck_at_g_max_rate": 0.5})


def test_g_max_device_to_device_variation():
    conv = build_converter()
    faults = build_faults({"g_max_d2d_std": 0.05})
    w = np.ones((400, 100))
    state = program_weights(w, conv, build_noise_model({"type": "none"}), rng_factory(1), faults)
    r = state.target[0].astype(np.float64) / 25.0  # positive devices aimed at g_max
    n = r.size
    assert abs(r.mean() - 1) < 4.5 * 0.05 / math.sqrt(n)
    lo, hi = var_ratio_bounds(n)
    assert lo < r.var(ddof=1) / 0.05**2 < hi
    assert np.all(state.target[1] == 0.0)  # devices at g_min stay there


# --------------------------------------------------------------------------- compensation


def test_global_compensation_restores_undrifted_outputs_without_noise():
    """Uniform drift (nu constant, no programming or read noise) is undone exactly."""
    conv = build_converter()
    model = build_noise_model({"type": "state_independent", "prog_noise_scale": 0.0, "drift_nu_std": 0.0,
                               "read_noise_scale": 0.0, "drift_nu_mean": 0.07})
    comp = build_compensation({"type": "global"})
    w = np.random.default_rng(2).normal(size=(20, 30)).astype(np.float32)
    x = np.random.default_rng(3).normal(size=(5, 30))
    rngs = rng_factory(0)
    state = program_weights(w, conv, model, rngs)
    ref = comp.readout_weights(state.weights(conv))
    for t in (1.0, 3600.0, 3.15e7):
        w_t = drifted_weights(state, t, conv, model, rngs)
        assert not np.allclose(w_t, w, rtol=1e-3)
        f = comp.factor(ref, comp.readout_weights(w_t))
        assert np.ndim(f) == 0
        assert np.allclose(f * (x @ w_t.T), x @ w.T, rtol=1e-5, atol=1e-5)


def test_per_column_compensation_restores_column_scaled_drift():
    comp = build_compensation({"type": "per_column"})
    w = np.random.default_rng(4).normal(size=(6, 10))
    d = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])[:, None]  # per output column drift
    f = comp.factor(comp.readout_weights(w), comp.readout_weights(w * d))
    assert f.shape == (6,)
    assert np.allclose(f[:, None] * (w * d), w)
    # a global factor cannot do that
    g = build_compensation({"type": "global"})
    fg = g.factor(g.readout_weights(w), g.readout_weights(w * d))
    assert not np.allclose(fg * (w * d), w)


def test_readout_definitions_are_aihwkit_and_selectable():
    w = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    glob = build_compensation({"type": "global"})
    assert np.array_equal(glob.readout_input(3), np.eye(3, dtype=np.float32))
    assert glob.readout_weights(w) == pytest.approx(np.abs(w).mean())
    col = build_compensation({"type": "per_column"})
    assert np.allclose(col.readout_weights(w), np.abs(w).mean(axis=1))
    old = build_compensation({"type": "global", "readout_input": "ones", "readout_stat": "max_abs"})
    assert old.readout_input(3).shape == (1, 3)
    assert old.readout_weights(w) == pytest.approx(2.0)  # max(|-0.5|, |2|)
    assert glob.readout(np.zeros((3, 2))) == pytest.approx(1e-4)  # floor
    none = build_compensation()
    assert not none.enabled and none.factor(1.0, 2.0) == 1.0


# --------------------------------------------------------------------------- random streams


def test_device_rng_streams():
    a = device_rng(1, "conv1", (0, 1), "programming", 3).standard_normal(8)
    assert np.array_equal(a, device_rng(1, "conv1", (0, 1), "programming", 3).standard_normal(8))
    others = [
        device_rng(2, "conv1", (0, 1), "programming", 3),
        device_rng(1, "conv2", (0, 1), "programming", 3),
        device_rng(1, "conv1", (1, 0), "programming", 3),
        device_rng(1, "conv1", (0, 1), "drift", 3),
        device_rng(1, "conv1", (0, 1), "read_noise", 3),
        device_rng(1, "conv1", (0, 1), "faults", 3),
        device_rng(1, "conv1", (0, 1), "programming", 4),
        device_rng(1, "conv1", (0, 1), "programming", 3, extra=1),
        device_rng(1, "conv1", (0, 1), "my_purpose", 3),
    ]
    draws = [r.standard_normal(8) for r in others]
    for d in draws:
        assert not np.allclose(d, a)
    # different purposes are uncorrelated
    x = device_rng(0, 0, 0, "programming").standard_normal(20000)
    y = device_rng(0, 0, 0, "drift").standard_normal(20000)
    assert abs(np.corrcoef(x, y)[0, 1]) < 4.5 / math.sqrt(20000)
    with pytest.raises(ConfigError):
        device_rng(0, 0, 0, "programming", repetition=-1)
    with pytest.raises(ConfigError):
        device_rng(0, 1.5, 0, "programming")


def test_programmed_state_round_trips_through_arrays():
    conv = build_converter({"type": "single_device"})
    model = build_noise_model({"type": "pcm"})
    faults = build_faults({"stuck_at_g_max_rate": 0.05})
    w = np.random.default_rng(0).normal(size=(8, 8))
    rngs = rng_factory(0)
    state = program_weights(w, conv, model, rngs, faults)
    arrays = state.to_arrays()
    assert set(arrays) == {"target", "conductances", "drift_param", "stuck", "converter_params/scale",
                           "converter_params/offset"}
    copy = ProgrammedState.from_arrays({k: np.array(v) for k, v in arrays.items()})
    assert np.array_equal(drifted_weights(copy, 3600.0, conv, model, rngs),
                          drifted_weights(state, 3600.0, conv, model, rngs))


# --------------------------------------------------------------------------- configuration


def test_build_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"Unknown noise_model type 'pmc'.*Did you mean 'pcm'.*Valid types"):
        build_noise_model({"type": "pmc"})
    with pytest.raises(ConfigError, match=r"Unknown parameter 'prog_noise'.*Did you mean 'prog_noise_scale'"):
        build_noise_model({"type": "pcm", "prog_noise": 1.0})
    with pytest.raises(ConfigError, match=r"'drift_scale' parameter of \[noise_model\].*\[0.0, inf\).*-1"):
        build_noise_model({"type": "pcm", "drift_scale": -1})
    with pytest.raises(ConfigError, match=r"'read_noise_reference'.*Did you mean 'target'"):
        build_noise_model({"type": "pcm", "read_noise_reference": "targte"})
    with pytest.raises(ConfigError, match="g_min < g_max"):
        build_converter({"type": "single_pair", "g_min": 30.0})
    with pytest.raises(ConfigError, match=r"Unknown converter type 'dual_pairs'.*'dual_pair'"):
        build_converter({"type": "dual_pairs"})
    with pytest.raises(ConfigError, match="must be a table"):
        build_compensation(3)
    assert isinstance(build_compensation("global"), dev.DriftCompensation)


def test_user_class_paths_resolve_with_clear_errors(monkeypatch):
    mod = types.ModuleType("anasim_test_user_devices")

    class Doubler(NoiseModel):
        def __init__(self, factor=2.0):
            super().__init__()
            self.factor = factor

        def program(self, g_target, ctx, rng):
            return g_target * self.factor

    class NotAModel:
        pass

    mod.Doubler, mod.NotAModel = Doubler, NotAModel
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    model = build_noise_model({"type": "anasim_test_user_devices:Doubler", "factor": 3.0})
    assert isinstance(model, Doubler) and model.factor == 3.0
    state = program_weights(np.ones((2, 2)), build_converter(), model, rng_factory(0))
    assert np.allclose(state.conductances[0], 75.0)
    with pytest.raises(ConfigError, match="could not be imported.*ModuleNotFoundError"):
        build_noise_model({"type": "no_such_module_xyz:Model"})
    with pytest.raises(ConfigError, match=r"has no attribute 'Dobler'.*Did you mean 'Doubler'"):
        build_noise_model({"type": "anasim_test_user_devices:Dobler"})
    with pytest.raises(ConfigError, match="not a subclass of anasim.devices.NoiseModel"):
        build_noise_model({"type": "anasim_test_user_devices:NotAModel"})
    with pytest.raises(ConfigError, match="not a subclass of anasim.devices.DriftCompensation"):
        build_compensation({"type": "anasim_test_user_devices:Doubler"})
    with pytest.raises(ConfigError, match=r"Doubler\(bogus\) failed"):
        build_noise_model({"type": "anasim_test_user_devices:Doubler", "bogus": 1})
    with pytest.raises(ConfigError, match="ClassName"):
        build_noise_model({"type": ":Doubler"})


def test_hook_results_are_checked():
    class Bad(NoiseModel):
        def program(self, g_target, ctx, rng):
            return g_target[:1]

    with pytest.raises(ConfigError, match=r"Bad.program returned shape"):
        program_weights(np.ones((2, 2)), build_converter(), Bad(), rng_factory(0))


def test_hooks_that_modify_their_inputs_cannot_corrupt_the_state():
    class InPlace(NoiseModel):
        def program(self, g_target, ctx, rng):
            g_target *= 2.0
            return g_target

        def drift(self, g_prog, t, ctx, rng, *, g_target, drift_param):
            g_prog *= 0.5
            g_target[...] = -1.0
            return g_prog

    model, conv = InPlace(), build_converter()
    w = np.array([0.5, -1.0])
    state = program_weights(w, conv, model, rng_factory(0))
    assert np.allclose(state.target, [[12.5, 0.0], [0.0, 25.0]])
    before = state.to_arrays()
    drifted_weights(state, 10.0, conv, model, rng_factory(0))
    assert all(np.array_equal(v, state.to_arrays()[k]) for k, v in before.items())
    assert np.allclose(drifted_weights(state, 10.0, conv, model, rng_factory(0)), w)


def test_describe_lists_every_parameter_with_doc_and_validation():
    info = dev.describe()
    assert set(info) == {"noise_model", "converter", "drift_compensation", "device_faults"}
    assert {"pcm", "pcm_custom_drift", "reram_wan2022", "state_independent", "generic", "none"} <= set(
        info["noise_model"])
    for kind, types_ in info.items():
        for name, row in types_.items():
            assert row["doc"], (kind, name)
            section = row["section"]
            if not dataclasses.is_dataclass(section):
                continue
            for f in dataclasses.fields(section):
                assert f.metadata.get("doc"), (kind, name, f.name)
                assert f.metadata.get("valid") is not None, (kind, name, f.name)
            names = [r["name"] for r in row["params"]]
            assert names == [f.name for f in dataclasses.fields(section)]
    pcm = {r["name"]: r for r in info["noise_model"]["pcm"]["params"]}
    assert pcm["t_0"]["default"] == 20.0 and pcm["t_0"]["unit"] == "s"
    assert pcm["t_read"]["default"] == 250e-9 and pcm["g_max"]["unit"] == "µS"
    # every built-in constructs with its defaults and rebuilds from to_config()
    for kind, types_ in info.items():
        if kind == "device_faults":
            continue
        for name in types_:
            obj = dev.build(kind, {"type": name})
            assert dev.build(kind, obj.to_config()).to_config() == obj.to_config() == {"type": name}


def test_objects_compare_by_value_and_pickle():
    import pickle

    for kind in ("noise_model", "converter", "drift_compensation"):
        for name in dev.names(kind):
            obj = dev.build(kind, {"type": name})
            copy = pickle.loads(pickle.dumps(obj))
            assert copy == obj and hash(copy) == hash(obj), (kind, name)
    assert build_noise_model({"type": "pcm"}) == build_noise_model({"type": "pcm", "drift_scale": 1})
    assert build_noise_model({"type": "pcm"}) != build_noise_model({"type": "pcm", "drift_scale": 2.0})
    assert build_noise_model({"type": "pcm"}) != build_noise_model({"type": "pcm_custom_drift"})
    faults = build_faults({"stuck_at_g_min_rate": 0.1})
    assert pickle.loads(pickle.dumps(faults)) == faults
    assert faults.to_config() == {"stuck_at_g_min_rate": 0.1}
