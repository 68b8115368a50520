"""An analog convolution layer described for the fused CPU kernel (:mod:`anasim.kernels.cpu_conv`).

:class:`FusedConv` packs the tiles of every group of an :class:`~anasim.analog.layer.AnalogLayer`
(weights, |weights|, digital scales, fixed per-output variations, Philox keys) into the
flat arrays the kernel reads, once per repetition and device state: the packing is
rebuilt when a tile's effective weights or post scales are replaced (programming, drift,
compensation) or the repetition changes. :meth:`FusedConv.run` computes the layer's output
from an (N, C, *in_shape) input.
"""

from __future__ import annotations

import glob
import sys
import threading
import time
import weakref

import numpy as np

from ..kernels import cpu_conv
from ..kernels import stages as S
from ..threads import Blas, num_threads
from .tile import AnalogMatrix, tile_state

__all__ = ["FusedConv", "fused_available", "unit_planes", "planes_input"]

_BLOCK_BYTES = 4 << 20
"""Working set of one block of pixels (gathered inputs, by-products, outputs, accumulator).
Larger blocks amortise what each tile does once per block (sgemm packs the tile's weights,
the per-tile set-up of one-channel tiles) against L2 misses; measured (batch 128, 2 threads,
Zen 4 with 1 MiB L2): 1 -> 4 MiB took ResNet-18 aihwkit 10.44 -> 9.90 ms/img and
MobileNetV2 8.71 -> 8.10, ResNet-20 unchanged. The numbers do not depend on it."""


def _l2_bytes() -> int:
    """The L2 cache of one core (Linux sysfs), 1 MiB where it cannot be read."""
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(f"{d}/level") as f:
                level = f.read().strip()
            with open(f"{d}/size") as f:
                size = f.read().strip()
        except OSError:
            continue
        if level == "2" and size[:-1].isdigit():
            return int(size[:-1]) << {"K": 10, "M": 20}.get(size[-1], 0)
    return 1 << 20


_GEMM_BYTES = _l2_bytes()
"""At most this many bytes of sgemm operand and product per block ((inputs + outputs) of
the widest tile x pixels x 4): one core's L2. OpenBLAS on a block of a small tile runs at
about 57 GMAC/s while it fits and 30-45 when it does not (16 x 144 and 24 x 144 tiles,
Zen 4, 1 MiB L2); large tiles keep the blocks of :data:`_BLOCK_BYTES`. In-process
interleaved, aihwkit preset: ResNet-20 1.379 -> 1.192 ms/img, MobileNetV2 6.65 -> 6.43,
ResNet-18 unchanged (9.66 -> 9.63); a cap of 256 KiB made ResNet-18 13 % slower."""
_MIN_BLOCK, _MAX_BLOCK = 64, 4096
_CHUNKS_PER_THREAD = 1
"""Chunks of blocks per worker thread (Numba's prange deals them out statically)."""
_NO_PROFILE = np.zeros((0, 0), np.int64)
_NO_RESIDUAL = np.zeros((0, 0, 0), np.float32)
_KEYS = ("inp_noise", "out_noise", "w_noise", "inp_sto_round", "out_sto_round")


def fused_available(matrices) -> bool:
    """Whether the fused kernel serves these matrices: CPU tiles with a periphery, the same
    periphery for all, and NumPy's BLAS reachable from kernels. The circuit IR-drop model
    (``ir_drop_model = 'circuit'``) and bit-serial input (``[bit_slicing] input_bits_per_cycle``)
    are not fused: their layers run the blocked path (weight slices are fused: each slice is
    one more tile)."""
    return (cpu_conv.available() and Blas.available()
            and all(type(m) is AnalogMatrix and not m.periphery.perfect
                    and not m.periphery.ir_circuit and m.input_cycles is None for m in matrices)
            and all(m.periphery == matrices[0].periphery for m in matrices))


_SCRATCH = threading.local()


