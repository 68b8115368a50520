"""Graph rewrites applied on import, each a function ``GraphIR -> GraphIR``.

* :func:`validate_and_sort` — topological order, refusing cycles, dangling inputs and
  values produced twice (with the node and value named).
* :func:`fold_constants` — evaluate every node whose inputs are all constants with the
  op registry (this covers Constant, ConstantOfShape, Cast of float16 initializers, and
  Shape/Gather/Concat chains), plus Shape/Size of values whose shape is fully static.
* :func:`remove_identities` — drop Identity and inference-mode Dropout.
* :func:`remove_dead_nodes` — drop nodes that no graph output depends on.

:func:`run_all` is what :func:`~anasim.graph.importer.load` applies. BatchNorm folding is
not among them: :func:`with_batchnorm_folded` is a separate IR → IR pass (a new IR; the
input is left as it was), applied by :meth:`Graph.folded <anasim.graph.executor.Graph.folded>`
for the digital path and by :func:`anasim.analog` as ``mapping.fold_batchnorm`` says.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import AnasimError, ModelLoadError
from ..ops.epilogue import FUSED_DOMAIN
from ..ops.registry import resolve
from .ir import GraphIR, Node

FOLD_LIMIT_BYTES = 64 * 2**20
"""Constant-folded results larger than this stay as run-time nodes (bounded memory)."""

_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli"}


def run_all(ir: GraphIR) -> GraphIR:
    """The import passes, in order (BatchNormalization stays: see :func:`with_batchnorm_folded`)."""
    ir = validate_and_sort(ir)
    ir = remove_identities(ir)
    ir = fold_constants(ir)
    ir = remove_dead_nodes(ir)
    ir.has_batchnorm = any(n.op_type == "BatchNormalization" for n in ir.nodes)
    return ir


def with_batchnorm_folded(ir: GraphIR) -> GraphIR:
    """A new IR in which BatchNormalization is folded into the preceding Conv/Gemm where
    exact (:func:`fold_batchnorm`), then dead nodes and unused constants dropped; ``ir``
    itself is not changed (its nodes are copied, its constant arrays shared)."""
    copy = dataclasses.replace(
        ir, nodes=[dataclasses.replace(n, inputs=list(n.inputs), outputs=list(n.outputs), attrs=dict(n.attrs),
                                       meta=dict(n.meta)) for n in ir.nodes],
        constants=dict(ir.constants), fold_batchnorm=True)
    return remove_dead_nodes(fold_batchnorm(copy))


def validate_and_sort(ir: GraphIR) -> GraphIR:
    """Return ``ir`` with nodes in topological order; raise ModelLoadError on broken graphs."""
    available = set(ir.constants) | {i.name for i in ir.inputs} | {""}
    produced: dict[str, str] = {}
    for n in ir.nodes:
        for o in n.outputs:
            if not o:
                continue
            if o in produced or o in ir.constants or o in {i.name for i in ir.inputs}:
                raise ModelLoadError(
                    f"Model {ir.source!r}: value {o!r} is produced twice (by node {n.name!r} and "
                    f"{produced.get(o, 'an initializer or graph input')!r})."
                )
            produced[o] = n.name
    for n in ir.nodes:
        for i in n.inputs:
            if i not in available and i not in produced:
                raise ModelLoadError(
                    f"Model {ir.source!r}: node {n.name!r} ({n.op_type}) reads {i!r}, which no node, "
                    "initializer or graph input provides."
                )
    for o in ir.outputs:
        if o.name not in available and o.name not in produced:
            raise ModelLoadError(f"Model {ir.source!r}: graph output {o.name!r} is produced by no node.")
    # Kahn's algorithm, stable with respect to the file's order
    done = set(available)
    order: list[Node] = []
    pending = list(ir.nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in done for i in n.inputs):
                order.append(n)
                done.update(o for o in n.outputs if o)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            names = ", ".join(repr(n.name) for n in rest[:5])
            raise ModelLoadError(f"Model {ir.source!r}: the graph has a cycle through node(s) {names}.")
        pending = rest
    ir.nodes = order
    return ir


def _rename_uses(ir: GraphIR, old: str, new: str) -> None:
    for n in ir.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


def remove_identities(ir: GraphIR) -> GraphIR:
    """Remove Identity and Dropout (inference) nodes whose output is not a graph output."""
    outputs = {o.name for o in ir.outputs}
    consumers = ir.consumers()
    keep = []
    for n in ir.nodes:
        if n.op_type in ("Identity", "Dropout") and n.domain in ("", "ai.onnx"):
            mask_used = n.op_type == "Dropout" and len(n.outputs) > 1 and n.outputs[1] and (
                n.outputs[1] in consumers or n.outputs[1] in outputs)
            if not mask_used and n.outputs[0] not in outputs:
                _rename_uses(ir, n.outputs[0], n.inputs[0])
                continue
        keep.append(n)
    ir.nodes = keep
    return ir


def _static_shape(ir: GraphIR, name: str):
    vi = ir.value_info.get(name)
    if vi is None or vi.shape is None or not all(isinstance(d, int) for d in vi.shape):
        return None
    return vi.shape


def _declared_bytes(ir: GraphIR, node: Node) -> int:
    """Size of ``node``'s outputs as declared by shape inference (0 where unknown)."""
    total = 0
    for o in node.outputs:
        vi = ir.value_info.get(o)
        if vi is not None and vi.shape is not None and all(isinstance(d, int) for d in vi.shape):
            itemsize = vi.dtype.itemsize if vi.dtype is not None else 4
            total += int(np.prod([max(d, 0) for d in vi.shape], dtype=np.float64)) * itemsize
    return total


