"""A per-layer summary of an imported model (what ``anasim inspect`` prints)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .executor import Graph


@dataclass(frozen=True)
class LayerInfo:
    """One node of the graph as a user sees it."""

    name: str
    op_type: str
    output_shape: str
    parameters: int
    analog: bool
    note: str = ""


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


def summarize(graph: Graph) -> list[LayerInfo]:
    """One :class:`LayerInfo` per node, in execution order."""
    ir = graph.ir
    analog = set(graph.analog_candidates)
    rows = []
    for n in ir.nodes:
        params = sum(int(np.asarray(ir.constants[i]).size) for i in n.inputs if i in ir.constants)
        vi = ir.value_info.get(n.outputs[0]) if n.outputs else None
        note = []
        if "folded_batchnorm" in n.meta:
            note.append(f"BN {n.meta['folded_batchnorm']} folded")
        if n.op_type == "Conv" and n.attrs.get("group", 1) > 1:
            note.append(f"group={n.attrs['group']}")
        rows.append(LayerInfo(n.name, n.op_type, _shape_text(vi.shape if vi else None), params,
                              n.name in analog, "; ".join(note)))
    return rows


def format_summary(graph: Graph) -> str:
    """The table printed by ``anasim inspect``."""
    rows = summarize(graph)
    ir = graph.ir
    lines = [f"Model: {ir.source}", f"SHA-256: {ir.sha256}",
             "Opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(ir.opsets.items()))]
    lines += ["Inputs:  " + "; ".join(i.describe() for i in graph.inputs),
              "Outputs: " + "; ".join(o.describe() for o in graph.outputs), ""]
    w_name = max([len(r.name) for r in rows] + [4])
    w_op = max([len(r.op_type) for r in rows] + [2])
    header = f"{'#':>4}  {'node':<{w_name}}  {'op':<{w_op}}  {'output shape':<16}  {'params':>10}  analog  note"
    lines += [header, "-" * len(header)]
    for k, r in enumerate(rows):
        lines.append(f"{k:>4}  {r.name:<{w_name}}  {r.op_type:<{w_op}}  {r.output_shape:<16}  "
                     f"{r.parameters:>10,}  {'yes' if r.analog else '':<6}  {r.note}")
    n_analog = sum(r.analog for r in rows)
    p_analog = sum(r.parameters for r in rows if r.analog)
    p_total = sum(r.parameters for r in rows)
    lines += ["", f"{len(rows)} nodes, {p_total:,} parameters; {n_analog} analog layers holding "
                  f"{p_analog:,} parameters ({100.0 * p_analog / max(p_total, 1):.1f} %)."]
    return "\n".join(lines)
