"""One thread setting for Numba and BLAS (``--threads N`` / ``ANASIM_NUM_THREADS``).

Numba's thread count is set with ``numba.set_num_threads`` (capped at
``NUMBA_NUM_THREADS``, the pool size fixed at import). BLAS (NumPy's matrix products) is
limited with ``threadpoolctl`` when it is installed; otherwise only processes started
later (sweep workers) are limited, through ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` /
``MKL_NUM_THREADS``, which BLAS reads when it is loaded. To limit BLAS in the current
process without threadpoolctl, set those variables (or ``ANASIM_NUM_THREADS`` plus them)
before starting Python.
"""

from __future__ import annotations

import os

from ..errors import ConfigError

ENV = "ANASIM_NUM_THREADS"
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_limiter = None  # keeps threadpoolctl's limits alive


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


def set_threads(threads: int | None = None) -> dict:
    """Set Numba and BLAS threads to ``threads`` (see :func:`resolve_threads`); returns
    what was set: ``{"threads": n, "numba": n_numba, "blas": "threadpoolctl" | "env"}``
    (empty dict when nothing was requested)."""
    global _limiter
    n = resolve_threads(threads)
    if n is None:
        return {}
    for var in BLAS_ENV:  # inherited by worker processes, read when their BLAS loads
        os.environ[var] = str(n)
    os.environ[ENV] = str(n)
    info = {"threads": n}
    try:
        import numba

        k = max(1, min(n, int(numba.config.NUMBA_NUM_THREADS)))
        numba.set_num_threads(k)
        info["numba"] = k
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    try:
        from threadpoolctl import threadpool_limits

        _limiter = threadpool_limits(limits=n)
        info["blas"] = "threadpoolctl"
    except ImportError:
        info["blas"] = "env"
    return info


__all__ = ["set_threads", "resolve_threads", "ENV"]
