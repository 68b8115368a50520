"""Calibrate a programmed chip on held-out samples: the methods of ``[calibration]``.

>>> sim = anasim.analog(graph, cfg, seed=0)          # cfg with [calibration] methods on
>>> sim.program(3)
>>> cal = calibrate(sim, x[:200])                    # the data set's first 200 samples
>>> print(cal.summary()); save_snapshot(sim, "chip.h5")

Only what a deployed chip could do: the calibration inputs (never their labels) are run
through the chip, and digital parameters (ranges, affine corrections) and programming
choices (weight clips) are derived from what comes out and from the weights; nothing
reads the noise draws. The layers are calibrated in network order in one pass of the
calibration batch: each analog layer, when the pass reaches it,

1. (``input_range``) takes ``nm_thres`` = the ``input_percentile`` of |x| of its input,
   with constant noise management;
2. (``adc_range``) takes ``out_bound`` = the ``adc_percentile`` of its tiles' rows' largest |output| (+ a noise margin)
   before the ADC (the DAC-scaled inputs times the tiles' current weights, noise-free;
   at most :data:`ADC_ROWS` input vectors, an even stride through the batch);
3. runs its tiles on the input (with 1 and 2 in place);
4. (``affine``) fits a gain and offset per output channel (least squares) of that output
   against the ideal layer's output for the same input, and corrects by their inverse
   (:func:`~anasim.analog.calibration.fit_affine`),
   and passes the corrected output on, so the later layers are calibrated on the inputs a
   calibrated chip gives them.

Digital BatchNormalization nodes (``batchnorm``; BatchNorm kept digital) are re-estimated
in the same pass, on the activations the calibrated analog layers give them (``"shift"``
also runs the ideal network once on the same samples for its statistics).

``weight_clip`` is applied before that: clip bounds from the weights
(:func:`~anasim.analog.calibration.clip_bounds`), then the same chip (same repetition) is
programmed again with them and drifted back to its time. The result is data: per-layer
arrays in the simulator (:attr:`AnalogLayer.calibration`), in its
:meth:`~anasim.analog.simulator.AnalogSimulator.state_dict` and so in its snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..analog.calibration import (LayerCalibration, apply_affine, channel_moments, clip_bounds, fit_affine,
                                  reestimated_statistics)
from ..analog.simulator import AnalogSimulator
from ..analog.tile import Periphery
from ..config.calibration import METHODS, CalibrationParameters
from ..errors import ConfigError, InputError
from ..graph.context import RunContext
from ..graph.executor import bind
from ..graph.ir import RECURRENT_OPS
from ..kernels import stages as S
from ..ops.conv_geometry import conv_geometry
from ..ops.im2col import im2col

ADC_ROWS = 1 << 16
"""Input vectors per layer from which the ADC range is estimated (an even stride of samples)."""


@dataclass
class Calibration:
    """What :func:`calibrate` did: per-layer calibrations, the samples used, the methods."""

    layers: dict
    """{layer name: LayerCalibration}, as installed in the simulator."""
    samples: tuple
    """[start, stop): the data-set indices of the calibration samples."""
    methods: tuple
    """The methods switched on (any layer)."""
    skipped: dict = field(default_factory=dict)
    """{layer name: why a method was not applied to it}."""
    batchnorm: dict = field(default_factory=dict)
    """{BatchNormalization node: (mean, var)} re-estimated (``batchnorm`` method)."""

    def summary(self) -> str:
        lines = [f"calibrated on samples {self.samples[0]}..{self.samples[1] - 1} "
                 f"({self.samples[1] - self.samples[0]} samples); methods: {', '.join(self.methods) or 'none'}"]
        for name, cal in self.layers.items():
            parts = []
            if cal.weight_clip is not None:
                parts.append(f"clip {float(np.max(np.concatenate(cal.weight_clip))):.4g}")
            if cal.nm_thres is not None:
                parts.append(f"nm_thres {cal.nm_thres:.4g}")
            if cal.out_bound is not None:
                parts.append(f"out_bound {cal.out_bound:.4g}")
            if cal.scale is not None:
                parts.append(f"scale {cal.scale.min():.3f}..{cal.scale.max():.3f}, "
                             f"|offset| <= {np.abs(cal.offset).max():.3g}")
            lines.append(f"  {name}: {'; '.join(parts) or '-'}")
        for name, (mean, var) in self.batchnorm.items():
            lines.append(f"  {name}: BatchNorm mean {mean.min():.3g}..{mean.max():.3g}, "
                         f"var {var.min():.3g}..{var.max():.3g}")
        for name, why in self.skipped.items():
            lines.append(f"  {name}: {why}")
        return "\n".join(lines)


def _params_for(sim: AnalogSimulator, name: str, params: CalibrationParameters | None) -> CalibrationParameters:
    if params is not None:
        return params
    return sim.config.for_layer(name).calibration


def _logical_weights(m) -> np.ndarray:
    """The (out × in) weights the tiles were made from (ω scaling undone), analog bias column dropped."""
    w = np.zeros((m.out_size, sum(m.in_sizes)), np.float32)
    for t in m.tiles:
        w[t.out_start:t.out_stop, t.in_start:t.in_stop] = t.target * t.mapping_scale[:, None]
    return w[:, :m.in_size]


def weight_clips(sim: AnalogSimulator, params: CalibrationParameters | None = None) -> dict:
    """{layer name: per-group clip bounds} for the layers whose calibration clips weights."""
    out = {}
    for layer in sim.layers:
        p = _params_for(sim, layer.name, params)
        if p.weight_clip == "none" or layer.op_type in RECURRENT_OPS:
            continue
        if any(getattr(m, "n_slices", 1) > 1 for m in layer.matrices):
            raise ConfigError(
                f"[calibration] weight_clip = {p.weight_clip!r} on layer {layer.name!r}, whose weights are split "
                "into [bit_slicing] weight_slices: clipping is not implemented for sliced weights (it would act "
                "on each slice's digits, not on the weight). Set weight_clip = 'none' for this layer (a "
                "[[layers]] override) or weight_slices = 1.")
        out[layer.name] = [clip_bounds(_logical_weights(m), p.weight_clip, n_std=p.weight_clip_std,
                                       percentile=p.weight_clip_percentile, per=p.weight_clip_per)
                           for m in layer.matrices]
    return out


def _same_clip(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


class _LayerPass:
    """Stands in for one analog layer during the calibration pass (see the module doc)."""

    def __init__(self, layer, params: CalibrationParameters, ideal, skipped: dict):
        self.layer, self.params, self.ideal, self.skipped = layer, params, ideal, skipped
        p = layer.matrices[0].periphery  # the configured periphery (calibration cleared)
        self.dac = not p.perfect and (p.inp_step > 0 or p.inp_noise > 0)
        self.adc = not p.perfect and p.out_step > 0

    def __call__(self, *inputs, context: RunContext):
        layer, p = self.layer, self.params
        if layer.op_type in RECURRENT_OPS:
            if p.input_range or p.adc_range or p.affine:
                self.skipped[layer.name] = "recurrent layer: not calibrated"
            return layer(*inputs, context=context)
        x = np.asarray(inputs[0], np.float32)
        cal = LayerCalibration(weight_clip=layer.calibration.weight_clip)
        if p.input_range and self.dac:
            a = float(np.percentile(np.abs(x), p.input_percentile))
            if a > 0:
                cal.nm_thres = a
                layer.set_calibration(cal)
        if p.adc_range and self.adc:
            b = self._adc_bound(x, p.adc_percentile)
            if b > 0:
                cal.out_bound = b
                layer.set_calibration(cal)
        y = layer(*inputs, context=context, raw=True)
        if p.affine:
            y_ideal = np.asarray(self.ideal(*inputs), np.float32)
            cal.scale, cal.offset = fit_affine(y, y_ideal, layer.channel_axis, p.affine_min_r2)
            layer.set_calibration(cal)
            y = apply_affine(y, cal.scale, cal.offset, layer.channel_axis)
        if layer.epilogue is not None and not layer.residual:  # a folded Add (and what follows) runs digitally here
            y = np.minimum(np.maximum(y, np.float32(layer.epilogue[0])), np.float32(layer.epilogue[1]))
        return y

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """The layer's input vectors (im2col rows for a convolution), at most ADC_ROWS of them."""
        layer = self.layer
        if layer.op_type == "Conv":
            a = layer.attrs

            def geometry(shape):
                return conv_geometry(shape, layer.weight_shape, a.get("auto_pad", "NOTSET"), a.get("dilations"),
                                     a.get("group", 1), a.get("kernel_shape"), a.get("pads"), a.get("strides"))

            stride = max(1, -(-x.shape[0] * geometry(x.shape).n_pixels // ADC_ROWS))
            xs = np.ascontiguousarray(x[::stride])
            return im2col(xs, geometry(xs.shape))
        if layer.op_type == "Gemm" and layer.attrs.get("transA", 0):
            x = x.T
        rows = x.reshape(-1, x.shape[-1])
        return rows[::max(1, -(-len(rows) // ADC_ROWS))]

    def _adc_bound(self, x: np.ndarray, percentile: float) -> float:
        rows = self._rows(x)
        k = self.layer.matrices[0].in_size
        outs = []
        for g, m in enumerate(self.layer.matrices):
            r = rows[:, g * k:(g + 1) * k] if len(self.layer.matrices) > 1 else rows
            if m.analog_bias:
                r = np.concatenate([r, np.ones((len(r), 1), np.float32)], axis=1)
            for t in m.tiles:
                xt = r[:, t.in_start:t.in_stop]
                # bound management tests a whole input vector: the largest |output| of each row
                outs.append(np.abs(_dac_scaled(xt, m.periphery) @ t.weight.T).max(axis=1))
        if not outs:
            return 0.0
        # the output noise (a chip specification, not a draw) rides on top of every output
        margin = ADC_NOISE_MARGIN * float(self.layer.matrices[0].periphery.out_noise)
        return float(np.percentile(np.concatenate(outs), percentile)) + margin


ADC_NOISE_MARGIN = 4.0
"""``adc_range`` adds this many output-noise standard deviations (``forward.out_noise``) to the
percentile of the rows' largest noise-free |output|, so that the noise alone rarely pushes a
row over the bound (each such row is re-run by iterative bound management at half the input,
which doubles its output noise)."""


class _Moments:
    """Stands in for a BatchNormalization node of the ideal network: records the per-channel
    moments of its input and runs the node."""

    def __init__(self, name: str, fn, out: dict):
        self.name, self.fn, self.out = name, fn, out

    def __call__(self, x, *rest, context=None):
        self.out[self.name] = channel_moments(x)
        return self.fn(x, *rest)


class _BatchNormPass:
    """Stands in for a digital BatchNormalization node during the calibration pass: its
    statistics re-estimated from its (analog) input, then the node run with them."""

    def __init__(self, name: str, fn, mode: str, ideal: dict, out: dict):
        self.name, self.fn, self.mode, self.ideal, self.out = name, fn, mode, ideal, out

    def __call__(self, x, scale, bias, mean, var, *rest, context=None):
        m, v = reestimated_statistics(self.mode, mean, var, channel_moments(x), self.ideal.get(self.name))
        self.out[self.name] = (m, v)
        return self.fn(x, scale, bias, m.astype(mean.dtype), v.astype(var.dtype), *rest)


def _dac_scaled(xt: np.ndarray, p: Periphery) -> np.ndarray:
    """Inputs after noise management and DAC clipping (not quantized): x / α, clipped at ±inp_bound."""
    if p.nm_type == S.NM_CONSTANT:
        alpha = np.full((len(xt), 1), p.nm_thres if p.nm_thres > 0 else 1.0, np.float32)
    elif p.nm_type in (S.NM_ABS_MAX, S.NM_MAX):
        stat = (np.abs(xt) if p.nm_type == S.NM_ABS_MAX else xt).max(axis=1, initial=0.0)
        if p.nm_thres > 0:
            stat = np.minimum(stat, p.nm_thres)
        alpha = np.where(stat > 0, stat, 1.0).astype(np.float32)[:, None]
    else:
        alpha = np.ones((len(xt), 1), np.float32)
    return np.clip(xt / alpha, -p.inp_bound, p.inp_bound).astype(np.float32)


def calibrate(sim: AnalogSimulator, x, params: CalibrationParameters | dict | None = None, *,
              sample_offset: int = 0) -> Calibration:
    """Calibrate ``sim``'s chip as it is now (its repetition and t_inference) on ``x``.

    Parameters
    ----------
    sim : a CPU :class:`AnalogSimulator`, programmed (and drifted) as wanted.
    x : the calibration inputs: an array (single-input models) or ``{input name: array}``;
        all of them run as one batch.
    params : a :class:`CalibrationParameters` (or its dict) for every layer; default the
        simulator configuration's ``[calibration]``, per layer with ``[[layers]]`` overrides.
    sample_offset : index in the data set of ``x``'s first sample (its noise and the
        recorded sample range).

    Every earlier calibration is replaced. Raises ConfigError when no method is on.
    Returns a :class:`Calibration`; the simulator holds the result.
    """
    if not isinstance(sim, AnalogSimulator):
        raise InputError(f"calibrate needs an AnalogSimulator; got {type(sim).__name__}.")
    if isinstance(params, dict):
        params = CalibrationParameters.from_dict(params)
    if sim.device != "cpu":
        raise ConfigError("Calibration runs on the CPU simulator only (device='cpu'); the GPU tiles do not take "
                          "calibrated ranges or affine corrections yet.")
    feeds = x if isinstance(x, dict) else None
    if feeds is None:
        if len(sim.inputs) != 1:
            raise InputError("calibrate(sim, x) with an array needs a one-input model; pass {name: array}.")
        feeds = {sim.inputs[0].name: x}
    n = {len(v) for v in feeds.values()}
    if len(n) != 1 or n == {0}:
        raise InputError(f"calibrate needs a non-empty batch with one size for all inputs; got sizes {sorted(n)}.")
    n = n.pop()
    per_layer = {layer.name: _params_for(sim, layer.name, params) for layer in sim.layers}
    methods = tuple(m for m in METHODS if any(m in p.methods for p in per_layer.values()))
    if not methods:
        raise ConfigError("calibrate: no [calibration] method is on. Switch one on in the configuration, e.g. "
                          "[calibration] affine = true (or --set calibration.affine=true); see "
                          "`anasim params calibration`.")
    # 1. the programming choice: clip, then program the same chip again
    clips = weight_clips(sim, params)
    if any(not _same_clip(clips.get(layer.name), layer.calibration.weight_clip) for layer in sim.layers):
        t = sim.t_inference
        sim.set_calibration({layer.name: LayerCalibration(weight_clip=clips.get(layer.name)) for layer in sim.layers})
        sim.program(sim.repetition)
        if t > 0:
            sim.drift(t)
    sim.clear_calibration(keep_weight_clip=True)
    # 2. one pass of the calibration batch, layer by layer in network order
    skipped: dict = {}
    nodes = {node.name: node for node in sim.graph.ir.nodes}
    overrides = {layer.name: _LayerPass(layer, per_layer[layer.name], bind(nodes[layer.name], sim.graph.ir).fn,
                                        skipped) for layer in sim.layers}
    bn_mode = (params or sim.config.calibration).batchnorm
    bn_nodes = [node for node in sim.graph.ir.nodes if node.op_type == "BatchNormalization"]
    if bn_mode != "none" and not bn_nodes:
        skipped["batchnorm"] = ("no digital BatchNormalization to re-estimate (none in the model, or folded: "
                                "mapping.fold_batchnorm = true)")
    bn_stats: dict = {}
    if bn_mode != "none" and bn_nodes:
        ideal: dict = {}
        if bn_mode == "shift":  # the ideal network's BatchNorm inputs on the same samples
            sim.graph.with_overrides({node.name: _Moments(node.name, bind(node, sim.graph.ir).fn, ideal)
                                      for node in bn_nodes}).run(feeds, batch_size=n, check_finite=True)
        overrides.update({node.name: _BatchNormPass(node.name, bind(node, sim.graph.ir).fn, bn_mode, ideal,
                                                    bn_stats) for node in bn_nodes})
    executor = sim.graph.with_overrides(overrides)
    executor.run(feeds, batch_size=n, check_finite=True,
                 context=RunContext(sample_offset=int(sample_offset), repetition=sim.repetition))
    cals = {layer.name: layer.calibration for layer in sim.layers}
    sim.set_batchnorm(bn_stats)
    sim.set_calibration(cals, samples=(int(sample_offset), int(sample_offset) + n))
    return Calibration(cals, sim.calibration_samples, methods, skipped, bn_stats)


__all__ = ["calibrate", "Calibration", "weight_clips", "ADC_ROWS"]
