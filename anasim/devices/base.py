"""The device protocol: converters, noise models, drift compensation, and the workflow.

Three small base classes, each configured by a :class:`~anasim.params.Section`
of documented parameters (its ``Params`` attribute) and overridden through a few hooks:

* :class:`Converter` — weights <-> device conductances. Hooks ``to_conductances(w)``
  -> ``(g, params)`` with ``g`` of shape ``(n_slices, *w.shape)`` in µS, and
  ``to_weights(g, params)`` -> ``w``; optional ``reconvert(w)``.
* :class:`NoiseModel` — what happens to a conductance. Hooks ``program`` (programming
  noise), ``drift_parameters`` (e.g. the drift exponent ν, drawn once per programming),
  ``drift`` (conductance at t > 0: drift and accumulated read noise) and ``validate``.
* :class:`DriftCompensation` — a readout input, a reduction of the tile's outputs and
  ``factor = reference / current``.

The workflow is a template in the base class (:meth:`NoiseModel.program_weights`,
:meth:`NoiseModel.drifted_weights`, also as the functions :func:`program_weights`,
:func:`drifted_weights`): it converts weights to conductances, calls the hooks, applies
device faults, and converts back. Guarantees every model inherits:

* inputs are never mutated (hooks receive fresh float64 arrays; the returned
  :class:`ProgrammedState` holds read-only arrays);
* at ``t <= 0`` the programmed weights come back unchanged (no read noise at t = 0, unlike
  aihwkit's ``apply_drift_noise``);
* all randomness comes from the ``rngs(purpose, extra)`` factory
  (:func:`anasim.devices.rng.rng_factory`): purpose ``"programming"`` for
  :meth:`NoiseModel.program`, ``"drift"`` for :meth:`NoiseModel.drift_parameters`,
  ``"read_noise"`` with ``extra = time_key(t)`` for :meth:`NoiseModel.drift`, so results
  are a function of (seed, layer, tile, repetition, t) only;
* errors are :class:`~anasim.errors.ConfigError` (never ``assert``).
"""

from __future__ import annotations

import copy
import dataclasses
import types
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..params import Section, describe_valid, param
from ..errors import ConfigError, InputError
from .rng import RngFactory, time_key

__all__ = [
    "DeviceContext",
    "Component",
    "Converter",
    "NoiseModel",
    "NoiseModelParams",
    "DriftCompensation",
    "ProgrammedState",
    "program_weights",
    "drifted_weights",
    "optional_positive",
    "describe_params",
    "aihwkit_names",
    "float_list",
]


# --------------------------------------------------------------------------- validators


def optional_positive(value) -> str | None:
    """a positive float (µS) or None"""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "a positive finite float or None"
    if not 0 < value < float("inf"):
        return "a positive finite float or None"
    return None


def float_list(min_len: int = 1, *, non_negative: bool = False, ascending: bool = False):
    """Validator factory: a list of finite floats with at least ``min_len`` entries."""
    words = ["non-negative " if non_negative else "", "finite floats"]
    text = f"a list of at least {min_len} {''.join(words)}" + (" in ascending order" if ascending else "")

    def check(value) -> str | None:
        if not isinstance(value, (list, tuple)) or len(value) < min_len:
            return text
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                return text
            if non_negative and v < 0:
                return text
        if ascending and any(b <= a for a, b in zip(value, value[1:])):
            return text
        return None

    check.__doc__ = text
    return check


def describe_params(Params) -> list[dict]:
    """Rows (name, default, unit, valid, doc) of a :class:`Section` dataclass's fields."""
    if not dataclasses.is_dataclass(Params):
        return []
    rows = []
    for f in dataclasses.fields(Params):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(
            {
                "name": f.name,
                "default": default,
                "unit": f.metadata.get("unit", ""),
                "valid": describe_valid(f.metadata.get("valid")),
                "doc": f.metadata.get("doc", ""),
            }
        )
    return rows


