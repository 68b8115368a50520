"""Evaluate a model on a data set: ideal (digital) and analog, over times and repetitions.

>>> from anasim.experiment import evaluate
>>> res = evaluate("model.onnx", "test.npz", "aihwkit", preprocessing="cifar10",
...                times=[0, 3600, 86400], repeats=5, seed=0)          # doctest: +SKIP
>>> print(res.summary()); res.to_csv("results.csv"); res.plot("accuracy.png")  # doctest: +SKIP

For every repetition r (a freshly programmed chip: ``sim.program(r)``) and every time t
(``sim.drift(t)``) the whole data set is run through the simulator in batches, each batch
with its ``sample_offset`` so that the noise a sample sees does not depend on the batch
size. Without a device noise model drift does nothing and the forward-pass noise of a
repetition is the same at every t (common random numbers), so such a repetition is run
once and its scores are reported for every t. The ideal network runs in fixed chunks of
:data:`IDEAL_CHUNK` samples so that its outputs, too, are independent of ``batch_size``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..version import __version__
from ..config import AnalogConfig, apply_overrides, load_config
from ..errors import ConfigError, InputError
from ..graph.executor import check_device
from ..kernels.rng import check_seed
from ..graph.executor import Graph
from ..threads import set_threads
from .metrics import Metric, builtin_scores, check_output, default_metrics, get_metric, metric_problem
from .progress import progress_bar
from .results import Results


IDEAL_CHUNK = 64
"""Samples per forward pass of the ideal (digital) network. Fixed rather than batch_size:
BLAS results can differ in the last bit with the matrix shape, and the analog simulator's
numbers do not depend on the batch size, so neither may the ideal outputs that
``logits_rel_error`` compares against."""
CALIBRATION_COLUMNS = ("calibration", "calibration_samples", "calibrate_at")
"""Columns of an evaluation with held-out calibration samples: the methods ("none" when
none is on), the samples ("0:N", never scored) and when the chips were calibrated."""


# ------------------------------------------------------------------------------ inputs
class ModelSource:
    """Where a model comes from (a path, ONNX bytes, an ``onnx.ModelProto`` or a loaded
    :class:`Graph`) and its SHA-256; loads the graph once (both BatchNorm-folding choices
    derive from it: :meth:`Graph.folded`). Pickles without the loaded graph (worker
    processes load it again from the path or bytes)."""

    def __init__(self, model: Any):
        self.path: str | None = None
        self.data: bytes | None = None
        self._graph: Graph | None = None
        if isinstance(model, ModelSource):
            self.path, self.data = model.path, model.data
            self.sha256, self.source = model.sha256, model.source
            self._graph = model._graph
            return
        if isinstance(model, Graph):
            ir = model.ir
            self.sha256, self.source = ir.sha256, ir.source
            self._graph = model
            if ir.source and os.path.isfile(ir.source) and _file_sha256(ir.source) == ir.sha256:
                self.path = ir.source
            return
        if isinstance(model, (str, os.PathLike)):
            p = Path(model)
            if not p.is_file():
                from ..errors import ModelLoadError

                raise ModelLoadError(f"Model {str(model)!r}: no such file.")
            self.path, self.source, self.sha256 = str(model), str(model), _file_sha256(p)
            return
        if hasattr(model, "SerializeToString"):
            model = model.SerializeToString()
        if isinstance(model, (bytes, bytearray)):
            self.data = bytes(model)
            self.sha256 = hashlib.sha256(self.data).hexdigest()
            self.source = "<memory>"
            return
        raise InputError("model must be a path, bytes, an onnx.ModelProto or a Graph; got "
                         f"{type(model).__name__}.")

    def graph(self, fold_batchnorm: bool) -> Graph:
        """The model with BatchNormalization folded or not."""
        if self._graph is None:
            from ..graph.importer import load

            self._graph = load(self.path if self.path is not None else self.data,
                               name=None if self.path is not None else "<memory>")
        return self._graph.folded(bool(fold_batchnorm))

    def with_bytes(self) -> "ModelSource":
        """The same model carried as its bytes (for workers that do not share our files)."""
        if self.data is not None or self.path is None:
            return self
        copy = ModelSource(self)
        copy.data, copy.path, copy._graph = Path(self.path).read_bytes(), None, None
        return copy

    @property
    def portable(self) -> bool:
        """Whether worker processes can load it (it has a path or bytes)."""
        return self.path is not None or self.data is not None

    def __getstate__(self):
        if not self.portable:
            raise InputError("This model was given as an in-memory Graph without a file; pass its "
                             "path (or bytes) to run it in worker processes.")
        state = dict(self.__dict__)
        state["_graph"] = None
        return state


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DataSource:
    """A preprocessed data set ready to feed: ``x`` (model input), ``y`` (labels or None)
    and its provenance (``source``, ``sha256``, ``preprocessing`` dict, ``limit``)."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    sha256: str
    preprocessing: dict | None = None
    limit: int | None = None

    def __len__(self) -> int:
        return len(self.x)


