"""Tidy result tables: one row per evaluated (point, t_inference, repetition), plus one
``kind = "ideal"`` row per point with the digital network's score.

Columns, in order:

``point``
    16 hex digits identifying what was evaluated: a hash of the full resolved
    configuration, the model's and the data's SHA-256, the preprocessing, ``limit``,
    ``seed``, ``times``, ``repeats``, the metric and the output (never of the batch size
    or thread count, which do not change the numbers). Sweeps skip points already present.
swept parameters (sweeps only)
    one column per parameter of the grid (``forward.out_noise``, ``base``, …), holding
    the value this point used.
``kind``
    ``ideal`` (the digital network) or ``analog`` (the simulated chip).
``t_inference``, ``repetition``
    seconds since programming and the Monte-Carlo repetition (each repetition is a freshly
    programmed chip); empty in ideal rows.
metric columns
    the requested metric first (``top1``, ``top5``, ``logits_rel_error``, …), then top-1
    and top-5 accuracy for classifiers. Accuracies are fractions in [0, 1] (tables show %).
``n_samples``, ``seed``, ``fold_batchnorm``, ``model``, ``model_sha256``, ``data``, ``data_sha256``,
``preprocessing`` (JSON), ``limit``, ``config`` (the full configuration, JSON), ``anasim_version``
    everything needed to reproduce the row.

A file holds one row per (point, kind, t_inference, repetition). :meth:`Results.load`
refuses a file that breaks this (rows appended twice would count as extra repetitions)
or has rows it cannot read, naming the file and the lines, unless asked to keep the first
copy (``duplicates="first"``, ``anasim show --dedupe``) or to leave damaged rows out
(``damaged="drop"``, ``anasim show --drop-damaged``), which it then says with a
:class:`~anasim.experiment.storage.ResultsWarning`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from ..errors import ConfigError, brief
from .metrics import get_metric
from .times import format_time
from .stats import describe
from .storage import ResultsFileError, ResultsWarning, load_table, table_text, write_table

HEAD = ["point"]
KEYS = ["kind", "t_inference", "repetition"]
TAIL = ["n_samples", "seed", "fold_batchnorm", "model", "model_sha256", "data", "data_sha256",
        "preprocessing", "limit", "config", "anasim_version"]
KINDS = {"point": "str", "kind": "str", "t_inference": "float", "repetition": "int", "n_samples": "int",
         "seed": "int", "fold_batchnorm": "bool", "model": "str", "model_sha256": "str", "data": "str",
         "data_sha256": "str", "preprocessing": "json", "limit": "int", "config": "json",
         "anasim_version": "str"}


def table_columns(params, metrics) -> list[str]:
    return HEAD + list(params) + KEYS + list(metrics) + TAIL


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        from .storage import dumps
        return dumps(v)
    return str(v)


class Results:
    """A tidy table of evaluation results (see the module docstring for the columns).

    ``rows`` is a list of dicts; ``params`` the swept-parameter columns; ``metrics`` the
    metric columns (requested metric first); ``meta`` run-level information (times,
    repeats, batch size, threads, elapsed seconds, …) written to JSON files.
    """

    def __init__(self, rows, *, params=(), metrics=("top1",), meta=None):
        self.rows = [dict(r) for r in rows]
        self.params = list(params)
        self.metrics = list(metrics)
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ access
    @property
    def columns(self) -> list[str]:
        return table_columns(self.params, self.metrics)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self) -> str:
        return (f"<anasim Results: {len(self.points())} point(s), {len(self.rows)} rows, "
                f"metrics {self.metrics}>")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Results):
            return NotImplemented
        return self.columns == other.columns and self.table() == other.table()

    def table(self) -> list[list]:
        """The rows as lists in column order (what the CSV holds)."""
        cols = self.columns
        return [[r.get(c) for c in cols] for r in self.rows]

    def column(self, name: str) -> list:
        return [r.get(name) for r in self.rows]

    def points(self) -> list[str]:
        seen = []
        for r in self.rows:
            if r.get("point") not in seen:
                seen.append(r.get("point"))
        return seen

    def ideal(self, metric: str | None = None, point: str | None = None):
        """The ideal (digital) score of ``point`` (default: the first point)."""
        metric = metric or self.metrics[0]
        point = point or (self.points() or [None])[0]
        for r in self.rows:
            if r.get("kind") == "ideal" and r.get("point") == point:
                return r.get(metric)
        return None

    def to_pandas(self):
        """A ``pandas.DataFrame`` of the table (pandas must be installed: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ConfigError("Results.to_pandas() needs pandas, which is not installed: "
                              "pip install pandas.") from None
        return pd.DataFrame(self.table(), columns=self.columns)

    # ------------------------------------------------------------------ statistics
    def aggregate(self, metric: str | None = None) -> list[dict]:
        """One dict per (point, t_inference): the point's swept parameters, ``t_inference``,
        ``n`` (repetitions), ``mean``, ``std``, ``ci_low``/``ci_high`` (95 % t-interval of
        the mean, clipped to [0, 1] for accuracies; None with one repetition) and ``ideal``
        (the digital score)."""
        metric = metric or self.metrics[0]
        groups: dict = {}
        ideals: dict = {}
        params: dict = {}
        for r in self.rows:
            p = r.get("point")
            params.setdefault(p, {k: r.get(k) for k in self.params})
            if r.get("kind") == "ideal":
                ideals[p] = r.get(metric)
                continue
            groups.setdefault((p, r.get("t_inference")), []).append(r.get(metric))
        bounded = get_metric(metric).percent  # accuracies live in [0, 1]: clip the interval
        out = []
        for (p, t), vals in groups.items():
            st = describe(vals)
            if bounded and st["ci_low"] is not None:
                st["ci_low"], st["ci_high"] = max(st["ci_low"], 0.0), min(st["ci_high"], 1.0)
            out.append({"point": p, **params[p], "t_inference": t, **st, "ideal": ideals.get(p)})
        return out

    def summary(self, metric: str | None = None) -> str:
        """The results as a text table: mean ± std over repetitions and the 95 % interval
        for every time (and every sweep point), with the ideal score."""
        if not self.rows:
            return "(no results)"
        if len(self.points()) == 1 and metric is None:
            return self._summary_single()
        return self._summary_many(metric or self.metrics[0])

    def _metric_cells(self, m, stats) -> tuple[str, str]:
        mean, std = stats["mean"], stats["std"]
        if mean is None:
            return "n/a", "n/a"
        a = m.format(mean)
        a += f" ± {m.format(std) if std is not None else 'n/a'}"
        if stats["ci_low"] is None:
            return a, "n/a"
        ci = f"[{m.format(stats['ci_low'])}, {m.format(stats['ci_high'])}]"
        return a, ci

    def _summary_single(self) -> str:
        metrics = [get_metric(name) for name in self.metrics]
        aggs = {m.name: {a["t_inference"]: a for a in self.aggregate(m.name)} for m in metrics}
        times = sorted({r.get("t_inference") for r in self.rows if r.get("kind") == "analog"})
        first = ["t_inference", "ideal (digital)"] + [format_time(t) for t in times]
        groups = []  # (label, [column cells...] per sub-column)
        for m in metrics:
            unit = f" ({m.unit})" if m.unit else ""
            iv = self.ideal(m.name)
            mean_col = ["mean ± std", m.format(iv) if iv is not None else "n/a"]
            ci_col = ["95 % CI", ""]
            for t in times:
                a, ci = self._metric_cells(m, aggs[m.name][t])
                mean_col.append(a)
                ci_col.append(ci)
            groups.append((m.label + unit, [mean_col, ci_col]))
        return _render_groups(first, groups)

    def _summary_many(self, metric: str) -> str:
        m = get_metric(metric)
        unit = f" ({m.unit})" if m.unit else ""
        head = list(self.params) + ["t_inference", f"{m.name}{unit} mean ± std", "95 % CI", "ideal"]
        body = []
        for a in self.aggregate(metric):
            mean_std, ci = self._metric_cells(m, a)
            body.append([_short(a.get(p)) for p in self.params]
                        + [format_time(a["t_inference"]), mean_std, ci,
                           m.format(a["ideal"]) if a["ideal"] is not None else "n/a"])
        return _render([head], body)

    # ------------------------------------------------------------------ files
    # One rule for every writer here. ``to_csv()`` / ``to_json()`` without a path return the
    # file's text (nothing is written); with a path they write exactly that path and return
    # it as a Path. ``save(path)`` always writes, in the format the extension names. The
    # extension is never changed: one that does not match the format is refused
    # (ResultsFileError naming the choices), and so is an existing file unless ``overwrite=True``.
    def save(self, path, overwrite: bool = False) -> Path:
        """Write the table to exactly ``path`` (.csv, .json or .jsonl: the extension picks the
        format; another one is refused), atomically; returns ``path`` as a Path. An existing
        file is refused (ResultsFileError) unless ``overwrite``."""
        return write_table(path, self.columns, self.rows, self._file_meta(), overwrite=overwrite)

    def to_csv(self, path=None, overwrite: bool = False) -> str | Path:
        """The table as CSV text when ``path`` is None; otherwise written to exactly ``path``,
        which must end in ``.csv`` (returns the Path; an existing file is refused unless
        ``overwrite``). The file holds exactly the text ``to_csv()`` returns."""
        return self._to("csv", path, overwrite)

    def to_json(self, path=None, overwrite: bool = False) -> str | Path:
        """The table as JSON text (``{"format", "meta", "columns", "rows"}``) when ``path`` is
        None; otherwise written to exactly ``path``, which must end in ``.json`` (returns the
        Path; an existing file is refused unless ``overwrite``)."""
        return self._to("json", path, overwrite)

    def _file_meta(self) -> dict:
        return dict(self.meta, params=self.params, metrics=self.metrics)

    def _to(self, fmt: str, path, overwrite: bool):
        if path is None:
            return table_text(fmt, self.columns, self.rows, self._file_meta())
        suffix = Path(path).suffix
        if suffix.lower() != f".{fmt}":
            got = f"ends in {suffix!r}" if suffix else "has no extension"
            raise ResultsFileError(
                f"{path}: to_{fmt}() writes .{fmt} files, and this name {got}; name the file "
                f"*.{fmt}, or use save(path) for .csv, .json or .jsonl, or call to_{fmt}() "
                "without a path to get the text.")
        return self.save(path, overwrite)

    @classmethod
    def load(cls, path, *, duplicates: str = "error", damaged: str = "error") -> "Results":
        """Read a results file written by :meth:`save`, by ``anasim evaluate`` or by a sweep.

        Nothing is left out silently:

        * A file that is not a results table (unreadable, not UTF-8, JSON of another shape,
          no ``point``/``kind``/``t_inference``/``repetition`` column, no metric column) is a
          :class:`ResultsFileError` naming the file and what is wrong.
        * ``damaged``: a row that cannot be read (a CSV line with too few cells, a cell of
          the wrong type, a JSON row that is not an object, an unknown ``kind``, ...).
          ``"error"`` (default): a ResultsFileError naming the file and each such line;
          ``"drop"``: the rows are left out, with a :class:`ResultsWarning` saying which.
        * ``duplicates``: two rows for the same (point, kind, t_inference, repetition),
          e.g. a file two runs appended to. Pooling them would count copies as extra
          repetitions (and narrow every confidence interval). ``"error"`` (default): a
          ResultsFileError naming how many keys are duplicated, with an example;
          ``"first"``: the first row of each key is kept, with a ResultsWarning.
        * An incomplete last line (a write cut short: a killed or still running sweep) is
          always left out, with a ResultsWarning naming the line.

        ``anasim show`` has ``--drop-damaged`` and ``--dedupe`` for the two options."""
        if damaged not in ("error", "drop"):
            raise ConfigError(f"damaged must be 'error' or 'drop'; got {damaged!r}.")
        if duplicates not in ("error", "first"):
            raise ConfigError(f"duplicates must be 'error' or 'first'; got {duplicates!r}.")
        t = load_table(path, KINDS)
        columns, meta = t.columns, t.meta
        if not columns and not t.rows and not t.damaged:
            but = " but for an incomplete line" if t.torn else ""
            raise ResultsFileError(f"{path}: the file is empty{but}; not an anasim results table.")
        if not columns:  # every line damaged (a .jsonl file's columns come from its rows)
            raise ResultsFileError(f"{path}: none of its rows can be read ({describe_problems(t.damaged)}); "
                                   "not an anasim results table.")
        missing = [c for c in HEAD + KEYS if c not in columns]
        if missing:
            shown = ", ".join(columns[:8]) + (", …" if len(columns) > 8 else "")
            raise ResultsFileError(f"{path}: not an anasim results table: no {', '.join(map(repr, missing))} "
                                   f"column{'s' * (len(missing) > 1)} (its columns: {shown or 'none'}).")
        params, metrics = meta.get("params"), meta.get("metrics")
        for name, v in (("params", params), ("metrics", metrics)):
            if v is not None and (not isinstance(v, list) or not all(isinstance(c, str) for c in v)):
                raise ResultsFileError(f"{path}: meta {name!r} must be a list of column names; "
                                       f"got {brief(v, 80)}.")
        if params is None:
            known = set(HEAD + KEYS + TAIL)
            params = [c for c in columns[1:columns.index("kind")] if c not in known]
        if metrics is None:
            lo = columns.index("repetition") + 1
            hi = columns.index("n_samples") if "n_samples" in columns else len(columns)
            metrics = [c for c in columns[lo:hi] if c not in TAIL]
        if not metrics:
            raise ResultsFileError(f"{path}: no metric column (top1, top5, logits_rel_error, …) after "
                                   "'repetition'; not an anasim results table.")
        absent = [m for m in list(metrics) + list(params) if m not in columns]
        if absent:
            raise ResultsFileError(f"{path}: meta names column(s) {', '.join(map(repr, absent))} that the "
                                   "table does not have.")
        rows, where, problems = check_rows(t.rows, t.where, metrics)
        problems = sorted(t.damaged + problems, key=lambda p: _position(p[0]))
        rows_s = f"row{'s' * (len(problems) > 1)}"
        if problems and damaged == "error":
            raise ResultsFileError(
                f"{path}: {len(problems)} damaged {rows_s} ({describe_problems(problems)}). "
                "Repair or remove them, or load with damaged=\"drop\" (anasim show --drop-damaged) to read "
                "the other rows.")
        if problems:
            warnings.warn(f"{path}: left out {len(problems)} damaged {rows_s} "
                          f"({describe_problems(problems)}).", ResultsWarning, stacklevel=2)
        if t.torn:
            warnings.warn(f"{path}: left out the incomplete last {t.torn} (a write cut short: a killed or "
                          "still running sweep; rerunning the sweep completes the file).", ResultsWarning,
                          stacklevel=2)
        rows, dup = _find_duplicates(rows, where)
        if dup and duplicates == "error":
            raise ResultsFileError(
                f"{path}: {dup['keys']} (point, t_inference, repetition) key{'s' * (dup['keys'] > 1)} "
                f"appear{'s' * (dup['keys'] == 1)} more than once ({dup['extra']} extra "
                f"row{'s' * (dup['extra'] > 1)}), e.g. {dup['example']}{dup['differ']}. Copies would count "
                "as extra repetitions and narrow the confidence intervals (copies typically come from "
                "two runs appending to one file). Load with duplicates=\"first\" (anasim show --dedupe) to "
                "keep the first row of each, or remove the copies from the file.")
        if dup:
            warnings.warn(f"{path}: left out {dup['extra']} duplicated row{'s' * (dup['extra'] > 1)} "
                          f"(kept the first row of each of {dup['keys']} (point, t_inference, repetition) "
                          f"key{'s' * (dup['keys'] > 1)}, e.g. {dup['example']}){dup['differ']}.",
                          ResultsWarning, stacklevel=2)
        return cls(rows, params=params, metrics=metrics, meta=meta)

    def plot(self, path=None, metric: str | None = None, x: str | None = None, overwrite: bool = False):
        """Plot the results (matplotlib needed: ``pip install matplotlib``).

        One point: the metric against t_inference (log axis) with 95 % intervals as error
        bars and the ideal score as a horizontal line. Several points: the metric against
        the swept parameter ``x`` (default: the first with several values), one line per
        combination of the other parameters and time. Returns the matplotlib Figure, with
        or without ``path``; with ``path`` the figure is also written to exactly that path,
        in the format its extension names (.png, .pdf, .svg, …; none: PNG; an unsupported
        one is refused), and an existing file is refused unless ``overwrite``."""
        from .plot import plot_results

        return plot_results(self, path=path, metric=metric, x=x, overwrite=overwrite)


# ---------------------------------------------------------------------------- checking rows
_TYPED = {"n_samples": "int", "seed": "int", "limit": "int", "fold_batchnorm": "bool", "model": "str",
          "model_sha256": "str", "data": "str", "data_sha256": "str", "anasim_version": "str"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    return "empty" if v is None else brief(v, 40)


def _row_problem(r: dict, metrics) -> str | None:
    """What is wrong with row ``r`` (None if nothing); numbers are normalized in place
    (t_inference float, repetition int, NaN t_inference/repetition of an ideal row None)."""
    point = r.get("point")
    if not isinstance(point, str) or not point:
        return f"point is {_show(point)}, not a point id"
    kind = r.get("kind")
    if kind not in ("ideal", "analog"):
        return f"kind is {_show(kind)}, not 'ideal' or 'analog'"
    t, rep = r.get("t_inference"), r.get("repetition")
    if kind == "analog":
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            return f"t_inference is {_show(t)}, not seconds >= 0"
        if isinstance(rep, float) and rep.is_integer():
            rep = int(rep)
        if not _is_int(rep) or rep < 0:
            return f"repetition is {_show(rep)}, not an integer >= 0"
        r["t_inference"], r["repetition"] = float(t), rep
    else:
        for k, v in (("t_inference", t), ("repetition", rep)):
            if isinstance(v, float) and math.isnan(v):
                r[k] = v = None
            if v is not None:
                return f"an ideal row with {k} {_show(v)} (ideal rows have none)"
    for m in metrics:
        v = r.get(m)
        if v is not None and not _is_number(v):
            return f"{m} is {_show(v)}, not a number"
    for c, kind_ in _TYPED.items():
        v = r.get(c)
        if v is None:
            continue
        ok = _is_int(v) if kind_ == "int" else isinstance(v, bool) if kind_ == "bool" else isinstance(v, str)
        if not ok:
            what = {"int": "an integer", "bool": "true or false", "str": "text"}[kind_]
            return f"{c} is {_show(v)}, not {what}"
    return None


def check_rows(rows: list[dict], where: list[str], metrics) -> tuple[list[dict], list[str], list[tuple]]:
    """``(good rows, their places, [(place, what is wrong), ...])`` for rows read from a
    results file (``where[i]`` is the place of ``rows[i]``, e.g. "line 7")."""
    good, places, problems = [], [], []
    for r, w in zip(rows, where):
        why = _row_problem(r, metrics)
        if why is None:
            good.append(r)
            places.append(w)
        else:
            problems.append((w, why))
    return good, places, problems


def row_key(r: dict) -> tuple:
    """(point, kind, t_inference, repetition) of a checked row: one row per key."""
    return r.get("point"), r.get("kind"), r.get("t_inference"), r.get("repetition")


def _position(where: str) -> int:
    try:
        return int(where.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


def describe_problems(problems, shown: int = 5) -> str:
    text = "; ".join(f"{w}: {why}" for w, why in problems[:shown])
    if len(problems) > shown:
        more = problems[shown:shown + 20]
        text += f"; and {len(problems) - shown} more, on " + ", ".join(w for w, _ in more)
        text += ", …" if len(problems) > shown + 20 else ""
    return text


def _describe_key(key) -> str:
    point, kind, t, rep = key
    if kind == "ideal":
        return f"the ideal row of point {point}"
    return f"point {point}, t_inference {format_time(t)}, repetition {rep}"


def _canonical(r: dict) -> str:
    return json.dumps(r, sort_keys=True, default=str, allow_nan=True)


def _find_duplicates(rows, where) -> tuple[list[dict], dict | None]:
    """``(rows without repeated keys (the first row of each kept), what was found or None)``."""
    first: dict = {}
    copies: dict = {}
    kept = []
    for i, r in enumerate(rows):
        k = row_key(r)
        if k in first:
            copies.setdefault(k, []).append(i)
        else:
            first[k] = i
            kept.append(r)
    if not copies:
        return kept, None
    differ = [k for k, idx in copies.items()
              if any(_canonical(rows[j]) != _canonical(rows[first[k]]) for j in idx)]
    k = next(iter(copies))
    places = [where[first[k]]] + [where[j] for j in copies[k]]
    example = f"{_describe_key(k)} on {', '.join(places[:-1])} and {places[-1]}"
    if differ:
        d = differ[0]
        a, b = rows[first[d]], rows[copies[d][0]]
        cols = [c for c in a if _canonical({c: a.get(c)}) != _canonical({c: b.get(c)})]
        note = (f"; the copies of {len(differ)} key{'s' * (len(differ) > 1)} differ (e.g. {where[first[d]]} "
                f"and {where[copies[d][0]]}: {', '.join(cols[:4]) or 'columns'})")
    else:
        note = "; the copies are identical"
    return kept, {"keys": len(copies), "extra": sum(len(v) for v in copies.values()), "example": example,
                  "differ": note}


def _render_groups(first: list[str], groups: list) -> str:
    """Left-aligned table: a first column, then groups of sub-columns under a label."""
    w0 = max(len(c) for c in first)
    blocks = []
    for label, cols in groups:
        widths = [max(len(c) for c in col) for col in cols]
        span = sum(widths) + 2 * (len(widths) - 1)
        if len(label) > span:
            widths[-1] += len(label) - span
            span = len(label)
        blocks.append((label, cols, widths, span))
    lines = [" " * w0 + "".join("   " + label.ljust(span) for label, _, _, span in blocks)]
    for i, c0 in enumerate(first):
        line = c0.ljust(w0)
        for _, cols, widths, _ in blocks:
            line += "   " + "  ".join(col[i].ljust(w) for col, w in zip(cols, widths))
        lines.append(line.rstrip())
        if i == 0:
            lines.append("-" * max(len(x) for x in lines))
    return "\n".join(x.rstrip() for x in lines)


def _render(headers: list[list[str]], body: list[list[str]]) -> str:
    """Header rows, a rule, then the body; the first column left-aligned, the others right."""
    ncol = max(len(r) for r in headers + body)
    rows = [r + [""] * (ncol - len(r)) for r in headers + body]
    widths = [max(len(r[i]) for r in rows) for i in range(ncol)]
    lines = []
    for k, r in enumerate(rows):
        cells = []
        for i, c in enumerate(r):
            right = i > 0 and (k >= len(headers) or c)
            cells.append(c.rjust(widths[i]) if right else c.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
        if k == len(headers) - 1:
            lines.append("-" * max(len(x) for x in lines))
    return "\n".join(lines)


__all__ = ["Results", "ResultsWarning", "check_rows", "describe_problems", "format_time", "row_key",
           "table_columns"]
