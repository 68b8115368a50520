"""Reading the files a user names (models, data, configurations, grids), with one clear
anasim error for every way that can fail.

A missing file, a directory where a file was expected, a file the process may not read,
text that is not UTF-8 and a JSON/TOML document nested too deeply for the parser all
become the caller's error class (``ModelLoadError``, ``InputError``, ``ConfigError``)
with a message that names the file, what it was for, and what to do. The functions are
checked before long work starts: :func:`check_readable` opens the file (the only test of
permissions that also holds for root with reduced capabilities) without reading it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import AnasimError, InputError


def _problem(path: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied (check its permissions with ls -l, or copy it somewhere readable)"
    return f"{exc.strerror or exc}"


def check_readable(path, what: str, error: type[AnasimError] = InputError, *, directory_ok: bool = False) -> Path:
    """``path`` as a Path if it is a file this process can read (or, with
    ``directory_ok``, a readable directory); else ``error`` naming ``what`` and the cause."""
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise error(f"The {what} must be a file path; got {type(path).__name__}.")
    p = Path(path)
    try:
        if directory_ok and p.is_dir():
            os.scandir(p).close()
            return p
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise error(f"Cannot read the {what} {str(p)!r}: {_problem(p, exc)}.") from None
    return p


def read_bytes(path, what: str, error: type[AnasimError] = InputError) -> bytes:
    """The file's bytes, or ``error`` naming ``what`` and the cause."""
    p = check_readable(path, what, error)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise error(f"Cannot read the {what} {str(p)!r}: {_problem(p, exc)}.") from None


def read_text(path, what: str, error: type[AnasimError] = InputError) -> str:
    """The file as UTF-8 text, or ``error`` (naming the byte offset when it is not UTF-8)."""
    data = read_bytes(path, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"The {what} {str(path)!r} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                    "save it as UTF-8.") from None


def parse_nested(parse: Callable[[str], object], text: str, source: str, error: type[AnasimError]) -> object:
    """``parse(text)`` with a document nested too deeply for the parser (RecursionError)
    turned into ``error`` naming ``source``."""
    try:
        return parse(text)
    except RecursionError:
        raise error(f"{source}: the document is nested too deeply to read (thousands of levels of "
                    "brackets or tables); a configuration is a few levels deep.") from None
