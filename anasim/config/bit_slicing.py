"""The ``[bit_slicing]`` section: bit-serial inputs and weights split over several arrays.

What CrossSim (``input_bitslicing``, ``Nslices``), NeuroSim (``cellBit``, bit-serial
``numBitInput``) and ISAAC do, in anasim's tile model (:mod:`anasim.analog.tile`):

* **weight slices** -- each tile's weights (after weight scaling ω) are quantized to
  ``weight_slices × weight_bits_per_slice`` magnitude bits, q = rint(|w|/max|w| · (2^B - 1)),
  and split into ``weight_slices`` digits of ``weight_bits_per_slice`` bits, least
  significant first; digit s is stored, signed like w and normalized to full scale
  (±d_s/(2^b - 1)), on an array of its own (own tile key: own programming noise, drift,
  faults, forward noise streams; the configured [converter] maps it to conductances). Each
  slice array is read through the whole periphery, and the slice results are added
  digitally with their place values max|w|·(2^b - 1)·2^(b·s)/(2^B - 1) (part of the slice's
  digital output factor, its ``mapping_scale``).
* **bit-serial input** -- the DAC-quantized input code c = x̃/Δin (|c| <= inp_bound/Δin) is
  applied in cycles of ``input_bits_per_cycle`` bits, least significant first, in
  ``input_encoding`` (sign-magnitude: every cycle drives sign(c)·digit; two's complement:
  the digits of c, the most significant one negative), each cycle's digit driven at
  digit/(2^k - 1) of the full input range, through MVM, output noise and ADC; the cycle
  outputs are shifted (× (2^k - 1)·2^(k·j)·Δin/inp_bound) and added digitally.

Registered with :func:`anasim.config.registry.register_section` when :mod:`anasim.config`
is imported; the default (``weight_slices = 1``, ``input_bits_per_cycle = 0``) is today's
unsliced tile. Checks that need [forward] (the DAC and ADC a slicing needs) are made by
the tile model, which knows both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..params import Interval, Section, documented, param
from .registry import register_section, registered_sections

__all__ = ["BitSlicingParameters", "INPUT_ENCODINGS", "MAX_WEIGHT_BITS"]

INPUT_ENCODINGS = ("sign_magnitude", "twos_complement")
MAX_WEIGHT_BITS = 24
"""The most magnitude bits of a sliced weight: float32 holds every integer code exactly."""


@documented
@dataclass(frozen=True)
class BitSlicingParameters(Section):
    """Bit-serial inputs and bit-sliced weights (CrossSim, NeuroSim, ISAAC).

    The defaults are today's tile: the whole DAC word in one cycle, each weight on one
    array (unquantized beyond what the devices do).
    """

    section: ClassVar[str] = "bit_slicing"

    weight_slices: int = param(
        1,
        "Arrays each weight is split over: its magnitude, quantized to weight_slices × "
        "weight_bits_per_slice bits, is stored as that many digits of weight_bits_per_slice "
        "bits (least significant first), each on its own array (own programming noise, drift "
        "and faults; the [converter] maps a digit to conductances), each read through the "
        "periphery; the results are added digitally with their place values. 1 = one array.",
        unit="arrays", valid=Interval(1, 8, kind="int"),
        aihwkit="(none; CrossSim Nslices, NeuroSim cellBit)")
    weight_bits_per_slice: int = param(
        0,
        "Magnitude bits of one weight slice (the sign is the differential pair's). 0 with "
        "weight_slices = 1: no weight quantization (today). With weight_slices = 1 and a "
        "value b > 0 the weight is quantized to b bits on one array.",
        unit="bits", valid=Interval(0, MAX_WEIGHT_BITS, kind="int"),
        aihwkit="(none; CrossSim/NeuroSim bits per cell)")
    input_bits_per_cycle: int = param(
        0,
        "Bits of the DAC word applied per input cycle (bit-serial input): the quantized "
        "input code is split into cycles of this many bits, each run through MVM, output "
        "noise and ADC, the cycle outputs shifted and added digitally. 0 = the whole DAC "
        "word in one cycle (today). Needs a DAC step (inp_res), deterministic DAC rounding "
        "and bound_management = 'none'; at most the DAC's own bits.",
        unit="bits", valid=Interval(0, 16, kind="int"),
        aihwkit="(none; CrossSim input_bitslicing, NeuroSim bit-serial input)")
    input_encoding: str = param(
        "sign_magnitude",
        "How a bit-serial input code is split: 'sign_magnitude' (every cycle drives "
        "sign(code)·digit of |code|) or 'twos_complement' (the digits of the two's-complement "
        "code, the most significant digit counting negative). Used when "
        "input_bits_per_cycle > 0.",
        unit="choice", valid=INPUT_ENCODINGS, aihwkit="(none; CrossSim input slicing)")

    def check(self) -> None:
        if self.weight_slices > 1 and self.weight_bits_per_slice == 0:
            self.fail(f"weight_slices = {self.weight_slices} needs weight_bits_per_slice >= 1 (the bits of "
                      "one slice's digit); set it, or weight_slices = 1.")
        total = self.weight_slices * self.weight_bits_per_slice
        if total > MAX_WEIGHT_BITS:
            self.fail(f"weight_slices × weight_bits_per_slice = {self.weight_slices} × "
                      f"{self.weight_bits_per_slice} = {total} bits exceeds {MAX_WEIGHT_BITS}, the precision "
                      "of the float32 digital recombination; use fewer slices or bits.")

    @property
    def weight_bits(self) -> int:
        """Magnitude bits of a sliced weight (0: not quantized)."""
        return self.weight_slices * self.weight_bits_per_slice

    @property
    def is_default(self) -> bool:
        """Today's tile: no slicing of either kind."""
        return self.weight_bits == 0 and self.input_bits_per_cycle == 0


def _register() -> None:
    if "bit_slicing" not in registered_sections():
        register_section("bit_slicing", BitSlicingParameters, default=BitSlicingParameters,
                         doc="bit-serial inputs and bit-sliced weights (CrossSim, NeuroSim, ISAAC)")


_register()
