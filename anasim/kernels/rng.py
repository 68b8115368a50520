"""Counter-based random numbers: Philox-4x32-10, keyed streams, normals and uniforms.

Every random number anasim draws is a pure function of *where* it is used, never of
how the work is scheduled::

    key     = stream_key(seed, layer, tile, purpose, repetition)      -> (k0, k1), 2 x uint32
    counter = (element >> 2, round, row_id & 0xffffffff, row_id >> 32)
    block   = philox4x32_10(counter, key)                         -> 4 x uint32
    value   = word (element & 3) of the block, turned into a normal or a uniform

A word w becomes a uniform ``(w >> 8) 2**-24`` in [0, 1) or a standard normal
``Φ⁻¹((w + 0.5) 2**-32)``: the inverse normal CDF by Acklam's rational approximation
(relative error < 1.15e-9, |z| <= 6.36). One normal per word, no pairing as in
Box–Muller, and no transcendental function in 95 % of the draws: about twice as fast as
Box–Muller here. The logarithm of the 5 % tails is anasim's own (:func:`_log_odd`: an
exponent found by integer steps and fdlibm's ``log`` polynomial), so every normal is
IEEE float64 +, -, ×, / and sqrt only: the same bits on every machine and compiler that
keeps them unfused, and a loop over tails vectorises (no libm call). Over all 2**32
words its float32 normals equal those made with the C library's ``log`` (glibc 2.3x,
checked exhaustively, ``bench/normal_tails.py``), so the numbers did not change when it
replaced that ``log``.

``row_id`` is the global index of one input vector (sample index x output positions,
given by the caller), ``element`` the index of the input or output line inside the
tile, ``round`` the bound-management re-run (0 for the first pass). One Philox call
yields four numbers, so a kernel that walks a row in element order calls the generator
once per four elements. Nothing depends on batch size, thread count or order.

The scalar functions below are written for two compilers at once: they are plain
Python (callable from Python for tests), and decorated with
:func:`numba.extending.register_jitable`, so ``@njit`` CPU kernels and
``@numba.cuda.jit`` kernels both inline them. They use only ``np.uint64`` arithmetic
on values held below 2**32 (the 32 x 32 -> 64 bit product is exact in uint64, so the
high word of Philox's multiply is ``p >> 32``), ``math`` functions and no NumPy calls
on arrays. :func:`philox_numpy` is an independent vectorised NumPy implementation
used as the reference in tests and by the slow NumPy twin of the tile model.

Caution: Numba's on-disk cache (``cache=True``) tracks only the file of the cached
kernel; after editing this file, delete ``anasim/kernels/__pycache__`` so the CPU
kernels are recompiled with the new bodies.
"""

from __future__ import annotations

import math

import numpy as np
from numba.extending import register_jitable

__all__ = [
    "PURPOSE",
    "stream_key",
    "philox4x32_10",
    "normal4",
    "uniform4",
    "philox_numpy",
    "normals_numpy",
    "uniforms_numpy",
]

# Philox-4x32 constants (Salmon et al., SC'11; Random123 philox.h).
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_TWO_M32 = 2.3283064365386963e-10  # 2**-32
_TWO_M24 = np.float32(5.9604645e-08)  # 2**-24
_S8 = np.uint64(8)

#: Purpose codes that separate the random streams of one tile.
PURPOSE = {
    "inp_noise": 1,
    "out_noise": 2,
    "w_noise": 3,
    "inp_sto_round": 4,
    "out_sto_round": 5,
    "out_nonlinearity": 6,  # fixed per-output variation, drawn once per tile
    "out_noise_std": 7,  # fixed per-output out_noise variation, drawn once per tile
    "adc_gain": 8,  # per-column ADC gain mismatch, drawn once per programmed chip
    "adc_offset": 9,  # per-column ADC offset mismatch, drawn once per programmed chip
    "input_cycle": 10,  # bit-serial input: cycle j's streams, keyed by (a tile stream's key, j)
    # 16 and above: device models (programming noise, drift, read noise, ...)
    "programming": 16,
    "drift": 17,
    "read_noise": 18,
}
READOUT = 32
"""Purpose offset of the drift-compensation readout's forward streams: the readout's input
noise is purpose ``READOUT + PURPOSE["inp_noise"]``, and so on (keyed by t as well)."""

