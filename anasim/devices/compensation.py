"""Drift compensation: aihwkit's ``GlobalDriftCompensation`` and ``PerColumnDriftCompensation``.

Source: IBM aihwkit ``src/aihwkit/inference/compensation/drift.py`` and ``base.py``, and
the inference tile's ``program_weights`` / ``drift_weights``. After programming the tile
runs a fixed *readout input* through its forward pass and stores the reduced output as
the reference; at each t it repeats the readout and multiplies its digital output by
``factor = reference / current``.

* readout input (``readout_input``): ``"eye"`` — the in_size one-hot vectors (the
  identity matrix; aihwkit 1.x), or ``"ones"`` — a single all-ones vector (early
  aihwkit releases).
* reduction (``readout_stat``): ``"mean_abs"`` — the mean of |output| (aihwkit 1.x),
  or ``"max_abs"`` — the largest |output| (early aihwkit releases); floored at
  ``readout_floor`` (aihwkit 1e-4).
* ``global``: one factor per tile (mean / max over all readout vectors and outputs);
  ``per_column``: one factor per output column (over the readout vectors only).

With an ideal periphery the global readout is ``mean |W_ij|`` and the per-column one
``mean_j |W_ij|`` for each output i. ``readout = "forward"`` (the default, aihwkit's) reads
through the tile's own forward pass instead (:meth:`anasim.analog.tile.AnalogMatrix.readout`),
``"ideal"`` through the ideal product (:meth:`readout_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..params import Interval, Section, param
from .base import DriftCompensation, aihwkit_names
from .registry import register

__all__ = [
    "CompensationParams",
    "NoDriftCompensation",
    "GlobalDriftCompensation",
    "PerColumnDriftCompensation",
]


@aihwkit_names("", {
    "readout": "= InferenceTileWithPeriphery: self.tile.forward(readout_tensor, ..., is_test=True)",
    "readout_input": "= Global/PerColumnDriftCompensation.get_readout_tensor: eye(in_size)",
    "readout_stat": "= readout: clamp(abs(y).mean(), min=0.0001) (per column: mean(dim=0))",
    "readout_floor": "= readout: clamp(..., min=0.0001)",
})
@dataclass(frozen=True)
class CompensationParams(Section):
    """[drift_compensation] type = "global" or "per_column"."""

    section: ClassVar[str] = "drift_compensation"
    readout: str = param(
        "forward",
        "How the tile is read for the factor: 'forward' runs the readout vectors through the "
        "tile's own forward pass, every periphery non-ideality included (noise management, "
        "DAC, input/weight/output noise, IR drop, ADC, bound management), with random streams "
        "of its own keyed by repetition and t, as aihwkit does; output noise and the ADC step "
        "then add a floor to the readout that does not drift, so the factor under-compensates "
        "more as conductances decay. 'ideal' reads the weights themselves (x @ W.T, no "
        "periphery): a compensation that knows the drifted conductances exactly.",
        unit="choice", valid=("forward", "ideal"),
    )
    readout_input: str = param(
        "eye",
        "Input vectors of the readout: 'eye' (the in_size one-hot vectors, aihwkit 1.x) "
        "or 'ones' (one all-ones vector, early aihwkit releases).",
        unit="choice", valid=("eye", "ones"),
    )
    readout_stat: str = param(
        "mean_abs",
        "Reduction of the readout outputs: 'mean_abs' (mean |y|, aihwkit 1.x) or "
        "'max_abs' (max |y|, early aihwkit releases).",
        unit="choice", valid=("mean_abs", "max_abs"),
    )
    readout_floor: float = param(
        1e-4,
        "Lower bound of a readout value, so the factor stays finite (aihwkit 1e-4), in "
        "units of the tile's output.",
        unit="1", valid=Interval(0.0, None),
    )


@register("none")
class NoDriftCompensation(DriftCompensation):
    """No drift compensation: the factor is 1."""

    enabled: ClassVar[bool] = False

    def readout_input(self, in_size: int) -> np.ndarray:
        return np.zeros((0, in_size), dtype=np.float32)

    def readout(self, outputs) -> np.ndarray:
        return np.float64(1.0)

    def factor(self, reference, current) -> np.ndarray:
        return np.float64(1.0)


class _Readout(DriftCompensation):
    Params = CompensationParams
    axis: ClassVar[int | None] = None

    @property
    def forward_readout(self) -> bool:
        """Whether the readout runs through the tile's forward pass (``readout = "forward"``)."""
        return self.params.readout == "forward"

    def readout_input(self, in_size: int) -> np.ndarray:
        if self.params.readout_input == "eye":
            return np.eye(in_size, dtype=np.float32)
        return np.ones((1, in_size), dtype=np.float32)

    def readout_weights(self, w: np.ndarray) -> np.ndarray:
        """Ideal-periphery readout; the identity input needs no matrix product (x @ W.T = W.T)."""
        w = np.asarray(w, dtype=np.float64)
        if w.ndim == 2 and self.params.readout_input == "eye":
            return self.readout(w.T)
        return super().readout_weights(w)

    def readout(self, outputs) -> np.ndarray:
        a = np.abs(np.asarray(outputs, dtype=np.float64))
        value = a.mean(axis=self.axis) if self.params.readout_stat == "mean_abs" else a.max(axis=self.axis)
        return np.maximum(value, self.params.readout_floor)


@register("global")
class GlobalDriftCompensation(_Readout):
    """One factor per tile from a readout of the whole tile (aihwkit
    ``GlobalDriftCompensation``, src/aihwkit/inference/compensation/drift.py)."""

    axis = None


@register("per_column")
class PerColumnDriftCompensation(_Readout):
    """One factor per output column (aihwkit ``PerColumnDriftCompensation``,
    src/aihwkit/inference/compensation/drift.py)."""

    axis = 0
