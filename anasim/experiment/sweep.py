"""Sweep a grid of configurations; resumable, in local processes or on a Dask cluster.

Grid file (TOML)
----------------
::

    # sweep.toml
    base = "aihwkit"        # preset name or configuration file (relative to this file), or an
                            # inline table ([base] with preset = "...", [base.forward] ...);
                            # default "ideal"
    set = ["mapping.max_input_size = 256"]   # optional: overrides applied to every point
    times = [0, 3600, 86400]                 # t_inference in seconds (default [0])
    repeats = 3                              # Monte-Carlo repetitions per time (default 1)
    seed = 0                                 # master seed (default 0)
    metric = "top1"                          # top1 | top5 | topK | logits_rel_error (default top1)

    [grid]                                   # Cartesian product of the lists
    "forward.out_res"   = [62, 126, 254]
    "forward.out_noise" = [0.0, 0.02, 0.04]

    [[points]]                               # explicit points, evaluated in addition to [grid]
    "forward.out_noise" = 0.1
    "noise_model" = {type = "pcm", prog_noise_scale = 0.5}

Keys are ``section.parameter`` as in ``--set`` and ``anasim params`` (quoted or not: an
unquoted dotted key is the same TOML); a table with a ``type`` key (``noise_model = {type =
"reram"}``) replaces the whole section; the key ``base`` switches the base configuration
(``base = ["aihwkit", "hwa-standard"]`` in ``[grid]``). Without ``[grid]`` and
``[[points]]`` the base alone is evaluated. The points are the grid's product (the last key
varying fastest) followed by the explicit points; identical configurations are evaluated
once. Command-line options (``--times``, ``--repeats``, ``--seed``, ``--metric``, ``--set``)
override the file.

Results
-------
One row per point × t_inference × repetition plus one ``ideal`` row per point, with every
swept parameter as a column (see :mod:`anasim.experiment.results`). A point is identified
by the hash in the ``point`` column (full resolved configuration, model and data SHA-256,
preprocessing, limit, seed, times, repeats, metrics), so rerunning the same sweep skips
the points already in the results file, and changing anything that changes the numbers
evaluates the point again (the old rows stay; both are tidy rows).

Resumability. The results file is written by the driver only, one finished point at a
time: ``.csv``/``.jsonl`` get the point's rows in one ``write`` + ``fsync`` on an append
descriptor (``.json`` is rewritten atomically). A process killed at any moment loses only
the points that were still running; a torn last line is dropped on the next run, which
first rewrites the file atomically (temp file + ``os.replace``) without torn or damaged
lines, incomplete or duplicated points, and says what it dropped (damaged lines by number;
through ``log``, or as a :class:`~anasim.experiment.storage.ResultsWarning` without one).
``<real file>.lock`` (``flock``) refuses a second writer, also one through a symbolic link,
another spelling of the path or a hard link, with a clear message; the kernel releases it
when a process dies. Writing through a symbolic link updates the file it leads to.

A results file holds one experiment: a sweep resuming into a file whose rows come from
another model or data set (SHA-256, preprocessing, limit, number of samples), seed, times,
repeats or metric is refused before any evaluation, with a message naming every field
that differs, the file's and this run's values (growing the grid with new points is what
resuming is for).

Parallelism. ``workers > 1``: a ``ProcessPoolExecutor`` with the ``spawn`` start method;
each worker gets ``threads // workers`` Numba/BLAS threads (at least 1) and receives the
model and data once. ``scheduler``: a Dask ``distributed`` scheduler address (or a
``Client``); the model bytes and data are scattered to the workers once and every point is
one task. Results do not depend on how points are distributed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config.text import toml_literal
from ..config import AnalogConfig, apply_overrides, load_config
from ..errors import ConfigError, closest
from ..files import parse_nested, read_text
from ..kernels.rng import check_seed
from ..threads import resolve_threads, set_threads, worker_env
from .evaluate import Job, ModelSource, as_data, check_times, make_job, run_meta
from .progress import progress_bar
from .results import HEAD, KINDS, TAIL, Results, check_rows, describe_problems, table_columns
from .storage import (ResultLock, ResultStore, ResultsFileError, ResultsWarning, _json_default, dumps,
                      load_table)
from .times import format_time

GRID_KEYS = ("base", "set", "times", "repeats", "seed", "metric", "grid", "points", "description")


# --------------------------------------------------------------------------------- grid
@dataclass
class Grid:
    """A parsed grid file: base configuration, fixed overrides, run settings and points.

    ``points`` is a list of dicts ``{parameter: value}`` (the grid's product, then the
    explicit points); ``params`` the parameter names in column order."""

    base: Any = "ideal"
    set: list = field(default_factory=list)
    times: tuple = (0.0,)
    repeats: int = 1
    seed: int = 0
    metric: str = "top1"
    points: list = field(default_factory=lambda: [{}])
    params: list = field(default_factory=list)
    folder: Path = field(default_factory=Path)
    source: str = "<grid>"

    def _base_config(self, base) -> AnalogConfig:
        if isinstance(base, str):
            p = self.folder / base
            if p.suffix.lower() in (".toml", ".json") and p.is_file():
                return load_config(p)
        if isinstance(base, dict):
            return AnalogConfig.from_dict(base, where=f"{self.source}: base")
        return load_config(base)

    def configs(self) -> list[tuple[dict, AnalogConfig]]:
        """``(column values, resolved configuration)`` for every point, in order. Every
        swept column is filled, from the resolved configuration where a point does not
        set it."""
        out = []
        cache: dict = {}
        for i, point in enumerate(self.points):
            base = point.get("base", self.base)
            key = json.dumps(base, sort_keys=True) if not isinstance(base, str) else base
            if key not in cache:
                cfg = self._base_config(base)
                if self.set:
                    cfg = apply_overrides(cfg, self.set)
                cache[key] = cfg
            cfg = cache[key]
            assignments = [f"{k}={_literal(v)}" for k, v in point.items() if k != "base"]
            if assignments:
                try:
                    cfg = apply_overrides(cfg, assignments)
                except ConfigError as exc:
                    where = _describe_point(point)
                    raise ConfigError(f"{self.source}: point {i + 1} ({where}): {exc}") from None
            values = cfg.to_dict()
            cols = {}
            for p in self.params:
                if p in point:
                    cols[p] = point[p]
                elif p == "base":
                    cols[p] = self.base if isinstance(self.base, str) else "<inline>"
                else:
                    cols[p] = _lookup(values, p)
            out.append((cols, cfg))
        return out


def _describe_point(point: dict) -> str:
    return ", ".join(f"{k}={_literal(v)}" for k, v in point.items()) or "the base"


def _lookup(tree: dict, dotted: str):
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _literal(v) -> str:
    """A value as a TOML literal for ``apply_overrides`` (a grid value)."""
    try:
        return toml_literal(v)
    except ConfigError:
        raise ConfigError(f"Cannot use {type(v).__name__} value {v!r} in a grid.") from None


def _flatten(table: dict, prefix: str = "", keep_typed: bool = True) -> dict:
    """Nested tables (unquoted dotted TOML keys) to dotted keys; a table with a ``type``
    key stays whole (it replaces a section)."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not (keep_typed and "type" in v) and key != "base":
            out.update(_flatten(v, key + ".", keep_typed))
        else:
            out[key] = v
    return out