def as_data(dataset: Any, preprocessing: Any = None, limit: int | None = None) -> DataSource:
    """A :class:`DataSource` from a :class:`anasim.datasets.Dataset`, a data set path (read
    with :func:`anasim.datasets.load_dataset` and ``preprocessing``), or ``(x, y)`` arrays
    that are already the model's input (``y`` may be None)."""
    if isinstance(dataset, DataSource):
        return _limited(dataset, limit)
    if isinstance(dataset, (str, os.PathLike)):
        from ..datasets import load_dataset

        ds = load_dataset(dataset, preprocessing=preprocessing, limit=limit)
        return DataSource(ds.x, ds.y, str(dataset), ds.sha256, ds.preprocessing.to_dict(), ds.limit)
    if hasattr(dataset, "x") and hasattr(dataset, "sha256"):
        pre = getattr(dataset, "preprocessing", None)
        data = DataSource(dataset.x, getattr(dataset, "y", None),
                          str(getattr(dataset, "source", "<dataset>")),
                          dataset.sha256, pre.to_dict() if hasattr(pre, "to_dict") else pre,
                          getattr(dataset, "limit", None))
        return _limited(data, limit)
    if isinstance(dataset, tuple) and len(dataset) == 2:
        x, y = dataset
        x = np.ascontiguousarray(np.asarray(x))
        y = None if y is None else np.asarray(y).reshape(-1).astype(np.int64)
        if y is not None and len(y) != len(x):
            raise InputError(f"x has {len(x)} samples but y has {len(y)}.")
        h = hashlib.sha256()
        for a in (x, y):
            if a is not None:
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a.tobytes())
        return _limited(DataSource(x, y, "<array>", h.hexdigest(), None, None), limit)
    raise InputError("dataset must be a path, an anasim.datasets.Dataset or an (x, y) tuple; got "
                     f"{type(dataset).__name__}.")


def _limited(data: DataSource, limit):
    if limit is None or limit >= len(data):
        return data
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ConfigError(f"limit must be a positive integer or None; got {limit!r}.")
    return DataSource(data.x[:limit], None if data.y is None else data.y[:limit], data.source,
                      data.sha256, data.preprocessing, int(limit))


def check_times(times) -> tuple[float, ...]:
    if isinstance(times, (int, float, np.integer, np.floating)):
        times = [times]
    try:
        out = tuple(float(t) for t in times)
    except (TypeError, ValueError):
        raise ConfigError(f"times must be a list of seconds >= 0; got {times!r}.") from None
    if not out or any(not np.isfinite(t) or t < 0 for t in out):
        raise ConfigError(f"times must be a non-empty list of finite seconds >= 0; got {list(times)!r}.")
    if len(set(out)) != len(out):
        raise ConfigError(f"times lists a value twice: {list(out)}.")
    return out


def _check_positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ConfigError(f"{name} must be a positive integer; got {v!r}.")
    return int(v)


