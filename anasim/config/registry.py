"""Registry of the extra top-level configuration sections (``[noise_model]``, ...).

``[forward]``, ``[mapping]`` and ``[[layers]]`` are built in. Any other table of a
configuration file is parsed by whatever was registered under its name::

    register_section("drift_compensation", GlobalDriftCompensation)        # one Section class
    register_section("noise_model", TypedFactory("noise_model", {           # chosen by `type`
        "pcm": PCMLikeNoiseModel, "reram": ReRamWan2022NoiseModel}))

A registered *factory* is any callable ``factory(dict) -> object``; the object is written
back with ``serialize(obj)`` (default: ``obj.to_dict()``), and ``factory(serialize(obj))``
must equal ``obj`` (that is the round trip the configuration files rely on).
:class:`TypedFactory` does the ``type = "pcm"`` / ``type = "package.module:ClassName"``
dispatch for you. A section absent from a file takes ``default()`` when one was given,
else ``None``.

The devices package registers its sections when imported; :func:`load_plugins` imports
it lazily, so ``anasim.config`` never imports ``anasim.devices`` at module level.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError, closest
from .params import Section

#: Top-level keys that are not registrable sections.
BUILTIN = ("forward", "mapping", "layers")
RESERVED = BUILTIN + ("preset",)
#: Modules imported (once, lazily) so that they can register their sections.
PLUGIN_MODULES = ["anasim.devices"]


@dataclass(frozen=True)
class SectionEntry:
    """A registered section: how to build it from a dict and write it back."""

    name: str
    factory: Callable[[dict], Any]
    serialize: Callable[[Any], dict]
    default: Callable[[], Any] | None = None
    doc: str = ""
    #: (variant, Section class) pairs documented by ``anasim params``; variant is the
    #: ``type`` value selecting the class ("" for a single-class section).
    classes: tuple = field(default_factory=tuple)

    def build(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ConfigError(
                f"[{self.name}] must be a table (dict); got {type(data).__name__}.")
        return self.factory(dict(data))

    def default_value(self) -> Any:
        return None if self.default is None else self.default()


_REGISTRY: dict[str, SectionEntry] = {}
_plugins_loaded = False


def _default_serialize(obj: Any) -> dict:
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    raise ConfigError(f"cannot serialize section object {obj!r}: it has no to_dict().")


def register_section(name: str, cls_or_factory: Any, *, default: Callable[[], Any] | None = None,
                     serialize: Callable[[Any], dict] | None = None, doc: str = "",
                     classes: tuple | list | None = None, replace: bool = False) -> SectionEntry:
    """Register the parser of the top-level table ``[name]``.

    Parameters
    ----------
    name : table name, e.g. "noise_model".
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
    if name in _REGISTRY and not replace:
        raise ConfigError(f"A section named {name!r} is already registered "
                          "(pass replace=True to replace it).")
    if isinstance(cls_or_factory, type) and issubclass(cls_or_factory, Section):
        cls = cls_or_factory
        factory = lambda data, cls=cls, name=name: cls.from_dict(data, where=name)  # noqa: E731
        found = (("", cls),)
        doc = doc or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
    elif callable(cls_or_factory):
        factory = cls_or_factory
        found = tuple(getattr(cls_or_factory, "classes", ()))
        serialize = serialize or getattr(cls_or_factory, "serialize", None)
        doc = doc or getattr(cls_or_factory, "doc", "")
    else:
        raise TypeError(f"register_section({name!r}, ...) needs a Section class or a callable.")
    entry = SectionEntry(name=name, factory=factory, serialize=serialize or _default_serialize,
                         default=default, doc=doc,
                         classes=tuple(classes) if classes is not None else found)
    _REGISTRY[name] = entry
    return entry


def unregister_section(name: str) -> None:
    """Remove a registration (tests, plugins being reloaded)."""
    _REGISTRY.pop(name, None)


def load_plugins() -> None:
    """Import the modules that register sections (once). A module that does not exist
    yet is skipped; an error inside an existing one is raised."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for mod in PLUGIN_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (mod == exc.name or mod.startswith(exc.name + ".")):
                raise
            continue
        if mod == "anasim.devices":
            _register_devices(module)


def _register_devices(devices: Any) -> None:
    """Register ``[noise_model]``, ``[converter]``, ``[drift_compensation]`` (built by
    ``anasim.devices.build(kind, table)``, written back by ``obj.to_config()``) and
    ``[device_faults]`` (its ``FaultParams`` section) — unless the devices package
    registered them itself."""
    build = getattr(devices, "build", None)
    describe = getattr(devices, "describe", None)
    if build is None or describe is None:
        return
    for kind in ("noise_model", "converter", "drift_compensation"):
        if kind in _REGISTRY:
            continue
        try:
            types = describe(kind).get(kind, {})
        except Exception:  # an unknown kind in this version of anasim.devices
            continue
        classes = tuple((name, info["section"]) for name, info in types.items()
                        if isinstance(info.get("section"), type) and issubclass(info["section"], Section)
                        and dataclasses.is_dataclass(info["section"]))
        register_section(
            kind, lambda data, kind=kind: build(kind, data),
            serialize=lambda obj: dict(obj.to_config()),
            default=lambda kind=kind: build(kind, None),
            doc=f"{kind.replace('_', ' ')} (anasim.devices); select the class with type = \"...\"",
            classes=classes)
    faults = getattr(devices, "FaultParams", None)
    if "device_faults" not in _REGISTRY and isinstance(faults, type) and issubclass(faults, Section):
        register_section("device_faults", faults)


def registered_sections() -> dict[str, SectionEntry]:
    """The registered extra sections by name (after loading the plugins)."""
    load_plugins()
    return dict(_REGISTRY)


def get_entry(name: str, where: str = "the configuration") -> SectionEntry:
    """The entry of a registered section, or a ConfigError naming the valid sections."""
    entries = registered_sections()
    if name in entries:
        return entries[name]
    valid = list(BUILTIN) + list(entries)
    raise ConfigError(f"Unknown section {name!r} in {where}.{closest(str(name), valid)} "
                      f"Valid sections: {', '.join(valid)}.")


class TypedFactory:
    """Factory for a section whose class is chosen by its ``type`` key.

    ``type`` is either a short name from ``types`` ("pcm") or a fully qualified
    ``"package.module:ClassName"`` of a user class (imported on demand; it must accept the
    remaining keys through ``from_dict(dict)`` or as keyword arguments and have
    ``to_dict()``). Note that a configuration file can thereby import any module on the
    Python path: treat configuration files like code.
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
            raise ConfigError(f"The 'type' of [{self.section}] must be a string; got {type_name!r}.")
        if type_name in self.types:
            return self.types[type_name]
        if ":" in type_name:
            module, _, qualname = type_name.partition(":")
            try:
                obj: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"[{self.section}] type {type_name!r} cannot be imported: "
                                  f"{exc}.") from exc
            if not isinstance(obj, type):
                raise ConfigError(f"[{self.section}] type {type_name!r} is not a class.")
            return obj
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


def section_attribute(obj: Any, name: str) -> Any:
    """``obj.<name>`` for a registered section: the value in ``obj.sections``, else the
    section's default. Shared ``__getattr__`` of AnalogConfig and LayerConfig."""
    if name.startswith("_"):
        raise AttributeError(name)
    sections = obj.__dict__.get("sections", {})
    if name in sections:
        return sections[name]
    entries = registered_sections()
    if name in entries:
        return entries[name].default_value()
    raise AttributeError(f"{type(obj).__name__} has no attribute or section {name!r}")