def load_grid(grid, **overrides) -> Grid:
    """A :class:`Grid` from a TOML file path, a dict shaped like the file, or a Grid;
    keyword ``overrides`` (times, repeats, seed, metric, set) replace the file's values
    when not None (``set`` is appended)."""
    if isinstance(grid, Grid):
        g = grid
    else:
        folder, source = Path("."), "<grid>"
        if isinstance(grid, (str, os.PathLike)):
            path = Path(grid)
            from ..config.text import loads_toml

            text = read_text(path, "grid file", ConfigError)
            if path.suffix.lower() == ".json":
                try:
                    data = parse_nested(json.loads, text, str(path), ConfigError)
                except ValueError as exc:
                    raise ConfigError(f"{path}: invalid JSON: {exc}") from None
            else:
                data = parse_nested(lambda t: loads_toml(t, str(path)), text, str(path), ConfigError)
            folder, source = path.parent, str(path)
        elif isinstance(grid, dict):
            data = grid
        else:
            raise ConfigError(f"grid must be a file path or a dict; got {type(grid).__name__}.")
        g = _parse_grid(data, folder, source)
    changes = {k: v for k, v in overrides.items() if v is not None and k != "set"}
    if changes:
        g = Grid(**{**g.__dict__, **changes})
        g.times = check_times(g.times)
    if overrides.get("set"):
        g = Grid(**{**g.__dict__, "set": list(g.set) + list(overrides["set"])})
    return g


