"""Ideal devices, aihwkit's state-independent model, and CrossSim-style generic errors.

* ``none`` — ideal devices: programmed exactly, no drift.
* ``state_independent`` — aihwkit ``StateIndependentNoiseModel``
  (src/aihwkit/inference/noise/custom.py): polynomial programming noise (default a
  constant 0.2 µS), drift exponent ``ν = |ν_mean + ν_std ξ| · drift_scale`` independent of
  the conductance, and read noise ``σ_read = read_noise_scale · |g_d / g_max| ·
  sqrt(ln((t + t_0 + t_read)/(2 t_read)))`` µS. (The read-noise std is in µS and
  proportional to g_d / g_max; with the default scale 1 it is large — it is aihwkit's
  formula, kept for agreement.)
* ``generic`` — CrossSim ``Normal/Uniform × Independent/Proportional/InverseProportional``
  programming errors (sandialabs/cross-sim, simulator/devices/generic_device.py), on
  conductances normalised to g_max (``g_n = g / g_max``): independent ``g_n + m ξ``,
  proportional ``g_n (1 + m ξ)``, inverse-proportional ``g_n + m ξ / g_n`` (no error at
  g_n = 0), with ξ standard normal or uniform in [-1/2, 1/2]; then clipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..params import Interval, param
from .base import NoiseModel, NoiseModelParams, aihwkit_names, float_list
from .registry import register

__all__ = ["IdealNoiseModel", "StateIndependentParams", "StateIndependentNoiseModel",
           "GenericParams", "GenericNoiseModel"]

_NONNEG = Interval(0.0, None)
_POS = Interval(0.0, None, closed="neither")


@register("none")
class IdealNoiseModel(NoiseModel):
    """Ideal devices: conductances are programmed exactly and do not drift."""

    enabled: ClassVar[bool] = False


@aihwkit_names("StateIndependentNoiseModel", {
    "g_max": "= g_max of StateIndependentNoiseModel's g_converter (default 25.0)",
    "drift_source": "= BaseNoiseModel.apply_drift_noise re-converts the programmed weights",
    **{n: n for n in ("prog_coeff", "prog_noise_scale", "drift_nu_mean", "drift_nu_std", "drift_scale",
                      "t_0", "read_noise_scale", "t_read")},
})
@dataclass(frozen=True)
class StateIndependentParams(NoiseModelParams):
    """[noise_model] type = "state_independent" (aihwkit StateIndependentNoiseModel)."""

    drift_source: str = param(
        "weights",
        "What drifts after programming. 'weights' (default, aihwkit): conductances "
        "re-derived from the programmed weights with a fresh converter scale. "
        "'conductances': each device's own programmed conductance (physical).",
        unit="choice", valid=("conductances", "weights"),
    )
    prog_coeff: list = param(
        [0.2, 0.0, 0.0],
        "Programming-noise polynomial c_i of sigma_prog = sum_i c_i (g_T/g_max)^i "
        "(aihwkit default: constant 0.2 µS; no g_max reference rescaling).",
        unit="µS",
        valid=float_list(1),
    )
    prog_noise_scale: float = param(1.0, "Scale of the programming noise (aihwkit prog_noise_scale).",
                                    unit="1", valid=_NONNEG)
    drift_nu_mean: float = param(0.1, "Mean drift exponent nu_mean (aihwkit drift_nu_mean).", unit="1",
                                 valid=_NONNEG)
    drift_nu_std: float = param(0.05, "Device-to-device std of the drift exponent (aihwkit drift_nu_std).",
                                unit="1", valid=_NONNEG)
    drift_scale: float = param(1.0, "Scale of the drawn drift exponents (aihwkit drift_scale).",
                               unit="1", valid=_NONNEG)
    t_0: float = param(20.0, "Drift reference time: g(t) = g_prog ((t + t_0)/t_0)^(-nu) (aihwkit t_0).",
                       unit="s", valid=_POS)
    read_noise_scale: float = param(
        1.0, "Scale rho of the read noise sigma = rho |g_d/g_max| sqrt(ln((t+t_0+t_read)/(2 t_read))) µS "
        "(aihwkit read_noise_scale).", unit="1", valid=_NONNEG)
    t_read: float = param(250.0e-9, "Read duration of the 1/f noise fit (aihwkit t_read).", unit="s",
                          valid=_POS)

    def check(self) -> None:
        object.__setattr__(self, "prog_coeff", [float(c) for c in self.prog_coeff])


@register("state_independent")
class StateIndependentNoiseModel(NoiseModel):
    """Conductance-independent drift and multiplicative read noise (aihwkit
    ``StateIndependentNoiseModel``, src/aihwkit/inference/noise/custom.py)."""

    Params = StateIndependentParams

    def prog_sigma(self, g_target, ctx):
        x = g_target / self.g_max(ctx)
        coeff = self.params.prog_coeff
        out = np.full_like(x, coeff[-1])
        for c in coeff[-2::-1]:
            out = out * x + c
        return out

    def program(self, g_target, ctx, rng):
        scale = self.params.prog_noise_scale
        if scale == 0.0:
            return g_target.copy()
        noise = scale * self.prog_sigma(g_target, ctx) * rng.standard_normal(g_target.shape)
        return np.maximum(g_target + noise, 0.0)

    def drift_parameters(self, g_target, ctx, rng):
        p = self.params
        return np.abs(p.drift_nu_mean + p.drift_nu_std * rng.standard_normal(g_target.shape)) * p.drift_scale

    def drift(self, g_prog, t, ctx, rng, *, g_target, drift_param):
        p = self.params
        tt = t + p.t_0
        g_d = g_prog * (tt / p.t_0) ** (-drift_param)
        if p.read_noise_scale == 0.0:
            return np.maximum(g_d, 0.0)
        sig = np.sqrt(max(np.log((tt + p.t_read) / (2.0 * p.t_read)), 0.0))
        noise = np.abs(g_d / self.g_max(ctx)) * p.read_noise_scale * sig * rng.standard_normal(g_d.shape)
        return np.maximum(g_d + noise, 0.0)


@dataclass(frozen=True)
class GenericParams(NoiseModelParams):
    """[noise_model] type = "generic" (CrossSim-style programming errors)."""

    magnitude: float = param(
        0.0,
        "Error magnitude m in units of g_max: the std of a normal error, or the full width "
        "of a uniform one (CrossSim programming_error.magnitude); 0 disables it.",
        unit="1", valid=_NONNEG,
    )
    dependence: str = param(
        "independent",
        "How the error scales with the normalised conductance g_n = g/g_max: "
        "'independent' (g_n + m xi), 'proportional' (g_n (1 + m xi)), "
        "'inverse_proportional' (g_n + m xi / g_n, none at g_n = 0) (CrossSim).",
        unit="choice", valid=("independent", "proportional", "inverse_proportional"),
    )
    distribution: str = param(
        "normal",
        "Distribution of xi: 'normal' (standard normal) or 'uniform' (in [-1/2, 1/2]) (CrossSim).",
        unit="choice", valid=("normal", "uniform"),
    )
    clip: str = param(
        "range",
        "Clipping of programmed conductances: 'range' (to the converter's [g_min, g_max]), "
        "'non_negative' (at 0), 'none'.",
        unit="choice", valid=("range", "non_negative", "none"),
    )


@register("generic")
class GenericNoiseModel(NoiseModel):
    """Generic programming errors: normal or uniform; independent, proportional or inversely
    proportional to the conductance (CrossSim ``generic_device.py``). No drift."""

    Params = GenericParams

    def program(self, g_target, ctx, rng):
        p = self.params
        if p.magnitude == 0.0:
            return g_target.copy()
        g_max = self.g_max(ctx)
        g_n = g_target / g_max
        if p.distribution == "normal":
            xi = rng.standard_normal(g_n.shape)
        else:
            xi = rng.random(g_n.shape) - 0.5
        err = p.magnitude * xi
        if p.dependence == "independent":
            g_n = g_n + err
        elif p.dependence == "proportional":
            g_n = g_n * (1.0 + err)
        else:
            inv = np.divide(1.0, np.abs(g_n), out=np.zeros_like(g_n), where=g_n != 0)
            g_n = g_n + err * inv * np.sign(g_n)
        g = g_n * g_max
        if p.clip == "range":
            return np.clip(g, ctx.g_min, ctx.g_max)
        if p.clip == "non_negative":
            return np.maximum(g, 0.0)
        return g
