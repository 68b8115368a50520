"""The tile model on a CUDA GPU: :class:`CudaAnalogMatrix`, a device twin of :class:`AnalogMatrix`.

A :class:`CudaAnalogMatrix` wraps an existing CPU :class:`~anasim.analog.tile.AnalogMatrix`
and runs its forward pass with the CUDA kernels of :mod:`anasim.kernels.cuda`: the same
tiles, periphery, random streams and order of operations, so it returns the same
numbers as ``AnalogMatrix.forward`` (bit for bit where the MVM sums are exact; otherwise
to float32 rounding, because cuBLAS sums in another order than the CPU's BLAS).

The tiles' effective weights (and |W| where pcm_read weight noise or IR drop needs it),
mapping and post scales and the fixed per-output vectors are copied to the device once
and stay there. The CPU object remains the owner of the state: device models and drift
compensation keep calling its ``set_tile_weights`` / ``set_post_scales`` (directly or
through this wrapper, which forwards every attribute it does not define); the copies
are refreshed automatically when a tile's weight or post-scale array has been replaced,
or explicitly with :meth:`CudaAnalogMatrix.refresh_weights` (needed only after an
in-place edit of those arrays).

Bound management: after each pass the (M,) saturation flags are copied to the host
(one byte per row), the saturated rows are compacted there (``np.flatnonzero``, as on
the CPU) and their indices sent back; the re-run gathers those rows (and their row
ids) on the device, prepares, multiplies and finalizes them, and scatters outputs and
scales back. Only the flags and the index lists cross the bus.

Use: ``cm = to_cuda(am)``; ``cm.forward(x, row_ids, repetition)`` with a NumPy ``x`` returns
a NumPy array (a drop-in replacement for ``am`` in an ``AnalogLayer``), with a device
``x`` (numba device array or CuPy array) a numba device array.

The circuit IR-drop model (``forward.ir_drop_model = "circuit"``,
:mod:`anasim.analog.ir_circuit`) has no device kernel: wrapping a matrix that uses it
is a ConfigError (rather than a silent host solve or another model).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels import cpu
from ..kernels import cuda as K
from ..kernels import cuda_digital as D
from .tile import AnalogMatrix

__all__ = ["CudaAnalogMatrix", "to_cuda"]


class _DeviceTile:
    """Device copies of one tile's arrays, and the host arrays they were made from."""

    __slots__ = ("w", "wabs", "ms", "post", "nl_vec", "noise_vec", "src_w", "src_post", "adc_offset",
                 "adc_gain", "src_adc")