_MASK64 = (1 << 64) - 1


SEED_LIMIT = 2**64
"""Seeds are 64-bit (the key space of the generator): 0 <= seed < SEED_LIMIT."""


def check_seed(seed, error=ValueError, what: str = "seed") -> int:
    """``seed`` as an int if it is an integer in [0, 2**64), else ``error`` saying so (a
    larger seed would wrap around and repeat the numbers of a smaller one)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise error(f"{what} must be an integer in [0, 2**64) (the random generator's key is 64 bits; a larger "
                    f"seed would repeat the numbers of a smaller one); got {seed!r}.")
    return int(seed)


def _splitmix64(z: int) -> int:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014) on a Python int, 64-bit wrap."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, layer: int, tile: int, purpose: int | str, repetition: int = 0,
               *extra: int) -> tuple[int, int]:
    """The Philox key (k0, k1) of one random stream.

    Mixing: ``h = splitmix64(seed)``, then for each of ``layer, tile, purpose, repetition``
    (and any ``extra`` values, e.g. the bits of a time) in this order
    ``h = splitmix64(h ^ (value & 2**64-1))``; ``k0`` is the low and
    ``k1`` the high 32-bit word of the final ``h``. Each field changes every bit of
    the key with probability ~1/2 (SplitMix64 is a bijective avalanche mixer), so
    nearby seeds, layers or tiles give unrelated streams. Pure Python integers: the
    key is computed once on the host per kernel launch.

    Parameters
    ----------
    seed, layer, tile, repetition : non-negative (or negative, taken mod 2**64) integers.
        ``repetition`` is the Monte-Carlo repetition (a freshly programmed chip).
    purpose : int or a name from :data:`PURPOSE`.
    """
    if isinstance(purpose, str):
        purpose = PURPOSE[purpose]
    h = _splitmix64(int(seed) & _MASK64)
    for v in (layer, tile, purpose, repetition) + extra:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h & 0xFFFFFFFF, h >> 32


@register_jitable
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 block function. All arguments np.uint64 holding 32-bit values.

    Returns the four 32-bit output words (as np.uint64). Matches Random123's
    ``philox4x32_R(10, ctr, key)``: ten rounds of
    ``(c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0))``
    with the Weyl key bump ``k += (W0, W1)`` between rounds.
    """
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n1 = p1 & _MASK32
        n2 = (p0 >> _S32) ^ c3 ^ k1
        n3 = p0 & _MASK32
        c0 = n0
        c1 = n1
        c2 = n2
        c3 = n3
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


# Acklam's rational approximation of the standard normal quantile (relative error
# < 1.15e-9 over (0, 1)): a central rational function on [P_LOW, 1 - P_LOW] and a tail
# rational function of sqrt(-2 ln p). Only the tails (4.85 % of draws) need log / sqrt.
_A0, _A1, _A2 = -3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02
_A3, _A4, _A5 = 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00
_B0, _B1, _B2 = -5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02
_B3, _B4 = 6.680131188771972e01, -1.328068155288572e01
_C0, _C1, _C2 = -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00
_C3, _C4, _C5 = -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00
_D0, _D1, _D2, _D3 = 7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00
_P_LOW = 0.02425


def _tail_words() -> int:
    """The number K of words in each tail: word w is in the lower tail (p < P_LOW) iff
    w < K and in the upper tail (p > 1 - P_LOW) iff w >= 2**32 - K. Found with the
    float64 tests of :func:`_normal_from_word` themselves."""
    k = int(_P_LOW * 2.0**32)
    while (k + 0.5) * _TWO_M32 < _P_LOW:
        k += 1
    while k > 0 and (k - 1 + 0.5) * _TWO_M32 >= _P_LOW:
        k -= 1
    top = 2**32 - k  # the symmetric upper boundary (1 - p is exact)
    assert (top + 0.5) * _TWO_M32 > 1.0 - _P_LOW >= (top - 1 + 0.5) * _TWO_M32
    return k


TAIL_WORDS = _tail_words()
"""Words per tail of the normal quantile (104 152 957 of 2**32 on each side)."""

