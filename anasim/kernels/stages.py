"""The stage formulas of the tile periphery, written once for every kernel.

Each function is one step of DESIGN.md's tile model (step 4) on one float32 value, in
aihwkit's operation order (``ForwardBackwardPassIOManaged``, CPU), decorated with
:func:`numba.extending.register_jitable` so that the CPU kernels (:mod:`.cpu`,
:mod:`.cpu_conv`) and the CUDA kernels inline the same code. Loops, layouts and random
numbers live in the kernels; the arithmetic lives here.

The steps, in the order the kernels apply them: noise management, DAC quantization and
clipping, input noise, MVM, IR drop, output-referred weight noise, output non-linearity,
output noise, ADC quantization and clipping, iterative bound management, rescaling,
digital accumulation of the tiles' partial sums, digital bias. Where configured, the ADC's
transfer (per-column offset, INL curve, gain: :func:`adc_transfer`) comes right before
the ADC quantization, and bit-serial input replaces each input by its cycle's digit
(:func:`input_cycle`) between the DAC and the input noise.

:class:`Periphery` is the forward parameters in the form the kernels take: one
named tuple of scalars (float32, int64, bool), passed as a single argument.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba.extending import register_jitable

__all__ = [
    "NM_NONE", "NM_ABS_MAX", "NM_MAX", "NM_CONSTANT", "WN_NONE", "WN_ADDITIVE", "WN_PCM_READ",
    "Periphery", "noise_management", "dac", "dac_stochastic", "ir_drop", "nonlinearity", "adc",
    "adc_stochastic", "adc_transfer", "inl_curve", "bm_limit_reached", "input_digit", "input_cycle",
]

NM_NONE, NM_ABS_MAX, NM_MAX, NM_CONSTANT = 0, 1, 2, 3
WN_NONE, WN_ADDITIVE, WN_PCM_READ = 0, 1, 2

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FHALF = np.float32(0.5)
_C005 = np.float32(0.05)
_C02 = np.float32(0.2)


class Periphery(NamedTuple):
    """The forward periphery of a tile as the kernels read it (see :class:`anasim.analog.tile.Periphery`,
    which makes it from aihwkit-named parameters: ``Periphery.kernel_params``)."""

    nm_type: int
    nm_thres: np.float32
    inp_step: np.float32
    """DAC step Δin in the scaled domain; <= 0: no quantization."""
    inp_bound: np.float32
    inp_noise: np.float32
    inp_sto_round: bool
    out_step: np.float32
    """ADC step Δout; <= 0: no quantization."""
    out_bound: np.float32
    out_sto_round: bool
    wn_type: int
    """``WN_*`` code; ``WN_NONE`` also when w_noise is 0."""
    w_noise: np.float32
    ir_drop: np.float32
    ir_drop_g_ratio: np.float32
    bm: bool
    """Iterative bound management on (and not already stopped at reduction 1)."""
    bm_test_negative_bound: bool
    max_bm_factor: int
    bm_red_max: np.float32
    """``max_bm_res / Δin`` (float32), or +inf without a DAC step."""
    out_scale: np.float32
    adc_on: bool = False
    """ADC mismatch or INL on: :func:`adc_transfer` runs (per-column vectors, INL table)."""


@register_jitable
def noise_management(nm_type, nm_thres, stat):
    """The noise-management value α of one input vector from ``stat`` (its max |x| for
    abs_max, its max x for max; unused otherwise) (``computeNoiseManagement``)."""
    if nm_type == NM_ABS_MAX or nm_type == NM_MAX:
        return min(stat, nm_thres) if nm_thres > _F0 else stat
    if nm_type == NM_CONSTANT:
        return nm_thres if nm_thres > _F0 else _F1
    return _F1


@register_jitable
def dac(x, s, res, bound):
    """DAC of one input: scale by ``s`` (1/α/red), quantize to steps ``res`` (round half
    to even; none if res <= 0), clip to ±bound (``prepareInputImplStage4``)."""
    v = x * s
    if res > _F0:
        v = np.rint(v / res) * res
    return min(max(v, -bound), bound)


@register_jitable
def dac_stochastic(x, s, res, bound, u):
    """:func:`dac` with stochastic rounding, ``u`` uniform in [0, 1) (needs res > 0)."""
    v = np.rint((x * s) / res + (u - _FHALF)) * res
    return min(max(v, -bound), bound)


@register_jitable
def ir_drop(y, cur, irm, a_scale, ir_drop_scale):
    """aihwkit's simple IR-drop model on one output: ``cur`` = Σ|w||x̃|, ``irm`` = Σ w x̃
    (1 - (1 - j/n)²), ``a_scale`` = n / ir_drop_g_ratio."""
    a = a_scale * cur
    c = a * (a * (_C005 * a - _C02) + _FHALF)
    return y - c * (ir_drop_scale * irm)


@register_jitable
def nonlinearity(y, nl, nlf):
    """S-shaped output non-linearity ``nlf·y / (1 + |nl·y|)``."""
    return nlf * y / (_F1 + abs(nl * y))


@register_jitable
def inl_curve(v, inl, n):
    """The ADC's transfer curve at ``v``: the table ``inl`` (3, >= n) holds the inputs
    x_k (strictly increasing), outputs y_k and per segment (x_{k+1} - x_k)/(y_{k+1} - y_k)
    (+inf on a flat segment), in output units; linear between the points, slope 1 beyond
    them. Written with a division and additions only, so that no compiler contracts it
    into a fused multiply-add (CPU and CUDA give the same bits)."""
    if v <= inl[0, 0]:
        return inl[1, 0] + (v - inl[0, 0])
    if v >= inl[0, n - 1]:
        return inl[1, n - 1] + (v - inl[0, n - 1])
    k = 0
    while v >= inl[0, k + 1]:
        k += 1
    return inl[1, k] + (v - inl[0, k]) / inl[2, k]


@register_jitable
def adc_transfer(y, offset, gain, inl, n_inl):
    """The ADC of one column before quantization: input-referred offset, the INL transfer
    curve (``n_inl`` = 0: none), then the column's gain: ``gain·T(y + offset)``. With
    offset 0, gain 1 and no curve the value is unchanged (and the kernels skip the call
    when ``adc_on`` is off)."""
    v = y + offset
    if n_inl > 0:
        v = inl_curve(v, inl, n_inl)
    return v * gain


@register_jitable
def adc(y, res):
    """ADC quantization of one output (round half to even; none if res <= 0); the clip to
    ±out_bound comes after, with the bound-management test."""
    if res > _F0:
        return np.rint(y / res) * res
    return y


@register_jitable
def adc_stochastic(y, res, u):
    """:func:`adc` with stochastic rounding, ``u`` uniform in [0, 1) (needs res > 0)."""
    return np.rint(y / res + (u - _FHALF)) * res


@register_jitable
def input_digit(code, cycle, bits, n_cycles, twos):
    """Digit ``cycle`` (0: least significant) of the integer DAC code ``code`` split into
    ``n_cycles`` digits of ``bits`` bits: of |code|, with code's sign (sign-magnitude), or,
    ``twos``, of the two's-complement code over n_cycles·bits bits, the most significant
    digit counting negative (so that Σ_j digit_j·2^(bits·j) = code either way)."""
    c = np.int64(code)
    mask = (np.int64(1) << bits) - 1
    if twos:
        u = c & ((np.int64(1) << (bits * n_cycles)) - 1)
        d = (u >> (bits * cycle)) & mask
        if cycle == n_cycles - 1 and d >= (np.int64(1) << (bits - 1)):
            d -= np.int64(1) << bits
        return d
    d = (abs(c) >> (bits * cycle)) & mask
    return d if c >= 0 else -d


@register_jitable
def input_cycle(v, res, drive, cycle, bits, n_cycles, twos):
    """Bit-serial input: the drive of DAC output ``v`` (a multiple of the DAC step ``res``) in
    cycle ``cycle``: its :func:`input_digit` times ``drive`` (the level of one digit unit,
    inp_bound/(2^bits - 1)). The code is v/res rounded half up (v/res is a whole number up
    to float rounding; ``math.floor`` compiles for the CPU and CUDA alike)."""
    return np.float32(input_digit(math.floor(v / res + _FHALF), cycle, bits, n_cycles, twos)) * drive


@register_jitable
def bm_limit_reached(red, max_bm_factor, inp_step, bm_red_max):
    """aihwkit's bound-management stop rule after a pass at reduction ``red``:
    ``(int)red > max_bm_factor || (inp_res > 0 && red > max_bm_res / inp_res)``."""
    if int(red) > max_bm_factor:
        return True
    return inp_step > _F0 and red > bm_red_max
