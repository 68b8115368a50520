"""Phase-change memory: aihwkit's ``PCMLikeNoiseModel`` and ``CustomDriftPCMLikeNoiseModel``.

Source: IBM aihwkit ``src/aihwkit/inference/noise/pcm.py`` (Nandakumar et al., ICECS 2019;
Joshi et al., Nat. Commun. 2020). With ``x = g_T / g_max`` (g_T the target conductance):

* programming: ``σ_prog = (c0 + c1 x + c2 x²) · g_max / g_ref`` µS (``prog_coeff``,
  ``g_ref = prog_coeff_g_max_reference``), ``g_prog = max(g_T + prog_noise_scale · σ_prog ξ, 0)``;
* drift exponent: ``x' = max(x, 1e-7)``, ``μ_ν = clip(-0.0155 ln x' + 0.0244, 0.049, 0.1)``,
  ``σ_ν = clip(-0.0125 ln x' - 0.0059, 0.008, 0.045)``, ``ν = |μ_ν + σ_ν ξ| · drift_scale``;
* at ``t > 0`` (t counts from the end of programming; ``t' = t + t_0``):
  ``g_d = g_prog (t'/t_0)^(-ν)``; read noise with ``Q_s = min(0.0088 / max(x_r^0.65, 1e-3), 0.2)``,
  ``x_r = |g_r| / g_max`` (``g_r`` = the programmed conductance, as aihwkit, or the target,
  see ``read_noise_reference``), ``σ_read = Q_s sqrt(ln((t' + t_read) / (2 t_read)))``,
  ``g(t) = max(g_d + |g_d| · read_noise_scale · σ_read ξ, 0)``.

Differences from aihwkit, all deliberate: no read noise is added at t = 0 (aihwkit adds it
when ``apply_drift_noise`` is called with t_inference = 0); ``prog_coeff_g_max_reference``
given explicitly is honoured (aihwkit leaves the attribute unset then).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ..params import Interval, param
from ..errors import ConfigError
from .base import DeviceContext, NoiseModel, NoiseModelParams, aihwkit_names, float_list, optional_positive
from .registry import register

__all__ = ["PCMParams", "PCMNoiseModel", "CustomDriftPCMParams", "CustomDriftPCMNoiseModel", "pcm_nu_moments"]

_DEFAULT_PROG_COEFF = [0.26348, 1.9650, -1.1731]
_DEFAULT_PROG_REF = 25.0  # µS: the reference of the default coefficients (aihwkit)
_ZERO_CLIP = 1e-7

_NONNEG = Interval(0.0, None)
_POS = Interval(0.0, None, closed="neither")


def _scale_param(what: str, aihwkit: str) -> float:
    return param(1.0, f"Scale of the {what} (aihwkit {aihwkit}); 0 disables it.", unit="1", valid=_NONNEG)


_PCM_NAMES = {
    "g_max": "= g_max of PCMLikeNoiseModel's g_converter (default 25.0)",
    "drift_source": "= BaseNoiseModel.apply_drift_noise re-converts the programmed weights",
    "prog_coeff": "prog_coeff",
    "prog_coeff_g_max_reference": "prog_coeff_g_max_reference",
    "prog_noise_scale": "prog_noise_scale",
    "drift_scale": "drift_scale",
    "read_noise_scale": "read_noise_scale",
    "t_0": "t_0",
    "t_read": "t_read",
    "read_noise_reference": "= apply_drift_noise_to_conductance takes Q_s from g_prog",
}


@aihwkit_names("PCMLikeNoiseModel", _PCM_NAMES)
@dataclass(frozen=True)
class PCMParams(NoiseModelParams):
    """[noise_model] type = "pcm" (aihwkit PCMLikeNoiseModel)."""

    drift_source: str = param(
        "weights",
        "What drifts after programming. 'weights' (default, aihwkit): the conductances "
        "are re-derived from the programmed weights with a fresh converter scale "
        "(max|W_prog| -> g_max, the other device of a pair at g_min) before drift and "
        "read noise, as aihwkit's apply_drift_noise does. 'conductances': each device's "
        "own programmed conductance drifts (physical).",
        unit="choice", valid=("conductances", "weights"),
    )
    prog_coeff: list = param(
        list(_DEFAULT_PROG_COEFF),
        "Programming-noise polynomial c_i of sigma_prog = sum_i c_i (g_T/g_max)^i, in µS "
        "at g_max = prog_coeff_g_max_reference (aihwkit default [0.26348, 1.9650, -1.1731]).",
        unit="µS",
        valid=float_list(1),
    )
    prog_coeff_g_max_reference: float | None = param(
        None,
        "g_max at which prog_coeff were fitted; sigma_prog is scaled by g_max / reference. "
        "None: 25 µS for the default coefficients, g_max otherwise (aihwkit).",
        unit="µS",
        valid=optional_positive,
    )
    prog_noise_scale: float = _scale_param("programming noise", "prog_noise_scale")
    drift_scale: float = _scale_param("drift exponent nu", "drift_scale")
    read_noise_scale: float = _scale_param("accumulated 1/f read noise", "read_noise_scale")
    t_0: float = param(
        20.0,
        "Time of the first read after programming that the drift is referred to: "
        "g(t) = g_prog ((t + t_0)/t_0)^(-nu) (aihwkit t_0).",
        unit="s",
        valid=_POS,
    )
    t_read: float = param(
        250.0e-9,
        "Read duration in the 1/f noise fit, sigma ~ sqrt(ln((t + t_0 + t_read)/(2 t_read))) "
        "(aihwkit t_read).",
        unit="s",
        valid=_POS,
    )
    read_noise_reference: str = param(
        "programmed",
        "Conductance the read-noise magnitude Q_s is computed from: 'programmed' (the "
        "conductance the drift starts from, as aihwkit's code does) or 'target' (the "
        "target conductance, as aihwkit's documentation states; aihwkit issue #436).",
        unit="choice", valid=("programmed", "target"),
    )

    def check(self) -> None:
        object.__setattr__(self, "prog_coeff", [float(c) for c in self.prog_coeff])


def _poly(x: np.ndarray, coeff) -> np.ndarray:
    """sum_i coeff[i] x^i (Horner)."""
    out = np.full_like(x, coeff[-1])
    for c in coeff[-2::-1]:
        out = out * x + c
    return out


def pcm_nu_moments(g_target: np.ndarray, g_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(μ_ν, σ_ν) of aihwkit's PCM drift exponent at target conductance ``g_target`` (µS)."""
    x = np.maximum(np.abs(g_target) / g_max, _ZERO_CLIP)
    ln_x = np.log(x)
    return np.clip(-0.0155 * ln_x + 0.0244, 0.049, 0.1), np.clip(-0.0125 * ln_x - 0.0059, 0.008, 0.045)