# fdlibm's e_log.c (Sun Microsystems, 1993): ln 2 split so that k ln2_hi is exact, and
# the minimax polynomial of log(1 + f) in s = f / (2 + f).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1, _LG2, _LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_LG4, _LG5 = 2.222219843214978396e-01, 1.818357216161805012e-01
_LG6, _LG7 = 1.531383769920937332e-01, 1.479819860511658591e-01
_SQRT2 = 1.4142135623730951
@register_jitable
def _log_odd(x):
    """ln(x 2**-33) (float64) for an odd integer 1 <= x < 2**32 held in a float64: the
    logarithm of a tail probability, p = x 2**-33 with x = 2 w + 1.

    x = 2**e m with m in [sqrt(2)/2, sqrt(2)): e by five halving steps (each a select on
    an exact power-of-two scaling, so a loop over tails vectorises); then fdlibm's
    ``log(2**k (1 + f)) = k ln2_hi - ((f²/2 - (s (f²/2 + R(s²)) + k ln2_lo)) - f)``,
    s = f / (2 + f), k = e - 33. Within 1 ulp of ln; only IEEE +, -, ×, /.
    """
    m = x
    e = -33.0
    b = m >= 65536.0
    m = m * 1.52587890625e-05 if b else m  # 2**-16
    e = e + 16.0 if b else e
    b = m >= 256.0
    m = m * 0.00390625 if b else m  # 2**-8
    e = e + 8.0 if b else e
    b = m >= 16.0
    m = m * 0.0625 if b else m
    e = e + 4.0 if b else e
    b = m >= 4.0
    m = m * 0.25 if b else m
    e = e + 2.0 if b else e
    b = m >= 2.0
    m = m * 0.5 if b else m
    e = e + 1.0 if b else e
    b = m > _SQRT2
    m = m * 0.5 if b else m
    k = e + 1.0 if b else e
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    return k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)


@register_jitable
def _tail(x):
    """Acklam's lower-tail quantile at p = x 2**-33 < P_LOW (x an odd integer in a
    float64; negative)."""
    q = math.sqrt(-2.0 * _log_odd(x))
    return (((((_C0 * q + _C1) * q + _C2) * q + _C3) * q + _C4) * q + _C5) / (
        (((_D0 * q + _D1) * q + _D2) * q + _D3) * q + 1.0
    )


@register_jitable
def _normal_from_word(w):
    """Standard normal (float64) from one uint32 word: Φ⁻¹((w + 0.5) 2**-32).

    p is never 0 or 1, so the result is finite: |z| <= 6.3613. 1 - p is exact in
    float64 (p has at most 33 significant bits), so the two tails are symmetric: the
    upper tail's is minus the lower tail's at 1 - p = (2 (2**32 - 1 - w) + 1) 2**-33.
    """
    p = (float(w) + 0.5) * _TWO_M32
    if p < _P_LOW:
        return _tail(2.0 * float(w) + 1.0)
    if p > 1.0 - _P_LOW:
        return -_tail(2.0 * (4294967295.0 - float(w)) + 1.0)
    q = p - 0.5
    r = q * q
    return ((((((_A0 * r + _A1) * r + _A2) * r + _A3) * r + _A4) * r + _A5) * q) / (
        ((((_B0 * r + _B1) * r + _B2) * r + _B3) * r + _B4) * r + 1.0
    )


@register_jitable
def normal4(block, rnd, row, k0, k1):
    """Four float32 standard normals for elements 4*block .. 4*block+3 of a row.

    ``block`` (element >> 2) and ``rnd`` must fit in 32 bits; ``row`` is the int64 row
    id (its two's-complement words form counter words 2 and 3). Lane ``e & 3`` of the
    result is the normal of element ``e``, the inverse normal CDF of output word
    ``e & 3`` (see :func:`_normal_from_word`).
    """
    r = np.uint64(row)
    x0, x1, x2, x3 = philox4x32_10(
        np.uint64(block) & _MASK32, np.uint64(rnd) & _MASK32, r & _MASK32, r >> _S32,
        np.uint64(k0), np.uint64(k1),
    )
    return (
        np.float32(_normal_from_word(x0)),
        np.float32(_normal_from_word(x1)),
        np.float32(_normal_from_word(x2)),
        np.float32(_normal_from_word(x3)),
    )


