"""The tile model: one analog layer's weight matrix on physical crossbar tiles.

:class:`AnalogMatrix` takes a logical weight matrix W (out × in), maps it onto tiles the
way aihwkit 1.2 does (``TileModuleArray`` equal-chunk splitting, per-tile weight scaling
ω, digital or analog bias) and computes ``y = W x + b`` through the analog periphery of
DESIGN.md "The tile model", step 4, for a batch of input vectors.

Semantics follow aihwkit's CPU simulator (``ForwardBackwardPassIOManaged::forwardVector``
in ``src/rpucuda/rpu_forward_backward_pass.cpp``) operation by operation in float32, so
that deterministic settings reproduce aihwkit up to BLAS summation order (checked on
``shared/golden/aihwkit_tiles.npz``). Where a choice was made it is noted at the code.

The operations, in the order the code runs them: noise management, DAC quantization and
clipping, input noise, MVM, IR drop, output-referred weight noise, output non-linearity,
output noise, ADC quantization and clipping, iterative bound management, rescaling,
digital accumulation of the tiles' partial sums, digital bias. Per tile and input vector
x (the tile's slice of the layer input):

1. noise management α (abs_max / max / constant / none) and the input scale
   s = (1/α)/red, red the bound-management reduction (1, 2, 4, ...);
2. DAC: v = clip(rint((x·s)/Δin)·Δin, ±inp_bound) (or stochastic rounding), + inp_noise ξ;
3. MVM y = W_tile ṽ (BLAS);
4. IR drop, output-referred weight noise, non-linearity, out_noise, the column's ADC
   transfer gain_i·T(y + offset_i) (per-chip mismatch and INL curve, when configured:
   :func:`anasim.kernels.stages.adc_transfer`), ADC rint(y/Δout)·Δout and clipping at
   ±out_bound;
5. iterative bound management re-runs only the saturated vectors with red doubled
   (a vector is saturated if an output exceeded +out_bound, or -out_bound when
   ``bm_test_negative_bound``; aihwkit's CUDA semantics, see ``cpu.finalize_output``)
   until none is, or ``red`` passes ``max_bm_factor`` or ``max_bm_res / Δin``;
6. y · (out_scale/s) · mapping scale · post scale, summed over the input tiles, + bias.

The per-tile effective weights live in ``tiles[k].weight`` (programmed conductances
converted back to weights); device models replace them with :meth:`set_tile_weights`.

``[bit_slicing]`` (:mod:`.slicing`): with weight slices every chunk of the matrix is
``n_slices`` consecutive tiles (tile k = chunk · n_slices + s), each holding one digit of
the quantized weights and its place value in its mapping scale; with bit-serial input
steps 2-6 run once per input cycle on that cycle's drives (its own random streams,
:meth:`AnalogMatrix.cycle_keys`), each cycle's output added with its shift.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace

import numpy as np

from ..config.presets import AIHWKIT_FORWARD, AIHWKIT_MAPPING
from ..config.schema import inl_table
from ..errors import ConfigError
from ..kernels import cpu, stages
from ..kernels.blas import rows_times
from . import ir_circuit
from . import slicing as slicing_mod
from ..kernels.rng import PURPOSE, READOUT, normals_numpy, stream_key

_STREAMS = ("inp_noise", "out_noise", "w_noise", "inp_sto_round", "out_sto_round")
"""The forward pass's random streams of one tile (keys from :func:`stream_key`)."""

__all__ = ["AnalogMatrix", "PhysicalTile", "split_sizes", "Periphery", "SERIAL"]


class _Kernels:
    """The three periphery kernels of :mod:`anasim.kernels.cpu` a forward pass calls: the
    row-parallel ones or their serial twins (``*_serial``). Looked up at each call, so a
    patched ``cpu`` module (tests) takes effect."""

    def __init__(self, suffix: str):
        self._suffix = suffix

    def __getattr__(self, name):
        return getattr(cpu, name + self._suffix)


_PARALLEL = _Kernels("")
SERIAL = _Kernels("_serial")
"""Single-threaded, GIL-free kernels for :meth:`AnalogMatrix.forward_into` on worker threads."""

#: aihwkit ``IOParameters`` fields that ``[forward]`` does not have, at aihwkit's defaults
#: (read from aihwkit-like objects; the first five must stay 0).
_UNCONFIGURED = {"v_offset_std": 0.0, "r_series": 0.0, "inp_asymmetry": 0.0, "out_asymmetry": 0.0,
                 "w_read_asymmetry_dtod": 0.0, "out_noise_std": 0.0, "out_nonlinearity_std": 0.0,
                 "slope_calibration": 0.0, "out_scale": 1.0}

_NM = {"none": cpu.NM_NONE, "abs_max": cpu.NM_ABS_MAX, "max": cpu.NM_MAX, "constant": cpu.NM_CONSTANT}
_WN = {"none": cpu.WN_NONE, "additive_constant": cpu.WN_ADDITIVE, "pcm_read": cpu.WN_PCM_READ}
_BM = {"none": False, "iterative": True}
_IR_MODELS = {"simple": False, "circuit": True}