def _buffer(size: int) -> np.ndarray:
    """A float32 buffer of ``size`` this thread reuses from layer to layer (fresh pages for
    every layer's padded copy cost more than the copy)."""
    buf = getattr(_SCRATCH, "pad", None)
    if buf is None or buf.size < size:
        buf = _SCRATCH.pad = np.empty(size, np.float32)
    return buf[:size]


def unit_planes(geom) -> tuple | None:
    """(ph, pw, hs, ws): where a 2-D convolution of unit strides reads its input in the
    layout of :func:`~anasim.kernels.cpu_conv.pad_phases` -- the interior's offset and
    the padded planes' size, as :func:`_padded` makes them; None for other strides or 1-D."""
    if geom.n_spatial != 2 or tuple(geom.strides) != (1, 1):
        return None
    (kh, kw), (dh, dw) = tuple(geom.kernel), tuple(geom.dilations)
    (ph, pw), (oh, ow) = tuple(geom.pads_begin), tuple(geom.out_shape)
    h, w = geom.in_shape
    return ph, pw, max(h + ph, (oh - 1) + (kh - 1) * dh + 1), max(w + pw, (ow - 1) + (kw - 1) * dw + 1)


_PLANES: dict = {}
"""id(buffer) -> (weak reference, (N, C, H, W), (ph, pw, hs, ws)): outputs written in the
padded planes of :func:`~anasim.kernels.cpu_conv.pad_phases` by :meth:`FusedConv.run`."""


_OUT_POOL: list = []  # [buffer, key], least recently handed out first
_OUT_POOL_LOCK = threading.Lock()
_OUT_POOL_BYTES = 512 << 20
"""The output buffers :func:`_out_buffer` keeps for reuse (busy ones included), at most."""


def _out_buffer(size: int, margins: tuple | None = None) -> np.ndarray:
    """A float32 output buffer of ``size``: one of the pool's that no one references any
    more (its last reader has let go: CPython's reference count shows only the pool's), else
    a new one. Fresh pages for every large output cost the page faults of first touch --
    more than the pass that fills them (MobileNetV2 aihwkit: -2.4 % with its depthwise
    inputs' planes reused). ``margins``: (planes, hs, ws, ph, pw, h, w) -- the buffer holds
    zero-padded planes (:func:`~anasim.kernels.cpu_conv.zero_margins`), zeroed when new and
    handed out again only for the same planes (their margins are never written)."""
    key = (size, margins)
    with _OUT_POOL_LOCK:
        for k, entry in enumerate(_OUT_POOL):
            if entry[1] == key and sys.getrefcount(entry[0]) == 2:  # the entry's and the call's
                _OUT_POOL.append(_OUT_POOL.pop(k))
                return entry[0]
        buf = np.empty(size, np.float32)
        _OUT_POOL.append([buf, key])
        total = sum(e[0].nbytes for e in _OUT_POOL)
        while total > _OUT_POOL_BYTES and len(_OUT_POOL) > 1:  # the oldest leave (busy ones live on)
            total -= _OUT_POOL.pop(0)[0].nbytes
    if margins is not None:
        cpu_conv.zero_margins(buf, *(np.int64(v) for v in margins))
    return buf


def _planes_view(buf: np.ndarray, n: int, c: int, h: int, w: int, planes: tuple) -> np.ndarray:
    """The (N, C, H, W) view of the interior of the planes ``buf`` (C, N, hs, ws), recorded
    so that :func:`_planes_of` finds the planes again; an ordinary array to everyone else."""
    ph, pw, hs, ws = planes
    view = buf.reshape(c, n, hs, ws)[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)
    key = id(buf)
    _PLANES[key] = (weakref.ref(buf, lambda _r, k=key: _PLANES.pop(k, None)), (n, c, h, w), planes)
    return view


def planes_input(x: np.ndarray) -> bool:
    """Whether ``x`` is a view that :meth:`FusedConv.run` made of padded planes (a fused
    convolution takes it as it is)."""
    return isinstance(x.base, np.ndarray) and id(x.base) in _PLANES


