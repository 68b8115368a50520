"""The analog-periphery sections of a configuration: ``[forward]`` and ``[mapping]``.

Names, meanings and formulas follow aihwkit's ``IOParameters``
(``src/aihwkit/simulator/parameters/io.py``) and ``MappingParameter``
(``src/aihwkit/simulator/parameters/mapping.py``). The *defaults* here are anasim's
``ideal`` preset (no quantization, no noise, no clipping), so that a file only has to name
the non-idealities it wants; the ``aihwkit`` preset (``anasim.config.presets``) holds
aihwkit's own defaults, which each field's ``aihwkit`` note repeats.

Units: inputs are in units of the DAC full scale after noise management (x̃ = x/α, so
``inp_bound`` = 1 means full scale); outputs are in units of (normalized weight) ×
(normalized input), i.e. one fully-on input through one weight of magnitude 1 gives 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..params import Interval, Section, documented, param

NONNEG = Interval(0.0, None)
POS = Interval(0.0, None, closed="neither")
ANY = Interval(None, None)
SIZE = Interval(0, 2**31 - 1, kind="int")

#: aihwkit IOParameters.ir_drop_g_ratio default, computed exactly as aihwkit does
#: (5 mS max conductance ... 0.35 Ω wire: ``1.0 / 0.35 / 5e-6``).
IR_DROP_G_RATIO = 1.0 / 0.35 / 5e-6

NOISE_MANAGEMENT = ("none", "abs_max", "max", "constant")
BOUND_MANAGEMENT = ("none", "iterative")
W_NOISE_TYPES = ("none", "additive_constant", "pcm_read")
IR_DROP_MODELS = ("simple", "circuit")

#: [forward] fields of anasim's own (no aihwkit IOParameters equivalent).
ANASIM_ONLY_FORWARD = ("ir_drop_model", "wire_resistance", "g_max_siemens", "ir_drop_tol",
                       "ir_drop_max_iter", "adc_gain_std", "adc_offset_std", "adc_inl")


INL_MIN_STEP = 1e-6
"""Smallest spacing of the INL curve's inputs (fractions of full scale): distinct in float32."""


def inl_table(value) -> str | None:
    """a list of at least two [input, output] pairs of finite floats in [-1, 1], the inputs increasing by at least 1e-6, the outputs non-decreasing (or [] for none)"""
    text = inl_table.__doc__.strip().splitlines()[0]
    if not isinstance(value, (list, tuple)):
        return text
    if len(value) == 0:
        return None
    if len(value) < 2:
        return text
    pts = []
    for pt in value:
        if not isinstance(pt, (list, tuple)) or len(pt) != 2:
            return text
        for v in pt:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1:
                return text
        pts.append((float(pt[0]), float(pt[1])))
    if any(b[0] - a[0] < INL_MIN_STEP for a, b in zip(pts, pts[1:])):
        return text + " (the inputs are not strictly increasing, by at least 1e-6)"
    if any(b[1] < a[1] for a, b in zip(pts, pts[1:])):
        return text + " (the transfer curve is not monotone: an output decreases)"
    return None


def resolution(res: float) -> float | None:
    """aihwkit's reading of ``inp_res``/``out_res``: > 1 is a number of steps (1/res), a
    value in (0, 1] is the resolution itself, <= 0 means no quantization (``None``)."""
    if res <= 0:
        return None
    return 1.0 / res if res > 1.0 else res


