"""``describe_parameters``: every configuration parameter as a record, for ``anasim params``."""

from __future__ import annotations

from ..errors import ConfigError, closest
from ..params import ParamRecord, field_records, format_default
from .layers import LayerOverride
from .registry import registered_sections
from .schema import ForwardParameters, MappingParameters

BUILTIN_CLASSES = {"forward": ForwardParameters, "mapping": MappingParameters, "layers": LayerOverride}


def section_classes() -> list[tuple[str, str, type]]:
    """(section, variant, class) for every documented section class, built-in first."""
    out = [(name, "", cls) for name, cls in BUILTIN_CLASSES.items()]
    for name, entry in registered_sections().items():
        out += [(name, variant, cls) for variant, cls in entry.classes]
    return out


def describe_parameters(section: str | None = None) -> list[ParamRecord]:
    """Records (section, name, type, default, unit, valid, meaning, aihwkit, variant) of
    every field of every section — or of one section — in declaration order."""
    classes = section_classes()
    if section is not None:
        names = list(dict.fromkeys(s for s, _, _ in classes))
        if section not in names:
            raise ConfigError(f"Unknown section {section!r}.{closest(section, names)} "
                              f"Valid sections: {', '.join(names)}.")
        classes = [c for c in classes if c[0] == section]
    out: list[ParamRecord] = []
    for name, variant, cls in classes:
        out += field_records(cls, section=name, variant=variant)
    return out


def format_parameters(records: list[ParamRecord]) -> str:
    """Plain-text listing of records, grouped by section (what ``anasim params`` prints)."""
    lines: list[str] = []
    current = None
    for r in records:
        head = f"[{r.section}]" + (f"  type = {r.variant!r}" if r.variant else "")
        if head != current:
            if lines:
                lines.append("")
            lines.append(head)
            current = head
        unit = f" [{r.unit}]" if r.unit else ""
        lines.append(f"  {r.name} = {format_default(r.default)}{unit}   ({r.type}; {r.valid})")
        lines.append(f"      {r.meaning}")
        if r.aihwkit:
            lines.append(f"      aihwkit: {r.aihwkit}")
    return "\n".join(lines) + "\n"
