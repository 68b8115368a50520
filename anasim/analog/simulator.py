"""The analog simulator: a graph whose analog layers run on simulated tiles.

>>> graph = anasim.load("resnet20.onnx")
>>> sim = anasim.analog(graph, anasim.preset("aihwkit"), seed=0)
>>> sim.program(repetition=0)      # programming noise (if the config has a noise model)
>>> sim.drift(3600.0)              # drift + read noise + compensation at t = 1 h
>>> logits = sim(x)

Reproducibility: every random number is keyed by (seed, layer, tile, purpose, repetition)
(the layer by its position among the model's Conv/Gemm/MatMul layers with constant
weights, whether or not the configuration keeps some of them digital)
and indexed by (global row id, element); the global row id comes from the sample's index
in the data set (``sample_offset`` + position in the batch). The same seed, repetition,
time and sample indices give bit-identical outputs whatever the batch size, thread count
or evaluation order. The forward-pass noise of one repetition is the same at every
t_inference (common random numbers: differences between times are due to the devices).
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import Mapping

import numpy as np

from ..config import AnalogConfig, load_config, unmatched_patterns
from ..errors import ConfigError, InputError
from ..graph.context import SAMPLE_OFFSET_LIMIT, RunContext
from ..kernels.rng import check_seed
from ..graph.executor import Graph, check_device
from ..graph.passes import activation_bounds, quantized_as_float, sole_consumer
from .calibration import BatchNormOverride, LayerCalibration, clipped_target
from .layer import AnalogLayer, layer_matrix
from .state import ADC_ARRAYS, BATCHNORM, CALIBRATION_SAMPLES, META, STATE, TILE_ARRAYS, calibration_prefix, escape_name, tile_prefix, unescape_name
from .tile import AnalogMatrix

_GROUP_STRIDE = 1 << 20
"""Layer id of group g of analog layer i is i * _GROUP_STRIDE + g (random-stream key)."""


class AnalogSimulator:
    """A :class:`~anasim.graph.executor.Graph` with its analog layers on simulated tiles.

    Create it with :func:`anasim.analog`. Call it like the graph: ``sim(x)`` or
    ``sim.run({name: x})``.

    Attributes
    ----------
    graph : Graph — the digital model: the caller's graph with BatchNormalization folded or
        not, as ``mapping.fold_batchnorm`` says (:meth:`Graph.folded`).
    config : AnalogConfig — the hardware configuration.
    seed : int — master seed of every random stream.
    layers : list of AnalogLayer — the analog layers with their tile grids.
    digital_layers : list of str — Conv/Gemm/MatMul nodes kept digital by the config.
    repetition : int — the Monte-Carlo repetition last programmed (0 initially).
    t_inference : float — seconds since programming of the current weights (0 initially).
    """

    def __init__(self, graph: Graph, config=None, seed: int = 0, *, strict_patterns: bool = True,
                 device: str = "cpu"):
        if not isinstance(graph, Graph):
            raise InputError(f"anasim.analog expects a Graph from anasim.load; got {type(graph).__name__}.")
        seed = check_seed(seed, ConfigError)
        check_device(device, ConfigError)
        self.device = device
        self.config: AnalogConfig = load_config(config) if config is not None else AnalogConfig()
        graph = graph.folded(bool(self.config.mapping.fold_batchnorm))
        float_ir = quantized_as_float(graph.ir)  # integer-weight ops: their weights onto tiles
        if float_ir is not graph.ir:
            graph = Graph(float_ir, device=graph.device)
        self.graph = graph
        self.seed = int(seed)
        candidates = graph.analog_candidates
        bad = unmatched_patterns(self.config, candidates)
        if bad:
            msg = (f"[[layers]] pattern(s) {bad} match no analog layer of this model. Analog layers: "
                   f"{candidates[:8]}{' ...' if len(candidates) > 8 else ''}")
            if strict_patterns:
                raise ConfigError(msg)
            warnings.warn(msg, stacklevel=3)
        nodes = {n.name: n for n in graph.ir.nodes}
        self.layers: list[AnalogLayer] = []
        self.digital_layers: list[str] = []
        for name in candidates:
            lc = self.config.for_layer(name)
            if lc.digital:
                self.digital_layers.append(name)
                continue
            node = nodes[name]
            # the random-stream key: the position among all the model's Conv/Gemm/MatMul layers
            # with constant weights, digital ones included, so that keeping one layer digital
            # leaves every other layer's noise as it was (layer sensitivity compares them)
            index = candidates.index(name)
            mats, biases, extra = layer_matrix(node, graph.ir)
            matrices = [
                AnalogMatrix(w, b, lc.forward, lc.mapping, key=(self.seed, index * _GROUP_STRIDE + g),
                             slicing=lc.section("bit_slicing"))
                for g, (w, b) in enumerate(zip(mats, biases))
            ]
            if device == "cuda":
                from .tile_cuda import to_cuda

                matrices = [to_cuda(m) for m in matrices]
            shape = tuple(graph.ir.constants[node.inputs[1]].shape)
            self.layers.append(AnalogLayer(name, node.op_type, index, shape, matrices, dict(node.attrs), extra))
        self._layer_configs = {layer.name: self.config.for_layer(layer.name) for layer in self.layers}
        overrides = {layer.name: layer for layer in self.layers}
        if device == "cpu":  # Relu/Clip after a fused convolution: applied by its kernel
            overrides.update(fold_activations(graph.ir, self.layers))
            plan_depthwise_inputs(graph.ir, self.layers)
        # bound on the CPU first, then placed once: the analog nodes' weights are not uploaded
        self._overrides = overrides  # the analog layers (and folded activations) in the graph
        self._executor = graph.with_overrides(overrides).to(device)
        self.batchnorm: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """Re-estimated (mean, var) of digital BatchNormalization nodes, by node name (calibration)."""
        self.repetition = 0
        self.t_inference = 0.0
        self._references: dict = {}  # drift-compensation reference readouts, per programming
        self.calibration_samples: tuple[int, int] | None = None
        """[start, stop) of the data-set samples the current calibration used (None: none)."""
        if self.has_device_model:
            self.program(0)

    # ------------------------------------------------------------------ devices
    def program(self, repetition: int = 0) -> "AnalogSimulator":
        """Program every analog tile for Monte-Carlo ``repetition`` (0, 1, 2, ...).

        Draws programming noise and drift exponents from the configured noise model
        (a new, independent draw for each repetition — every repetition is a freshly
        programmed chip), and resets the time to t_inference = 0. Without a noise model
        the tiles hold their target weights. Deterministic in (seed, repetition).

        A layer with a calibrated weight clip (:attr:`AnalogLayer.calibration`) is programmed
        with its clipped weights; the rest of a calibration (ranges, affine correction) is
        of the chip programmed before and is dropped: a fresh chip is uncalibrated.
        """
        from ..devices import program_weights, rng_factory

        repetition = _check_repetition(repetition)
        for layer in self.layers:
            lc = self._layer_configs[layer.name]
            model = lc.noise_model
            layer.states.clear()
            for m in layer.matrices:
                m.draw_adc_mismatch(repetition)  # every programmed chip has its own ADCs
            clip = layer.calibration.weight_clip
            if layer.calibration.has_data:
                layer.set_calibration(layer.calibration.without_data())
            for g, m in enumerate(layer.matrices):
                targets = [t.target if clip is None else clipped_target(t, clip[g]) for t in m.tiles]
                if model is None:
                    m.set_tile_weights(targets)
                    m.set_post_scales([1.0] * len(m.tiles))
                    continue
                converter, faults = lc.converter, lc.faults
                weights = []
                for t, target in zip(m.tiles, targets):
                    rngs = rng_factory(self.seed, layer.index * _GROUP_STRIDE + g, t.index, repetition)
                    state = program_weights(target, converter, model, rngs, faults)
                    layer.states[(g, t.index)] = state
                    weights.append(state.weights(converter))
                m.set_tile_weights(weights)
                m.set_post_scales([1.0] * len(m.tiles))
        self.repetition = repetition
        self.t_inference = 0.0
        self._references = {}
        self.calibration_samples = None
        if self.batchnorm:
            self.set_batchnorm({})
        return self

    # ------------------------------------------------------------------ calibration
    def set_calibration(self, calibration: Mapping[str, LayerCalibration],
                        samples: tuple[int, int] | None = None) -> "AnalogSimulator":
        """Give analog layers their calibration (``{layer name: LayerCalibration}``; layers
        not named keep theirs) and record the [start, stop) data-set samples it used. The
        ranges and affine corrections apply at once; a weight clip at the next
        :meth:`program`. Drift-compensation reference readouts are read again (through
        the new periphery) at the next :meth:`drift`. :func:`anasim.experiment.calibrate`
        computes calibrations; this only installs them."""
        by_name = {layer.name: layer for layer in self.layers}
        unknown = [k for k in calibration if k not in by_name]
        if unknown:
            raise InputError(f"set_calibration: {unknown} are not analog layers of this simulator.")
        if self.device != "cpu" and any(not c.empty for c in calibration.values()):
            raise ConfigError("Calibration runs on the CPU simulator only (device='cpu'); the GPU tiles do not "
                              "take calibrated ranges or affine corrections yet.")
        for name, cal in calibration.items():
            by_name[name].set_calibration(cal)
        self._references = {}
        self.calibration_samples = None if samples is None else (int(samples[0]), int(samples[1]))
        return self

    def clear_calibration(self, keep_weight_clip: bool = False) -> "AnalogSimulator":
        """Drop every layer's calibration (``keep_weight_clip``: all but the weight clip).
        The tiles keep their programmed weights: call :meth:`program` to program them
        unclipped."""
        cals = {layer.name: layer.calibration.without_data() if keep_weight_clip else LayerCalibration()
                for layer in self.layers}
        if self.batchnorm:
            self.set_batchnorm({})
        return self.set_calibration(cals)

    def set_batchnorm(self, statistics: Mapping[str, tuple]) -> "AnalogSimulator":
        """Run the digital BatchNormalization nodes named in ``statistics`` (``{node: (mean,
        var)}``) with these running statistics instead of the model's; every other one with
        its own (``{}`` restores them all). Checked: the nodes must be BatchNormalization
        nodes of :attr:`graph` (``mapping.fold_batchnorm = false``), the arrays of their
        channels' length, the variances >= 0."""
        checked = self._checked_batchnorm(statistics)
        self._install_batchnorm(checked)
        return self

    def _checked_batchnorm(self, statistics: Mapping[str, tuple]) -> dict:
        nodes = {n.name: n for n in self.graph.ir.nodes if n.op_type == "BatchNormalization"}
        checked = {}
        for name, (mean, var) in statistics.items():
            if name not in nodes:
                raise InputError(f"set_batchnorm: {name!r} is not a BatchNormalization node of this simulator's "
                                 f"graph (BatchNorm nodes: {sorted(nodes)[:5]}; folded ones have none).")
            n_ch = np.asarray(self.graph.ir.constants[nodes[name].inputs[3]]).shape
            mean, var = np.asarray(mean, np.float32), np.asarray(var, np.float32)
            if mean.shape != n_ch or var.shape != n_ch or not (np.isfinite(mean).all() and np.isfinite(var).all()
                                                            and (var >= 0).all()):
                raise InputError(f"set_batchnorm: {name!r} needs finite mean and var >= 0 of shape {n_ch}; got "
                                 f"{mean.shape} and {var.shape}.")
            checked[name] = (mean, var)
        return checked

    def _install_batchnorm(self, checked: dict) -> None:
        from ..graph.executor import bind

        nodes = {n.name: n for n in self.graph.ir.nodes if n.op_type == "BatchNormalization"}
        overrides = dict(self._overrides)
        overrides.update({name: BatchNormOverride(bind(nodes[name], self.graph.ir).fn, m, v)
                          for name, (m, v) in checked.items()})
        self._executor = self.graph.with_overrides(overrides).to(self.device)
        self.batchnorm = checked

    @property
    def calibrated(self) -> bool:
        """Whether any layer has a calibration."""
        return bool(self.batchnorm) or any(not layer.calibration.empty for layer in self.layers)

    def drift(self, t_inference: float) -> "AnalogSimulator":
        """Set the tiles to their state ``t_inference`` seconds after programming.

        Applies the noise model's drift and read noise to the programmed conductances
        and the configured drift compensation (one factor per tile, or per column,
        from a readout at programming time and at ``t_inference``). Deterministic in
        (seed, repetition, t_inference); ``t_inference = 0`` restores the programmed
        state. Layers without a noise model are unaffected.
        """
        from ..devices import drifted_weights, rng_factory

        if isinstance(t_inference, bool) or not isinstance(t_inference, (int, float, np.integer, np.floating)):
            raise InputError(f"t_inference must be a number of seconds; got {t_inference!r} "
                             f"({type(t_inference).__name__}). 1 h is sim.drift(3600.0), 1 day 86400.0.")
        t = float(t_inference)
        if not np.isfinite(t) or t < 0:
            raise InputError(f"t_inference must be a finite number of seconds >= 0; got {t_inference!r}.")
        for layer in self.layers:
            lc = self._layer_configs[layer.name]
            model = lc.noise_model
            if model is None:
                continue
            converter, comp = lc.converter, lc.drift_compensation
            for g, m in enumerate(layer.matrices):
                weights, scales = [], []
                for tile in m.tiles:
                    state = layer.states[(g, tile.index)]
                    rngs = rng_factory(self.seed, layer.index * _GROUP_STRIDE + g, tile.index, self.repetition)
                    w_t = drifted_weights(state, t, converter, model, rngs)
                    weights.append(w_t)
                    if comp is not None and t > 0:
                        ref = self._readout_reference(layer, g, m, tile, comp, state.weights(converter))
                        cur = (comp.readout(m.readout(tile, comp.readout_input(tile.n_in), w_t, self.repetition, t))
                               if comp.forward_readout else comp.readout_weights(w_t))
                        scales.append(np.asarray(comp.factor(ref, cur), np.float32))
                    else:
                        scales.append(np.float32(1.0))
                m.set_tile_weights(weights)
                m.set_post_scales(scales)
        self.t_inference = t
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self, include: str = "drifted") -> dict[str, np.ndarray]:
        """The chip's state as a flat ``{key: array}`` mapping (:mod:`anasim.analog.state`
        lists the keys): seed, repetition and t_inference, and every tile's weights,
        scales and programmed device state. The arrays are copies.

        include : "drifted" (default): the tiles as they are now, at :attr:`t_inference`;
            "programmed": as right after programming (t_inference 0: weights converted
            back from the programmed conductances, post scales 1). The device state is
            there either way, so a simulator that loads it can drift to any time.
        """
        if include not in ("drifted", "programmed"):
            raise InputError(f"include must be 'drifted' or 'programmed'; got {include!r}.")
        programmed = include == "programmed"
        out: dict[str, np.ndarray] = {
            "seed": np.asarray(self.seed, np.int64), "repetition": np.asarray(self.repetition, np.int64),
            "t_inference": np.asarray(0.0 if programmed else self.t_inference, np.float64)}
        for layer in self.layers:
            converter = self.converter_for(layer)
            for g, m in enumerate(layer.matrices):
                for t in m.tiles:
                    key = tile_prefix(layer.name, g, t.index)
                    device = layer.states.get((g, t.index))
                    weight, post = t.weight, t.post_scale
                    if programmed:
                        post = np.ones(t.n_out, np.float32)
                        if device is not None:
                            weight = device.weights(converter)
                    out[key + "weight"] = np.array(weight, np.float32)
                    out[key + "mapping_scale"] = np.array(t.mapping_scale, np.float32)
                    out[key + "post_scale"] = np.array(post, np.float32)
                    if t.adc_gain is not None:
                        out[key + "adc_offset"] = np.array(t.adc_offset, np.float32)
                        out[key + "adc_gain"] = np.array(t.adc_gain, np.float32)
                    if device is not None:
                        for name, arr in device.to_arrays().items():
                            out[key + STATE + name] = np.array(arr)
            for name, arr in layer.calibration.to_arrays().items():
                out[calibration_prefix(layer.name) + name] = arr
        for name, (mean, var) in self.batchnorm.items():
            out[f"{BATCHNORM}{escape_name(name)}/mean"] = np.array(mean, np.float32)
            out[f"{BATCHNORM}{escape_name(name)}/var"] = np.array(var, np.float32)
        if self.calibration_samples is not None:
            out[CALIBRATION_SAMPLES] = np.asarray(self.calibration_samples, np.int64)
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> "AnalogSimulator":
        """Put a chip state (from :meth:`state_dict`, possibly of another simulator of the
        same model, configuration and seed) into this simulator; returns it.

        Everything is checked before anything changes: the seed, every key (missing or
        unknown), every array's shape and kind, and that tiles have a device state
        exactly where this simulator's configuration has a device model. A mismatch
        raises InputError naming the key and what was expected.
        """
        from ..devices.base import ProgrammedState

        missing = [k for k in META if k not in state]
        if missing:
            raise InputError(f"The state has no {missing}; pass a mapping from AnalogSimulator.state_dict().")
        seed = int(np.asarray(state["seed"]).reshape(()))
        if seed != self.seed:
            raise InputError(f"seed: state {seed}, simulator {self.seed}. The forward noise and read noise depend "
                             f"on the seed; build the simulator with seed={seed}.")
        repetition = _check_repetition(int(np.asarray(state["repetition"]).reshape(())))
        t = float(np.asarray(state["t_inference"]).reshape(()))
        if not np.isfinite(t) or t < 0:
            raise InputError(f"t_inference in the state must be a finite number of seconds >= 0; got {t}.")
        used = set(META)
        plan = []  # (layer, g, matrix, weights, mapping scales, post scales, device states)
        for layer in self.layers:
            with_model = self._layer_configs[layer.name].noise_model is not None
            for g, m in enumerate(layer.matrices):
                weights, mapping, post, devices, adc = [], [], [], {}, []
                for tile in m.tiles:
                    key = tile_prefix(layer.name, g, tile.index)
                    shapes = {"weight": (tile.n_out, tile.n_in), "mapping_scale": (tile.n_out,),
                              "post_scale": (tile.n_out,)}
                    arrays = {}
                    names = TILE_ARRAYS + (ADC_ARRAYS if tile.adc_gain is not None else ())
                    shapes.update({name: (tile.n_out,) for name in ADC_ARRAYS})
                    for name in names:
                        if key + name not in state:
                            raise InputError(f"The state has no {key + name!r} (layer {layer.name!r}); it is of "
                                             "another model or configuration.")
                        a = np.asarray(state[key + name])
                        if a.shape != shapes[name] or a.dtype.kind != "f":
                            raise InputError(f"{key + name}: shape {a.shape} ({a.dtype}), expected "
                                             f"{shapes[name]} (float32).")
                        arrays[name] = a
                        used.add(key + name)
                    dev = {k[len(key) + len(STATE):]: np.asarray(v) for k, v in state.items()
                           if k.startswith(key + STATE)}
                    if bool(dev) != with_model:
                        raise InputError(
                            f"{key}: the state {'has' if dev else 'has no'} device state, the simulator's "
                            f"configuration {'has' if with_model else 'has no'} device noise model for layer "
                            f"{layer.name!r}.")
                    if dev:
                        try:
                            devices[tile.index] = ProgrammedState.from_arrays(dev)
                        except Exception as exc:
                            raise InputError(f"{key}{STATE}: invalid device state: {exc}") from None
                        g_shape = devices[tile.index].conductances.shape
                        if len(g_shape) != 3 or g_shape[1:] != (tile.n_out, tile.n_in):
                            raise InputError(f"{key}{STATE}conductances: shape {g_shape}, expected "
                                             f"(n_slices, {tile.n_out}, {tile.n_in}).")
                        used.update(key + STATE + k for k in dev)
                    weights.append(arrays["weight"])
                    if tile.adc_gain is not None:
                        adc.append((arrays["adc_offset"], arrays["adc_gain"]))
                    mapping.append(arrays["mapping_scale"])
                    post.append(arrays["post_scale"])
                plan.append((layer, g, m, weights, mapping, post, devices, adc))
        cals = {}
        for layer in self.layers:
            prefix = calibration_prefix(layer.name)
            arrays = {k[len(prefix):]: np.asarray(v) for k, v in state.items() if k.startswith(prefix)}
            used.update(prefix + k for k in arrays)
            n_channels = sum(m.out_size for m in layer.matrices)
            cals[layer.name] = LayerCalibration.from_arrays(
                arrays, n_channels=n_channels, group_outputs=[m.out_size for m in layer.matrices], where=prefix)
        samples = None
        if CALIBRATION_SAMPLES in state:
            a = np.asarray(state[CALIBRATION_SAMPLES])
            if a.shape != (2,) or a.dtype.kind not in "iu" or not 0 <= a[0] <= a[1]:
                raise InputError(f"{CALIBRATION_SAMPLES}: expected [start, stop) as 2 int64 with 0 <= start <= "
                                 f"stop; got {a!r}.")
            samples = (int(a[0]), int(a[1]))
            used.add(CALIBRATION_SAMPLES)
        bn: dict = {}
        for key in state:
            if key.startswith(BATCHNORM):
                node, _, what = key[len(BATCHNORM):].rpartition("/")
                if what not in ("mean", "var"):
                    raise InputError(f"{key}: a BatchNorm statistic is 'mean' or 'var'.")
                bn.setdefault(unescape_name(node), {})[what] = np.asarray(state[key])
                used.add(key)
        for node, d in bn.items():
            if set(d) != {"mean", "var"}:
                raise InputError(f"{BATCHNORM}{escape_name(node)}: needs both 'mean' and 'var'.")
        bn = self._checked_batchnorm({node: (d["mean"], d["var"]) for node, d in bn.items()})
        if self.device != "cpu" and any(not c.empty for c in cals.values()):
            raise InputError("The state holds a calibration; calibrated chips run on the CPU simulator only "
                             "(device='cpu').")
        unknown = sorted(set(state) - used)
        if unknown:
            raise InputError(f"The state has {len(unknown)} key(s) this simulator does not know, e.g. "
                             f"{unknown[:3]}; it is of another model or configuration.")
        for layer in self.layers:
            layer.states.clear()
        self._references = {}
        for layer, g, m, weights, mapping, post, devices, adc in plan:
            if adc:
                m.set_adc_mismatch([a for a, _ in adc], [b for _, b in adc])
            m.set_mapping_scales(mapping)
            m.set_tile_weights(weights)
            m.set_post_scales(post)
            for k, dev in devices.items():
                layer.states[(g, k)] = dev
        for layer in self.layers:
            layer.set_calibration(cals[layer.name])
        self._install_batchnorm(bn)
        self.calibration_samples = samples
        self.repetition = repetition
        self.t_inference = t
        return self

    def _readout_reference(self, layer, g, m, tile, comp, programmed):
        """The compensation's reference readout of one tile: its programmed weights read at
        t_inference = 0 (through the forward pass, or ideally, as the compensation says);
        computed once per programming and kept."""
        key = (layer.index, g, tile.index, self.repetition, comp.forward_readout)
        ref = self._references.get(key)
        if ref is None:
            x = comp.readout_input(tile.n_in)
            ref = (comp.readout(m.readout(tile, x, programmed, self.repetition, 0.0)) if comp.forward_readout
                   else comp.readout_weights(programmed))
            self._references[key] = ref
        return ref

    @property
    def has_device_model(self) -> bool:
        """Whether any analog layer has a device noise model (programming/drift matter)."""
        return any(lc.noise_model is not None for lc in self._layer_configs.values())

    def converter_for(self, layer: AnalogLayer):
        """The conductance converter of ``layer`` (its config's, or the default single pair)."""
        return self._layer_configs[layer.name].converter

    # ------------------------------------------------------------------ running
    @property
    def inputs(self):
        return self.graph.inputs

    @property
    def outputs(self):
        return self.graph.outputs

    def run(self, feeds: Mapping[str, np.ndarray], *, batch_size: int | None = None,
            sample_offset: int = 0, outputs: list[str] | None = None,
            profile: dict | None = None) -> dict[str, np.ndarray]:
        """Run the analog model; arguments as :meth:`Graph.run`, plus:

        sample_offset : int, default 0
            Index, in the whole data set, of the first sample in ``feeds``. Evaluations
            that feed a data set in batches pass each batch's offset so that every
            sample draws the same noise whatever the batch size.
        profile : dict, optional
            Filled with CPU cycles per stage of every fused analog convolution
            (:attr:`RunContext.profile <anasim.graph.context.RunContext.profile>`;
            ``bench/profile.py`` prints them).

        Inputs are always checked for NaN/infinite values. The run reads the simulator's
        tiles and changes nothing, so runs in several threads at once are safe (while no
        thread programs or drifts the tiles).
        """
        if (isinstance(sample_offset, bool) or not isinstance(sample_offset, (int, np.integer))
                or not 0 <= sample_offset < SAMPLE_OFFSET_LIMIT):
            raise InputError(f"sample_offset must be an integer in [0, 2**40) (the index of the batch's first "
                             f"sample in the data set); got {sample_offset!r}.")
        context = RunContext(sample_offset=int(sample_offset), repetition=self.repetition, profile=profile)
        return self._executor.run(feeds, batch_size=batch_size, outputs=outputs, check_finite=True,
                                  context=context)

    def __call__(self, x: np.ndarray, *, batch_size: int | None = None, sample_offset: int = 0) -> np.ndarray:
        """Single-input, single-output shortcut of :meth:`run`."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise InputError("sim(x) needs a model with one input and one output; use sim.run({...}).")
        return self.run({self.inputs[0].name: x}, batch_size=batch_size,
                        sample_offset=sample_offset)[self.outputs[0].name]

    def layer(self, name: str) -> AnalogLayer:
        """The analog layer of node ``name`` (exact name or a glob matching exactly one)."""
        hits = [layer for layer in self.layers if layer.name == name] or [
            layer for layer in self.layers if fnmatch.fnmatchcase(layer.name, name)]
        if len(hits) != 1:
            from ..errors import closest
            raise KeyError(f"{name!r} matches {len(hits)} analog layers.{closest(name, [x.name for x in self.layers])}")
        return hits[0]

    def summary(self) -> str:
        """One line per analog layer with its tile grid, plus the digital Conv/Gemm/MatMul."""
        lines = [f"{len(self.layers)} analog layers, {sum(x.n_tiles for x in self.layers)} tiles "
                 f"(seed {self.seed}, repetition {self.repetition}, t_inference {self.t_inference:g} s)"]
        lines += ["  " + x.describe() for x in self.layers]
        if self.digital_layers:
            lines.append(f"kept digital: {', '.join(self.digital_layers)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<anasim.AnalogSimulator {self.graph.ir.name!r}: {len(self.layers)} analog layers>"


def _check_repetition(repetition) -> int:
    if isinstance(repetition, bool) or not isinstance(repetition, (int, np.integer)) or repetition < 0:
        raise InputError(f"repetition must be a non-negative integer; got {repetition!r}.")
    return int(repetition)


def analog(graph, config=None, seed: int = 0, **kwargs) -> AnalogSimulator:
    """Map ``graph``'s Conv/Gemm/MatMul layers onto simulated analog tiles.

    Parameters
    ----------
    graph : Graph, or anything :func:`anasim.load` accepts (path, bytes, ModelProto).
    config : AnalogConfig, dict, path of a TOML/JSON file, or a preset name; default
        the ``ideal`` preset (no non-idealities: outputs equal the digital graph's).
    seed : int, default 0. Master seed of all random numbers.
    strict_patterns : bool, default True. A ``[[layers]]`` pattern that matches no
        analog layer is an error (False: a warning).
    device : "cpu" (default) or "cuda". With "cuda" the whole network runs on the GPU:
        the tiles' weights stay there, the periphery runs as numba.cuda kernels drawing
        the same random numbers as the CPU kernels, and the digital ops and im2col run
        as device kernels too (:mod:`anasim.ops.cuda`), so each batch crosses the PCIe
        bus once in and once out.

    If the configuration has a device noise model, the tiles are programmed for
    repetition 0 right away (t_inference = 0); call :meth:`AnalogSimulator.program`
    and :meth:`AnalogSimulator.drift` for other repetitions and times.
    """
    if not isinstance(graph, Graph):
        from ..graph.importer import load

        graph = load(graph)
    return AnalogSimulator(graph, config, seed, **kwargs)


def _pass_through(x, *_bounds, context=None):
    """A folded activation node: its input already is its output."""
    return x


def _pass_second(_r, y, context=None):
    """A folded ``Add(r, y)`` whose second input is the layer's output (already the sum)."""
    return y


def fold_activations(ir, layers) -> dict:
    """Fold into each fused analog convolution the element-wise ops that alone consume its
    output: a residual ``Add`` of a value computed before the layer (:attr:`AnalogLayer.residual`),
    then a Relu or Clip (:attr:`AnalogLayer.epilogue`). The kernel adds and clips its
    outputs on the way out, saving passes over the activations; returns the overrides that
    turn the folded nodes into pass-throughs. The numbers do not change: ``acc + bias``,
    plus the residual, clipped in the kernel is what the digital ops do to the layer's
    output (one float addition, commutative). Only float Clip bounds that are constants
    (attributes, or initializers from opset 11) are folded; a value that is a graph
    output or has other consumers ends a chain."""
    consumers = ir.consumers()
    graph_outputs = {o.name for o in ir.outputs}
    by_name = {n.name: n for n in ir.nodes}
    produced_at = {o: k for k, n in enumerate(ir.nodes) for o in n.outputs if o}
    produced_at.update({v.name: -1 for v in ir.inputs})

    def sole_user(value):
        user = sole_consumer(value, consumers, graph_outputs)
        return None if user is None or not user.name or user.name in folded else user

    folded = {}
    for layer in layers:
        node = by_name.get(layer.name)
        if node is None or layer.op_type != "Conv" or layer._fused is None or not node.outputs:
            continue
        out = node.outputs[0]
        nxt = sole_user(out)
        if nxt is not None and nxt.op_type == "Add" and len(nxt.inputs) == 2 and not nxt.attrs:
            k = nxt.inputs.index(out)
            r = nxt.inputs[1 - k]
            if produced_at.get(r, len(ir.nodes)) < produced_at[out]:  # computed before the layer (not a constant)
                layer.residual = r
                folded[nxt.name] = _pass_through if k == 0 else _pass_second
                out = nxt.outputs[0]
                nxt = sole_user(out)
        if nxt is not None and nxt.inputs[0] == out:
            bounds = activation_bounds(ir, nxt)
            if bounds is not None:
                layer.epilogue = bounds
                folded[nxt.name] = _pass_through
    return folded




def plan_depthwise_inputs(ir, layers) -> None:
    """Let each fused analog convolution whose output (after its folded residual and
    activation, :func:`fold_activations`) is read only by a fused depthwise convolution of
    unit strides write that output straight into the zero-padded planes the depthwise
    layer reads (:attr:`AnalogLayer.next_depthwise`): the depthwise layer's padding pass
    over its input is saved (MobileNet-style blocks: expand 1×1 → depthwise 3×3). Only the
    output's layout changes (the depthwise layer checks the planes are what it would have
    made, else pads as before); any other reader sees an ordinary strided array."""
    consumers = ir.consumers()
    graph_outputs = {o.name for o in ir.outputs}
    by_name = {n.name: n for n in ir.nodes}
    analog = {layer.name: layer for layer in layers}
    for layer in layers:
        node = by_name.get(layer.name)
        layer.next_depthwise = None
        if node is None or layer.op_type != "Conv" or layer._fused is None or not node.outputs:
            continue
        out = node.outputs[0]
        while True:  # past the folded Add and activation
            user = sole_consumer(out, consumers, graph_outputs)
            folded = user is not None and user.op_type in ("Add", "Relu", "Clip") and (
                (user.op_type == "Add" and layer.residual and layer.residual in user.inputs)
                or (user.op_type != "Add" and layer.epilogue is not None and user.inputs[0] == out))
            if not folded:
                break
            out = user.outputs[0]
        nxt = analog.get(user.name) if user is not None else None
        if nxt is None or nxt.op_type != "Conv" or nxt._fused is None or user.inputs[0] != out:
            continue
        w = nxt.weight_shape
        group = int(nxt.attrs.get("group", 1))
        strides = tuple(nxt.attrs.get("strides", (1,) * (len(w) - 2)))
        if len(w) == 4 and w[1] == 1 and group == w[0] and group > 1 and all(v == 1 for v in strides):
            layer.next_depthwise = (w, dict(nxt.attrs))
