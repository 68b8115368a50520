"""ONNX → :class:`~anasim.graph.ir.GraphIR` → runnable :class:`~anasim.graph.executor.Graph`.

``load`` reads the model (path, bytes or ``onnx.ModelProto``), runs the ONNX checker and
shape inference, converts it to the IR and applies the passes in :mod:`.passes`:
constant folding (Constant, ConstantOfShape, Shape chains with static shapes, Cast of
initializers, any node whose inputs are all constant), BatchNormalization folding into a
preceding Conv/Gemm, and removal of Identity/Dropout and dead nodes.

Every problem with the file itself is reported as :class:`~anasim.errors.ModelLoadError`
naming the file and the reason; an op anasim does not implement as
:class:`~anasim.errors.UnsupportedOpError` naming node, op, domain and opset.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelLoadError
from ..files import read_bytes
from .executor import Graph
from .ir import GraphIR, Node, ValueInfo
from . import passes

MAX_OPSET = 21
"""Highest default-domain opset whose semantics anasim implements and tests."""

"""Op types that become analog layers when their weight operand is a constant."""


def _read(model, name_hint: str | None) -> tuple[onnx.ModelProto, bytes, str, str | None]:
    """Return (proto, serialized bytes, display name, base directory for external data)."""
    if isinstance(model, onnx.ModelProto):
        return model, model.SerializeToString(), name_hint or "<ModelProto>", None
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, where, base = bytes(model), name_hint or "<bytes>", None
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        where, base = str(path), str(path.resolve().parent)
        data = read_bytes(path, "model", ModelLoadError)
    else:
        raise ModelLoadError(
            f"anasim.load expects a path, bytes or onnx.ModelProto; got {type(model).__name__}."
        )
    if not data:
        raise ModelLoadError(f"Cannot load model {where!r}: the file is empty.")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelLoadError(
            f"Cannot load model {where!r}: not an ONNX file, or truncated ({type(exc).__name__}: {exc})."
        ) from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelLoadError(
            f"Cannot load model {where!r}: the file parsed but holds no ONNX graph (is it an ONNX model?)."
        )
    return proto, data, where, base


def _load_external_data(proto: onnx.ModelProto, base: str | None, where: str) -> None:
    """Resolve tensors stored outside the file, refusing locations outside the model's folder."""
    from onnx.external_data_helper import uses_external_data

    tensors = [t for t in _all_tensors(proto) if uses_external_data(t)]
    if not tensors:
        return
    if base is None:
        raise ModelLoadError(
            f"Model {where!r} stores tensors in external files; load it from its path so they can be found."
        )
    root = os.path.realpath(base)
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = os.path.realpath(os.path.join(root, loc))
        if os.path.isabs(loc) or not (target == root or target.startswith(root + os.sep)):
            raise ModelLoadError(
                f"Model {where!r}: tensor {t.name!r} refers to external data {loc!r} outside the "
                "model's folder; refused (external data must live beside the model)."
            )
        if not os.path.isfile(target):
            raise ModelLoadError(f"Model {where!r}: external data file {loc!r} for tensor {t.name!r} is missing.")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = os.path.getsize(target)
        if offset < 0 or offset > size or (length is not None and offset + int(length) > size):
            raise ModelLoadError(
                f"Model {where!r}: external data for tensor {t.name!r} lies beyond the end of {loc!r}."
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, root)
    except Exception as exc:
        raise ModelLoadError(f"Model {where!r}: cannot read external data ({exc}).") from None


LARGE_TENSOR_BYTES = 1024
"""Initializers above this size are replaced by typed graph inputs for the checker and
shape inference (which otherwise serialize every weight several times)."""


