"""Runs a :class:`~anasim.graph.ir.GraphIR` with NumPy.

Op implementations are resolved from the registry once, when the graph is built, and
bound with their attributes into frozen :class:`BoundNode` objects; running is a loop
over nodes and a dict of values. The loop knows no op types: analog layers take over a
Conv/Gemm/MatMul node by passing a replacement callable in ``overrides``.

Debugging aids (environment variables): ``ANASIM_TRACE=1`` prints every node's output
shape and value range; ``ANASIM_STOP_AFTER=<k>`` stops after the k-th node and returns
all values computed so far.
"""

from __future__ import annotations

import functools
import os
import time
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .. import memory
from ..errors import AnasimError, ExecutionError, InputError
from ..ops.registry import resolve
from .context import RunContext
from . import passes
from .ir import GraphIR, ValueInfo, analog_candidates


@dataclass(frozen=True)
class BoundNode:
    """A node ready to run: ``fn(*input_arrays)`` returns its output(s)."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: Callable
    on_device: bool = False
    """Placed on the GPU and runs there (False on the CPU, and for host fallbacks)."""
    takes_context: bool = False
    """An injected callable (an override): called as ``fn(*inputs, context=RunContext)``."""


def bind(node, ir: GraphIR, device: str = "cpu") -> BoundNode:
    """Resolve ``node``'s op for the model's opset and bind its attributes.

    With ``device="cuda"`` the node gets its device implementation
    (:mod:`anasim.ops.cuda`) if it has one, else its CPU one run on host copies
    (``BoundNode.on_device`` tells which).
    """
    impl = resolve(node.domain, node.op_type, ir.opset(node.domain), node.name)
    attrs = dict(node.attrs)
    if impl.wants_n_outputs:
        attrs["n_outputs"] = len(node.outputs)
    if device == "cuda":
        from ..ops.cuda import bind_cuda

        fn, on_device = bind_cuda(node, impl, attrs, ir.constants, ir.opset(node.domain))
        return BoundNode(node.name, node.op_type, tuple(node.inputs), tuple(node.outputs), fn, on_device)
    fn = functools.partial(impl.fn, **attrs) if attrs else impl.fn
    return BoundNode(node.name, node.op_type, tuple(node.inputs), tuple(node.outputs), fn)


DEVICES = ("cpu", "cuda")
"""Where a graph can run (:meth:`Graph.to`)."""


def check_device(device, error=InputError) -> str:
    """``device`` if it names a place the network can run, else ``error`` with the way out.

    ``"cuda"`` also needs a GPU usable by numba.cuda (or Numba's CUDA simulator).
    """
    if device not in DEVICES:
        raise error(f"device must be one of {list(DEVICES)}; got {device!r}.")
    if device == "cuda":
        from ..kernels.cuda import available

        if not available():
            raise error("device 'cuda' needs a CUDA GPU usable by numba.cuda (pip install 'anasim[cuda]'); "
                        "none is available here. Use device 'cpu' (the same numbers).")
    return device


def _gpu_memory() -> int:
    """Total memory of the current GPU in bytes (8 GiB where it cannot be read, e.g. the simulator)."""
    try:
        from numba import cuda

        return int(cuda.current_context().get_memory_info()[1])
    except Exception:
        return 8 * 2**30


class Graph:
    """An imported ONNX model, runnable with NumPy (ideal, digital arithmetic).

    Create it with :func:`anasim.load`. ``graph.run({"input": x})`` returns a dict of
    outputs; ``graph(x)`` is the shortcut for single-input, single-output models.
    ``graph.to("cuda")`` is the same network on the GPU (NumPy in and out).

    Parameters
    ----------
    ir : GraphIR
        The imported model.
    overrides : dict of node name to callable, optional
        Callables that replace the named nodes (the analog layers), called as
        ``fn(*inputs, context=ctx)`` with the run's :class:`~anasim.graph.context.RunContext`.
        On ``"cuda"`` they receive and should return device arrays
        (``anasim.kernels.cuda.to_host`` / ``as_device`` convert).
    device : "cpu" (default) or "cuda"
        Where the nodes run (see :meth:`to`).

    Attributes
    ----------
    inputs, outputs : list of ValueInfo
        Name, dtype and shape (symbolic batch dimension kept as a string) of each.
    analog_candidates : list of str
        Node names of the Conv/Gemm/MatMul nodes whose weight is a constant; these are
        the layers an analog simulation maps onto tiles.
    device : str
        ``"cpu"`` or ``"cuda"``.
    host_nodes : list of str
        On ``"cuda"``, the nodes that run on the CPU for lack of a device implementation.
    """

    def __init__(self, ir: GraphIR, overrides: Mapping[str, Callable] | None = None, device: str = "cpu", *,
                 unfolded: GraphIR | None = None, _variants: dict | None = None):
        check_device(device)
        self.ir = ir
        self.unfolded = ir if unfolded is None else unfolded
        """The model as imported, BatchNormalization not folded (``ir`` itself when it is not)."""
        # the folded and unfolded IR, shared by every graph derived from this one
        self._variants = {False: self.unfolded} if _variants is None else _variants
        self._variants.setdefault(ir.fold_batchnorm, ir)
        self.device = device
        overrides = dict(overrides or {})
        unknown = set(overrides) - {n.name for n in ir.nodes}
        if unknown:
            raise KeyError(f"overrides for unknown nodes: {sorted(unknown)}")
        bound = []
        known = set(ir.constants) | {v.name for v in ir.inputs}  # values available so far
        for node in ir.nodes:
            if node.name in overrides:  # resolved for validation; the override runs
                b = bind(node, ir)
                fn = overrides[node.name]
                extra = tuple(getattr(fn, "extra_inputs", ()))
                missing = [v for v in extra if v not in known]
                if missing:
                    raise KeyError(f"override of {node.name!r} reads values not computed before it: {missing}")
                b = BoundNode(b.name, b.op_type, b.inputs + extra, b.outputs, fn, device == "cuda",
                              takes_context=True)
            else:
                b = bind(node, ir, device)
            bound.append(b)
            known.update(node.outputs)
        self.nodes: tuple[BoundNode, ...] = tuple(bound)
        self._overrides = overrides
        if self.host_nodes:
            ops = sorted({n.op_type for n in self.nodes if n.name in self.host_nodes})
            warnings.warn(
                f"On device 'cuda', {len(self.host_nodes)} node(s) run on the CPU because no CUDA implementation "
                f"covers their op or attributes ({', '.join(ops)}); their inputs cross the PCIe bus. "
                "Graph.host_nodes lists them.", stacklevel=3)
        self._free_after = self._free_lists(self.nodes)
        # the order that runs: element-wise epilogues fused into their convolutions (CPU)
        self._fast: tuple[BoundNode, ...] = ()
        self._fast_free: list[tuple[str, ...]] = []
        self._fused_away: frozenset[str] = frozenset()
        fast_ir = passes.fuse_conv_epilogues(ir, keep=overrides) if device == "cpu" else ir
        if fast_ir is not ir:  # only the fused nodes are new; the others are bound already
            by_name = {b.name: b for b in bound}
            self._fast = tuple(bind(n, fast_ir) if n.domain == passes.FUSED_DOMAIN else by_name[n.name]
                               for n in fast_ir.nodes)
            self._fast_free = self._free_lists(self._fast)
            kept = {o for n in fast_ir.nodes for o in n.outputs}
            self._fused_away = frozenset(o for n in ir.nodes for o in n.outputs if o and o not in kept)

    def _free_lists(self, nodes) -> list[tuple[str, ...]]:
        """The values that can be freed after each node (memory stays bounded on deep nets)."""
        out_names = {o.name for o in self.ir.outputs}
        last_use: dict[str, int] = {}
        for k, n in enumerate(nodes):
            for i in n.inputs:
                if i:
                    last_use[i] = k
        free: list[tuple[str, ...]] = [() for _ in nodes]
        for name, k in last_use.items():
            if name not in out_names and name not in self.ir.constants:
                free[k] += (name,)
        return free

    # ------------------------------------------------------------------ info
    @property
    def inputs(self) -> list[ValueInfo]:
        return self.ir.inputs

    @property
    def outputs(self) -> list[ValueInfo]:
        return self.ir.outputs

    @property
    def analog_candidates(self) -> list[str]:
        return analog_candidates(self.ir)

    @property
    def host_nodes(self) -> list[str]:
        """On ``device="cuda"``: the nodes that run on the CPU (no device implementation)."""
        if self.device == "cpu":
            return []
        return [n.name for n in self.nodes if not n.on_device]

    def with_overrides(self, overrides: Mapping[str, Callable]) -> "Graph":
        """A copy of this graph in which the named nodes run ``overrides[name]`` instead.

        An override is called as ``fn(*inputs, context=RunContext)`` with the node's inputs,
        followed by the values named in its ``extra_inputs`` attribute if it has one (they
        must be computed before the node: a folded residual)."""
        merged = dict(self._overrides)
        merged.update(overrides)
        return Graph(self.ir, merged, self.device, unfolded=self.unfolded, _variants=self._variants)

    def folded(self, fold_batchnorm: bool = True) -> "Graph":
        """This network with BatchNormalization folded into the preceding Conv/Gemm
        (``True``: what a deployed chip stores) or kept as separate digital nodes
        (``False``: what aihwkit does with an unfused model); ``self`` when it already is.

        Derived from the model as imported (:attr:`unfolded`) by the IR pass
        :func:`~anasim.graph.passes.with_batchnorm_folded`; the file is not read again.
        Overrides of nodes that folding removes are dropped.
        """
        want = bool(fold_batchnorm)
        if not self.ir.has_batchnorm or self.ir.fold_batchnorm == want:
            return self
        if want not in self._variants:
            self._variants[want] = passes.with_batchnorm_folded(self.unfolded)
        ir = self._variants[want]
        names = {n.name for n in ir.nodes}
        overrides = {k: v for k, v in self._overrides.items() if k in names}
        return Graph(ir, overrides, self.device, unfolded=self.unfolded, _variants=self._variants)

    def to(self, device: str) -> "Graph":
        """This graph placed on ``device``: ``"cpu"`` or ``"cuda"`` (a GPU through numba.cuda).

        On ``"cuda"``, inputs are copied to the GPU once per run (per ``batch_size``
        chunk), every op with a device implementation (:mod:`anasim.ops.cuda`) runs
        there, and the outputs come back at the end; the numbers equal the CPU's to
        float32 rounding. Ops without one run on the CPU (:attr:`host_nodes`, with a
        warning). Needs a CUDA GPU (``pip install 'anasim[cuda]'``) or Numba's simulator.
        """
        if device == self.device:
            return self
        return Graph(self.ir, self._overrides, device, unfolded=self.unfolded, _variants=self._variants)

    def __repr__(self) -> str:
        ins = ", ".join(i.describe() for i in self.inputs)
        outs = ", ".join(o.describe() for o in self.outputs)
        return f"<anasim.Graph {self.ir.name!r}: {len(self.nodes)} nodes; inputs {ins}; outputs {outs}>"

    # ------------------------------------------------------------------ running
    def _check_feeds(self, feeds: Mapping[str, np.ndarray], finite: bool = False) -> dict[str, np.ndarray]:
        expected = {i.name: i for i in self.inputs}
        unknown = [k for k in feeds if k not in expected]
        if unknown:
            raise InputError(f"Unknown input name(s) {unknown}; the model's inputs are {list(expected)}.")
        missing = [k for k in expected if k not in feeds]
        if missing:
            raise InputError(
                f"Missing input(s) {missing}; expected: " + "; ".join(expected[k].describe() for k in missing)
            )
        out = {}
        for name, value in feeds.items():
            info = expected[name]
            arr = np.asarray(value)
            want = np.dtype(info.dtype) if info.dtype is not None else arr.dtype
            if arr.dtype != want:
                same_kind = (arr.dtype.kind == "f" and want.kind == "f") or (
                    arr.dtype.kind in "iu" and want.kind in "iu"
                )
                if not same_kind:
                    raise InputError(
                        f"Input {name!r} has dtype {arr.dtype}; expected {want} ({info.describe()})."
                    )
                arr = arr.astype(want)
            if info.shape is not None:
                if arr.ndim != len(info.shape):
                    raise InputError(
                        f"Input {name!r} has rank {arr.ndim} (shape {arr.shape}); expected rank "
                        f"{len(info.shape)} ({info.describe()})."
                    )
                for axis, (d, got) in enumerate(zip(info.shape, arr.shape)):
                    if isinstance(d, int) and d != got:
                        raise InputError(
                            f"Input {name!r} has shape {arr.shape}; dimension {axis} must be {d} "
                            f"({info.describe()})."
                        )
            if (info.shape and arr.ndim and arr.shape[0] == 0 and not isinstance(info.shape[0], int)):
                raise InputError(f"Input {name!r} has no samples (shape {arr.shape}); give at least one.")
            if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = ~np.isfinite(arr)
                where = np.unique(np.nonzero(bad.reshape(len(arr), -1) if arr.ndim else bad.reshape(1, 1))[0])
                raise InputError(
                    f"Input {name!r} contains {int(bad.sum())} NaN/infinite value(s) (in sample(s) "
                    f"{where[:10].tolist()}{' ...' if len(where) > 10 else ''}); fix or drop those samples.")
            out[name] = np.ascontiguousarray(arr)
        return out

    def auto_batch_size(self) -> int:
        """Samples per chunk that keep peak memory near the budget: the largest
        per-sample activation × 16 (im2col and workspace).

        The budget (bytes) is ``ANASIM_MEMORY_BUDGET`` (default 2 GiB) on the CPU and
        ``ANASIM_GPU_MEMORY_BUDGET`` (default a quarter of the GPU's memory) on "cuda".
        """
        if self.device == "cuda":
            budget = int(os.environ.get("ANASIM_GPU_MEMORY_BUDGET", 0)) or _gpu_memory() // 4
        else:
            budget = int(os.environ.get("ANASIM_MEMORY_BUDGET", 2 * 2**30))
        per_sample = 1
        for vi in self.ir.value_info.values():
            if vi.shape and len(vi.shape) > 1 and not isinstance(vi.shape[0], int) and all(
                    isinstance(d, int) for d in vi.shape[1:]):
                itemsize = vi.dtype.itemsize if vi.dtype is not None else 4
                per_sample = max(per_sample, int(np.prod(vi.shape[1:])) * itemsize)
        return max(1, budget // (16 * per_sample))

    def _run_once(self, feeds: dict[str, np.ndarray], want: list[str], context: RunContext) -> dict[str, np.ndarray]:
        memory.use_heap()  # activations reuse freed memory instead of faulting in fresh pages (once)
        values: dict[str, np.ndarray] = dict(self.ir.constants)
        if self.device == "cuda":
            from ..kernels.cuda import as_device

            feeds = {k: as_device(v, v.dtype) for k, v in feeds.items()}
        values.update(feeds)
        trace = os.environ.get("ANASIM_TRACE", "") not in ("", "0")
        stop = os.environ.get("ANASIM_STOP_AFTER")
        stop_after = int(stop) if stop else -1
        nodes, free_after = self.nodes, self._free_after
        wanted = set(want)  # kept even where an intermediate value could be freed
        if self._fast and not trace and stop_after < 0 and self._fused_away.isdisjoint(want):
            nodes, free_after = self._fast, self._fast_free  # same numbers, fewer passes
        prof = context.profile
        for k, node in enumerate(nodes):
            args = [values[i] if i else None for i in node.inputs]
            t0 = time.perf_counter() if prof is not None else 0.0
            try:
                result = node.fn(*args, context=context) if node.takes_context else node.fn(*args)
            except AnasimError:
                raise
            except Exception as exc:  # pragma: no cover - message path tested via bad models
                shapes = [None if a is None else getattr(a, "shape", None) for a in args]
                raise ExecutionError(
                    f"Node {node.name!r} ({node.op_type}) failed on input shapes {shapes}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if prof is not None:
                key = ("op", node.op_type)
                seconds, count = prof.get(key, (0.0, 0))
                prof[key] = (seconds + time.perf_counter() - t0, count + 1)
            if not isinstance(result, tuple):
                result = (result,)
            for name, val in zip(node.outputs, result):
                if name:
                    values[name] = val
            if trace:
                for name in node.outputs:
                    v = values.get(name)
                    where = ""
                    if self.device == "cuda" and v is not None and not isinstance(v, np.ndarray):
                        from ..kernels.cuda import to_host

                        v, where = np.asarray(to_host(v)), " (on the GPU)"  # a debugging copy
                    if isinstance(v, np.ndarray) and v.size and v.dtype.kind in "fiu":
                        print(f"[anasim] {k:4d} {node.op_type:>18s} {name}: {v.shape} {v.dtype} "
                              f"min {v.min():.5g} max {v.max():.5g}{where}", file=sys.stderr)
            if k == stop_after:
                return values
            for name in free_after[k]:
                if name not in wanted:
                    values.pop(name, None)
        if self.device == "cuda":
            from ..kernels.cuda import to_host

            return {n: np.asarray(to_host(values[n])) for n in want}
        return {n: values[n] for n in want}

    def run(self, feeds: Mapping[str, np.ndarray], *, batch_size: int | None = None,
            outputs: list[str] | None = None, check_finite: bool = False,
            context: RunContext | None = None) -> dict[str, np.ndarray]:
        """Run the model.

        Parameters
        ----------
        feeds : dict of str to array
            One array per model input, by name. Float inputs are cast to the declared
            float type; other dtype, rank or fixed-dimension mismatches raise InputError.
        batch_size : int, optional
            If given, the inputs are split along axis 0 into chunks of at most this many
            samples, run one after the other and the outputs concatenated; bounds peak
            memory for large batches. Default: the whole batch at once, unless it is larger
            than :meth:`auto_batch_size` (memory budget ``ANASIM_MEMORY_BUDGET``, 2 GiB),
            in which case it is chunked automatically.
        outputs : list of str, optional
            Names of the outputs to return (default: all model outputs).
        check_finite : bool, default False
            Refuse inputs containing NaN/inf (InputError naming the samples). Off by
            default because NaN is a legitimate ONNX value (IsNaN); the analog simulator
            and the experiments always check.
        context : RunContext, optional
            Handed to the injected callables (``overrides``); the chunk of ``batch_size``
            samples starting at sample ``s`` gets ``context.shifted(s)``. Default
            ``RunContext()`` (the feeds are the data set's first samples, repetition 0).
        """
        context = RunContext() if context is None else context
        feeds = self._check_feeds(feeds, check_finite)
        want = outputs or [o.name for o in self.outputs]
        if batch_size is None and feeds:
            n = {a.shape[0] if a.ndim else 1 for a in feeds.values()}
            auto = self.auto_batch_size()
            if len(n) == 1 and n.pop() > auto:
                batch_size = auto
        if batch_size is None or not feeds:
            return self._run_once(feeds, want, context)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer; got {batch_size}.")
        n = {a.shape[0] if a.ndim else 1 for a in feeds.values()}
        if len(n) != 1:
            raise InputError(f"batch_size needs all inputs to share the batch dimension; got sizes {sorted(n)}.")
        total = n.pop()
        batch_size = int(batch_size)
        parts = [
            self._run_once({k: v[s:s + batch_size] for k, v in feeds.items()}, want, context.shifted(s))
            for s in range(0, max(total, 1), batch_size)
        ]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in want}

    def __call__(self, x: np.ndarray, *, batch_size: int | None = None, check_finite: bool = False) -> np.ndarray:
        """Run a single-input, single-output model on ``x`` and return the output array."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise InputError(
                f"graph(x) needs a model with one input and one output; this one has inputs "
                f"{[i.name for i in self.inputs]} and outputs {[o.name for o in self.outputs]}. "
                "Use graph.run({name: array}) instead."
            )
        return self.run({self.inputs[0].name: x}, batch_size=batch_size,
                        check_finite=check_finite)[self.outputs[0].name]
