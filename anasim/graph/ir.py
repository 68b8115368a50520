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
    fold_batchnorm: bool = True
    """Whether BatchNormalization nodes were folded into the preceding Conv/Gemm on import."""
    has_batchnorm: bool = False
    """Whether the imported model had any BatchNormalization node."""
    reload: Any = None
    """``reload(**load_kwargs) -> Graph``: import the same model again with other options."""

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