@register("pcm")
class PCMNoiseModel(NoiseModel):
    """PCM programming noise, conductance-dependent drift and 1/f read noise (aihwkit
    ``PCMLikeNoiseModel``, src/aihwkit/inference/noise/pcm.py; Nandakumar 2019, Joshi 2020)."""

    Params = PCMParams

    def prog_sigma(self, g_target: np.ndarray, ctx: DeviceContext) -> np.ndarray:
        """σ_prog (µS) at target conductance ``g_target`` (before ``prog_noise_scale``)."""
        p = self.params
        g_max = self.g_max(ctx)
        ref = p.prog_coeff_g_max_reference
        if ref is None:
            ref = _DEFAULT_PROG_REF if p.prog_coeff == _DEFAULT_PROG_COEFF else g_max
        return _poly(g_target / g_max, p.prog_coeff) * (g_max / ref)

    def program(self, g_target, ctx, rng):
        scale = self.params.prog_noise_scale
        if scale == 0.0:
            return g_target.copy()
        sigma = self.prog_sigma(g_target, ctx)
        return np.maximum(g_target + scale * sigma * rng.standard_normal(g_target.shape), 0.0)

    def nu_moments(self, g_target, ctx):
        """(μ_ν, σ_ν) before ``drift_scale``."""
        return pcm_nu_moments(g_target, self.g_max(ctx))

    def drift_parameters(self, g_target, ctx, rng):
        mu, sigma = self.nu_moments(g_target, ctx)
        return np.abs(mu + sigma * rng.standard_normal(g_target.shape)) * self.params.drift_scale

    def read_noise_sigma(self, g_ref: np.ndarray, t: float, ctx: DeviceContext) -> np.ndarray:
        """Relative read-noise std σ_read = Q_s sqrt(ln((t + t_0 + t_read)/(2 t_read))) at t > 0."""
        p = self.params
        x = np.abs(g_ref) / self.g_max(ctx)
        q_s = np.minimum(0.0088 / np.maximum(x**0.65, 1e-3), 0.2)
        tt = t + p.t_0
        return q_s * np.sqrt(max(np.log((tt + p.t_read) / (2.0 * p.t_read)), 0.0))

    def drift_factor(self, nu: np.ndarray, t: float) -> np.ndarray:
        """((t + t_0) / t_0)^(-ν)."""
        return ((t + self.params.t_0) / self.params.t_0) ** (-nu)

    def drift(self, g_prog, t, ctx, rng, *, g_target, drift_param):
        g_d = g_prog * self.drift_factor(drift_param, t)
        scale = self.params.read_noise_scale
        if scale == 0.0:
            return np.maximum(g_d, 0.0)
        g_ref = g_target if self.params.read_noise_reference == "target" else g_prog
        sigma = self.read_noise_sigma(g_ref, t, ctx)
        return np.maximum(g_d + np.abs(g_d) * scale * sigma * rng.standard_normal(g_d.shape), 0.0)