def _without_large_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose large initializers are declared as graph inputs instead.

    Checker and shape inference see the same names, types and shapes but not the weight
    bytes; small initializers (shape vectors, axes...) stay, since shape inference reads
    their values. The weights themselves are decoded and checked by the importer.
    """
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    g = light.graph
    declared = {i.name for i in g.input}
    keep = []
    for t in g.initializer:
        if t.ByteSize() > LARGE_TENSOR_BYTES and not t.external_data:
            if t.name not in declared:
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(t)
    if len(keep) != len(g.initializer):
        g.ClearField("initializer")
        g.initializer.extend(keep)
    return light


def _all_tensors(proto: onnx.ModelProto):
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _np_dtype(elem_type: int):
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else None
    except Exception:
        return None


def _loose_outputs(graph) -> set[str]:
    """Graph outputs declared without a tensor type or without a shape: the ONNX checker
    refuses them, onnxruntime runs them (a common sight after adding outputs for debugging)."""
    out = set()
    for vi in graph.output:
        t = vi.type
        if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape") or not t.tensor_type.elem_type:
            out.add(vi.name)
    return out


def _strict_copy(model: onnx.ModelProto, loose: set[str]) -> onnx.ModelProto:
    """``model`` as the checker wants it: the loose outputs (see :func:`_loose_outputs`) and
    value_info entries without a type left out; everything else is checked as it is."""
    if not loose and all(vi.type.HasField("tensor_type") for vi in model.graph.value_info):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    keep = [vi for vi in copy.graph.output if vi.name not in loose]
    hints = [vi for vi in copy.graph.value_info if vi.type.HasField("tensor_type")]
    copy.graph.ClearField("output")
    copy.graph.output.extend(keep)
    copy.graph.ClearField("value_info")
    copy.graph.value_info.extend(hints)
    return copy


def _value_info(vi: onnx.ValueInfoProto) -> ValueInfo:
    t = vi.type.tensor_type
    shape = None
    if t.HasField("shape"):
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:  # PaddlePaddle's -1: dynamic, as onnxruntime
                dims.append(d.dim_param or None)
            elif d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return ValueInfo(vi.name, _np_dtype(t.elem_type), shape)


def _attr_value(a: onnx.AttributeProto, where: str):
    if a.type == onnx.AttributeProto.TENSOR:
        return _tensor_to_array(a.t, where)
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return a  # subgraphs: only meaningful to ops that support them (none yet)
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
    return v


def _tensor_to_array(t: onnx.TensorProto, where: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:
        raise ModelLoadError(f"Model {where!r}: tensor {t.name!r} cannot be decoded ({exc}).") from None


def to_ir(proto: onnx.ModelProto, where: str, sha256: str) -> GraphIR:
    """Convert a checked, shape-inferred ModelProto to the IR (no passes)."""
    g = proto.graph
    constants = {t.name: _tensor_to_array(t, where) for t in g.initializer}
    inputs = [_value_info(v) for v in g.input if v.name not in constants]
    outputs = [_value_info(v) for v in g.output]
    value_info = {v.name: _value_info(v) for v in list(g.value_info) + list(g.input) + list(g.output)}
    opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in proto.opset_import}
    nodes, seen = [], set()
    for k, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{k}"
        if name in seen:
            name = f"{name}_{k}"
        seen.add(name)
        attrs = {a.name: _attr_value(a, where) for a in n.attribute}
        nodes.append(Node(name, n.op_type, n.domain, list(n.input), list(n.output), attrs))
    return GraphIR(g.name or "graph", nodes, inputs, outputs, constants, value_info, opsets, sha256, where)


def load(model, *, check: bool = True, fold_batchnorm: bool = True, name: str | None = None) -> Graph:
    """Load an ONNX model and return a runnable :class:`~anasim.graph.executor.Graph`.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model. External data files must lie in the model's folder.
    check : bool, default True
        Run ``onnx.checker`` (full check with shape inference) before importing.
    fold_batchnorm : bool, default True
        Fold BatchNormalization nodes that follow a Conv/Gemm with constant weights into
        that node's weight and bias (what a deployed analog chip stores). With False they
        stay separate, digital nodes (what aihwkit does with an unfused PyTorch model).
        Either way the graph keeps the model as imported, so :meth:`Graph.folded` gives
        the other choice without reading the file again, and :func:`anasim.analog`
        applies the configuration's ``mapping.fold_batchnorm`` to it.
    name : str, optional
        Name used in messages for bytes/ModelProto input.

    Raises
    ------
    ModelLoadError
        Not a file / not ONNX / truncated / checker or shape-inference failure /
        external data outside the model's folder; the message names the file.
    UnsupportedOpError
        An op (or op version) anasim does not implement; names node, op, domain, opset.
    """
    proto, data, where, base = _read(model, name)
    _load_external_data(proto, base, where)
    light = _without_large_initializers(proto)
    loose = _loose_outputs(proto.graph)
    if check:
        try:
            onnx.checker.check_model(_strict_copy(light, loose))
        except Exception as exc:
            msg = str(exc).strip().splitlines()
            raise ModelLoadError(
                f"Model {where!r} fails the ONNX checker: {' '.join(msg[:3])}"
            ) from None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelLoadError(f"Model {where!r} does not import the default ONNX domain (no opset).")
    if opset > MAX_OPSET:
        warnings.warn(
            f"Model {where!r} uses opset {opset}; anasim implements opsets up to {MAX_OPSET}. "
            "Ops are run with their latest implemented version.", stacklevel=2)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False)
    except Exception as exc:
        raise ModelLoadError(f"Model {where!r}: ONNX shape inference failed: {exc}") from None
    proto.graph.ClearField("value_info")
    proto.graph.value_info.extend(inferred.graph.value_info)
    if loose:  # outputs declared without a type or shape: take what shape inference found
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in proto.graph.output:
            if out.name in loose and out.name in known and known[out.name].type.HasField("tensor_type"):
                out.type.CopyFrom(known[out.name].type)
    ir = to_ir(proto, where, hashlib.sha256(data).hexdigest())
    _check_finite_constants(ir)
    return Graph(passes.run_all(ir)).folded(fold_batchnorm)


_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")


def _check_finite_constants(ir: GraphIR) -> None:
    """NaN in a layer's weights is an error naming the tensor and its layers; other
    non-finite constants (masks with -inf, test data) are only warned about."""
    consumers = ir.consumers()
    for name, arr in ir.constants.items():
        if arr.dtype.kind != "f" or arr.size == 0:
            continue
        finite = np.isfinite(arr)
        if finite.all():
            continue
        users = consumers.get(name, [])
        names = ", ".join(f"{n.name!r} ({n.op_type})" for n in users) or "no node"
        n_nan = int(np.isnan(arr).sum())
        if n_nan and any(n.op_type in _WEIGHT_OPS for n in users):
            raise ModelLoadError(
                f"Model {ir.source!r}: tensor {name!r} (used by {names}) contains {n_nan} NaN value(s) "
                f"of {arr.size}; the model is broken (re-export it from a healthy checkpoint).")
        warnings.warn(f"Model {ir.source!r}: tensor {name!r} (used by {names}) contains "
                      f"{int((~finite).sum())} NaN/infinite value(s).", stacklevel=3)
