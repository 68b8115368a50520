"""An ONNX Conv / Gemm / MatMul node made analog.

An :class:`AnalogLayer` holds the layer's weight as one :class:`~anasim.analog.tile.AnalogMatrix`
per convolution group (a single one for Gemm/MatMul) and is called by the executor in
place of the node's digital implementation, with the node's own inputs. It turns the
input into rows (im2col for convolutions), gives every row a global *row id* —
``(sample index in the data set) × (rows per sample) + (row within the sample)`` — so
the random numbers of the tile model do not depend on batch size or order, runs the
rows through the tiles and turns the result back into the node's output layout.

Digital parts stay digital: the Gemm ``alpha`` is folded into the weight, a 1-D bias is
the layer's (digital by default) bias, any other Gemm ``C`` is added after the tiles.

Speed: an ungrouped 1-D/2-D convolution on CPU tiles never builds its whole im2col
matrix. It runs in blocks of rows sized to stay in a core's cache (``_BLOCK_BYTES``),
on the convolution's worker threads (:func:`~anasim.threads.run_chunks`): im2col rows
of the block from a zero-padded copy of the input, the tiles with the single-threaded
periphery kernels (:data:`~anasim.analog.tile.SERIAL`), then bias and NCHW layout
straight into the output. Row ids are those of the whole batch, so the result is the
one of the unblocked path bit for bit wherever BLAS's sums do not depend on the number
of rows in a product (ResNet-20: identical; ResNet-18: 2 of 19.7 M convolution outputs
differ by one ADC step, from OpenBLAS choosing another kernel for a different row count).
Grouped convolutions build each group's im2col rows from its own channels and share the
groups out among the worker threads (:meth:`AnalogLayer._conv_grouped`). 3-D
convolutions, Gemm/MatMul and GPU tiles on host arrays take the unblocked path.

On the GPU (the simulator's graph placed on ``"cuda"``) the layer receives a device
array and keeps everything there (:meth:`AnalogLayer._call_device`): im2col blocks and
row ids are made by device kernels, the :class:`~anasim.analog.tile_cuda.CudaAnalogMatrix`
tiles run on them, and the NCHW output is written on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ExecutionError, InputError, UnsupportedOpError
from ..graph.context import RunContext
from ..graph.ir import RECURRENT_OPS, GraphIR, Node
from ..ops.conv_geometry import conv_geometry
from ..ops.im2col import cols_to_output, im2col, im2col_rows, padded_input, rows_to_nchw
from ..threads import num_threads, run_chunks
from .calibration import LayerCalibration, apply_affine
from .fused import FusedConv, fused_available, planes_input, unit_planes
from .tile import SERIAL, AnalogMatrix, Periphery

_BLOCK_BYTES = 4 << 20
"""Working set of one block of convolution rows (im2col rows, prepared inputs, outputs).
A few MB: smaller blocks fit L2 better but pay the per-block Python work more often
(measured on 2 MB-L2 cores: 4 MB best, 1 MB about 30 % slower). Blocks run on the worker
threads of :func:`~anasim.threads.run_chunks`."""
_MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS = 256, 32768


def _geometry(x_shape, weight_shape, attrs):
    """The convolution geometry of an input shape under a Conv node's attributes."""
    a = attrs
    return conv_geometry(tuple(x_shape), weight_shape, a.get("auto_pad", "NOTSET"), a.get("dilations"),
                         a.get("group", 1), a.get("kernel_shape"), a.get("pads"), a.get("strides"))


