"""Plots of result tables (matplotlib, the ``plot`` extra: ``pip install matplotlib``).

Figures are drawn with ``matplotlib.figure.Figure`` directly (no pyplot, no GUI backend),
so plotting works on headless machines and inside worker processes. A figure is written to
exactly the path given, in the format its extension names (:func:`plot_format`), and an
existing file is kept unless ``overwrite=True``.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import ConfigError
from .metrics import get_metric
from .times import format_time
from .storage import ResultsFileError, atomic_write, check_writable


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError('Plotting needs matplotlib, which is not installed: pip install matplotlib '
                          '(or pip install "anasim[plot]").') from None
    return Figure


def _scale(m, v):
    if v is None:
        return float("nan")
    return 100.0 * v if m.percent else v


def _errbars(m, aggs):
    lo, hi = [], []
    for a in aggs:
        if a["ci_low"] is None:
            lo.append(0.0)
            hi.append(0.0)
        else:
            lo.append(_scale(m, a["mean"]) - _scale(m, a["ci_low"]))
            hi.append(_scale(m, a["ci_high"]) - _scale(m, a["mean"]))
    return [lo, hi]


def _time_axis(ax, times):
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    ticks = sorted(set(times))
    ax.set_xticks(ticks)
    ax.set_xticklabels([format_time(t) for t in ticks], rotation=0)
    hi = max(ticks) if ticks else 1.0
    ax.set_xlim(-0.4 if min(ticks, default=0) <= 0 else min(ticks) / 2.5, max(hi, 1.0) * 2.5)
    ax.minorticks_off()
    ax.set_xlabel("time after programming, t_inference (log scale; 0 s at the left)")


def plot_format(path) -> str:
    """The image format that ``path``'s extension names ("png" when it has none), checked
    before anything is drawn: matplotlib must be installed and support it, or
    ResultsFileError lists the extensions it does support."""
    _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix
    fmt = suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ResultsFileError(f"{path}: cannot write a plot as {suffix!r}; use one of "
                               + ", ".join(f".{k}" for k in sorted(supported)) + ".")
    return fmt


def plot_results(results, path=None, metric=None, x=None, overwrite=False):
    """See :meth:`anasim.experiment.Results.plot`."""
    Figure = _matplotlib()
    if path is not None:
        fmt = plot_format(path)
        check_writable(path, overwrite)  # refuse before drawing
    metric = metric or results.metrics[0]
    m = get_metric(metric)
    aggs = results.aggregate(metric)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ylabel = m.label + (f" ({m.unit})" if m.unit else "") + ("" if m.higher_is_better else ", lower is better")
    n_rep = max((a["n"] for a in aggs), default=0)
    bars = "95 % interval over repetitions" if n_rep > 1 else "1 repetition"
    varying = [p for p in results.params if len({_key(a.get(p)) for a in aggs}) > 1]
    if x is None and not varying:
        aggs = sorted(aggs, key=lambda a: a["t_inference"])
        ts = [a["t_inference"] for a in aggs]
        ax.errorbar(ts, [_scale(m, a["mean"]) for a in aggs], yerr=_errbars(m, aggs), marker="o",
                    capsize=4, label=f"analog (mean, {bars})")
        ideal = results.ideal(metric)
        if ideal is not None:
            ax.axhline(_scale(m, ideal), color="black", linestyle="--", linewidth=1,
                       label=f"ideal (digital): {m.format(ideal)}{m.unit}")
        _time_axis(ax, ts)
        ax.set_title(_title(results))
    else:
        x = x or (varying[0] if varying else "t_inference")
        if x != "t_inference" and x not in results.params:
            raise ConfigError(f"Cannot plot against {x!r}: not a swept parameter "
                              f"({', '.join(results.params) or 'none'}).")
        others = [p for p in varying if p != x]
        series: dict = {}
        for a in aggs:
            key = tuple((p, _key(a.get(p))) for p in others)
            if x != "t_inference":
                key += (("t", a["t_inference"]),)
            series.setdefault(key, []).append(a)
        xs_all = [a.get(x) if x != "t_inference" else a["t_inference"] for a in aggs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
        cats = [] if numeric else list(dict.fromkeys(_key(v) for v in xs_all))
        logx = (x != "t_inference" and numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100)
        span = (max(xs_all) - min(xs_all)) if numeric and x != "t_inference" and not logx else (
            len(cats) - 1 if cats else 0)
        for i, (key, group) in enumerate(series.items()):
            # dodge the series sideways a little so that their error bars do not hide each other
            shift = (i - (len(series) - 1) / 2) * 0.012 * span if span else 0.0
            group = sorted(group, key=lambda a: (a.get(x) if numeric else cats.index(_key(a.get(x))))
                           if x != "t_inference" else a["t_inference"])
            xv = [(a.get(x) if numeric else cats.index(_key(a.get(x)))) if x != "t_inference"
                  else a["t_inference"] for a in group]
            label = ", ".join(f"{k}={format_time(v) if k == 't' else v}" for k, v in key) or None
            ax.errorbar([v + shift for v in xv], [_scale(m, a["mean"]) for a in group],
                        yerr=_errbars(m, group), marker="o", capsize=3, label=label)
        ideals = {a["ideal"] for a in aggs if a["ideal"] is not None}
        if len(ideals) == 1:
            iv = ideals.pop()
            ax.axhline(_scale(m, iv), color="black", linestyle="--", linewidth=1,
                       label=f"ideal (digital): {m.format(iv)}{m.unit}")
        if x == "t_inference":
            _time_axis(ax, xs_all)
        elif not numeric:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats)
            ax.set_xlabel(x)
        else:
            ax.set_xlabel(x)
            if logx:
                ax.set_xscale("log")
        ax.set_title(f"{_title(results)} — error bars: {bars}", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120)
        atomic_write(path, buf.getvalue(), overwrite=overwrite)
    return fig


def _key(v):
    if isinstance(v, (dict, list)):
        import json
        return json.dumps(v, sort_keys=True)
    return v


def _title(results) -> str:
    r = results.rows[0] if results.rows else {}
    model = Path(str(r.get("model", "model"))).name
    data = Path(str(r.get("data", "data"))).name
    return f"{model} on {data} ({r.get('n_samples', '?')} samples)"


__all__ = ["plot_results", "plot_format"]
