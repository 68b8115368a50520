"""A user-defined device model for anasim: write the hooks, anasim does the rest.

This file defines ``LogDecayReRAM``, a made-up ReRAM-like device:

* programming: Gaussian error with a constant std ``sigma_prog`` (µS), clipped at 0;
* retention: each device loses a fraction ``decay_rate_i`` of its conductance per decade
  of time, ``g(t) = g_prog · max(1 - decay_rate_i · log10(1 + t / t_ref), 0)``, where
  ``decay_rate_i`` is drawn once per programming from a normal distribution
  (``decay_mean``, ``decay_std``), clipped at 0.

Use it from a configuration (the module must be importable: installed, or its folder on
``PYTHONPATH`` / ``sys.path``)::

    [noise_model]
    type = "custom_device:LogDecayReRAM"
    sigma_prog = 0.5
    decay_mean = 0.02

or from Python::

    from anasim.devices import build_noise_model, build_converter, rng_factory
    from anasim.devices import program_weights, drifted_weights
    model = build_noise_model({"type": "custom_device:LogDecayReRAM", "sigma_prog": 0.5})
    conv = build_converter({"type": "single_pair"})
    rngs = rng_factory(seed=1, layer="fc", tile=0, repetition=0)
    state = program_weights(w, conv, model, rngs)
    w_day = drifted_weights(state, 86400.0, conv, model, rngs)

What the base class does for you (anasim.devices.NoiseModel): converting weights to
conductances and back with the configured converter, calling the hooks with fresh
float64 arrays of shape ``(n_slices, *w.shape)`` and one random generator per purpose,
returning the programmed state unchanged at t <= 0, applying stuck-at faults and g_max
variation (``[device_faults]``), validating every parameter from ``Params`` (unknown keys
and out-of-range values raise ``anasim.ConfigError`` naming the key), and listing the
parameters in ``anasim params``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anasim.params import Interval, param
from anasim.devices import NoiseModel, NoiseModelParams


@dataclass(frozen=True)
class LogDecayParams(NoiseModelParams):
    """[noise_model] type = "custom_device:LogDecayReRAM"."""

    sigma_prog: float = param(0.3, "Std of the programming error.", unit="µS", valid=Interval(0.0, None))
    decay_mean: float = param(0.02, "Mean fractional conductance loss per decade of time.",
                              unit="1", valid=Interval(0.0, 1.0))
    decay_std: float = param(0.005, "Device-to-device std of the loss per decade.", unit="1",
                             valid=Interval(0.0, None))
    t_ref: float = param(1.0, "Time scale of the logarithmic decay.", unit="s",
                         valid=Interval(0.0, None, closed="neither"))


class LogDecayReRAM(NoiseModel):
    """Gaussian programming error and a logarithmic conductance decay (example model)."""

    Params = LogDecayParams

    def program(self, g_target, ctx, rng):
        return np.maximum(g_target + self.params.sigma_prog * rng.standard_normal(g_target.shape), 0.0)

    def drift_parameters(self, g_target, ctx, rng):
        p = self.params
        return np.maximum(p.decay_mean + p.decay_std * rng.standard_normal(g_target.shape), 0.0)

    def drift(self, g_prog, t, ctx, rng, *, g_target, drift_param):
        loss = drift_param * np.log10(1.0 + t / self.params.t_ref)
        return g_prog * np.maximum(1.0 - loss, 0.0)