@dataclass
class AnalogLayer:
    """One analog node: its tiles (``matrices``, one per conv group) and geometry."""

    name: str
    op_type: str
    index: int
    """Position among the model's Conv/Gemm/MatMul layers with constant weights (the analog
    candidates, digital ones included): part of the random-stream key."""
    weight_shape: tuple
    matrices: list[AnalogMatrix]
    attrs: dict
    extra_bias: np.ndarray | None = None
    """Gemm ``beta·C`` that is not a per-output vector; added digitally after the tiles."""
    states: dict = field(default_factory=dict, repr=False)
    """Programmed device state per (matrix, tile) — filled by the simulator."""
    _extra_bias_device: object = field(default=None, repr=False, compare=False)
    """GPU copy of ``extra_bias``, made on first use."""
    fused: bool = True
    """Convolutions run on the fused CPU kernel where it serves them (:mod:`.fused`)."""
    epilogue: tuple | None = None
    """(lo, hi): the layer's outputs are clipped to [lo, hi] -- the Relu or Clip that
    followed it in the graph, folded into the layer by the simulator (see
    ``simulator.fold_activations``); None: the layer's own output."""
    residual: str = ""
    """Name of a value of the output's shape added to the layer's outputs before the
    epilogue -- the ``Add`` that followed it in the graph, folded into the layer by the
    simulator (see ``simulator.fold_activations``); the executor passes it after the
    node's own inputs (:attr:`extra_inputs`). '': none."""
    next_depthwise: tuple | None = None
    """(weight shape, attributes) of the depthwise convolution that alone reads this layer's
    output (after a folded residual and activation), set by the simulator (see
    ``simulator.plan_depthwise_inputs``): the fused kernel then writes the output straight
    into the zero-padded planes that layer reads (its input padding pass saved); None: the
    plain (N, C, H, W) output. Only where the output goes: the numbers are the same."""
    calibration: LayerCalibration = field(default_factory=LayerCalibration, repr=False)
    """What calibration set for this layer (:mod:`.calibration`); set it with
    :meth:`set_calibration`."""

    def __post_init__(self):
        self._base_forward = [m.forward_params for m in self.matrices]  # as configured
        self._fuse()

    def _fuse(self):
        self._fused = (FusedConv(self.matrices) if self.fused and self.op_type == "Conv"
                       and fused_available(self.matrices) else None)

    def set_calibration(self, cal: LayerCalibration) -> None:
        """Use ``cal``: its input range (``nm_thres``, constant noise management) and ADC
        bound (``out_bound``) replace the configured ones on every tile, its affine
        correction is applied to the outputs; None fields restore the configuration's.
        (The weight clip takes effect at the next programming.)"""
        for m, fp in zip(self.matrices, self._base_forward):
            changes = {}
            if cal.nm_thres is not None:
                changes.update(noise_management="constant", nm_thres=float(cal.nm_thres))
            if cal.out_bound is not None:
                changes["out_bound"] = float(cal.out_bound)
            new = replace(fp, **changes) if changes else fp
            if new is not m.forward_params:
                m.forward_params, m.periphery = new, Periphery.from_params(new)
        self.calibration = cal
        self._fuse()

    @property
    def channel_axis(self) -> int:
        """Axis of the output channels in the layer's output (1 for Conv, last otherwise)."""
        return 1 if self.op_type == "Conv" else -1

    # ------------------------------------------------------------------ info
    @property
    def n_tiles(self) -> int:
        return sum(len(m.tiles) for m in self.matrices)

    @property
    def tile_grid(self) -> tuple[int, int, int]:
        """(groups, input chunks, output chunks) — the tiles of one group form a grid."""
        m = self.matrices[0]
        return len(self.matrices), m.n_in_chunks, m.n_out_chunks

    @property
    def tile_shapes(self) -> list[tuple[int, int]]:
        """(rows, columns) = (inputs, outputs) of every physical tile, in order."""
        return [(t.n_in, t.n_out) for m in self.matrices for t in m.tiles]

    def describe(self) -> str:
        g, i, o = self.tile_grid
        grid = f"{i}x{o} tiles" + (f" x {g} groups" if g > 1 else "")
        rows, cols = self.tile_shapes[0]
        return f"{self.name} ({self.op_type}, weight {'x'.join(map(str, self.weight_shape))}): {grid} of {rows}x{cols}"

    def __repr__(self) -> str:
        return f"<AnalogLayer {self.describe()}>"

    # ------------------------------------------------------------------ running
    def _row_ids(self, ctx: RunContext, n_samples: int, rows_per_sample: int) -> np.ndarray:
        first = ctx.sample_offset * rows_per_sample
        return np.arange(first, first + n_samples * rows_per_sample, dtype=np.int64)

    def _run_rows(self, ctx: RunContext, rows: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
        if len(self.matrices) == 1 and type(self.matrices[0]) is AnalogMatrix:
            return self._rows_blocked(ctx, self.matrices[0], rows, row_ids)
        if len(self.matrices) == 1:
            return self.matrices[0].forward(rows, row_ids, ctx.repetition)
        k = self.matrices[0].in_size
        return np.concatenate(
            [m.forward(rows[:, g * k:(g + 1) * k], row_ids, ctx.repetition) for g, m in enumerate(self.matrices)],
            axis=1,
        )

    def _rows_blocked(self, ctx: RunContext, m: AnalogMatrix, rows: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
        """:meth:`AnalogMatrix.forward` on blocks of rows shared out among the worker threads
        (:func:`~anasim.threads.run_chunks`: single-threaded BLAS and the serial periphery
        kernels per block), so that BLAS's own threads and Numba's never compete for the
        cores. Every row's numbers are its own (row ids), so the blocking changes nothing
        but the BLAS kernel OpenBLAS picks for a product's size."""
        x = np.ascontiguousarray(rows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != m.in_size:
            return m.forward(x, row_ids, ctx.repetition)  # its error message
        n = x.shape[0]
        if m.analog_bias:
            x = np.concatenate([x, np.ones((n, 1), np.float32)], axis=1)
        ids = np.ascontiguousarray(row_ids, dtype=np.int64)
        acc = np.zeros((n, m.out_size), np.float32)
        size = max(_MIN_BLOCK_ROWS, -(-n // (2 * max(1, num_threads()))))
        n_blocks = -(-n // size)
        repetition = ctx.repetition

        def do_block(_state, i):
            r0, r1 = i * size, min(n, (i + 1) * size)
            m.forward_into(x[r0:r1], ids[r0:r1], repetition, acc[r0:r1], SERIAL)

        if n:
            run_chunks(n_blocks, lambda: None, do_block)
        if m.bias is not None:
            acc += m.bias
        return acc

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        """Values the executor passes after the node's own inputs: the folded residual."""
        return (self.residual,) if self.residual else ()

    def __call__(self, *inputs, context: RunContext, raw: bool = False):
        """The node's output for its inputs (the executor calls it in place of the node);
        ``context`` says which samples these are (row ids) and which repetition.
        ``raw``: the tiles' output before the calibration's affine correction, the folded
        residual and the folded activation (what calibration fits; the residual is then
        not among the inputs)."""
        if self.op_type in RECURRENT_OPS:
            return self._recurrent(context, inputs)
        if not isinstance(inputs[0], np.ndarray) and _on_device(inputs[0]):
            return self._call_device(context, inputs[0])
        affine = None if raw else self.calibration.affine
        epilogue = None if raw else self.epilogue
        residual = inputs[-1] if self.residual and not raw else None
        bad = None  # number of NaN/infinite outputs, when the path counted them
        fuse = False  # whether the kernel may apply the residual and the epilogue
        if self.op_type == "Conv":
            fuse = affine is None and (residual is None or (
                isinstance(residual, np.ndarray) and residual.dtype == np.float32 and residual.flags.c_contiguous))
            y = self._conv(context, inputs[0], epilogue if fuse else None, residual if fuse else None,
                           fuse or (residual is None and epilogue is None and affine is None))
            if isinstance(y, tuple):
                y, bad = y
        elif self.op_type == "Gemm":
            y = self._gemm(context, inputs[0])
        else:
            y = self._matmul(context, inputs[0])
        clipped = bad is not None and fuse  # the fused kernel applied the residual and the epilogue
        if bad is None:
            bad = 0 if np.isfinite(y).all() else int((~np.isfinite(y)).sum())
        if bad:
            src = "its input" if not np.isfinite(inputs[0]).all() else "the tile model"
            raise ExecutionError(
                f"Analog layer {self.name!r} ({self.op_type}) produced {bad} "
                f"NaN/infinite output(s); they come from {src}. Check the data and the configuration "
                "(e.g. a zero bound or an extreme noise scale).")
        if affine is not None:
            y = apply_affine(y, affine[0], affine[1], self.channel_axis)
        if residual is not None and not clipped:
            y = y + residual
        if epilogue is not None and not clipped:
            y = np.minimum(np.maximum(y, np.float32(epilogue[0])), np.float32(epilogue[1]))
        return y

    def _conv(self, ctx: RunContext, x: np.ndarray, epilogue: tuple | None = None,
              residual: np.ndarray | None = None, final: bool = False):
        """The convolution's output; on the fused kernel (output, count of NaN/infinite
        outputs) -- the kernel counts them on the way, so :meth:`__call__` need not -- with
        ``residual`` added and ``epilogue`` applied (both or neither: a residual of another
        shape is left to the caller). ``final``: the output is the node's as it is (then
        written in the planes of :attr:`next_depthwise`)."""
        geom = _geometry(x.shape, self.weight_shape, self.attrs)
        if geom.n_spatial <= 2 and self._fused is not None and (
                residual is None or residual.shape == (x.shape[0], geom.out_channels) + tuple(geom.out_shape)):
            planes = None
            if final and self.next_depthwise is not None:
                planes = unit_planes(_geometry((x.shape[0], geom.out_channels) + tuple(geom.out_shape),
                                               *self.next_depthwise))
            if x.dtype != np.float32 or not (x.flags.c_contiguous or planes_input(x)):
                x = np.ascontiguousarray(x, dtype=np.float32)
            return self._fused.run(x, geom, ctx.sample_offset * geom.n_pixels, ctx.repetition,
                                   ctx.profile, self.name, epilogue, residual, planes)
        if geom.group == 1 and geom.n_spatial <= 2 and type(self.matrices[0]) is AnalogMatrix:
            return self._conv_blocked(ctx, np.ascontiguousarray(x, dtype=np.float32), geom)
        if geom.group > 1 and geom.n_spatial <= 2 and type(self.matrices[0]) is AnalogMatrix:
            return self._conv_grouped(ctx, np.asarray(x, dtype=np.float32), geom)
        cols = im2col(np.ascontiguousarray(x, dtype=np.float32), geom)
        per_sample = int(np.prod(geom.out_shape))
        y = self._run_rows(ctx, cols, self._row_ids(ctx, x.shape[0], per_sample))
        return cols_to_output(y, x.shape[0], geom)

    def _conv_grouped(self, ctx: RunContext, x: np.ndarray, geom) -> np.ndarray:
        """A grouped (e.g. depthwise) convolution: the groups are shared out among the
        convolution's worker threads.

        Each group's im2col rows are built from its own channels, an (N·P, C/group·kk)
        matrix, instead of slicing the group's columns out of the whole (N·P, C·kk) one
        (which, for a depthwise layer, reads the whole matrix once per group); the
        group's tiles run with the single-threaded kernels (:data:`SERIAL`). Same rows
        and row ids as the unblocked path, so the same numbers.
        """
        n, p = x.shape[0], geom.n_pixels
        cg, ocg = geom.channels_per_group, geom.out_channels_per_group
        one = replace(geom, in_channels=cg, out_channels=ocg, group=1)
        out = np.empty((n, geom.out_channels, p), np.float32)
        total = n * p
        first = ctx.sample_offset * p
        ids = np.arange(first, first + total, dtype=np.int64)
        repetition = ctx.repetition

        def do_group(_state, g):
            m = self.matrices[g]
            xp, params = padded_input(np.ascontiguousarray(x[:, g * cg:(g + 1) * cg]), one)
            cols = np.empty((total, one.k + (1 if m.analog_bias else 0)), np.float32)
            if m.analog_bias:
                cols[:, one.k] = 1
            im2col_rows(xp, params, 0, total, cols)
            acc = np.zeros((total, ocg), np.float32)
            m.forward_into(cols, ids, repetition, acc, SERIAL)
            tmp = np.empty((n, ocg, p), np.float32)
            rows_to_nchw(acc, np.zeros(ocg, np.float32) if m.bias is None else m.bias, tmp, 0)
            out[:, g * ocg:(g + 1) * ocg] = tmp

        run_chunks(len(self.matrices), lambda: None, do_group)
        return out.reshape((n, geom.out_channels) + geom.out_shape)

    def _conv_blocked(self, ctx: RunContext, x: np.ndarray, geom) -> np.ndarray:
        """The convolution in blocks of rows that stay in cache, on worker threads.

        Per block: im2col rows (from a zero-padded copy of the input), the tiles
        (:meth:`AnalogMatrix.forward_into` with the serial kernels), bias and NCHW
        layout. Row ids, and so every random number, are those of the whole batch.
        """
        m = self.matrices[0]
        n, oc, k, p = x.shape[0], geom.out_channels, geom.k, geom.n_pixels
        total = n * p
        out = np.empty((n, oc, p), np.float32)
        if total == 0:
            return out.reshape((n, oc) + geom.out_shape)
        kx = k + (1 if m.analog_bias else 0)
        widest = max(t.n_in for t in m.tiles) + max(t.n_out for t in m.tiles)
        per_row = 4 * (kx + oc + 2 * widest)
        rows = int(min(_MAX_BLOCK_ROWS, max(_MIN_BLOCK_ROWS, _BLOCK_BYTES // per_row)))
        n_blocks = -(-total // rows)
        rows = -(-total // n_blocks)  # equal blocks
        first = ctx.sample_offset * p
        repetition = ctx.repetition
        xp, params = padded_input(x, geom)
        bias = np.zeros(oc, np.float32) if m.bias is None else m.bias

        def make_state():
            cols = np.empty((rows, kx), np.float32)
            if m.analog_bias:
                cols[:, k] = 1
            return cols, np.empty((rows, oc), np.float32)

        def do_block(state, i):
            cols, acc = state
            r0 = i * rows
            r1 = min(total, r0 + rows)
            c = im2col_rows(xp, params, r0, r1, cols)
            a = acc[:r1 - r0]
            a.fill(0)
            m.forward_into(c, np.arange(first + r0, first + r1, dtype=np.int64), repetition, a, SERIAL)
            rows_to_nchw(a, bias, out, r0)

        run_chunks(n_blocks, make_state, do_block)
        return out.reshape((n, oc) + geom.out_shape)

    # ------------------------------------------------------------------ recurrent layers
    def _recurrent(self, ctx: RunContext, inputs):
        """An LSTM / GRU / RNN node: per direction d, its input weights W_d on
        ``matrices[2d]`` and its recurrent weights R_d on ``matrices[2d + 1]`` (as aihwkit's
        ``AnalogLSTM``); every step runs one MVM per sample through each, everything else
        (biases, peepholes, activations, the cell update, ``sequence_lens``) is digital
        (:func:`anasim.ops.recurrent.run`). Row ids: step t of sample s is row ``s·T + t``
        on W's tiles and ``2·(s·T + t) + k`` on R's (k = 1 for a GRU's second recurrent
        product of the step), so the noise is that sample's whatever the batch."""
        from ..kernels.cuda import as_device, is_device_array, to_host
        from ..ops import recurrent

        on_device = any(a is not None and not isinstance(a, np.ndarray) and is_device_array(a) for a in inputs)
        if on_device:  # the recurrence runs on the host; its tiles take host arrays
            inputs = tuple(None if a is None else np.asarray(to_host(a)) for a in inputs)
        x = inputs[0]
        layout = int(self.attrs.get("layout", 0))
        steps, batch = (x.shape[1], x.shape[0]) if layout else (x.shape[0], x.shape[1])
        first = (ctx.sample_offset + np.arange(batch, dtype=np.int64)) * steps

        def projections(X, _w, _r, d):
            mw, mr = self.matrices[2 * d], self.matrices[2 * d + 1]
            rows = (first[None, :] + np.arange(steps, dtype=np.int64)[:, None]).reshape(-1)
            flat = np.ascontiguousarray(X.reshape(steps * batch, X.shape[2]), dtype=np.float32)
            xw = mw.forward(flat, rows, ctx.repetition).reshape(steps, batch, -1).astype(X.dtype, copy=False)

            def recurrent_proj(v, sel, t):
                k = 1 if (sel.start or 0) > 0 else 0
                y = mr.forward(np.ascontiguousarray(v, dtype=np.float32), 2 * (first + t) + k, ctx.repetition)
                return y[:, sel].astype(v.dtype, copy=False)

            return xw, recurrent_proj

        outs = recurrent.run(self.op_type, *inputs, projections=projections, **self.attrs)
        for y in outs:
            bad = int((~np.isfinite(y)).sum())
            if bad:
                raise ExecutionError(
                    f"Analog layer {self.name!r} ({self.op_type}) produced {bad} NaN/infinite output(s). "
                    "Check the data and the configuration (e.g. a zero bound or an extreme noise scale).")
        return tuple(as_device(y) for y in outs) if on_device else outs

    # ------------------------------------------------------------------ on the GPU
    def _call_device(self, ctx: RunContext, x):
        """The layer on a device array (graph placed on "cuda"): im2col, tiles, layout and
        row ids all on the device; returns a device array. CPU tiles get a host copy."""
        from ..kernels import cuda_digital as D
        from ..kernels.cuda import as_device, to_host

        if not all(hasattr(m, "refresh_weights") for m in self.matrices) or np.dtype(x.dtype) not in (
                np.float32, np.float64):  # CPU tiles, or float16 data: the host path
            return as_device(self(to_host(x), context=ctx))
        if np.dtype(x.dtype) == np.float64:
            x = D.to_float32(x)  # as the CPU path casts
        if self.op_type == "Conv":
            y = self._conv_device(ctx, x)
        elif self.op_type == "Gemm":
            if len(x.shape) != 2:
                raise InputError(f"Gemm node {self.name!r} expects a 2-D input; got shape {tuple(x.shape)}.")
            if self.attrs.get("transA", 0):
                x = D.copy_strided(x, 0, (1, x.shape[1]), tuple(x.shape)[::-1])
            y = self._rows_device(ctx, x, x.shape[0], 1)
            if self.extra_bias is not None:
                if self._extra_bias_device is None:
                    self._extra_bias_device = as_device(self.extra_bias)
                y = D.binary(y, self._extra_bias_device, D.ADD)
        else:
            k, shape = self.matrices[0].in_size, tuple(x.shape)
            if shape[-1] != k:
                raise InputError(f"MatMul node {self.name!r}: input's last dimension is {shape[-1]}, "
                                 f"weight has {k} rows.")
            lead = shape[:-1] or (1,)
            per_sample = math.prod(lead[1:])
            y = self._rows_device(ctx, x.reshape(math.prod(lead), k), lead[0], per_sample)
            y = y.reshape(shape[:-1] + (y.shape[1],))
        bad = D.count_nonfinite(y)
        if bad:
            src = "its input" if D.count_nonfinite(x) else "the tile model"
            raise ExecutionError(
                f"Analog layer {self.name!r} ({self.op_type}) produced {bad} NaN/infinite output(s); they come "
                f"from {src}. Check the data and the configuration (e.g. a zero bound or an extreme noise scale).")
        return y

    def _rows_device(self, ctx: RunContext, rows, n_samples: int, per_sample: int):
        from ..kernels import cuda_digital as D

        first = ctx.sample_offset * per_sample
        return self.matrices[0].forward(rows, D.arange(first, n_samples * per_sample), ctx.repetition)

    def _conv_device(self, ctx: RunContext, x):
        """im2col rows of each group in blocks, through the group's tiles, into NCHW."""
        from ..kernels import cuda_digital as D
        from ..kernels.cuda import device_empty
        from ..ops.cuda import as5d, conv_params, row_blocks

        a = self.attrs
        geom = conv_geometry(tuple(x.shape), self.weight_shape, a.get("auto_pad", "NOTSET"), a.get("dilations"),
                             a.get("group", 1), a.get("kernel_shape"), a.get("pads"), a.get("strides"))
        n, oc, p = x.shape[0], geom.out_channels, geom.n_pixels
        out = device_empty((n, oc, p))
        x5, params = as5d(x, geom), conv_params(geom)
        cg, ocg = geom.channels_per_group, geom.out_channels_per_group
        first = ctx.sample_offset * p
        for g, m in enumerate(self.matrices):
            for r0, r1 in row_blocks(n * p, 4 * geom.k_per_group):
                cols = D.im2col(x5, params, r0, r1, g * cg, cg)
                y = m.forward(cols, D.arange(first + r0, r1 - r0), ctx.repetition)
                D.rows_to_nchw(y, out, r0, g * ocg)
        return out.reshape((n, oc) + geom.out_shape)

    # ------------------------------------------------------------------ on the CPU
    def _gemm(self, ctx: RunContext, a: np.ndarray) -> np.ndarray:
        if self.attrs.get("transA", 0):
            a = a.T
        if a.ndim != 2:
            raise InputError(f"Gemm node {self.name!r} expects a 2-D input; got shape {a.shape}.")
        y = self._run_rows(ctx, a, self._row_ids(ctx, a.shape[0], 1))
        if self.extra_bias is not None:
            y = y + self.extra_bias
        return y

    def _matmul(self, ctx: RunContext, a: np.ndarray) -> np.ndarray:
        k = self.matrices[0].in_size
        if a.shape[-1] != k:
            raise InputError(f"MatMul node {self.name!r}: input's last dimension is {a.shape[-1]}, weight has {k} rows.")
        if a.ndim == 1:
            return self._run_rows(ctx, a[None, :], self._row_ids(ctx, 1, 1))[0]
        lead = a.shape[:-1]
        per_sample = int(np.prod(lead[1:])) if len(lead) > 1 else 1
        rows = a.reshape(-1, k)
        y = self._run_rows(ctx, rows, self._row_ids(ctx, lead[0], per_sample))
        return y.reshape(*lead, -1)


def _on_device(x) -> bool:
    from ..kernels.cuda import is_device_array

    return is_device_array(x)


def layer_matrix(node: Node, ir: GraphIR) -> tuple[list[np.ndarray], list[np.ndarray | None], np.ndarray | None]:
    """The (out × in) weight matrices (one per group), their biases and an extra digital bias."""
    w = np.asarray(ir.constants[node.inputs[1]], dtype=np.float32)
    b_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if b_name is not None and b_name not in ir.constants:
        raise UnsupportedOpError(
            f"Node {node.name!r} ({node.op_type}): its bias {b_name!r} is computed at run time; an analog "
            "layer needs a constant bias. Keep this layer digital with [[layers]] match = "
            f"{node.name!r}, digital = true.")
    if node.op_type in RECURRENT_OPS:  # W (dirs, G·H, I) and R (dirs, G·H, H): one matrix each
        r = np.asarray(ir.constants[node.inputs[2]], dtype=np.float32)
        mats = [np.ascontiguousarray(m[d]) for d in range(w.shape[0]) for m in (w, r)]
        return mats, [None] * len(mats), None  # biases stay digital (in the recurrence)
    b = None if b_name is None else np.asarray(ir.constants[b_name], dtype=np.float32)
    if node.op_type == "Conv":
        group = int(node.attrs.get("group", 1))
        oc = w.shape[0]
        mats = np.split(w.reshape(oc, -1), group, axis=0)
        biases = [None] * group if b is None else np.split(b, group)
        return mats, biases, None
    if node.op_type == "Gemm":
        alpha = np.float32(node.attrs.get("alpha", 1.0))
        beta = np.float32(node.attrs.get("beta", 1.0))
        mat = (w if node.attrs.get("transB", 0) else w.T) * alpha
        extra = None
        if b is not None:
            c = b * beta
            if c.size in (1, mat.shape[0]) and (c.ndim <= 1 or c.shape[0] == 1):
                b = np.broadcast_to(c.reshape(-1), (mat.shape[0],)).astype(np.float32)
            else:
                b, extra = None, c
        return [np.ascontiguousarray(mat)], [b], extra
    return [np.ascontiguousarray(w.T)], [None], None