def fold_constants(ir: GraphIR) -> GraphIR:
    """Evaluate nodes whose inputs are all constant; fold Shape/Size of static shapes."""
    keep = []
    for n in ir.nodes:
        if n.op_type in _NEVER_FOLD or not n.outputs:
            keep.append(n)
            continue
        ins = [i for i in n.inputs if i]
        if n.op_type in ("Shape", "Size") and n.inputs and n.inputs[0] not in ir.constants:
            shape = _static_shape(ir, n.inputs[0])
            if shape is None:
                keep.append(n)
                continue
            arr = np.array(shape, dtype=np.int64)
            if n.op_type == "Shape":
                start = n.attrs.get("start", 0)
                end = n.attrs.get("end", None)
                arr = arr[start:end]
            else:
                arr = np.array(int(np.prod(shape)), dtype=np.int64)
            ir.constants[n.outputs[0]] = arr
            continue
        if not all(i in ir.constants for i in ins) or _declared_bytes(ir, n) > FOLD_LIMIT_BYTES:
            keep.append(n)
            continue
        impl = resolve(n.domain, n.op_type, ir.opset(n.domain), n.name)
        attrs = dict(n.attrs)
        if impl.wants_n_outputs:
            attrs["n_outputs"] = len(n.outputs)
        try:
            result = impl.fn(*[ir.constants[i] if i else None for i in n.inputs], **attrs)
        except AnasimError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"Model {ir.source!r}: node {n.name!r} ({n.op_type}) fails on its constant inputs: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        result = result if isinstance(result, tuple) else (result,)
        if sum(np.asarray(r).nbytes for r in result) > FOLD_LIMIT_BYTES:
            keep.append(n)
            continue
        for o, r in zip(n.outputs, result):
            if o:
                ir.constants[o] = np.asarray(r)
    ir.nodes = keep
    return ir