def _parse_grid(data: dict, folder: Path, source: str) -> Grid:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a grid must be a table.")
    for k in data:
        if k not in GRID_KEYS:
            raise ConfigError(f"{source}: unknown key {k!r}.{closest(k, GRID_KEYS)} "
                              f"Valid top-level keys: {', '.join(GRID_KEYS)}; swept parameters go "
                              "in [grid] or [[points]].")
    fixed = data.get("set", [])
    if isinstance(fixed, str):
        fixed = [fixed]
    if not isinstance(fixed, list) or not all(isinstance(s, str) for s in fixed):
        raise ConfigError(f"{source}: 'set' must be a list of \"section.key=value\" strings.")
    times = check_times(data.get("times", [0.0]))
    repeats, seed = data.get("repeats", 1), data.get("seed", 0)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"{source}: repeats must be an integer >= 1; got {repeats!r}.")
    seed = check_seed(seed, ConfigError, f"{source}: seed")
    metric = data.get("metric", "top1")
    table = data.get("grid", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [grid] must be a table of parameter = [values].")
    axes = _flatten(table, keep_typed=False)
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{source}: [grid] {k!r} must be a non-empty list of values; got {v!r}. "
                              "(A single fixed value goes in set = [...].)")
    explicit = data.get("points", [])
    if not isinstance(explicit, list) or not all(isinstance(p, dict) for p in explicit):
        raise ConfigError(f"{source}: points must be an array of tables ([[points]]).")
    explicit = [_flatten(p) for p in explicit]
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else []
    points += explicit
    if not points:
        points = [{}]
    params = list(axes)
    for p in explicit:
        params += [k for k in p if k not in params]
    return Grid(base=data.get("base", "ideal"), set=list(fixed), times=times, repeats=repeats, seed=seed,
                metric=metric, points=points, params=params, folder=folder, source=source)


# ----------------------------------------------------------------------------- resuming
def _expected_keys(times, repeats) -> set:
    return {("ideal", None, None)} | {("analog", float(t), r) for r in range(repeats) for t in times}


def _row_key(r: dict):
    t = r.get("t_inference")
    rep = r.get("repetition")
    return (r.get("kind"), None if t is None else float(t), None if rep is None else int(rep))


def _clean(rows: list[dict], wanted: dict[str, set]) -> tuple[list[dict], set, int, int]:
    """Drop duplicated rows and incomplete points of this sweep; return (rows kept, ids of
    complete points of this sweep, duplicated rows dropped, incomplete points dropped)."""
    seen, kept, dups = set(), [], 0
    for r in rows:
        k = (r.get("point"),) + _row_key(r)
        if k in seen:
            dups += 1
            continue
        seen.add(k)
        kept.append(r)
    by_point: dict[str, set] = {}
    for r in kept:
        by_point.setdefault(r.get("point"), set()).add(_row_key(r))
    done = set()
    for pid, keys in by_point.items():
        if pid in wanted:
            if keys == wanted[pid]:
                done.add(pid)
    bad = {pid for pid in by_point if pid in wanted and pid not in done}
    if bad:
        kept = [r for r in kept if r.get("point") not in bad]
    return kept, done, dups, len(bad)