def aihwkit_names(aihwkit_class: str, names: dict):
    """Class decorator (after ``@dataclass``): record the aihwkit counterpart of fields.

    ``names`` maps a field name to the aihwkit argument name (or to a free text starting
    with "=" that is shown as is). Sets the ``aihwkit`` metadata ``anasim params`` prints,
    e.g. ``PCMLikeNoiseModel(t_0=20.0)``. Inherited fields are copied, not modified.
    """

    def deco(cls):
        fields = cls.__dataclass_fields__
        for name, arg in names.items():
            f = copy.copy(fields[name])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = arg[1:].strip() if arg.startswith("=") else f"{aihwkit_class}({arg}={default!r})"
            f.metadata = types.MappingProxyType({**f.metadata, "aihwkit": text})
            fields[name] = f
        return cls

    return deco


# --------------------------------------------------------------------------- context


@dataclass(frozen=True)
class DeviceContext:
    """What a noise-model hook knows about the array: the converter's conductance range.

    ``g_min``/``g_max`` (µS) are the converter's device range; a noise model normalises
    with :meth:`NoiseModel.g_max` (its own ``g_max`` parameter if set, else ``g_max``
    here, as aihwkit takes ``g_max`` from its ``g_converter``).
    """

    g_min: float
    g_max: float


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class NoParams(Section):
    """A type without parameters."""

    section: ClassVar[str] = "device"


@dataclass(frozen=True)
class NoCompensationParams(Section):
    """[drift_compensation] type = "none": no parameters."""

    section: ClassVar[str] = "drift_compensation"



class Component:
    """Common part of converters, noise models and drift compensations.

    ``Params`` is a :class:`Section` dataclass of :func:`param` fields; an instance is
    built from it (``Model(params)``) or from keyword arguments (``Model(g_max=40.0)``,
    validated the same way). ``type_name`` is the registry name (``"pcm"``) and is set by
    the registry. A user subclass without its own ``Params`` may instead define
    ``__init__(self, **kwargs)`` and call ``super().__init__()``.
    """

    kind: ClassVar[str] = "component"
    type_name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Section | None = None, **kwargs: Any) -> None:
        Params = type(self).Params
        if params is None:
            params = Params.from_dict(kwargs)
        elif kwargs:
            raise ConfigError(
                f"{type(self).__name__}: give either a Params object or keyword parameters, not both."
            )
        elif not isinstance(params, Params):
            raise ConfigError(
                f"{type(self).__name__} expects {Params.__name__} parameters; got {type(params).__name__}."
            )
        self.params = params

    @classmethod
    def describe(cls) -> list[dict]:
        """One row per parameter: name, default, unit, valid values and meaning."""
        return describe_params(cls.Params)

    @property
    def config_type(self) -> str:
        """The ``type`` value selecting this class in a configuration file: the registry
        name (``"pcm"``), or ``"package.module:ClassName"`` for a user class."""
        return self.type_name or f"{type(self).__module__}:{type(self).__qualname__}"

    def to_config(self) -> dict:
        """The TOML table that rebuilds this object (``type`` plus changed parameters)."""
        params = getattr(self, "params", None)
        changed = params.to_dict(only_changed=True) if dataclasses.is_dataclass(params) else {}
        return {"type": self.config_type, **changed}

    def __repr__(self) -> str:
        params = getattr(self, "params", None)
        inner = str(params) if dataclasses.is_dataclass(params) else ""
        return f"{type(self).__name__}<{self.type_name or '?'}>({inner})"

    def __eq__(self, other: object) -> bool:
        """Same class and same attributes (parameters): configurations compare by value."""
        if type(self) is not type(other):
            return NotImplemented
        try:
            return bool(vars(self) == vars(other))
        except (ValueError, TypeError):  # array-valued attributes
            return self is other

    def __hash__(self) -> int:
        return hash((type(self), repr(self.to_config())))


# --------------------------------------------------------------------------- converter


