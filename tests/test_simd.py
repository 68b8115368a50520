"""wide_vectors(): the function attribute reaches LLVM and changes only the instructions."""

import numpy as np
import pytest
from numba import njit

from anasim.kernels.simd import _ATTRIBUTE, wide_vectors


def _scale(x, out):
    for i in range(x.size):
        out[i] = np.float32(x[i] * np.float32(1.5)) + np.float32(0.25)


def _scale_wide(x, out):
    wide_vectors()
    for i in range(x.size):
        out[i] = np.float32(x[i] * np.float32(1.5)) + np.float32(0.25)


def _compiled():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    kernels = {}
    for name, fn in (("plain", _scale), ("wide", _scale_wide)):
        k = njit(nogil=True)(fn)  # not cached: inspection needs freshly compiled code
        out = np.empty_like(x)
        k(x, out)
        kernels[name] = (k, out)
    return kernels


def test_the_attribute_is_on_the_kernel_and_the_numbers_are_unchanged():
    kernels = _compiled()
    wide, plain = kernels["wide"][0], kernels["plain"][0]
    assert _ATTRIBUTE in wide.inspect_llvm(wide.signatures[0])
    assert _ATTRIBUTE not in plain.inspect_llvm(plain.signatures[0])
    np.testing.assert_array_equal(kernels["wide"][1], kernels["plain"][1])


def test_avx512_cpus_get_512_bit_loops():
    import llvmlite.binding as ll

    if "+avx512f" not in ll.get_host_cpu_features().flatten().split(","):
        pytest.skip("this CPU has no AVX-512: the attribute changes nothing here")
    wide = _compiled()["wide"][0]
    assert "zmm" in wide.inspect_asm(wide.signatures[0])
