"""The top-level configuration sections besides ``[forward]``, ``[mapping]`` and ``[[layers]]``.

The device sections are built in: ``[noise_model]``, ``[converter]`` and
``[drift_compensation]`` are built by :func:`anasim.devices.build` (a built-in ``type``
name, or ``"package.module:ClassName"`` for a user class) and written back with
``obj.to_config()``; ``[device_faults]`` is :class:`anasim.devices.FaultParams`. This
module imports :mod:`anasim.devices` directly; :class:`SectionAccess` gives
``AnalogConfig`` and ``LayerConfig`` their typed fields (``noise_model``,
``converter``, ``drift_compensation``, ``faults``).

Plugins add further tables with :func:`register_section`::

    register_section("my_section", MySection)                        # one Section class
    register_section("my_model", TypedFactory("my_model", {          # chosen by `type`
        "fast": FastModel, "exact": ExactModel}))

A registered *factory* is any callable ``factory(dict) -> object``; the object is written
back with ``serialize(obj)`` (default: ``obj.to_dict()``), and ``factory(serialize(obj))``
must equal ``obj`` (that is the round trip the configuration files rely on).
:class:`TypedFactory` does the ``type = "fast"`` / ``type = "package.module:ClassName"``
dispatch for you (through :func:`anasim.params.import_class`, the resolver the device
sections use too). A section absent from a file takes ``default()`` when one was given,
else ``None``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import devices
from ..devices import Converter, DeviceFaults, DriftCompensation, FaultParams, NoiseModel
from ..errors import ConfigError, brief, closest
from ..params import Section, import_class

#: Top-level keys that are not registrable sections.
BUILTIN = ("forward", "mapping", "layers")
RESERVED = BUILTIN + ("preset",)
#: The device sections (built in, in this order; :mod:`anasim.devices` parses them).
DEVICE_KINDS = ("noise_model", "converter", "drift_compensation")
DEVICE_SECTIONS = DEVICE_KINDS + ("device_faults",)


@dataclass(frozen=True)
class SectionEntry:
    """A section: how to build it from a dict, accept an object, and write it back."""

    name: str
    factory: Callable[[dict], Any]
    serialize: Callable[[Any], dict]
    default: Callable[[], Any] | None = None
    doc: str = ""
    #: (variant, Section class) pairs documented by ``anasim params`` (variant is the
    #: ``type`` value selecting the class, "" for a single-class section), or a
    #: zero-argument callable giving them when asked (the device registries can grow).
    documented: tuple | Callable[[], tuple] = field(default_factory=tuple)
    #: ``accept(value) -> object`` for a value that is not a dict (an object built
    #: elsewhere); None keeps such values as they are.
    accept: Callable[[Any], Any] | None = None

    @property
    def classes(self) -> tuple:
        """(variant, Section class) pairs that ``anasim params`` documents."""
        return tuple(self.documented() if callable(self.documented) else self.documented)

    def build(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ConfigError(
                f"[{self.name}] must be a table (dict); got {type(data).__name__}.")
        return self.factory(dict(data))

    def coerce(self, value: Any) -> Any:
        """``value`` (a table or an object) as the section's object."""
        if isinstance(value, dict):
            return self.build(value)
        return value if self.accept is None else self.accept(value)

    def default_value(self) -> Any:
        return None if self.default is None else self.default()


_REGISTRY: dict[str, SectionEntry] = {}


def _default_serialize(obj: Any) -> dict:
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    raise ConfigError(f"cannot serialize section object {obj!r}: it has no to_dict().")


def _entry(name: str, cls_or_factory: Any, default, serialize, doc, classes, accept=None) -> SectionEntry:
    if isinstance(cls_or_factory, type) and issubclass(cls_or_factory, Section):
        cls = cls_or_factory
        factory = lambda data, cls=cls, name=name: cls.from_dict(data, where=name)  # noqa: E731
        found: Any = (("", cls),)
        doc = doc or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
    elif callable(cls_or_factory):
        factory = cls_or_factory
        # read when documenting: a factory's types may still grow
        found = lambda f=cls_or_factory: tuple(getattr(f, "classes", ()))  # noqa: E731
        serialize = serialize or getattr(cls_or_factory, "serialize", None)
        doc = doc or getattr(cls_or_factory, "doc", "")
    else:
        raise TypeError(f"register_section({name!r}, ...) needs a Section class or a callable.")
    return SectionEntry(name=name, factory=factory, serialize=serialize or _default_serialize,
                        default=default, doc=doc,
                        documented=tuple(classes) if classes is not None else found, accept=accept)