@register_jitable
def uniform4(block, rnd, row, k0, k1):
    """Four float32 uniforms in [0, 1) for elements 4*block .. 4*block+3 of a row.

    Each is ``(word >> 8) * 2**-24``: exactly representable, 2**24 equally spaced
    values, never 1.0.
    """
    r = np.uint64(row)
    x0, x1, x2, x3 = philox4x32_10(
        np.uint64(block) & _MASK32, np.uint64(rnd) & _MASK32, r & _MASK32, r >> _S32,
        np.uint64(k0), np.uint64(k1),
    )
    return (
        np.float32(x0 >> _S8) * _TWO_M24,
        np.float32(x1 >> _S8) * _TWO_M24,
        np.float32(x2 >> _S8) * _TWO_M24,
        np.float32(x3 >> _S8) * _TWO_M24,
    )


# --------------------------------------------------------------------------------------
# Vectorised NumPy reference (independent implementation, used by tests and the twin)


def philox_numpy(counter, key) -> np.ndarray:
    """Philox-4x32-10 on arrays.

    Parameters
    ----------
    counter : array-like (..., 4) of unsigned 32-bit values.
    key : array-like (..., 2), broadcastable against ``counter[..., :2]``.

    Returns
    -------
    (..., 4) uint32 array of output words.
    """
    c = np.asarray(counter, dtype=np.uint64)
    k = np.asarray(key, dtype=np.uint64)
    c0, c1, c2, c3 = (c[..., i].copy() for i in range(4))
    k0 = np.broadcast_to(k[..., 0], c0.shape).copy()
    k1 = np.broadcast_to(k[..., 1], c0.shape).copy()
    m = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & m, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & m
        k0 = (k0 + np.uint64(0x9E3779B9)) & m
        k1 = (k1 + np.uint64(0xBB67AE85)) & m
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _counters(rows, elements, rnd):
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    el = np.asarray(elements, dtype=np.uint64)
    rows, el = np.broadcast_arrays(rows, el)
    ctr = np.empty(rows.shape + (4,), dtype=np.uint64)
    ctr[..., 0] = el >> np.uint64(2)
    ctr[..., 1] = np.uint64(rnd)
    ctr[..., 2] = rows & np.uint64(0xFFFFFFFF)
    ctr[..., 3] = rows >> np.uint64(32)
    return ctr, (el & np.uint64(3)).astype(np.intp)


def normals_numpy(rows, elements, key, rnd: int = 0) -> np.ndarray:
    """Standard normals (float32) at (row id, element), broadcasting rows against elements.

    Same numbers as :func:`normal4`: Φ⁻¹((w + 0.5) 2**-32) of word ``element & 3`` of
    block ``element >> 2``, with the same float64 operations in the same order.
    """
    ctr, lane = _counters(rows, elements, rnd)
    w = philox_numpy(ctr, np.asarray(key, dtype=np.uint64))
    word = np.take_along_axis(w, lane[..., None], axis=-1)[..., 0]
    p = (word.astype(np.float64) + 0.5) * _TWO_M32
    z = np.empty_like(p)
    lo, hi = p < _P_LOW, p > 1.0 - _P_LOW
    mid = ~(lo | hi)
    for mask, pp, sign in ((lo, p[lo], 1.0), (hi, 1.0 - p[hi], -1.0)):
        q = np.sqrt(-2.0 * np.log(pp))
        num = ((((_C0 * q + _C1) * q + _C2) * q + _C3) * q + _C4) * q + _C5
        z[mask] = sign * (num / ((((_D0 * q + _D1) * q + _D2) * q + _D3) * q + 1.0))
    q = p[mid] - 0.5
    r = q * q
    num = (((((_A0 * r + _A1) * r + _A2) * r + _A3) * r + _A4) * r + _A5) * q
    z[mid] = num / (((((_B0 * r + _B1) * r + _B2) * r + _B3) * r + _B4) * r + 1.0)
    return z.astype(np.float32)


def uniforms_numpy(rows, elements, key, rnd: int = 0) -> np.ndarray:
    """Uniforms in [0, 1) (float32) at (row id, element); same numbers as :func:`uniform4`."""
    ctr, lane = _counters(rows, elements, rnd)
    w = philox_numpy(ctr, np.asarray(key, dtype=np.uint64))
    word = np.take_along_axis(w, lane[..., None], axis=-1)[..., 0]
    return (word >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
