"""ReRAM after Wan et al., Nature 2022, as aihwkit's ``ReRamWan2022NoiseModel``.

Source: IBM aihwkit ``src/aihwkit/inference/noise/reram.py``. The deviation of a device
from its target conductance is Gaussian with a std that is a 4th-order polynomial in
``x = g_T / g_max``, fitted at selected times after programming (1 s, 1 day, 2 days)::

    σ_t(g_T) = (sum_i c_{t,i} x^i) · g_max / coeff_g_max_reference       [µS]
    g_prog   = max(g_T + noise_scale · σ_{t_min} ξ, 0)         (t_min = smallest fitted time)
    g(t)     = max(g_T + noise_scale · σ_t ξ', 0)              (t must be a fitted time)

so the conductance at t is a fresh draw around the *target* (not a drift of g_prog).
There is no separate read (1/f) noise; aihwkit suggests ``w_noise ≈ 0.01`` in the
forward pass for it.

aihwkit quirk kept for agreement: its constructor means to refer the default
coefficients to 40 µS but stores that in an attribute it never uses, so the polynomial
is in effect referred to ``g_max`` (no rescaling); ``coeff_g_max_reference = None``
reproduces that, 40.0 gives the intended rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..params import Interval, param
from ..errors import ConfigError
from .base import NoiseModel, NoiseModelParams, aihwkit_names, optional_positive
from .registry import register

__all__ = ["ReRamWan2022Params", "ReRamWan2022NoiseModel"]

# c0 .. c4 (aihwkit lists them highest order first and reverses them)
_DEFAULT_COEFF = {
    1.0: [0.348, 16.030, -43.853, 45.393, -16.815],
    86400.0: [0.701, 22.086, -50.773, 47.095, -16.458],
    172800.0: [0.782, 20.274, -43.507, 37.062, -11.934],
}


def _check_coeff(value) -> str | None:
    """a table {time in s: [c0, c1, ...] in µS} with at least one entry"""
    text = "a table {time in s: [c0, c1, ...] in µS} with at least one entry"
    if not isinstance(value, dict) or not value:
        return text
    for k, v in value.items():
        try:
            t = float(k)
        except (TypeError, ValueError):
            return text
        if not np.isfinite(t) or t <= 0:
            return text
        if not isinstance(v, (list, tuple)) or not v:
            return text
        if any(isinstance(c, bool) or not isinstance(c, (int, float)) or not np.isfinite(c) for c in v):
            return text
    return None


@aihwkit_names("ReRamWan2022NoiseModel", {
    "g_max": "= g_max of ReRamWan2022NoiseModel's g_converter (default 25.0)",
    "drift_source": "= BaseNoiseModel.apply_drift_noise re-converts the programmed weights",
    "coeff_dic": "= ReRamWan2022NoiseModel(coeff_dic={1.0: [...], 86400.0: [...], 172800.0: [...]})",
    "noise_scale": "noise_scale",
    "coeff_g_max_reference": "coeff_g_max_reference",
})
@dataclass(frozen=True)
class ReRamWan2022Params(NoiseModelParams):
    """[noise_model] type = "reram_wan2022" (aihwkit ReRamWan2022NoiseModel)."""

    drift_source: str = param(
        "weights",
        "What the long-term noise is converted back with. 'weights' (default, aihwkit): "
        "the conductances are re-derived from the programmed weights (fresh converter "
        "scale), and the noisy target conductances at t are read back with that scale, "
        "as aihwkit's apply_drift_noise does. 'conductances': the original scale.",
        unit="choice", valid=("conductances", "weights"),
    )
    coeff_dic: dict = param(
        {k: list(v) for k, v in _DEFAULT_COEFF.items()},
        "Polynomial coefficients [c0, c1, ...] (µS, lowest order first) of the "
        "conductance deviation versus x = g_T/g_max, per time after programming in "
        "seconds (TOML keys are strings, e.g. \"86400\"). Programming uses the smallest "
        "time; t_inference must be one of the times. Default: aihwkit's fit of Wan et al. "
        "at 1 s, 1 day and 2 days.",
        unit="µS",
        valid=_check_coeff,
    )
    noise_scale: float = param(1.0, "Scale of all noise (aihwkit noise_scale); 0 disables it.",
                               unit="1", valid=Interval(0.0, None))
    coeff_g_max_reference: float | None = param(
        None,
        "g_max at which coeff_dic was fitted; sigma is scaled by g_max / reference. None: "
        "g_max, i.e. no rescaling (what aihwkit does in effect; its intended 40 µS is "
        "never applied).",
        unit="µS",
        valid=optional_positive,
    )

    def check(self) -> None:
        table = {float(k): [float(c) for c in v] for k, v in self.coeff_dic.items()}
        object.__setattr__(self, "coeff_dic", dict(sorted(table.items())))


@register("reram_wan2022")
class ReRamWan2022NoiseModel(NoiseModel):
    """ReRAM conductance deviations after Wan et al. (Nature 2022), time-dependent polynomial
    fits (aihwkit ``ReRamWan2022NoiseModel``, src/aihwkit/inference/noise/reram.py)."""

    Params = ReRamWan2022Params

    @property
    def times(self) -> list:
        """Times (s) at which the deviation was fitted; t_inference must be one of them."""
        return list(self.params.coeff_dic)

    def sigma(self, g_target, t_key: float, ctx) -> np.ndarray:
        """Deviation std (µS) at target conductance ``g_target`` for fitted time ``t_key``."""
        g_max = self.g_max(ctx)
        ref = self.params.coeff_g_max_reference or g_max
        coeff = self.params.coeff_dic[t_key]
        x = g_target / g_max
        out = np.full_like(x, coeff[-1])
        for c in coeff[-2::-1]:
            out = out * x + c
        return out * (g_max / ref)

    def _noisy(self, g_target, t_key, ctx, rng):
        scale = self.params.noise_scale
        if scale == 0.0:
            return g_target.copy()
        noise = scale * self.sigma(g_target, t_key, ctx) * rng.standard_normal(g_target.shape)
        return np.maximum(g_target + noise, 0.0)

    def program(self, g_target, ctx, rng):
        return self._noisy(g_target, min(self.params.coeff_dic), ctx, rng)

    def drift(self, g_prog, t, ctx, rng, *, g_target, drift_param):
        match = [k for k in self.params.coeff_dic if np.isclose(k, t, rtol=1e-9, atol=0.0)]
        if not match:
            raise ConfigError(
                f"[noise_model] type 'reram_wan2022' has fits only at t_inference = "
                f"{', '.join(f'{k:g}' for k in self.params.coeff_dic)} s; got {t:g} s. "
                "Add a fit to coeff_dic or choose one of these times."
            )
        return self._noisy(g_target, match[0], ctx, rng)