def _planes_of(x: np.ndarray, planes: tuple) -> np.ndarray | None:
    """The flat padded planes behind ``x`` when ``x`` is the whole interior view that
    :func:`_planes_view` made with these ``planes`` (margins zero: only the interior is
    ever written through a view); else None."""
    base = x.base
    entry = _PLANES.get(id(base)) if isinstance(base, np.ndarray) else None
    if entry is None or entry[0]() is not base or entry[2] != planes or entry[1] != x.shape:
        return None
    n, c, h, w = x.shape
    ph, pw, hs, ws = planes
    item = x.itemsize
    if (x.dtype != np.float32 or x.strides != (hs * ws * item, n * hs * ws * item, ws * item, item)
            or x.ctypes.data != base.ctypes.data + (ph * ws + pw) * item):
        return None
    return base.reshape(-1)


def _padded(x: np.ndarray, geom, ranges: np.ndarray, nm: int, phased: bool):
    """The input zero-padded, the channel maps of ``ranges``
    (:func:`~anasim.kernels.cpu_conv.channel_maps`), the 2-D kernel parameters (kh, kw, sh,
    sw, dh, dw, ow; strides 1 when phased) and the layout (row pitch, image stride, channel
    stride, phase-plane stride, phased). ``phased``: the unit-stride layout of :func:`~anasim.kernels.cpu_conv.pad_phases`
    (no maps); else (N, C, Hp, Wp) (1-D: a unit row axis): without padding ``x`` itself,
    else written in parallel into a reused buffer, the maps of each image taken from its
    padded planes on the way when there are images enough for the threads."""
    n, c = x.shape[:2]
    pad = 2 - geom.n_spatial
    if geom.n_spatial == 1:
        x = x.reshape(n, c, 1, x.shape[2])
    (h, w), (kh, kw) = x.shape[2:], (1,) * pad + tuple(geom.kernel)
    (sh, sw), (dh, dw) = (1,) * pad + tuple(geom.strides), (1,) * pad + tuple(geom.dilations)
    (ph, pw), (oh, ow) = (0,) * pad + tuple(geom.pads_begin), (1,) * pad + tuple(geom.out_shape)
    hp = max(h + ph, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(w + pw, (ow - 1) * sw + (kw - 1) * dw + 1)
    params = (kh, kw, sh, sw, dh, dw, ow)
    maps = np.empty((len(ranges), n, hp, wp), np.int32)
    if phased:
        hs, ws = -(-hp // sh), -(-wp // sw)
        xp = _planes_of(x, (ph, pw, hs, ws)) if (sh, sw) == (1, 1) and geom.n_spatial == 2 else None
        if xp is None:  # (else the producing layer wrote it so)
            xp = _buffer(c * sh * sw * n * hs * ws)
            cpu_conv.pad_phases(np.ascontiguousarray(x), *(np.int64(v) for v in (ph, pw, sh, sw, hs, ws)), xp)
        params = (kh, kw, 1, 1, dh, dw, ow)
        return xp, maps, params, (ws, hs * ws, sh * sw * n * hs * ws, n * hs * ws, True)
    layout = (wp, c * hp * wp, hp * wp, 0, False)
    if (hp, wp) == (h, w) and not (ph or pw):
        xp = np.ascontiguousarray(x)
        if len(ranges):
            cpu_conv.channel_maps(xp, ranges, nm, maps)
        return xp.reshape(-1), maps, params, layout
    xp = _buffer(n * c * hp * wp).reshape(n, c, hp, wp)
    if len(ranges) and n >= num_threads():
        cpu_conv.pad_and_maps(x, np.int64(ph), np.int64(pw), xp, ranges, nm, maps)
    else:
        cpu_conv.pad_input(x, np.int64(ph), np.int64(pw), xp)
        if len(ranges):
            cpu_conv.channel_maps(xp, ranges, nm, maps)
    return xp.reshape(-1), maps, params, layout


class FusedConv:
    """The tiles of one analog convolution, packed for :func:`~anasim.kernels.cpu_conv.analog_conv`."""

    def __init__(self, matrices: list[AnalogMatrix]):
        self.matrices = matrices
        p = matrices[0].periphery
        self.params = p.kernel_params()
        self.nl_on = any(t.nl_vec is not None for m in matrices for t in m.tiles)
        self.noise_on = any(t.noise_vec is not None for m in matrices for t in m.tiles)
        self.need_abs = self.params.ir_drop > 0 or self.params.wn_type == S.WN_PCM_READ
        deterministic_input = p.inp_noise <= 0 and not p.inp_sto_round
        rows, self.bias = [], np.zeros(sum(m.out_size for m in matrices), np.float32)
        w_off = v_off = o_off = out0 = 0
        for m in matrices:
            if m.bias is not None:
                self.bias[out0:out0 + m.out_size] = m.bias
            for t in m.tiles:
                new_input = not deterministic_input or t.out_start == 0
                rows.append((t.in_start, t.n_in, out0 + t.out_start, t.n_out, w_off, v_off, o_off, new_input,
                             cpu_conv.MAP_GENERIC, -1))
                w_off += t.n_in * t.n_out
                v_off += t.n_out
                o_off += t.n_in
            out0 += m.out_size
        self.tiles = np.array(rows, np.int64).reshape(-1, 10)
        self._modes = {}
        self._cache = None  # (state, packed), replaced in one assignment: runs may overlap
        self._offsets = {}
        self._rows = {}  # block_rows per (pixels, workers)

    def _pack(self, repetition: int):
        """Flat weights, |weights|, vectors, non-linearity factors and keys (cached per state)."""
        state = (repetition, tile_state())  # read before the tiles: a change meanwhile repacks
        cache = self._cache
        if cache is not None and cache[0] == state:
            return cache[1]
        tiles = [t for m in self.matrices for t in m.tiles]
        wflat = np.concatenate([t.weight.reshape(-1) for t in tiles]).astype(np.float32, copy=False)
        awflat = np.abs(wflat) if self.need_abs else np.zeros(0, np.float32)
        n = sum(t.n_out for t in tiles)
        vecs = np.zeros((6, n), np.float32)
        nlf = np.ones(len(tiles), np.float32)
        keys = np.zeros((len(tiles), 10), np.uint64)
        v0, k = 0, 0
        for m in self.matrices:
            for t in m.tiles:
                sl = slice(v0, v0 + t.n_out)
                vecs[0, sl], vecs[1, sl] = t.mapping_scale, t.post_scale
                if t.nl_vec is not None:
                    vecs[2, sl] = t.nl_vec
                if t.noise_vec is not None:
                    vecs[3, sl] = t.noise_vec
                if t.adc_gain is not None:
                    vecs[4, sl], vecs[5, sl] = t.adc_offset, t.adc_gain
                nlf[k] = t.nlf
                ks = m.stream_keys(t.index, repetition)
                keys[k] = [w for name in _KEYS for w in ks[name]]
                v0 += t.n_out
                k += 1
        packed = (wflat, awflat, vecs, nlf, keys)
        self._cache = (state, packed)
        return packed

    def _column_offsets(self, geom, layout) -> np.ndarray:
        """Offset from a pixel's receptive-field origin of every tile column's input (-1: an
        analog bias's constant 1) in the ``layout`` of :func:`_padded`: tap (a, e) of channel
        c at c·channel + ((a·dh) % sh · sw + (e·dw) % sw)·phase + (a·dh) // sh · wp + (e·dw) // sw
        (unit strides in the (N, C, Hp, Wp) layout: phase 0)."""
        key = (layout, geom)
        if key not in self._offsets:
            wp, _, channel, phase, phased = layout
            pad = 2 - geom.n_spatial
            kh, kw = (1,) * pad + tuple(geom.kernel)
            dh, dw = (1,) * pad + tuple(geom.dilations)
            sh, sw = ((1,) * pad + tuple(geom.strides)) if phased else (1, 1)
            cg, kk = geom.channels_per_group, kh * kw
            parts = []
            for g, m in enumerate(self.matrices):
                for t in m.tiles:
                    col = np.arange(t.in_start, t.in_stop, dtype=np.int64)
                    c, tap = np.divmod(col, kk)
                    a, e = np.divmod(tap, kw)
                    (ra, qa), (re, qe) = np.divmod(a * dh, sh), np.divmod(e * dw, sw)
                    off = (g * cg + c) * channel + (qa * sw + qe) * phase + ra * wp + re
                    off[col >= cg * kk] = -1
                    parts.append(off)
            self._offsets = {key: np.concatenate(parts)}
        return self._offsets[key]

    def _tile_modes(self, geom) -> tuple[np.ndarray, np.ndarray]:
        """Tile descriptions with their modes for this kernel size, and the channel ranges of
        the maps: a tile reads its statistic from the map of its channels when its inputs
        are whole channels (plus an analog bias's constant) and its DAC is deterministic."""
        kk = geom.kernel_size
        if kk not in self._modes:
            p = self.params
            tiles, ranges = self.tiles.copy(), {}
            cg = geom.channels_per_group
            k = 0
            for g, m in enumerate(self.matrices):
                for t in m.tiles:
                    n_x = min(t.in_stop, cg * kk) - t.in_start  # inputs from x (not the bias's 1)
                    if p.inp_sto_round and p.inp_step > 0:
                        mode = cpu_conv.MAP_GENERIC
                    elif p.nm_type not in (S.NM_ABS_MAX, S.NM_MAX):
                        mode = cpu_conv.MAP_NONE
                    elif t.in_start % kk == 0 and n_x % kk == 0 and n_x > 0:
                        rng = (g * cg + t.in_start // kk, g * cg + (t.in_start + n_x) // kk)
                        if rng[1] - rng[0] == 1:  # one channel: the input is its own map
                            mode, tiles[k, 9] = cpu_conv.MAP_DIRECT, rng[0]
                        else:
                            mode = ranges.setdefault(rng, len(ranges))
                    else:
                        mode = cpu_conv.MAP_GENERIC
                    tiles[k, 8] = mode
                    k += 1
            direct = tiles[:, 8] == cpu_conv.MAP_DIRECT
            if ranges and direct.any():  # maps mean the (N, C, Hp, Wp) layout: one-channel maps too
                for k in np.flatnonzero(direct):
                    c = int(tiles[k, 9])
                    tiles[k, 8] = ranges.setdefault((c, c + 1), len(ranges))
            self._modes[kk] = (tiles, np.array(sorted(ranges, key=ranges.get), np.int64).reshape(-1, 2))
        return self._modes[kk]

    def phased(self, geom, tiles, ranges) -> bool:
        """Whether the layer's input takes the unit-stride layout of
        :func:`~anasim.kernels.cpu_conv.pad_phases`: when no tile reads a channel map and
        the layer is grouped or has one-channel tiles (depthwise convolutions: each tile's
        taps then run contiguously over all images of a block, at any stride)."""
        return not len(ranges) and (geom.group > 1 or bool((tiles[:, 8] == cpu_conv.MAP_DIRECT).any()))

    def block_rows(self, total: int, workers: int) -> int:
        """Pixels per block: the working set in cache, and enough blocks for the workers."""
        key = (total, workers)
        if key not in self._rows:
            nk = int(self.tiles[:, 1].max())
            no = int(self.tiles[:, 3].max())
            extra = 2 if self.params.ir_drop > 0 else (1 if self.params.wn_type == S.WN_PCM_READ else 0)
            per_pixel = 4 * (nk * (1 + extra) + no * (2 + extra) + len(self.bias))
            rows = min(_BLOCK_BYTES // per_pixel, _GEMM_BYTES // (4 * (nk + no)))
            rows = int(min(_MAX_BLOCK, max(_MIN_BLOCK, rows)))
            n_blocks = -(-total // rows)
            n_blocks = -(-n_blocks // workers) * workers if n_blocks >= workers else n_blocks
            rows = -(-total // n_blocks)
            align = cpu_conv.GEMM_ALIGN  # whole sgemm widths: no padded columns but the last block's
            self._rows[key] = -(-rows // align) * align
        return self._rows[key]

    def run(self, x: np.ndarray, geom, first: int, repetition: int, profile: dict | None = None,
            name: str = "", epilogue: tuple | None = None,
            residual: np.ndarray | None = None, planes: tuple | None = None) -> tuple[np.ndarray, int]:
        """The layer's output (N, OC, *out_shape) for the float32 input ``x`` and the number
        of its values that are NaN or infinite; ``first`` is the global row id of the
        batch's first pixel. ``profile``: where to add the kernel's cycles per worker and
        stage (``profile[name]``) and the host-side seconds (``profile[(name, "host")]``),
        see :attr:`anasim.graph.context.RunContext.profile`. ``residual``: an array of the
        output's shape added to the outputs on the way out (an Add folded into the layer;
        float32, C-contiguous); ``epilogue``: (lo, hi), then clip them to [lo, hi] (a Relu
        or Clip folded into the layer). The count of NaN or infinite values is of the
        layer's own outputs, before the residual. ``planes``: (ph, pw, hs, ws) of the
        depthwise layer that alone reads the output (:func:`unit_planes`): the outputs are
        written straight into its zero-padded planes and their (N, OC, H, W) view returned,
        which that layer then reads without padding it (any other reader sees an ordinary
        strided array)."""
        t0 = time.perf_counter()
        n, oc = x.shape[0], geom.out_channels
        p_, ow = geom.n_pixels, (geom.out_shape[-1] if geom.n_spatial else 1)
        if planes is not None and geom.n_spatial == 2:
            ph, pw, hs, ws = planes
            oh = geom.out_shape[0]
            out = _out_buffer(oc * n * hs * ws, (oc * n, hs, ws, ph, pw, oh, ow))
            olay = (n, oc, p_, ow, hs * ws, n * hs * ws, ws, ph * ws + pw)
        else:
            planes = None
            out = _out_buffer(n * oc * p_)
            olay = (n, oc, p_, ow, oc * p_, p_, ow, 0)
        total = n * geom.n_pixels
        bad = 0
        if total:
            tiles, ranges = self._tile_modes(geom)
            phased = self.phased(geom, tiles, ranges)
            xp, maps, params, layout = _padded(x, geom, ranges, self.params.nm_type, phased)
            wflat, awflat, vecs, nlf, keys = self._pack(repetition)
            offs = self._column_offsets(geom, layout)
            workers = max(1, num_threads())
            rows = self.block_rows(total, workers)
            wp, img = layout[:2]
            span = cpu_conv.span_of_blocks(np.int64(total), np.int64(rows), np.int64(geom.n_pixels),
                                           np.int64(params[6]), np.int64(wp), np.int64(img)) if phased else 0
            chunks = _CHUNKS_PER_THREAD * workers
            cycles = _NO_PROFILE
            if profile is not None:
                profile[(name, "host")] = profile.get((name, "host"), 0.0) + time.perf_counter() - t0
                cycles = profile.setdefault(name, np.zeros((chunks, len(cpu_conv.STAGES)), np.int64))
            args = (xp, tuple(np.int64(v) for v in params + (wp, img, span)), tiles, offs, maps, wflat,
                    awflat, vecs, nlf, keys, self.params, self.nl_on, self.noise_on, self.bias,
                    (np.float32(-np.inf if epilogue is None else epilogue[0]),
                     np.float32(np.inf if epilogue is None else epilogue[1]),
                     _NO_RESIDUAL if residual is None else np.ascontiguousarray(residual).reshape(n, oc, p_)), out,
                    tuple(np.int64(v) for v in olay),
                    np.int64(first), np.int64(rows), np.int64(chunks),
                    all(len(m.tiles) == m.n_out_chunks for m in self.matrices), cycles, self.matrices[0].inl)
            with Blas.single_threaded():  # each chunk calls sgemm on its own thread
                bad = int(cpu_conv.analog_conv_parallel(*args))
        if planes is not None:
            return _planes_view(out, n, oc, geom.out_shape[0], ow, planes), int(bad)
        return out.reshape((n, oc) + geom.out_shape), int(bad)
