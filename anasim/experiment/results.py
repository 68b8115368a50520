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
"""

from __future__ import annotations

from pathlib import Path

from .metrics import get_metric
from .times import format_time
from .stats import describe
from .storage import ResultsFileError, read_table, table_text, write_table

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
            from ..errors import ConfigError

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
    def load(cls, path) -> "Results":
        """Read a results file written by :meth:`save` or by a sweep."""
        columns, rows, meta, _ = read_table(path, KINDS)
        params = meta.get("params")
        if params is None:
            known = set(HEAD + KEYS + TAIL)
            start = columns.index("kind") if "kind" in columns else 1
            params = [c for c in columns[1:start] if c not in known]
        metrics = meta.get("metrics")
        if metrics is None:
            lo = columns.index("repetition") + 1 if "repetition" in columns else 0
            hi = columns.index("n_samples") if "n_samples" in columns else len(columns)
            metrics = columns[lo:hi]
        for r in rows:  # JSON files keep types; CSV cells were typed by KINDS
            for k in ("t_inference",):
                if r.get(k) is not None:
                    r[k] = float(r[k])
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


__all__ = ["Results", "format_time", "table_columns"]