def fold_batchnorm(ir: GraphIR) -> GraphIR:
    """Fold BatchNormalization(Conv/Gemm(x, W, b)) into W and b where exact.

    Conditions: the Conv/Gemm weight and bias and all BN parameters are constants, the
    Conv/Gemm output feeds only this BN and is not a graph output, BN is in inference
    mode, and (Gemm) the bias is absent or 1-D. Computed in float64, stored as float32.
    """
    consumers = ir.consumers()
    producers = ir.producers()
    outputs = {o.name for o in ir.outputs}
    remove: set[int] = set()
    for bn in ir.nodes:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        if bn.attrs.get("training_mode", 0) or len([o for o in bn.outputs if o]) != 1:
            continue
        if ir.opset("") < 9 and not bn.attrs.get("spatial", 1):
            continue
        x, params = bn.inputs[0], bn.inputs[1:5]
        if not all(p in ir.constants for p in params):
            continue
        prod = producers.get(x)
        if prod is None or prod.op_type not in ("Conv", "Gemm") or x in outputs:
            continue
        if len(consumers.get(x, [])) != 1 or len(prod.inputs) < 2 or prod.inputs[1] not in ir.constants:
            continue
        bias_name = prod.inputs[2] if len(prod.inputs) > 2 and prod.inputs[2] else None
        if bias_name is not None and bias_name not in ir.constants:
            continue
        scale, beta, mean, var = (ir.constants[p].astype(np.float64) for p in params)
        eps = float(bn.attrs.get("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        w = ir.constants[prod.inputs[1]].astype(np.float64)
        if prod.op_type == "Conv":
            if w.shape[0] != s.shape[0]:
                continue
            w_new = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
            b = ir.constants[bias_name].astype(np.float64) if bias_name else np.zeros(w.shape[0])
            b_new = (b - mean) * s + beta
        else:  # Gemm: Y = alpha * A' @ B' + beta * C
            trans_b = prod.attrs.get("transB", 0)
            m = w.shape[0] if trans_b else w.shape[1]
            if w.ndim != 2 or m != s.shape[0]:
                continue
            w_new = w * (s[:, None] if trans_b else s[None, :])
            gbeta = float(prod.attrs.get("beta", 1.0))
            if bias_name:
                c = ir.constants[bias_name].astype(np.float64)
                if c.ndim > 1 and c.shape[0] != 1 or c.size not in (1, m):
                    continue
                c = np.broadcast_to(c.reshape(-1), (m,)) * gbeta
            else:
                c = np.zeros(m)
            b_new = (c - mean) * s + beta
            prod.attrs["beta"] = 1.0
        w_name = f"{prod.name}::weight_bnfolded"
        b_name = f"{prod.name}::bias_bnfolded"
        ir.constants[w_name] = w_new.astype(np.float32)
        ir.constants[b_name] = b_new.astype(np.float32)
        prod.inputs = [prod.inputs[0], w_name, b_name]
        prod.outputs = [bn.outputs[0]]
        prod.meta["folded_batchnorm"] = bn.name
        remove.add(id(bn))
    if remove:
        ir.nodes = [n for n in ir.nodes if id(n) not in remove]
    return ir


def remove_dead_nodes(ir: GraphIR) -> GraphIR:
    """Drop nodes whose outputs no graph output depends on, and unused constants."""
    needed = {o.name for o in ir.outputs}
    keep = []
    for n in reversed(ir.nodes):
        if any(o in needed for o in n.outputs if o):
            keep.append(n)
            needed.update(i for i in n.inputs if i)
    ir.nodes = keep[::-1]
    ir.constants = {k: v for k, v in ir.constants.items() if k in needed}
    return ir


# --------------------------------------------------------------------------- integer-weight ops
INTEGER_WEIGHT_OPS = {"QLinearConv": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1}
"""Quantized ops with an integer weight, and the input that holds it."""
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_FLOAT, _INT32 = 1, 6  # TensorProto codes for Cast's ``to``


def _const(ir: GraphIR, node: Node, k: int):
    name = node.inputs[k] if len(node.inputs) > k else ""
    return None if not name else ir.constants.get(name)


def _per_output(v: np.ndarray, n_out: int, axis: int, ndim: int) -> np.ndarray:
    """A scale or zero point (scalar, or one per output channel) shaped to broadcast against a
    weight whose output axis is ``axis``."""
    v = np.asarray(v, np.float64).reshape(-1)
    if v.size not in (1, n_out):
        raise ValueError(f"{v.size} values for {n_out} outputs")
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def quantized_as_float(ir: GraphIR) -> GraphIR:
    """A new IR in which every ConvInteger / MatMulInteger / QLinearConv / QLinearMatMul with a
    constant integer weight (and constant weight scale and zero point) is a float Conv or
    MatMul of the dequantized weight between digital steps, so that an analog simulation
    maps that weight onto tiles; ``ir`` is not changed.

    * QLinearConv / QLinearMatMul: DequantizeLinear(x) → Conv / MatMul (weight (w − w_zp)·w_scale,
      bias B·x_scale·w_scale) → QuantizeLinear(y_scale, y_zp).
    * ConvInteger / MatMulInteger: Cast(x) − x_zp → Conv / MatMul (weight w − w_zp) → Round →
      Cast to int32 (the tiles' sum rounded to the integer the op returns).

    The float node keeps the original node's name ([[layers]] patterns still match it).
    Only for the analog simulator: in float32 the product is no longer the op's exact integer
    arithmetic (the digital graph keeps the integer ops). Nodes whose weight, scale or zero
    point are computed at run time, or ConvInteger/MatMulInteger before opset 11 (no Round),
    stay as they are.
    """
    if not any(n.op_type in INTEGER_WEIGHT_OPS and n.domain in ("", "ai.onnx") for n in ir.nodes):
        return ir
    constants = dict(ir.constants)
    nodes: list[Node] = []
    for n in ir.nodes:
        new = _float_version(ir, n, constants) if n.domain in ("", "ai.onnx") else None
        nodes.extend(new or [n])
    return dataclasses.replace(ir, nodes=nodes, constants=constants)


def _float_version(ir: GraphIR, n: Node, constants: dict) -> list[Node] | None:
    k = INTEGER_WEIGHT_OPS.get(n.op_type)
    if k is None:
        return None
    w = _const(ir, n, k)
    if w is None or w.dtype.kind not in "iu":
        return None
    conv = n.op_type in ("QLinearConv", "ConvInteger")
    if not conv and w.ndim != 2:
        return None
    axis, n_out = (0, w.shape[0]) if conv else (1, w.shape[1])
    tag = n.name or n.outputs[0]
    attrs = {a: v for a, v in n.attrs.items() if a in _CONV_ATTRS} if conv else {}
    op = "Conv" if conv else "MatMul"
    wf_name, yf_name = f"{tag}::weight_float", f"{tag}::output_float"
    try:
        if n.op_type in ("QLinearConv", "QLinearMatMul"):
            w_scale, w_zp, x_scale = _const(ir, n, 4), _const(ir, n, 5), _const(ir, n, 1)
            if w_scale is None or x_scale is None or (len(n.inputs) > 5 and n.inputs[5] and w_zp is None):
                return None
            zp = 0.0 if w_zp is None else _per_output(w_zp, n_out, axis, w.ndim)
            s = _per_output(w_scale, n_out, axis, w.ndim)
            constants[wf_name] = ((w.astype(np.float64) - zp) * s).astype(np.float32)
            inputs = [f"{tag}::input_float", wf_name]
            if conv and len(n.inputs) > 8 and n.inputs[8]:
                b = _const(ir, n, 8)
                if b is None:
                    return None
                scale = np.float64(np.asarray(x_scale).reshape(())) * np.asarray(w_scale, np.float64).reshape(-1)
                constants[f"{tag}::bias_float"] = (b.astype(np.float64) * scale).astype(np.float32)
                inputs.append(f"{tag}::bias_float")
            return [Node(f"{tag}::dequantize_input", "DequantizeLinear", "", list(n.inputs[0:3]), [inputs[0]]),
                    Node(n.name, op, "", inputs, [yf_name], attrs, dict(n.meta, from_op=n.op_type)),
                    Node(f"{tag}::quantize_output", "QuantizeLinear", "", [yf_name, n.inputs[6], n.inputs[7]],
                         list(n.outputs))]
        if ir.opset("") < 11:
            return None
        zp_name = n.inputs[3] if len(n.inputs) > 3 else ""
        w_zp = _const(ir, n, 3)
        if zp_name and w_zp is None:
            return None
        zp = 0.0 if w_zp is None else _per_output(w_zp, n_out, axis, w.ndim)
        constants[wf_name] = (w.astype(np.float64) - zp).astype(np.float32)
        x_name = f"{tag}::input_float"
        out = [Node(f"{tag}::cast_input", "Cast", "", [n.inputs[0]], [x_name if len(n.inputs) < 3 or not n.inputs[2]
                                                                      else f"{tag}::input_cast"], {"to": _FLOAT})]
        if len(n.inputs) > 2 and n.inputs[2]:
            out += [Node(f"{tag}::cast_zero_point", "Cast", "", [n.inputs[2]], [f"{tag}::zero_point_float"],
                         {"to": _FLOAT}),
                    Node(f"{tag}::center_input", "Sub", "", [f"{tag}::input_cast", f"{tag}::zero_point_float"],
                         [x_name])]
        return out + [Node(n.name, op, "", [x_name, wf_name], [yf_name], attrs, dict(n.meta, from_op=n.op_type)),
                      Node(f"{tag}::round", "Round", "", [yf_name], [f"{tag}::output_rounded"]),
                      Node(f"{tag}::cast_output", "Cast", "", [f"{tag}::output_rounded"], list(n.outputs),
                           {"to": _INT32})]
    except ValueError:  # a scale / zero point that is neither scalar nor per output: leave it digital
        return None


# --------------------------------------------------------------------------- epilogue fusion
_ACTIVATION_OPS = ("Relu", "Clip", "LeakyRelu")



_F32_MAX = 3.4028234663852886e38  # Clip-1/6's default bounds (the largest float32)


def activation_bounds(ir: GraphIR, node: Node) -> tuple[float, float] | None:
    """(lo, hi) of a ``Relu`` (0, inf) or of a ``Clip`` whose bounds are constants (Clip-1/6:
    its attributes, default ±float32 max as the op has them; Clip-11+: its inputs, absent =
    ±inf), else None: what a producer applies in place of the node (the fused analog
    convolution's activation, :func:`fuse_conv_epilogues`)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Relu":
        return 0.0, np.inf
    if node.op_type != "Clip":
        return None
    if ir.opset("") < 11:
        return float(node.attrs.get("min", -_F32_MAX)), float(node.attrs.get("max", _F32_MAX))
    bounds = []
    for k, default in ((1, -np.inf), (2, np.inf)):
        name = node.inputs[k] if len(node.inputs) > k else ""
        if not name:
            bounds.append(default)
        elif name in ir.constants and np.asarray(ir.constants[name]).size == 1:
            bounds.append(float(np.asarray(ir.constants[name]).reshape(())))
        else:
            return None
    return bounds[0], bounds[1]


def _activation_params(ir: GraphIR, n: Node) -> tuple[float, float] | None:
    """(a, b) of :class:`anasim.ops.epilogue.Epilogue` for activation node ``n``, or None
    when it cannot be fused (Clip bounds that are not constants)."""
    if n.op_type == "Relu":
        return 0.0, 0.0
    if n.op_type == "LeakyRelu":
        return float(n.attrs.get("alpha", 0.01)), 0.0
    return activation_bounds(ir, n)


def sole_consumer(value: str, consumers: dict, graph_outputs) -> Node | None:
    """The one standard-domain node that reads ``value`` (once), or None when the value is
    a graph output or has no or several readers: where an element-wise op can be folded
    into the op that produces ``value`` (``consumers``: :meth:`GraphIR.consumers`)."""
    users = consumers.get(value, []) if value else []
    if not value or value in graph_outputs or len(users) != 1:
        return None
    user = users[0]
    return user if user.domain in ("", "ai.onnx") and user.inputs.count(value) == 1 else None


def fuse_conv_epilogues(ir: GraphIR, keep=()) -> GraphIR:
    """A new IR (``ir`` unchanged) in which ``Conv → [Add] → [Relu | Clip | LeakyRelu]``
    chains are single ``anasim::ConvEpilogue`` nodes (:func:`anasim.ops.nn.conv_epilogue`),
    and ``Add → activation`` pairs whose Add follows no fusable Conv single
    ``anasim::AddActivation`` nodes: the element-wise ops run on each block of the
    convolution's output while it is in cache, without arrays of their own.

    A node joins a chain only if the value between it and the previous one has no other
    consumer and is not a graph output, and none of the chain's nodes is in ``keep``
    (nodes that run injected callables, e.g. analog layers). The fused node takes the
    last node's name and output and sits at its place in the order.
    """
    if not any(n.op_type == "Conv" or n.op_type == "Add" for n in ir.nodes) or ir.opset("") < 7:
        return ir
    keep = set(keep)
    outputs = {o.name for o in ir.outputs}
    consumers = ir.consumers()

    def next_in_chain(n: Node) -> Node | None:
        user = sole_consumer(n.outputs[0] if len(n.outputs) == 1 else "", consumers, outputs)
        return None if user is None or user.name in keep or user.name in absorbed else user

    replaced: dict[str, Node] = {}  # name of a chain's last node -> the fused node
    absorbed: set[str] = set()
    for n in ir.nodes:
        if n.name in absorbed or n.name in keep or n.domain not in ("", "ai.onnx"):
            continue
        is_conv = n.op_type == "Conv" and len(n.outputs) == 1
        if not is_conv and n.op_type != "Add":
            continue
        chain, residual, act, params = [n], "", None, (0.0, 0.0)
        nxt = next_in_chain(n)
        if is_conv and nxt is not None and nxt.op_type == "Add" and len(nxt.inputs) == 2 and not nxt.attrs:
            residual = nxt.inputs[1] if nxt.inputs[0] == n.outputs[0] else nxt.inputs[0]
            chain.append(nxt)
            nxt = next_in_chain(nxt)
        if nxt is not None and nxt.op_type in _ACTIVATION_OPS:
            params = _activation_params(ir, nxt)
            if params is not None:
                act = nxt
                chain.append(nxt)
        if n.op_type == "Add" and (act is None or n.attrs or len(n.inputs) != 2):
            continue
        if len(chain) == 1:
            continue
        last = chain[-1]
        attrs = {"activation": "" if act is None else act.op_type, "act_a": params[0], "act_b": params[1]}
        if is_conv:
            attrs.update(n.attrs)
            inputs = list(n.inputs) + [""] * (3 - len(n.inputs)) + [residual]
            op = "ConvEpilogue"
        else:
            inputs = list(n.inputs)
            op = "AddActivation"
        fused = Node(last.name, op, FUSED_DOMAIN, inputs, list(last.outputs), attrs,
                     {"fused": tuple(c.name for c in chain)})
        replaced[last.name] = fused
        absorbed.update(c.name for c in chain)
    if not replaced:
        return ir
    nodes = [replaced[n.name] if n.name in replaced else n for n in ir.nodes
             if n.name in replaced or n.name not in absorbed]
    opsets = dict(ir.opsets)
    opsets.setdefault(FUSED_DOMAIN, 1)
    return dataclasses.replace(ir, nodes=nodes, opsets=opsets)
