"""CPU (Numba) kernels of the tile periphery: input preparation and output processing.

The analog matrix-vector product itself is a BLAS call (``np.matmul`` on float32) made by
:mod:`anasim.analog.tile`; the kernels here do everything around it, one pass each:

* :func:`prepare_input` -- per input vector and tile slice: noise management (the scale
  α), input scaling (1/α, bound-management reduction), DAC quantization
  (round-half-even or stochastic) and clipping, input noise, and the by-products the
  output-referred non-idealities need (‖x̃‖₂, x̃², |x̃|, the IR-drop weighted x̃).
* :func:`finalize_output` -- per output: IR-drop correction, output-referred weight
  noise, S-shaped non-linearity, output noise, ADC quantization and clipping, the
  bound-management saturation test; optionally also the digital rescaling and the
  accumulation into the layer output (:func:`accumulate_output` does that alone).

A tile's forward pass, in order: noise management, DAC quantization and clipping, input
noise, MVM, IR drop, output-referred weight noise, output non-linearity, output noise,
ADC quantization and clipping, iterative bound management, rescaling, digital
accumulation of the tiles' partial sums, digital bias (:func:`prepare_input` up to the
input noise, BLAS for the MVM, :func:`finalize_output` from the IR drop on, re-run by
:mod:`anasim.analog.tile` for bound management).

Arithmetic is float32 in the same order as aihwkit's CPU ``ForwardBackwardPassIOManaged``
(``src/rpucuda/rpu_forward_backward_pass.cpp``), so that deterministic settings reproduce
aihwkit bit for bit apart from BLAS summation order (the bound-management test is the
one deliberate difference, see :func:`finalize_output`).

Random numbers are those of :mod:`anasim.kernels.rng` at (key, row id, element, round):
parallel loops run over blocks of ``_ROWS`` rows, and each block draws its numbers from
the counters alone, so results do not depend on batch size, order or thread count. For
speed the CPU kernels evaluate Philox structure-of-arrays over a block (the inner loop
vectorises) and the normal quantile in two passes (central rational function for all
values, tails where needed) -- the same numbers as the scalar ``normal4`` / ``uniform4``
that CUDA kernels call (about 7 ns per normal instead of 20).

Each kernel has a ``*_serial`` twin (same wrapper, same numbers) that runs in the calling
thread without the GIL, for worker threads that each take a block of rows (the analog
convolution's row blocks); both drive the same per-block code (``_prepare_rows``,
``_finalize_rows``). Kernels use ``error_model="numpy"``: a float division then has no
Python zero-division branch, which lets LLVM vectorise the loops (the divisors are
never zero where the results are used, so the numbers do not change).

Public wrappers validate and convert; the ``_`` kernels assume valid input. Caution:
Numba's cache tracks only this file; after editing ``rng.py`` delete
``anasim/kernels/__pycache__``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros

from .rng import (
    TAIL_WORDS, _A0, _A1, _A2, _A3, _A4, _A5, _B0, _B1, _B2, _B3, _B4, _M0, _M1, _MASK32, _S32,
    _TWO_M24, _TWO_M32, _W0, _W1, _tail,
)
from .simd import wide_vectors

__all__ = [
    "NM_NONE", "NM_ABS_MAX", "NM_MAX", "NM_CONSTANT",
    "WN_NONE", "WN_ADDITIVE", "WN_PCM_READ",
    "prepare_input", "finalize_output", "accumulate_output", "warmup",
    "prepare_input_serial", "finalize_output_serial", "accumulate_output_serial",
    "input_cycle", "input_cycle_serial",
]

from . import stages as S  # noqa: E402  (the stage formulas)
from .stages import NM_ABS_MAX, NM_CONSTANT, NM_MAX, NM_NONE, WN_ADDITIVE, WN_NONE, WN_PCM_READ  # noqa: E402,F401

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)


_ROWS = 32  # rows per parallel work item (amortises the scratch buffer)
_HALF_W = np.uint32(2**31)  # words below it are in the lower half (p < 1/2)
_WORD_MAX = np.uint32(2**32 - 1)
_I31 = np.int32(0x7FFFFFFF)
_S31 = np.int32(31)


@njit(inline="always", error_model="numpy")
def _abs_max(xr):
    """Bit pattern (int32) of max |x| of a row: |x| bits order like |x| (vectorises)."""
    xi = xr.view(np.int32)
    a = np.int32(0)
    for j in range(xi.size):
        a = max(a, xi[j] & _I31)
    return a


@njit(inline="always", error_model="numpy")
def _max(xr):
    """Bit pattern (int32) of max x of a row, via order-preserving integer keys."""
    xi = xr.view(np.int32)
    a = np.int32(-2147483648)
    for j in range(xi.size):
        v = xi[j]
        a = max(a, v ^ ((v >> _S31) & _I31))
    return a ^ ((a >> _S31) & _I31)


_M0_32 = np.uint64(0xD2511F53)
_M1_32 = np.uint64(0xCD9E8D57)


@njit(inline="always", error_model="numpy")
def _round_keys(k0, k1, keys):
    """keys[0, r], keys[1, r] = the Philox key words of round r (the Weyl sequence)."""
    a = np.uint64(k0) & _MASK32
    b = np.uint64(k1) & _MASK32
    for r in range(10):
        keys[0, r] = np.uint32(a)
        keys[1, r] = np.uint32(b)
        a = (a + _W0) & _MASK32
        b = (b + _W1) & _MASK32


@njit(inline="always", error_model="numpy")
def _philox_round(c0, c1, c2, c3, k0, k1):
    """One Philox-4x32 round on 32-bit words held in uint64 lanes. Only the low 32 bits of
    each word are meaningful: the products take them (``& _MASK32``, which becomes the
    32 x 32 -> 64 bit vpmuludq with no masking instruction), and whatever the xors leave
    above them never reaches a product or an output word (:func:`_philox10` truncates)."""
    p0 = (c0 & _MASK32) * _M0_32
    p1 = (c2 & _MASK32) * _M1_32
    return (p1 >> _S32) ^ c1 ^ k0, p1, (p0 >> _S32) ^ c3 ^ k1, p0


@njit(inline="always", error_model="numpy")
def _philox10(c0, c1, c2, c3, ka, kb):
    """The ten rounds of Philox-4x32-10 with round keys ``ka[r], kb[r]`` (uint64 tuples of
    the Weyl sequence), written out so that they stay in registers."""
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[0], kb[0])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[1], kb[1])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[2], kb[2])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[3], kb[3])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[4], kb[4])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[5], kb[5])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[6], kb[6])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[7], kb[7])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[8], kb[8])
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, ka[9], kb[9])
    return (np.uint32(c0 & _MASK32), np.uint32(c1 & _MASK32), np.uint32(c2 & _MASK32),
            np.uint32(c3 & _MASK32))


@njit(inline="always", error_model="numpy")
def _key_tuples(keys):
    """The round keys ``keys`` (2, 10) as two uint64 tuples (held in registers)."""
    ka = (np.uint64(keys[0, 0]), np.uint64(keys[0, 1]), np.uint64(keys[0, 2]), np.uint64(keys[0, 3]),
          np.uint64(keys[0, 4]), np.uint64(keys[0, 5]), np.uint64(keys[0, 6]), np.uint64(keys[0, 7]),
          np.uint64(keys[0, 8]), np.uint64(keys[0, 9]))
    kb = (np.uint64(keys[1, 0]), np.uint64(keys[1, 1]), np.uint64(keys[1, 2]), np.uint64(keys[1, 3]),
          np.uint64(keys[1, 4]), np.uint64(keys[1, 5]), np.uint64(keys[1, 6]), np.uint64(keys[1, 7]),
          np.uint64(keys[1, 8]), np.uint64(keys[1, 9]))
    return ka, kb


@njit(nogil=True, cache=True, error_model="numpy")
def _philox_rows(blk, rnd, row_ids, r0, r1, keys, w0, w1, w2, w3):
    """The four words of the Philox-4x32-10 block ``(blk, rnd, row lo, row hi)`` of every row
    r0..r1 into w0..w3[0:r1-r0] -- :func:`anasim.kernels.rng.philox4x32_10`, with the ten
    rounds written out and held in registers, so that the loop over rows vectorises (the
    32 x 32 -> 64 bit products as vpmuludq). Each iteration runs two rows, one from each
    half of the range: two independent chains of dependent multiplies that the core
    overlaps (measured on Zen 3 / AVX2, interleaved: 5.0 -> 3.8 ns per block)."""
    wide_vectors()
    ka, kb = _key_tuples(keys)
    cb = np.uint64(blk) & _MASK32
    cr = np.uint64(rnd) & _MASK32
    rows = row_ids[r0:r1]
    m = r1 - r0
    h = m >> 1
    for i in range(h):
        ra = np.uint64(rows[i])
        rb = np.uint64(rows[h + i])
        a0, a1, a2, a3 = _philox10(cb, cr, ra, ra >> _S32, ka, kb)
        b0, b1, b2, b3 = _philox10(cb, cr, rb, rb >> _S32, ka, kb)
        w0[i] = a0
        w1[i] = a1
        w2[i] = a2
        w3[i] = a3
        w0[h + i] = b0
        w1[h + i] = b1
        w2[h + i] = b2
        w3[h + i] = b3
    for i in range(2 * h, m):
        ra = np.uint64(rows[i])
        w0[i], w1[i], w2[i], w3[i] = _philox10(cb, cr, ra, ra >> _S32, ka, kb)


@njit(nogil=True, cache=True, error_model="numpy")
def _philox_rows_word0(blk, rnd, row_ids, r0, r1, keys, w0):
    """:func:`_philox_rows` for word 0 only (rows of one element: one-output tiles such as
    a depthwise convolution's channels): the same rounds, from which the compiler drops
    the last round's other half and three of the four stores (Zen 2: 4.5 -> 2.9 ns per
    block)."""
    wide_vectors()
    ka, kb = _key_tuples(keys)
    cb = np.uint64(blk) & _MASK32
    cr = np.uint64(rnd) & _MASK32
    rows = row_ids[r0:r1]
    m = r1 - r0
    h = m >> 1
    for i in range(h):
        ra = np.uint64(rows[i])
        rb = np.uint64(rows[h + i])
        w0[i] = _philox10(cb, cr, ra, ra >> _S32, ka, kb)[0]
        w0[h + i] = _philox10(cb, cr, rb, rb >> _S32, ka, kb)[0]
    for i in range(2 * h, m):
        ra = np.uint64(rows[i])
        w0[i] = _philox10(cb, cr, ra, ra >> _S32, ka, kb)[0]


@njit(nogil=True, cache=True, error_model="numpy")
def _words_to_values(cw, m, normal, o, cand, tw, zt):
    """o[i] (float32) = the normal (or uniform) of word cw[i], i < m: for normals the central
    rational function for every word, then the tails (about 5 %).

    The tail words (the exact integer test of :data:`~anasim.kernels.rng.TAIL_WORDS`) and
    their places are gathered into ``tw`` (uint32) and ``cand`` (int32) from a bit mask
    per 64 words (made vectorised; one loop turn per tail, so one mispredicted exit per 64
    words, not one per tail); their normals are then made in one vectorised loop into
    ``zt`` (float32) -- the lower tail at x = 2 w + 1, the upper at the mirrored word, the
    sign by a select -- and written to their places. All three scratch arrays hold >= m. The same float64
    operations on the same operands as :func:`anasim.kernels.rng._normal_from_word`, so
    the same bits (Zen 2, 4096 words per call: 3.31 -> 2.43 ns per normal, the central
    function alone 1.87)."""
    wide_vectors()
    if not normal:
        for i in range(m):
            o[i] = np.float32(np.float32(cw[i] >> np.uint32(8)) * _TWO_M24)
        return
    for i in range(m):
        p = (np.float64(cw[i]) + 0.5) * _TWO_M32
        q = p - 0.5
        t = q * q
        o[i] = np.float32(((((((_A0 * t + _A1) * t + _A2) * t + _A3) * t + _A4) * t + _A5) * q) / (
            ((((_B0 * t + _B1) * t + _B2) * t + _B3) * t + _B4) * t + 1.0
        ))
    lo_w = np.uint32(TAIL_WORDS)  # tails: w < lo_w or w > hi_w
    hi_w = np.uint32(2**32 - 1 - TAIL_WORDS)
    nt = 0
    ng = m >> 6
    for g in range(ng):
        j0 = 64 * g
        mask = np.uint64(0)  # bit j: word j0 + j is a tail (about 3 of 64)
        for j in range(64):
            v = cw[j0 + j]
            mask |= np.uint64((v < lo_w) | (v > hi_w)) << np.uint64(j)
        while mask != 0:
            j = j0 + trailing_zeros(mask)
            cand[nt] = j
            tw[nt] = cw[j]
            nt += 1
            mask &= mask - np.uint64(1)
    for i in range(64 * ng, m):
        v = cw[i]
        cand[nt] = i
        tw[nt] = v
        nt += (v < lo_w) | (v > hi_w)
    for j in range(nt):
        v = tw[j]
        low = v < _HALF_W
        u = v if low else _WORD_MAX - v
        z = _tail(2.0 * np.float64(u) + 1.0)
        zt[j] = np.float32(z if low else -z)
    for j in range(nt):
        o[cand[j]] = zt[j]


@njit(inline="always", error_model="numpy")
def _random_rows(row_ids, r0, r1, n, rnd, k0, k1, normal, ws, tmp, out):
    """out[0:r1-r0, 0:n] = the normals (or uniforms) of elements 0..n-1 of rows r0..r1."""
    _random_block(row_ids, r0, r1, n, rnd, k0, k1, normal, ws, tmp, out, False)


@njit(inline="always", error_model="numpy")
def _random_block(row_ids, r0, r1, n, rnd, k0, k1, normal, ws, tmp, out, transposed):
    """out[0:r1-r0, 0:n] (or, ``transposed``, out[0:n, 0:r1-r0]) = the normals (or
    uniforms) of elements 0..n-1 of rows r0..r1.

    Element e of a row is word ``e & 3`` of the Philox block with counter
    ``(e >> 2, rnd, row & 0xffffffff, row >> 32)`` -- the numbers of
    :func:`~anasim.kernels.rng.normal4` / :func:`~anasim.kernels.rng.uniform4`. Made
    per block of four elements over all rows at once (vectorised Philox, then per word
    the values), so the transposed layout is written contiguously. ``ws`` is a
    (6, >= r1 - r0) uint64 scratch (``tmp`` is not used).
    """
    m = r1 - r0
    nb = (n + 3) >> 2
    keys = np.empty((2, 10), np.uint32)
    _round_keys(k0, k1, keys)
    wv = ws[:4].view(np.uint32)  # four uint32 word arrays in the first half of each row
    half = ws.shape[1]
    cand = ws[4].view(np.int32)[:half]  # the tails' places, words and values
    tw = ws[4].view(np.uint32)[half:]
    zt = ws[5].view(np.float32)[:half]
    vals = tmp[:m].view(np.float32) if tmp.size >= m else np.empty(m, np.float32)
    for b in range(nb):
        w0 = wv[0, :m]
        w1 = wv[1, :m]
        w2 = wv[2, :m]
        w3 = wv[3, :m]
        if n == 1:
            _philox_rows_word0(b, rnd, row_ids, r0, r1, keys, w0)
        else:
            _philox_rows(b, rnd, row_ids, r0, r1, keys, w0, w1, w2, w3)
        for w in range(4):
            e = 4 * b + w
            if e >= n:
                break
            cw = wv[w, :m]
            if transposed:
                _words_to_values(cw, m, normal, out[e, :m], cand, tw, zt)
            else:
                _words_to_values(cw, m, normal, vals, cand, tw, zt)
                for i in range(m):
                    out[i, e] = vals[i]


@njit(inline="always", error_model="numpy")
def _row_norms(xt, xnorm, r0, r1):
    """xnorm[r] = ‖xt[r]‖₂, each a float64 sum in element order (aihwkit's), eight rows
    interleaved so their dependency chains overlap. Skipped rows are zero: norm 0."""
    k = xt.shape[1]
    r = r0
    while r + 8 <= r1:
        a0, a1, a2, a3 = xt[r], xt[r + 1], xt[r + 2], xt[r + 3]
        a4, a5, a6, a7 = xt[r + 4], xt[r + 5], xt[r + 6], xt[r + 7]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for j in range(k):
            s0 += float(a0[j]) * float(a0[j])
            s1 += float(a1[j]) * float(a1[j])
            s2 += float(a2[j]) * float(a2[j])
            s3 += float(a3[j]) * float(a3[j])
            s4 += float(a4[j]) * float(a4[j])
            s5 += float(a5[j]) * float(a5[j])
            s6 += float(a6[j]) * float(a6[j])
            s7 += float(a7[j]) * float(a7[j])
        xnorm[r] = np.float32(np.sqrt(s0))
        xnorm[r + 1] = np.float32(np.sqrt(s1))
        xnorm[r + 2] = np.float32(np.sqrt(s2))
        xnorm[r + 3] = np.float32(np.sqrt(s3))
        xnorm[r + 4] = np.float32(np.sqrt(s4))
        xnorm[r + 5] = np.float32(np.sqrt(s5))
        xnorm[r + 6] = np.float32(np.sqrt(s6))
        xnorm[r + 7] = np.float32(np.sqrt(s7))
        r += 8
    while r < r1:
        a0 = xt[r]
        s0 = 0.0
        for j in range(k):
            s0 += float(a0[j]) * float(a0[j])
        xnorm[r] = np.float32(np.sqrt(s0))
        r += 1


@njit(cache=True, error_model="numpy")
def _prepare_scratch(k, use_u, use_g):
    """Scratch of one block of ``_ROWS`` rows for :func:`_prepare_rows`."""
    wide_vectors()
    nb = (k + 3) >> 2
    bits = np.empty(1, np.int32)  # to reinterpret an int32 bit pattern as float32
    ws = np.empty((6, _ROWS * nb if (use_u or use_g) else 0), np.uint64)
    tmp = np.empty(ws.shape[1], np.float64)
    ub = np.empty((_ROWS if use_u else 0, k), np.float32)
    gb = np.empty((_ROWS if use_g else 0, k), np.float32)
    return bits, ws, tmp, ub, gb


@njit(cache=True, error_model="numpy")
def _prepare_rows(
    x, c0, nm_type, nm_thres, res, bound, inp_noise, sto_round, red, rnd, row_ids,
    kn0, kn1, ks0, ks1, want_norm, want_sq, want_ir,
    xt, scale, skip, xnorm, xsq, xabs, xir, r0, r1, bits, ws, tmp, ub, gb,
):
    """Rows r0..r1 (at most ``_ROWS``) of :func:`_prepare_input`."""
    wide_vectors()
    k = xt.shape[1]
    nm_on = nm_type != NM_NONE
    kf = np.float32(k)
    use_u = res > _F0 and sto_round
    use_g = inp_noise > _F0
    fbits = bits.view(np.float32)
    if use_u:
        _random_rows(row_ids, r0, r1, k, rnd, ks0, ks1, False, ws, tmp, ub)
    if use_g:
        _random_rows(row_ids, r0, r1, k, rnd, kn0, kn1, True, ws, tmp, gb)
    for r in range(r0, r1):
        xr = x[r, c0:c0 + k]
        xtr = xt[r]
        # --- noise management (computeNoiseManagement) -----------------------
        if nm_type == NM_ABS_MAX:
            bits[0] = _abs_max(xr)
        elif nm_type == NM_MAX:
            bits[0] = _max(xr)
        nmv = S.noise_management(nm_type, nm_thres, fbits[0])
        if nm_on and nmv <= _F0 and inp_noise <= _F0:
            # aihwkit's short cut: the tile output is exactly zero
            skip[r] = True
            scale[r] = _F1
            for j in range(k):
                xtr[j] = _F0
            if want_norm:
                xnorm[r] = _F0
            continue
        skip[r] = False
        s = _F1
        if nm_on and nmv > _F0:
            s = s / nmv
        s = s / red  # red == 1 without bound management: exact
        scale[r] = s
        # --- scale, DAC, clip (prepareInputImplStage4) ---------------------------
        if use_u:
            ur = ub[r - r0]
            for j in range(k):
                xtr[j] = S.dac_stochastic(xr[j], s, res, bound, ur[j])
        else:
            for j in range(k):
                xtr[j] = S.dac(xr[j], s, res, bound)
        # --- input noise, after the DAC and the bound -----------------------------
        if use_g:
            gr = gb[r - r0]
            for j in range(k):
                xtr[j] = xtr[j] + inp_noise * gr[j]
        # --- by-products for the output-referred non-idealities ---------------------
        if want_sq:
            xsqr = xsq[r]
            for j in range(k):
                xsqr[j] = xtr[j] * xtr[j]
        if want_ir:
            xabsr = xabs[r]
            xirr = xir[r]
            for j in range(k):
                v = xtr[j]
                p = _F1 - np.float32(j) / kf
                xabsr[j] = abs(v)
                xirr[j] = v * (_F1 - p * p)
    if want_norm:
        _row_norms(xt, xnorm, r0, r1)


@njit(parallel=True, cache=True, error_model="numpy")
def _prepare_input(
    x, c0, nm_type, nm_thres, res, bound, inp_noise, sto_round, red, rnd, row_ids,
    kn0, kn1, ks0, ks1, want_norm, want_sq, want_ir,
    xt, scale, skip, xnorm, xsq, xabs, xir,
):
    wide_vectors()
    m, k = xt.shape
    use_u = res > _F0 and sto_round
    use_g = inp_noise > _F0
    for blk in prange((m + _ROWS - 1) // _ROWS):
        r0 = blk * _ROWS
        r1 = min(m, r0 + _ROWS)
        bits, ws, tmp, ub, gb = _prepare_scratch(k, use_u, use_g)
        _prepare_rows(
            x, c0, nm_type, nm_thres, res, bound, inp_noise, sto_round, red, rnd, row_ids,
            kn0, kn1, ks0, ks1, want_norm, want_sq, want_ir,
            xt, scale, skip, xnorm, xsq, xabs, xir, r0, r1, bits, ws, tmp, ub, gb,
        )


@njit(nogil=True, cache=True, error_model="numpy")
def _prepare_input_serial(
    x, c0, nm_type, nm_thres, res, bound, inp_noise, sto_round, red, rnd, row_ids,
    kn0, kn1, ks0, ks1, want_norm, want_sq, want_ir,
    xt, scale, skip, xnorm, xsq, xabs, xir,
):
    """:func:`_prepare_input` in the calling thread (no GIL): for worker threads."""
    wide_vectors()
    m, k = xt.shape
    use_u = res > _F0 and sto_round
    use_g = inp_noise > _F0
    bits, ws, tmp, ub, gb = _prepare_scratch(k, use_u, use_g)
    for blk in range((m + _ROWS - 1) // _ROWS):
        r0 = blk * _ROWS
        r1 = min(m, r0 + _ROWS)
        _prepare_rows(
            x, c0, nm_type, nm_thres, res, bound, inp_noise, sto_round, red, rnd, row_ids,
            kn0, kn1, ks0, ks1, want_norm, want_sq, want_ir,
            xt, scale, skip, xnorm, xsq, xabs, xir, r0, r1, bits, ws, tmp, ub, gb,
        )


@njit(cache=True, error_model="numpy")
def _finalize_scratch(n, need):
    """Scratch of one block of ``_ROWS`` rows for :func:`_finalize_rows`."""
    wide_vectors()
    nb = (n + 3) >> 2
    ws = np.empty((6, _ROWS * nb if need else 0), np.uint64)
    tmp = np.empty(ws.shape[1], np.float64)
    zb = np.empty((_ROWS if need else 0, n), np.float32)
    return ws, tmp, zb


@njit(cache=True, error_model="numpy")
def _finalize_rows(
    y, skip, cur, irm, pw, xnorm, res, bound, bm_on, test_neg,
    nl_on, nl_vec, nlf, noise_vec, noise_on, sto_round,
    wn_type, w_noise, ir_drop, a_scale, row_ids, rnd,
    kn0, kn1, kw0, kw1, ks0, ks1, fail,
    accumulate, scale, out_scale, ms, post, acc, c0, r0, r1, ws, tmp, zb,
    adc_on, adc_off, adc_gain, inl,
):
    """Rows r0..r1 (at most ``_ROWS``) of :func:`_finalize_output`."""
    wide_vectors()
    n = y.shape[1]
    n_inl = inl.shape[1]
    use_w = wn_type != WN_NONE
    use_u = res > _F0 and sto_round
    # applyNonIdealities: IR drop, then output-referred weight noise
    if ir_drop > _F0:
        for r in range(r0, r1):
            yr = y[r]
            curr = cur[r]
            irmr = irm[r]
            for i in range(n):
                yr[i] = S.ir_drop(yr[i], curr[i], irmr[i], a_scale, ir_drop)
    if use_w:
        _random_rows(row_ids, r0, r1, n, rnd, kw0, kw1, True, ws, tmp, zb)
        for r in range(r0, r1):
            yr = y[r]
            zr = zb[r - r0]
            if wn_type == WN_ADDITIVE:
                wstd = w_noise * xnorm[r]
                for i in range(n):
                    yr[i] = yr[i] + wstd * zr[i]
            else:
                pwr = pw[r]
                for i in range(n):
                    yr[i] = yr[i] + w_noise * np.sqrt(pwr[i]) * zr[i]
    # finalizeOutputImplStage5: NL, output noise, ADC, bound test
    if nl_on:
        for r in range(r0, r1):
            yr = y[r]
            for i in range(n):
                yr[i] = S.nonlinearity(yr[i], nl_vec[i], nlf)
    if noise_on:
        _random_rows(row_ids, r0, r1, n, rnd, kn0, kn1, True, ws, tmp, zb)
        for r in range(r0, r1):
            yr = y[r]
            zr = zb[r - r0]
            for i in range(n):
                yr[i] = yr[i] + noise_vec[i] * zr[i]
    if use_u:
        _random_rows(row_ids, r0, r1, n, rnd, ks0, ks1, False, ws, tmp, zb)
    for r in range(r0, r1):
        yr = y[r]
        if skip[r]:
            for i in range(n):
                yr[i] = _F0
            fail[r] = False
            continue  # contributes exactly 0 to the digital sum
        if adc_on and n_inl == 0:  # per-column ADC offset and gain; the constant 0: no branch, vectorised
            for i in range(n):
                yr[i] = S.adc_transfer(yr[i], adc_off[i], adc_gain[i], inl, 0)
        elif adc_on:  # ... and the INL curve (before quantization)
            for i in range(n):
                yr[i] = S.adc_transfer(yr[i], adc_off[i], adc_gain[i], inl, n_inl)
        if use_u:
            zr = zb[r - r0]
            for i in range(n):
                yr[i] = S.adc_stochastic(yr[i], res, zr[i])
        elif res > _F0:
            for i in range(n):
                yr[i] = S.adc(yr[i], res)
        hi = 0
        lo = 0
        for i in range(n):
            v = yr[i]
            hi += v > bound
            lo += v < -bound
            yr[i] = min(max(v, -bound), bound)
        fail[r] = bm_on and (hi > 0 or (test_neg and lo > 0))
        if accumulate:
            f = out_scale / scale[r]
            ar = acc[r, c0:c0 + n]
            for i in range(n):
                ar[i] += ((yr[i] * f) * ms[i]) * post[i]


@njit(parallel=True, cache=True, error_model="numpy")
def _finalize_output(
    y, skip, cur, irm, pw, xnorm, res, bound, bm_on, test_neg,
    nl_on, nl_vec, nlf, noise_vec, noise_on, sto_round,
    wn_type, w_noise, ir_drop, a_scale, row_ids, rnd,
    kn0, kn1, kw0, kw1, ks0, ks1, fail,
    accumulate, scale, out_scale, ms, post, acc, c0, adc_on, adc_off, adc_gain, inl,
):
    wide_vectors()
    m, n = y.shape
    need = wn_type != WN_NONE or noise_on or (res > _F0 and sto_round)
    for blk in prange((m + _ROWS - 1) // _ROWS):
        r0 = blk * _ROWS
        r1 = min(m, r0 + _ROWS)
        ws, tmp, zb = _finalize_scratch(n, need)
        _finalize_rows(
            y, skip, cur, irm, pw, xnorm, res, bound, bm_on, test_neg,
            nl_on, nl_vec, nlf, noise_vec, noise_on, sto_round,
            wn_type, w_noise, ir_drop, a_scale, row_ids, rnd,
            kn0, kn1, kw0, kw1, ks0, ks1, fail,
            accumulate, scale, out_scale, ms, post, acc, c0, r0, r1, ws, tmp, zb,
            adc_on, adc_off, adc_gain, inl,
        )


@njit(nogil=True, cache=True, error_model="numpy")
def _finalize_output_serial(
    y, skip, cur, irm, pw, xnorm, res, bound, bm_on, test_neg,
    nl_on, nl_vec, nlf, noise_vec, noise_on, sto_round,
    wn_type, w_noise, ir_drop, a_scale, row_ids, rnd,
    kn0, kn1, kw0, kw1, ks0, ks1, fail,
    accumulate, scale, out_scale, ms, post, acc, c0, adc_on, adc_off, adc_gain, inl,
):
    """:func:`_finalize_output` in the calling thread (no GIL): for worker threads."""
    wide_vectors()
    m, n = y.shape
    need = wn_type != WN_NONE or noise_on or (res > _F0 and sto_round)
    ws, tmp, zb = _finalize_scratch(n, need)
    for blk in range((m + _ROWS - 1) // _ROWS):
        r0 = blk * _ROWS
        r1 = min(m, r0 + _ROWS)
        _finalize_rows(
            y, skip, cur, irm, pw, xnorm, res, bound, bm_on, test_neg,
            nl_on, nl_vec, nlf, noise_vec, noise_on, sto_round,
            wn_type, w_noise, ir_drop, a_scale, row_ids, rnd,
            kn0, kn1, kw0, kw1, ks0, ks1, fail,
            accumulate, scale, out_scale, ms, post, acc, c0, r0, r1, ws, tmp, zb,
            adc_on, adc_off, adc_gain, inl,
        )


@njit(cache=True, error_model="numpy")
def _accumulate_row(y, scale, out_scale, ms, post, acc, c0, r):
    wide_vectors()
    n = y.shape[1]
    f = out_scale / scale[r]
    yr = y[r]
    ar = acc[r, c0:c0 + n]
    for i in range(n):
        ar[i] += ((yr[i] * f) * ms[i]) * post[i]


@njit(parallel=True, cache=True, error_model="numpy")
def _accumulate_output(y, scale, out_scale, ms, post, acc, c0):
    wide_vectors()
    for r in prange(y.shape[0]):
        _accumulate_row(y, scale, out_scale, ms, post, acc, c0, r)


@njit(nogil=True, cache=True, error_model="numpy")
def _accumulate_output_serial(y, scale, out_scale, ms, post, acc, c0):
    """:func:`_accumulate_output` in the calling thread (no GIL)."""
    wide_vectors()
    for r in range(y.shape[0]):
        _accumulate_row(y, scale, out_scale, ms, post, acc, c0, r)


@njit(inline="always", error_model="numpy")
def _input_cycle_row(xt, res, drive, cycle, bits, n_cycles, twos, out, r):
    xr = xt[r]
    orow = out[r]
    for j in range(xr.size):
        orow[j] = S.input_cycle(xr[j], res, drive, cycle, bits, n_cycles, twos)


@njit(parallel=True, cache=True, error_model="numpy")
def _input_cycle(xt, res, drive, cycle, bits, n_cycles, twos, out):
    wide_vectors()
    for r in prange(xt.shape[0]):
        _input_cycle_row(xt, res, drive, cycle, bits, n_cycles, twos, out, r)


@njit(nogil=True, cache=True, error_model="numpy")
def _input_cycle_serial(xt, res, drive, cycle, bits, n_cycles, twos, out):
    """:func:`_input_cycle` in the calling thread (no GIL)."""
    wide_vectors()
    for r in range(xt.shape[0]):
        _input_cycle_row(xt, res, drive, cycle, bits, n_cycles, twos, out, r)


# --------------------------------------------------------------------------------------
# public wrappers

_EMPTY2 = np.zeros((0, 0), dtype=np.float32)
_EMPTY1 = np.zeros(0, dtype=np.float32)
_EMPTY_INL = np.zeros((3, 0), dtype=np.float32)


def _f32_2d(a, name):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def _vec(a, n, name, dtype=np.float32):
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a


def _make_prepare_input(kernel):
    """The wrapper :func:`prepare_input` around ``kernel`` (the parallel or the serial one)."""

    def prepare_input(
        x, col0, ncols, row_ids, *, nm_type=NM_ABS_MAX, nm_thres=0.0, res=0.0, bound=1.0,
        inp_noise=0.0, sto_round=False, red=1.0, rnd=0, noise_key=(0, 0), sto_key=(0, 0),
        want_norm=False, want_sq=False, want_ir=False,
    ):
        """Prepare the inputs of one tile: columns ``col0 .. col0+ncols`` of ``x``.

        Parameters
        ----------
        x : (M, K) float32, the layer input (only the tile's columns are read).
        col0, ncols : the tile's input slice.
        row_ids : (M,) int64 global row ids (random-number counters).
        nm_type : ``NM_*`` code; nm_thres : aihwkit ``nm_thres``.
        res : DAC step in the scaled domain (aihwkit's ``inp_res`` after initialisation,
            i.e. resolution × 2 × inp_bound); <= 0 disables quantization.
        bound : input clip bound (``inf`` for none).
        inp_noise : std of the additive input noise; sto_round : stochastic DAC rounding.
        red : bound-management reduction factor; rnd : bound-management round (counter).
        noise_key, sto_key : Philox keys of the input-noise and stochastic-rounding streams.
        want_norm, want_sq, want_ir : also return ‖x̃‖₂ per row, x̃², and (|x̃|, IR-weighted x̃).

        Returns
        -------
        dict with ``xt`` (M, ncols) prepared input, ``scale`` (M,) the applied input scale
        (1/α/red, float32), ``skip`` (M,) bool rows whose output is exactly zero, and
        ``xnorm``, ``xsq``, ``xabs``, ``xir`` when requested.
        """
        x = _f32_2d(x, "x")
        m, kfull = x.shape
        if not (0 <= col0 and ncols > 0 and col0 + ncols <= kfull):
            raise ValueError(f"tile columns {col0}..{col0 + ncols} outside x with {kfull} columns")
        row_ids = _vec(row_ids, m, "row_ids", np.int64)
        xt = np.empty((m, ncols), dtype=np.float32)
        scale = np.empty(m, dtype=np.float32)
        skip = np.empty(m, dtype=np.bool_)
        xnorm = np.empty(m, dtype=np.float32) if want_norm else _EMPTY1
        xsq = np.empty((m, ncols), dtype=np.float32) if want_sq else _EMPTY2
        xabs = np.empty((m, ncols), dtype=np.float32) if want_ir else _EMPTY2
        xir = np.empty((m, ncols), dtype=np.float32) if want_ir else _EMPTY2
        kernel(
            x, np.int64(col0), np.int64(nm_type), np.float32(nm_thres), np.float32(res),
            np.float32(bound), np.float32(inp_noise), bool(sto_round), np.float32(red),
            np.int64(rnd), row_ids, np.uint64(noise_key[0]), np.uint64(noise_key[1]),
            np.uint64(sto_key[0]), np.uint64(sto_key[1]), bool(want_norm), bool(want_sq),
            bool(want_ir), xt, scale, skip, xnorm, xsq, xabs, xir,
        )
        out = {"xt": xt, "scale": scale, "skip": skip}
        if want_norm:
            out["xnorm"] = xnorm
        if want_sq:
            out["xsq"] = xsq
        if want_ir:
            out["xabs"], out["xir"] = xabs, xir
        return out

    return prepare_input


prepare_input = _make_prepare_input(_prepare_input)
prepare_input_serial = _make_prepare_input(_prepare_input_serial)
prepare_input_serial.__doc__ = (
    ":func:`prepare_input` with a single-threaded, GIL-free kernel: for worker threads that "
    "each process a block of rows (same arguments, same result).")
prepare_input_serial.__name__ = prepare_input_serial.__qualname__ = "prepare_input_serial"


def _make_finalize_output(kernel):
    """The wrapper :func:`finalize_output` around ``kernel`` (the parallel or the serial one)."""

    def finalize_output(
        y, skip, row_ids, *, res=0.0, bound=np.inf, bm=False, test_neg=True,
        nl_vec=None, nlf=1.0, noise_vec=None, sto_round=False,
        wn_type=WN_NONE, w_noise=0.0, xnorm=None, pw=None,
        ir_drop=0.0, a_scale=0.0, cur=None, irm=None, rnd=0,
        noise_key=(0, 0), w_key=(0, 0), sto_key=(0, 0),
        acc=None, col0=0, scale=None, out_scale=1.0, ms=None, post=None,
        adc_offset=None, adc_gain=None, inl=None,
    ):
        """Process the raw analog outputs ``y`` (M, N) of one tile in place.

        Applies, per output and in aihwkit's order: IR drop (needs ``cur`` = |x̃|·|W|ᵀ,
        ``irm`` = x̃_ir·Wᵀ, ``a_scale`` = n / ir_drop_g_ratio), weight noise (additive:
        needs ``xnorm``; pcm_read: needs ``pw`` = x̃²·|W|ᵀ), the non-linearity
        ``nlf·v/(1+|nl_i v|)`` (``nl_vec``), output noise (std per output ``noise_vec``),
        the ADC's transfer (``adc_offset``, ``adc_gain`` per output and the INL table
        ``inl`` (3, n_points) of :func:`anasim.kernels.stages.inl_curve`; all three or
        none), ADC quantization with step ``res`` and clipping at ``±bound``. With ``bm`` a row
        fails if any output exceeded ``+bound`` (strictly, after the ADC), or ``-bound``
        when ``test_neg``. (aihwkit's CUDA batch kernels do exactly this; its CPU loop
        instead lets a later negative saturation reset the flag when ``test_neg`` is off,
        an order-dependent quirk anasim does not copy.)

        If ``acc`` is given, also adds ``((y·out_scale/scale)·ms)·post`` into
        ``acc[:, col0:col0+N]`` (the digital periphery and the accumulation over tiles).

        Returns the (M,) bool array of rows that failed the bound test.
        """
        if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 2 and y.flags.c_contiguous):
            raise ValueError("y must be a C-contiguous 2-D float32 array (it is modified in place)")
        m, n = y.shape
        skip = _vec(skip, m, "skip", np.bool_)
        row_ids = _vec(row_ids, m, "row_ids", np.int64)
        nl_on = nl_vec is not None
        nl_vec = _vec(nl_vec, n, "nl_vec") if nl_on else _EMPTY1
        noise_on = noise_vec is not None
        noise_vec = _vec(noise_vec, n, "noise_vec") if noise_on else _EMPTY1
        wn_type = int(wn_type) if w_noise > 0 else WN_NONE
        xnorm = _vec(xnorm, m, "xnorm") if wn_type == WN_ADDITIVE else _EMPTY1
        pw = _f32_2d(pw, "pw") if wn_type == WN_PCM_READ else _EMPTY2
        if ir_drop > 0:
            cur, irm = _f32_2d(cur, "cur"), _f32_2d(irm, "irm")
            if cur.shape != y.shape or irm.shape != y.shape:
                raise ValueError("cur and irm must have the shape of y")
        else:
            cur = irm = _EMPTY2
        if wn_type == WN_PCM_READ and pw.shape != y.shape:
            raise ValueError("pw must have the shape of y")
        accumulate = acc is not None
        if accumulate:
            if not (acc.dtype == np.float32 and acc.ndim == 2 and acc.flags.c_contiguous):
                raise ValueError("acc must be a C-contiguous 2-D float32 array")
            if acc.shape[0] != m or col0 < 0 or col0 + n > acc.shape[1]:
                raise ValueError("acc does not fit y at col0")
            scale = _vec(scale, m, "scale")
            ms = _vec(np.ones(n, np.float32) if ms is None else ms, n, "ms")
            post = _vec(np.ones(n, np.float32) if post is None else post, n, "post")
        else:
            acc, scale, ms, post = _EMPTY2, _EMPTY1, _EMPTY1, _EMPTY1
        adc_on = adc_gain is not None
        if adc_on:
            adc_offset, adc_gain = _vec(adc_offset, n, "adc_offset"), _vec(adc_gain, n, "adc_gain")
            inl = _EMPTY_INL if inl is None else np.ascontiguousarray(inl, dtype=np.float32)
            if inl.ndim != 2 or inl.shape[0] != 3:
                raise ValueError(f"inl must have shape (3, n_points), got {inl.shape}")
        else:
            adc_offset = adc_gain = _EMPTY1
            inl = _EMPTY_INL
        fail = np.empty(m, dtype=np.bool_)
        kernel(
            y, skip, cur, irm, pw, xnorm, np.float32(res), np.float32(bound), bool(bm),
            bool(test_neg), nl_on, nl_vec, np.float32(nlf), noise_vec, noise_on,
            bool(sto_round), np.int64(wn_type), np.float32(w_noise), np.float32(ir_drop),
            np.float32(a_scale), row_ids, np.int64(rnd),
            np.uint64(noise_key[0]), np.uint64(noise_key[1]), np.uint64(w_key[0]),
            np.uint64(w_key[1]), np.uint64(sto_key[0]), np.uint64(sto_key[1]), fail,
            accumulate, scale, np.float32(out_scale), ms, post, acc, np.int64(col0),
            adc_on, adc_offset, adc_gain, inl,
        )
        return fail

    return finalize_output


finalize_output = _make_finalize_output(_finalize_output)
finalize_output_serial = _make_finalize_output(_finalize_output_serial)
finalize_output_serial.__doc__ = (
    ":func:`finalize_output` with a single-threaded, GIL-free kernel: for worker threads that "
    "each process a block of rows (same arguments, same result).")
finalize_output_serial.__name__ = finalize_output_serial.__qualname__ = "finalize_output_serial"


def _make_accumulate_output(kernel):
    """The wrapper :func:`accumulate_output` around ``kernel`` (the parallel or the serial one)."""

    def accumulate_output(y, scale, acc, col0=0, *, out_scale=1.0, ms=None, post=None):
        """``acc[:, col0:col0+N] += ((y · out_scale/scale) · ms) · post`` (float32, row-parallel)."""
        y = _f32_2d(y, "y")
        m, n = y.shape
        if not (acc.dtype == np.float32 and acc.ndim == 2 and acc.flags.c_contiguous):
            raise ValueError("acc must be a C-contiguous 2-D float32 array")
        if acc.shape[0] != m or col0 < 0 or col0 + n > acc.shape[1]:
            raise ValueError("acc does not fit y at col0")
        scale = _vec(scale, m, "scale")
        ms = _vec(np.ones(n, np.float32) if ms is None else ms, n, "ms")
        post = _vec(np.ones(n, np.float32) if post is None else post, n, "post")
        kernel(y, scale, np.float32(out_scale), ms, post, acc, np.int64(col0))

    return accumulate_output


accumulate_output = _make_accumulate_output(_accumulate_output)
accumulate_output_serial = _make_accumulate_output(_accumulate_output_serial)
accumulate_output_serial.__doc__ = (
    ":func:`accumulate_output` with a single-threaded, GIL-free kernel: for worker threads that "
    "each process a block of rows (same arguments, same result).")
accumulate_output_serial.__name__ = accumulate_output_serial.__qualname__ = "accumulate_output_serial"


def _make_input_cycle(kernel):
    """The wrapper :func:`input_cycle` around ``kernel`` (the parallel or the serial one)."""

    def input_cycle(xt, res, drive, cycle, bits, n_cycles, twos):
        """Bit-serial input: the (M, K) drives of cycle ``cycle`` of the DAC outputs ``xt``
        (:func:`anasim.kernels.stages.input_cycle` per element)."""
        xt = _f32_2d(xt, "xt")
        out = np.empty_like(xt)
        kernel(xt, np.float32(res), np.float32(drive), np.int64(cycle), np.int64(bits), np.int64(n_cycles),
               bool(twos), out)
        return out

    return input_cycle


input_cycle = _make_input_cycle(_input_cycle)
input_cycle_serial = _make_input_cycle(_input_cycle_serial)
input_cycle_serial.__name__ = input_cycle_serial.__qualname__ = "input_cycle_serial"


def warmup() -> None:
    """Compile (or load from cache) every kernel on tiny data, with all features on."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    rows = np.arange(3, dtype=np.int64)
    p = prepare_input(x, 0, 8, rows, res=1 / 127, inp_noise=0.1, sto_round=True,
                      want_norm=True, want_sq=True, want_ir=True)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    y = p["xt"] @ w.T
    acc = np.zeros((3, 4), np.float32)
    finalize_output(
        y, p["skip"], rows, res=0.01, bound=10.0, bm=True, nl_vec=np.ones(4, np.float32),
        noise_vec=np.ones(4, np.float32), sto_round=True, wn_type=WN_PCM_READ, w_noise=0.1,
        pw=p["xsq"] @ np.abs(w).T, ir_drop=1.0, a_scale=1e-3, cur=p["xabs"] @ np.abs(w).T,
        irm=p["xir"] @ w.T, acc=acc, scale=p["scale"], adc_offset=np.zeros(4, np.float32),
        adc_gain=np.ones(4, np.float32), inl=np.array([[-1, 1], [-1, 1], [1, 1]], np.float32),
    )
    accumulate_output(y, p["scale"], acc)
    p = prepare_input_serial(x, 0, 8, rows, res=1 / 127, inp_noise=0.1, sto_round=True,
                             want_norm=True, want_sq=True, want_ir=True)
    y = p["xt"] @ w.T
    finalize_output_serial(
        y, p["skip"], rows, res=0.01, bound=10.0, bm=True, nl_vec=np.ones(4, np.float32),
        noise_vec=np.ones(4, np.float32), sto_round=True, wn_type=WN_PCM_READ, w_noise=0.1,
        pw=p["xsq"] @ np.abs(w).T, ir_drop=1.0, a_scale=1e-3, cur=p["xabs"] @ np.abs(w).T,
        irm=p["xir"] @ w.T, acc=acc, scale=p["scale"], adc_offset=np.zeros(4, np.float32),
        adc_gain=np.ones(4, np.float32), inl=np.array([[-1, 1], [-1, 1], [1, 1]], np.float32),
    )
    accumulate_output_serial(y, p["scale"], acc)