def _canonical(v) -> str:
    return json.dumps(v, sort_keys=True, default=_json_default, allow_nan=True)


def _check_same_run(path, rows: list[dict], file_metric, job: Job, wanted: dict, torn) -> None:
    """Refuse (ResultsFileError, before any evaluation) to resume into a results file whose
    rows come from another model, data set (file, preprocessing, limit), seed, times,
    repeats or metric: resuming would put two experiments' rows side by side as one. The
    message names every field that differs, with the file's and this run's values.

    Times and repeats are read from the points of other grids in the file (the points of
    this grid match by their hash); a point cut short by a torn write is not used."""
    if not rows:
        return
    fmt = {"model_sha256": lambda v: f"{v[:12]}…" if isinstance(v, str) and len(v) > 12 else str(v),
           "data_sha256": lambda v: f"{v[:12]}…" if isinstance(v, str) and len(v) > 12 else str(v),
           "preprocessing": lambda v: dumps(v) if len(dumps(v)) <= 80 else dumps(v)[:80] + "…"}
    mine = {"model_sha256": job.model.sha256, "data_sha256": job.data.sha256,
            "preprocessing": job.data.preprocessing, "limit": job.data.limit, "n_samples": len(job.data),
            "seed": job.seed}
    sources = {"model_sha256": ("model", job.model.source), "data_sha256": ("data", job.data.source)}
    diffs = []
    for col, value in mine.items():
        if not any(col in r for r in rows):
            continue
        found: dict = {}
        for r in rows:
            v = r.get(col)
            found.setdefault(_canonical(v), (v, r))
        if list(found) == [_canonical(value)]:
            continue
        show = fmt.get(col, lambda v: "none" if v is None else str(v))
        text = " / ".join(show(v) for v, _ in found.values())
        this = show(value)
        if col in sources:
            name, src = sources[col]
            text += f" ({' / '.join(str(r.get(name)) for _, r in found.values())})"
            this += f" ({src})"
        diffs.append(f"{col}: file {text}, this run {this}")
    by_point: dict = {}
    for r in rows:
        by_point.setdefault(r.get("point"), []).append(r)
    pids = list(by_point)[:-1] if torn else list(by_point)  # the last point may be cut short
    shapes: list = []
    for pid in pids:
        analog = [r for r in by_point[pid] if r.get("kind") == "analog"]
        if pid in wanted or not analog:
            continue
        times = tuple(dict.fromkeys(r["t_inference"] for r in analog))
        reps = sorted({r["repetition"] for r in analog})
        pairs = {(r["t_inference"], r["repetition"]) for r in analog}
        if reps == list(range(len(reps))) and len(pairs) == len(analog) == len(times) * len(reps):
            if (times, len(reps)) not in shapes:
                shapes.append((times, len(reps)))
    file_times = list(dict.fromkeys(t for t, _ in shapes))
    if file_times and file_times != [tuple(job.times)]:
        def show_times(ts):
            return "[" + ", ".join(format_time(t) for t in ts) + "]"

        diffs.append(f"times: file {' / '.join(map(show_times, file_times))}, "
                     f"this run {show_times(job.times)}")
    file_reps = list(dict.fromkeys(n for _, n in shapes))
    if file_reps and file_reps != [job.repeats]:
        diffs.append(f"repeats: file {' / '.join(map(str, file_reps))}, this run {job.repeats}")
    metric = job.metrics[0].name
    if file_metric is not None and file_metric != metric:
        diffs.append(f"metric: file {file_metric}, this run {metric}")
    if diffs:
        raise ResultsFileError(
            f"{path} holds the results of another run, and resuming into it would mix the two. What differs: "
            + "; ".join(diffs) + f". Use another --out for this run, or move {path} away to start over "
            "(or rerun with the file's settings to resume it).")


