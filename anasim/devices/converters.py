"""Conductance converters: weights <-> device conductances (µS).

Built-in types (``[converter] type = ...``):

* ``single_pair`` — aihwkit ``SinglePairConductanceConverter``: one device for the
  positive, one for the negative part; ``s = (g_max - g_min) / max|W|``,
  ``g± = clip(±s w, 0, g_max - g_min) + g_min``, ``w = (g+ - g-) / s``.
* ``n_pair`` / ``dual_pair`` — aihwkit ``NPairConductanceConverter`` /
  ``DualPairConductanceConverter``: pairs with significance factors ``f_lst`` (lowest
  first), filled greedily: the more significant pair only takes what the lower ones
  cannot hold. ``s = sum(f) (g_max - g_min) / max|W|``, ``w = sum_k f_k (g+_k - g-_k) / s``.
* ``single_device`` — aihwkit ``SingleDeviceConductanceConverter``: one device per
  weight and a digital offset: ``g = g_min + (w - w_0) s``, ``w = w_0 + (g - g_min) / s``
  with ``w_0 = min W`` (aihwkit) or ``-max|W|`` (``offset = "symmetric"``).
* ``lookup_table`` — a pair whose devices can only be programmed to a finite set of
  ``levels``; ``s = (L_max - L_min) / max|W|`` and each device takes the level nearest
  ``L_min + s |w|`` (the other device of the pair stays at ``L_min``).

Scales are per tile (one ``max|W|`` over the whole array), as in aihwkit. aihwkit clamps
``max|W|`` below at 1e-7 (an all-zero tile); so does anasim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..params import Interval, Section, param
from ..errors import ConfigError
from .base import Converter, aihwkit_names, float_list
from .registry import register

__all__ = [
    "SinglePairParams",
    "SinglePairConverter",
    "NPairParams",
    "NPairConverter",
    "DualPairParams",
    "DualPairConverter",
    "SingleDeviceParams",
    "SingleDeviceConverter",
    "LookupTableParams",
    "LookupTableConverter",
]

_ZERO_CLIP = 1e-7  # aihwkit's floor of max|W|

_G_MAX = param(
    25.0,
    "Maximal device conductance; max|W| of the tile maps to it (aihwkit default 25 µS).",
    unit="µS",
    valid=Interval(0.0, None, closed="neither"),
)
_G_MIN = param(
    0.0,
    "Minimal device conductance; the logical zero of each device (aihwkit default 0 µS).",
    unit="µS",
    valid=Interval(0.0, None),
)


def _check_range(section: Section) -> None:
    if section.g_min >= section.g_max:
        raise ConfigError(
            f"[{section.section}] needs g_min < g_max; got g_min={section.g_min}, g_max={section.g_max}."
        )


def _abs_max(w: np.ndarray) -> float:
    return max(float(np.max(np.abs(w))) if w.size else 0.0, _ZERO_CLIP)


# --------------------------------------------------------------------------- single pair


@aihwkit_names("SinglePairConductanceConverter", {"g_max": "g_max", "g_min": "g_min"})
@dataclass(frozen=True)
class SinglePairParams(Section):
    """[converter] type = "single_pair" (aihwkit SinglePairConductanceConverter)."""

    section: ClassVar[str] = "converter"
    g_max: float = _G_MAX
    g_min: float = _G_MIN

    def check(self) -> None:
        _check_range(self)


@register("single_pair")
class SinglePairConverter(Converter):
    """One pair of devices per weight: g+ carries positive, g- negative weights (aihwkit
    ``SinglePairConductanceConverter``; src/aihwkit/inference/converter/conductance.py)."""

    Params = SinglePairParams

    @property
    def n_slices(self) -> int:
        return 2

    def to_conductances(self, w):
        g_min, g_max = self.g_min, self.g_max
        scale = (g_max - g_min) / _abs_max(w)
        sw = w * scale
        g = np.stack([np.clip(sw, 0.0, g_max - g_min), np.clip(-sw, 0.0, g_max - g_min)]) + g_min
        return g, {"scale": np.float64(scale)}

    def to_weights(self, g, params):
        return (g[0] - g[1]) / params["scale"]


# --------------------------------------------------------------------------- n pairs


@aihwkit_names("NPairConductanceConverter", {"f_lst": "f_lst", "g_max": "g_max", "g_min": "g_min"})
@dataclass(frozen=True)
class NPairParams(Section):
    """[converter] type = "n_pair" (aihwkit NPairConductanceConverter)."""

    section: ClassVar[str] = "converter"
    f_lst: list = param(
        [1.0, 3.0],
        "Significance factors F of the pairs, least significant first; pair k adds "
        "F_k (g+_k - g-_k). aihwkit has no default; [1, 3] is aihwkit's example.",
        unit="1", valid=float_list(1),
    )
    g_max: float = _G_MAX
    g_min: float = _G_MIN

    def check(self) -> None:
        _check_range(self)
        if any(f <= 0 for f in self.f_lst):
            raise ConfigError(
                f"The 'f_lst' parameter of [converter] must hold positive factors. Got {self.f_lst!r}."
            )
        object.__setattr__(self, "f_lst", [float(f) for f in self.f_lst])


@register("n_pair")
class NPairConverter(Converter):
    """N pairs with significance factors, filled from the least significant pair up (aihwkit
    ``NPairConductanceConverter``; src/aihwkit/inference/converter/conductance.py)."""

    Params = NPairParams

    @property
    def n_slices(self) -> int:
        return 2 * len(self.params.f_lst)

    def to_conductances(self, w):
        g_min, g_max = self.g_min, self.g_max
        f = self.params.f_lst
        span = g_max - g_min
        scale = sum(f) * span / _abs_max(w)
        wp, wm = np.clip(w * scale, 0.0, None), np.clip(-w * scale, 0.0, None)
        slices, lower = [], 0.0
        for fk in f:
            slices.append(np.clip((wp - lower) / fk, 0.0, span) + g_min)
            slices.append(np.clip((wm - lower) / fk, 0.0, span) + g_min)
            lower += fk * span
        return np.stack(slices), {"scale": np.float64(scale)}

    def to_weights(self, g, params):
        w = np.zeros(g.shape[1:], dtype=np.float64)
        for k, fk in enumerate(self.params.f_lst):
            w += fk * (g[2 * k] - g[2 * k + 1])
        return w / params["scale"]


@aihwkit_names("DualPairConductanceConverter", {"f_lst": "f_lst", "g_max": "g_max", "g_min": "g_min"})
@dataclass(frozen=True)
class DualPairParams(NPairParams):
    """[converter] type = "dual_pair" (aihwkit DualPairConductanceConverter)."""

    def check(self) -> None:
        super().check()
        if len(self.f_lst) != 2:
            raise ConfigError(
                f"The 'f_lst' parameter of [converter] type 'dual_pair' must hold exactly 2 factors. "
                f"Got {self.f_lst!r} instead (use type 'n_pair' for more)."
            )


@register("dual_pair")
class DualPairConverter(NPairConverter):
    """Two pairs with significance factors (aihwkit ``DualPairConductanceConverter``)."""

    Params = DualPairParams


# --------------------------------------------------------------------------- single device


@aihwkit_names("SingleDeviceConductanceConverter", {
    "g_max": "g_max", "g_min": "g_min", "offset": "= convert_to_conductances uses w_0 = min W"})
@dataclass(frozen=True)
class SingleDeviceParams(Section):
    """[converter] type = "single_device" (aihwkit SingleDeviceConductanceConverter)."""

    section: ClassVar[str] = "converter"
    g_max: float = param(
        88.2,
        "Maximal device conductance; the largest weight maps to it (aihwkit default "
        "88.2 µS, from its CMO/HfOx ReRAM fit).",
        unit="µS",
        valid=Interval(0.0, None, closed="neither"),
    )
    g_min: float = param(
        9.0,
        "Minimal device conductance; the offset weight w_0 maps to it (aihwkit default 9.0 µS).",
        unit="µS",
        valid=Interval(0.0, None),
    )
    offset: str = param(
        "min",
        "Digital offset w_0 subtracted after the read-out. 'min': w_0 = min W, so "
        "[min W, max W] spans [g_min, g_max] (aihwkit). 'symmetric': w_0 = -max|W|, so "
        "[-max|W|, max|W|] spans the range and a zero weight sits at mid-conductance.",
        unit="choice", valid=("min", "symmetric"),
    )

    def check(self) -> None:
        _check_range(self)


@register("single_device")
class SingleDeviceConverter(Converter):
    """One device per weight plus a digital offset (aihwkit
    ``SingleDeviceConductanceConverter``; src/aihwkit/inference/converter/conductance.py)."""

    Params = SingleDeviceParams

    @property
    def n_slices(self) -> int:
        return 1

    def to_conductances(self, w):
        if self.params.offset == "min":
            w_0 = float(np.min(w)) if w.size else 0.0
            span = max(float(np.max(w)) - w_0, _ZERO_CLIP) if w.size else 1.0
        else:
            span = 2.0 * _abs_max(w)
            w_0 = -span / 2.0
        scale = (self.g_max - self.g_min) / span
        g = np.clip((w - w_0) * scale, 0.0, self.g_max - self.g_min) + self.g_min
        return g[None], {"scale": np.float64(scale), "offset": np.float64(w_0)}

    def to_weights(self, g, params):
        return params["offset"] + (g[0] - self.g_min) / params["scale"]


# --------------------------------------------------------------------------- lookup table


def _default_levels() -> list:
    return [25.0 * k / 15.0 for k in range(16)]


@dataclass(frozen=True)
class LookupTableParams(Section):
    """[converter] type = "lookup_table" (a finite set of programmable levels)."""

    section: ClassVar[str] = "converter"
    levels: list = param(
        _default_levels(),
        "Conductances a device can be programmed to, ascending (default: 16 equally "
        "spaced levels in [0, 25] µS, a 4-bit device). The lowest level is the "
        "device's zero, the highest takes max|W|; weights snap to the nearest level.",
        unit="µS",
        valid=float_list(2, non_negative=True, ascending=True),
    )

    def check(self) -> None:
        object.__setattr__(self, "levels", [float(v) for v in self.levels])

    @property
    def g_min(self) -> float:
        return self.levels[0]

    @property
    def g_max(self) -> float:
        return self.levels[-1]


@register("lookup_table")
class LookupTableConverter(Converter):
    """A device pair whose devices take one of a finite set of conductance levels; each
    weight snaps to the nearest representable level (ties to the lower level)."""

    Params = LookupTableParams

    @property
    def n_slices(self) -> int:
        return 2

    def _scale(self, w) -> float:
        return (self.g_max - self.g_min) / _abs_max(w)

    def snap(self, g: np.ndarray) -> np.ndarray:
        """The nearest level to each conductance (ties go to the lower level)."""
        levels = np.asarray(self.params.levels, dtype=np.float64)
        hi = np.clip(np.searchsorted(levels, g, side="left"), 1, len(levels) - 1)
        lo = hi - 1
        pick_hi = (levels[hi] - g) < (g - levels[lo])
        return np.where(pick_hi, levels[hi], levels[lo])

    def to_conductances(self, w):
        scale = self._scale(w)
        g = self.snap(np.stack([np.clip(w, 0.0, None), np.clip(-w, 0.0, None)]) * scale + self.g_min)
        return g, {"scale": np.float64(scale)}

    def reconvert(self, w):
        """Continuous mapping onto [L_min, L_max] (no snapping): programmed devices are off-grid."""
        scale = self._scale(w)
        g = np.stack([np.clip(w, 0.0, None), np.clip(-w, 0.0, None)]) * scale + self.g_min
        return np.minimum(g, self.g_max), {"scale": np.float64(scale)}

    def to_weights(self, g, params):
        return (g[0] - g[1]) / params["scale"]
