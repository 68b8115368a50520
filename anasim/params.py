"""Declarative parameter fields: every configuration field carries its meaning.

This is a leaf module (it imports only the standard library, NumPy and
:mod:`anasim.errors`): the configuration (:mod:`anasim.config`), the device models
(:mod:`anasim.devices`) and the data sets (:mod:`anasim.datasets`) all declare their
parameters with it, and none of them has to import another to do so.

A configuration section is a dataclass deriving from :class:`Section`; each field is
declared with :func:`param`, which records the default, the unit, the valid values
(an :class:`Interval` or a tuple of choices) and a one-paragraph meaning. Validation is
generic (``Section.__post_init__``) and speaks one language::

    The 'out_noise' parameter of [forward] must be a float in the range [0.0, inf). Got -0.1 instead.

Cross-field rules live in one place per section, :meth:`Section.check`.
``anasim params`` is generated from these records (:func:`field_records`); nothing is
kept by hand. Sections written elsewhere (device models, drift compensation) use the
same machinery and plug into the configuration file through
:func:`anasim.config.register_section`.

:func:`import_class` is the one resolver of ``type = "package.module:ClassName"``
(user device classes, user classes of registered sections).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError, brief, closest


@dataclass(frozen=True)
class Interval:
    """A numeric range; ``None`` means unbounded. ``kind`` is "float" or "int".

    Values must be finite (NaN and ±inf are always refused).
    """

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
    unit : physical or logical unit ("µS", "s", "steps", "1" for dimensionless,
        "flag" for booleans, "choice" for enumerations).
    valid : an :class:`Interval`, a tuple of allowed values, ``bool``, ``str`` or a
        callable ``f(value) -> str | None`` returning an error text (its docstring's
        first line describes what is valid).
    extra : further metadata, e.g. ``aihwkit="IOParameters.out_noise = 0.06"`` (the
        aihwkit name and default, shown by ``anasim params``) and, for a callable
        ``valid``, ``invalid=(...)``: example values it must refuse (the meta-test in
        ``tests/test_config.py`` checks them; for the other kinds it generates its own).
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


def _choice_key(value: str) -> str:
    return value.lower().replace("_", "").replace("-", "").replace(" ", "")


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (calling its factory if it has one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


class Section:
    """Base class of configuration sections (dataclasses of :func:`param` fields).

    Subclasses set ``section`` (the TOML table name) and are usually
    ``@dataclass(frozen=True)``. Construction validates every field, coerces ints to
    floats where a float is expected (and NumPy scalars to Python ones), then runs
    :meth:`check` for cross-field rules; a bad value raises
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
        """Cross-field rules; override in subclasses (raise ConfigError via :meth:`fail`)."""

    def fail(self, message: str) -> None:
        """Raise a ConfigError for a cross-field rule of this section."""
        raise ConfigError(f"Invalid [{self.section}]: {message}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_keys(cls, data: Any, where: str | None = None) -> None:
        """Refuse a non-dict or unknown keys, naming the closest valid key."""
        where = where or cls.section
        if not isinstance(data, dict):
            raise ConfigError(
                f"[{where}] must be a table (dict) of parameters; got {type(data).__name__}."
            )
        names = cls.field_names()
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"Unknown parameter {key!r} in [{where}].{closest(str(key), names)} "
                    f"Valid names: {', '.join(names)}."
                )

    @classmethod
    def check_partial(cls, data: Any, where: str | None = None) -> dict:
        """Validate the keys and values of a partial dict (an override); return it coerced."""
        cls.check_keys(data, where)
        meta = {f.name: f.metadata.get("valid") for f in dataclasses.fields(cls)}
        return {k: check_value(where or cls.section, k, v, meta[k]) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None):
        """Build the section from a dict, refusing unknown keys with the closest match."""
        cls.check_keys(data, where)
        return cls(**data)

    def to_dict(self, only_changed: bool = False) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if only_changed and v == field_default(f):
                continue
            out[f.name] = v
        return out

    def replace(self, **changes):
        """A copy with some fields changed (validated again; unknown names refused)."""
        self.check_keys(changes)
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        changed = self.to_dict(only_changed=True)
        inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({inner})"


def check_value(section: str, name: str, value: Any, valid: Any) -> Any:
    """Validate ``value`` against ``valid``; return it (possibly coerced) or raise ConfigError."""

    original = value

    def fail(expect: str, hint: str = ""):
        raise ConfigError(
            f"The {name!r} parameter of [{section}] must be {expect}. Got {brief(original)} instead.{hint}"
        )

    if valid is None:
        return value
    if isinstance(valid, Interval):
        if isinstance(value, bool) or _is_numpy_bool(value) or not isinstance(value, numbers.Real):
            fail(describe_valid(valid))
        if valid.kind == "int":
            if not isinstance(value, numbers.Integral):
                if not (math.isfinite(value) and float(value).is_integer()):
                    fail(describe_valid(valid))
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                fail("a finite float" + describe_valid(valid)[len("a float"):])
        if not valid.contains(value):
            fail(describe_valid(valid))
        return value
    if isinstance(valid, tuple):
        if isinstance(value, str):
            value = str(value)  # NumPy str_ -> str
        if isinstance(value, str) and value not in valid:
            # accept aihwkit's enum spellings: "AbsMax", "ABS_MAX", "abs-max" -> "abs_max"
            keyed = {_choice_key(v): v for v in valid if isinstance(v, str)}
            value = keyed.get(_choice_key(value), value)
        if value not in valid or type(value) is not type(next(v for v in valid if v == value)):
            hint = closest(str(value), [str(v) for v in valid]) if isinstance(value, str) else ""
            fail(describe_valid(valid), hint)
        return value
    if valid is bool:
        if _is_numpy_bool(value):
            return bool(value)
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


