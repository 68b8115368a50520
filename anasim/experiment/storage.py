"""Result files: atomic writes, crash-tolerant appends and a writer lock.

Formats (chosen by the file extension):

``.csv``
    One header line, then one line per row. Cells hold no line breaks (nested values are
    compact JSON), so every complete row is one ``\\n``-terminated line.
``.jsonl``
    One JSON object per line (same keys as the CSV columns; ``config`` and
    ``preprocessing`` as nested objects).
``.json``
    ``{"format": "anasim-results/1", "meta": {...}, "columns": [...], "rows": [...]}``,
    always rewritten as a whole.

Writing never changes the path it is given: the extension names the format, and an
unknown extension is refused (:func:`result_format`). A file that exists is refused
unless ``overwrite=True`` (the default everywhere is ``False``); only a sweep's own
results file is rewritten in place (:meth:`ResultStore.rewrite`), which is how it resumes.

Durability. :func:`atomic_write` writes a temporary file in the same folder, fsyncs it and
renames it over the target with ``os.replace`` (atomic on POSIX and Windows), then fsyncs
the folder: a reader or a crash sees the old file or the new one, never a mix.
:meth:`ResultStore.append` adds the rows of one finished sweep point with a single
``write`` on an ``O_APPEND`` descriptor followed by ``fsync``. A process killed at any
moment leaves at most one torn last line (text after the final newline), which
:meth:`ResultStore.read` discards; the sweep then re-evaluates that point. The resumed
sweep first rewrites the file atomically without the torn line, incomplete or duplicated
points, so later appends always start on a fresh line.

Locking. :class:`ResultLock` holds ``<file>.lock`` with ``fcntl.flock`` (released by the
kernel when the process dies, so a killed sweep leaves no stale lock); a second writer is
refused with a message naming the holder's pid, host and start time. Where ``fcntl`` is
missing (Windows) an exclusive create of the lock file is used and a lock whose process is
gone on the same host is taken over.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from pathlib import Path

from ..errors import InputError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}
FORMAT_TAG = "anasim-results/1"


class ResultsFileError(InputError):
    """A results (or plot) file exists and may not be overwritten, has an unsupported file
    type, is locked, or cannot be read."""


def result_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ResultsFileError(f"{path}: unknown results file type {suffix!r}; use .csv, .json or .jsonl.")
    return FORMATS[suffix]


# ---------------------------------------------------------------------------------- cells
def _json_default(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (tuple, set)):
        return list(v)
    raise TypeError(f"Cannot write {type(v).__name__} to JSON")


def dumps(v) -> str:
    return json.dumps(v, separators=(",", ":"), default=_json_default, allow_nan=True)


def to_cell(v) -> str:
    """A value as a CSV cell: '' for None, JSON for nested values, repr for floats."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v.replace("\r", " ").replace("\n", " ")
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:  # NumPy scalar
        return to_cell(v.item())
    return dumps(v)


