"""Layer sensitivity: which analog layers cost the accuracy.

>>> from anasim.experiment import sensitivity
>>> s = sensitivity("model.onnx", "test.npz", "aihwkit", preprocessing="cifar10",
...                 times=[0, 86400], repeats=3, seed=0, out="sens.csv")   # doctest: +SKIP
>>> print(s.table()); s.plot("sens.png")                                 # doctest: +SKIP

For every analog layer L of the configuration two points are evaluated:

``only``
    only L is analog: every other analog layer is kept digital (a ``[[layers]]`` entry
    ``digital = true`` naming them, appended to the configuration's own entries);
``all-but``
    every analog layer but L is analog (an entry keeping L digital);

plus the ``all`` point: the configuration itself, every analog layer analog, which is
exactly what :func:`~anasim.experiment.evaluate` computes with the same seed (same point
id, bit-identical rows). The points are one :func:`~anasim.experiment.sweep`, so they
are resumable into ``out`` (finished points are skipped on a rerun), shown on a progress
bar, and run in worker processes or on a Dask cluster like any sweep; every point uses
the same seed, times and repetitions.

The results file is a sweep's tidy table (one row per point × t_inference × repetition
plus each point's ideal row) with five point columns: ``layer`` (the ONNX node name;
``*`` for the ``all`` point), ``layer_index`` (its position among the model's
Conv/Gemm/MatMul layers with constant weights, in model order; empty for ``all``), ``mode`` (``only``, ``all-but``,
``all``), ``tile_grid``
(input chunks × output chunks of the layer's tiles, ``x G groups`` for grouped
convolutions; the total tile count for ``all``) and ``n_params`` (the weights the layer
puts on tiles; all layers' for ``all``).

The ranking (:meth:`Sensitivity.ranking`, :meth:`Sensitivity.table`) gives per layer and
t_inference the *drop* of the ``only`` point below the ideal (digital) score and the
*gain* of the ``all-but`` point over the ``all`` point (per repetition, then mean ± std
over the repetitions): both are "how much this layer costs", positive when the layer
hurts (for a lower-is-better metric such as ``logits_rel_error`` the signs are turned so
that this still holds). Layers are ranked by their drop averaged over the times
(``by="all-but"``: by their gain).

Random streams. Each layer's noise streams are keyed by the layer's position among all
the model's Conv/Gemm/MatMul layers with constant weights (``AnalogLayer.index``), digital
ones included, so a layer draws in an ``only`` or ``all-but`` point exactly the noise it
has in the ``all`` point (common random numbers): the per-repetition gain (all-but − all)
is that layer's own effect, not a fresh draw of every other layer's noise.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Sequence

from ..config import AnalogConfig
from ..config.layers import LayerOverride
from ..errors import ConfigError, closest
from .evaluate import ModelSource, as_data, check_times, resolve_config
from .metrics import get_metric
from .results import Results
from .stats import describe
from .sweep import Grid, sweep
from .times import format_time

MODES = ("only", "all-but")
"""The two points per layer: only this layer analog; every analog layer but this one."""
ALL = "all"
"""The mode of the baseline point: the configuration as given, every analog layer analog."""
COLUMNS = ["layer", "layer_index", "mode", "tile_grid", "n_params"]
"""The point columns of a sensitivity results file."""


@dataclass
class _PointsGrid(Grid):
    """A grid whose points are given as resolved configurations with their columns."""

    entries: list = field(default_factory=list)

    def configs(self):
        return list(self.entries)


def _tile_grid(layer) -> str:
    g, i, o = layer.tile_grid
    return f"{i}x{o}" + (f" x {g} groups" if g > 1 else "")


def _n_params(layer) -> int:
    return int(math.prod(layer.weight_shape))


def analog_layers(graph, cfg: AnalogConfig, seed: int = 0) -> list[dict]:
    """The layers ``cfg`` maps onto tiles, in model order: ``{"layer", "op_type",
    "tile_grid", "n_tiles", "n_params"}`` each (the configuration is checked on the way:
    a ``[[layers]]`` pattern that matches nothing is a ConfigError)."""
    from ..analog.simulator import analog

    sim = analog(graph, cfg, seed=seed)
    return [{"layer": layer.name, "layer_index": layer.index, "op_type": layer.op_type,
             "tile_grid": _tile_grid(layer),
             "n_tiles": layer.n_tiles, "n_params": _n_params(layer)} for layer in sim.layers]


def _select(layers: list[dict], patterns) -> list[dict]:
    if patterns is None:
        return layers
    if isinstance(patterns, str):
        patterns = [patterns]
    probe = LayerOverride(match=tuple(patterns))  # checks the patterns' form
    names = [x["layer"] for x in layers]
    for p in probe.patterns:
        if not any(LayerOverride(match=p).matches(n) for n in names):
            raise ConfigError(f"layers: {p!r} matches no analog layer.{closest(p, names)} Analog layers: "
                              f"{names[:8]}{' ...' if len(names) > 8 else ''}")
    return [x for x in layers if probe.matches(x["layer"])]


def layer_points(cfg: AnalogConfig, layers: list[dict], studied: list[dict] | None = None,
                 modes: Sequence[str] = MODES) -> list[tuple[dict, AnalogConfig]]:
    """``(columns, configuration)`` of the sensitivity points: the ``all`` point (``cfg``
    itself) first, then per studied layer (default all of ``layers``, the analog layers of
    ``cfg``) its ``only`` and/or ``all-but`` point. Each configuration appends to ``cfg``'s
    own ``[[layers]]`` one entry keeping the other analog layers (``only``) or the layer
    (``all-but``) digital, and is checked to leave exactly the intended layers analog."""
    names = [x["layer"] for x in layers]
    studied = layers if studied is None else studied
    total = {"layer": "*", "layer_index": None, "mode": ALL,
             "tile_grid": f"{sum(x['n_tiles'] for x in layers)} tiles",
             "n_params": sum(x["n_params"] for x in layers)}
    out = [(total, cfg)]
    for x in studied:
        name = x["layer"]
        for mode in modes:
            if mode == "only":
                others = [n for n in names if n != name]
                # with no other analog layer, an entry naming the layer itself (digital = false
                # changes nothing) keeps the point apart from the "all" point
                entry = (LayerOverride(match=tuple(others), digital=True) if others
                         else LayerOverride(match=name, digital=False))
                analog = {name}
            else:
                entry = LayerOverride(match=name, digital=True)
                analog = set(names) - {name}
            point_cfg = cfg.replace(layers=tuple(cfg.layers) + (entry,))
            got = {n for n in names if not point_cfg.for_layer(n).digital}
            if got != analog:  # a node name with glob characters selecting other layers too
                raise ConfigError(f"Cannot make the {mode!r} point of layer {name!r}: its [[layers]] "
                                  f"entry leaves {sorted(got)} analog instead of {sorted(analog)} (a node "
                                  "name with glob characters that also matches other layers).")
            out.append(({"layer": name, "layer_index": x["layer_index"], "mode": mode,
                         "tile_grid": x["tile_grid"],
                         "n_params": x["n_params"]}, point_cfg))
    return out


def _check_modes(modes) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = [modes]
    modes = tuple(m.replace("_", "-") if isinstance(m, str) else m for m in modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        raise ConfigError(f"modes must be a non-empty selection of {', '.join(map(repr, MODES))}; got "
                          f"{list(modes)!r}.")
    return modes


def sensitivity(model, dataset, config=None, *, times=(0.0,), repeats: int = 1, seed: int = 0,
                batch_size: int = 256, metric="top1", output: str | None = None, preprocessing=None,
                limit: int | None = None, overrides: Sequence[str] = (), layers=None,
                modes: Sequence[str] = MODES, out=None, workers: int = 1, threads: int | None = None,
                scheduler=None, progress: bool | None = None, log=None,
                device: str = "cpu") -> "Sensitivity":
    """Score ``model`` with each analog layer alone analog and with all but it analog.

    Parameters as :func:`~anasim.experiment.evaluate` (model, dataset, config, times,
    repeats, seed, batch_size, metric, output, preprocessing, limit, overrides, progress,
    threads, device) and :func:`~anasim.experiment.sweep` (out: a resumable results file;
    workers, scheduler, log), plus:

    layers : node names or globs of the analog layers to study (default all of them); the
        other analog layers stay part of every point (digital in ``only`` points).
    modes : ``("only", "all-but")`` (default) or one of them.

    Returns a :class:`Sensitivity` (``.results``: the tidy :class:`Results`; ``.table()``,
    ``.ranking()``, ``.plot()``).
    """
    modes = _check_modes(modes)
    cfg = resolve_config(config, overrides)
    msrc = ModelSource(model)
    data = as_data(dataset, preprocessing, limit)
    graph = msrc.graph(bool(cfg.mapping.fold_batchnorm))
    found = analog_layers(graph, cfg, seed)
    if not found:
        raise ConfigError("The configuration keeps every Conv/Gemm/MatMul layer of this model digital: there "
                          "is no analog layer to study.")
    studied = _select(found, layers)
    points = layer_points(cfg, found, studied, modes)
    grid = _PointsGrid(base=config if isinstance(config, str) else "<inline>", set=[],
                       times=check_times(times), repeats=repeats, seed=seed, metric=metric,
                       points=[c for c, _ in points],
                       params=list(COLUMNS), source="<sensitivity>", entries=points)
    res = sweep(msrc, data, grid, out=out, batch_size=batch_size, workers=workers, threads=threads,
                scheduler=scheduler, progress=progress, output=output, log=log, device=device)
    res.meta.update(sensitivity={"layers": [x["layer"] for x in studied], "modes": list(modes),
                                 "analog_layers": len(found)})
    return Sensitivity(res)


# ----------------------------------------------------------------------------- analysis
def _signed(m, v):
    return v if m.higher_is_better else -v


class Sensitivity:
    """The outcome of :func:`sensitivity`: ``results`` (the tidy :class:`Results`, what the
    results file holds) and the per-layer analysis. ``Sensitivity(Results.load(path))``
    reads a results file back."""

    def __init__(self, results: Results):
        missing = [c for c in ("layer", "mode") if c not in results.params]
        if missing:
            raise ConfigError(f"Not a sensitivity results table: no {' and '.join(missing)} column "
                              f"(its point columns: {results.params or 'none'}).")
        self.results = results

    def __repr__(self) -> str:
        return f"<anasim Sensitivity: {len(self.layers())} layer(s), {len(self.results)} rows>"

    @property
    def metrics(self) -> list[str]:
        return self.results.metrics

    def _metric(self, metric) -> str:
        if metric is None:
            return self.metrics[0]
        name = get_metric(metric).name
        if name not in self.metrics:
            raise ConfigError(f"The results have no {name!r} column; they hold {', '.join(self.metrics)}.")
        return name

    def save(self, path, overwrite: bool = False):
        """Write the results table (see :meth:`Results.save`)."""
        return self.results.save(path, overwrite=overwrite)

    def times(self) -> list[float]:
        return sorted({r["t_inference"] for r in self.results.rows if r.get("kind") == "analog"})

    def layers(self) -> list[dict]:
        """``{"layer", "layer_index", "tile_grid", "n_params"}`` of every studied layer, in
        model order."""
        seen: dict = {}
        for r in self.results.rows:
            if r.get("mode") in MODES and str(r.get("layer")) not in seen:
                name = str(r.get("layer"))
                seen[name] = {"layer": name, "layer_index": r.get("layer_index"),
                              "tile_grid": r.get("tile_grid"), "n_params": r.get("n_params")}
        order = list(seen)
        return sorted(seen.values(), key=lambda x: (not isinstance(x["layer_index"], int),
                                                    x["layer_index"] if isinstance(x["layer_index"], int)
                                                    else order.index(x["layer"])))

    def _values(self, metric):
        """ideal score, {(layer, mode): {(t, repetition): value}} (the ``all`` point under
        layer None)."""
        ideal, vals = None, {}
        for r in self.results.rows:
            mode = r.get("mode")
            if r.get("kind") == "ideal":
                if ideal is None:
                    ideal = r.get(metric)
                continue
            key = (None if mode == ALL else str(r.get("layer")), mode)
            vals.setdefault(key, {})[(r["t_inference"], r["repetition"])] = r.get(metric)
        return ideal, vals

    def ranking(self, metric: str | None = None, by: str = "only") -> list[dict]:
        """One dict per studied layer, most costly first: ``layer``, ``tile_grid``,
        ``n_params``, ``rank`` (1 = most costly), ``score`` (what the ranking sorts by: the
        layer's mean ``only`` drop averaged over the times, or its ``all-but`` gain for
        ``by="all-but"``) and ``times``: per t_inference ``{"t_inference", "only",
        "all_but", "all", "drop", "gain"}``, each a :func:`~anasim.experiment.stats.describe`
        dict (n, mean, std, ci_low, ci_high) over the repetitions: the scores of the
        ``only``, ``all-but`` and ``all`` points, the drop (ideal − only) and the gain
        (all-but − all, per repetition); signs turned for a lower-is-better metric so that
        drop and gain are positive when the layer hurts. ``ideal`` holds the digital score."""
        metric = self._metric(metric)
        m = get_metric(metric)
        by = by.replace("_", "-")
        if by not in MODES:
            raise ConfigError(f"by must be 'only' or 'all-but'; got {by!r}.")
        ideal, vals = self._values(metric)
        base = vals.get((None, ALL), {})
        out = []
        for pos, info in enumerate(self.layers()):
            name = info["layer"]
            only, allbut = vals.get((name, "only"), {}), vals.get((name, "all-but"), {})
            per_t = []
            for t in self.times():
                def at(d):
                    return {rep: v for (tt, rep), v in d.items() if tt == t}
                o, a, b = at(only), at(allbut), at(base)
                drop = ([_signed(m, ideal - v) for v in o.values() if v is not None]
                        if ideal is not None else [])
                gain = [_signed(m, v - b[rep]) for rep, v in a.items()
                        if v is not None and b.get(rep) is not None]
                per_t.append({"t_inference": t, "only": describe(o.values()), "all_but": describe(a.values()),
                              "all": describe(b.values()), "drop": describe(drop), "gain": describe(gain)})
            key = "drop" if by == "only" else "gain"
            means = [x[key]["mean"] for x in per_t if x[key]["mean"] is not None]
            score = math.fsum(means) / len(means) if means else None
            out.append({**info, "position": pos, "score": score, "ideal": ideal, "times": per_t})
        out.sort(key=lambda x: (x["score"] is None, -(x["score"] or 0.0), x["position"]))
        for i, x in enumerate(out):
            x["rank"] = i + 1
        return out

    def table(self, metric: str | None = None, by: str = "only") -> str:
        """The ranking as a text table: per layer its tile grid and weight count, then per
        t_inference the drop with only it analog and the gain with all but it analog, mean
        ± std over the repetitions (accuracies in percentage points)."""
        metric = self._metric(metric)
        m = get_metric(metric)
        rank = self.ranking(metric, by)
        if not rank:
            return "(no layers)"
        times = self.times()
        ideal = rank[0]["ideal"]
        unit = "in percentage points" if m.percent else ""
        better = "" if m.higher_is_better else ", lower is better"
        base = rank[0]["times"]
        lines = [f"Layer sensitivity, {m.label}{better}: ideal (digital) {_fmt(m, ideal)}{m.unit}; "
                 "all analog " + ", ".join(f"{format_time(x['t_inference'])} {_pm(m, x['all'])}"
                                           for x in base)]
        modes = [k for k, mode in (("drop", "only"), ("gain", "all-but")) if any(
            x["times"][i][k]["n"] for x in rank for i in range(len(times)))]
        what = {"drop": "drop: only this layer analog", "gain": "gain: all but this layer analog"}
        groups = [(4 + j * len(times), what[k]) for j, k in enumerate(modes)]
        head = ["rank", "layer", "tiles", "weights"] + [format_time(t) for _ in modes for t in times]
        body = []
        for x in rank:
            cells = [str(x["rank"]), x["layer"], str(x["tile_grid"]), str(x["n_params"])]
            for k in modes:
                cells += [_pm(m, x["times"][i][k], signed=True) for i in range(len(times))]
            body.append(cells)
        lines.append(_render(groups, head, body, n_text=3))
        n = max((x["times"][i]["drop"]["n"] for x in rank for i in range(len(times))), default=0)
        lines.append(f"ranked by the {'drop' if by == 'only' else 'gain'} averaged over the times; "
                     f"{unit}{'; ' if unit else ''}positive = the layer costs; ± = std over "
                     + (f"{n} repetitions" if n > 1 else "1 repetition (n/a)"))
        return "\n".join(lines)

    summary = table

    def plot(self, path=None, metric: str | None = None, by: str = "only", overwrite: bool = False):
        """A bar chart per t_inference (one panel each): per layer, in ranking order, the
        drop with only it analog and the gain with all but it analog, with the std over the
        repetitions as error bars. Returns the matplotlib Figure; with ``path`` it is also
        written there (format by the extension; an existing file refused unless
        ``overwrite``). Needs matplotlib."""
        from .plot import _matplotlib, plot_format
        from .storage import atomic_write, check_writable

        Figure = _matplotlib()
        if path is not None:
            fmt = plot_format(path)
            check_writable(path, overwrite)
        metric = self._metric(metric)
        m = get_metric(metric)
        rank = self.ranking(metric, by)
        times = self.times()
        scale = 100.0 if m.percent else 1.0
        n_layers = max(len(rank), 1)
        fig = Figure(figsize=(4.2 * max(len(times), 1) + 2.5, 2.0 + 0.32 * n_layers), layout="constrained")
        axes = fig.subplots(1, max(len(times), 1), sharey=True, squeeze=False)[0]
        names = [x["layer"] for x in rank]
        ys = list(range(len(rank)))
        h = 0.38
        for i, (ax, t) in enumerate(zip(axes, times)):
            bars = (("drop", "only this layer analog: drop below ideal", -h / 2),
                    ("gain", "all but this layer analog: gain over all analog", h / 2))
            for k, (key, label, dy) in enumerate(bars):
                st = [x["times"][i][key] for x in rank]
                if not any(s["n"] for s in st):
                    continue
                vals = [scale * s["mean"] if s["mean"] is not None else 0.0 for s in st]
                err = [scale * s["std"] if s["std"] is not None else 0.0 for s in st]
                ax.barh([y + dy for y in ys], vals, height=h, xerr=err, capsize=2, label=label,
                        color=f"C{k}")
            ax.axvline(0.0, color="black", linewidth=0.8)
            ax.set_title(f"t_inference = {format_time(t)}", fontsize=10)
            ax.set_xlabel(f"{m.label} cost" + (" (percentage points)" if m.percent else ""))
            ax.grid(True, axis="x", alpha=0.3)
        axes[0].set_yticks(ys)
        axes[0].set_yticklabels(names, fontsize=8)
        axes[0].invert_yaxis()
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=2)
        n = max((x["times"][0]["drop"]["n"] for x in rank), default=0) if times else 0
        fig.suptitle(f"Layer sensitivity ({m.label}; error bars: std over {n} repetition{'s' * (n != 1)})",
                     fontsize=10)
        if path is not None:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=120)
            atomic_write(path, buf.getvalue(), overwrite=overwrite)
        return fig


def _fmt(m, v) -> str:
    return "n/a" if v is None else m.format(v)


def _pm(m, st, signed: bool = False) -> str:
    mean, std = st["mean"], st["std"]
    if mean is None:
        return "n/a"
    text = m.format(mean)
    if text.startswith("-") and not any(ch in "123456789" for ch in text):
        text = text[1:]  # -0.00: a rounding of zero, no sign
    if signed and not text.startswith("-"):
        text = "+" + text
    return text + f" ± {m.format(std) if std is not None else 'n/a'}"


def _render(groups: list[tuple[int, str]], head: list[str], body: list[list[str]], n_text: int) -> str:
    """A line of group labels (``(first column, label)``: a label starts at its first
    column and may run over the next ones), the column heads, a rule, then the body; the
    first ``n_text`` columns are left-aligned, the others right-aligned."""
    rows = [head] + body
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, (col, label) in enumerate(groups):  # widen a group's last column to fit its label
        end = groups[k + 1][0] if k + 1 < len(groups) else len(head)
        span = sum(widths[col:end]) + 2 * (end - col - 1)
        widths[end - 1] += max(0, len(label) - span)

    def line(cells):
        return "  ".join(c.ljust(w) if i < n_text else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    starts = [sum(widths[:i]) + 2 * i for i in range(len(head))]
    top = ""
    for col, label in groups:
        top = (top + "  " if top else "").ljust(starts[col]) + label
    lines = [top.rstrip(), line(head)]
    lines.append("-" * max(len(x) for x in lines))
    lines += [line(r) for r in body]
    return "\n".join(lines)


__all__ = ["sensitivity", "Sensitivity", "layer_points", "analog_layers", "MODES", "COLUMNS"]
