"""A small typed intermediate representation of an ONNX graph.

The importer turns an ``onnx.ModelProto`` into a :class:`GraphIR`; passes rewrite it
(constant folding, BatchNormalization folding, Identity removal); the executor binds
it to op implementations. Constants (initializers and folded values) are NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

Dim = Union[int, str, None]
"""A tensor dimension: a fixed size, a symbolic name (e.g. the batch ``"N"``), or unknown."""


@dataclass
class ValueInfo:
    """Name, element type and shape of a graph input, output or intermediate value."""

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name}: {self.dtype} [{dims}]"


@dataclass
class Node:
    """One ONNX node: op type, its inputs/outputs by value name ('' = absent), attributes."""

    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    """Importer notes that are not op attributes (e.g. ``folded_batchnorm``)."""


@dataclass
class GraphIR:
    """Nodes in topological order plus constants and typed inputs/outputs."""

    name: str
    nodes: list[Node]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    constants: dict[str, np.ndarray]
    value_info: dict[str, ValueInfo]
    opsets: dict[str, int]
    sha256: str = ""
    source: str = "<memory>"
    fold_batchnorm: bool = False
    """Whether BatchNormalization nodes were folded into the preceding Conv/Gemm
    (:func:`~anasim.graph.passes.with_batchnorm_folded`)."""
    has_batchnorm: bool = False
    """Whether the imported model has any BatchNormalization node (before folding)."""

    def opset(self, domain: str) -> int:
        domain = "" if domain == "ai.onnx" else domain
        return self.opsets.get(domain, self.opsets.get("", 1))

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out


ANALOG_OPS = ("Conv", "Gemm", "MatMul")
"""The ops whose constant weight an analog simulation maps onto tiles."""
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
"""Recurrent ops whose constant input weights W and recurrent weights R go onto tiles."""


def analog_candidates(ir: GraphIR) -> list[str]:
    """Names of the nodes an analog simulation can map onto tiles, in graph order: Conv /
    Gemm / MatMul whose weight (input 1) is a constant, and LSTM / GRU / RNN whose W and R
    (inputs 1 and 2) are constants."""
    out = []
    for n in ir.nodes:
        if n.domain not in ("", "ai.onnx") or len(n.inputs) < 2:
            continue
        if n.op_type in ANALOG_OPS:
            w = ir.constants.get(n.inputs[1])
            if w is not None and (n.op_type != "MatMul" or w.ndim == 2):
                out.append(n.name)
        elif n.op_type in RECURRENT_OPS and len(n.inputs) > 2 and all(
                ir.constants.get(n.inputs[k]) is not None for k in (1, 2)):
            out.append(n.name)
    return out
