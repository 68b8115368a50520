"""Reading and writing configurations: TOML and JSON files, dicts, ``--set`` overrides.

TOML is read with ``tomllib`` (``tomli`` on Python 3.10) and written by the small writer
below (no dependency); floats are written with ``repr`` so that
``load_config(dump_config(cfg)) == cfg`` exactly.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ConfigError, closest
from .analog_config import AnalogConfig
from .registry import BUILTIN, registered_sections

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUFFIXES = {".toml": "toml", ".json": "json"}


# -- TOML writer ----------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(k: Any) -> str:
    k = str(k)
    return k if _BARE_KEY.fullmatch(k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if hasattr(v, "item") and callable(v.item):  # NumPy scalar
        return _toml_value(v.item())
    if hasattr(v, "tolist") and callable(v.tolist):  # NumPy array
        return _toml_value(v.tolist())
    raise ConfigError(f"Cannot write {type(v).__name__} value {v!r} to TOML.")


def toml_literal(v: Any) -> str:
    """``v`` (bool, number, string, list, dict, NumPy scalar/array) as a TOML literal."""
    return _toml_value(v)


def _is_aot(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def dumps_toml(data: dict, comment: Callable[[tuple, str], str | None] | None = None) -> str:
    """``data`` as TOML text. ``comment(table_path, key)`` may return a comment for a key."""
    lines: list[str] = []

    def emit(path: tuple, table: dict, header: str | None) -> None:
        if header is not None:
            if lines:
                lines.append("")
            lines.append(header)
        for k, v in table.items():
            if isinstance(v, dict) or _is_aot(v):
                continue
            line = f"{_toml_key(k)} = {_toml_value(v)}"
            note = comment(path, k) if comment else None
            lines.append(f"{line:<40} # {note}" if note else line)
        for k, v in table.items():
            if isinstance(v, dict):
                p = path + (k,)
                emit(p, v, "[" + ".".join(_toml_key(x) for x in p) + "]")
        for k, v in table.items():
            if _is_aot(v):
                p = path + (k,)
                for item in v:
                    emit(p, item, "[[" + ".".join(_toml_key(x) for x in p) + "]]")

    emit((), data, None)
    return "\n".join(lines) + "\n"


def loads_toml(text: str, source: str = "<string>") -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc


# -- AnalogConfig <-> text ---------------------------------------------------------------
def _field_comment(path: tuple, key: str) -> str | None:
    from .schema import ForwardParameters, MappingParameters
    import dataclasses

    table = path[-1] if path else None
    cls = {"forward": ForwardParameters, "mapping": MappingParameters}.get(table)
    if cls is None:
        return None
    for f in dataclasses.fields(cls):
        if f.name == key:
            unit = f.metadata.get("unit", "")
            first = re.split(r"[:;]\s|\.\s(?=[A-Z])", str(f.metadata.get("doc", "")))[0]
            first = first.rstrip(".")
            first = first if len(first) <= 64 else first[:63].rstrip() + "…"
            return first + (f" [{unit}]" if unit and unit not in ("flag", "choice") else "")
    return None


def config_to_toml(cfg: AnalogConfig, only_changed: bool = False, comments: bool = False) -> str:
    head = "# anasim analog configuration (`anasim params` lists every parameter)\n"
    return head + dumps_toml(cfg.to_dict(only_changed), _field_comment if comments else None)


def config_to_json(cfg: AnalogConfig, only_changed: bool = False, indent: int = 2) -> str:
    return json.dumps(cfg.to_dict(only_changed), indent=indent, default=_json_default) + "\n"


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"Cannot write {type(v).__name__} to JSON")


def load_config(source: Any) -> AnalogConfig:
    """An :class:`AnalogConfig` from a TOML/JSON file (chosen by extension), a dict of the
    same shape, an ``AnalogConfig`` (returned as is), ``None`` (the ideal default) or a
    preset name (when no file of that name exists)."""
    if source is None:
        return AnalogConfig()
    if isinstance(source, AnalogConfig):
        return source
    if isinstance(source, dict):
        return AnalogConfig.from_dict(source)
    if not isinstance(source, (str, Path)):
        raise ConfigError(f"load_config needs a path, a dict or an AnalogConfig; got {type(source).__name__}.")
    path = Path(source)
    if not path.exists():
        from .presets import PRESETS, _key

        if isinstance(source, str) and _key(source) in PRESETS:
            from .presets import preset
            return preset(source)
        hint = closest(str(source), PRESETS) if path.suffix == "" else ""
        raise ConfigError(f"No configuration file {str(source)!r}.{hint} "
                          f"(A preset name is also accepted: {', '.join(PRESETS)}.)")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: unknown configuration file type {path.suffix!r}; "
                          "use .toml or .json.")
    text = path.read_text(encoding="utf-8")
    if kind == "toml":
        data = loads_toml(text, str(path))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    try:
        return AnalogConfig.from_dict(data, where=str(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from exc


def dump_config(cfg: AnalogConfig, path: str | Path, *, overwrite: bool = False,
                only_changed: bool = False, comments: bool = False) -> Path:
    """Write ``cfg`` to ``path`` as TOML or JSON (by extension). An existing file is
    refused unless ``overwrite=True``. Returns the path."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: unknown configuration file type {path.suffix!r}; use .toml or .json.")
    text = (config_to_toml(cfg, only_changed, comments) if kind == "toml"
            else config_to_json(cfg, only_changed))
    try:
        with open(path, "w" if overwrite else "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite it (pass overwrite=True, "
                          "or --overwrite on the command line).") from None
    return path


# -- --set overrides ------------------------------------------------------------------
_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]*$")


def parse_literal(text: str) -> Any:
    """A ``--set`` value as a TOML literal (``0.02``, ``true``, ``"abs_max"``, ``[1, 2]``,
    ``{type = "pcm"}``); a bare word that is not one (``abs_max``) is taken as a string."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if _BARE_WORD.fullmatch(text):
            return text
        raise ConfigError(f"Cannot read {text!r} as a TOML value ({exc}); quote strings, "
                          "e.g. 'forward.w_noise_type=\"pcm_read\"'.") from exc


def apply_overrides(cfg: Any, assignments: Iterable[str]) -> AnalogConfig:
    """``cfg`` with ``section.key=value`` assignments applied, e.g.
    ``["forward.out_noise=0.02", "mapping.max_input_size=256"]`` (the CLI's ``--set``).

    ``section=value`` with an inline table replaces a whole section
    (``noise_model={type="pcm", prog_noise_scale=0.5}``; ``noise_model=pcm`` is short for
    ``{type="pcm"}``). Values are TOML literals.
    Unknown sections or keys raise ConfigError naming the closest valid name.
    """
    cfg = load_config(cfg)
    if isinstance(assignments, str):
        assignments = [assignments]
    data = cfg.to_dict()
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


__all__ = ["load_config", "dump_config", "apply_overrides", "parse_literal", "dumps_toml",
           "loads_toml"]
