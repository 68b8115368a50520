"""``AnalogConfig``: the whole hardware configuration of one simulation.

It holds ``forward`` (:class:`ForwardParameters`), ``mapping``
(:class:`MappingParameters`), the ``[[layers]]`` overrides and the other sections by name
(``sections``: the device sections ``noise_model``, ``converter``,
``drift_compensation``, ``device_faults`` and any plugin's). The device sections are
typed fields too (:class:`~anasim.config.registry.SectionAccess`): ``noise_model``
(None for ideal devices), ``converter`` (the default single pair when not configured),
``drift_compensation`` (None when there is none) and ``faults``. It is immutable and
hashable (extra sections excluded from the hash), compares by value, and pickles, so it
can key result tables and travel to sweep workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import ConfigError, closest
from .layers import LayerConfig, LayerOverride
from .presets import preset_dict
from .registry import BUILTIN, SectionAccess, get_entry, registered_sections
from .schema import ForwardParameters, MappingParameters
from .text import config_to_json, config_to_toml, parse_literal

TOP_LEVEL = BUILTIN + ("preset",)


def _plain(v):
    """Tuples as lists, recursively: the dict equals its JSON/TOML round trip (results
    files, sweep points), e.g. ``forward.adc_inl``'s table of (input, output) pairs."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True, eq=False)