def _merge_columns(old_cols: list[str], params: list[str], metrics: list[str], path) -> tuple[list, list]:
    if not old_cols:
        return list(params), list(metrics)
    if old_cols[:1] != HEAD or "kind" not in old_cols or "repetition" not in old_cols:
        raise ResultsFileError(f"{path} exists but is not an anasim results table (columns "
                               f"{old_cols[:5]}...); "
                               "choose another --out.")
    ik, ir = old_cols.index("kind"), old_cols.index("repetition")
    old_params = old_cols[1:ik]
    old_metrics = [c for c in old_cols[ir + 1:] if c not in TAIL]
    return (old_params + [p for p in params if p not in old_params],
            old_metrics + [m for m in metrics if m not in old_metrics])


# -------------------------------------------------------------------------------- workers
_WORKER_JOB: Job | None = None


PARENT_POLL_S = 0.5
"""Seconds between a worker's checks that the sweep process that started it is alive."""


def _die_with_parent(parent: int) -> None:
    """End this worker process when ``parent`` (the sweep's pid) is gone, so that a killed
    sweep (even ``kill -9``) leaves no workers computing for nobody. On Linux the kernel
    sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); everywhere a daemon thread
    also checks ``os.getppid()`` every :data:`PARENT_POLL_S` seconds. The multiprocessing
    resource tracker exits by itself once the sweep and its workers are gone (its pipe
    closes)."""
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)

    def watch():
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="anasim-parent-watch", daemon=True).start()


def _init_worker(job: Job, threads: int | None, parent: int | None = None) -> None:
    global _WORKER_JOB
    if parent is not None:
        _die_with_parent(parent)
    set_threads(threads)
    _WORKER_JOB = job


def _run_in_worker(cfg: AnalogConfig, params: dict, point: str) -> list[dict]:
    return _WORKER_JOB.run(cfg, params, point=point)


def _run_dask(job: Job, cfg: AnalogConfig, params: dict, point: str, threads: int | None) -> list[dict]:
    if threads:
        set_threads(threads)
    return job.run(cfg, params, point=point)


