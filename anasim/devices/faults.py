"""Device faults and device-to-device variation, applied on top of any noise model.

``[device_faults]`` (MemTorch / NeuroSim style):

* stuck-at faults: each device independently is stuck at g_min with probability
  ``stuck_at_g_min_rate`` and at g_max with ``stuck_at_g_max_rate`` (one uniform draw u
  per device: u < p_min -> g_min, p_min <= u < p_min + p_max -> g_max). A stuck device
  keeps its value at every t (no drift, no read noise). Applied to the conductances the
  drift starts from (after programming, and after the re-derivation of
  ``drift_source = "weights"``).
* device-to-device variation of g_max: each device's reachable range is
  ``[g_min, g_min + (g_max - g_min) r]`` with ``r = max(1 + g_max_d2d_std ξ, 0)``, and the
  converter's linear map lands on it: ``g_T <- g_min + (g_T - g_min) r``. Applied to the
  target before programming noise, so drift exponents and noise see the varied target.

Both are redrawn for every repetition (a repetition is a freshly programmed chip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..params import Interval, Section, param
from ..errors import ConfigError
from .base import DeviceContext, describe_params

__all__ = ["FaultParams", "DeviceFaults"]

_RATE = Interval(0.0, 1.0)


@dataclass(frozen=True)
class FaultParams(Section):
    """[device_faults]: stuck-at faults and device-to-device variation of g_max."""

    section: ClassVar[str] = "device_faults"
    stuck_at_g_min_rate: float = param(
        0.0, "Probability that a device is stuck at g_min (stuck-OFF / high-resistance state).",
        unit="1", valid=_RATE)
    stuck_at_g_max_rate: float = param(
        0.0, "Probability that a device is stuck at g_max (stuck-ON / low-resistance state).",
        unit="1", valid=_RATE)
    g_max_d2d_std: float = param(
        0.0,
        "Relative device-to-device std of each device's g_max - g_min: its range is scaled by "
        "r = max(1 + std xi, 0), and so is its target conductance above g_min.",
        unit="1", valid=Interval(0.0, None),
    )

    def check(self) -> None:
        if self.stuck_at_g_min_rate + self.stuck_at_g_max_rate > 1.0:
            raise ConfigError(
                "[device_faults] stuck_at_g_min_rate + stuck_at_g_max_rate must not exceed 1; got "
                f"{self.stuck_at_g_min_rate} + {self.stuck_at_g_max_rate}."
            )


class DeviceFaults:
    """Applies :class:`FaultParams` inside :func:`anasim.devices.program_weights`."""

    kind: ClassVar[str] = "device_faults"
    type_name: ClassVar[str] = ""
    Params: ClassVar[type] = FaultParams

    def __init__(self, params: FaultParams | None = None, **kwargs) -> None:
        self.params = params if params is not None else FaultParams.from_dict(kwargs)

    @classmethod
    def describe(cls) -> list[dict]:
        return describe_params(FaultParams)

    @property
    def active(self) -> bool:
        p = self.params
        return bool(p.stuck_at_g_min_rate or p.stuck_at_g_max_rate or p.g_max_d2d_std)

    def vary_g_max(self, g_target: np.ndarray, ctx: DeviceContext, rng: np.random.Generator) -> np.ndarray:
        """Target conductances on each device's own range (a new array)."""
        std = self.params.g_max_d2d_std
        if std == 0.0:
            return g_target
        r = np.maximum(1.0 + std * rng.standard_normal(g_target.shape), 0.0)
        return ctx.g_min + (g_target - ctx.g_min) * r

    def stick(self, g: np.ndarray, ctx: DeviceContext, rng: np.random.Generator):
        """``(g with stuck devices set, stuck mask int8 or None)``; ``g`` is not modified."""
        p_min, p_max = self.params.stuck_at_g_min_rate, self.params.stuck_at_g_max_rate
        if p_min == 0.0 and p_max == 0.0:
            return g, None
        u = rng.random(g.shape)
        stuck = np.zeros(g.shape, dtype=np.int8)
        stuck[u < p_min] = 1
        stuck[(u >= p_min) & (u < p_min + p_max)] = 2
        out = np.where(stuck == 1, ctx.g_min, np.where(stuck == 2, ctx.g_max, g))
        return out, stuck

    def __repr__(self) -> str:
        return f"DeviceFaults({self.params})"

    def __eq__(self, other: object) -> bool:
        return self.params == other.params if isinstance(other, DeviceFaults) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.params)

    def to_config(self) -> dict:
        """The ``[device_faults]`` table (changed parameters only)."""
        return self.params.to_dict(only_changed=True)