class Converter(Component):
    """Weights <-> conductances. Subclasses implement ``to_conductances`` / ``to_weights``.

    ``to_conductances(w)`` receives a float64 array (any shape) and returns
    ``(g, params)``: ``g`` float64 of shape ``(n_slices, *w.shape)`` in µS within
    ``[g_min, g_max]``, ``params`` a dict of NumPy arrays (e.g. the scale) needed to
    convert back. ``to_weights(g, params)`` inverts it; without noise the round trip
    is exact up to floating-point rounding.
    """

    kind: ClassVar[str] = "converter"

    @property
    def g_min(self) -> float:
        """Lowest device conductance (µS)."""
        return float(self.params.g_min)

    @property
    def g_max(self) -> float:
        """Highest device conductance (µS)."""
        return float(self.params.g_max)

    @property
    def n_slices(self) -> int:
        """Number of conductance slices (devices) per weight."""
        raise NotImplementedError(f"{type(self).__name__} must define n_slices (a Converter subclass does).")

    def to_conductances(self, w: np.ndarray) -> tuple[np.ndarray, dict]:
        """Weights → (conductances (n_slices, *w.shape) µS, converter params)."""
        raise NotImplementedError(f"{type(self).__name__} must define to_conductances (a Converter subclass does).")

    def to_weights(self, g: np.ndarray, params: dict) -> np.ndarray:
        """Conductances and converter params → weights (inverse of :meth:`to_conductances`)."""
        raise NotImplementedError(f"{type(self).__name__} must define to_weights (a Converter subclass does).")

    def reconvert(self, w: np.ndarray) -> tuple[np.ndarray, dict]:
        """Conductances re-derived from programmed weights (``drift_source = "weights"``).

        Defaults to :meth:`to_conductances`; a converter that snaps to discrete levels
        overrides it with its continuous mapping.
        """
        return self.to_conductances(w)

    def context(self) -> DeviceContext:
        return DeviceContext(g_min=self.g_min, g_max=self.g_max)


def _to_conductances(converter: Converter, w: np.ndarray, reconvert: bool = False) -> tuple[np.ndarray, dict]:
    w = np.array(w, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(w)):
        raise InputError(f"{type(converter).__name__}: weights contain NaN or infinity.")
    g, params = (converter.reconvert if reconvert else converter.to_conductances)(w)
    g = np.asarray(g, dtype=np.float64)
    if g.shape[1:] != w.shape:
        raise ConfigError(
            f"{type(converter).__name__}.to_conductances returned shape {g.shape}; "
            f"expected (n_slices, *{w.shape})."
        )
    return g, {k: np.asarray(v) for k, v in params.items()}


# --------------------------------------------------------------------------- noise model


@dataclass(frozen=True)
class NoiseModelParams(Section):
    """Parameters every noise model has (subclasses add their own)."""

    section: ClassVar[str] = "noise_model"

    g_max: float | None = param(
        None,
        "Conductance (µS) the model normalises with (x = g / g_max in its formulas). "
        "Default None: the converter's g_max (aihwkit takes g_max from its g_converter; "
        "aihwkit's PCMLikeNoiseModel(g_max=40) corresponds to [converter] g_max = 40).",
        unit="µS",
        valid=optional_positive,
    )
    drift_source: str = param(
        "conductances",
        "What drifts after programming. 'conductances': each device's own programmed "
        "conductance (physical). 'weights': the conductances are re-derived from the "
        "programmed weights with a fresh converter scale (max|W_prog| -> g_max, the other "
        "device of a pair at g_min) before drift and read noise, as aihwkit's "
        "apply_drift_noise does; needed to match aihwkit's numbers.",
        unit="choice", valid=("conductances", "weights"),
    )