@documented
@dataclass(frozen=True)
class ForwardParameters(Section):
    """Analog matrix-vector product and its periphery (aihwkit ``IOParameters``, forward).

    One forward pass of a tile, in order: noise management, DAC quantization and
    clipping, input noise, MVM, IR drop, output-referred weight noise, output
    non-linearity, output noise, ADC quantization and clipping, iterative bound
    management, rescaling, digital accumulation of the tiles' partial sums, digital
    bias. Noise management gives x̃ = x/α; the DAC step is ``input_step``, its bound
    ±inp_bound; the ADC step is ``output_step``, its bound ±out_bound; rescaling
    multiplies by α (and the digital scales).
    """

    section: ClassVar[str] = "forward"

    is_perfect: bool = param(
        False,
        "Short-cut for a perfect forward pass: the tile computes W·x exactly and every "
        "other [forward] setting is ignored (programming noise, drift and read noise of "
        "the device model still apply).",
        unit="flag", valid=bool, aihwkit="IOParameters.is_perfect = False")
    inp_bound: float = param(
        1.0,
        "Input bound of the DAC: normalized inputs are clipped to ±inp_bound. 0 means "
        "no clipping (aihwkit reads any value <= 0 as unbounded). Must be 1 whenever "
        "noise_management is not 'none' (aihwkit's RPUCuda refuses anything else).",
        unit="DAC full scale", valid=NONNEG, aihwkit="IOParameters.inp_bound = 1.0")
    inp_res: float = param(
        0.0,
        "DAC resolution: a value > 1 is a number of steps (resolution 1/inp_res), a value "
        "in (0, 1] is the resolution itself, <= 0 disables input quantization. The DAC "
        "step is resolution · 2 · inp_bound (see input_step); rounding is half-to-even.",
        unit="steps or 1/steps", valid=ANY, aihwkit="IOParameters.inp_res = 1/(2**7 - 2)")
    inp_noise: float = param(
        0.0,
        "Standard deviation of Gaussian noise added to each normalized input after the "
        "DAC (before the multiplication).",
        unit="DAC full scale", valid=NONNEG, aihwkit="IOParameters.inp_noise = 0.0")
    inp_sto_round: bool = param(
        False, "Stochastic instead of deterministic rounding in the DAC.",
        unit="flag", valid=bool, aihwkit="IOParameters.inp_sto_round = False")
    out_bound: float = param(
        0.0,
        "Output bound of the ADC: analog outputs are clipped to ±out_bound (a bound hit "
        "triggers bound management). 0 means no clipping (aihwkit reads any value <= 0 "
        "as unbounded).",
        unit="normalized output", valid=NONNEG, aihwkit="IOParameters.out_bound = 12.0")
    out_res: float = param(
        0.0,
        "ADC resolution: a value > 1 is a number of steps (resolution 1/out_res), a value "
        "in (0, 1] is the resolution itself, <= 0 disables output quantization. The ADC "
        "step is resolution · 2 · out_bound (see output_step).",
        unit="steps or 1/steps", valid=ANY, aihwkit="IOParameters.out_res = 1/(2**9 - 2)")
    out_noise: float = param(
        0.0,
        "Standard deviation of Gaussian noise added to each analog output before the ADC.",
        unit="normalized output", valid=NONNEG, aihwkit="IOParameters.out_noise = 0.06")
    out_sto_round: bool = param(
        False, "Stochastic instead of deterministic rounding in the ADC.",
        unit="flag", valid=bool, aihwkit="IOParameters.out_sto_round = False")
    w_noise: float = param(
        0.0,
        "Scale of the output-referred weight (read) noise drawn anew for every MVM, of "
        "the kind w_noise_type selects; needs w_noise_type other than 'none'.",
        unit="normalized weight", valid=NONNEG, aihwkit="IOParameters.w_noise = 0.0")
    w_noise_type: str = param(
        "none",
        "Kind of output-referred weight noise: 'none'; 'additive_constant' "
        "(y_i += w_noise·‖x̃‖₂·ξ_i); 'pcm_read' (y_i += w_noise·√(Σ_j |w_ij| x̃_j²)·ξ_i). "
        "aihwkit enum WeightNoiseType (NONE, ADDITIVE_CONSTANT, PCM_READ).",
        unit="choice", valid=W_NOISE_TYPES, aihwkit="IOParameters.w_noise_type = NONE")
    ir_drop: float = param(
        0.0,
        "Scale of the (simple, steady-state) IR drop along the inputs; the first input is "
        "farthest from the output. 0 disables it.",
        unit="1", valid=NONNEG, aihwkit="IOParameters.ir_drop = 0.0")
    ir_drop_g_ratio: float = param(
        IR_DROP_G_RATIO,
        "Ratio of the wire conductance between neighbouring cells to the maximal device "
        "conductance, for the IR-drop model. The default is aihwkit's 1/0.35/5e-6 "
        "(0.35 Ω wire segments, 5e-6 S maximal device conductance).",
        unit="1", valid=POS, aihwkit="IOParameters.ir_drop_g_ratio = 1/0.35/5e-6")
    ir_drop_model: str = param(
        "simple",
        "IR-drop model: 'simple' is aihwkit's steady-state estimate (ir_drop, "
        "ir_drop_g_ratio); 'circuit' solves each tile as a resistive network (two crossbars "
        "of a differential pair, G± = max(±w, 0)·g_max_siemens, wire_resistance per cell "
        "segment along rows and columns, DAC voltages at the row starts, virtual-ground "
        "column ends) iteratively to ir_drop_tol, at about 70× the cost of the plain "
        "product; see anasim.analog.ir_circuit. 'circuit' needs ir_drop = 0.",
        unit="choice", valid=IR_DROP_MODELS,
        aihwkit="(none; aihwkit has only the simple model)")
    wire_resistance: float = param(
        0.0,
        "Circuit IR-drop model: resistance of one wire segment between neighbouring cells "
        "(and from the row driver to the first cell, from the last cell to the column's "
        "virtual ground), the same along rows and columns. aihwkit's simple model assumes "
        "0.35 Ω. 0 means ideal wires (the result is the ideal product). Only the product "
        "wire_resistance·g_max_siemens matters. Needs ir_drop_model = 'circuit'.",
        unit="Ω", valid=NONNEG, aihwkit="(none; aihwkit has only the simple model)")
    g_max_siemens: float = param(
        5e-6,
        "Circuit IR-drop model: the device conductance of a weight of magnitude 1 (a "
        "normalized weight w is a conductance |w|·g_max_siemens on the + or − device of "
        "its pair). The default 5 µS is the one aihwkit's ir_drop_g_ratio assumes. Used "
        "only by ir_drop_model = 'circuit'.",
        unit="S", valid=POS, aihwkit="(none; aihwkit has only the simple model)")
    ir_drop_tol: float = param(
        1e-6,
        "Circuit IR-drop model: the iteration stops when no node voltage changes by more "
        "than ir_drop_tol × (the input vector's largest |DAC voltage|) in one sweep.",
        unit="1", valid=Interval(1e-14, 0.1),
        aihwkit="(none; aihwkit has only the simple model)")
    ir_drop_max_iter: int = param(
        200,
        "Circuit IR-drop model: the most sweeps per input vector; a vector that has not "
        "met ir_drop_tol by then is an ExecutionError naming the tile, the sweeps and the "
        "residual.",
        unit="sweeps", valid=Interval(1, 100000, kind="int"),
        aihwkit="(none; aihwkit has only the simple model)")
    adc_gain_std: float = param(
        0.0,
        "ADC gain mismatch: each tile column's ADC multiplies its (offset, INL-mapped) input by "
        "a gain 1 + adc_gain_std·ξ, ξ standard normal, drawn once per programmed chip (per "
        "repetition; random purpose 'adc_gain') and kept in the chip state (state_dict, "
        "snapshots: tile arrays adc_gain). Applied in the ADC stage after the output noise, "
        "before the ADC quantization and clipping. 0 disables it.",
        unit="1 (relative)", valid=NONNEG, aihwkit="(none; anasim only)")
    adc_offset_std: float = param(
        0.0,
        "ADC offset mismatch: each tile column's ADC adds an input-referred offset "
        "adc_offset_std·ξ, ξ standard normal, drawn once per programmed chip (random purpose "
        "'adc_offset', chip-state arrays adc_offset), before the INL curve and the gain. In "
        "normalized output units, like out_noise and out_bound (one ADC step, output_step, is "
        "2·out_bound/n for out_res = n steps). 0 disables it.",
        unit="normalized output", valid=NONNEG, aihwkit="(none; anasim only)")
    adc_inl: tuple = param(
        (),
        "ADC integral non-linearity: the ADC's transfer curve as [input, output] points in "
        "units of out_bound (fractions of the ADC full scale, in [-1, 1]); between points "
        "linear interpolation, beyond the first and last point slope 1. Applied after the "
        "offset and before the gain, quantization and clipping, the same curve for every "
        "column. Inputs strictly increasing, outputs non-decreasing (a monotone ADC); e.g. "
        "[[-1, -1], [0, 0.02], [1, 1]] bows the mid-scale up by 1 % of full scale. Needs "
        "out_bound > 0. [] (default) is the ideal straight line. Held as a tuple of pairs.",
        unit="out_bound", valid=inl_table,
        invalid=([[0, 0]], [[0, 0], [0, 1]], [[-1, 0.5], [1, 0.2]], [[0, 0], [2, 2]], "x", [[0, "a"], [1, 1]]),
        aihwkit="(none; anasim only)")
    out_nonlinearity: float = param(
        0.0,
        "Strength of the S-shaped output non-linearity y/(1 + n·|y|) with "
        "n = out_nonlinearity/out_bound, applied before the ADC; needs out_bound > 0. "
        "0 disables it.",
        unit="1", valid=NONNEG, aihwkit="IOParameters.out_nonlinearity = 0.0")
    noise_management: str = param(
        "abs_max",
        "Input scaling α before the DAC (x̃ = x/α, output multiplied back by α): 'none' "
        "(α = 1), 'abs_max' (α = max|x| over the tile's input slice), 'max' (α = max x), "
        "'constant' (α = nm_thres). aihwkit enum NoiseManagementType.",
        unit="choice", valid=NOISE_MANAGEMENT, aihwkit="IOParameters.noise_management = ABS_MAX")
    nm_thres: float = param(
        0.0,
        "For noise_management = 'constant' the constant α (must be > 0); for 'abs_max' "
        "and 'max' an upper limit on α when > 0 (larger inputs then clip); 0 means no "
        "limit. Ignored for 'none'.",
        unit="layer input", valid=NONNEG, aihwkit="IOParameters.nm_thres = 0.0")
    bound_management: str = param(
        "none",
        "What to do when an output hits ±out_bound: 'none' (it clips), or 'iterative' "
        "(re-run that input vector with x̃/2, /4, … until no output clips or the factor "
        "exceeds max_bm_factor or max_bm_res/input_step). aihwkit enum BoundManagementType.",
        unit="choice", valid=BOUND_MANAGEMENT, aihwkit="IOParameters.bound_management = ITERATIVE")
    max_bm_factor: int = param(
        1000, "Largest input reduction factor of iterative bound management.",
        unit="1", valid=Interval(1, 2**31 - 1, kind="int"),
        aihwkit="IOParameters.max_bm_factor = 1000")
    max_bm_res: float = param(
        0.25,
        "Second limit of iterative bound management: stop once the reduction factor "
        "exceeds max_bm_res / input_step (e.g. 1/4 keeps at least 2 bits of input).",
        unit="1/steps", valid=POS, aihwkit="IOParameters.max_bm_res = 0.25")
    bm_test_negative_bound: bool = param(
        True,
        "Whether an output clipped at the negative bound -out_bound also counts as a "
        "bound hit for bound management (otherwise only the positive bound does).",
        unit="flag", valid=bool, aihwkit="IOParameters.bm_test_negative_bound = True")

    def __post_init__(self) -> None:
        super().__post_init__()
        # the INL table as a tuple of float pairs: the configuration stays hashable
        object.__setattr__(self, "adc_inl", tuple((float(a), float(b)) for a, b in self.adc_inl))

    def check(self) -> None:
        if self.noise_management == "constant" and self.nm_thres <= 0:
            self.fail("noise_management = 'constant' needs nm_thres > 0 (the constant input "
                      f"scale α); got nm_thres = {self.nm_thres!r}.")
        if self.noise_management != "none" and self.inp_bound != 1.0:
            self.fail(f"noise_management = {self.noise_management!r} needs inp_bound = 1.0 "
                      f"(as in aihwkit); got inp_bound = {self.inp_bound!r}. Set "
                      "noise_management = 'none' to use another input bound.")
        if resolution(self.inp_res) is not None and self.inp_bound == 0:
            self.fail(f"inp_res = {self.inp_res!r} quantizes the input, which needs a finite "
                      "inp_bound > 0 (the DAC step is resolution·2·inp_bound); got inp_bound = 0.")
        if resolution(self.out_res) is not None and self.out_bound == 0:
            self.fail(f"out_res = {self.out_res!r} quantizes the output, which needs a finite "
                      "out_bound > 0 (the ADC step is resolution·2·out_bound); got out_bound = 0.")
        if self.w_noise > 0 and self.w_noise_type == "none":
            self.fail(f"w_noise = {self.w_noise!r} has no effect while w_noise_type = 'none'; "
                      "set w_noise_type to 'additive_constant' or 'pcm_read'.")
        if self.ir_drop_model == "circuit" and self.ir_drop > 0:
            self.fail(f"ir_drop_model = 'circuit' replaces aihwkit's simple IR-drop estimate, "
                      f"which would count the wires twice; set ir_drop = 0 (got "
                      f"{self.ir_drop!r}) and give the wires as wire_resistance (Ω per cell "
                      "segment) and g_max_siemens.")
        if self.ir_drop_model == "simple" and self.wire_resistance > 0:
            self.fail(f"wire_resistance = {self.wire_resistance!r} has no effect with "
                      "ir_drop_model = 'simple' (aihwkit's estimate, set by ir_drop and "
                      "ir_drop_g_ratio); set ir_drop_model = 'circuit' to solve the wires as a "
                      "resistive network.")
        if self.adc_inl and self.out_bound == 0:
            self.fail("adc_inl is given in units of out_bound (the ADC full scale), which needs a finite "
                      "out_bound > 0; got out_bound = 0. Set out_bound, or adc_inl = [] for an ideal ADC.")
        if self.out_nonlinearity > 0 and self.out_bound == 0:
            self.fail(f"out_nonlinearity = {self.out_nonlinearity!r} needs out_bound > 0 "
                      "(its strength is out_nonlinearity/out_bound).")

    # -- derived quantities the tile model uses -------------------------------------
    @property
    def input_resolution(self) -> float | None:
        """DAC resolution as a fraction of the input range (1/steps), or None when off."""
        return None if self.is_perfect else resolution(self.inp_res)

    @property
    def output_resolution(self) -> float | None:
        """ADC resolution as a fraction of the output range (1/steps), or None when off."""
        return None if self.is_perfect else resolution(self.out_res)

    @property
    def input_step(self) -> float | None:
        """DAC step Δin = resolution · 2 · inp_bound, or None without input quantization."""
        r = self.input_resolution
        return None if r is None else r * 2.0 * self.inp_bound

    @property
    def output_step(self) -> float | None:
        """ADC step Δout = resolution · 2 · out_bound, or None without output quantization."""
        r = self.output_resolution
        return None if r is None else r * 2.0 * self.out_bound

    @property
    def output_limit(self) -> float:
        """The output clipping bound (math.inf when out_bound = 0 or is_perfect)."""
        return math.inf if self.is_perfect or self.out_bound == 0 else self.out_bound

    @property
    def is_ideal(self) -> bool:
        """True when the forward pass equals W·x up to float rounding: is_perfect, or no
        quantization, noise, IR drop (simple, or circuit with resistive wires),
        non-linearity or clipping can happen."""
        if self.is_perfect:
            return True
        inputs_fit = self.inp_bound == 0 or (self.noise_management == "abs_max" and self.nm_thres == 0)
        return (resolution(self.inp_res) is None and resolution(self.out_res) is None
                and self.inp_noise == 0 and self.out_noise == 0
                and (self.w_noise == 0 or self.w_noise_type == "none")
                and self.ir_drop == 0 and self.out_nonlinearity == 0
                and self.adc_gain_std == 0 and self.adc_offset_std == 0 and not self.adc_inl
                and (self.ir_drop_model != "circuit" or self.wire_resistance == 0)
                and self.out_bound == 0 and inputs_fit)


