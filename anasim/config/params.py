"""Declarative parameter fields: every configuration field carries its meaning.

A configuration section is a dataclass deriving from :class:`Section`; each field is
declared with :func:`param`, which records the default, the unit, the valid values
(an :class:`Interval` or a tuple of choices) and a one-paragraph meaning. Validation is
generic (``Section.__post_init__``) and speaks one language::

    The 'out_noise' parameter of [forward] must be a float in the range [0, inf). Got -0.1 instead.

``anasim params`` is generated from these records; nothing is kept by hand.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError, closest


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``None`` means unbounded. ``kind`` is "float" or "int"."""

    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right", "neither"
    kind: str = "float"

    def contains(self, value: float) -> bool:
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        lo = "-inf" if self.low is None else repr(self.low)
        hi = "inf" if self.high is None else repr(self.high)
        lb = "[" if self.low is not None and self.closed in ("both", "left") else "("
        rb = "]" if self.high is not None and self.closed in ("both", "right") else ")"
        return f"{lb}{lo}, {hi}{rb}"


def param(default: Any, doc: str, *, unit: str = "", valid: Any = None, **extra) -> Any:
    """Declare a documented, validated dataclass field.

    Parameters
    ----------
    default : the default value (lists/dicts are copied per instance).
    doc : meaning of the parameter, one or a few sentences.
    unit : physical or logical unit ("µS", "s", "steps", "" for dimensionless).
    valid : an :class:`Interval`, a tuple of allowed values, ``bool``, ``str`` or a
        callable ``f(value) -> str | None`` returning an error text.
    """
    meta = {"doc": doc, "unit": unit, "valid": valid, **extra}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_valid(valid: Any) -> str:
    """Human-readable form of a ``valid`` specification."""
    if isinstance(valid, Interval):
        return f"{'an int' if valid.kind == 'int' else 'a float'} in the range {valid}"
    if isinstance(valid, tuple):
        return "one of " + ", ".join(repr(v) for v in valid)
    if valid is bool:
        return "a boolean (true/false)"
    if valid is str:
        return "a string"
    if callable(valid) and getattr(valid, "__doc__", None):
        return valid.__doc__.strip().splitlines()[0]
    return "any value"


class Section:
    """Base class of configuration sections (dataclasses of :func:`param` fields).

    Subclasses set ``section`` (the TOML table name). Construction validates every
    field and coerces ints to floats where a float is expected; a bad value raises
    :class:`~anasim.errors.ConfigError` naming the section, the field and what is valid.
    """

    section: ClassVar[str] = "?"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = check_value(self.section, f.name, value, f.metadata.get("valid"))
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self.check()

    def check(self) -> None:
        """Cross-field rules; override in subclasses (raise ConfigError)."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None):
        """Build the section from a dict, refusing unknown keys with the closest match."""
        where = where or cls.section
        if not isinstance(data, dict):
            raise ConfigError(f"[{where}] must be a table (dict) of parameters; got {type(data).__name__}.")
        names = cls.field_names()
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"Unknown parameter {key!r} in [{where}].{closest(key, names)} "
                    f"Valid names: {', '.join(names)}."
                )
        return cls(**data)

    def to_dict(self, only_changed: bool = False) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if only_changed:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                if v == default:
                    continue
            out[f.name] = v
        return out

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        changed = self.to_dict(only_changed=True)
        inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({inner})"


def check_value(section: str, name: str, value: Any, valid: Any) -> Any:
    """Validate ``value`` against ``valid``; return it (possibly coerced) or raise ConfigError."""

    original = value

    def fail(expect: str):
        raise ConfigError(
            f"The {name!r} parameter of [{section}] must be {expect}. Got {original!r} instead."
        )

    if valid is None:
        return value
    if isinstance(valid, Interval):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(describe_valid(valid))
        if valid.kind == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    fail(describe_valid(valid))
                value = int(value)
        else:
            value = float(value)
        if math.isnan(value) or not valid.contains(value):
            fail(describe_valid(valid))
        return value
    if isinstance(valid, tuple):
        if value not in valid:
            hint = closest(str(value), [str(v) for v in valid]) if isinstance(value, str) else ""
            raise ConfigError(
                f"The {name!r} parameter of [{section}] must be {describe_valid(valid)}. "
                f"Got {value!r} instead.{hint}"
            )
        return value
    if valid is bool:
        if not isinstance(value, bool):
            fail(describe_valid(valid))
        return value
    if valid is str:
        if not isinstance(value, str):
            fail(describe_valid(valid))
        return value
    if callable(valid):
        msg = valid(value)
        if msg:
            fail(msg)
        return value
    raise TypeError(f"bad 'valid' specification for {section}.{name}: {valid!r}")
