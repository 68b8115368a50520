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
:func:`load_table` reports (``Table.torn``) and leaves out; the sweep then re-evaluates that
point. The resumed sweep first rewrites the file atomically without the torn line,
damaged lines, incomplete or duplicated points, so later appends always start on a fresh
line. A :class:`ResultStore` writes the real file a symbolic link leads to (rewriting the
link's own name would replace the link by a separate file).

Reading. :func:`load_table` keeps account of every line it cannot read: ``Table.damaged``
lists ``(where, what is wrong)`` (a CSV line with another number of cells than the header,
a cell of the wrong kind, a JSON line or row that is not an object), ``Table.where`` the
line of every row read. A file that is no results table at all (not UTF-8, invalid JSON, a
JSON document of another shape, an unreadable header) is a :class:`ResultsFileError`
naming the file and what is wrong. What to do with damaged and duplicated rows is the
reader's decision (:meth:`Results.load <anasim.experiment.results.Results.load>` refuses
them unless asked; a resuming sweep drops them and says so).

Locking. :class:`ResultLock` holds ``<real file>.lock`` with ``fcntl.flock`` (released by
the kernel when the process dies, so a killed sweep leaves no stale lock); the lock file
sits beside the file that every symbolic link, ``.`` and ``..`` of the given path lead to,
and an existing results file's inode is ``flock``-ed too, so a second writer through a
link, another spelling of the path or a hard link is refused, with a message naming the
holder's pid, host and start time. Where ``fcntl`` is missing (Windows) an exclusive
create of the lock file is used and a lock whose process is gone on the same host is
taken over.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
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
        if text.lower() not in ("true", "false"):
            raise ValueError(f"not a boolean: {text!r}")
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
class ResultsWarning(UserWarning):
    """Rows of a results file were left out while reading it (an incomplete last line, or
    damaged or duplicated rows the caller asked to drop); the message says which."""


@dataclass
class Table:
    """What :func:`load_table` read from a results file.

    ``where[i]`` locates ``rows[i]`` in the file (``"line 7"``, or ``"row 3"`` of a .json
    file); ``damaged`` lists ``(where, what is wrong)`` for every complete line or row that
    could not be read (it is not in ``rows``); ``torn`` locates an incomplete last line (text
    after the final newline: a write cut short), which is not in ``rows`` either, or is None."""

    columns: list
    rows: list
    meta: dict
    where: list
    damaged: list = field(default_factory=list)
    torn: str | None = None


_KIND_NAMES = {"float": "a number", "int": "an integer", "bool": "true or false", "json": "JSON"}


