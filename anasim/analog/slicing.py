"""Bit slicing of one tile: weights split over several arrays, inputs over several cycles.

The formulas of ``[bit_slicing]`` (:mod:`anasim.config.bit_slicing`) on the host side:

* :func:`slice_weights` -- a tile's (ω-scaled) weights T as ``n`` slice arrays and their
  digital place values: with B = n·b magnitude bits and L = 2^B - 1,
  q = rint(|T|/max|T| · L), digit d_s = (q >> b·s) & (2^b - 1) (s = 0 least significant),
  slice s = sign(T)·d_s/(2^b - 1), place_s = max|T|·(2^b - 1)·2^(b·s)/L, so that
  Σ_s place_s·slice_s = sign(T)·max|T|·q/L, within max|T|/(2L) (half an LSB) of T.
* :class:`InputCycles` -- the bit-serial schedule of a DAC: the number of cycles of a
  DAC word, each cycle's drive level and digital shift. The digit of a code in a cycle is
  :func:`anasim.kernels.stages.input_cycle` (one formula for every kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["slice_weights", "InputCycles", "weight_lsb", "check_weight_slicing"]


def weight_lsb(wmax: float, n_slices: int, bits: int) -> float:
    """The quantization step of a sliced weight: max|T| / (2^(n·b) - 1)."""
    return wmax / float(2 ** (n_slices * bits) - 1)


def slice_weights(target: np.ndarray, n_slices: int, bits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``target`` (n_out, n_in) as ``n_slices`` (slice weights, place value per output) pairs,
    least significant first (see the module docstring). ``bits`` = 0 (and one slice):
    ``[(target, ones)]``, the tile unchanged."""
    n_out = target.shape[0]
    if bits == 0:
        return [(target, np.ones(n_out, np.float32))]
    t = np.asarray(target, np.float64)
    wmax = float(np.abs(t).max()) if t.size else 0.0
    wmax = wmax if wmax > 0 else 1.0
    levels = 2 ** (n_slices * bits) - 1
    digit_max = 2 ** bits - 1
    q = np.rint(np.abs(t) / wmax * levels).astype(np.int64)
    sign = np.sign(t)
    out = []
    for s in range(n_slices):
        d = (q >> (bits * s)) & digit_max
        w = np.ascontiguousarray(sign * d / digit_max, dtype=np.float32)
        place = np.full(n_out, wmax * digit_max * 2.0 ** (bits * s) / levels, np.float32)
        out.append((w, place))
    return out


def check_weight_slicing(bits: int, output_step: float, out_bound: float) -> None:
    """Refuse a slice whose levels the ADC cannot tell apart: an ADC of fewer than
    2^b - 1 steps over its range (out_res) cannot resolve the 2^b levels of one slice
    driven by one full-scale input."""
    if bits <= 0 or not output_step > 0 or not 0 < out_bound < np.inf:
        return
    steps = int(round(2.0 * out_bound / output_step))
    if steps < 2 ** bits - 1:
        raise ConfigError(
            f"[bit_slicing] weight_bits_per_slice = {bits} gives slices of {2 ** bits} levels, but the ADC "
            f"(forward.out_res) has only {steps} steps over ±out_bound: the slice levels are not resolved. "
            f"Use at most {int(math.log2(steps + 1))} bits per slice (more slices), or a finer ADC.")


@dataclass(frozen=True)
class InputCycles:
    """The bit-serial schedule of a DAC with step ``step`` and bound ``bound``.

    ``bits`` per cycle, ``twos``: two's-complement encoding (else sign-magnitude). The
    DAC codes are integers |c| <= C = rint(bound/step); sign-magnitude takes
    ceil(log2(C+1)/bits) cycles, two's complement ceil((log2(C+1) + 1)/bits).
    """

    bits: int
    twos: bool
    step: float
    bound: float

    @classmethod
    def build(cls, bits: int, encoding: str, step: float, bound: float, sto_round: bool, bm: bool):
        """The schedule, or a ConfigError explaining why bit-serial input does not apply."""
        if not step > 0:
            raise ConfigError(
                f"[bit_slicing] input_bits_per_cycle = {bits} splits the DAC word into cycles, which needs a "
                "quantizing DAC: set forward.inp_res (e.g. 254 steps) or input_bits_per_cycle = 0.")
        if sto_round:
            raise ConfigError(
                f"[bit_slicing] input_bits_per_cycle = {bits} with forward.inp_sto_round = true: the DAC word is "
                "split bit by bit, so it must be one fixed code; stochastic rounding draws the code anew for "
                "every cycle in no real bit-serial DAC. Set inp_sto_round = false.")
        if bm:
            raise ConfigError(
                f"[bit_slicing] input_bits_per_cycle = {bits} with forward.bound_management = 'iterative': every "
                "cycle drives full-scale digits, so halving the input (aihwkit's iterative bound management) "
                "does not reduce a cycle's output. Set bound_management = 'none'.")
        if not 0 < bound < np.inf:
            raise ConfigError("[bit_slicing] bit-serial input needs a finite forward.inp_bound > 0.")
        self = cls(int(bits), encoding == "twos_complement", float(step), float(bound))
        if bits > self.dac_bits:
            raise ConfigError(
                f"[bit_slicing] input_bits_per_cycle = {bits} exceeds the DAC's precision: its codes "
                f"|c| <= {self.max_code} take {self.dac_bits} bits with the sign. Use at most {self.dac_bits} "
                "bits per cycle, or input_bits_per_cycle = 0 for the whole word in one cycle.")
        return self

    @property
    def max_code(self) -> int:
        return int(round(self.bound / self.step))

    @property
    def magnitude_bits(self) -> int:
        return max(1, int(self.max_code).bit_length())

    @property
    def dac_bits(self) -> int:
        """Bits of one DAC word, sign included."""
        return self.magnitude_bits + 1

    @property
    def n_cycles(self) -> int:
        word = self.dac_bits if self.twos else self.magnitude_bits
        return -(-word // self.bits)

    @property
    def drive(self) -> np.float32:
        """The input level of one unit of a cycle's digit: bound/(2^bits - 1)."""
        return np.float32(self.bound / (2 ** self.bits - 1))

    def shift(self, cycle: int) -> float:
        """The digital factor of cycle ``cycle``'s output: (2^bits - 1)·2^(bits·cycle)·step/bound."""
        return (2 ** self.bits - 1) * 2.0 ** (self.bits * cycle) * self.step / self.bound