# ---------------------------------------------------------------------------------- sweep
def sweep(model, dataset, grid, *, out=None, preprocessing=None, limit: int | None = None,
          batch_size: int = 256, workers: int = 1, threads: int | None = None, scheduler=None,
          progress: bool | None = None, times=None, repeats: int | None = None, seed: int | None = None,
          metric=None, overrides: Sequence[str] = (), output: str | None = None,
          log=None, device: str = "cpu") -> Results:
    """Evaluate every point of ``grid`` (a file, dict or :class:`Grid`) like :func:`evaluate`.

    Parameters besides those of :func:`~anasim.experiment.evaluate`:

    out : results file (.csv, .jsonl or .json). Points already in it are skipped; every
        finished point is added at once (crash-safe), under a lock (see the module docstring).
        None: keep the results in memory only.
    workers : local worker processes (1: run in this process).
    scheduler : Dask scheduler address (``tcp://host:8786``) or a ``distributed.Client``.
    threads : Numba + BLAS threads in all (each of ``workers`` processes gets threads // workers).
    log : callable taking a line of text (progress messages), default none.
    device : ``"cpu"`` (default) or ``"cuda"``: where each point's network runs (in
        every worker; local workers then share the GPU). Results agree to float32 rounding.

    Returns the :class:`Results` of all the grid's points (finished earlier or now), in
    grid order, with ``meta["skipped"]`` / ``meta["evaluated"]`` counts.
    """
    t_start = time.perf_counter()
    say = log or (lambda s: None)
    total_threads = resolve_threads(threads)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer; got {workers!r}.")
    g = load_grid(grid, times=times, repeats=repeats, seed=seed, metric=metric, set=list(overrides) or None)
    points = g.configs()
    msrc = ModelSource(model)
    data = as_data(dataset, preprocessing, limit)
    first_fold = bool(points[0][1].mapping.fold_batchnorm)
    job = make_job(msrc, data, times=g.times, repeats=g.repeats, seed=g.seed, batch_size=batch_size,
                   metric=g.metric, output=output, fold_batchnorm=first_fold, device=device)
    metrics = [m.name for m in job.metrics]
    ids, unique = [], []
    seen = set()
    for params, cfg in points:
        pid = job.point_id(cfg)
        ids.append(pid)
        if pid not in seen:
            seen.add(pid)
            unique.append((pid, params, cfg))
    if len(unique) < len(points):
        say(f"{len(points) - len(unique)} grid point(s) resolve to a configuration listed earlier; "
            "each is evaluated once.")
    wanted = {pid: _expected_keys(g.times, g.repeats) for pid, _, _ in unique}
    meta = run_meta(job, grid=g.source, base=g.base if isinstance(g.base, str) else "<inline>",
                    set=g.set, params=g.params, workers=workers,
                    scheduler=str(scheduler) if scheduler else None, threads=total_threads)

    client, own_client = connect_scheduler(scheduler) if scheduler is not None else (None, False)
    acquired = False
    lock = ResultLock(out) if out is not None else None
    try:
        if lock is not None:
            lock.acquire()
            acquired = True
        existing: list[dict] = []
        params_cols, metric_cols = list(g.params), list(metrics)
        store = None
        if out is not None:
            path, real = Path(out), lock.target  # read and write the real file (through any link)
            table = load_table(real, KINDS) if real.exists() and real.stat().st_size > 0 else None
            old_cols = table.columns if table is not None else []
            params_cols, metric_cols = _merge_columns(old_cols, g.params, metrics, path)
            damaged: list = []
            if table is not None:
                existing, _, damaged = check_rows(table.rows, table.where, metric_cols)
                damaged = sorted(table.damaged + damaged, key=lambda p: int(p[0].rsplit(" ", 1)[1]))
            existing, done_ids, n_dups, n_cut = _clean(existing, wanted)
            file_metric = next((c for c in metric_cols if c in old_cols), None) if existing else None
            _check_same_run(path, existing, file_metric, job, wanted, table is not None and table.torn)
            for r in existing:  # new swept columns for old rows: from their configuration
                for p in params_cols:
                    if p not in r and isinstance(r.get("config"), dict):
                        r[p] = _lookup(r["config"], p)
            store = ResultStore(real, table_columns(params_cols, metric_cols), meta)
            new_cols = bool(old_cols) and old_cols != store.columns
            if table is not None and (table.torn or damaged or n_dups or n_cut or new_cols):
                why = []
                if table.torn:
                    why.append(f"dropping the incomplete last {table.torn} (a write cut short)")
                if damaged:
                    why.append(f"dropping {len(damaged)} damaged line{'s' * (len(damaged) > 1)}: "
                               f"{describe_problems(damaged)}")
                if n_dups:
                    why.append(f"dropping {n_dups} duplicated row{'s' * (n_dups > 1)} "
                               "(the first of each kept)")
                if n_cut:
                    why.append(f"dropping {n_cut} incomplete point{'s' * (n_cut > 1)} of this grid, "
                               "evaluated again")
                if new_cols:
                    why.append("adding columns")
                text = f"{path}: rewriting it ({'; '.join(why)})."
                if log is None and (damaged or n_dups):  # unexpected: never silent
                    warnings.warn(text, ResultsWarning, stacklevel=2)
                else:
                    say(text)
                store.rewrite(existing)
        else:
            done_ids = set()
        pending = [(pid, params, cfg) for pid, params, cfg in unique if pid not in done_ids]
        skipped = len(unique) - len(pending)
        if skipped:
            say(f"{skipped} of {len(unique)} point(s) already in {out}; evaluating {len(pending)}.")
        new_rows: dict[str, list[dict]] = {}

        def finished(pid, rows, params):
            new_rows[pid] = rows
            if store is not None:
                store.append(rows)

        bar = progress_bar(len(pending) * job.units(), desc="sweep", unit="samples", enabled=progress)
        try:
            if pending:
                if client is not None:
                    _sweep_dask(job, pending, client, total_threads, finished, bar)
                elif workers > 1 and len(pending) > 1:
                    _sweep_processes(job, pending, workers, total_threads, finished, bar)
                else:
                    set_threads(total_threads)
                    for pid, params, cfg in pending:
                        rows = job.run(cfg, params, bar=bar, point=pid)
                        finished(pid, rows, params)
        finally:
            bar.close()
    finally:
        if lock is not None and acquired:
            lock.release()
        if own_client:
            client.close()

    by_point: dict[str, list[dict]] = {}
    for r in existing:
        by_point.setdefault(r.get("point"), []).append(r)
    by_point.update(new_rows)
    rows = []
    for pid, params, cfg in unique:
        for r in by_point.get(pid, []):
            rows.append({**r, **params})
    meta.update(points=len(unique), evaluated=len(pending), skipped=skipped,
                elapsed_s=round(time.perf_counter() - t_start, 3))
    return Results(rows, params=g.params, metrics=metrics, meta=meta)


