"""Exceptions raised by anasim.

Every error anasim raises on bad input derives from :class:`AnasimError`, so a caller
can catch one type. Each subclass also derives from the matching built-in exception
(``ValueError``, ``TypeError``, ``NotImplementedError``) so that generic handlers keep
working.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class AnasimError(Exception):
    """Base class of every documented anasim exception."""


class ModelLoadError(AnasimError, ValueError):
    """The ONNX model could not be read, is malformed, or fails the ONNX checker."""


class UnsupportedOpError(AnasimError, NotImplementedError):
    """The model uses an operator (or operator version) that anasim does not implement."""


class InputError(AnasimError, ValueError):
    """An input given to a graph or a simulator does not match what the model declares."""


class ExecutionError(AnasimError, RuntimeError):
    """A node failed while the graph was executed; the message names the node."""


class ConfigError(AnasimError, ValueError, TypeError):
    """A configuration key or value is invalid; the message names the key."""


def brief(value, limit: int = 200) -> str:
    """``repr(value)`` cut to about ``limit`` characters (with how long it was), for
    messages that quote what the user gave: a 200 000-element array is not a message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def closest(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or ``""`` if none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""