class CudaAnalogMatrix:
    """A CPU :class:`AnalogMatrix` evaluated on the GPU (see the module docstring).

    Parameters
    ----------
    matrix : AnalogMatrix
        The CPU tile model; it is kept (``.matrix``) and its state is the reference.
    """

    def __init__(self, matrix: AnalogMatrix):
        if not isinstance(matrix, AnalogMatrix):
            raise TypeError(f"CudaAnalogMatrix wraps an AnalogMatrix; got {type(matrix).__name__}")
        if matrix.periphery.ir_circuit and not matrix.periphery.perfect:
            raise ConfigError(
                "forward.ir_drop_model = 'circuit' (the resistive-network IR-drop solve) is not "
                "available on the GPU path yet; run this configuration with device='cpu', or use "
                "ir_drop_model = 'simple' on the GPU.")
        if not K.available():
            raise RuntimeError("no CUDA GPU available (numba.cuda.is_available() is False)")
        self.matrix = matrix
        p = matrix.periphery
        self._need_abs = (p.w_noise > 0 and p.wn_type == cpu.WN_PCM_READ) or p.ir_drop > 0
        self._tiles = [_DeviceTile() for _ in matrix.tiles]
        self._bias = None if matrix.bias is None else K.as_device(matrix.bias)
        for t, d in zip(matrix.tiles, self._tiles):
            d.ms = K.as_device(t.mapping_scale)
            d.nl_vec = None if t.nl_vec is None else K.as_device(t.nl_vec)
            d.noise_vec = None if t.noise_vec is None else K.as_device(t.noise_vec)
        self._inl = K.as_device(matrix.inl)
        self.refresh_weights()

    # ------------------------------------------------------------------ state
    def refresh_weights(self) -> None:
        """Copy every tile's effective weights (and |W|) and post scales to the device."""
        for t, d in zip(self.matrix.tiles, self._tiles):
            self._upload(t, d)

    def _upload(self, t, d) -> None:
        d.w = K.as_device(t.weight)
        d.wabs = K.as_device(t.abs_weight) if self._need_abs else None
        d.post = K.as_device(t.post_scale)
        d.src_w, d.src_post = t.weight, t.post_scale
        self._upload_adc(t, d)

    @staticmethod
    def _upload_adc(t, d) -> None:
        d.adc_offset = None if t.adc_gain is None else K.as_device(t.adc_offset)
        d.adc_gain = None if t.adc_gain is None else K.as_device(t.adc_gain)
        d.src_adc = t.adc_gain

    def _sync(self) -> None:
        """Re-upload the tiles whose weight or post-scale array was replaced on the host."""
        for t, d in zip(self.matrix.tiles, self._tiles):
            if t.weight is not d.src_w or t.post_scale is not d.src_post:
                self._upload(t, d)
            elif t.adc_gain is not d.src_adc:  # a new chip's ADC mismatch
                self._upload_adc(t, d)

    def set_tile_weights(self, weights) -> None:
        """``AnalogMatrix.set_tile_weights`` on the CPU object, then refresh the device copies."""
        self.matrix.set_tile_weights(weights)
        self.refresh_weights()

    def set_post_scales(self, scales) -> None:
        """``AnalogMatrix.set_post_scales`` on the CPU object, then refresh the device copies."""
        self.matrix.set_post_scales(scales)
        for t, d in zip(self.matrix.tiles, self._tiles):
            d.post, d.src_post = K.as_device(t.post_scale), t.post_scale

    def set_mapping_scales(self, scales) -> None:
        """``AnalogMatrix.set_mapping_scales`` on the CPU object, then refresh the device copies."""
        self.matrix.set_mapping_scales(scales)
        for t, d in zip(self.matrix.tiles, self._tiles):
            d.ms = K.as_device(t.mapping_scale)

    def __getattr__(self, name):
        # in_size, out_size, tiles, periphery, effective_weight(), ...: the CPU object's
        if name == "matrix":
            raise AttributeError(name)
        return getattr(self.matrix, name)

    def __repr__(self) -> str:
        return (f"<CudaAnalogMatrix {self.matrix.out_size}x{self.matrix.in_size}, "
                f"{len(self._tiles)} tiles, matmul {K.matmul_backend()}>")

    # ------------------------------------------------------------------ forward
    def forward(self, x, row_ids=None, repetition: int = 0):
        """y = W x + b through the analog tiles, as :meth:`AnalogMatrix.forward`.

        Parameters
        ----------
        x : (M, in) float32, NumPy array or device array (numba / CuPy).
        row_ids : (M,) int64 global row ids, NumPy or device array (made on the device,
            they cost no transfer); default ``arange(M)``.
        repetition : repetition index (part of the random-stream key).

        Returns
        -------
        (M, out) float32: a numba device array if ``x`` is on the device, else NumPy.
        """
        am = self.matrix
        on_device = K.is_device_array(x)
        dx = K.as_device(x)
        if len(dx.shape) != 2 or dx.shape[1] != am.in_size:
            raise ValueError(f"x must have shape (M, {am.in_size}), got {tuple(dx.shape)}")
        m = dx.shape[0]
        if row_ids is None:
            rid = D.arange(0, m)
        elif K.is_device_array(row_ids):
            rid = K.as_device(row_ids, np.int64)  # made on the device (AnalogLayer): no transfer
        else:
            rid = np.ascontiguousarray(row_ids, dtype=np.int64)
        if tuple(rid.shape) != (m,):
            raise ValueError(f"row_ids must have shape ({m},), got {tuple(rid.shape)}")
        self._sync()
        if am.analog_bias:
            dx = K.append_ones(dx)
        acc = K.device_zeros((m, am.out_size))
        if m:
            rid = K.as_device(rid, np.int64)
            if am.periphery.perfect:
                self._forward_perfect(dx, acc)
            else:
                per = am.tiles_per_input_chunk  # output chunks × weight slices
                for i in range(am.n_in_chunks):
                    cache = {}
                    for k in range(i * per, (i + 1) * per):
                        self._forward_tile(am.tiles[k], self._tiles[k], dx, rid, repetition, acc, cache)
        if self._bias is not None:
            K.add_bias(acc, self._bias)
        return acc if on_device else acc.copy_to_host()

    __call__ = forward

    def _forward_perfect(self, dx, acc) -> None:
        """is_perfect: plain product per tile, then out_scale and the digital scales."""
        p = self.matrix.periphery
        ones = K.device_full(dx.shape[0], 1.0)
        for t, d in zip(self.matrix.tiles, self._tiles):
            y = K.matmul_nt(dx, d.w, t.in_start, t.n_in)
            # (y·out_scale/1)·ms·post: the CPU's y *= out_scale; y *= ms; y *= post
            K.accumulate_device(y, ones, acc, t.out_start, p.out_scale, d.ms, d.post)

    def _prepare(self, t, x, col0, rid, keys, red, rnd, dac_only=False):
        p = self.matrix.periphery
        return K.prepare_device(
            x, col0, t.n_in, rid, nm_type=p.nm_type, nm_thres=p.nm_thres, res=p.inp_step,
            bound=p.inp_bound, inp_noise=0.0 if dac_only else p.inp_noise, sto_round=p.inp_sto_round,
            red=red, rnd=rnd, noise_key=keys["inp_noise"], sto_key=keys["inp_sto_round"],
            want_norm=not dac_only and p.wn_type == cpu.WN_ADDITIVE and p.w_noise > 0,
            want_sq=not dac_only and p.wn_type == cpu.WN_PCM_READ and p.w_noise > 0,
            want_ir=not dac_only and p.ir_drop > 0,
        )

    def _forward_bit_serial(self, t, d, dx, rid, keys, acc, cache) -> None:
        """:meth:`AnalogMatrix._forward_bit_serial` on the device: the same cycles, drives
        (:func:`anasim.kernels.stages.input_cycle`), streams and shifts."""
        am = self.matrix
        p, cyc = am.periphery, am.input_cycles
        prep = cache.get("prep")
        if prep is None:
            prep = cache["prep"] = self._prepare(t, dx, t.in_start, rid, keys, np.float32(1.0), 0, dac_only=True)
            cache["scale"] = K.to_host(prep["scale"])
        for j in range(cyc.n_cycles):
            ck = am.cycle_keys(keys, j)
            pj = cache.get(("cycle", j)) if p.inp_noise <= 0 else None
            if pj is None:
                drive = K.input_cycle_device(prep["xt"], p.inp_step, cyc.drive, j, cyc.bits, cyc.n_cycles, cyc.twos)
                pj = K.prepare_device(
                    drive, 0, t.n_in, rid, nm_type=cpu.NM_NONE, nm_thres=0.0, res=0.0, bound=np.inf,
                    inp_noise=p.inp_noise, sto_round=False, red=1.0, rnd=0, noise_key=ck["inp_noise"],
                    sto_key=ck["inp_sto_round"], want_norm=p.wn_type == cpu.WN_ADDITIVE and p.w_noise > 0,
                    want_sq=p.wn_type == cpu.WN_PCM_READ and p.w_noise > 0, want_ir=p.ir_drop > 0)
                if p.inp_noise <= 0:  # aihwkit's zero-output short cut, decided on the whole word
                    pj["skip"] = prep["skip"]
                    cache[("cycle", j)] = pj
            scale = K.as_device((cache["scale"] / np.float32(cyc.shift(j))).astype(np.float32))
            self._analog(t, d, pj, rid, ck, 0, acc=acc, scale=scale)

    def _analog(self, t, d, prep, rid, keys, rnd, acc=None, scale=None):
        """MVM + output processing of prepared inputs; returns (y, fail) on the device."""
        p = self.matrix.periphery
        y = K.matmul_nt(prep["xt"], d.w)
        cur = irm = pw = xnorm = None
        a_scale = np.float32(0.0)
        if p.ir_drop > 0:
            a_scale = np.float32(np.float32(t.n_in) / p.ir_drop_g_ratio)
            cur = K.matmul_nt(prep["xabs"], d.wabs)
            irm = K.matmul_nt(prep["xir"], d.w)
        wn = cpu.WN_NONE
        if p.w_noise > 0 and p.wn_type == cpu.WN_ADDITIVE:
            wn, xnorm = p.wn_type, prep["xnorm"]
        elif p.w_noise > 0 and p.wn_type == cpu.WN_PCM_READ:
            wn, pw = p.wn_type, K.matmul_nt(prep["xsq"], d.wabs)
        fail = K.finalize_device(
            y, prep["skip"], rid, res=p.out_step, bound=p.out_bound, bm=p.bm,
            test_neg=p.bm_test_negative_bound, nl_vec=d.nl_vec, nlf=t.nlf, noise_vec=d.noise_vec,
            sto_round=p.out_sto_round, wn_type=wn, w_noise=p.w_noise, xnorm=xnorm, pw=pw,
            ir_drop=p.ir_drop, a_scale=a_scale, cur=cur, irm=irm, rnd=rnd,
            noise_key=keys["out_noise"], w_key=keys["w_noise"], sto_key=keys["out_sto_round"],
            acc=acc, col0=t.out_start, scale=scale, out_scale=p.out_scale, ms=d.ms, post=d.post,
            adc_offset=d.adc_offset, adc_gain=d.adc_gain, inl=self._inl,
        )
        return y, fail

    def _forward_tile(self, t, d, dx, rid, repetition, acc, cache) -> None:
        am = self.matrix
        p = am.periphery
        keys = am.stream_keys(t.index, repetition)
        if am.input_cycles is not None:
            self._forward_bit_serial(t, d, dx, rid, keys, acc, cache)
            return
        deterministic_input = p.inp_noise <= 0 and not p.inp_sto_round
        prep = cache.get("prep") if deterministic_input else None
        if prep is None:
            prep = self._prepare(t, dx, t.in_start, rid, keys, np.float32(1.0), 0)
            if deterministic_input:
                cache["prep"] = prep  # same for every output chunk of this input chunk
        if not p.bm:
            self._analog(t, d, prep, rid, keys, 0, acc=acc, scale=prep["scale"])
            return
        y, fail = self._analog(t, d, prep, rid, keys, 0)
        scale = K.device_empty(dx.shape[0])
        scale.copy_to_device(prep["scale"])
        idx = np.arange(dx.shape[0])
        red, rnd = np.float32(1.0), 0
        while not p.bm_limit_reached(red):
            sub = np.flatnonzero(fail.copy_to_host())
            if sub.size == 0:
                break
            idx = idx[sub]
            red, rnd = np.float32(red * 2), rnd + 1
            didx = K.as_device(idx.astype(np.int64), np.int64)
            xs = K.gather_rows(dx, didx, t.in_start, t.n_in)
            rs = D.gather1(rid, didx)
            prep2 = self._prepare(t, xs, 0, rs, keys, red, rnd)
            y2, fail = self._analog(t, d, prep2, rs, keys, rnd)
            K.scatter_rows(y2, didx, y, prep2["scale"], scale)
        K.accumulate_device(y, scale, acc, t.out_start, p.out_scale, d.ms, d.post)


def to_cuda(matrix: AnalogMatrix) -> CudaAnalogMatrix:
    """The GPU twin of ``matrix`` (its weights copied to the device once).

    The result can replace ``matrix`` wherever an :class:`AnalogMatrix` is used, e.g.
    ``layer.matrices = [to_cuda(m) for m in layer.matrices]`` for every
    ``AnalogLayer`` of an :class:`~anasim.analog.simulator.AnalogSimulator`:
    ``program`` / ``drift`` keep working (they call ``set_tile_weights`` /
    ``set_post_scales``, forwarded to the CPU object, after which the device copies
    are refreshed).
    """
    if isinstance(matrix, CudaAnalogMatrix):
        return matrix
    return CudaAnalogMatrix(matrix)
