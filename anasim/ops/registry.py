"""The operator registry: one implementation per (domain, op type, since-version).

An implementation is a plain function ``fn(*inputs, **attributes)`` whose keyword
names and defaults are copied from the ONNX specification; missing optional inputs
arrive as ``None``. It returns one array, or a tuple of arrays for multi-output ops.

``@register("Gemm", since=13)`` adds an implementation; :func:`resolve` picks, for a
model's opset, the implementation with the largest ``since`` that is <= that opset,
as the ONNX reference evaluator does. Nothing here scans module globals: an op exists
only if a module registered it explicitly.

This module imports no op module (they import it). The built-in ones (elementwise, nn,
tensor, reduce, resize) are imported by the package, :mod:`anasim.ops`, which Python
loads before any of its modules, this one included: whoever imports :func:`resolve` finds
them registered.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

from ..errors import UnsupportedOpError


@dataclass(frozen=True)
class OpImpl:
    """One registered implementation of an ONNX operator."""

    domain: str
    op_type: str
    since: int
    fn: Callable
    wants_n_outputs: bool = False
    """If true, the executor passes ``n_outputs=len(node.output)`` (e.g. Split)."""


_REGISTRY: dict[tuple[str, str], list[OpImpl]] = {}


def register(op_type: str, since: int = 1, domain: str = "", wants_n_outputs: bool = False):
    """Decorator registering ``fn`` as the implementation of ``op_type`` from opset ``since``."""

    def deco(fn: Callable) -> Callable:
        impls = _REGISTRY.setdefault((domain, op_type), [])
        if any(i.since == since for i in impls):
            raise RuntimeError(f"{domain or 'ai.onnx'}::{op_type} since {since} registered twice")
        impl = OpImpl(domain, op_type, since, fn, wants_n_outputs)
        bisect.insort(impls, impl, key=lambda i: i.since)
        return fn

    return deco


def supported_ops() -> list[str]:
    """Sorted list of supported op types (``domain::Op`` for non-default domains)."""
    return sorted(op if not d else f"{d}::{op}" for d, op in _REGISTRY)


def resolve(domain: str, op_type: str, opset: int, node_name: str = "?") -> OpImpl:
    """Implementation of ``op_type`` for a model importing ``domain`` at version ``opset``."""
    domain = "" if domain == "ai.onnx" else domain
    impls = _REGISTRY.get((domain, op_type))
    where = f"node {node_name!r}: op {op_type!r} (domain {domain or 'ai.onnx'!r}, opset {opset})"
    if not impls:
        raise UnsupportedOpError(
            f"Unsupported operator at {where}. anasim supports: {', '.join(supported_ops())}."
        )
    usable = [i for i in impls if i.since <= opset]
    if not usable:
        raise UnsupportedOpError(
            f"Unsupported operator version at {where}: anasim implements it from opset "
            f"{impls[0].since} on. Re-export the model with a newer opset."
        )
    return usable[-1]