@documented
@dataclass(frozen=True)
class MappingParameters(Section):
    """How a layer's weight matrix is placed on tiles (aihwkit ``MappingParameter``).

    The training-only aihwkit fields ``weight_scaling_lr_compensation``,
    ``learn_out_scaling`` and ``out_scaling_columnwise`` are not modelled: for inference
    of a given weight matrix the (learned) output scales are part of the exported weights
    and weight_scaling_omega / weight_scaling_columnwise reproduce the split between the
    analog weights and the digital scales.
    """

    section: ClassVar[str] = "mapping"

    max_input_size: int = param(
        512,
        "Largest number of inputs (crossbar rows, weight-matrix columns) of one tile; a "
        "larger layer is split into ceil(n/max) equal chunks along the inputs (sizes "
        "differ by at most one, e.g. 1152 → 3 × 384), whose outputs are summed "
        "digitally. 0 means no splitting.",
        unit="inputs", valid=SIZE, aihwkit="MappingParameter.max_input_size = 512")
    max_output_size: int = param(
        512,
        "Largest number of outputs (crossbar columns, weight-matrix rows) of one tile; a "
        "larger layer is split into equal chunks along the outputs. 0 means no splitting.",
        unit="outputs", valid=SIZE, aihwkit="MappingParameter.max_output_size = 512")
    digital_bias: bool = param(
        True,
        "Keep the bias in digital (added after the tiles) instead of storing it on the "
        "crossbar as an extra input row driven with 1.",
        unit="flag", valid=bool, aihwkit="MappingParameter.digital_bias = True")
    weight_scaling_omega: float = param(
        0.0,
        "If > 0, weights are scaled so that max|W| (per layer, or per output column with "
        "weight_scaling_columnwise) becomes omega on the tile; the inverse factor is "
        "applied digitally to the outputs. 0 stores the weights unscaled.",
        unit="normalized weight", valid=NONNEG,
        aihwkit="MappingParameter.weight_scaling_omega = 0.0")
    weight_scaling_columnwise: bool = param(
        False,
        "Scale each output column separately (one digital factor per output) instead of "
        "the whole layer by one factor, when weight_scaling_omega > 0.",
        unit="flag", valid=bool, aihwkit="MappingParameter.weight_scaling_columnwise = False")
    fold_batchnorm: bool = param(
        True,
        "Fold a BatchNormalization that follows an analog Conv/Gemm into its weights and "
        "bias (as a deployed chip stores it); false keeps it digital, as aihwkit does with "
        "an unfused PyTorch model. The two differ under noise. anasim only, no aihwkit "
        "equivalent.",
        unit="flag", valid=bool, aihwkit="(none; aihwkit keeps BatchNorm digital)")

    @property
    def input_chunks(self):
        """Function ``n -> list of chunk sizes`` along the inputs (see :func:`split_sizes`)."""
        return lambda n: split_sizes(n, self.max_input_size)


def split_sizes(size: int, max_size: int) -> list[int]:
    """aihwkit's ``TileModuleArray.get_split_sizes``: ``size`` split into the fewest equal
    chunks of at most ``max_size`` (the first ``size % n`` chunks one larger);
    ``max_size <= 0`` means one chunk."""
    if max_size <= 0 or size <= max_size:
        return [size]
    n = (size + max_size - 1) // max_size
    base, extra = divmod(size, n)
    return [base + (i < extra) for i in range(n)]
