"""Fused analog convolution on the CPU: im2col, the tile periphery and the MVM in one kernel.

:func:`analog_conv` runs a whole analog 1-D/2-D convolution layer (every group, every
tile) without returning to Python. The layer's rows -- one per output pixel, (n, p)
order, global row id ``first + r`` -- are cut into blocks of ``rows`` consecutive rows;
chunk ``wk`` of ``workers`` chunks (one call each, without the GIL: :mod:`anasim.analog.fused`
deals a few chunks per thread out to the convolution's worker threads) takes blocks
wk, wk + workers, …, and per block and tile:

1. the tile's prepared inputs, *transposed* (tile inputs × pixels): the noise-management
   statistic of every pixel from a per-pixel channel-max map of the input (the max of the
   map over the receptive field is exactly the max over the pixel's im2col row, at a
   fraction of the work), then the DAC applied while the inputs are gathered from the
   zero-padded input (:func:`_map_stat`, :func:`_input_scales`, :func:`_gather_dac`): for
   every input column the pixels of one output row are a contiguous (stride 1) or strided
   slice of the input, so the loops vectorise. Tiles whose inputs end inside a channel's
   taps, and stochastic DAC rounding, take the general route: gather, statistic, DAC
   (:func:`_gather`, :func:`_condition`). Then input noise and the by-products of the
   output-referred non-idealities (:func:`_after_dac`). Reused by the tiles of the same
   input chunk when the input is deterministic;
2. the MVM ``W_tile @ block`` with sgemm called from the kernel (:mod:`.blas`, the library
   NumPy uses: the same sums as ``np.matmul``), then IR drop, weight noise,
   non-linearity, output noise, ADC, clipping and the bound-management test
   (:func:`_finalize`);
3. iterative bound management re-runs only the saturated pixels (gathered again, at
   reduction 2, 4, …; :func:`_rerun`);
4. scaling and accumulation over the tiles (:func:`_accumulate`); after the last tile,
   bias and the NCHW layout (:func:`_layout`).

The formulas are :mod:`.stages`; the random numbers are those of :mod:`.rng` at (row id,
element, round), made by :func:`.cpu._random_block` in the transposed layout. The result
is the one of :class:`anasim.analog.tile.AnalogMatrix` on the im2col rows: the same
float32 operations per value in the same order. sgemm's sums (W · Xᵀ here, X · Wᵀ there)
agree bit for bit for the sizes of real layers; OpenBLAS's small-matrix kernels (products
under about 10⁶ multiply-adds) may round the last bit differently.

Layer description (built by :mod:`anasim.analog.fused`): ``tiles`` (T, 10) int64 rows
``(in0, n_in, out0, n_out, w_off, v_off, o_off, new_input, mode, channel)``, in processing order (group,
input chunk, output chunk); ``offs`` the flat offsets, from a pixel's receptive-field
origin in the padded input, of each tile column's input (-1: the constant 1 of an analog
bias); ``wflat``/``awflat`` the tiles'
weights and |weights| (row-major, at ``w_off``); ``vecs`` (6, Σ n_out) rows mapping scale,
post scale, non-linearity, output-noise std, ADC offset and ADC gain (at ``v_off``; the
last two read only when ``pp.adc_on``, with the INL table ``inl`` of
:func:`.stages.inl_curve`); ``nlf`` (T,); ``keys`` (T, 10)
the Philox keys (inp_noise, out_noise, w_noise, inp_sto_round, out_sto_round); ``mode``
the index of the tile's channel map (``maps``, made by :func:`channel_maps` for the channel
ranges the tiles cover), :data:`MAP_DIRECT` when the tile's inputs are one channel
(``channel``; depthwise: the input itself is the map, :func:`_tap_stat`), :data:`MAP_NONE`
when the statistic is not needed (noise management none or constant) or :data:`MAP_GENERIC`.

Two layouts of the padded input: (N, C, Hp, Wp), whenever a tile reads a channel map; and
for grouped and depthwise layers without maps the unit-stride layout of :func:`pad_phases`
(channel-major, split by stride phase), in which every input of a one-channel tile is one
contiguous run over all the images of a block: its statistic (:func:`_tap_stat`) and its
DAC and MVM (:func:`_dac_dot`) are a few long vectorised loops per block, at any stride
and image size (MobileNetV2's 4×4 to 32×32 depthwise layers, strides 1 and 2).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import stages as S
from .blas import SGEMM_NAME, SMALL_PRODUCT, sgemm_type
from .cpu import _random_block
from .simd import wide_vectors

_U = np.uint64

__all__ = ["analog_conv", "analog_conv_parallel", "channel_maps", "pad_input", "pad_and_maps", "pad_phases",
           "span_of_blocks", "zero_margins", "gemm_width", "GEMM_ALIGN", "available", "STAGES", "cycles_per_second", "MAP_GENERIC", "MAP_NONE", "MAP_DIRECT"]

_sgemm = sgemm_type() if SGEMM_NAME else None
_ROW_MAJOR, _NO_TRANS = np.int32(101), np.int32(111)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_I31 = np.int32(0x7FFFFFFF)
_S31 = np.int32(31)
_IMIN = np.int32(-2147483648)
MAP_GENERIC, MAP_NONE, MAP_DIRECT = -1, -2, -3
"""Tile modes (column 8 of ``tiles``; >= 0: the index of the tile's channel map)."""


STAGES = ("input statistic", "gather + DAC", "input noise, by-products", "MVM (sgemm)",
          "output stages", "random numbers (output)", "bound-management re-runs", "accumulate + layout")
"""The stages :func:`analog_conv` times when given a ``prof`` array (cycles per worker and stage;
"output stages" includes the "random numbers (output)" it draws)."""


@intrinsic
def _cycles(typingctx):
    """The CPU's cycle counter (``llvm.readcyclecounter``: rdtsc on x86)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@njit(inline="always", error_model="numpy")
def _now(prof):
    """The cycle counter when profiling, else 0."""
    return _cycles() if prof.size else 0


@njit(inline="always", error_model="numpy")
def _tick(prof, wk, stage, t0):
    """Add the cycles since ``t0`` to ``prof[wk, stage]`` (when profiling); the new t0."""
    if prof.size == 0:
        return t0
    t1 = _cycles()
    prof[wk, stage] += t1 - t0
    return t1


@njit(cache=True)
def _read_cycles():
    wide_vectors()
    return _cycles()


def cycles_per_second(seconds: float = 0.05) -> float:
    """The cycle counter's rate (measured against ``time.perf_counter`` over ``seconds``)."""
    import time

    _read_cycles()
    t0, c0 = time.perf_counter(), _read_cycles()
    while time.perf_counter() - t0 < seconds:
        pass
    return (_read_cycles() - c0) / (time.perf_counter() - t0)


def available() -> bool:
    """Whether the fused kernels can run here (NumPy's BLAS exports an ILP64 CBLAS sgemm)."""
    return _sgemm is not None


@njit(nogil=True, cache=True, error_model="numpy")
def _random_cols(rid, q, n, rnd, k0, k1, normal, ws, tmp, out):
    """out[0:n, 0:q] = normals (uniforms) of elements 0..n-1 of the rows ``rid[0:q]``."""
    wide_vectors()
    _random_block(rid, 0, q, n, rnd, k0, k1, normal, ws, tmp, out, True)


@njit(inline="always", error_model="numpy")
def _run_at(r, r1, p_, ow, whole):
    """The run of pixels from row r (< r1) along one output row: image n, output row i,
    first output column k0 and length (P pixels per image, ``ow`` per output row); with
    ``whole`` (:func:`_whole_rows`) to the end of the image."""
    n = r // p_
    q = r - n * p_
    i = q // ow
    k0 = q - i * ow
    return n, i, k0, min(p_ - q if whole else ow - k0, r1 - r)


@njit(inline="always", error_model="numpy")
def _whole_rows(sh, sw, wp, ow):
    """Whether an image's output pixels read their taps at one flat offset from pixel p (+
    the tap's): unit strides and an input row as wide as an output row (1 x 1 and k x 1
    kernels without padding along the rows), so a run of pixels may go on across output
    rows to the end of the image (MobileNetV2's 1 x 1 layers: runs of 16 to 1024 pixels
    instead of rows of 4 to 32)."""
    return sh == 1 and sw == 1 and wp == ow


@njit(nogil=True, cache=True, error_model="numpy")
def _gather(xf, img, wp, p_, ow, sh, sw, offs, r0, r1, xt):
    """xt[j, r - r0] = input of tile column j of im2col row r, for rows r0..r1."""
    nk = offs.size
    whole = _whole_rows(sh, sw, wp, ow)
    b = 0
    r = r0
    while r < r1:
        n, i, k0, cnt = _run_at(r, r1, p_, ow, whole)
        base = n * img + i * sh * wp + k0 * sw
        for j in range(nk):
            o = offs[j]
            dst = xt[j, b:b + cnt]
            if o < 0:
                for t in range(cnt):
                    dst[t] = _F1
            elif sw == 1:
                src = xf[base + o:base + o + cnt]
                for t in range(cnt):
                    dst[t] = src[t]
            else:
                src = xf[base + o:base + o + (cnt - 1) * sw + 1]
                for t in range(cnt):
                    dst[t] = src[t * sw]
        b += cnt
        r += cnt


@njit(nogil=True, cache=True, error_model="numpy")
def _gather_rows(xf, img, wp, p_, ow, sh, sw, offs, rows, q, xt):
    """xt[j, t] = input of tile column j of im2col row ``rows[t]`` (the re-run pixels)."""
    wide_vectors()
    for t in range(q):
        r = rows[t]
        n = r // p_
        qq = r - n * p_
        i = qq // ow
        base = n * img + i * sh * wp + (qq - i * ow) * sw
        for j in range(offs.size):
            o = offs[j]
            xt[j, t] = _F1 if o < 0 else xf[base + o]


@njit(nogil=True, cache=True, error_model="numpy")
def _pad_planes(x, a, c_lo, c_hi, ph, pw, xp):
    """xp[a, c] = x[a, c, :hh, :ww] zero-padded at (ph, pw) for channels c_lo..c_hi of image
    ``a`` (hh, ww: what fits; rows and columns past every tap are dropped)."""
    wide_vectors()
    hp, wp = xp.shape[2], xp.shape[3]
    hh = min(x.shape[2], hp - ph)
    ww = min(x.shape[3], wp - pw)
    for b in range(c_lo, c_hi):
        dst = xp[a, b]
        src = x[a, b]
        for i in range(hp):
            row = dst[i]
            if i < ph or i >= ph + hh:
                for j in range(wp):
                    row[j] = _F0
                continue
            for j in range(pw):
                row[j] = _F0
            inner = row[pw:pw + ww]
            sr = src[i - ph]
            for j in range(ww):
                inner[j] = sr[j]
            for j in range(pw + ww, wp):
                row[j] = _F0


@njit(parallel=True, cache=True, error_model="numpy")
def pad_input(x, ph, pw, xp):
    """xp = x zero-padded: x[:, :, :hh, :ww] at (ph, pw) of xp (N, C, Hp, Wp), with hh, ww
    what fits (rows and columns past every tap are dropped), zeros elsewhere; parallel
    over (image, channel)."""
    wide_vectors()
    n, c = x.shape[0], x.shape[1]
    for k in prange(n * c):
        _pad_planes(x, k // c, k % c, k % c + 1, ph, pw, xp)


@njit(parallel=True, cache=True, error_model="numpy")
def pad_and_maps(x, ph, pw, xp, ranges, nm, maps):
    """:func:`pad_input` and :func:`channel_maps` in one pass, parallel over the images:
    each image's maps are taken from its padded planes just written (still in cache)
    instead of a second pass over the whole padded input."""
    wide_vectors()
    n, c = x.shape[0], x.shape[1]
    for a in prange(n):
        _pad_planes(x, a, 0, c, ph, pw, xp)
        for m in range(ranges.shape[0]):
            _channel_map(xp, a, ranges[m, 0], ranges[m, 1], nm, maps[m, a])


@njit(parallel=True, cache=True, error_model="numpy")
def pad_phases(x, ph, pw, sh, sw, hs, ws, xp):
    """The unit-stride layout of one-channel tiles: x (N, C, H, W) zero-padded at (ph, pw)
    and split by stride phase into ``xp``, flat (C, sh·sw, N, hs, ws): phase (u, v) of
    channel c and image n holds the padded input's rows u, u + sh, … and columns v,
    v + sw, … (zeros past the input). Tap (a, e) of output pixel (i, k) is then element
    ((a·dh) // sh, (e·dw) // sw) past (i, k) of phase ((a·dh) % sh, (e·dw) % sw): every tap
    of a block of pixels is one contiguous run, and one channel's planes of consecutive
    images are consecutive. Parallel over channels (flat uint64 indices: ops.im2col's
    Numba note). Narrow planes (ws <= 16: MobileNetV2's 4×4 and 8×8 maps, stride-2
    phases) are zeroed whole and the input rows copied in -- one short loop per row
    instead of three (Zen 2: 2.1 -> 0.6 ns per input value at 4×4); wider rows get their
    margins zeroed around the copy."""
    wide_vectors()
    n, c, h, w = x.shape
    s = sh * sw
    plane = hs * ws
    xf = x.reshape(-1)
    narrow = ws <= 16
    for ci in prange(c):
        for f in range(s):
            u0 = f // sw
            v0 = f - u0 * sw
            v_lo = min(ws, max(0, -((v0 - pw) // sw)))  # the plane's columns that hold input
            v_hi = min(ws, max(v_lo, -((v0 - pw - w) // sw)))
            i_lo = min(hs, max(0, -((u0 - ph) // sh)))  # ... and its rows
            i_hi = min(hs, max(i_lo, -((u0 - ph - h) // sh)))
            cnt = _U(v_hi - v_lo)
            usw = _U(sw)
            for a in range(n):
                d = _U(((ci * s + f) * n + a) * plane)
                if narrow:
                    for j in range(_U(plane)):
                        xp[d + j] = _F0
                else:
                    for j in range(_U(i_lo * ws)):
                        xp[d + j] = _F0
                    for j in range(_U(i_hi * ws), _U(plane)):
                        xp[d + j] = _F0
                for i in range(i_lo, i_hi):
                    row = d + _U(i * ws)
                    if not narrow:
                        for j in range(_U(v_lo)):
                            xp[row + j] = _F0
                        for j in range(_U(v_hi), _U(ws)):
                            xp[row + j] = _F0
                    dst = row + _U(v_lo)
                    src = _U(((a * c + ci) * h + i * sh + u0 - ph) * w + v_lo * sw + v0 - pw)  # column v_lo's input
                    if sw == 1:
                        for j in range(cnt):
                            xp[dst + j] = xf[src + j]
                    else:
                        for j in range(cnt):
                            xp[dst + j] = xf[src + j * usw]


@njit(parallel=True, cache=True, error_model="numpy")
def zero_margins(xp, planes, hs, ws, ph, pw, h, w):
    """Zero the margins of ``planes`` planes of hs × ws (flat ``xp``) around an h × w
    interior at (ph, pw): the padding of :func:`pad_phases` at unit stride, for outputs
    written straight into that layout (:func:`analog_conv`'s ``olay``)."""
    plane = hs * ws
    for k in prange(planes):
        d = _U(k * plane)
        for j in range(_U(ph * ws)):
            xp[d + j] = _F0
        for j in range(_U((ph + h) * ws), _U(plane)):
            xp[d + j] = _F0
        for i in range(ph, ph + h):
            row = d + _U(i * ws)
            for j in range(_U(pw)):
                xp[row + j] = _F0
            for j in range(_U(pw + w), _U(ws)):
                xp[row + j] = _F0


@njit(nogil=True, cache=True, error_model="numpy")
def _channel_map(xp, n, c_lo, c_hi, nm, out):
    """out[h, w] = the noise-management key (see :func:`_block_stat`) of max over channels
    c_lo..c_hi of image ``n`` of the padded input at (h, w): the statistic of a pixel is
    then the max of this map over its receptive field (exactly the max over its inputs)."""
    wide_vectors()
    hp, wp = xp.shape[2], xp.shape[3]
    of = out.reshape(-1)
    for i in range(hp * wp):
        of[i] = 0 if nm == S.NM_ABS_MAX else _IMIN
    for c in range(c_lo, c_hi):
        xi = xp[n, c].reshape(-1).view(np.int32)
        if nm == S.NM_ABS_MAX:
            for i in range(hp * wp):
                of[i] = max(of[i], xi[i] & _I31)
        else:
            for i in range(hp * wp):
                v = xi[i]
                of[i] = max(of[i], v ^ ((v >> _S31) & _I31))


@njit(parallel=True, cache=True, error_model="numpy")
def channel_maps(xp, ranges, nm, maps):
    """:func:`_channel_map` of every (channel range, image), in parallel."""
    wide_vectors()
    n = xp.shape[0]
    for k in prange(ranges.shape[0] * n):
        m, i = k // n, k % n
        _channel_map(xp, i, ranges[m, 0], ranges[m, 1], nm, maps[m, i])


@njit(nogil=True, cache=True, error_model="numpy")
def _map_stat(maps, idx, p_, ow, sh, sw, kh, kw, dh, dw, has_one, nm, r0, r1, stat):
    """stat[t] = max of channel map ``idx`` of ``maps`` (n_maps, N, Hp, Wp) over the
    receptive field of pixel r0 + t (and the key of 1.0 when the tile has an analog bias's
    constant input)."""
    b = 0
    r = r0
    one = np.int32(0x3F800000)  # 1.0f: its abs_max key and its max key
    hp, wp = maps.shape[2], maps.shape[3]
    mf = maps.reshape(-1)
    usw = _U(sw)
    whole = _whole_rows(sh, sw, wp, ow)
    while r < r1:  # flat uint64 indices (ops.im2col's Numba note)
        n, i, k0, cnt = _run_at(r, r1, p_, ow, whole)
        ub = _U(b)
        uc = _U(cnt)
        for t in range(uc):
            stat[ub + t] = one if has_one else (0 if nm == S.NM_ABS_MAX else _IMIN)
        for a in range(kh):
            row = ((idx * maps.shape[1] + n) * hp + i * sh + a * dh) * wp
            for e in range(kw):
                seg = _U(row + k0 * sw + e * dw)
                if sw == 1:
                    for t in range(uc):
                        stat[ub + t] = max(stat[ub + t], mf[seg + t])
                else:
                    for t in range(uc):
                        stat[ub + t] = max(stat[ub + t], mf[seg + t * usw])
        b += cnt
        r += cnt


@njit(inline="always", error_model="numpy")
def _origin(r, p_, ow, wp, img):
    """Flat offset, in a unit-stride layout (:func:`pad_phases`: images ``img`` apart, rows
    ``wp``), of the receptive-field origin of pixel r (P = ``p_`` pixels per image)."""
    n = r // p_
    q = r - n * p_
    i = q // ow
    return n * img + i * wp + (q - i * ow)


@njit(nogil=True, cache=True, error_model="numpy")
def span_of_blocks(total, rows, p_, ow, wp, img):
    """The longest flat span (:func:`_origin` of a block's last pixel minus its first's,
    plus 1) of the blocks of ``rows`` pixels: the scratch the flat loops of one-channel
    tiles need."""
    m = 0
    for r0 in range(0, total, rows):
        r1 = min(total, r0 + rows)
        m = max(m, _origin(r1 - 1, p_, ow, wp, img) - _origin(r0, p_, ow, wp, img) + 1)
    return m


@njit(nogil=True, cache=True, error_model="numpy")
def _move(v, img, wp, p_, ow, r0, r1, out, spread):
    """Between a flat span of the unit-stride layout and block order: out[t] = v[origin of
    pixel r0 + t - origin of pixel r0] (or, ``spread``, out[that] = v[t]), output row by
    output row, the next row's origin stepped to without a division (four per row cost
    more than the copies of rows of 4 pixels). Flat uint64 indices: ops.im2col's Numba note."""
    n = r0 // p_
    q = r0 - n * p_
    i = q // ow
    k0 = q - i * ow
    oh = p_ // ow
    at = n * img + i * wp + k0
    b = 0
    total = r1 - r0
    while b < total:
        cnt = min(ow - k0, total - b)
        d = _U(n * img + i * wp + k0 - at)
        ub = _U(b)
        if spread:
            for t in range(_U(cnt)):
                out[d + t] = v[ub + t]
        else:
            for t in range(_U(cnt)):
                out[ub + t] = v[d + t]
        b += cnt
        k0 = 0
        i += 1
        if i == oh:
            i = 0
            n += 1


@njit(inline="always", error_model="numpy")
def _inputs(offs, k):
    """The inputs of a one-channel tile from column k taken in one loop: up to three
    consecutive inputs from x, or an analog bias's constant alone (offset -1). Returns the
    next column, their count c and three offsets (the last repeated when c < 3)."""
    o0 = offs[k]
    c = 1
    if o0 >= 0 and k + 1 < offs.size and offs[k + 1] >= 0:
        c = 3 if k + 2 < offs.size and offs[k + 2] >= 0 else 2
    o1 = offs[k + 1] if c >= 2 else o0
    o2 = offs[k + 2] if c == 3 else o1
    return k + c, c, o0, o1, o2


@njit(inline="always", error_model="numpy")
def _key(a, nm):
    """The noise-management key of an input's float32 bits ``a`` (see :func:`_block_stat`)."""
    if nm == S.NM_ABS_MAX:
        return a & _I31
    return a ^ ((a >> _S31) & _I31)


@njit(inline="always", error_model="numpy")
def _tap_grid(offs, kh, kw):
    """Whether a one-channel tile's inputs are all kh·kw taps of its channel (an analog
    bias's constant after them), each at F(a) + G(e): tap (a, e) at the offset of row a's
    first tap plus that of tap e past row 0's first, and kh >= 2 (the separable statistic
    pays). True of every :data:`MAP_DIRECT` tile of a 2-D kernel in the layout of
    :func:`pad_phases`; checked, not assumed."""
    n_in = offs.size - (1 if offs[offs.size - 1] < 0 else 0)
    if kh < 2 or n_in != kh * kw:
        return False
    for a in range(kh):
        for e in range(kw):
            if offs[a * kw + e] != offs[a * kw] + offs[e] - offs[0]:
                return False
    return True


@njit(nogil=True, cache=True, error_model="numpy")
def _tap_stat(xi, img, wp, p_, ow, offs, kh, kw, has_one, nm, r0, r1, hm, hh, stat):
    """stat[t] = the noise-management key (see :func:`_block_stat`) of the max over the
    inputs of pixel r0 + t of a one-channel tile (its own channel is its map), in the
    unit-stride layout of :func:`pad_phases` (``xi``: its float32 bits): every input one
    contiguous loop over the block's flat span of the padded planes (the positions in it
    that are no pixel's origin -- row ends, padding rows, the image boundaries -- are
    computed and dropped), then the pixels taken out in block order. Maxima of integer
    keys: exact in any order, the numbers of :func:`_block_stat` on the gathered inputs.

    A full kernel (:func:`_tap_grid`) is taken separably: the max over a kernel row's
    taps first (``hh``: scratch of kh times the span), for each distinct run of the
    rows' flat positions once (stride 1: the kh rows share one run, ``wp`` apart), then
    the max over the kh rows -- 2 kh loads per position instead of kh·kw."""
    wide_vectors()
    at = _origin(r0, p_, ow, wp, img)
    m = _origin(r1 - 1, p_, ow, wp, img) - at + 1
    v = hm[:m]
    init = np.int32(0) if nm == S.NM_ABS_MAX else _IMIN
    first = np.int32(0x3F800000) if has_one else init  # 1.0f: its abs_max key and its max key
    for j in range(m):
        v[j] = first
    if _tap_grid(offs, kh, kw):
        _tap_stat_grid(xi, at, m, offs, kh, kw, nm, v, hh)
    else:
        k = 0
        while k < offs.size:  # three inputs per loop (one pass per input vectorised 7x slower)
            k, c, o0, o1, o2 = _inputs(offs, k)
            if o0 < 0:
                continue
            s0 = xi[at + o0:at + o0 + m]  # the last pixel's inputs end the span: inside the input
            s1 = xi[at + o1:at + o1 + m]  # (fewer than three left: the last repeated, a max is the same)
            s2 = xi[at + o2:at + o2 + m]
            for j in range(m):
                v[j] = max(max(v[j], _key(s0[j], nm)), max(_key(s1[j], nm), _key(s2[j], nm)))
    _move(v, img, wp, p_, ow, r0, r1, stat, False)


@njit(inline="always", error_model="numpy")
def _tap_stat_grid(xi, at, m, offs, kh, kw, nm, v, hh):
    """:func:`_tap_stat`'s separable maxima into ``v`` (m positions from ``at``) for taps
    on a grid (:func:`_tap_grid`). The rows' offsets F(a) are taken in increasing order
    and joined into runs where their spans [F(a), F(a) + m) overlap; the row maxima
    h[i] = max_e key(x[at + i + G(e)]) are made once per run position, three taps per loop,
    then v = max over rows of h at F(a) + j, three rows per loop."""
    order = np.empty(kh, np.int64)  # rows by increasing F (insertion sort of a few)
    for a in range(kh):
        b = a
        while b > 0 and offs[order[b - 1] * kw] > offs[a * kw]:
            order[b] = order[b - 1]
            b -= 1
        order[b] = a
    hoff = np.empty(kh, np.int64)  # row a's maxima start at hh[hoff[a]]
    used = 0
    b = 0
    while b < kh:  # one run of overlapping rows
        f0 = offs[order[b] * kw]
        e_ = b + 1
        while e_ < kh and offs[order[e_] * kw] < offs[order[e_ - 1] * kw] + m:
            e_ += 1
        n_run = offs[order[e_ - 1] * kw] - f0 + m
        h = hh[used:used + n_run]
        base = at + f0 - offs[0]  # + G(e) = offs[e]: the first tap of row 0 removed once
        e = 0
        while e < kw:
            c = min(3, kw - e)
            g0 = base + offs[e]
            g1 = base + offs[e + min(1, c - 1)]
            g2 = base + offs[e + c - 1]
            s0 = xi[g0:g0 + n_run]
            s1 = xi[g1:g1 + n_run]
            s2 = xi[g2:g2 + n_run]
            if e == 0:
                for i in range(n_run):
                    h[i] = max(_key(s0[i], nm), max(_key(s1[i], nm), _key(s2[i], nm)))
            else:
                for i in range(n_run):
                    h[i] = max(h[i], max(_key(s0[i], nm), max(_key(s1[i], nm), _key(s2[i], nm))))
            e += c
        for k in range(b, e_):
            hoff[order[k]] = used + offs[order[k] * kw] - f0
        used += n_run
        b = e_
    a = 0
    while a < kh:
        c = min(3, kh - a)
        h0 = hh[hoff[a]:hoff[a] + m]
        h1 = hh[hoff[a + min(1, c - 1)]:hoff[a + min(1, c - 1)] + m]
        h2 = hh[hoff[a + c - 1]:hoff[a + c - 1] + m]
        for j in range(m):
            v[j] = max(max(v[j], h0[j]), max(h1[j], h2[j]))
        a += c


SMALL_DOT = 64
"""One-output tiles with at most this many inputs are summed in the kernel, not by sgemm
(see :func:`_gemm`)."""

SHORT_RUNS = 16
"""With output rows narrower than this the noise-management statistic is taken pixel by
pixel (:func:`_map_stat_px`): one loop per tap over the whole block instead of one per
output row and tap, whose set-up costs more than a row of 8 or 4 pixels (MobileNetV2: the
statistic 26 % faster). The DAC gather stays per row: its loads by pixel were no faster.
Layers whose runs go on to the end of the image (:func:`_whole_rows`) keep the runs."""


@njit(nogil=True, cache=True, error_model="numpy")
def _pixel_origins(r0, r1, p_, ow, sh, sw, wp, pix, pimg):
    """pix[t], pimg[t]: the offset inside its padded image plane of pixel r0 + t's receptive
    field origin (row i·sh, column k·sw) and the pixel's image."""
    wide_vectors()
    for t in range(r1 - r0):
        r = r0 + t
        n = r // p_
        q = r - n * p_
        i = q // ow
        pix[t] = i * sh * wp + (q - i * ow) * sw
        pimg[t] = n


@njit(nogil=True, cache=True, error_model="numpy")
def _map_stat_px(maps, idx, pix, pimg, q, kh, kw, dh, dw, wp, has_one, nm, bt, stat):
    """:func:`_map_stat` for short output rows: the same maxima (of integer keys, so in any
    order), one loop per tap over all q pixels of the block (``bt``: scratch)."""
    wide_vectors()
    plane = maps.shape[2] * maps.shape[3]
    for t in range(q):
        bt[t] = (idx * maps.shape[1] + pimg[t]) * plane + pix[t]
    sf = maps.reshape(-1)
    one = np.int32(0x3F800000)
    st = stat[:q]
    b = bt[:q]
    for t in range(q):
        st[t] = one if has_one else (0 if nm == S.NM_ABS_MAX else _IMIN)
    for a in range(kh):
        for e in range(kw):
            off = a * dh * wp + e * dw
            for t in range(q):
                st[t] = max(st[t], sf[np.uint64(b[t] + off)])


@njit(nogil=True, cache=True, error_model="numpy")
def _gather_dac(xf, img, wp, p_, ow, sh, sw, offs, r0, r1, sv, res, bound, xt):
    """:func:`_gather` with the DAC (:func:`.stages.dac`, scale ``sv`` per pixel) applied
    on the way: one pass from the padded input to the tile's prepared inputs (flat uint64
    indices: :mod:`anasim.ops.im2col`'s Numba note)."""
    nk = offs.size
    ld = _U(xt.shape[1])
    xtf = xt.reshape(-1)
    usw = _U(sw)
    whole = _whole_rows(sh, sw, wp, ow)
    b = 0
    r = r0
    while r < r1:
        n, i, k0, cnt = _run_at(r, r1, p_, ow, whole)
        base = n * img + i * sh * wp + k0 * sw
        ub = _U(b)
        uc = _U(cnt)
        for j in range(nk):
            o = offs[j]
            d = _U(j) * ld + ub
            if o < 0:
                for t in range(uc):
                    xtf[d + t] = S.dac(_F1, sv[ub + t], res, bound)
            elif sw == 1:
                src = _U(base + o)
                for t in range(uc):
                    xtf[d + t] = S.dac(xf[src + t], sv[ub + t], res, bound)
            else:
                src = _U(base + o)
                for t in range(uc):
                    xtf[d + t] = S.dac(xf[src + t * usw], sv[ub + t], res, bound)
        b += cnt
        r += cnt


@njit(nogil=True, cache=True, error_model="numpy")
def _dac_dot(xf, img, wp, p_, ow, offs, r0, r1, sv, res, bound, w, aw, sq, flat, y, pw):
    """A one-output tile in one pass: y[0, t] = Σ_j w[j] · x̃_j and (``sq``, PCM read noise)
    pw[0, t] = Σ_j |w[j]| · x̃_j² with x̃_j = :func:`.stages.dac` of the tile's input j of
    pixel r0 + t, without writing x̃: the numbers of :func:`_gather_dac`, :func:`_after_dac`
    and :func:`_gemm` (the same float32 operations, sums in input order from 0). In the
    unit-stride layout of :func:`pad_phases`, flat over the block's span like
    :func:`_tap_stat`: the pixels' DAC scales spread to it (zeros between), every input one
    contiguous loop (scratch ``flat``: scales, sums, squares), the sums taken out in block
    order."""
    wide_vectors()
    at = _origin(r0, p_, ow, wp, img)
    m = _origin(r1 - 1, p_, ow, wp, img) - at + 1
    s = flat[0, :m]
    ya = flat[1, :m]
    pa = flat[2, :m]
    for j in range(m):
        s[j] = _F0
        ya[j] = _F0
        pa[j] = _F0
    _move(sv, img, wp, p_, ow, r0, r1, s, True)
    j = 0
    while j < offs.size:  # three inputs per loop where they are (one pass per input: 25 % slower)
        j, c, o0, o1, o2 = _inputs(offs, j)
        k0, k1, k2 = j - c, j - c + min(c - 1, 1), j - 1  # their columns
        w0, w1, w2 = w[k0], w[k1], w[k2]
        q0, q1, q2 = (aw[k0], aw[k1], aw[k2]) if sq else (_F0, _F0, _F0)
        if c == 3:
            x0 = xf[at + o0:at + o0 + m]
            x1 = xf[at + o1:at + o1 + m]
            x2 = xf[at + o2:at + o2 + m]
            if sq:
                for t in range(m):
                    st = s[t]
                    v0, v1, v2 = S.dac(x0[t], st, res, bound), S.dac(x1[t], st, res, bound), S.dac(x2[t], st, res, bound)
                    ya[t] = ((ya[t] + w0 * v0) + w1 * v1) + w2 * v2
                    pa[t] = ((pa[t] + q0 * (v0 * v0)) + q1 * (v1 * v1)) + q2 * (v2 * v2)
            else:
                for t in range(m):
                    st = s[t]
                    ya[t] = ((ya[t] + w0 * S.dac(x0[t], st, res, bound)) + w1 * S.dac(x1[t], st, res, bound)) \
                        + w2 * S.dac(x2[t], st, res, bound)
            continue
        for i in range(c):  # one at a time
            o = o0 if i == 0 else o1
            wi, qi = (w0, q0) if i == 0 else (w1, q1)
            if o < 0:
                for t in range(m):
                    v = S.dac(_F1, s[t], res, bound)
                    ya[t] += wi * v
                    pa[t] += qi * (v * v)  # (sq False: 0 + 0)
                continue
            src = xf[at + o:at + o + m]
            if sq:
                for t in range(m):
                    v = S.dac(src[t], s[t], res, bound)
                    ya[t] += wi * v
                    pa[t] += qi * (v * v)
            else:
                for t in range(m):
                    ya[t] += wi * S.dac(src[t], s[t], res, bound)
    _move(ya, img, wp, p_, ow, r0, r1, y[0], False)
    if sq:
        _move(pa, img, wp, p_, ow, r0, r1, pw[0], False)


@njit(nogil=True, cache=True, error_model="numpy")
def _buffers(nk, nout, q, pp, noise_rows, qg):
    """Scratch of one pass over ``q`` pixels of a tile with ``nk`` inputs, ``nout`` outputs;
    the operands and products of sgemm ``qg`` >= :func:`gemm_width` columns wide."""
    wide_vectors()
    want_sq = pp.wn_type == S.WN_PCM_READ
    want_ir = pp.ir_drop > _F0
    xt = np.empty((nk, qg), np.float32)
    xsq = np.empty((nk if want_sq else 0, qg), np.float32)
    xabs = np.empty((nk if want_ir else 0, qg), np.float32)
    xir = np.empty((nk if want_ir else 0, qg), np.float32)
    rin = np.empty((nk if (pp.inp_noise > _F0 or pp.inp_sto_round) else 0, q), np.float32)
    y = np.empty((nout, qg), np.float32)
    cur = np.empty((nout if want_ir else 0, qg), np.float32)
    irm = np.empty((nout if want_ir else 0, qg), np.float32)
    pw = np.empty((nout if want_sq else 0, qg), np.float32)
    zb = np.empty((nout if noise_rows else 0, q), np.float32)
    ws = np.empty((6, q), np.uint64)
    tmp = np.empty(q, np.float64)
    rowf = np.empty((5, q), np.float32)  # scale, applied scale, xnorm, out factor, input stat
    rowi = np.empty((4, q), np.int32)  # skip, fail, hi, lo
    xn64 = np.empty(q, np.float64)
    return xt, xsq, xabs, xir, rin, y, cur, irm, pw, zb, ws, tmp, rowf, rowi, xn64


@njit(nogil=True, cache=True, error_model="numpy")
def _block_stat(xt, nk, q, nm, stat):
    """stat[t] = the noise-management statistic of pixel t over its inputs xt[:, t] as an
    int32 key: the bit pattern of max |x| (abs_max; bit patterns of |x| order like |x|) or
    the order-preserving key of max x (max); see :func:`_key_to_float`."""
    wide_vectors()
    xti = xt.view(np.int32)
    if nm == S.NM_ABS_MAX:
        for t in range(q):
            stat[t] = 0
        for j in range(nk):
            xr = xti[j, :q]
            for t in range(q):
                stat[t] = max(stat[t], xr[t] & _I31)
    elif nm == S.NM_MAX:
        for t in range(q):
            stat[t] = _IMIN
        for j in range(nk):
            xr = xti[j, :q]
            for t in range(q):
                v = xr[t]
                stat[t] = max(stat[t], v ^ ((v >> _S31) & _I31))


@njit(nogil=True, cache=True, error_model="numpy")
def _key_to_float(nm, stat, q):
    """The keys of :func:`_block_stat` back to float32 bit patterns, in place."""
    wide_vectors()
    if nm == S.NM_MAX:
        for t in range(q):
            a = stat[t]
            stat[t] = a ^ ((a >> _S31) & _I31)


@njit(nogil=True, cache=True, error_model="numpy")
def _input_scales(q, pp, red, rowf, rowi):
    """rowf[0] = the applied input scale s = 1/α/red (1 for skipped pixels), rowf[1] = the
    scale the DAC multiplies by (0 for skipped pixels), rowi[0] = skip (aihwkit's short
    cut: the output is exactly 0), from the statistic in rowf[4]; returns the skip count."""
    wide_vectors()
    nm = pp.nm_type
    fstat = rowf[4, :q]
    scale = rowf[0, :q]
    sv = rowf[1, :q]
    skip = rowi[0, :q]
    nm_on = nm != S.NM_NONE
    can_skip = nm_on and pp.inp_noise <= _F0
    nskip = 0
    for t in range(q):  # branch-free, so that it vectorises
        nmv = S.noise_management(nm, pp.nm_thres, fstat[t])
        sk = can_skip and nmv <= _F0
        s = _F1 / nmv if nm_on and nmv > _F0 else _F1
        if red != _F1:  # s / 1 is s
            s = s / red
        skip[t] = sk
        scale[t] = _F1 if sk else s
        sv[t] = _F0 if sk else s
        nskip += sk
    return nskip


@njit(nogil=True, cache=True, error_model="numpy")
def _condition(xt, nk, q, pp, red, rnd, rid, key, xsq, xabs, xir, rin, ws, tmp, rowf, rowi, xn64):
    """Noise management, DAC, input noise and by-products of the pixels 0..q of ``xt`` in place
    (see :func:`_input_scales` and :func:`_after_dac` for what is written besides ``xt``)."""
    wide_vectors()
    stat = rowf[4].view(np.int32)
    _block_stat(xt, nk, q, pp.nm_type, stat)
    _key_to_float(pp.nm_type, stat, q)
    nskip = _input_scales(q, pp, red, rowf, rowi)
    svq = rowf[1, :q]
    res, bound = pp.inp_step, pp.inp_bound
    if res > _F0 and pp.inp_sto_round:
        _random_cols(rid, q, nk, rnd, key[6], key[7], False, ws, tmp, rin)
        for j in range(nk):
            xr = xt[j, :q]
            ur = rin[j, :q]
            for t in range(q):
                xr[t] = S.dac_stochastic(xr[t], svq[t], res, bound, ur[t])
    else:
        for j in range(nk):
            xr = xt[j, :q]
            for t in range(q):
                xr[t] = S.dac(xr[t], svq[t], res, bound)
    _after_dac(xt, nk, q, pp, rnd, rid, key, nskip, xsq, xabs, xir, rin, ws, tmp, rowf, rowi, xn64)


@njit(nogil=True, cache=True, error_model="numpy")
def _after_dac(xt, nk, q, pp, rnd, rid, key, nskip, xsq, xabs, xir, rin, ws, tmp, rowf, rowi, xn64):
    """After the DAC: skipped pixels' inputs to 0, input noise, and the by-products the
    output-referred non-idealities need: rowf[2] = ‖x̃‖₂ (additive weight noise), xsq = x̃²
    (PCM read noise), xabs = |x̃| and xir = IR-weighted x̃ (IR drop)."""
    wide_vectors()
    skip = rowi[0]
    if nskip:
        for j in range(nk):
            for t in range(q):
                if skip[t]:
                    xt[j, t] = _F0
    if pp.inp_noise > _F0:  # after the DAC and the bound
        _random_cols(rid, q, nk, rnd, key[0], key[1], True, ws, tmp, rin)
        for j in range(nk):
            xr = xt[j, :q]
            gr = rin[j, :q]
            for t in range(q):
                xr[t] = xr[t] + pp.inp_noise * gr[t]
    if pp.wn_type == S.WN_ADDITIVE:  # ‖x̃‖₂: a float64 sum in element order, per pixel
        for t in range(q):
            xn64[t] = 0.0
        for j in range(nk):
            xr = xt[j, :q]
            for t in range(q):
                v = np.float64(xr[t])
                xn64[t] += v * v
        xnorm = rowf[2]
        for t in range(q):
            xnorm[t] = np.float32(np.sqrt(xn64[t]))
    if pp.wn_type == S.WN_PCM_READ:
        for j in range(nk):
            xr = xt[j, :q]
            sr = xsq[j, :q]
            for t in range(q):
                sr[t] = xr[t] * xr[t]
    if pp.ir_drop > _F0:
        kf = np.float32(nk)
        for j in range(nk):
            xr = xt[j, :q]
            ar = xabs[j, :q]
            ir = xir[j, :q]
            p = _F1 - np.float32(j) / kf
            f = _F1 - p * p
            for t in range(q):
                v = xr[t]
                ar[t] = abs(v)
                ir[t] = v * f


GEMM_ALIGN = 16
"""sgemm is called on a multiple of this many pixels (the columns past the block's are
zeros): OpenBLAS rounds the last bit of its remainder columns (1 to 8 past a multiple of
16) differently from its full-width columns, so a pixel's sums would depend on where the
block ends -- on the batch size and the thread count."""

GEMM_SPLIT_K = 256
GEMM_SMALL = SMALL_PRODUCT  # one threshold with the NumPy path's (blas.rows_times)
"""Products of tiles with more than ``GEMM_SPLIT_K`` inputs (and more than one output) are
made at least ``GEMM_SMALL`` multiply-adds wide: below about 10⁶ OpenBLAS takes its
small-matrix kernel (AVX-512 builds), which sums all inputs in one run where its blocked
path splits sums of more than about 450 inputs (Zen 4: every product of 452 to 2100 inputs
under 10⁶ multiply-adds differed in the last bit; none of 1 to 441 inputs)."""


@njit(inline="always", error_model="numpy")
def gemm_width(q, nout, nk):
    """The number of pixel columns :func:`_gemm` gives sgemm for a block of ``q`` pixels
    (see :data:`GEMM_ALIGN`, :data:`GEMM_SMALL`); the buffers hold at least this many."""
    qg = (q + GEMM_ALIGN - 1) // GEMM_ALIGN * GEMM_ALIGN
    if nk > GEMM_SPLIT_K and nout > 1:
        need = GEMM_SMALL // (nout * nk) + 1
        qg = max(qg, (need + GEMM_ALIGN - 1) // GEMM_ALIGN * GEMM_ALIGN)
    return qg


@njit(nogil=True, cache=True, error_model="numpy")
def _gemm(w, nout, nk, x, q, y):
    """y[0:nout, 0:q] = w (nout × nk, row-major) @ x[0:nk, 0:q] (sgemm, leading dims of the
    arrays), on :func:`gemm_width` columns: those past q of ``x`` are zeroed first.

    A one-output tile (a depthwise channel, a one-output group) with at most
    ``SMALL_DOT`` inputs is summed here in input order, vectorised over the pixels: sgemm's
    call overhead on a 1 × nk product is larger than the product."""
    wide_vectors()
    if nout == 1 and nk <= SMALL_DOT:
        yr = y[0, :q]
        for t in range(q):
            yr[t] = _F0
        for j in range(nk):
            wj = w[j]
            xr = x[j, :q]
            for t in range(q):
                yr[t] += wj * xr[t]
        return
    qg = gemm_width(q, nout, nk)
    for j in range(nk):
        xr = x[j]
        for t in range(q, qg):
            xr[t] = _F0
    _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, nout, qg, nk, _F1, w.ctypes, nk, x.ctypes, x.shape[1],
           _F0, y.ctypes, y.shape[1])


@njit(nogil=True, cache=True, error_model="numpy")
def _finalize(y, nout, q, pp, nl_on, nl_vec, nlf, noise_on, noise_vec, a_scale, cur, irm, pw,
              rid, rnd, key, zb, ws, tmp, rowf, rowi, prof, wk, adc_off, adc_gain, inl):
    """Output stages of the pixels 0..q of ``y`` (nout × q) in place; returns the number
    of pixels that failed the bound test (rowi[1]). ``prof``: see :func:`analog_conv`."""
    wide_vectors()
    if pp.ir_drop > _F0:
        for i in range(nout):
            yr = y[i, :q]
            cr = cur[i, :q]
            mr = irm[i, :q]
            for t in range(q):
                yr[t] = S.ir_drop(yr[t], cr[t], mr[t], a_scale, pp.ir_drop)
    if pp.wn_type != S.WN_NONE:
        t0 = _now(prof)
        _random_cols(rid, q, nout, rnd, key[4], key[5], True, ws, tmp, zb)
        _tick(prof, wk, 5, t0)
        if pp.wn_type == S.WN_ADDITIVE:
            xnorm = rowf[2, :q]
            for i in range(nout):
                yr = y[i, :q]
                zr = zb[i, :q]
                for t in range(q):
                    yr[t] = yr[t] + (pp.w_noise * xnorm[t]) * zr[t]
        else:
            for i in range(nout):
                yr = y[i, :q]
                zr = zb[i, :q]
                pr = pw[i, :q]
                for t in range(q):
                    yr[t] = yr[t] + pp.w_noise * np.sqrt(pr[t]) * zr[t]
    if nl_on:
        for i in range(nout):
            yr = y[i, :q]
            nl = nl_vec[i]
            for t in range(q):
                yr[t] = S.nonlinearity(yr[t], nl, nlf)
    res, bound = pp.out_step, pp.out_bound
    sto = res > _F0 and pp.out_sto_round
    one_pass = noise_on and not pp.adc_on and not sto  # noise, ADC rounding, bound test, clip in one loop
    if noise_on:
        t0 = _now(prof)
        _random_cols(rid, q, nout, rnd, key[2], key[3], True, ws, tmp, zb)
        _tick(prof, wk, 5, t0)
        if not one_pass:
            for i in range(nout):
                yr = y[i, :q]
                zr = zb[i, :q]
                sd = noise_vec[i]
                for t in range(q):
                    yr[t] = yr[t] + sd * zr[t]
    if sto:
        t0 = _now(prof)
        _random_cols(rid, q, nout, rnd, key[8], key[9], False, ws, tmp, zb)
        _tick(prof, wk, 5, t0)
    hi = rowi[2, :q]
    lo = rowi[3, :q]
    for t in range(q):
        hi[t] = 0
        lo[t] = 0
    n_inl = inl.shape[1]
    for i in range(nout):
        if one_pass:  # the loops below, fused (the same operations in the same order)
            yr = y[i, :q]
            zr = zb[i, :q]
            sd = noise_vec[i]
            if res > _F0:
                for t in range(q):
                    v = np.rint((yr[t] + sd * zr[t]) / res) * res
                    hi[t] += v > bound
                    lo[t] += v < -bound
                    yr[t] = min(max(v, -bound), bound)
            else:
                for t in range(q):
                    v = yr[t] + sd * zr[t]
                    hi[t] += v > bound
                    lo[t] += v < -bound
                    yr[t] = min(max(v, -bound), bound)
            continue
        yr = y[i, :q]
        if pp.adc_on:  # the column's ADC offset, INL curve and gain (skipped pixels are zeroed below)
            off = adc_off[i]
            gain = adc_gain[i]
            if n_inl == 0:  # the constant 0 removes the curve's branch: the loop vectorises
                for t in range(q):
                    yr[t] = S.adc_transfer(yr[t], off, gain, inl, 0)
            else:
                for t in range(q):
                    yr[t] = S.adc_transfer(yr[t], off, gain, inl, n_inl)
        if sto:
            zr = zb[i, :q]
            for t in range(q):
                yr[t] = S.adc_stochastic(yr[t], res, zr[t])
        elif res > _F0:
            for t in range(q):
                yr[t] = np.rint(yr[t] / res) * res
        for t in range(q):
            v = yr[t]
            hi[t] += v > bound
            lo[t] += v < -bound
            yr[t] = min(max(v, -bound), bound)
    skip = rowi[0, :q]
    fail = rowi[1, :q]
    nfail = 0
    nskip = 0
    for t in range(q):  # branch-free, so that it vectorises
        f = pp.bm and not skip[t] and (hi[t] > 0 or (pp.bm_test_negative_bound and lo[t] > 0))
        fail[t] = f
        nfail += f
        nskip += skip[t]
    if nskip:
        for t in range(q):
            if skip[t]:
                for i in range(nout):
                    y[i, t] = _F0  # contributes exactly 0 to the digital sum
    return nfail


@njit(nogil=True, cache=True, error_model="numpy")
def _mvm_finalize(w, aw, nout, nk, q, xt, xsq, xabs, xir, pp, nl_on, nl_vec, nlf, noise_on,
                  noise_vec, rid, rnd, key, y, cur, irm, pw, zb, ws, tmp, rowf, rowi, prof, wk,
                  adc_off, adc_gain, inl):
    """The MVM (and the products the IR drop and PCM read noise need), then :func:`_finalize`."""
    wide_vectors()
    t0 = _now(prof)
    _gemm(w, nout, nk, xt, q, y)
    a_scale = _F0
    if pp.ir_drop > _F0:
        _gemm(aw, nout, nk, xabs, q, cur)
        _gemm(w, nout, nk, xir, q, irm)
        a_scale = np.float32(np.float32(nk) / pp.ir_drop_g_ratio)
    if pp.wn_type == S.WN_PCM_READ:
        _gemm(aw, nout, nk, xsq, q, pw)
    t0 = _tick(prof, wk, 3, t0)
    nfail = _finalize(y, nout, q, pp, nl_on, nl_vec, nlf, noise_on, noise_vec, a_scale, cur, irm, pw,
                      rid, rnd, key, zb, ws, tmp, rowf, rowi, prof, wk, adc_off, adc_gain, inl)
    _tick(prof, wk, 4, t0)
    return nfail


@njit(nogil=True, cache=True, error_model="numpy")
def _rerun(xf, img, wp, p_, ow, sh, sw, offs, w, aw, nout, nk, q, r0, pp, nl_on, nl_vec, nlf,
           noise_on, noise_vec, rid, key, y, scale, rowi, noise_rows, adc_off, adc_gain, inl):
    """Iterative bound management: run the failed pixels of the block again at reduction
    2, 4, … (their own inputs, round ``rnd`` of the random streams) until none fails or
    the stop rule holds; their outputs and input scales replace those of the first pass."""
    wide_vectors()
    fail = rowi[1]
    idx = np.empty(q, np.int64)
    m = 0
    for t in range(q):
        if fail[t]:
            idx[m] = t
            m += 1
    red = _F1
    rnd = 0
    bufs = _buffers(nk, nout, m, pp, noise_rows, gemm_width(m, nout, nk))
    xt, xsq, xabs, xir, rin, yq, cur, irm, pw, zb, ws, tmp, rowf, rowi2, xn64 = bufs
    rows = np.empty(m, np.int64)
    rid2 = np.empty(m, np.int64)
    noprof = np.zeros((0, 0), np.int64)  # the re-runs are timed as one stage by the caller
    while m > 0 and not S.bm_limit_reached(red, pp.max_bm_factor, pp.inp_step, pp.bm_red_max):
        red = np.float32(red * np.float32(2.0))
        rnd += 1
        for t in range(m):
            rows[t] = r0 + idx[t]
            rid2[t] = rid[idx[t]]
        _gather_rows(xf, img, wp, p_, ow, sh, sw, offs, rows, m, xt)
        _condition(xt, nk, m, pp, red, rnd, rid2, key, xsq, xabs, xir, rin, ws, tmp, rowf, rowi2, xn64)
        _mvm_finalize(w, aw, nout, nk, m, xt, xsq, xabs, xir, pp, nl_on, nl_vec, nlf, noise_on,
                      noise_vec, rid2, rnd, key, yq, cur, irm, pw, zb, ws, tmp, rowf, rowi2, noprof, 0,
                      adc_off, adc_gain, inl)
        m2 = 0
        for t in range(m):
            c = idx[t]
            for i in range(nout):
                y[i, c] = yq[i, t]
            scale[c] = rowf[0, t]
            if rowi2[1, t]:
                idx[m2] = c
                m2 += 1
        m = m2


@njit(nogil=True, cache=True, error_model="numpy")
def _accumulate(y, nout, q, scale, out_scale, ms, post, acc, out0, f):
    """acc[out0 + i, t] += ((y[i, t] · out_scale/scale[t]) · ms[i]) · post[i]."""
    wide_vectors()
    for t in range(q):
        f[t] = out_scale / scale[t]
    yf = y.reshape(-1)
    af = acc.reshape(-1)
    ly, la = _U(y.shape[1]), _U(acc.shape[1])
    for i in range(nout):  # flat uint64 indices (ops.im2col's Numba note)
        ys = _U(i) * ly
        as_ = _U(out0 + i) * la
        m = ms[i]
        p = post[i]
        for t in range(_U(q)):
            af[as_ + t] += ((yf[ys + t] * f[t]) * m) * p


@njit(inline="always", error_model="numpy")
def _image_run(r, p_, left):
    """The run of output rows from row r within its image: image n, first pixel p0 and
    length (at most ``left``; P pixels per image)."""
    n = r // p_
    p0 = r - n * p_
    return n, p0, min(p_ - p0, left)


@njit(inline="always", error_model="numpy")
def _out_run(r, left, olay):
    """The run of outputs from row r (at most ``left``) that are consecutive in the output
    layout ``olay`` (see :func:`analog_conv`): image n, first pixel p0, length, and the
    offset of pixel p0 in an output plane of the layout (whole images when its rows are
    dense, else one output row)."""
    n_img, oc, p_, ow, sn, sc, rp, base = olay
    n, p0, cnt = _image_run(r, p_, left)
    if rp == ow:
        return n, p0, cnt, base + p0
    i = p0 // ow
    k = p0 - i * ow
    return n, p0, min(cnt, ow - k), base + i * rp + k


@njit(nogil=True, cache=True, error_model="numpy")
def _store(y, nout, q, scale, out_scale, ms, post, bias, out, olay, out0, r0, f, lo, hi, res):
    """out[n, out0 + i, p] = ((y[i, t] · out_scale/scale[t]) · ms[i]) · post[i] + bias[out0 + i]
    for the rows r = r0 + t = n·P + p: :func:`_accumulate` and :func:`_layout` in one pass,
    for outputs that one tile computes alone (the same numbers: 0 + v is v), then the
    residual ``res[n, out0 + i, p]`` added (a following Add; ``res`` empty: none) and the
    sum clipped to [lo, hi] (a Relu/Clip after the layer or the Add; ±inf: none). ``out``:
    flat, in the layout ``olay`` (see :func:`analog_conv`). Returns the number of NaN or
    infinite values the tile computed (before the residual)."""
    wide_vectors()
    n_img, oc, p_, ow, sn, sc, rp, base = olay
    has_res = res.shape[0] > 0
    for t in range(q):
        f[t] = out_scale / scale[t]
    rf = res.reshape(-1)
    yf = y.reshape(-1)
    ld = _U(y.shape[1])
    bad = 0
    b = 0
    r = r0
    while b < q:  # flat uint64 indices (ops.im2col's Numba note)
        n, p0, cnt, at = _out_run(r, q - b, olay)
        ub = _U(b)
        uc = _U(cnt)
        for i in range(nout):
            d = _U(n * sn + (out0 + i) * sc + at)
            ys = _U(i) * ld + ub
            m = ms[i]
            pst = post[i]
            bb = bias[out0 + i]
            if has_res:
                dr = _U((n * oc + out0 + i) * p_ + p0)
                for t in range(uc):
                    v = ((yf[ys + t] * f[ub + t]) * m) * pst + bb
                    bad += not np.isfinite(v)
                    out[d + t] = min(max(v + rf[dr + t], lo), hi)
                continue
            for t in range(uc):
                v = ((yf[ys + t] * f[ub + t]) * m) * pst + bb
                bad += not np.isfinite(v)
                out[d + t] = min(max(v, lo), hi)
        b += cnt
        r += cnt
    return bad


@njit(nogil=True, cache=True, error_model="numpy")
def _layout(acc, q, bias, out, olay, r0, lo, hi, res):
    """out[n, o, p] = acc[o, r - r0] + bias[o] for the rows r = n·P + p in r0..r0+q, plus the
    residual and clipped to [lo, hi] (see :func:`_store`; ``out`` flat in the layout
    ``olay``); returns the number of NaN or infinite values (before the residual)."""
    wide_vectors()
    n_img, oc, p_, ow, sn, sc, rp, base = olay
    has_res = res.shape[0] > 0
    rf = res.reshape(-1)
    af = acc.reshape(-1)
    ld = _U(acc.shape[1])
    bad = 0
    b = 0
    r = r0
    while b < q:  # flat uint64 indices (ops.im2col's Numba note)
        n, p0, cnt, at = _out_run(r, q - b, olay)
        ub = _U(b)
        uc = _U(cnt)
        for o in range(oc):
            d = _U(n * sn + o * sc + at)
            sa = _U(o) * ld + ub
            bb = bias[o]
            if has_res:
                dr = _U((n * oc + o) * p_ + p0)
                for t in range(uc):
                    v = af[sa + t] + bb
                    bad += not np.isfinite(v)
                    out[d + t] = min(max(v + rf[dr + t], lo), hi)
                continue
            for t in range(uc):
                v = af[sa + t] + bb
                bad += not np.isfinite(v)
                out[d + t] = min(max(v, lo), hi)
        b += cnt
        r += cnt
    return bad


@njit(nogil=True, cache=True, error_model="numpy")
def analog_conv(wk, xp, geom, tiles, offs, maps, wflat, awflat, vecs, nlf, keys, pp, nl_on,
                noise_on, bias, epilogue, out, olay, first, rows, workers, single, prof, inl):
    """Chunk ``wk`` of the analog convolution of the padded input ``xp`` (flat) into
    ``out`` (flat): blocks wk, wk + workers, … (call it for every wk in range(workers),
    on any threads; it runs without the GIL).

    ``olay`` = (N, OC, P, ow, sn, sc, rp, base): the output layout -- output (n, o) of
    pixel p = i·ow + k at ``base + n·sn + o·sc + i·rp + k``: (N, OC, P) is (…, OC·P, P, ow,
    0); the zero-padded planes a following depthwise layer reads (:func:`pad_phases` at
    unit stride, (OC, N, hs, ws)) are (…, hs·ws, N·hs·ws, ws, ph·ws + pw).

    ``geom`` = (kh, kw, sh, sw, dh, dw, ow, wp, img, span): kernel, strides, dilations,
    output width, and the layout of ``xp``: its row pitch ``wp`` and image stride ``img``
    ((N, C, Hp, Wp): Wp and C·Hp·Wp), and ``span`` > 0 when ``xp`` has the unit-stride
    layout of :func:`pad_phases` (strides 1 then; ``img`` = hs·ws; every tile reads one
    channel or none reads a map; ``span``: :func:`span_of_blocks`, the flat loops' scratch);
    ``epilogue`` = (lo, hi, res): the residual ``res`` (N, OC, P) is added to the outputs
    (a following Add folded into the layer; an empty array: none), then they are clipped to
    [lo, hi] (a following Relu or Clip; (-inf, inf): none);
    ``maps``: the channel maps of :func:`channel_maps` the tiles refer to; ``first``:
    global row id of row 0; ``rows``: pixels per block; ``workers``: the number of chunks
    (blocks are dealt out in turn); ``single``: every output comes from one tile (one
    input chunk per group), so it is stored without an accumulator; ``prof``: (workers,
    len(STAGES)) int64 to add each
    stage's CPU cycles to, or an empty array (no timing). See the module docstring for the
    tile description. Returns the number of NaN or infinite outputs it wrote.
    """
    wide_vectors()
    kh, kw, sh, sw, dh, dw, ow, wp, img, span = geom
    lo, hi, res = epilogue
    xi = xp.view(np.int32)
    n, oc, p_ = olay[0], olay[1], olay[2]
    xf = xp
    total = n * p_
    n_blocks = (total + rows - 1) // rows
    n_tiles = tiles.shape[0]
    maxnk = 0
    maxno = 0
    qg = 0
    for ti in range(n_tiles):
        maxnk = max(maxnk, tiles[ti, 1])
        maxno = max(maxno, tiles[ti, 3])
        qg = max(qg, gemm_width(rows, tiles[ti, 3], tiles[ti, 1]))
    noise_rows = noise_on or pp.wn_type != S.WN_NONE or (pp.out_step > _F0 and pp.out_sto_round)
    bad = 0
    if True:  # the worker's blocks
        bufs = _buffers(maxnk, maxno, rows, pp, noise_rows, qg)
        xt, xsq, xabs, xir, rin, y, cur, irm, pw, zb, ws, tmp, rowf, rowi, xn64 = bufs
        acc = np.empty((0 if single else oc, rows), np.float32)
        scale = np.empty(rows, np.float32)
        f = np.empty(rows, np.float32)
        rid = np.empty(rows, np.int64)
        short = ow < SHORT_RUNS and span == 0 and not _whole_rows(sh, sw, wp, ow)  # (maps: (N, C, Hp, Wp) only)
        pix = np.empty(rows if short else 0, np.int64)
        pimg = np.empty(rows if short else 0, np.int64)
        bt = np.empty(rows if short else 0, np.int64)
        hm = np.empty(span, np.int32)  # one-channel tiles: maxima over the block's flat span
        hh = np.empty(kh * span, np.int32)  # ... and a kernel row's maxima (separable)
        flat = np.empty((3, span), np.float32)  # ... their scales, sums and squares
        one_pass = (pp.inp_noise <= _F0 and not pp.inp_sto_round and pp.ir_drop <= _F0
                    and pp.wn_type != S.WN_ADDITIVE)
        for blk in range(wk, n_blocks, workers):
            r0 = blk * rows
            r1 = min(total, r0 + rows)
            q = r1 - r0
            if short:
                _pixel_origins(r0, r1, p_, ow, sh, sw, wp, pix, pimg)
            if not single:
                for o in range(oc):
                    acc[o, :q] = _F0
            for t in range(q):
                rid[t] = first + r0 + t
            for ti in range(n_tiles):
                in0, nk, out0, nout = tiles[ti, 0], tiles[ti, 1], tiles[ti, 2], tiles[ti, 3]
                w_off, v_off, o_off = tiles[ti, 4], tiles[ti, 5], tiles[ti, 6]
                toffs = offs[o_off:o_off + nk]
                has_one = toffs[nk - 1] < 0
                key = keys[ti]
                mode = tiles[ti, 8]
                w = wflat[w_off:w_off + nout * nk]
                aw = awflat[w_off:w_off + nout * nk] if awflat.size else awflat
                nl_vec = vecs[2, v_off:v_off + nout]
                noise_vec = vecs[3, v_off:v_off + nout]
                adc_off = vecs[4, v_off:v_off + nout]
                adc_gain = vecs[5, v_off:v_off + nout]
                done = False
                t0 = _now(prof)
                if tiles[ti, 7] and mode == MAP_GENERIC:  # a new input chunk: gather, then prepare
                    _gather(xf, img, wp, p_, ow, sh, sw, toffs, r0, r1, xt)
                    _condition(xt, nk, q, pp, _F1, 0, rid, key, xsq, xabs, xir, rin, ws, tmp,
                               rowf, rowi, xn64)
                    t0 = _tick(prof, wk, 1, t0)
                elif tiles[ti, 7]:  # statistic from a channel map (or none needed), DAC on the way
                    stat = rowf[4].view(np.int32)
                    if short and mode >= 0:
                        _map_stat_px(maps, mode, pix, pimg, q, kh, kw, dh, dw, wp, has_one, pp.nm_type,
                                     bt, stat)
                    elif mode == MAP_DIRECT:  # a one-channel tile: its input is its map
                        _tap_stat(xi, img, wp, p_, ow, toffs, kh, kw, has_one, pp.nm_type, r0, r1, hm, hh, stat)
                    elif mode >= 0:
                        _map_stat(maps, mode, p_, ow, sh, sw, kh, kw, dh, dw, has_one, pp.nm_type,
                                  r0, r1, stat)
                    if mode != MAP_NONE:
                        _key_to_float(pp.nm_type, stat, q)
                    nskip = _input_scales(q, pp, _F1, rowf, rowi)
                    t0 = _tick(prof, wk, 0, t0)
                    if one_pass and nout == 1 and span and (ti + 1 == n_tiles or tiles[ti + 1, 7]):
                        # a depthwise channel: DAC, MVM and the PCM read-noise product in one pass
                        _dac_dot(xf, img, wp, p_, ow, toffs, r0, r1, rowf[1], pp.inp_step, pp.inp_bound,
                                 w, aw, pp.wn_type == S.WN_PCM_READ, flat, y, pw)
                        t0 = _tick(prof, wk, 3, t0)
                        nfail = _finalize(y, 1, q, pp, nl_on, nl_vec, nlf[ti], noise_on, noise_vec, _F0, cur, irm,
                                          pw, rid, 0, key, zb, ws, tmp, rowf, rowi, prof, wk, adc_off, adc_gain,
                                          inl)
                        _tick(prof, wk, 4, t0)
                        done = True
                    else:
                        _gather_dac(xf, img, wp, p_, ow, sh, sw, toffs, r0, r1, rowf[1], pp.inp_step,
                                    pp.inp_bound, xt)
                        t0 = _tick(prof, wk, 1, t0)
                        _after_dac(xt, nk, q, pp, 0, rid, key, nskip, xsq, xabs, xir, rin, ws, tmp, rowf,
                                   rowi, xn64)
                        t0 = _tick(prof, wk, 2, t0)
                if not done:
                    nfail = _mvm_finalize(w, aw, nout, nk, q, xt, xsq, xabs, xir, pp, nl_on, nl_vec,
                                          nlf[ti], noise_on, noise_vec, rid, 0, key, y, cur, irm, pw, zb,
                                          ws, tmp, rowf, rowi, prof, wk, adc_off, adc_gain, inl)
                t0 = _now(prof)
                for t in range(q):
                    scale[t] = rowf[0, t]
                if nfail:
                    _rerun(xf, img, wp, p_, ow, sh, sw, toffs, w, aw, nout, nk, q, r0, pp, nl_on,
                           nl_vec, nlf[ti], noise_on, noise_vec, rid, key, y, scale, rowi, noise_rows,
                           adc_off, adc_gain, inl)
                    t0 = _tick(prof, wk, 6, t0)
                if single:
                    bad += _store(y, nout, q, scale, pp.out_scale, vecs[0, v_off:v_off + nout],
                                      vecs[1, v_off:v_off + nout], bias, out, olay, out0, r0, f, lo, hi, res)
                else:
                    _accumulate(y, nout, q, scale, pp.out_scale, vecs[0, v_off:v_off + nout],
                                vecs[1, v_off:v_off + nout], acc, out0, f)
                _tick(prof, wk, 7, t0)
            if not single:
                t0 = _now(prof)
                bad += _layout(acc, q, bias, out, olay, r0, lo, hi, res)
                _tick(prof, wk, 7, t0)
    return bad


@njit(parallel=True, cache=True, error_model="numpy")
def analog_conv_parallel(xp, geom, tiles, offs, maps, wflat, awflat, vecs, nlf, keys, pp, nl_on,
                         noise_on, bias, epilogue, out, olay, first, rows, chunks, single, prof, inl):
    """:func:`analog_conv` for every chunk, on Numba's threads (``prange``; the body is
    only the call, so that the parallel region compiles quickly). Returns the number of
    NaN or infinite outputs."""
    wide_vectors()
    counts = np.zeros(chunks, np.int64)
    for c in prange(chunks):
        counts[c] = analog_conv(c, xp, geom, tiles, offs, maps, wflat, awflat, vecs, nlf, keys, pp, nl_on,
                                noise_on, bias, epilogue, out, olay, first, rows, chunks, single, prof, inl)
    return counts.sum()