# --------------------------------------------------------------------------- custom drift


@aihwkit_names("CustomDriftPCMLikeNoiseModel", {
    **_PCM_NAMES,
    "g_lst": "= CustomDriftPCMLikeNoiseModel(custom_drift_model={'g_lst': ...})",
    "nu_mean_lst": "= CustomDriftPCMLikeNoiseModel(custom_drift_model={'nu_mean_lst': ...})",
    "nu_std_lst": "= CustomDriftPCMLikeNoiseModel(custom_drift_model={'nu_std_lst': ...})",
})
@dataclass(frozen=True)
class CustomDriftPCMParams(PCMParams):
    """[noise_model] type = "pcm_custom_drift" (aihwkit CustomDriftPCMLikeNoiseModel)."""

    g_lst: list = param(
        [0.0, 10.0, 25.0],
        "Conductances (ascending) at which the drift exponent's mean and std are given; "
        "nu is interpolated linearly in between and held constant outside (aihwkit "
        "custom_drift_model['g_lst']; aihwkit has no default, this is its example).",
        unit="µS",
        valid=float_list(2, non_negative=True, ascending=True),
    )
    nu_mean_lst: list = param(
        [0.08, 0.05, 0.03],
        "Mean drift exponent at each g_lst conductance (aihwkit custom_drift_model['nu_mean_lst']).",
        unit="1", valid=float_list(2),
    )
    nu_std_lst: list = param(
        [0.03, 0.02, 0.01],
        "Device-to-device std of the drift exponent at each g_lst conductance "
        "(aihwkit custom_drift_model['nu_std_lst']).",
        unit="1", valid=float_list(2, non_negative=True),
    )

    def check(self) -> None:
        super().check()
        n = len(self.g_lst)
        if len(self.nu_mean_lst) != n or len(self.nu_std_lst) != n:
            raise ConfigError(
                f"[noise_model] type 'pcm_custom_drift': g_lst, nu_mean_lst and nu_std_lst must have the "
                f"same length; got {n}, {len(self.nu_mean_lst)}, {len(self.nu_std_lst)}."
            )


@register("pcm_custom_drift")
class CustomDriftPCMNoiseModel(PCMNoiseModel):
    """PCM with user tables of the drift exponent's mean and std versus conductance (aihwkit
    ``CustomDriftPCMLikeNoiseModel``, src/aihwkit/inference/noise/pcm.py)."""

    Params = CustomDriftPCMParams

    def validate(self, ctx):
        g_lo, g_hi = self.params.g_lst[0], self.params.g_lst[-1]
        if ctx.g_min < g_lo or ctx.g_max > g_hi:
            raise ConfigError(
                f"[noise_model] type 'pcm_custom_drift': the converter produces conductances in "
                f"[{ctx.g_min:g}, {ctx.g_max:g}] µS, outside the drift table g_lst [{g_lo:g}, {g_hi:g}] µS."
            )

    def nu_moments(self, g_target, ctx):
        p = self.params
        g = np.clip(g_target, p.g_lst[0], p.g_lst[-1])
        return np.interp(g, p.g_lst, p.nu_mean_lst), np.interp(g, p.g_lst, p.nu_std_lst)
