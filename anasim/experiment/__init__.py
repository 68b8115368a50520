"""Experiments: evaluate a model on a data set over configurations, times and repetitions.

* :func:`evaluate` — one configuration: ideal score, then the analog chip at every
  t_inference for every repetition; returns a tidy :class:`Results` table.
* :func:`sweep` — a grid of configurations (Cartesian ``[grid]`` and/or explicit
  ``[[points]]``), resumable, in local processes or on a Dask cluster.
* :class:`Results` — ``summary()``, ``aggregate()``, ``to_csv()``, ``to_json()``, ``plot()``,
  ``Results.load(path)``.
* :func:`sensitivity` — per analog layer: only it analog, and all but it analog (a sweep,
  so resumable and parallel); a ranked table and a bar chart (:class:`Sensitivity`).
* :mod:`.metrics` — ``top1``, ``top5``, ``logits_rel_error``, your own.
* :func:`set_threads` — one setting for Numba and BLAS threads.
* :func:`calibrate` — calibrate a programmed chip on held-out samples (``[calibration]``);
  ``evaluate(..., calibrate=N)`` does it for every repetition.
"""

from ..threads import set_threads
from .calibration import Calibration, calibrate
from .evaluate import DataSource, ModelSource, as_data, evaluate
from .metrics import Metric, get_metric, register_metric
from .results import Results, format_time
from .sensitivity import Sensitivity, sensitivity
from .storage import ResultLock, ResultsFileError, ResultsWarning
from .sweep import Grid, load_grid, sweep

__all__ = ["evaluate", "sweep", "sensitivity", "Sensitivity", "Grid", "load_grid", "Results", "Metric",
           "get_metric",
           "register_metric", "set_threads", "format_time", "ResultLock", "ResultsFileError",
           "ResultsWarning",
           "ModelSource", "DataSource", "as_data", "calibrate", "Calibration"]
