"""Registries of device types and the factories that build them from configuration tables.

A configuration table names its type with ``type``; the other keys are the type's
parameters::

    [noise_model]
    type = "pcm"                      # a built-in name, see names("noise_model")
    prog_noise_scale = 0.5

    [noise_model]
    type = "mylab.devices:MyPCM"      # "package.module:ClassName": imported, must
    sigma = 0.3                       # subclass anasim.devices.NoiseModel

:func:`build_noise_model`, :func:`build_converter`, :func:`build_compensation` and
:func:`build_faults` return configured objects or raise :class:`~anasim.errors.ConfigError`
naming the key (unknown types list the valid ones with the closest match).
:func:`describe` lists every type's parameters for ``anasim params``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, closest
from ..params import import_class
from .base import Component, Converter, DriftCompensation, NoiseModel
from .faults import DeviceFaults, FaultParams

__all__ = [
    "register",
    "names",
    "get_class",
    "build",
    "build_noise_model",
    "build_converter",
    "build_compensation",
    "build_faults",
    "describe",
]

_BASES = {"noise_model": NoiseModel, "converter": Converter, "drift_compensation": DriftCompensation}
_DEFAULT_TYPE = {"noise_model": "none", "converter": "single_pair", "drift_compensation": "none"}
_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in _BASES}


def register(name: str):
    """Class decorator: register a built-in device class under ``name`` for its kind."""

    def deco(cls):
        kind = next((k for k, base in _BASES.items() if issubclass(cls, base)), None)
        if kind is None:
            raise TypeError(f"{cls.__name__} is not a NoiseModel, Converter or DriftCompensation")
        if name in _REGISTRY[kind]:
            raise ValueError(f"{kind} type {name!r} registered twice")
        cls.type_name = name
        _REGISTRY[kind][name] = cls
        return cls

    return deco


def names(kind: str) -> list[str]:
    """Registered type names of one kind ("noise_model", "converter", "drift_compensation")."""
    return list(_REGISTRY[_check_kind(kind)])


def _check_kind(kind: str) -> str:
    if kind not in _REGISTRY:
        raise ConfigError(
            f"Unknown device kind {kind!r}.{closest(kind, _REGISTRY)} Valid: {', '.join(_REGISTRY)}."
        )
    return kind


def get_class(kind: str, type_name: str) -> type:
    """The class for a ``type`` value: a registered name or ``"package.module:ClassName"``."""
    kind = _check_kind(kind)
    if not isinstance(type_name, str):
        raise ConfigError(f"The 'type' of [{kind}] must be a string; got {type_name!r}.")
    if type_name in _REGISTRY[kind]:
        return _REGISTRY[kind][type_name]
    if ":" in type_name:
        base = _BASES[kind]
        return import_class(type_name, kind, base, f"anasim.devices.{base.__name__}")
    valid = names(kind)
    raise ConfigError(
        f"Unknown {kind} type {type_name!r} in [{kind}].{closest(type_name, valid)} "
        f"Valid types: {', '.join(valid)}, or 'package.module:ClassName' for a user-defined class."
    )


def build(kind: str, table: Any = None) -> Component:
    """Build a device object of ``kind`` from a table (dict with ``type``), an instance or None."""
    kind = _check_kind(kind)
    base = _BASES[kind]
    if isinstance(table, base):
        return table
    if isinstance(table, Component):
        raise ConfigError(f"[{kind}] needs a {base.__name__}; got the {table.kind} {table!r}.")
    if table is None:
        table = {}
    if isinstance(table, str):
        table = {"type": table}
    if not isinstance(table, dict):
        raise ConfigError(f"[{kind}] must be a table with a 'type' key; got {type(table).__name__}.")
    rest = dict(table)
    type_name = rest.pop("type", _DEFAULT_TYPE[kind])
    cls = get_class(kind, type_name)
    try:
        return cls(**rest)
    except ConfigError:
        raise
    except TypeError as exc:  # a user class whose __init__ rejects the keys
        raise ConfigError(
            f"[{kind}] type {type_name!r}: {cls.__name__}({', '.join(rest)}) failed: {exc}"
        ) from exc


def build_noise_model(table: Any = None) -> NoiseModel:
    """A :class:`NoiseModel` from a ``[noise_model]`` table (default type ``"none"``)."""
    return build("noise_model", table)


def build_converter(table: Any = None) -> Converter:
    """A :class:`Converter` from a ``[converter]`` table (default type ``"single_pair"``)."""
    return build("converter", table)


def build_compensation(table: Any = None) -> DriftCompensation:
    """A :class:`DriftCompensation` from a ``[drift_compensation]`` table (default ``"none"``)."""
    return build("drift_compensation", table)


def build_faults(table: Any = None):
    """:class:`~anasim.devices.faults.DeviceFaults` from a ``[device_faults]`` table (a
    dict, its :class:`~anasim.devices.faults.FaultParams` or a ``DeviceFaults``), or
    None when every rate and variation is zero (or the table is None)."""
    if table is None:
        return None
    if isinstance(table, DeviceFaults):
        return table if table.active else None
    faults = DeviceFaults(table if isinstance(table, FaultParams) else FaultParams.from_dict(table))
    return faults if faults.active else None


def describe(kind: str | None = None) -> dict:
    """Parameters of every registered type: ``{kind: {type: {"class", "doc", "section", "params"}}}``.

    ``params`` is a list of rows (name, default, unit, valid, doc); ``section`` the
    :class:`~anasim.params.Section` dataclass, so ``anasim params`` can print it
    with the same machinery as the other sections. ``device_faults`` is included.
    """
    kinds = [kind] if kind is not None else list(_REGISTRY) + ["device_faults"]
    out: dict = {}
    for k in kinds:
        if k == "device_faults":
            out[k] = {"": _row(DeviceFaults)}
            continue
        out[_check_kind(k)] = {name: _row(cls) for name, cls in _REGISTRY[k].items()}
    return out


def _row(cls) -> dict:
    doc = (cls.__doc__ or "").strip()
    return {"class": cls, "doc": doc, "section": cls.Params, "params": cls.describe()}