class NoiseModel(Component):
    """Base of device noise models: override the hooks, inherit the workflow.

    Hooks (all receive fresh float64 arrays of shape ``(n_slices, *w.shape)`` in µS and
    a :class:`DeviceContext`; ``rng`` is a ``numpy.random.Generator`` reserved for the
    call; return new arrays — the inputs are private copies, so modifying them cannot
    corrupt the programmed state, but it is not needed):

    * ``program(g_target, ctx, rng) -> g_prog`` — programming noise (default: exact).
    * ``drift_parameters(g_target, ctx, rng) -> array | None`` — per-device parameters
      fixed at programming (ν for PCM; default None).
    * ``drift(g_prog, t, ctx, rng, *, g_target, drift_param) -> g_t`` — conductance at
      ``t > 0`` seconds after programming, drift and read noise included (default: no
      change). Never called with ``t <= 0``.
    * ``validate(ctx)`` — raise :class:`ConfigError` if the model cannot work with the
      converter's range.
    """

    kind: ClassVar[str] = "noise_model"
    Params: ClassVar[type] = NoiseModelParams
    #: False for the ideal model (``type = "none"``), which leaves every conductance as
    #: programmed: a configuration then reports no noise model
    #: (``AnalogConfig.noise_model is None``) and the simulator skips programming.
    enabled: ClassVar[bool] = True

    # ---- hooks
    def validate(self, ctx: DeviceContext) -> None:
        """Check the model against the converter's range; raise ConfigError."""

    def program(self, g_target: np.ndarray, ctx: DeviceContext, rng: np.random.Generator) -> np.ndarray:
        return g_target.copy()

    def drift_parameters(self, g_target: np.ndarray, ctx: DeviceContext, rng: np.random.Generator):
        return None

    def drift(self, g_prog, t, ctx, rng, *, g_target, drift_param) -> np.ndarray:
        return g_prog.copy()

    # ---- helpers for subclasses
    def g_max(self, ctx: DeviceContext) -> float:
        """The normalisation conductance: the ``g_max`` parameter, else the converter's."""
        g_max = getattr(getattr(self, "params", None), "g_max", None)
        return float(ctx.g_max if g_max is None else g_max)

    @property
    def drift_source(self) -> str:
        return getattr(getattr(self, "params", None), "drift_source", "conductances")

    @property
    def time_dependent(self) -> bool:
        """Whether :meth:`drift` is overridden (the weights change with t)."""
        return type(self).drift is not NoiseModel.drift

    # ---- template methods
    def program_weights(self, w_target, converter: Converter, rngs: RngFactory,
                        faults=None) -> "ProgrammedState":
        """Program ``w_target`` once (one repetition): see :func:`program_weights`."""
        ctx = converter.context()
        self.validate(ctx)
        g_target, cparams = _to_conductances(converter, w_target)
        if faults is not None:
            g_target = faults.vary_g_max(g_target, ctx, rngs("d2d"))
        g_prog = self._hook_out("program", self.program(g_target.copy(), ctx, rngs("programming")), g_target)
        drift_param = self.drift_parameters(g_target.copy(), ctx, rngs("drift"))
        if drift_param is not None:
            drift_param = self._hook_out("drift_parameters", drift_param, g_target)
        if self.drift_source == "weights":
            w_prog = converter.to_weights(g_prog, cparams)
            g_prog, cparams = _to_conductances(converter, w_prog, reconvert=True)
        stuck = None
        if faults is not None:
            g_prog, stuck = faults.stick(g_prog, ctx, rngs("faults"))
        return ProgrammedState(
            target=g_target.astype(np.float32),
            conductances=g_prog.astype(np.float32),
            drift_param=None if drift_param is None else drift_param.astype(np.float32),
            converter_params=cparams,
            stuck=stuck,
        )

    def drifted_conductances(self, state: "ProgrammedState", t: float, converter: Converter,
                             rngs: RngFactory) -> np.ndarray:
        """Conductances at ``t`` seconds after programming (the state's own at t <= 0)."""
        t = _check_time(t)
        g_prog = state.conductances.astype(np.float64)
        if t <= 0.0 or not self.time_dependent:
            return g_prog
        g_target = state.target.astype(np.float64)
        drift_param = None if state.drift_param is None else state.drift_param.astype(np.float64)
        rng = rngs("read_noise", time_key(t))
        ctx = converter.context()
        g_t = self.drift(g_prog.copy(), t, ctx, rng, g_target=g_target, drift_param=drift_param)
        g_t = self._hook_out("drift", g_t, g_prog)
        if state.stuck is not None:
            g_t = np.where(state.stuck > 0, g_prog, g_t)
        return g_t

    def drifted_weights(self, state: "ProgrammedState", t: float, converter: Converter, rngs: RngFactory):
        """Effective weights (float32) at ``t``: see :func:`drifted_weights`."""
        g_t = self.drifted_conductances(state, t, converter, rngs)
        return np.asarray(converter.to_weights(g_t, dict(state.converter_params)), dtype=np.float32)

    def _hook_out(self, hook: str, value, like: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if value.shape != like.shape:
            raise ConfigError(
                f"{type(self).__name__}.{hook} returned shape {value.shape}; expected {like.shape}."
            )
        if not np.all(np.isfinite(value)):
            raise ConfigError(f"{type(self).__name__}.{hook} returned NaN or infinite conductances.")
        return value


def _check_time(t) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not np.isfinite(t):
        raise InputError(f"t_inference must be a finite number of seconds; got {t!r}.")
    return float(t)


# --------------------------------------------------------------------------- state


def _frozen(a):
    if a is None:
        return None
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class ProgrammedState:
    """The programmed chip of one tile and repetition: pure data, saveable to HDF5.

    All device arrays have shape ``(n_slices, *weight_shape)`` and are read-only.

    * ``target`` (float32, µS): the conductance each device aims at (after
      device-to-device variation of g_max, if any).
    * ``conductances`` (float32, µS): the programmed conductances the drift starts from
      (with ``drift_source = "weights"``: re-derived from the programmed weights).
    * ``drift_param`` (float32 or None): per-device drift parameters (ν for PCM).
    * ``converter_params`` (dict of arrays): what the converter needs to convert back
      (e.g. ``scale`` in µS per weight unit).
    * ``stuck`` (int8 or None): 0 = healthy, 1 = stuck at g_min, 2 = stuck at g_max.
    """

    target: np.ndarray
    conductances: np.ndarray
    drift_param: np.ndarray | None
    converter_params: dict
    stuck: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("target", "conductances", "drift_param", "stuck"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        cparams = {k: _frozen(v) for k, v in self.converter_params.items()}
        object.__setattr__(self, "converter_params", cparams)
        for name in ("target", "drift_param", "stuck"):
            a = getattr(self, name)
            if a is not None and a.shape != self.conductances.shape:
                raise ConfigError(
                    f"ProgrammedState.{name} has shape {a.shape}, conductances {self.conductances.shape}."
                )

    @property
    def n_slices(self) -> int:
        return int(self.conductances.shape[0])

    @property
    def weight_shape(self) -> tuple:
        return tuple(self.conductances.shape[1:])

    def weights(self, converter: Converter) -> np.ndarray:
        """The programmed weights (float32), i.e. the weights at t = 0."""
        g = self.conductances.astype(np.float64)
        return np.asarray(converter.to_weights(g, dict(self.converter_params)), dtype=np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``name -> array`` mapping (``converter_params/<key>`` for the params)."""
        out = {"target": self.target, "conductances": self.conductances}
        if self.drift_param is not None:
            out["drift_param"] = self.drift_param
        if self.stuck is not None:
            out["stuck"] = self.stuck
        for k, v in self.converter_params.items():
            out[f"converter_params/{k}"] = v
        return out

    @classmethod
    def from_arrays(cls, arrays: dict) -> "ProgrammedState":
        """Inverse of :meth:`to_arrays`."""
        prefix = "converter_params/"
        cparams = {k[len(prefix):]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
        return cls(
            target=np.asarray(arrays["target"]),
            conductances=np.asarray(arrays["conductances"]),
            drift_param=None if "drift_param" not in arrays else np.asarray(arrays["drift_param"]),
            converter_params=cparams,
            stuck=None if "stuck" not in arrays else np.asarray(arrays["stuck"]),
        )


# --------------------------------------------------------------------------- drift compensation


class DriftCompensation(Component):
    """Drift compensation: readout input, readout reduction, factor.

    The tile runs :meth:`readout_input` (``(n_vectors, in_size)``) through its forward
    pass (with its periphery, as aihwkit does) once after programming and once at each
    t, reduces each output batch ``(n_vectors, out_size)`` with :meth:`readout`, and
    multiplies its digital output by :meth:`factor` ``= reference / current`` (a scalar
    for a global compensation, one value per output column for a per-column one).
    :meth:`readout_weights` does the same with an ideal periphery (``x @ W.T``).
    """

    kind: ClassVar[str] = "drift_compensation"
    Params: ClassVar[type] = NoCompensationParams
    #: False for ``type = "none"`` (factor 1): a configuration then reports no drift
    #: compensation (``AnalogConfig.drift_compensation is None``).
    enabled: ClassVar[bool] = True

    @property
    def forward_readout(self) -> bool:
        """True: the simulator reads the tile through its own forward pass (periphery and
        all, as aihwkit does); False: through :meth:`readout_weights` (ideal). A subclass
        with a ``readout`` parameter chooses by it; the base class reads ideally."""
        return False

    def readout_input(self, in_size: int) -> np.ndarray:
        """The readout vectors ``(n_vectors, in_size)``."""
        raise NotImplementedError(f"{type(self).__name__} must define readout_input (a DriftCompensation "
                                  "subclass does).")

    def readout(self, outputs: np.ndarray) -> np.ndarray:
        """One readout value (or one per column) from the outputs of the readout vectors."""
        raise NotImplementedError(f"{type(self).__name__} must define readout (a DriftCompensation subclass does).")

    def factor(self, reference, current) -> np.ndarray:
        """The compensation factor ``reference / current`` (elementwise)."""
        return np.asarray(reference, dtype=np.float64) / np.asarray(current, dtype=np.float64)

    def readout_weights(self, w: np.ndarray) -> np.ndarray:
        """Readout of a weight matrix ``w`` (out × in) with an ideal periphery."""
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 2:
            raise InputError(f"readout_weights expects a 2-D weight matrix (out × in); got shape {w.shape}.")
        x = np.asarray(self.readout_input(w.shape[1]), dtype=np.float64)
        return self.readout(x @ w.T)


# --------------------------------------------------------------------------- functions


def program_weights(w_target, converter: Converter, model: NoiseModel, rngs: RngFactory, faults=None):
    """Program one tile's weights once (one Monte-Carlo repetition).

    Converts ``w_target`` to target conductances with ``converter``, applies
    device-to-device variation of g_max (``faults``, purpose ``"d2d"``), the model's
    programming noise (``"programming"``) and drift parameters (``"drift"``), re-derives
    the conductances from the programmed weights if ``model.drift_source == "weights"``
    (aihwkit), and sticks faulty devices (``"faults"``). ``w_target`` is not modified.

    Returns a :class:`ProgrammedState`; ``state.weights(converter)`` are the programmed
    weights, equal to ``drifted_weights(state, 0, ...)``.
    """
    return model.program_weights(w_target, converter, rngs, faults)


def drifted_weights(state: ProgrammedState, t_inference: float, converter: Converter, model: NoiseModel,
                    rngs: RngFactory) -> np.ndarray:
    """Effective weights (float32) ``t_inference`` seconds after programming.

    ``t_inference <= 0`` returns the programmed weights exactly (no read noise). For
    ``t > 0`` the model's ``drift`` hook runs with the stream
    ``rngs("read_noise", time_key(t))``: deterministic in (seed, layer, tile,
    repetition, t), independent of other times. Stuck devices keep their value.
    """
    return model.drifted_weights(state, t_inference, converter, rngs)