def register_section(name: str, cls_or_factory: Any, *, default: Callable[[], Any] | None = None,
                     serialize: Callable[[Any], dict] | None = None, doc: str = "",
                     classes: tuple | list | None = None, replace: bool = False) -> SectionEntry:
    """Register the parser of the top-level table ``[name]`` (a plugin's section).

    Parameters
    ----------
    name : table name, e.g. "my_section". The built-in keys (forward, mapping, layers,
        preset) and the device sections (noise_model, converter, drift_compensation,
        device_faults) cannot be registered: a user device class is selected with
        ``type = "package.module:ClassName"`` in its section instead.
    cls_or_factory : a :class:`Section` subclass (built with ``from_dict``), a
        :class:`TypedFactory`, or any callable ``f(dict) -> object``.
    default : zero-argument callable giving the value when the file has no ``[name]``.
    serialize : ``obj -> dict`` inverse of the factory (default ``obj.to_dict()``, or the
        factory's own ``serialize`` when it has one).
    doc : one line describing the section, for ``anasim params``.
    classes : (variant, Section class) pairs to document; taken from the factory's
        ``classes`` attribute or the Section class itself when omitted.
    replace : allow replacing an existing registration (otherwise an error).
    """
    if name in RESERVED:
        raise ConfigError(f"{name!r} is a built-in configuration key and cannot be registered.")
    if name in DEVICE_SECTIONS:
        raise ConfigError(
            f"[{name}] is a built-in device section (anasim.devices) and cannot be registered; "
            "select a user class with type = \"package.module:ClassName\" in it instead.")
    if name in _REGISTRY and not replace:
        raise ConfigError(f"A section named {name!r} is already registered "
                          "(pass replace=True to replace it).")
    entry = _entry(name, cls_or_factory, default, serialize, doc, classes)
    _REGISTRY[name] = entry
    return entry


def unregister_section(name: str) -> None:
    """Remove a plugin's registration (tests, plugins being reloaded); the device
    sections are built in and stay."""
    if name in DEVICE_SECTIONS:
        raise ConfigError(f"[{name}] is a built-in device section and cannot be unregistered.")
    _REGISTRY.pop(name, None)


def registered_sections() -> dict[str, SectionEntry]:
    """Every section besides forward/mapping/layers by name: the device sections first,
    then the plugins' in registration order."""
    return dict(_REGISTRY)


