"""sgemm callable from inside Numba kernels: the OpenBLAS that NumPy itself uses.

The fused analog kernels (:mod:`.cpu_conv`) multiply a tile's weights with a block of
prepared inputs between two periphery stages, without returning to Python. They call
``cblas_sgemm`` of the OpenBLAS library that NumPy loaded (the same library, so the same
sums as ``np.matmul``), linked by symbol name through llvmlite, so that the kernels stay
cacheable (``cache=True``). :data:`SGEMM_NAME` is the symbol found, or None when NumPy
has no OpenBLAS with a CBLAS interface (MKL or Accelerate builds): the fused kernels are
then not used and the analog layers take their NumPy path.

ILP64 builds (NumPy's wheels: ``scipy_cblas_sgemm64_``) take 64-bit integers; the
32-bit-integer builds are not used (:func:`_probe` accepts only 64-bit symbols).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

__all__ = ["SGEMM_NAME", "sgemm_type", "blas_library"]

_CANDIDATES = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")


def _libraries() -> list[str]:
    """Shared libraries of the running process whose path names OpenBLAS."""
    np.ones((2, 2), np.float32) @ np.ones((2, 2), np.float32)  # NumPy loads its BLAS lazily on some builds
    try:
        with open("/proc/self/maps") as f:
            return sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        return []


def _probe() -> tuple[str | None, str | None]:
    if os.environ.get("ANASIM_NO_FUSED_BLAS"):
        return None, None
    for path in _libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _CANDIDATES:
            if hasattr(lib, name):
                import llvmlite.binding as ll

                ll.load_library_permanently(path)
                return name, path
    return None, None


SGEMM_NAME, blas_library = _probe()


def sgemm_type():
    """The Numba external function ``cblas_sgemm`` (row-major, ILP64) for kernels to call:
    ``(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)``."""
    from numba import types

    sig = types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64,
                     types.float32, types.CPointer(types.float32), types.int64,
                     types.CPointer(types.float32), types.int64, types.float32,
                     types.CPointer(types.float32), types.int64)
    return types.ExternalFunction(SGEMM_NAME, sig)