# --------------------------------------------------------------------------------- job
@dataclass
class Job:
    """Everything an evaluation of one configuration needs besides the configuration."""

    model: ModelSource
    data: DataSource
    times: tuple
    repeats: int
    seed: int
    batch_size: int
    metrics: list  # of Metric; the requested one first
    output: str | None = None
    device: str = "cpu"  # where the network runs ("cpu" or "cuda"); the numbers agree to float rounding
    holdout: int = 0  # the first `holdout` samples calibrate every chip and are never scored
    snapshot: str | None = None  # evaluate this saved chip (anasim.snapshot) instead of programming chips
    _ideal: dict = field(default_factory=dict, repr=False)  # fold -> (per-metric values, outputs)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ideal"] = {}
        return state

    def point_id(self, cfg: AnalogConfig) -> str:
        """16 hex digits: hash of the full configuration, model, data, preprocessing, limit,
        seed, times, repeats, metrics and output (not batch size nor threads)."""
        payload = {
            "config": cfg.to_dict(), "model_sha256": self.model.sha256, "data_sha256": self.data.sha256,
            "preprocessing": self.data.preprocessing, "limit": self.data.limit, "n_samples": len(self.data),
            "seed": self.seed, "times": list(self.times), "repeats": self.repeats,
            "metrics": [m.name for m in self.metrics], "output": self.output,
        }
        if self.holdout:
            payload["calibrate"] = self.holdout
        text = json.dumps(payload, sort_keys=True, default=_json_default, allow_nan=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def provenance(self, cfg: AnalogConfig) -> dict:
        calibration = {}
        if self.holdout:  # which samples calibrated (never scored), and how
            p = cfg.calibration
            calibration = {"calibration_samples": f"0:{self.holdout}",
                           "calibration": "+".join(p.methods) or "none", "calibrate_at": p.calibrate_at}
        return {**calibration, "n_samples": len(self.data) - self.holdout, "seed": self.seed,
                "fold_batchnorm": bool(cfg.mapping.fold_batchnorm),
                "model": self.model.source, "model_sha256": self.model.sha256, "data": self.data.source,
                "data_sha256": self.data.sha256, "preprocessing": self.data.preprocessing,
                "limit": self.data.limit, "config": cfg.to_dict(), "anasim_version": __version__}

    # -- running ------------------------------------------------------------------------
    def _feed(self, graph: Graph) -> str:
        if len(graph.inputs) != 1:
            raise InputError(f"evaluate needs a model with one input; this one has "
                             f"{[i.name for i in graph.inputs]}.")
        return graph.inputs[0].name

    def _output(self, graph: Graph) -> str:
        names = [o.name for o in graph.outputs]
        if self.output is None:
            return names[0]
        if self.output not in names:
            from ..errors import closest
            raise InputError(f"Model has no output {self.output!r}.{closest(self.output, names)} "
                             f"Outputs: {names}.")
        return self.output

    def _score(self, values: dict, out: np.ndarray, yb, ideal_b, off: int) -> None:
        for m in self.metrics:
            values[m.name][off:off + len(out)] = m(out, yb, ideal_b)

    def ideal(self, fold: bool, bar=None) -> tuple[dict, np.ndarray | None]:
        """Per-sample metric values of the digital network (and its outputs when a metric
        needs them), cached per BatchNorm folding. Before anything analog runs, its first
        chunk checks that the metrics can score the output (:func:`check_output`), and a
        built-in metric refuses NaN or infinite ideal outputs."""
        if fold in self._ideal:
            if bar is not None:
                bar.update(len(self.data) - self.holdout)
            return self._ideal[fold]
        graph = self.model.graph(fold).to(self.device)
        feed, outname = self._feed(graph), self._output(graph)
        n = len(self.data)
        keep = any(m.needs_ideal for m in self.metrics)
        finite = [m.name for m in self.metrics if builtin_scores(m)]
        bad_samples, bad_values = [], 0
        outputs = None
        values = {m.name: np.zeros(n) for m in self.metrics}
        step = IDEAL_CHUNK  # fixed, so the ideal outputs do not depend on batch_size
        for off in range(self.holdout, n, step):  # held-out calibration samples are never scored
            xb = self.data.x[off:off + step]
            yb = None if self.data.y is None else self.data.y[off:off + step]
            out = np.asarray(graph.run({feed: xb}, outputs=[outname])[outname])
            if off == self.holdout:
                check_output(self.metrics, outname, out.shape, out.dtype, labels=self.data.y, batch=len(xb),
                             outputs=[o.name for o in graph.outputs])
            if finite and out.dtype.kind in "fc":
                ok = np.isfinite(out.reshape(len(out), -1))
                if not ok.all():
                    bad_values += int((~ok).sum())
                    bad_samples.extend((off + np.flatnonzero(~ok.all(axis=1))).tolist())
            if keep:
                if outputs is None:
                    outputs = np.empty((n,) + out.shape[1:], out.dtype)
                outputs[off:off + len(out)] = out
            self._score(values, out, yb, out if keep else None, off)
            if bar is not None:
                bar.update(len(out))
        if bad_samples:
            shown = ", ".join(map(str, bad_samples[:10])) + (", ..." if len(bad_samples) > 10 else "")
            raise InputError(
                f"The ideal (digital) network's output {outname!r} has {bad_values} NaN or infinite "
                f"value(s), in {len(bad_samples)} of {n} samples (sample(s) {shown}); the metric(s) "
                f"{', '.join(finite)} cannot score NaN (an analog-vs-ideal error against NaN is no "
                "number at all, let alone a perfect one). The model computes NaN/inf for these inputs: "
                "check the model and the data's preprocessing, or leave those samples out.")
        self._ideal[fold] = (values, outputs)
        return self._ideal[fold]

    def run(self, cfg: AnalogConfig, params: dict | None = None, bar=None,
            point: str | None = None) -> list[dict]:
        """Evaluate configuration ``cfg``: the ideal row, then one row per (repetition, t).
        ``params`` (swept-parameter columns) and ``point`` (the id; default computed) go
        into every row."""
        from ..analog.simulator import analog

        fold = bool(cfg.mapping.fold_batchnorm)
        point = point or self.point_id(cfg)
        prov = self.provenance(cfg)
        params = dict(params or {})
        base = {"point": point, **params}
        if bar is not None:
            bar.set_postfix_str("ideal")
        ideal_values, ideal_out = self.ideal(fold, bar)
        h = self.holdout  # samples [0, h) calibrate and are never scored
        rows = [{**base, "kind": "ideal", "t_inference": None, "repetition": None,
                 **{k: float(np.mean(v[h:])) for k, v in ideal_values.items()}, **prov}]
        graph = self.model.graph(fold)
        sim = analog(graph, cfg, seed=self.seed, device=self.device)
        feed, outname = self._feed(sim.graph), self._output(sim.graph)
        has_devices = sim.has_device_model
        n = len(self.data)
        each_t = h > 0 and cfg.calibration.calibrate_at == "each_t"
        calibrating = h > 0 and any(sim.config.for_layer(x.name).calibration.enabled for x in sim.layers)
        if self.snapshot is not None:  # one saved chip, as calibrated (if it was) when it was saved
            from ..snapshot import load_snapshot

            load_snapshot(sim, self.snapshot)
            calibrating = False
        for r in range(self.repeats):
            if self.snapshot is None:
                sim.program(r)
            if calibrating and not each_t:
                _calibrate(sim, {feed: self.data.x[:h]})
            last = None
            for t in self.times:
                if has_devices or last is None:
                    if has_devices:
                        if calibrating and each_t:
                            sim.clear_calibration(keep_weight_clip=True)
                        sim.drift(t)
                    if calibrating and each_t:
                        _calibrate(sim, {feed: self.data.x[:h]})
                    if bar is not None:
                        bar.set_postfix_str(f"repetition {r + 1}/{self.repeats}, t = {_fmt_t(t)}")
                    values = {m.name: np.zeros(n) for m in self.metrics}
                    for off in range(h, n, self.batch_size):
                        xb = self.data.x[off:off + self.batch_size]
                        yb = None if self.data.y is None else self.data.y[off:off + self.batch_size]
                        out = sim.run({feed: xb}, sample_offset=off, outputs=[outname])[outname]
                        ib = None if ideal_out is None else ideal_out[off:off + len(out)]
                        self._score(values, out, yb, ib, off)
                        if bar is not None:
                            bar.update(len(out))
                    last = {k: float(np.mean(v[h:])) for k, v in values.items()}
                elif bar is not None:  # same numbers as the previous t: nothing to run
                    bar.update(n)
                rows.append({**base, "kind": "analog", "t_inference": float(t),
                             "repetition": r if self.snapshot is None else sim.repetition,
                             **last, **prov})
        return rows

    def units(self, with_ideal: bool = True) -> int:
        """Samples the progress bar counts for one configuration."""
        return (len(self.data) - self.holdout) * ((1 if with_ideal else 0) + self.repeats * len(self.times))


def _calibrate(sim, feeds) -> None:
    from .calibration import calibrate

    calibrate(sim, feeds, sample_offset=0)


def _fmt_t(t):
    from .results import format_time

    return format_time(t)


def _json_default(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (tuple, set)):
        return list(v)
    return str(v)


def make_job(model, data, *, times=(0.0,), repeats=1, seed=0, batch_size=256, metric="top1",
             output=None, fold_batchnorm=True, device="cpu") -> Job:
    """Check the arguments and build a :class:`Job` (the metrics recorded: ``metric`` first,
    then top-1/top-5 for a classifier with labels)."""
    times = check_times(times)
    repeats = _check_positive("repeats", repeats)
    batch_size = _check_positive("batch_size", batch_size)
    seed = check_seed(seed, ConfigError)
    check_device(device, ConfigError)
    primary = get_metric(metric)
    graph = model.graph(fold_batchnorm)
    job = Job(model, data, times, repeats, int(seed), batch_size, [primary], output, device)
    outname = job._output(graph)
    job._feed(graph)
    info = next(o for o in graph.outputs if o.name == outname)
    names = [o.name for o in graph.outputs]
    n_out = None
    if info.shape is not None and len(info.shape) == 2 and isinstance(info.shape[1], int):
        n_out = info.shape[1]
    if primary.needs_labels and data.y is None:
        raise InputError(f"Metric {primary.name!r} needs labels but the data set {data.source} has none; "
                         "use --metric logits_rel_error.")
    # what the model declares about its output can be checked before any work
    check_output([primary], outname, info.shape, info.dtype, labels=data.y, declared=True, outputs=names)
    metrics = default_metrics(primary, n_out, data.y is not None)
    kept, dropped = [primary], {}
    for m in metrics[1:]:  # the accuracies added by default: only where they mean something
        problem = metric_problem(m, outname, info.shape, info.dtype, data.y, declared=True, advice=False)
        if problem is None:
            kept.append(m)
        else:
            dropped[m.name] = problem
    if dropped:
        warnings.warn(f"Not recording {' and '.join(dropped)} (added by default besides {primary.name}): "
                      f"{next(iter(dropped.values()))}", stacklevel=2)
    job.metrics = kept
    return job


def check_holdout(n, n_samples: int) -> int:
    """The number of calibration samples: an integer in [0, n_samples) (samples must remain to score)."""
    if n is None:
        return 0
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"calibrate must be a number of samples >= 0; got {n!r}.")
    if n >= n_samples:
        raise ConfigError(f"calibrate = {n} leaves no sample to score: the data set has {n_samples}. Use fewer "
                          "calibration samples or more data (--limit).")
    return int(n)


