"""Per-layer overrides (``[[layers]]``) and the resolved configuration of one layer.

A ``[[layers]]`` entry selects analog layers by ONNX node name — exactly, or as an
``fnmatch`` glob (``*``, ``?``, ``[seq]``; case-sensitive) — and overrides fields of
``[forward]``, ``[mapping]`` or any registered section for them, or keeps them digital::

    [[layers]]
    match = "/conv1/*"          # or a list: ["/conv1/Conv", "/fc/Gemm"]
    digital = true

    [[layers]]
    match = "/layer3/*"
    [layers.forward]
    out_noise = 0.1

Entries apply in file order, field by field: for every field, the last matching entry
that sets it wins. :func:`unmatched_patterns` reports patterns that select nothing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from ..errors import ConfigError, closest
from ..params import Section, documented, param
from .registry import SectionAccess, registered_sections
from .schema import ForwardParameters, MappingParameters


def _valid_match(value: Any) -> str | None:
    """a non-empty string (node name or glob) or a non-empty list of them"""
    if isinstance(value, str):
        return None if value else "a non-empty string (node name or glob)"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return None
    return "a non-empty string (node name or glob) or a non-empty list of them"


def _valid_digital(value: Any) -> str | None:
    """true, false, or unset (inherit)"""
    return None if value is None or isinstance(value, bool) else "true, false, or unset"


def _valid_forward(value: Any) -> str | None:
    """a table of [forward] parameters"""
    ForwardParameters.check_partial(value, where="layers.forward")
    return None


def _valid_mapping(value: Any) -> str | None:
    """a table of [mapping] parameters"""
    MappingParameters.check_partial(value, where="layers.mapping")
    return None


def _valid_sections(value: Any) -> str | None:
    """tables of registered sections' parameters, by section name"""
    if not isinstance(value, dict):
        return "a dict of tables by section name"
    known = registered_sections()
    for name, table in value.items():
        if name not in known:
            return (f"a dict of tables of registered sections ({', '.join(known) or 'none yet'}); "
                    f"{name!r} is not one.{closest(str(name), known)}")
        if not isinstance(table, dict):
            return f"a dict of tables; [{name}] is a {type(table).__name__}"
    return None


@documented
@dataclass(frozen=True)
class LayerOverride(Section):
    """One ``[[layers]]`` entry: which layers it selects and what it changes for them."""

    section: ClassVar[str] = "layers"

    match: Any = param(
        "*",
        "ONNX node name or fnmatch glob (case-sensitive; an exact name always matches "
        "itself even if it contains glob characters), or a list of them.",
        unit="node name", valid=_valid_match, invalid=("", 5, [], ["ok", 3]))
    digital: Any = param(
        None,
        "true keeps the matching layers digital (exact, no analog model); false makes "
        "them analog again after an earlier entry; unset inherits.",
        unit="flag", valid=_valid_digital, invalid=("yes", 1))
    forward: dict = param(
        {}, "[forward] fields to override for the matching layers (a sub-table).",
        unit="table", valid=_valid_forward,
        invalid=({"out_nosie": 0.1}, {"out_noise": -1.0}, 3))
    mapping: dict = param(
        {}, "[mapping] fields to override for the matching layers (a sub-table).",
        unit="table", valid=_valid_mapping,
        invalid=({"max_input_sise": 8}, {"max_input_size": 1.5}, "x"))
    sections: dict = param(
        {},
        "Overrides of registered sections (e.g. [layers.noise_model]) by name; a sub-table "
        "with a different 'type' replaces the section, otherwise it changes fields.",
        unit="table", valid=_valid_sections,
        invalid=({"no_such_section": {}}, 4))

    def __post_init__(self) -> None:
        if isinstance(self.match, list):
            object.__setattr__(self, "match", tuple(self.match))
        super().__post_init__()
        object.__setattr__(self, "forward",
                           ForwardParameters.check_partial(self.forward, "layers.forward"))
        object.__setattr__(self, "mapping",
                           MappingParameters.check_partial(self.mapping, "layers.mapping"))
        object.__setattr__(self, "sections", {k: dict(v) for k, v in self.sections.items()})

    # dict fields are not hashable: hash by the selection only
    def __hash__(self) -> int:
        return hash((self.match, self.digital))

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.match,) if isinstance(self.match, str) else tuple(self.match)

    def matches(self, node_name: str) -> bool:
        return any(node_name == p or fnmatch.fnmatchcase(node_name, p) for p in self.patterns)

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None) -> "LayerOverride":
        where = where or "[[layers]] entry"
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table; got {type(data).__name__}.")
        own = ("match", "digital", "forward", "mapping")
        kwargs, sections = {}, {}
        extra = registered_sections()
        for key, value in data.items():
            if key in own:
                kwargs[key] = value
            elif key in extra:
                sections[key] = value
            else:
                valid = list(own) + list(extra)
                raise ConfigError(f"Unknown key {key!r} in {where}.{closest(str(key), valid)} "
                                  f"Valid keys: {', '.join(valid)}.")
        if "match" not in kwargs:
            raise ConfigError(f"{where} needs a 'match' key (ONNX node name or glob).")
        return cls(sections=sections, **kwargs)

    def to_dict(self, only_changed: bool = False) -> dict:
        out: dict[str, Any] = {"match": self.match if isinstance(self.match, str) else list(self.match)}
        if self.digital is not None:
            out["digital"] = self.digital
        if self.forward:
            out["forward"] = dict(self.forward)
        if self.mapping:
            out["mapping"] = dict(self.mapping)
        for name, table in self.sections.items():
            out[name] = dict(table)
        return out


@dataclass(frozen=True)
class LayerConfig(SectionAccess):
    """The configuration one analog layer is simulated with (see ``AnalogConfig.for_layer``).

    Typed fields as on ``AnalogConfig``: ``noise_model`` (None for ideal devices),
    ``converter`` (the default single pair when none is configured),
    ``drift_compensation`` (None when there is none), ``faults`` (None when no device
    can fail); ``section(name)`` and attributes (``layer.device_faults``) give the other
    sections.
    """

    name: str
    digital: bool
    forward: ForwardParameters
    mapping: MappingParameters
    sections: dict = field(default_factory=dict, hash=False)
    matched: tuple = ()  # the [[layers]] patterns that selected this layer, in order


def unmatched_patterns(config, node_names: Iterable[str]) -> list[str]:
    """The ``[[layers]]`` patterns of ``config`` that match none of ``node_names``
    (in file order, each once), so that a typo is not silently ignored."""
    names = list(node_names)
    out: list[str] = []
    for lo in config.layers:
        for p in lo.patterns:
            if p not in out and not any(n == p or fnmatch.fnmatchcase(n, p) for n in names):
                out.append(p)
    return out


def check_patterns(config, node_names: Iterable[str]) -> None:
    """Raise ConfigError if a ``[[layers]]`` pattern matches no node, naming the closest
    node name for each."""
    names = list(node_names)
    bad = unmatched_patterns(config, names)
    if bad:
        parts = [f"{p!r}{closest(p, names)}" for p in bad]
        raise ConfigError("[[layers]] pattern(s) matching no layer of the model: "
                          + "; ".join(parts))
