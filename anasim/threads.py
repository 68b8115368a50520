"""Threads: one setting, ``ANASIM_NUM_THREADS`` or ``--threads N``, for every pool anasim uses.

The rule
--------
``N`` -- ``--threads N`` on the command line, ``set_threads(N)``, ``evaluate(threads=N)`` /
``sweep(threads=N)``, else ``$ANASIM_NUM_THREADS``, else nothing (the libraries' defaults:
all cores) -- is the number of cores anasim keeps busy. It governs:

* **Numba's pool**: ``min(N, pool size)`` threads (``numba.set_num_threads``). The pool
  size, ``NUMBA_NUM_THREADS``, is fixed when Numba starts.
* **BLAS** (NumPy's matrix products): N threads, through ``threadpoolctl`` when it is
  installed (extra ``threads``); otherwise only in processes started later, through
  ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ... (:data:`BLAS_ENV`),
  which BLAS reads when it is loaded.
* **The Python worker threads of the convolutions** (:func:`run_chunks`:
  the blocks of the ideal convolutions, pooling, the analog layers' row blocks): as many as
  Numba's thread count (:func:`num_threads`), as are the chunks of the fused analog
  convolution (on Numba's threads). BLAS runs single-threaded inside them (:class:`Blas`),
  so BLAS's threads and these never compete.
* **Worker processes of sweeps** (``sweep(workers=W)``): ``N // W`` threads each (at least
  1; N defaults to the number of cores there): the BLAS variables when they are spawned
  (:func:`worker_env`), then :func:`set_threads` in each worker. A sweep's Dask tasks call
  ``set_threads(N)`` when N is given.

Read at import, read at call time
---------------------------------
* At ``import anasim`` (:func:`apply_env_defaults`): if ``ANASIM_NUM_THREADS`` is set, it
  is the default of ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and
  ``NUMBA_NUM_THREADS`` (variables already set win). These are read only by libraries not
  loaded yet -- BLAS when NumPy loads, Numba when it starts its pool -- so they govern the
  pool size and BLAS only if anasim is imported before NumPy (or they are set before
  Python starts).
* At call time: :func:`set_threads` (the CLI's ``--threads``, ``evaluate``, ``sweep``)
  reads ``$ANASIM_NUM_THREADS`` when no N is given and sets Numba and BLAS for the rest of
  the process (and the BLAS variables for its future child processes); the worker-thread
  count (:func:`num_threads`) is read at every convolution call.

Results never depend on the thread count. This module imports nothing heavy at import
time (Numba, and so NumPy, only when a function needs it), so that
:func:`apply_env_defaults` runs before NumPy loads.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .errors import ConfigError

__all__ = ["ENV", "BLAS_ENV", "apply_env_defaults", "resolve_threads", "set_threads", "worker_env",
           "num_threads", "run_chunks"]

ENV = "ANASIM_NUM_THREADS"
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
"""Variables BLAS (and NumExpr) read when they load: set for worker processes."""
IMPORT_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
"""Variables that ``$ANASIM_NUM_THREADS`` provides a default for at ``import anasim``."""


# --------------------------------------------------------------------------- the setting
def apply_env_defaults() -> None:
    """Make ``$ANASIM_NUM_THREADS`` the default of :data:`IMPORT_ENV` (called by ``import
    anasim``; effective only for libraries not loaded yet, see the module docstring)."""
    value = os.environ.get(ENV, "")
    if value.isdigit():
        for var in IMPORT_ENV:
            os.environ.setdefault(var, value)


def resolve_threads(threads: int | None = None) -> int | None:
    """``threads`` if given, else ``$ANASIM_NUM_THREADS``, else None (library defaults)."""
    if threads is None:
        text = os.environ.get(ENV, "").strip()
        if not text:
            return None
        try:
            threads = int(text)
        except ValueError:
            raise ConfigError(f"{ENV} must be a positive integer; got {text!r}.") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer; got {threads!r}.")
    return threads


_limiter = None  # keeps threadpoolctl's limits alive


def set_threads(threads: int | None = None) -> dict:
    """Set Numba and BLAS threads to ``threads`` (see :func:`resolve_threads`); returns
    what was set: ``{"threads": n, "numba": n_numba, "blas": "threadpoolctl" | "env"}``
    (empty dict when nothing was requested).

    Process-wide: also sets ``$ANASIM_NUM_THREADS`` and :data:`BLAS_ENV`, which processes
    started later inherit.
    """
    global _limiter
    n = resolve_threads(threads)
    if n is None:
        return {}
    for var in BLAS_ENV:  # inherited by worker processes, read when their BLAS loads
        os.environ[var] = str(n)
    os.environ[ENV] = str(n)
    info = {"threads": n}
    import numba

    k = max(1, min(n, int(numba.config.NUMBA_NUM_THREADS)))
    numba.set_num_threads(k)
    info["numba"] = k
    try:
        from threadpoolctl import threadpool_limits

        _limiter = threadpool_limits(limits=n)
        info["blas"] = "threadpoolctl"
    except ImportError:
        info["blas"] = "env"
    return info


@contextmanager
def worker_env(n: int | None):
    """:data:`BLAS_ENV` set to ``n`` meanwhile (for worker processes started inside, read
    when their BLAS loads); the previous values are restored after. No-op for a falsy ``n``."""
    if not n:
        yield
        return
    old = {k: os.environ.get(k) for k in BLAS_ENV}
    os.environ.update({k: str(n) for k in BLAS_ENV})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- BLAS at run time
class Blas:
    """Run-time control of the OpenBLAS thread count used by NumPy (no-op where unavailable).

    The convolution runs its own worker threads, each calling single-threaded BLAS on a
    cache-sized chunk; letting BLAS also spawn threads would oversubscribe the cores.
    """

    _NAMES = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
              ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
              ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
              ("openblas_set_num_threads", "openblas_get_num_threads"))
    _lock = threading.Lock()
    _probed = False
    _set = _get = None

    @classmethod
    def _probe(cls) -> None:
        cls._probed = True
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
        except OSError:
            return
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in cls._NAMES:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    cls._set, cls._get = getattr(lib, set_name), getattr(lib, get_name)
                    cls._set.argtypes, cls._set.restype = [ctypes.c_int], None
                    cls._get.argtypes, cls._get.restype = [], ctypes.c_int
                    return

    @classmethod
    def available(cls) -> bool:
        if not cls._probed:
            with cls._lock:
                if not cls._probed:
                    cls._probe()
        return cls._set is not None

    @classmethod
    @contextmanager
    def single_threaded(cls):
        old = cls._get()
        if old != 1:
            cls._set(1)
        try:
            yield
        finally:
            if old != 1:
                cls._set(old)


# --------------------------------------------------------------------------- worker threads
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def num_threads() -> int:
    """Worker threads for the convolution (Numba's thread count, ``numba.set_num_threads``)."""
    import numba

    return numba.get_num_threads()


def run_chunks(n_chunks: int, make_state, do_chunk) -> None:
    """Run ``do_chunk(state, i)`` for i in range(n_chunks) on :func:`num_threads` workers.

    Each worker makes its own ``state`` (scratch buffers) once and takes chunk indices
    from a shared counter, so a worker slowed down by other processes takes fewer chunks
    instead of stalling a barrier. BLAS runs single-threaded, also when the chunks run in
    the calling thread (one worker thread, or a single chunk): OpenBLAS's own threads split
    a product differently, which on some CPUs (AMD Zen, for one) changes the last bit of
    sums, and ``numba.set_num_threads(1)`` means one core. Without BLAS thread control
    (non-OpenBLAS NumPy) the chunks run in the calling thread and BLAS parallelizes each
    product instead. Results do not depend on the thread count.
    """
    global _POOL, _POOL_SIZE
    n = min(num_threads(), n_chunks)
    if not Blas.available():
        state = make_state()
        for i in range(n_chunks):
            do_chunk(state, i)
        return
    if n <= 1:
        with Blas.single_threaded():
            state = make_state()
            for i in range(n_chunks):
                do_chunk(state, i)
        return
    if _POOL is None or _POOL_SIZE < n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="anasim")
        _POOL_SIZE = n
    counter = itertools.count()
    failed: list[bool] = []

    def worker(_):
        state = make_state()
        while not failed:
            i = next(counter)
            if i >= n_chunks:
                return
            try:
                do_chunk(state, i)
            except BaseException:
                failed.append(True)
                raise

    with Blas.single_threaded():
        for f in [_POOL.submit(worker, k) for k in range(n)]:
            f.result()

