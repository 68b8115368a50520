"""The ``[calibration]`` section: what a deployed chip may calibrate, and how.

Calibration (:func:`anasim.experiment.calibrate`) uses the first N samples of a data set
(never their labels) and only what a chip could do itself: digital parameters and
programming choices, never knowledge of its noise draws. Every method is off by default;
each one is switched on here:

* ``weight_clip``: clip every analog layer's weights before programming (per layer or per
  output column, at ``weight_clip_std`` standard deviations or the ``weight_clip_percentile``
  of |W|), so that the conductance range (one max|W| per tile) is not spent on outliers;
* ``input_range``: a constant noise-management scale per layer (``nm_thres``, with
  ``noise_management = "constant"``) at the ``input_percentile`` of |x| of the layer's inputs;
* ``adc_range``: a per-layer ADC bound (``out_bound``) at the ``adc_percentile`` of the tiles'
  |outputs| before the ADC;
* ``affine``: a digital scale and offset per output channel after each analog layer, fitted
  by least squares so that the analog layer's output matches the ideal layer's on the same
  input (the gain and offset of analog = gain · ideal + offset, inverted; the layers are
  calibrated in network order: calibrated layers feed the later ones);
* ``batchnorm``: BatchNorm running statistics re-estimated from the analog activations
  (where BatchNorm is kept digital).

``calibrate_at = "program"`` calibrates once right after programming (drift compensation
does the rest); ``"each_t"`` recalibrates at every inference time.

Registered with :func:`anasim.config.registry.register_section` when :mod:`anasim.config`
is imported, so ``anasim params calibration`` documents it and ``[[layers]]`` entries can
override it per layer (``calibration = { affine = false }``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..params import Interval, Section, documented, param
from .registry import register_section, registered_sections

PERCENT = Interval(0.0, 100.0, closed="right")
POSITIVE = Interval(0.0, None, closed="neither")

WEIGHT_CLIP = ("none", "std", "percentile")
WEIGHT_CLIP_PER = ("layer", "column")
CALIBRATE_AT = ("program", "each_t")
BATCHNORM = ("none", "recompute", "shift")
METHODS = ("weight_clip", "input_range", "adc_range", "affine", "batchnorm")
"""The calibration methods, in the order they are applied to a layer."""


@documented
@dataclass(frozen=True)
class CalibrationParameters(Section):
    """Calibration of a programmed chip on held-out samples (``anasim calibrate``,
    ``anasim evaluate --calibrate N``): weight clipping, input and ADC ranges, per-output
    affine correction. Every method is off by default."""

    section: ClassVar[str] = "calibration"

    weight_clip: str = param(
        "none",
        "Clip every analog layer's weights before programming: 'std' at ±weight_clip_std "
        "standard deviations of the weights, 'percentile' at the weight_clip_percentile of |W|, "
        "'none' not at all. The converter maps max|W| of a tile to g_max, so outliers clipped "
        "leave more conductance range to the other weights. Not the identity on ideal hardware: "
        "clipped weights are other weights (the affine correction partly undoes it).",
        unit="choice", valid=WEIGHT_CLIP)
    weight_clip_std: float = param(
        3.0, "Clip bound of weight_clip = 'std', in standard deviations of the weights (about 0).",
        unit="std", valid=POSITIVE)
    weight_clip_percentile: float = param(
        99.9, "Clip bound of weight_clip = 'percentile': this percentile of |W|.", unit="%", valid=PERCENT)
    weight_clip_per: str = param(
        "layer", "Statistics of the clip bound over the whole layer ('layer') or per output "
        "channel, i.e. per crossbar column ('column').", unit="choice", valid=WEIGHT_CLIP_PER)
    input_range: bool = param(
        False,
        "Give every analog layer a constant input range: noise_management = 'constant' with "
        "nm_thres at the input_percentile of |x| over the layer's calibration inputs (inputs "
        "above it are clipped by the DAC). Only layers whose DAC quantizes or adds noise "
        "(inp_res > 0 or inp_noise > 0) are changed: without them a range gains nothing.",
        unit="flag", valid=bool)
    input_percentile: float = param(
        99.99, "Percentile of |x| of a layer's inputs that sets its nm_thres (input_range).",
        unit="%", valid=PERCENT)
    adc_range: bool = param(
        False,
        "Give every analog layer its own ADC range: out_bound at the adc_percentile of the "
        "largest |y| of each input vector's outputs before the ADC on the calibration inputs "
        "(noise-free estimate: DAC-scaled inputs times the tiles' current weights; per vector "
        "because bound management re-runs a whole vector when one output saturates), plus 4 "
        "out_noise standard deviations. Only layers whose ADC quantizes (out_res > 0) are changed.",
        unit="flag", valid=bool)
    adc_percentile: float = param(
        99.99, "Percentile of the input vectors' largest |output| before the ADC that sets a "
               "layer's out_bound (adc_range).", unit="%", valid=PERCENT)
    affine: bool = param(
        False,
        "Per-output affine correction: for each analog layer in network order, a digital scale "
        "and offset per output channel, fitted by least squares so that the analog output on the "
        "calibration data matches the ideal layer's output for the same input.",
        unit="flag", valid=bool)
    affine_min_r2: float = param(
        0.1,
        "The affine fit estimates a channel's gain g from y_analog = g * y_ideal + c and corrects "
        "with 1/g; a channel whose analog output explains less than this fraction of its ideal "
        "output's variance (r^2), or has g <= 0, gets only the offset (scale 1).",
        unit="1", valid=Interval(0.0, 1.0))
    batchnorm: str = param(
        "none",
        "BatchNorm re-estimation on the chip, for BatchNormalization kept digital "
        "(mapping.fold_batchnorm = false): 'recompute' sets every BatchNorm's running mean and "
        "variance to those of its analog input activations on the calibration data (AdaBS, Joshi "
        "et al., Nature Communications 2020); 'shift' moves the stored statistics by the analog "
        "minus the ideal activations' statistics (mean + difference, variance times ratio: the "
        "identity on ideal hardware); 'none' keeps them.",
        unit="choice", valid=BATCHNORM)
    calibrate_at: str = param(
        "program",
        "When to calibrate: 'program' once right after programming (t_inference = 0; drift "
        "compensation handles the rest), 'each_t' again at every inference time (periodic "
        "on-chip recalibration).",
        unit="choice", valid=CALIBRATE_AT)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods switched on, in :data:`METHODS` order."""
        on = {"weight_clip": self.weight_clip != "none", "input_range": self.input_range,
              "adc_range": self.adc_range, "affine": self.affine, "batchnorm": self.batchnorm != "none"}
        return tuple(m for m in METHODS if on[m])

    @property
    def enabled(self) -> bool:
        """Whether any method is on."""
        return bool(self.methods)


def _register() -> None:
    if "calibration" not in registered_sections():
        register_section("calibration", CalibrationParameters, default=CalibrationParameters)


_register()