def get_entry(name: str, where: str = "the configuration") -> SectionEntry:
    """The entry of a section, or a ConfigError naming the valid sections."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    valid = list(BUILTIN) + list(_REGISTRY)
    raise ConfigError(f"Unknown section {name!r} in {where}.{closest(str(name), valid)} "
                      f"Valid sections: {', '.join(valid)}.")


class TypedFactory:
    """Factory for a plugin section whose class is chosen by its ``type`` key.

    ``type`` is either a short name from ``types`` ("fast") or a fully qualified
    ``"package.module:ClassName"`` of a user class (imported on demand by
    :func:`anasim.params.import_class`; it must accept the remaining keys through
    ``from_dict(dict)`` or as keyword arguments and have ``to_dict()``). Note that a
    configuration file can thereby import any module on the Python path: treat
    configuration files like code.
    """

    def __init__(self, section: str, types: dict[str, type], default_type: str | None = None,
                 doc: str = ""):
        self.section = section
        self.types = dict(types)
        self.default_type = default_type
        self.doc = doc

    @property
    def classes(self) -> tuple:
        return tuple((k, v) for k, v in self.types.items()
                     if isinstance(v, type) and issubclass(v, Section))

    def resolve(self, type_name: Any) -> type:
        if not isinstance(type_name, str):
            raise ConfigError(f"The 'type' of [{self.section}] must be a string; got {brief(type_name)}.")
        if type_name in self.types:
            return self.types[type_name]
        if ":" in type_name:
            return import_class(type_name, self.section)
        raise ConfigError(
            f"Unknown type {type_name!r} in [{self.section}].{closest(type_name, self.types)} "
            f"Valid types: {', '.join(self.types)}, or 'package.module:ClassName'.")

    def __call__(self, data: dict) -> Any:
        data = dict(data)
        type_name = data.pop("type", self.default_type)
        if type_name is None:
            raise ConfigError(f"[{self.section}] needs a 'type' key: one of "
                              f"{', '.join(self.types)}, or 'package.module:ClassName'.")
        cls = self.resolve(type_name)
        if isinstance(cls, type) and issubclass(cls, Section):
            return cls.from_dict(data, where=self.section)
        if hasattr(cls, "from_dict"):
            return cls.from_dict(data)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"[{self.section}] type {type_name!r}: {exc}") from exc

    def type_name(self, obj: Any) -> str:
        for k, v in self.types.items():
            if type(obj) is v:
                return k
        return f"{type(obj).__module__}:{type(obj).__qualname__}"

    def serialize(self, obj: Any) -> dict:
        return {"type": self.type_name(obj), **_default_serialize(obj)}


# -- the device sections ------------------------------------------------------------------
def _device_classes(kind: str) -> tuple:
    """(type name, Params) of every registered device class of ``kind``."""
    out = []
    for name in devices.names(kind):
        params = devices.get_class(kind, name).Params
        if isinstance(params, type) and issubclass(params, Section) and dataclasses.is_dataclass(params):
            out.append((name, params))
    return tuple(out)


def _accept_faults(value: Any) -> FaultParams:
    if isinstance(value, FaultParams):
        return value
    if isinstance(value, DeviceFaults):
        return value.params
    raise ConfigError(f"[device_faults] must be a table of parameters; got {type(value).__name__}.")


def _register_device_sections() -> None:
    for kind in DEVICE_KINDS:
        _REGISTRY[kind] = SectionEntry(
            name=kind,
            factory=lambda data, kind=kind: devices.build(kind, data),
            serialize=lambda obj: dict(obj.to_config()),
            default=lambda kind=kind: devices.build(kind, None),
            doc=f"{kind.replace('_', ' ')} (anasim.devices); select the class with type = \"...\"",
            documented=lambda kind=kind: _device_classes(kind),
            accept=lambda value, kind=kind: devices.build(kind, value),
        )
    _REGISTRY["device_faults"] = _entry("device_faults", FaultParams, None, None, "", None,
                                        accept=_accept_faults)


_register_device_sections()


class SectionAccess:
    """Typed access to the device sections, and attribute access to the others, of an
    object holding ``sections`` (``AnalogConfig``, ``LayerConfig``)."""

    sections: dict

    @property
    def noise_model(self) -> NoiseModel | None:
        """The configured device noise model, or None without one (no ``[noise_model]``,
        or ``type = "none"``: ideal devices, nothing to program)."""
        model = self.sections.get("noise_model")
        return model if model is not None and model.enabled else None

    @property
    def converter(self) -> Converter:
        """The configured conductance converter, else the default (a single pair)."""
        conv = self.sections.get("converter")
        return devices.build_converter() if conv is None else conv

    @property
    def drift_compensation(self) -> DriftCompensation | None:
        """The configured drift compensation, or None without one (no
        ``[drift_compensation]``, or ``type = "none"``: factor 1)."""
        comp = self.sections.get("drift_compensation")
        return comp if comp is not None and comp.enabled else None

    @property
    def faults(self) -> DeviceFaults | None:
        """The device faults of ``[device_faults]``, or None when none can occur (no
        table, or every rate and variation zero)."""
        return devices.build_faults(self.sections.get("device_faults"))

    def section(self, name: str) -> Any:
        """A section's value: the configured object, else the section's default (or None).

        Unlike the typed fields this is the object as configured, e.g. the ``type =
        "none"`` noise model itself."""
        if name in self.sections:
            return self.sections[name]
        return get_entry(name).default_value()

    def __getattr__(self, name: str) -> Any:
        """``obj.<name>`` for a section without a typed field (``device_faults``, plugin
        sections): the configured value, else the section's default."""
        if name.startswith("_"):
            raise AttributeError(name)
        typed = getattr(type(self), name, None)
        if isinstance(typed, property):  # the typed field itself raised AttributeError:
            return typed.fget(self)      # raise it again, not hidden behind the fallback
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        if name in _REGISTRY:
            return _REGISTRY[name].default_value()
        raise AttributeError(f"{type(self).__name__} has no attribute or section {name!r}")
