"""Configuration text: the TOML writer and reader, JSON, ``--set`` literals.

TOML is read with ``tomllib`` (``tomli`` on Python 3.10) and written by the small writer
below (no dependency); floats are written with ``repr`` so that
``load_config(dump_config(cfg)) == cfg`` exactly. Nothing here knows ``AnalogConfig``:
:func:`config_to_toml` and :func:`config_to_json` take any object with ``to_dict``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from typing import Any, Callable

from ..errors import ConfigError
from .schema import ForwardParameters, MappingParameters

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
    """TOML text as a dict; a syntax error is a ConfigError naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc


# -- a configuration as text ---------------------------------------------------------------
def _field_comment(path: tuple, key: str) -> str | None:
    """The first phrase of a [forward]/[mapping] field's meaning (and its unit)."""
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


def config_to_toml(cfg: Any, only_changed: bool = False, comments: bool = False) -> str:
    """``cfg.to_dict(only_changed)`` as a TOML file (``comments``: each field's meaning)."""
    head = "# anasim analog configuration (`anasim params` lists every parameter)\n"
    return head + dumps_toml(cfg.to_dict(only_changed), _field_comment if comments else None)


def config_to_json(cfg: Any, only_changed: bool = False, indent: int = 2) -> str:
    """``cfg.to_dict(only_changed)`` as JSON text."""
    return json.dumps(cfg.to_dict(only_changed), indent=indent, default=_json_default) + "\n"


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"Cannot write {type(v).__name__} to JSON")


# -- --set literals ------------------------------------------------------------------
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


__all__ = ["dumps_toml", "loads_toml", "toml_literal", "parse_literal", "config_to_toml",
           "config_to_json"]