def snapshot_holdout(path, holdout: int, repeats: int, n_samples: int) -> tuple[str, int]:
    """(path, samples held out) for evaluating a saved chip: one chip only, and the samples its
    calibration used (which must be the data set's first) are never scored."""
    from ..snapshot import open_snapshot

    if repeats != 1:
        raise ConfigError(f"A snapshot is one chip: evaluate it with repeats = 1 (got {repeats}).")
    if holdout:
        raise ConfigError("calibrate = N and a snapshot: the snapshot's chip is used as saved (calibrated "
                          "or not); calibrate it with `anasim calibrate`, or evaluate without the snapshot.")
    meta = open_snapshot(path)
    samples = meta.get("calibration_samples")
    if samples is None:
        return str(path), 0
    start, stop = (int(v) for v in np.asarray(samples).reshape(-1))
    if start != 0:
        raise ConfigError(f"{path} was calibrated on samples {start}:{stop}; evaluate needs the calibration "
                          "samples to be the data set's first (they are held out).")
    return str(path), check_holdout(stop, n_samples)


def resolve_config(config=None, overrides: Sequence[str] = ()) -> AnalogConfig:
    cfg = load_config(config)
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
    return cfg


def run_meta(job: Job, **extra) -> dict:
    import numba

    return {"anasim_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": job.model.source, "model_sha256": job.model.sha256, "data": job.data.source,
            "data_sha256": job.data.sha256, "preprocessing": job.data.preprocessing, "limit": job.data.limit,
            "n_samples": len(job.data), "seed": job.seed, "times": list(job.times), "repeats": job.repeats,
            "batch_size": job.batch_size, "metrics": [m.name for m in job.metrics], "output": job.output,
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "platform": platform.platform(), **extra}


