"""The user-model example (examples/custom_device.py) loads from a "module:Class" path."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from anasim.devices import (
    build_converter,
    build_faults,
    build_noise_model,
    describe_params,
    drifted_weights,
    program_weights,
    rng_factory,
)
from anasim.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    sys.modules.pop("custom_device", None)


def test_example_custom_device_from_config(example_on_path):
    model = build_noise_model({"type": "custom_device:LogDecayReRAM", "sigma_prog": 0.5,
                               "decay_mean": 0.03, "decay_std": 0.0})
    assert type(model).__name__ == "LogDecayReRAM" and model.params.sigma_prog == 0.5
    conv = build_converter({"type": "single_pair"})
    w = np.random.default_rng(0).uniform(-1, 1, size=(300, 100)).astype(np.float32)
    rngs = rng_factory(11, "fc", 0, 0)
    state = program_weights(w, conv, model, rngs)
    # programming error: std sigma_prog (µS) on the active device of each pair (target > 5 µS)
    gp, gt = state.conductances[0].astype(np.float64), state.target[0].astype(np.float64)
    active = gt > 5.0
    n = int(active.sum())
    ratio = (gp - gt)[active].var(ddof=1) / 0.5**2
    lo, hi = stats.chi2.ppf(5e-4, n - 1) / (n - 1), stats.chi2.isf(5e-4, n - 1) / (n - 1)
    assert lo < ratio < hi
    assert float(state.converter_params["scale"]) == pytest.approx(25.0 / np.abs(w).max())
    # decay: with decay_std = 0 every device loses 3 % per decade -> weights scale uniformly
    w0 = drifted_weights(state, 0.0, conv, model, rngs)
    for t in (9.0, 999.0):
        w_t = drifted_weights(state, t, conv, model, rngs)
        assert np.allclose(w_t, w0 * (1 - 0.03 * math.log10(1 + t)), rtol=1e-5, atol=1e-6)
    # faults compose with user models
    faults = build_faults({"stuck_at_g_max_rate": 0.1})
    state_f = program_weights(w, conv, model, rngs, faults)
    assert 0.08 < (state_f.stuck == 2).mean() < 0.12
    # parameters are documented and validated like built-ins
    names = [r["name"] for r in describe_params(type(model).Params)]
    assert {"sigma_prog", "decay_mean", "decay_std", "t_ref", "g_max", "drift_source"} <= set(names)
    with pytest.raises(ConfigError, match=r"'decay_mean' parameter.*\[0.0, 1.0\]"):
        build_noise_model({"type": "custom_device:LogDecayReRAM", "decay_mean": 2.0})
    with pytest.raises(ConfigError, match="Did you mean 'sigma_prog'"):
        build_noise_model({"type": "custom_device:LogDecayReRAM", "sigma_prg": 0.1})