def _sweep_processes(job, pending, workers, threads, finished, bar):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    per = max(1, (threads or os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    with worker_env(per):
        pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(job, per, os.getpid()))
        try:
            futures = {pool.submit(_run_in_worker, cfg, params, pid): (pid, params)
                       for pid, params, cfg in pending}
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for f in done:
                    pid, params = futures[f]
                    finished(pid, f.result(), params)
                    bar.update(job.units())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


SCHEDULER_TIMEOUT = 10.0
"""Seconds to wait for a Dask scheduler to answer before the sweep is refused."""
_ADDRESS = re.compile(r"(?:(?:tcp|tls|ws|wss|ucx)://)?(?:\[[0-9A-Fa-f:.]+\]|[\w.\-]+):\d{1,5}|inproc://\S+")


def connect_scheduler(scheduler):
    """``(client, own)`` for a Dask scheduler address (``tcp://host:port``) or a
    ``distributed.Client``; a malformed or unreachable address is a ConfigError, raised
    before any work (within :data:`SCHEDULER_TIMEOUT` seconds)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError('--scheduler needs Dask: pip install "dask[distributed]"') from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if not isinstance(scheduler, str) or not _ADDRESS.fullmatch(scheduler.strip()):
        raise ConfigError(f"--scheduler {scheduler!r} is not a Dask scheduler address; give tcp://HOST:PORT, "
                          "e.g. tcp://127.0.0.1:8786 (what `dask scheduler` prints).")
    try:
        return Client(scheduler.strip(), timeout=SCHEDULER_TIMEOUT), True
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"Cannot reach the Dask scheduler at {scheduler} within {SCHEDULER_TIMEOUT:g} s "
                          f"({type(exc).__name__}: {str(exc)[:200]}). Start one with `dask scheduler` and workers "
                          f"with `dask worker {scheduler}`, or check the address.") from None


def _sweep_dask(job, pending, client, threads, finished, bar):
    from dask.distributed import as_completed

    remote = Job(**{**{k: v for k, v in job.__dict__.items() if k != "_ideal"}})
    remote.model = job.model.with_bytes()  # Dask workers may not share our files
    [job_f] = client.scatter([remote], broadcast=True)
    futures = {client.submit(_run_dask, job_f, cfg, params, pid, threads, pure=False): (pid, params)
               for pid, params, cfg in pending}
    try:
        for f in as_completed(list(futures)):
            pid, params = futures[f]
            finished(pid, f.result(), params)
            bar.update(job.units())
    except BaseException:
        for f in futures:
            f.cancel()
        raise

__all__ = ["sweep", "Grid", "load_grid"]
