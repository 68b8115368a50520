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

__all__ = ["SGEMM_NAME", "sgemm_type", "blas_library", "rows_times", "SMALL_PRODUCT"]

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


SMALL_PRODUCT = 1_000_000
"""Below about this many multiply-adds OpenBLAS (AVX-512 builds) takes its small-matrix
kernels, which round the last bit of the sums differently from its blocked path."""


def rows_times(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` (float32, NumPy's BLAS) with every row's sums those of a large batch:
    a product of fewer than :data:`SMALL_PRODUCT` multiply-adds is made on ``x`` padded
    with zero rows to more (the rows past x's are dropped), so a row's result does not
    depend on how many rows come with it -- on the batch size or the block. Measured (Zen 4,
    OpenBLAS 0.3.x): a 16 x 144 tile's rows differed in the last bit from those of a
    700-row product for 1 to 75 rows, a 10 x 512 tile's for 1 to 120. One-output tiles
    (a matrix-vector product) are left as they are."""
    m, k = x.shape
    n = w.shape[0]
    need = SMALL_PRODUCT // max(1, n * k) + 1
    if m == 0 or m >= need or n == 1:
        return x @ w.T
    xp = np.zeros((need, k), np.float32)
    xp[:m] = x
    return (xp @ w.T)[:m]