def _choice(value, table, name):
    """Normalise an enum-like value (str, Enum with str value or name) to a table entry."""
    key = getattr(value, "value", value)
    if not isinstance(key, str):
        key = getattr(value, "name", str(value))
    key = str(key).lower()
    if key not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}; got {value!r}")
    return table[key]


def split_sizes(size: int, max_size: int) -> list[int]:
    """aihwkit's equal-chunk split (``TileModuleArray.get_split_sizes``).

    ``n = ceil(size / max_size)`` chunks; the first ``size mod n`` get one element more.
    ``max_size <= 0`` means no split. E.g. 1152 / 512 -> [384, 384, 384]; 70 / 32 ->
    [24, 23, 23].
    """
    if max_size <= 0 or size <= max_size:
        return [size]
    n = (size + max_size - 1) // max_size
    base, extra = divmod(size, n)
    return [base + (i < extra) for i in range(n)]


def _inl_points(points, out_bound: float) -> tuple:
    """``adc_inl`` as a hashable tuple of (input, output) pairs, checked as
    :func:`anasim.config.schema.inl_table` does (for aihwkit-like objects that bypass the
    configuration)."""
    points = [] if points is None else [list(p) if isinstance(p, (list, tuple)) else p for p in points]
    msg = inl_table(points)
    if msg:
        raise ConfigError(f"forward parameter 'adc_inl' must be {msg}; got {points!r}.")
    if points and not 0 < out_bound < np.inf:
        raise ConfigError("forward parameter 'adc_inl' is in units of out_bound, which needs a finite "
                          f"out_bound > 0; got out_bound = {out_bound!r}.")
    return tuple((float(a), float(b)) for a, b in points)


def _step(res, bound) -> np.float32:
    """aihwkit's converter step: ``checkRes(res) * 2 * bound`` in float32.

    ``checkRes``: negative -> 0, > 1 -> 1/res (a number of steps), else unchanged
    (``detail::checkAndSetRes`` in ``rpu_pulsed_meta_parameter.cpp``). <= 0 means no
    quantization.
    """
    r = np.float32(res)
    r = np.float32(0.0) if r < 0 else r
    if r > 1:
        r = np.float32(1.0) / r
    return np.float32(r * (np.float32(2.0) * np.float32(bound)))