def json_type(v) -> str:
    """The JSON name of ``v``'s type, for messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def load_table(path, kinds: dict | None = None) -> Table:
    """Read a results file, keeping account of every line it could not read (see
    :class:`Table`). A file that is not a results table at all (unreadable, not UTF-8, not
    JSON, a JSON document of the wrong shape, an unreadable CSV header) is a
    :class:`ResultsFileError` naming the file and what is wrong. ``kinds`` maps CSV column
    names to cell kinds (see :func:`from_cell`)."""
    from ..files import parse_nested, read_text

    path = Path(path)
    fmt = result_format(path)
    text = read_text(path, "results file", ResultsFileError)
    kinds = kinds or {}
    if fmt == "json":
        return _load_json(path, text)
    lines = text.split("\n")  # not splitlines(): it also splits at \x0b, \x1c, \u2028, ...
    last = lines.pop()  # "" after a final newline; else an incomplete line
    torn = f"line {len(lines) + 1}" if last.strip() else None
    if fmt == "jsonl":
        rows, where, damaged, columns = [], [], [], []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = parse_nested(json.loads, line, f"{path} line {n}", ResultsFileError)
            except (ValueError, ResultsFileError) as exc:
                damaged.append((f"line {n}", f"not valid JSON ({str(exc)[:120]})"))
                continue
            if not isinstance(row, dict):
                damaged.append((f"line {n}", f"{json_type(row)}, not a JSON object"))
                continue
            columns.extend(k for k in row if k not in columns)
            rows.append(row)
            where.append(f"line {n}")
        return Table(columns, rows, {}, where, damaged, torn)
    if not lines:
        return Table([], [], {}, [], [], torn)
    try:
        columns = next(csv.reader([lines[0].removesuffix("\r")], strict=True))
    except (csv.Error, StopIteration) as exc:
        raise ResultsFileError(f"{path}: unreadable CSV header on line 1 ({exc}).") from None
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ResultsFileError(f"{path}: the CSV header names column(s) {', '.join(map(repr, twice))} "
                               "more than once; not an anasim results table.")
    rows, where, damaged = [], [], []
    for n, line in enumerate(lines[1:], 2):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            cells = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            damaged.append((f"line {n}", f"unreadable CSV ({exc})"))
            continue
        if len(cells) != len(columns):
            damaged.append((f"line {n}", f"{len(cells)} cells where the header has {len(columns)}"))
            continue
        row, bad = {}, None
        for c, v in zip(columns, cells):
            kind = kinds.get(c, "auto")
            try:
                row[c] = from_cell(v, kind)
            except (ValueError, RecursionError):
                bad = f"{c} is {_quote(v)}, not {_KIND_NAMES.get(kind, kind)}"
                break
        if bad:
            damaged.append((f"line {n}", bad))
            continue
        rows.append(row)
        where.append(f"line {n}")
    return Table(columns, rows, {}, where, damaged, torn)


def _quote(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _load_json(path: Path, text: str) -> Table:
    from ..files import parse_nested

    what = ('an anasim results JSON file ({"format": "anasim-results/1", "meta": {...}, "columns": [...], '
            '"rows": [...]})')
    try:
        doc = parse_nested(json.loads, text, str(path), ResultsFileError)
    except ValueError as exc:
        if isinstance(exc, ResultsFileError):
            raise
        raise ResultsFileError(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise ResultsFileError(f"{path}: holds {json_type(doc)}, not {what}.")
    if "format" in doc and doc["format"] != FORMAT_TAG:
        raise ResultsFileError(f"{path}: format {doc['format']!r} is not {FORMAT_TAG!r}; not {what}.")
    if "rows" not in doc:
        raise ResultsFileError(f"{path}: no 'rows'; not {what}.")
    rows = doc["rows"]
    if not isinstance(rows, list):
        raise ResultsFileError(f"{path}: 'rows' is {json_type(rows)}; it must be an array of row objects.")
    columns = doc.get("columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise ResultsFileError(f"{path}: 'columns' must be an array of column names; got "
                               f"{json_type(columns) if not isinstance(columns, list) else 'other values'}.")
    meta = doc.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ResultsFileError(f"{path}: 'meta' is {json_type(meta)}; it must be an object.")
    kept, where, damaged = [], [], []
    for i, r in enumerate(rows, 1):
        if isinstance(r, dict):
            kept.append(r)
            where.append(f"row {i}")
        else:
            damaged.append((f"row {i}", f"{json_type(r)}, not a row object"))
    if not columns:
        columns = []
        for r in kept:
            columns.extend(k for k in r if k not in columns)
    return Table(list(columns), kept, meta, where, damaged, None)


def read_table(path, kinds: dict | None = None) -> tuple[list[str], list[dict], dict, bool]:
    """``(columns, rows, meta, lossy)`` of a results file; ``lossy`` says whether an
    incomplete last line (a write cut short) or a damaged line was left out (see
    :func:`load_table`, which says which)."""
    t = load_table(path, kinds)
    return t.columns, t.rows, t.meta, bool(t.damaged or t.torn)


# ----------------------------------------------------------------------------- appending
class ResultStore:
    """An appendable results file (``.csv`` / ``.jsonl``; ``.json`` is rewritten whole)."""

    def __init__(self, path, columns: list[str], meta: dict | None = None):
        # the real file: writing through a symbolic link updates its target (an atomic
        # rewrite of the link's own name would replace the link by a separate file)
        self.path = real_path(path)
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
def real_path(path) -> Path:
    """``path`` with every symbolic link, ``.`` and ``..`` resolved (absolute): one name per
    file, whichever way it was spelled."""
    return Path(os.path.realpath(os.fspath(path)))


class ResultLock:
    """Exclusive writer lock on a results file (a context manager).

    The lock belongs to the file, not to the name it was given: it is ``<real file>.lock``
    beside the file every symbolic link, ``.`` and ``..`` of the given path lead to, so a
    second writer through a link or another spelling of the path is refused too; where the
    file exists its inode is also ``flock``-ed, which refuses a writer through a hard link."""

    def __init__(self, path):
        self.results = Path(path)  # as given, for messages
        self.target = real_path(path)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._fd = None
        self._file_fd = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return "another process"
        if not isinstance(info, dict):
            return "another process"
        since = info.get("since", 0)
        since = since if isinstance(since, (int, float)) else 0
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {since}"

    def _refuse(self, holder: str | None = None):
        same = ""
        if Path(os.path.abspath(self.results)) != self.target:
            same = f" (the same file as {self.target})"
        raise ResultsFileError(
            f"{self.results}{same} is being written by another anasim run ({holder or self._holder()}); "
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
        try:  # the results file itself, which another name (a hard link) may share
            file_fd = os.open(str(self.target), os.O_RDONLY)
        except OSError:  # not there yet (nobody else can have another name for it)
            return self
        try:
            fcntl.flock(file_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(file_fd)
            self.release()
            self._refuse("through another name for the same file, a hard link")
        self._file_fd = file_fd
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
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None
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


__all__ = ["ResultStore", "ResultLock", "ResultsFileError", "ResultsWarning", "Table", "atomic_write",
           "check_writable", "write_table", "table_text", "load_table", "read_table", "real_path",
           "result_format", "to_cell", "from_cell"]
