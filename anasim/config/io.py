"""Reading and writing configurations: TOML and JSON files, dicts, presets, ``--set`` overrides.

The text formats themselves are :mod:`anasim.config.text` (re-exported here); the
presets' data is :mod:`anasim.config.presets`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, closest
from ..files import parse_nested, read_text
from .analog_config import AnalogConfig
from .presets import PRESETS, preset_dict, preset_key
from .text import (  # noqa: F401  (re-exported)
    config_to_json,
    config_to_toml,
    dumps_toml,
    loads_toml,
    parse_literal,
    toml_literal,
)

SUFFIXES = {".toml": "toml", ".json": "json"}


def preset(name: str) -> AnalogConfig:
    """The :class:`AnalogConfig` of a named preset (see :func:`list_presets`)."""
    return AnalogConfig.from_dict(preset_dict(name), where=f"preset {name!r}")


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
        if isinstance(source, str) and preset_key(source) in PRESETS:
            return preset(source)
        hint = closest(str(source), PRESETS) if path.suffix == "" else ""
        raise ConfigError(f"No configuration file {str(source)!r}.{hint} "
                          f"(A preset name is also accepted: {', '.join(PRESETS)}.)")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: unknown configuration file type {path.suffix!r}; "
                          "use .toml or .json.")
    text = read_text(path, "configuration file", ConfigError)
    if kind == "toml":
        data = parse_nested(lambda t: loads_toml(t, str(path)), text, str(path), ConfigError)
    else:
        try:
            data = parse_nested(json.loads, text, str(path), ConfigError)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    try:
        return parse_nested(lambda d: AnalogConfig.from_dict(d, where=str(path)), data, str(path), ConfigError)
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


def apply_overrides(cfg: Any, assignments: Iterable[str]) -> AnalogConfig:
    """``cfg`` (anything :func:`load_config` takes) with ``section.key=value``
    assignments applied, e.g. ``["forward.out_noise=0.02", "mapping.max_input_size=256"]``
    (the CLI's ``--set``); see :meth:`AnalogConfig.with_overrides`."""
    return load_config(cfg).with_overrides(assignments)


__all__ = ["load_config", "dump_config", "apply_overrides", "preset", "parse_literal", "dumps_toml",
           "loads_toml", "toml_literal"]