@dataclass(frozen=True)
class Periphery:
    """Forward parameters normalised to what the kernels need (float32, codes)."""

    perfect: bool
    nm_type: int
    nm_thres: np.float32
    inp_step: np.float32
    inp_bound: np.float32
    inp_noise: np.float32
    inp_sto_round: bool
    out_step: np.float32
    out_bound: np.float32
    out_noise: np.float32
    out_noise_std: np.float32
    out_sto_round: bool
    wn_type: int
    w_noise: np.float32
    ir_drop: np.float32
    ir_drop_g_ratio: np.float32
    out_nonlinearity: np.float32
    out_nonlinearity_std: np.float32
    slope_calibration: np.float32
    bm: bool
    bm_test_negative_bound: bool
    max_bm_factor: int
    max_bm_res: np.float32
    out_scale: np.float32
    # circuit IR-drop model (anasim.analog.ir_circuit): on/off, Ω, S, stop rule
    ir_circuit: bool = False
    wire_resistance: float = 0.0
    g_max_siemens: float = 5e-6
    ir_drop_tol: float = 1e-6
    ir_drop_max_iter: int = 200
    # ADC mismatch (drawn per chip, anasim.analog.tile.AnalogMatrix.draw_adc_mismatch) and INL
    adc_gain_std: float = 0.0
    adc_offset_std: float = 0.0
    adc_inl: tuple = ()
    """((input, output), ...) in units of out_bound; () for none."""

    @property
    def adc_on(self) -> bool:
        """Whether the ADC stage applies per-column offsets, gains or an INL curve."""
        return not self.perfect and (self.adc_gain_std > 0 or self.adc_offset_std > 0 or bool(self.adc_inl))

    def inl_table(self) -> np.ndarray:
        """The INL curve as the kernels take it (:func:`anasim.kernels.stages.inl_curve`):
        (3, n) float32 inputs, outputs (in output units: the configured points times
        out_bound) and run/rise per segment (+inf where flat); (3, 0) for none."""
        if not self.adc_inl:
            return np.zeros((3, 0), np.float32)
        pts = np.asarray(self.adc_inl, np.float32).reshape(-1, 2) * np.float32(self.out_bound)
        table = np.zeros((3, len(pts)), np.float32)
        table[0], table[1] = pts[:, 0], pts[:, 1]
        with np.errstate(divide="ignore", over="ignore"):  # a flat (or nearly flat) segment: +inf
            table[2, :-1] = np.diff(table[0]) / np.diff(table[1])
        table[2, -1] = np.inf
        return table

    @classmethod
    def from_params(cls, fp) -> "Periphery":
        """Read an aihwkit-named forward-parameter object (duck typed: a
        :class:`~anasim.config.ForwardParameters`, an aihwkit ``IOParameters``, a
        namespace). A field it does not have takes aihwkit's ``IOParameters()`` default,
        from :data:`anasim.config.AIHWKIT_FORWARD` (the one copy of those defaults); the
        aihwkit fields anasim does not configure default to their aihwkit values below."""
        g = lambda name: getattr(fp, name, AIHWKIT_FORWARD[name])  # noqa: E731
        x = lambda name: getattr(fp, name, _UNCONFIGURED[name])  # noqa: E731
        for name in ("v_offset_std", "r_series", "inp_asymmetry", "out_asymmetry", "w_read_asymmetry_dtod"):
            if float(x(name)) != 0.0:
                raise ConfigError(
                    f"forward parameter {name!r} = {x(name)!r}: the tile model supports only 0 (aihwkit's "
                    "default); leave it out of the configuration.")
        nm_type = _choice(g("noise_management"), _NM, "noise_management")
        circuit = _choice(g("ir_drop_model"), _IR_MODELS, "ir_drop_model")
        if circuit and float(g("ir_drop")) > 0:
            raise ConfigError(
                f"forward parameter 'ir_drop' = {g('ir_drop')!r} with ir_drop_model = 'circuit': the circuit "
                "model replaces the simple IR-drop estimate (the wires would count twice); set ir_drop = 0.")
        inp_bound = float(g("inp_bound"))
        out_bound = float(g("out_bound"))
        return cls(
            perfect=bool(g("is_perfect")),
            nm_type=nm_type,
            # aihwkit zeroes nm_thres when noise management is off (initializeForForward)
            nm_thres=np.float32(g("nm_thres") if nm_type != cpu.NM_NONE else 0.0),
            inp_step=_step(g("inp_res"), inp_bound),
            inp_bound=np.float32(inp_bound if inp_bound > 0 else np.inf),
            inp_noise=np.float32(g("inp_noise")),
            inp_sto_round=bool(g("inp_sto_round")),
            out_step=_step(g("out_res"), out_bound),
            out_bound=np.float32(out_bound if out_bound > 0 else np.inf),
            out_noise=np.float32(g("out_noise")),
            out_noise_std=np.float32(x("out_noise_std")),
            out_sto_round=bool(g("out_sto_round")),
            wn_type=_choice(g("w_noise_type"), _WN, "w_noise_type"),
            w_noise=np.float32(g("w_noise")),
            ir_drop=np.float32(g("ir_drop")),
            ir_drop_g_ratio=np.float32(g("ir_drop_g_ratio")),
            out_nonlinearity=np.float32(g("out_nonlinearity")),
            out_nonlinearity_std=np.float32(x("out_nonlinearity_std")),
            slope_calibration=np.float32(x("slope_calibration")),
            bm=_choice(g("bound_management"), _BM, "bound_management"),
            bm_test_negative_bound=bool(g("bm_test_negative_bound")),
            max_bm_factor=int(g("max_bm_factor")),
            max_bm_res=np.float32(g("max_bm_res")),
            out_scale=np.float32(x("out_scale")),
            ir_circuit=circuit,
            wire_resistance=float(g("wire_resistance")),
            g_max_siemens=float(g("g_max_siemens")),
            ir_drop_tol=float(g("ir_drop_tol")),
            ir_drop_max_iter=int(g("ir_drop_max_iter")),
            adc_gain_std=float(g("adc_gain_std")),
            adc_offset_std=float(g("adc_offset_std")),
            adc_inl=_inl_points(g("adc_inl"), out_bound),
        )

    def kernel_params(self) -> stages.Periphery:
        """These parameters as the fused kernels take them (one named tuple of scalars)."""
        wn = self.wn_type if self.w_noise > 0 else cpu.WN_NONE
        red_max = np.float32(self.max_bm_res / self.inp_step) if self.inp_step > 0 else np.float32(np.inf)
        return stages.Periphery(
            nm_type=int(self.nm_type), nm_thres=self.nm_thres, inp_step=self.inp_step,
            inp_bound=self.inp_bound, inp_noise=self.inp_noise, inp_sto_round=self.inp_sto_round,
            out_step=self.out_step, out_bound=self.out_bound, out_sto_round=self.out_sto_round,
            wn_type=int(wn), w_noise=self.w_noise, ir_drop=self.ir_drop,
            ir_drop_g_ratio=self.ir_drop_g_ratio, bm=self.bm,
            bm_test_negative_bound=self.bm_test_negative_bound, max_bm_factor=int(self.max_bm_factor),
            bm_red_max=red_max, out_scale=self.out_scale, adc_on=self.adc_on)

    def bm_limit_reached(self, red: np.float32) -> bool:
        """aihwkit's stop rule, checked after a pass at reduction ``red``.

        ``(int)red > max_bm_factor || (inp_res > 0 && red > max_bm_res / inp_res)``
        with ``inp_res`` the scaled DAC step (``forwardVector``).
        """
        if int(red) > self.max_bm_factor:
            return True
        return bool(self.inp_step > 0 and np.float32(red) > np.float32(self.max_bm_res / self.inp_step))


_TICKETS = itertools.count(1)
_TILE_STATE = [0]
_PROCESS = os.urandom(8)  # what was packed in another process (and pickled) never matches


def tile_state() -> tuple:
    """A value that changes whenever an attribute of any :class:`PhysicalTile` is assigned
    (new weights after programming or drift, new scales, ADC vectors, ...): what was
    packed from tiles is still theirs while it is unchanged. Each assignment takes a new
    ticket (``next`` on a counter is atomic), so a value once replaced never comes back;
    the process's random token keeps apart the counts of processes that did not fork."""
    return _PROCESS, _TILE_STATE[0]