def _is_numpy_bool(value: Any) -> bool:
    return isinstance(value, np.bool_)


def type_name(f: dataclasses.Field) -> str:
    """A short type name for a field, for ``anasim params``."""
    valid = f.metadata.get("valid")
    if isinstance(valid, Interval):
        return valid.kind
    if isinstance(valid, tuple):
        return "choice"
    if valid is bool:
        return "bool"
    if valid is str:
        return "str"
    return str(f.type).replace("typing.", "")


def format_default(value: Any) -> str:
    """A default as it would be written in a TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


@dataclass(frozen=True)
class ParamRecord:
    """One configuration parameter as ``anasim params`` prints it."""

    section: str
    name: str
    type: str
    default: Any
    unit: str
    valid: str
    meaning: str
    aihwkit: str = ""
    variant: str = ""  # for typed sections: the ``type = "..."`` value that selects the class


def field_records(cls: type, section: str | None = None, variant: str = "") -> list[ParamRecord]:
    """Records (section, name, type, default, unit, valid, meaning) of every field of ``cls``."""
    section = section or getattr(cls, "section", cls.__name__)
    out = []
    for f in dataclasses.fields(cls):
        md = f.metadata
        out.append(
            ParamRecord(
                section=section,
                name=f.name,
                type=type_name(f),
                default=field_default(f),
                unit=md.get("unit", ""),
                valid=describe_valid(md.get("valid")),
                meaning=" ".join(str(md.get("doc", "")).split()),
                aihwkit=md.get("aihwkit", ""),
                variant=variant,
            )
        )
    return out


def documented(cls: type) -> type:
    """Class decorator (after ``@dataclass``): append a numpydoc ``Parameters`` list built
    from the field records, so ``help(cls)`` shows meaning, unit, default and range."""
    lines = [inspect.cleandoc(cls.__doc__ or ""), "", "Parameters", "----------"]
    for r in field_records(cls):
        unit = f" [{r.unit}]" if r.unit else ""
        lines.append(f"{r.name} : {r.type}, default {format_default(r.default)}{unit}")
        lines.append(f"    {r.meaning} Valid: {r.valid}.")
        if r.aihwkit:
            lines.append(f"    aihwkit: {r.aihwkit}.")
    cls.__doc__ = "\n".join(lines) + "\n"
    return cls


def import_class(path: str, section: str, base: type | None = None, base_name: str = "") -> type:
    """The class that ``type = "package.module:ClassName"`` names in ``[section]``.

    The module is imported (so a configuration file can import any module on the Python
    path: treat configuration files like code); ``ClassName`` may be dotted (a nested
    class). With ``base`` the class must subclass it (``base_name`` is how the error
    names it, default its qualified name). Every failure is a
    :class:`~anasim.errors.ConfigError` saying which key, which module and what is
    there instead; errors raised while the module itself runs propagate unchanged.
    """
    label = base_name or (base.__qualname__ if base is not None else "")
    if not isinstance(path, str):
        raise ConfigError(f"The 'type' of [{section}] must be a string; got {path!r}.")
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise ConfigError(
            f"The 'type' of [{section}] must be a built-in name or 'package.module:ClassName'; "
            f"got {path!r}."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # ModuleNotFoundError included
        raise ConfigError(
            f"The 'type' of [{section}] is {path!r}, but module {module_name!r} could not be "
            f"imported: {type(exc).__name__}: {exc}. Is it installed or on sys.path / PYTHONPATH?"
        ) from exc
    obj: Any = module
    for part in class_name.split("."):
        if not hasattr(obj, part):
            found = [n for n, v in vars(module).items() if isinstance(v, type)
                     and (issubclass(v, base) if base is not None else v.__module__ == module.__name__)]
            kind = f"{label} classes" if label else "Classes"
            raise ConfigError(
                f"The 'type' of [{section}] is {path!r}, but module {module_name!r} has no "
                f"attribute {class_name!r}.{closest(class_name, found)} {kind} in it: "
                f"{', '.join(found) or 'none'}."
            )
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ConfigError(f"The 'type' of [{section}] is {path!r}, which is not a class (got {obj!r}).")
    if base is not None and not issubclass(obj, base):
        raise ConfigError(
            f"The 'type' of [{section}] is {path!r}, which is not a subclass of {label} (got {obj!r})."
        )
    return obj