def from_cell(text: str, kind: str = "auto"):
    """Inverse of :func:`to_cell` for a column of ``kind`` (float, int, bool, json, str, auto)."""
    if text == "":
        return None
    if kind == "str":
        return text
    if kind == "float":
        return float(text)
    if kind == "int":
        return int(text)
    if kind == "bool":
        return text.lower() == "true"
    if kind == "json":
        return json.loads(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(text)
    try:
        return json.loads(text)
    except ValueError:
        return text


# ----------------------------------------------------------------------------- writing
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data: str | bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` (text, as UTF-8, or bytes) to exactly ``path`` through a temporary file
    in the same folder + ``os.replace``; returns ``path`` as a :class:`~pathlib.Path`.

    An existing file is refused (:class:`ResultsFileError` naming it and ``overwrite=True``)
    unless ``overwrite``; the refusal is atomic too (the temporary file is hard-linked to
    ``path``, which fails if ``path`` appeared meanwhile) where the file system allows it."""
    path = Path(path)
    folder = check_writable(path, overwrite)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no window for a silent overwrite
            except FileExistsError:
                _refuse_overwrite(path)
            except OSError:  # no hard links here (some network or FAT file systems)
                if path.exists():
                    _refuse_overwrite(path)
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(folder)
    return path


def check_writable(path, overwrite: bool = False) -> Path:
    """Refuse (ResultsFileError) to write ``path`` when it exists and not ``overwrite``, when
    it is a directory, or when its folder does not exist or is not writable (a file is
    created and removed there to find out); returns the folder. For checks before long work."""
    path = Path(path)
    if path.is_dir():
        raise ResultsFileError(f"Cannot write {path}: it is a directory; give a file name.")
    if not overwrite and path.exists():
        _refuse_overwrite(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ResultsFileError(f"Cannot write {path}: folder {folder} does not exist.")
    probe = folder / f".{path.name}.{os.getpid()}.probe"
    try:  # the only test of write permission that also holds for root with fewer capabilities
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ResultsFileError(f"Cannot write {path}: {exc.strerror or exc} in folder {folder} (check its "
                               "permissions, or choose another folder).") from None
    return folder


def _refuse_overwrite(path: Path):
    raise ResultsFileError(f"{path} exists; refusing to overwrite it (pass overwrite=True, or "
                           "--overwrite on the command line, or choose another file name).")


def csv_text(columns: list[str], rows: list[dict], header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for r in rows:
        w.writerow([to_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def jsonl_text(columns: list[str], rows: list[dict]) -> str:
    return "".join(dumps({c: r.get(c) for c in columns}) + "\n" for r in rows)


def json_text(columns: list[str], rows: list[dict], meta: dict | None) -> str:
    doc = {"format": FORMAT_TAG, "meta": meta or {}, "columns": columns,
           "rows": [{c: r.get(c) for c in columns} for r in rows]}
    return json.dumps(doc, indent=1, default=_json_default, allow_nan=True) + "\n"


def table_text(fmt: str, columns: list[str], rows: list[dict], meta: dict | None = None) -> str:
    """The whole table as the text of a ``fmt`` file ("csv", "jsonl" or "json")."""
    if fmt == "csv":
        return csv_text(columns, rows)
    if fmt == "jsonl":
        return jsonl_text(columns, rows)
    if fmt == "json":
        return json_text(columns, rows, meta)
    raise ResultsFileError(f"Unknown results format {fmt!r}; use csv, json or jsonl.")


def write_table(path, columns: list[str], rows: list[dict], meta: dict | None = None, *,
                overwrite: bool = False) -> Path:
    """Write a whole table atomically to exactly ``path``, in the format its extension names
    (.csv, .json, .jsonl; another extension is refused); an existing file is refused unless
    ``overwrite``."""
    return atomic_write(path, table_text(result_format(path), columns, rows, meta), overwrite=overwrite)


# ----------------------------------------------------------------------------- reading
def read_table(path, kinds: dict | None = None) -> tuple[list[str], list[dict], dict, bool]:
    """``(columns, rows, meta, torn)`` of a results file; ``torn`` says whether an
    incomplete last line (a write cut short) or an unreadable line was dropped.
    ``kinds`` maps CSV column names to cell kinds (see :func:`from_cell`)."""
    path = Path(path)
    fmt = result_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsFileError(f"No results file {str(path)!r}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"Cannot read results file {path}: {exc}") from exc
    kinds = kinds or {}
    if fmt == "json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ResultsFileError(f"{path}: not a valid results JSON file ({exc}).") from exc
        if not isinstance(doc, dict) or "rows" not in doc:
            raise ResultsFileError(f"{path}: not an anasim results JSON file (no 'rows').")
        rows = list(doc["rows"])
        columns = doc.get("columns") or (list(rows[0]) if rows else [])
        return columns, rows, doc.get("meta") or {}, False
    torn = False
    cut = text.rfind("\n")
    if cut != len(text) - 1:  # text after the last newline: a torn write
        torn = bool(text[cut + 1:].strip())
        text = text[:cut + 1]
    lines = text.splitlines()
    if fmt == "jsonl":
        rows, columns = [], []
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                torn = True
                continue
            if not isinstance(row, dict):
                torn = True
                continue
            for k in row:
                if k not in columns:
                    columns.append(k)
            rows.append(row)
        return columns, rows, {}, torn
    if not lines:
        return [], [], {}, torn
    reader = csv.reader(lines)
    try:
        columns = next(reader)
    except csv.Error as exc:
        raise ResultsFileError(f"{path}: unreadable CSV header ({exc}).") from exc
    rows = []
    for cells in reader:
        if len(cells) != len(columns):
            torn = True
            continue
        try:
            rows.append({c: from_cell(v, kinds.get(c, "auto")) for c, v in zip(columns, cells)})
        except ValueError:
            torn = True
    return columns, rows, {}, torn


# ----------------------------------------------------------------------------- appending
class ResultStore:
    """An appendable results file (``.csv`` / ``.jsonl``; ``.json`` is rewritten whole)."""

    def __init__(self, path, columns: list[str], meta: dict | None = None):
        self.path = Path(path)
        self.format = result_format(self.path)
        self.columns = list(columns)
        self.meta = meta or {}
        self._rows: list[dict] | None = None  # kept for .json

    def rewrite(self, rows: list[dict]) -> None:
        """Atomically replace the file with ``rows`` under ``self.columns``."""
        write_table(self.path, self.columns, rows, self.meta, overwrite=True)
        if self.format == "json":
            self._rows = list(rows)

    def append(self, rows: list[dict]) -> None:
        """Add ``rows`` durably: one ``write`` + ``fsync`` (csv/jsonl) or an atomic rewrite (json)."""
        if self.format == "json":
            if self._rows is None:
                self._rows = read_table(self.path)[1] if self.path.exists() else []
            self.rewrite(self._rows + list(rows))
            return
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.rewrite(rows)
            return
        if self.format == "csv":
            text = csv_text(self.columns, rows, header=False)
        else:
            text = jsonl_text(self.columns, rows)
        data = text.encode("utf-8")
        fd = os.open(str(self.path), os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------- locking
class ResultLock:
    """Exclusive writer lock on ``<results file>.lock`` (a context manager)."""

    def __init__(self, path):
        self.results = Path(path)
        self.path = self.results.with_name(self.results.name + ".lock")
        self._fd = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return "another process"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {since}"

    def _refuse(self):
        raise ResultsFileError(
            f"{self.results} is being written by another anasim run ({self._holder()}); "
            f"wait for it to finish, or use another --out. (Lock file: {self.path}.)")

    def acquire(self) -> "ResultLock":
        info = dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_exclusive(info)
        while True:
            fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._refuse()
            try:  # the file may have been unlinked by its previous holder meanwhile
                same = os.path.samestat(os.fstat(fd), os.stat(str(self.path)))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, info.encode())
        self._fd = fd
        return self

    def _acquire_exclusive(self, info: str) -> "ResultLock":  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    old = json.loads(self.path.read_text(encoding="utf-8"))
                    stale = old.get("host") == socket.gethostname() and not _pid_alive(int(old["pid"]))
                except (OSError, ValueError, KeyError, TypeError):
                    stale = False
                if not stale:
                    self._refuse()
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, info.encode())
            self._fd = fd
            return self
        self._refuse()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _pid_alive(pid: int) -> bool:  # pragma: no cover - Windows fallback
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


__all__ = ["ResultStore", "ResultLock", "ResultsFileError", "atomic_write", "check_writable",
           "write_table", "table_text",
           "read_table", "result_format", "to_cell", "from_cell"]