@dataclass
class PhysicalTile:
    """One crossbar tile: a chunk of the (ω-scaled) weight matrix and its digital scales.

    Attributes
    ----------
    index : tile number k = in_chunk * n_out_chunks + out_chunk (aihwkit ``array[i][j]``).
    in_start, in_stop, out_start, out_stop : the chunk in the layer's input / output.
    target : (n_out, n_in) float32, the weights to program (after ω scaling), read-only.
    weight : (n_out, n_in) float32, the effective weights the MVM uses (= target until
        a device model replaces them).
    mapping_scale : (n_out,) float32 digital output factor from ω scaling (ones if none).
    post_scale : (n_out,) float32 further digital factor applied after the mapping scale
        (drift compensation); ones by default.
    """

    index: int
    in_start: int
    in_stop: int
    out_start: int
    out_stop: int
    target: np.ndarray
    weight: np.ndarray
    mapping_scale: np.ndarray
    post_scale: np.ndarray
    nl_vec: np.ndarray | None = None
    noise_vec: np.ndarray | None = None
    nlf: np.float32 = np.float32(1.0)
    adc_offset: np.ndarray | None = None
    """(n_out,) float32 input-referred ADC offset per column (None: no ADC mismatch/INL)."""
    adc_gain: np.ndarray | None = None
    """(n_out,) float32 ADC gain per column (None: no ADC mismatch/INL)."""
    _abs: np.ndarray | None = field(default=None, repr=False)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name != "_abs":
            _TILE_STATE[0] = next(_TICKETS)  # after the assignment: see tile_state

    @property
    def n_in(self) -> int:
        return self.in_stop - self.in_start

    @property
    def n_out(self) -> int:
        return self.out_stop - self.out_start

    @property
    def abs_weight(self) -> np.ndarray:
        """|weight| (cached; used by pcm_read weight noise and IR drop)."""
        if self._abs is None:
            self._abs = np.abs(self.weight)
        return self._abs