# ---------------------------------------------------------------------------- evaluate
def evaluate(model, dataset, config=None, *, times=(0.0,), repeats: int = 1, seed: int = 0,
             batch_size: int = 256, metric="top1", output: str | None = None, preprocessing=None,
             limit: int | None = None, overrides: Sequence[str] = (), progress: bool | None = None,
             threads: int | None = None, device: str = "cpu", calibrate: int = 0,
             snapshot=None) -> Results:
    """Score ``model`` on ``dataset``: once ideal (the digital network), then on the analog
    chip of ``config`` for every repetition (re-programmed each time) and every time.

    Parameters
    ----------
    model : path, bytes, onnx.ModelProto or Graph.
    dataset : a data set path (read with ``preprocessing``), an :class:`anasim.datasets.Dataset`,
        or ``(x, y)`` arrays already in the model's input format (``y`` None without labels).
    config : anything :func:`anasim.load_config` accepts (preset name, file, dict); default ideal.
    times : seconds after programming (t_inference), default ``(0,)``.
    repeats : Monte-Carlo repetitions (chips), each ``sim.program(r)``.
    seed : master seed; the same seed gives the same table whatever batch size or threads.
    batch_size : samples per forward pass (memory only; does not change the numbers).
    metric : ``"top1"``, ``"top5"``, ``"topK"``, ``"logits_rel_error"``, a registered name or a
        callable ``fn(outputs, labels, ideal_outputs) -> per-sample values``.
    output : which model output to score (default the first).
    preprocessing : for a path ``dataset``: a Preprocessing, preset name or dict.
    limit : use only the first ``limit`` samples.
    overrides : ``section.key=value`` strings applied to ``config`` (like ``--set``).
    progress : show a progress bar (None: when stderr is a terminal).
    threads : Numba and BLAS threads (default ``$ANASIM_NUM_THREADS`` or the libraries' default).
    device : ``"cpu"`` (default) or ``"cuda"``: where the network (ideal and analog) runs;
        the results agree to float32 rounding (same random numbers).
    calibrate : N > 0: the data set's first N samples calibrate every chip (the methods of
        the configuration's ``[calibration]``, :func:`anasim.experiment.calibrate`; once after
        programming or at every t, as ``calibrate_at`` says) and are never scored: every
        score, the ideal one included, is over samples N, N+1, ... The rows record the
        samples (``calibration_samples`` = "0:N") and the methods (``calibration``; "none"
        when no method is on: the same held-out samples, uncalibrated, for comparison).
    snapshot : path of a chip saved by :func:`anasim.snapshot.save_snapshot` (e.g. by
        ``anasim calibrate``): evaluate that one chip (``repeats`` must be 1) as saved, drifted
        to each of ``times``, instead of programming fresh ones; the configuration and seed
        must be the snapshot's. A calibrated snapshot's calibration samples are held out.

    Returns a :class:`Results` table: one ideal row and one row per (t, repetition).
    """
    t0 = time.perf_counter()
    thread_info = set_threads(threads)
    cfg = resolve_config(config, overrides)
    fold = bool(cfg.mapping.fold_batchnorm)
    msrc = ModelSource(model)
    data = as_data(dataset, preprocessing, limit)
    job = make_job(msrc, data, times=times, repeats=repeats, seed=seed, batch_size=batch_size,
                   metric=metric, output=output, fold_batchnorm=fold, device=device)
    job.holdout = check_holdout(calibrate, len(data))
    if snapshot is not None:
        job.snapshot, job.holdout = snapshot_holdout(snapshot, job.holdout, job.repeats, len(data))
    bar = progress_bar(job.units(), desc="evaluating", unit="samples", enabled=progress)
    try:
        rows = job.run(cfg, bar=bar)
    finally:
        bar.close()
    meta = run_meta(job, config=cfg.to_dict(), fold_batchnorm=fold, threads=thread_info.get("threads"),
                    elapsed_s=round(time.perf_counter() - t0, 3))
    params = CALIBRATION_COLUMNS if job.holdout else ()  # which samples calibrated, and how
    return Results(rows, params=params, metrics=[m.name for m in job.metrics], meta=meta)


__all__ = ["evaluate", "ModelSource", "DataSource", "as_data", "Job", "make_job", "check_times",
           "resolve_config", "Metric"]