class AnalogConfig(SectionAccess):
    """A complete analog configuration (``[forward]``, ``[mapping]``, ``[[layers]]`` and
    the other sections). ``AnalogConfig()`` is the ``ideal`` preset.

    Dicts are accepted for every part and validated: ``AnalogConfig(forward={"out_noise":
    0.04, "out_bound": 10.0, "out_res": 254})``.
    """

    forward: ForwardParameters = field(default_factory=ForwardParameters)
    mapping: MappingParameters = field(default_factory=MappingParameters)
    layers: tuple = ()
    sections: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        fwd, mp = self.forward, self.mapping
        if isinstance(fwd, dict):
            fwd = ForwardParameters.from_dict(fwd)
        if isinstance(mp, dict):
            mp = MappingParameters.from_dict(mp)
        if not isinstance(fwd, ForwardParameters):
            raise ConfigError(f"forward must be ForwardParameters or a dict; got {type(fwd).__name__}.")
        if not isinstance(mp, MappingParameters):
            raise ConfigError(f"mapping must be MappingParameters or a dict; got {type(mp).__name__}.")
        if not isinstance(self.layers, (list, tuple)):
            raise ConfigError("layers must be a list of [[layers]] tables; got "
                              f"{type(self.layers).__name__}.")
        layers = []
        for i, lo in enumerate(self.layers):
            if isinstance(lo, dict):
                lo = _in_layer(i, lo, lambda lo=lo, i=i: LayerOverride.from_dict(lo, where=f"[[layers]] entry {i}"))
            if not isinstance(lo, LayerOverride):
                raise ConfigError(f"[[layers]] entry {i} must be a table; got {type(lo).__name__}.")
            layers.append(lo)
        if not isinstance(self.sections, dict):
            raise ConfigError(f"sections must be a dict; got {type(self.sections).__name__}.")
        sections = {}
        for name, value in self.sections.items():
            if value is None:  # same as absent: the registered default applies
                continue
            sections[name] = get_entry(name).coerce(value)
        object.__setattr__(self, "forward", fwd)
        object.__setattr__(self, "mapping", mp)
        object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "sections", sections)
        for i, lo in enumerate(layers):  # each override must give a valid layer on its own
            _in_layer(i, lo, lambda lo=lo: self._resolve("<check>", [lo]))

    # -- equality: registered sections compare by their serialized tables, so that
    # device objects without __eq__ still give load(dump(cfg)) == cfg -----------------
    def _key(self) -> tuple:
        entries = registered_sections()
        secs = {n: (entries[n].serialize(o) if n in entries else o) for n, o in self.sections.items()}
        return (self.forward, self.mapping, self.layers, secs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AnalogConfig):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.forward, self.mapping, self.layers))

    # -- access: the typed fields noise_model, converter, drift_compensation, faults,
    # section(name) and attribute access to the other sections come from SectionAccess
    def for_layer(self, node_name: str) -> LayerConfig:
        """The configuration of the layer whose ONNX node is ``node_name``, with every
        matching ``[[layers]]`` entry applied in order (later entries win per field)."""
        hits = [lo for lo in self.layers if lo.matches(node_name)]
        if not hits:
            return LayerConfig(node_name, False, self.forward, self.mapping, dict(self.sections))
        try:
            return self._resolve(node_name, hits)
        except ConfigError as exc:
            pats = ", ".join(repr(p) for lo in hits for p in lo.patterns)
            raise ConfigError(f"For layer {node_name!r} (matched by {pats}): {exc}") from exc

    def _resolve(self, node_name: str, hits: list) -> LayerConfig:
        digital, fwd, mp, secs = False, {}, {}, {}
        for lo in hits:
            if lo.digital is not None:
                digital = lo.digital
            fwd.update(lo.forward)
            mp.update(lo.mapping)
            for name, table in lo.sections.items():
                if "type" in table and table["type"] != secs.get(name, {}).get("type", table["type"]):
                    secs[name] = dict(table)
                else:
                    secs.setdefault(name, {}).update(table)
        forward = dataclasses.replace(self.forward, **fwd) if fwd else self.forward
        mapping = dataclasses.replace(self.mapping, **mp) if mp else self.mapping
        sections = dict(self.sections)
        for name, table in secs.items():
            entry = get_entry(name)
            base = self.section(name)
            data = {} if base is None else entry.serialize(base)
            if "type" in table and data.get("type") != table["type"]:
                data = {}
            sections[name] = entry.build({**data, **table})
        matched = tuple(p for lo in hits for p in lo.patterns)
        return LayerConfig(node_name, digital, forward, mapping, sections, matched)

    # -- conversion --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, where: str = "the configuration") -> "AnalogConfig":
        """Build from a dict shaped like the TOML file. A top-level ``preset = "name"``
        starts from that preset; the file's tables then change individual fields."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table (dict); got {type(data).__name__}.")
        entries = registered_sections()
        for key in data:
            if key not in TOP_LEVEL and key not in entries:
                valid = list(TOP_LEVEL) + list(entries)
                raise ConfigError(f"Unknown section {key!r} in {where}.{closest(str(key), valid)} "
                                  f"Valid sections: {', '.join(valid)}.")
        data = dict(data)
        if "preset" in data:
            data = merge_dicts(preset_dict(data.pop("preset")), data)
        layers = data.get("layers", [])
        if not isinstance(layers, list):
            raise ConfigError(f"'layers' in {where} must be an array of tables ([[layers]]); "
                              f"got {type(layers).__name__}.")
        sections = {k: v for k, v in data.items() if k not in TOP_LEVEL}
        return cls(forward=_table(data, "forward"), mapping=_table(data, "mapping"),
                   layers=layers, sections=sections)

    def to_dict(self, only_changed: bool = False) -> dict:
        """A dict of plain values shaped like the TOML file; ``from_dict`` inverts it.
        ``only_changed`` leaves out [forward]/[mapping] fields equal to the defaults."""
        out: dict[str, Any] = {}
        fwd = self.forward.to_dict(only_changed)
        mp = self.mapping.to_dict(only_changed)
        if fwd or not only_changed:
            out["forward"] = fwd
        if mp or not only_changed:
            out["mapping"] = mp
        entries = registered_sections()
        for name, obj in self.sections.items():
            out[name] = entries[name].serialize(obj) if name in entries else obj
        if self.layers:
            out["layers"] = [lo.to_dict() for lo in self.layers]
        return _plain(out)

    def to_toml(self, only_changed: bool = False, comments: bool = False) -> str:
        """The configuration as TOML text (``comments`` adds each field's meaning)."""
        return config_to_toml(self, only_changed=only_changed, comments=comments)

    def to_json(self, only_changed: bool = False, indent: int = 2) -> str:
        """The configuration as JSON text (the same shape as the TOML file)."""
        return config_to_json(self, only_changed=only_changed, indent=indent)

    def replace(self, **changes) -> "AnalogConfig":
        """A copy with parts replaced (``forward=``, ``mapping=``, ``layers=``, ``sections=``)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, assignments: Iterable[str]) -> "AnalogConfig":
        """A copy with ``section.key=value`` assignments applied, e.g.
        ``["forward.out_noise=0.02", "mapping.max_input_size=256"]`` (the CLI's ``--set``).

        ``section=value`` with an inline table replaces a whole section
        (``noise_model={type="pcm", prog_noise_scale=0.5}``; ``noise_model=pcm`` is short for
        ``{type="pcm"}``). Values are TOML literals.
        Unknown sections or keys raise ConfigError naming the closest valid name.
        """
        if isinstance(assignments, str):
            assignments = [assignments]
        data = self.to_dict()
        entries = registered_sections()
        valid_sections = list(BUILTIN[:2]) + list(entries)
        for item in assignments:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"Override {item!r} must look like 'section.key=value', "
                                  "e.g. 'forward.out_noise=0.02'.")
            lhs, _, rhs = item.partition("=")
            path = [p.strip() for p in lhs.strip().split(".")]
            section = path[0]
            if section not in valid_sections:
                hint = closest(section, valid_sections)
                extra = " ([[layers]] entries can only be changed in a file.)" if section == "layers" else ""
                raise ConfigError(f"Unknown section {section!r} in override {item!r}.{hint} "
                                  f"Valid sections: {', '.join(valid_sections)}.{extra}")
            value = parse_literal(rhs)
            if len(path) == 1:
                if isinstance(value, str) and section in entries:  # noise_model=pcm
                    value = {"type": value}
                if not isinstance(value, dict):
                    raise ConfigError(f"Override {item!r}: a whole section needs an inline table, "
                                      f"e.g. {section}={{type = \"...\"}}; or set one key with "
                                      f"{section}.KEY=VALUE.")
                data[section] = value
                continue
            table = data.get(section)
            if table is None:
                entry = entries[section]
                default = entry.default_value()
                table = {} if default is None else entry.serialize(default)
            table = dict(table)
            node = table
            for key in path[1:-1]:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"Override {item!r}: {key!r} is not a table in [{section}].")
                node[key] = dict(node[key])
                node = node[key]
            node[path[-1]] = value
            data[section] = table
        return AnalogConfig.from_dict(data, where="the --set overrides")

    def __str__(self) -> str:
        parts = [str(self.forward), str(self.mapping)]
        parts += [f"{k}={v}" for k, v in self.sections.items()]
        if self.layers:
            parts.append(f"{len(self.layers)} [[layers]] overrides")
        return "AnalogConfig(" + ", ".join(parts) + ")"


def _table(data: dict, key: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table of parameters; got {type(value).__name__}.")
    return value


def _in_layer(i: int, lo: Any, fn):
    try:
        return fn()
    except ConfigError as exc:
        if str(exc).startswith("In [[layers]]"):
            raise
        pats = lo.match if isinstance(lo, LayerOverride) else (lo.get("match") if isinstance(lo, dict) else lo)
        raise ConfigError(f"In [[layers]] entry {i} (match {pats!r}): {exc}") from exc


def merge_dicts(base: dict, top: dict) -> dict:
    """Configuration dicts merged table by table: ``top``'s keys win; a table whose
    ``type`` differs from the base's replaces it; ``layers`` lists are concatenated."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in top.items():
        if key == "layers":
            out["layers"] = list(out.get("layers", [])) + list(value if isinstance(value, list) else [value])
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and (
                value.get("type", out[key].get("type")) == out[key].get("type")):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out