class AnalogMatrix:
    """An analog layer's weight matrix on tiles, with aihwkit's forward periphery.

    Parameters
    ----------
    weight : (out, in) array, the logical weight W (y = W x + b).
    bias : (out,) array or None.
    forward : forward parameters with aihwkit ``IOParameters`` names (duck typed;
        missing fields take aihwkit's defaults).
    mapping : mapping parameters (``max_input_size``, ``max_output_size``,
        ``digital_bias``, ``weight_scaling_omega``, ``weight_scaling_columnwise``).
    key : (seed, layer_index) of the random streams.

    Mapping (aihwkit 1.2):

    * splitting (``TileModuleArray``): the layer is split only if
      ``in > max_input_size`` or ``out > max_output_size``, into equal chunks
      (:func:`split_sizes`); a split layer's bias is always digital.
    * weight scaling ω (``TileWithPeriphery.apply_weight_scaling``), per *tile* (each
      tile of a split layer scales its own chunk): α = max|W| / ω (per output row if
      ``weight_scaling_columnwise``), α = 1 where it is 0; the tile holds W/α and its
      output is multiplied by α in digital.
    * ``digital_bias=False`` on an unsplit layer: the bias is an extra weight column
      fed by a constant input 1.0 (aihwkit ``forwardVectorBias``), so it goes through
      ω scaling, noise management, DAC and ADC like any weight.
    """

    def __init__(self, weight, bias=None, forward=None, mapping=None, key=(0, 0), slicing=None):
        w = np.asarray(weight, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out x in), got shape {w.shape}")
        self.out_size, self.in_size = w.shape
        self.forward_params = forward
        self.periphery = Periphery.from_params(forward if forward is not None else object())
        self.seed, self.layer = int(key[0]), int(key[1])
        g = lambda name: getattr(mapping, name, AIHWKIT_MAPPING[name])  # noqa: E731  (aihwkit's defaults)
        self.in_sizes = split_sizes(self.in_size, int(g("max_input_size")))
        self.out_sizes = split_sizes(self.out_size, int(g("max_output_size")))
        split = len(self.in_sizes) > 1 or len(self.out_sizes) > 1
        b = None if bias is None else np.asarray(bias, dtype=np.float32).reshape(self.out_size)
        self.analog_bias = b is not None and not split and not bool(g("digital_bias"))
        self.bias = None if (b is None or self.analog_bias) else b
        if self.analog_bias:
            w = np.concatenate([w, b[:, None]], axis=1)
            self.in_sizes = [self.in_size + 1]
        omega = float(g("weight_scaling_omega") or 0.0)
        columnwise = bool(g("weight_scaling_columnwise"))
        sl = lambda name, default: getattr(slicing, name, default)  # noqa: E731  ([bit_slicing])
        self.slice_bits = int(sl("weight_bits_per_slice", 0))
        self.n_slices = int(sl("weight_slices", 1)) if self.slice_bits else 1
        p = self.periphery
        if not p.perfect:
            slicing_mod.check_weight_slicing(self.slice_bits, float(p.out_step), float(p.out_bound))
        in_bits = int(sl("input_bits_per_cycle", 0))
        self.input_cycles = None
        if in_bits and not p.perfect:
            self.input_cycles = slicing_mod.InputCycles.build(
                in_bits, str(sl("input_encoding", "sign_magnitude")), float(p.inp_step), float(p.inp_bound),
                p.inp_sto_round, p.bm)
        self.tiles: list[PhysicalTile] = []
        i0 = 0
        for n_in in self.in_sizes:
            o0 = 0
            for n_out in self.out_sizes:
                chunk = w[o0:o0 + n_out, i0:i0 + n_in]
                target, scale = _weight_scaling(chunk, omega, columnwise)
                # weight slices: one tile per slice, in place order (tile k = chunk·n_slices + s)
                for part, place in slicing_mod.slice_weights(target, self.n_slices, self.slice_bits):
                    part.setflags(write=False)
                    tile = PhysicalTile(
                        index=len(self.tiles), in_start=i0, in_stop=i0 + n_in, out_start=o0,
                        out_stop=o0 + n_out, target=part, weight=part,
                        mapping_scale=scale if self.slice_bits == 0 else (scale * place).astype(np.float32),
                        post_scale=np.ones(n_out, np.float32),
                    )
                    self._init_fixed_variation(tile)
                    self.tiles.append(tile)
                o0 += n_out
            i0 += n_in
        self._keys: dict = {}
        self._inl = (None, None)
        self.draw_adc_mismatch(0)

    # ------------------------------------------------------------------ weights
    @property
    def inl(self) -> np.ndarray:
        """The INL table of the current periphery (:meth:`Periphery.inl_table`; follows a
        calibrated out_bound)."""
        if self._inl[0] is not self.periphery:
            self._inl = (self.periphery, self.periphery.inl_table())
        return self._inl[1]

    @property
    def tiles_per_input_chunk(self) -> int:
        """Tiles of one input chunk: output chunks × weight slices (consecutive in :attr:`tiles`)."""
        return self.n_out_chunks * self.n_slices

    @property
    def n_in_chunks(self) -> int:
        return len(self.in_sizes)

    @property
    def n_out_chunks(self) -> int:
        return len(self.out_sizes)

    def set_tile_weights(self, weights) -> None:
        """Replace the effective weights of every tile (e.g. after programming / drift).

        ``weights`` is a list with one (n_out, n_in) array per tile, in tile order.
        """
        weights = list(weights)
        if len(weights) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} tile weights, got {len(weights)}")
        for t, wk in zip(self.tiles, weights):
            wk = np.ascontiguousarray(wk, dtype=np.float32)
            if wk.shape != (t.n_out, t.n_in):
                raise ValueError(f"tile {t.index}: expected shape {(t.n_out, t.n_in)}, got {wk.shape}")
            t.weight = wk
            t._abs = None

    def set_post_scales(self, scales) -> None:
        """Set the per-tile digital factors applied after the mapping scales (list of (n_out,))."""
        scales = list(scales)
        if len(scales) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} scale vectors, got {len(scales)}")
        for t, s in zip(self.tiles, scales):
            t.post_scale = np.ascontiguousarray(np.broadcast_to(np.asarray(s, np.float32), (t.n_out,)))

    def set_mapping_scales(self, scales) -> None:
        """Set the per-tile digital factors of weight scaling ω (list of (n_out,); e.g. restored
        from a saved state)."""
        scales = list(scales)
        if len(scales) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} scale vectors, got {len(scales)}")
        for t, s in zip(self.tiles, scales):
            t.mapping_scale = np.ascontiguousarray(np.broadcast_to(np.asarray(s, np.float32), (t.n_out,)))

    def effective_weight(self) -> np.ndarray:
        """The logical (out × in) matrix the tiles currently represent (scales applied)."""
        w = np.zeros((self.out_size, sum(self.in_sizes)), np.float32)
        for t in self.tiles:
            w[t.out_start:t.out_stop, t.in_start:t.in_stop] += (  # weight slices add up
                t.weight * (t.mapping_scale * t.post_scale)[:, None]
            )
        return w[:, : self.in_size]

    def _init_fixed_variation(self, t: PhysicalTile) -> None:
        """Per-output constants drawn once per tile (aihwkit ``populateFBParameter``)."""
        p = self.periphery
        if p.perfect:
            return
        idx = np.arange(t.n_out)
        if p.out_nonlinearity > 0:
            ob = p.out_bound if 0 < p.out_bound < np.inf else np.float32(1.0)
            g = np.zeros(t.n_out, np.float32)
            if p.out_nonlinearity_std > 0:
                g = normals_numpy(0, idx, stream_key(self.seed, self.layer, t.index, "out_nonlinearity"))
            std = max(p.out_nonlinearity_std, np.float32(0.0))
            t.nl_vec = np.abs(p.out_nonlinearity / ob * (np.float32(1.0) + std * g)).astype(np.float32)
            if p.slope_calibration > 0:
                mean_nl = np.float32(np.abs(t.nl_vec).sum() / np.float32(t.n_out))
                f = np.float32(1.0) + mean_nl * p.slope_calibration * ob
                t.nlf = np.float32(f * f)
        if p.out_noise > 0 or p.out_noise_std > 0:
            if p.out_noise_std > 0:
                g = normals_numpy(0, idx, stream_key(self.seed, self.layer, t.index, "out_noise_std"))
                t.noise_vec = np.abs(p.out_noise * (np.float32(1.0) + p.out_noise_std * g)).astype(np.float32)
            else:
                t.noise_vec = np.full(t.n_out, p.out_noise, np.float32)

    def draw_adc_mismatch(self, repetition: int) -> None:
        """Draw every tile column's ADC offset and gain for the chip of Monte-Carlo
        ``repetition`` (a freshly programmed chip has its own): offset adc_offset_std·ξ,
        gain 1 + adc_gain_std·ξ', ξ, ξ' standard normal from the streams 'adc_offset' and
        'adc_gain' of (seed, layer, tile, repetition), element = column. With only an INL
        curve the offsets are 0 and the gains 1; without either the tiles hold None."""
        p = self.periphery
        for t in self.tiles:
            if not p.adc_on:
                t.adc_offset = t.adc_gain = None
                continue
            idx = np.arange(t.n_out)
            off = np.zeros(t.n_out, np.float32)
            gain = np.ones(t.n_out, np.float32)
            if p.adc_offset_std > 0:
                xi = normals_numpy(0, idx, stream_key(self.seed, self.layer, t.index, "adc_offset", repetition))
                off = (np.float32(p.adc_offset_std) * xi).astype(np.float32)
            if p.adc_gain_std > 0:
                xi = normals_numpy(0, idx, stream_key(self.seed, self.layer, t.index, "adc_gain", repetition))
                gain = (np.float32(1.0) + np.float32(p.adc_gain_std) * xi).astype(np.float32)
            t.adc_offset, t.adc_gain = off, gain

    def set_adc_mismatch(self, offsets, gains) -> None:
        """Set every tile's ADC offsets and gains (lists of (n_out,), e.g. from a saved chip state)."""
        offsets, gains = list(offsets), list(gains)
        if len(offsets) != len(self.tiles) or len(gains) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} offset and gain vectors, got {len(offsets)}, {len(gains)}")
        for t, o, g in zip(self.tiles, offsets, gains):
            t.adc_offset = np.ascontiguousarray(np.broadcast_to(np.asarray(o, np.float32), (t.n_out,)))
            t.adc_gain = np.ascontiguousarray(np.broadcast_to(np.asarray(g, np.float32), (t.n_out,)))

    def stream_keys(self, tile: int, repetition: int) -> dict:
        """Philox keys of one tile's random streams for one repetition (cached)."""
        k = (tile, repetition)
        if k not in self._keys:
            self._keys[k] = {name: stream_key(self.seed, self.layer, tile, name, repetition) for name in _STREAMS}
        return self._keys[k]

    # ------------------------------------------------------------------ forward
    def forward(self, x, row_ids=None, repetition: int = 0) -> np.ndarray:
        """y = W x + b through the analog tiles, for every row of ``x``.

        Parameters
        ----------
        x : (M, in) float32 input vectors (one per row).
        row_ids : (M,) int64 global ids of the rows (counters of the random numbers);
            default ``arange(M)``. Give the same ids to get the same noise regardless
            of batch composition.
        repetition : repetition index (part of the random-stream key).

        Returns
        -------
        (M, out) float32.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_size:
            raise ValueError(f"x must have shape (M, {self.in_size}), got {x.shape}")
        m = x.shape[0]
        if row_ids is None:
            row_ids = np.arange(m, dtype=np.int64)
        row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
        if row_ids.shape != (m,):
            raise ValueError(f"row_ids must have shape ({m},), got {row_ids.shape}")
        if self.analog_bias:
            x = np.concatenate([x, np.ones((m, 1), np.float32)], axis=1)
        acc = np.zeros((m, self.out_size), np.float32)
        self.forward_into(x, row_ids, repetition, acc, _PARALLEL)
        if self.bias is not None:
            acc += self.bias
        return acc

    __call__ = forward

    def forward_into(self, x, row_ids, repetition, acc, kernels=None) -> None:
        """``acc += W x`` through the tiles, without the digital bias (the core of :meth:`forward`).

        ``x`` is (M, in) float32 C-contiguous, with the extra column of ones already
        appended when the bias is analog (``analog_bias``); ``row_ids`` (M,) int64;
        ``acc`` (M, out) float32 C-contiguous. ``kernels`` picks the periphery kernels:
        the row-parallel ones (default) or :data:`SERIAL` ones, for worker threads that
        each run a block of rows (same results).
        """
        if not x.shape[0]:
            return
        if self.periphery.perfect:
            self._forward_perfect(x, acc)
            return
        kern = _PARALLEL if kernels is None else kernels
        per = self.tiles_per_input_chunk
        for i in range(self.n_in_chunks):
            cache = {}
            for t in self.tiles[i * per:(i + 1) * per]:
                self._forward_tile(t, x, row_ids, repetition, acc, cache, kern)

    def _forward_perfect(self, x, acc) -> None:
        """is_perfect: plain product per tile, then out_scale and the digital scales."""
        p = self.periphery
        for t in self.tiles:
            y = rows_times(x[:, t.in_start:t.in_stop], t.weight)
            if p.out_scale != 1:
                y *= p.out_scale
            y *= t.mapping_scale
            y *= t.post_scale
            acc[:, t.out_start:t.out_stop] += y

    def _prepare(self, t, x, col0, row_ids, keys, red, rnd, kern=None, dac_only=False):
        """Steps 1-2 on the tile's inputs; ``dac_only``: noise management and DAC alone (no
        input noise, no by-products), the codes a bit-serial input splits into cycles."""
        p = self.periphery
        return (kern or _PARALLEL).prepare_input(
            x, col0, t.n_in, row_ids, nm_type=p.nm_type, nm_thres=p.nm_thres, res=p.inp_step,
            bound=p.inp_bound, inp_noise=0.0 if dac_only else p.inp_noise, sto_round=p.inp_sto_round,
            red=red, rnd=rnd, noise_key=keys["inp_noise"], sto_key=keys["inp_sto_round"],
            want_norm=not dac_only and p.wn_type == cpu.WN_ADDITIVE and p.w_noise > 0,
            want_sq=not dac_only and p.wn_type == cpu.WN_PCM_READ and p.w_noise > 0,
            want_ir=not dac_only and p.ir_drop > 0,
        )

    def cycle_keys(self, keys: dict, cycle: int) -> dict:
        """The random streams of bit-serial input cycle ``cycle`` of a tile whose streams are
        ``keys``: each stream's key mixed with the cycle (purpose 'input_cycle'; cached)."""
        k = ("cycle", tuple(keys[name] for name in _STREAMS), cycle)
        if k not in self._keys:
            self._keys[k] = {name: stream_key(keys[name][0], keys[name][1], cycle, "input_cycle")
                             for name in _STREAMS}
        return self._keys[k]

    def _forward_bit_serial(self, t, x, row_ids, acc, cache, kern, keys) -> None:
        """Bit-serial input (``[bit_slicing] input_bits_per_cycle``): the DAC codes of the
        tile's inputs split into cycles (:func:`anasim.kernels.stages.input_cycle`); each
        cycle's drives get their own input noise, then MVM and every output stage, and the
        cycle's output is added into ``acc`` shifted by its place value (through the input
        scale: (1/α)/shift_j)."""
        p, cyc = self.periphery, self.input_cycles
        prep = cache.get("prep")  # the DAC is deterministic here (stochastic rounding is refused)
        if prep is None:
            prep = cache["prep"] = self._prepare(t, x, t.in_start, row_ids, keys, np.float32(1.0), 0, kern,
                                                 dac_only=True)
        for j in range(cyc.n_cycles):
            ck = self.cycle_keys(keys, j)
            pj = cache.get(("cycle", j)) if p.inp_noise <= 0 else None
            if pj is None:
                drive = kern.input_cycle(prep["xt"], p.inp_step, cyc.drive, j, cyc.bits, cyc.n_cycles, cyc.twos)
                pj = kern.prepare_input(
                    drive, 0, t.n_in, row_ids, nm_type=cpu.NM_NONE, res=0.0, bound=np.inf, inp_noise=p.inp_noise,
                    noise_key=ck["inp_noise"], sto_key=ck["inp_sto_round"],
                    want_norm=p.wn_type == cpu.WN_ADDITIVE and p.w_noise > 0,
                    want_sq=p.wn_type == cpu.WN_PCM_READ and p.w_noise > 0, want_ir=p.ir_drop > 0)
                if p.inp_noise <= 0:  # aihwkit's zero-output short cut, decided on the whole word
                    pj["skip"] = prep["skip"]
                if p.inp_noise <= 0:
                    cache[("cycle", j)] = pj
            scale = (prep["scale"] / np.float32(cyc.shift(j))).astype(np.float32)
            self._analog(t, pj, row_ids, ck, 0, acc=acc, scale=scale, kern=kern)

    def _mvm(self, t, xt, kern=None) -> np.ndarray:
        """Step 3, the tile's product of prepared inputs: ``x̃ Wᵀ`` (BLAS), or with
        ``ir_drop_model = 'circuit'`` the resistive-network solve of
        :mod:`anasim.analog.ir_circuit` (serial on worker threads)."""
        p = self.periphery
        if not p.ir_circuit:
            return rows_times(xt, t.weight)
        return ir_circuit.crossbar_mvm(
            xt, t.weight, p.wire_resistance, p.g_max_siemens, tol=p.ir_drop_tol,
            max_iter=p.ir_drop_max_iter, serial=kern is SERIAL,
            where=f"tile {t.index} of analog matrix {self.layer} (seed {self.seed})")

    def _analog(self, t, prep, row_ids, keys, rnd, acc=None, scale=None, kern=None):
        """MVM + output processing of prepared inputs; returns (y, fail)."""
        p = self.periphery
        y = self._mvm(t, prep["xt"], kern)
        extra = {}
        if p.ir_drop > 0:
            extra.update(
                ir_drop=p.ir_drop, a_scale=np.float32(np.float32(t.n_in) / p.ir_drop_g_ratio),
                cur=rows_times(prep["xabs"], t.abs_weight), irm=rows_times(prep["xir"], t.weight),
            )
        if p.w_noise > 0 and p.wn_type == cpu.WN_ADDITIVE:
            extra.update(wn_type=p.wn_type, w_noise=p.w_noise, xnorm=prep["xnorm"])
        elif p.w_noise > 0 and p.wn_type == cpu.WN_PCM_READ:
            extra.update(wn_type=p.wn_type, w_noise=p.w_noise, pw=rows_times(prep["xsq"], t.abs_weight))
        if acc is not None:
            extra.update(acc=acc, col0=t.out_start, scale=scale, out_scale=p.out_scale,
                         ms=t.mapping_scale, post=t.post_scale)
        fail = (kern or _PARALLEL).finalize_output(
            y, prep["skip"], row_ids, res=p.out_step, bound=p.out_bound, bm=p.bm,
            test_neg=p.bm_test_negative_bound, nl_vec=t.nl_vec, nlf=t.nlf, noise_vec=t.noise_vec,
            sto_round=p.out_sto_round, rnd=rnd, noise_key=keys["out_noise"], w_key=keys["w_noise"],
            sto_key=keys["out_sto_round"], adc_offset=t.adc_offset, adc_gain=t.adc_gain,
            inl=self.inl if t.adc_gain is not None else None, **extra,
        )
        return y, fail

    def readout(self, t: PhysicalTile, x: np.ndarray, weight: np.ndarray, repetition: int,
                t_inference: float) -> np.ndarray:
        """Tile ``t``'s own forward pass on the readout vectors ``x`` ((n, t.n_in)), with
        ``weight`` in place of its current one: every periphery stage including bound
        management, without the digital mapping and post scales -- what aihwkit's
        ``InferenceTile`` reads for drift compensation (``tile.forward(readout_tensor,
        is_test=True)``). Its random streams are its own: purposes ``READOUT + ...``, keyed by
        (seed, layer, tile, repetition, t_inference), rows 0..n-1; deterministic, and
        independent of the data's noise. Returns (n, t.n_out) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        p = self.periphery
        if p.perfect:
            y = rows_times(x, weight)
            return y * p.out_scale if p.out_scale != 1 else y
        ones = np.ones(t.n_out, np.float32)
        view = replace(t, in_start=0, in_stop=t.n_in, out_start=0, out_stop=t.n_out, weight=weight,
                       mapping_scale=ones, post_scale=ones, _abs=None)
        tbits = int(np.float64(t_inference).view(np.uint64))
        keys = {name: stream_key(self.seed, self.layer, t.index, READOUT + PURPOSE[name], repetition, tbits)
                for name in _STREAMS}
        acc = np.zeros((x.shape[0], t.n_out), np.float32)
        self._forward_tile(view, x, np.arange(x.shape[0], dtype=np.int64), repetition, acc, {}, _PARALLEL, keys)
        return acc

    def _forward_tile(self, t, x, row_ids, repetition, acc, cache, kern=None, keys=None) -> None:
        kern = kern or _PARALLEL
        p = self.periphery
        keys = self.stream_keys(t.index, repetition) if keys is None else keys
        if self.input_cycles is not None:
            self._forward_bit_serial(t, x, row_ids, acc, cache, kern, keys)
            return
        deterministic_input = p.inp_noise <= 0 and not p.inp_sto_round
        prep = cache.get("prep") if deterministic_input else None
        if prep is None:
            prep = self._prepare(t, x, t.in_start, row_ids, keys, np.float32(1.0), 0, kern)
            if deterministic_input:
                cache["prep"] = prep  # same for every output chunk of this input chunk
        if not p.bm:
            self._analog(t, prep, row_ids, keys, 0, acc=acc, scale=prep["scale"], kern=kern)
            return
        y, fail = self._analog(t, prep, row_ids, keys, 0, kern=kern)
        scale = prep["scale"].copy()
        idx = np.arange(x.shape[0])
        red, rnd = np.float32(1.0), 0
        while not p.bm_limit_reached(red):
            sub = np.flatnonzero(fail)
            if sub.size == 0:
                break
            idx = idx[sub]
            red, rnd = np.float32(red * 2), rnd + 1
            xs = np.ascontiguousarray(x[idx, t.in_start:t.in_stop])
            rs = row_ids[idx]
            prep2 = self._prepare(t, xs, 0, rs, keys, red, rnd, kern)
            y2, fail = self._analog(t, prep2, rs, keys, rnd, kern=kern)
            y[idx] = y2
            scale[idx] = prep2["scale"]
        kern.accumulate_output(y, scale, acc, t.out_start, out_scale=p.out_scale,
                              ms=t.mapping_scale, post=t.post_scale)


def _weight_scaling(w, omega, columnwise):
    """aihwkit ``apply_weight_scaling``: returns (W/α as C-contiguous float32, α per output)."""
    n_out = w.shape[0]
    if omega > 0:
        if columnwise:
            wmax = np.abs(w).max(axis=1) if w.size else np.zeros(n_out, np.float32)
        else:
            wmax = np.full(n_out, np.abs(w).max() if w.size else 0, np.float32)
        alpha = (wmax.astype(np.float32) / np.float32(omega)).astype(np.float32)
        alpha[alpha == 0] = 1
        return np.ascontiguousarray(w / alpha[:, None], dtype=np.float32), alpha
    return np.ascontiguousarray(w, dtype=np.float32).copy(), np.ones(n_out, np.float32)
