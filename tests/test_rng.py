"""The counter-based generator: Philox-4x32-10 known answers, agreement of the three
implementations (NumPy, plain Python, Numba), and the statistics of normals / uniforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from anasim.kernels import rng

# Random123 tests/kat_vectors, "philox4x32 10" lines (counter words, key words, expected);
# the same three vectors appear in TensorFlow's stateful_random_ops_test.py (citing
# Random123-Boost test_philox.cpp).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@njit(cache=False)
def _philox_jit(c0, c1, c2, c3, k0, k1):
    return rng.philox4x32_10(c0, c1, c2, c3, k0, k1)


@njit(cache=False)
def _normals_jit(rows, n, rnd, k0, k1):
    out = np.empty((rows.size, n), np.float32)
    for r in range(rows.size):
        for b in range((n + 3) // 4):
            z = rng.normal4(b, rnd, rows[r], k0, k1)
            for lane in range(4):
                if 4 * b + lane < n:
                    out[r, 4 * b + lane] = z[lane]
    return out


@njit(cache=False)
def _uniforms_jit(rows, n, rnd, k0, k1):
    out = np.empty((rows.size, n), np.float32)
    for r in range(rows.size):
        for b in range((n + 3) // 4):
            u = rng.uniform4(b, rnd, rows[r], k0, k1)
            for lane in range(4):
                if 4 * b + lane < n:
                    out[r, 4 * b + lane] = u[lane]
    return out


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_known_answers_numpy(ctr, key, want):
    assert tuple(int(v) for v in rng.philox_numpy(ctr, key)) == want


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_known_answers_scalar_python_and_numba(ctr, key, want):
    args = [np.uint64(v) for v in (*ctr, *key)]
    assert tuple(int(v) for v in rng.philox4x32_10(*args)) == want
    assert tuple(int(v) for v in _philox_jit(*args)) == want


def test_numpy_vectorised_matches_scalar_on_random_counters():
    g = np.random.default_rng(1)
    ctr = g.integers(0, 2**32, size=(200, 4), dtype=np.uint64)
    key = g.integers(0, 2**32, size=(200, 2), dtype=np.uint64)
    got = rng.philox_numpy(ctr, key)
    for i in range(0, 200, 17):
        want = _philox_jit(*[np.uint64(v) for v in (*ctr[i], *key[i])])
        assert tuple(int(v) for v in got[i]) == tuple(int(v) for v in want)


@pytest.mark.parametrize("rnd", [0, 3])
def test_numba_normals_and_uniforms_equal_numpy_reference(rnd):
    rows = np.array([0, 1, 7, 2**31 + 5, 2**40 + 123], np.int64)
    key = rng.stream_key(42, 3, 1, "out_noise", 2)
    n = 37
    z = _normals_jit(rows, n, rnd, np.uint64(key[0]), np.uint64(key[1]))
    u = _uniforms_jit(rows, n, rnd, np.uint64(key[0]), np.uint64(key[1]))
    el = np.arange(n)
    np.testing.assert_array_equal(z, rng.normals_numpy(rows[:, None], el[None], key, rnd))
    np.testing.assert_array_equal(u, rng.uniforms_numpy(rows[:, None], el[None], key, rnd))


@pytest.mark.parametrize("m", [1, 2, 3, 5, 64, 257])
@pytest.mark.parametrize("transposed", [False, True])
def test_vectorised_cpu_blocks_equal_numpy_reference(m, transposed):
    """The CPU kernels' generator (:func:`anasim.kernels.cpu._random_block`: Philox over
    rows two at a time, the quantile per word, the tails gathered) gives the reference's
    numbers for every row count (odd and even halves), element count, round and layout,
    at row ids whose high word is set and with normals deep in both tails."""
    from anasim.kernels.cpu import _random_block

    g = np.random.default_rng(m)
    rows = np.concatenate([[0, 2**32 - 1, 2**32, 2**40 + 123], g.integers(0, 2**62, 300)]).astype(np.int64)
    r0, r1 = 2, 2 + m
    key = rng.stream_key(7, 1, 2, "out_noise", 3)
    ws = np.empty((6, m), np.uint64)
    tmp = np.empty(m, np.float64)
    for n, rnd in ((1, 0), (6, 2), (9, 0)):
        want = rng.normals_numpy(rows[r0:r1, None], np.arange(n)[None], key, rnd)
        want_u = rng.uniforms_numpy(rows[r0:r1, None], np.arange(n)[None], key, rnd)
        for normal, ref in ((True, want), (False, want_u)):
            out = np.full((n, m) if transposed else (m, n), np.nan, np.float32)
            _random_block(rows, r0, r1, n, rnd, key[0], key[1], normal, ws, tmp, out, transposed)
            np.testing.assert_array_equal(out.T if transposed else out, ref)


@pytest.mark.parametrize("shift", [0, 3])
def test_quantile_of_words_equals_scalar_reference_at_the_tail_boundaries(shift):
    """:func:`anasim.kernels.cpu._words_to_values` (central function vectorised, tail
    words gathered from a 64-word bit mask, the lower tail at 2 w + 1 and the upper at the
    mirror) gives the scalar quantile's bits for every word within 3000 of either tail
    boundary and at the extremes, in full 64-word groups and in the remainder (``shift``)."""
    from anasim.kernels.cpu import _words_to_values

    lo = int(rng._P_LOW * 2.0**32)
    hi = 2**32 - lo
    words = np.concatenate([np.arange(lo - 3000, lo + 3000), np.arange(hi - 3000, hi + 3000),
                            [0, 1, 2, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]])
    words = np.random.default_rng(shift).permutation(words)[shift:].astype(np.uint32)
    m = words.size
    assert m % 8 != 0 or shift == 0
    out = np.full(m, np.nan, np.float32)
    _words_to_values(words, m, True, out, np.empty(m, np.int32), np.empty(m, np.uint32), np.empty(m, np.float32))
    want = np.array([np.float32(rng._normal_from_word(np.uint64(w))) for w in words], np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


def test_draw_depends_only_on_its_coordinates():
    key = rng.stream_key(0, 0, 0, "inp_noise")
    a = rng.normals_numpy(np.arange(10)[:, None], np.arange(9)[None], key)
    b = rng.normals_numpy(np.arange(3, 5)[:, None], np.arange(2, 6)[None], key)
    np.testing.assert_array_equal(a[3:5, 2:6], b)


def test_stream_keys_are_distinct_and_stable():
    base = (7, 2, 1, "out_noise", 0)
    k = rng.stream_key(*base)
    assert k == rng.stream_key(*base)
    assert all(0 <= v < 2**32 for v in k)
    variants = [(8, 2, 1, "out_noise", 0), (7, 3, 1, "out_noise", 0), (7, 2, 2, "out_noise", 0),
                (7, 2, 1, "w_noise", 0), (7, 2, 1, "out_noise", 1)]
    keys = {rng.stream_key(*v) for v in variants} | {k}
    assert len(keys) == len(variants) + 1
    # regression value: the mixing function is part of the reproducibility contract
    assert rng.stream_key(0, 0, 0, 1, 0) == (2024743999, 761604026)


def _norm_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _ks(sample, cdf):
    s = np.sort(sample.astype(np.float64))
    n = s.size
    f = cdf(s)
    return max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max())


def test_normal_statistics():
    n_rows, n_el = 400, 500  # 200 000 draws
    key = rng.stream_key(123, 0, 0, "out_noise")
    z = rng.normals_numpy(np.arange(n_rows)[:, None], np.arange(n_el)[None], key).ravel().astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    # sample variance: chi-square with n-1 dof, 99.9 % two-sided bound ~ 1 ± 3.29 sqrt(2/n)
    assert abs(z.var(ddof=1) - 1) < 3.3 * math.sqrt(2 / n)
    assert abs(((z - z.mean()) ** 3).mean()) < 5 * math.sqrt(6 / n)  # skewness
    assert abs(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3) < 5 * math.sqrt(24 / n)  # kurtosis
    sub = z[:20000]
    assert _ks(sub, _norm_cdf) < 1.95 / math.sqrt(sub.size)  # KS, alpha = 0.001
    # lanes and neighbouring rows are uncorrelated
    zz = z.reshape(n_rows, n_el)
    assert abs(np.corrcoef(zz[:, 0::4].ravel(), zz[:, 1::4].ravel())[0, 1]) < 5 / math.sqrt(zz[:, 0::4].size)
    assert abs(np.corrcoef(zz[:-1].ravel(), zz[1:].ravel())[0, 1]) < 5 / math.sqrt(zz[1:].size)


def test_uniform_statistics_and_range():
    key = rng.stream_key(9, 1, 2, "inp_sto_round")
    u = rng.uniforms_numpy(np.arange(200)[:, None], np.arange(300)[None], key).ravel()
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
    assert _ks(u[:20000], lambda s: s) < 1.95 / math.sqrt(20000)


def test_different_streams_uncorrelated():
    rows, el = np.arange(300)[:, None], np.arange(300)[None]
    a = rng.normals_numpy(rows, el, rng.stream_key(1, 0, 0, "out_noise")).ravel()
    b = rng.normals_numpy(rows, el, rng.stream_key(1, 0, 1, "out_noise")).ravel()
    c = rng.normals_numpy(rows, el, rng.stream_key(1, 0, 0, "out_noise"), rnd=1).ravel()
    for other in (b, c):
        assert abs(np.corrcoef(a, other)[0, 1]) < 5 / math.sqrt(a.size)


def test_normal_transform_is_an_accurate_inverse_cdf():
    """Φ⁻¹((w + 0.5)/2**32) to ~1e-9 (Acklam), symmetric in w <-> 2**32-1-w, finite."""
    g = np.random.default_rng(5)
    words = np.concatenate([[0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1],
                            g.integers(0, 2**32, 300), g.integers(0, 2**26, 100)])
    for w in words:
        z = rng._normal_from_word(np.uint64(w))
        p = (float(w) + 0.5) * 2.0**-32
        ref = z
        for _ in range(3):  # Newton on Φ(z) = p, in float64 with erfc
            err = 0.5 * math.erfc(-ref / math.sqrt(2.0)) - p
            ref -= err * math.sqrt(2 * math.pi) * math.exp(0.5 * ref * ref)
        assert abs(z - ref) <= 2e-8 * max(1.0, abs(ref)), (int(w), z, ref)
        assert z == -rng._normal_from_word(np.uint64(2**32 - 1 - int(w)))
    assert abs(rng._normal_from_word(np.uint64(0))) < 6.4


@njit(cache=False, error_model="numpy")
def _libm_tail_normal(w):
    """The lower-tail normal of word w with the C library's log (the quantile before anasim
    had its own logarithm)."""
    q = math.sqrt(-2.0 * math.log((float(w) + 0.5) * rng._TWO_M32))
    return (((((rng._C0 * q + rng._C1) * q + rng._C2) * q + rng._C3) * q + rng._C4) * q + rng._C5) / (
        (((rng._D0 * q + rng._D1) * q + rng._D2) * q + rng._D3) * q + 1.0)


@njit(cache=False, error_model="numpy")
def _tail_sample(words):
    n = words.size
    mine = np.empty(n, np.float64)
    libm = np.empty(n, np.float64)
    log_mine = np.empty(n, np.float64)
    log_libm = np.empty(n, np.float64)
    for i in range(n):
        w = words[i]
        mine[i] = rng._normal_from_word(np.uint64(w))
        libm[i] = _libm_tail_normal(w)
        log_mine[i] = rng._log_odd(2.0 * float(w) + 1.0)
        log_libm[i] = math.log((float(w) + 0.5) * rng._TWO_M32)
    return mine, libm, log_mine, log_libm


def test_own_logarithm_keeps_the_tail_normals_of_the_c_library_log():
    """The normal tails use anasim's IEEE-only logarithm (``rng._log_odd``): within 1 ulp of
    the C library's ``log`` (float64), and the float32 normals are the ones the C library's
    log gives (both tails: every 997th tail word, the first and last 2000, both kernels).
    ``bench/normal_tails.py`` checks all 208 305 914 tail words the same way."""
    from anasim.kernels.cpu import _words_to_values

    k = rng.TAIL_WORDS
    words = np.unique(np.concatenate([np.arange(0, k, 997), np.arange(2000), np.arange(k - 2000, k)]))
    mine, libm, log_mine, log_libm = _tail_sample(words.astype(np.uint64))
    assert words.size > 100_000 and (mine < -1.97).all()
    np.testing.assert_array_max_ulp(log_mine, log_libm, maxulp=1)
    np.testing.assert_array_equal(mine.astype(np.float32), libm.astype(np.float32))
    # the vectorised kernel, lower tail and the mirrored upper tail interleaved
    both = np.stack([words, 2**32 - 1 - words], axis=1).ravel().astype(np.uint32)
    m = both.size
    out = np.full(m, np.nan, np.float32)
    _words_to_values(both, m, True, out, np.empty(m, np.int32), np.empty(m, np.uint32), np.empty(m, np.float32))
    want = libm.astype(np.float32)
    np.testing.assert_array_equal(out[0::2], want)
    np.testing.assert_array_equal(out[1::2], -want)
