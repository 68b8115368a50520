"""The official ONNX backend *node* tests, run through ``anasim.load`` and ``Graph.run``.

Source of the cases: the ``onnx/backend/test/data/node/*/`` folders (``model.onnx`` plus
``test_data_set_*/input_*.pb`` / ``output_*.pb``) when the installed onnx ships them,
otherwise the same cases generated in memory by ``onnx.backend.test.case.node``
(the generator the data folders are made from; recent onnx wheels omit the folders).
``ANASIM_ONNX_NODE_DATA=/path/to/node`` points at another copy of the data folders.

Every node test whose ops are all in :func:`anasim.ops.registry.supported_ops` is a
test here; the others are not collected. Exclusions need a reason in :data:`EXCLUDED`.
Outputs are compared as onnx's own backend runner does: same dtype and shape, then
``rtol``/``atol`` of the case (default 1e-3 / 1e-7), exact for non-float types.

Report by op (for humans)::

    python tests/test_onnx_backend.py            # pass/fail/excluded counts per op
    python tests/test_onnx_backend.py -v         # ... plus every failing test and why
    python tests/test_onnx_backend.py -k resize  # only tests whose name contains "resize"
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import onnx
from onnx import numpy_helper  # noqa: E402

import anasim  # noqa: E402
from anasim.ops.registry import supported_ops  # noqa: E402

_NARROW = r"(BFLOAT16|FLOAT8\w*|FLOAT4E2M1|U?INT4|U?INT2)"

EXCLUDED: dict[str, str] = {
    # pattern (re.fullmatch on the test name) -> reason
    rf"test_cast(like)?(_no_saturate)?_\w+_to_{_NARROW}(_expanded)?":
        "cast to bfloat16/float8/float4/int4/int2: anasim computes in bool, integer and IEEE "
        "fp16/32/64 only (casts *from* those types are supported)",
    r"test_cast(like)?_e8m0_\w+": "float8 e8m0 type not supported",
    r"test_\w*(bf16|bfloat16)\w*": "bfloat16 arithmetic is not supported",
    r"test_training_dropout(_default|_mask|_default_mask)?":
        "training-mode Dropout draws random masks; anasim is an inference simulator",
    r"test_(de)?quantizelinear_(e4m3fn|e5m2|u?int4|u?int2|float4e2m1)(_float16|_zero_point)?":
        "float8/float4/int4/int2 quantized tensors: anasim quantizes to int8/uint8/int16/uint16 only "
        "(these types raise UnsupportedOpError)",
    r"test_batchnorm_\w*_training_mode": "training-mode BatchNormalization (inference-only simulator)",
    r"test_resize_downsample_scales_(linear|cubic)_align_corners":
        "the ONNX reference divides by the fractional output width scale*L - 1; the ONNX spec "
        "text and onnxruntime use the integer output length (anasim follows onnxruntime)",
}


def excluded_reason(name: str) -> str | None:
    for pattern, reason in EXCLUDED.items():
        if re.fullmatch(pattern, name):
            return reason
    if not _tensors_only(node_cases()[name][0]):
        return "sequence / optional / map values are not tensors (anasim runs tensor graphs)"
    return None


def _to_array(v):
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, np.ndarray) or np.isscalar(v):
        return np.asarray(v)
    raise TypeError(f"non-tensor test value ({type(v).__name__})")


def _tensors_only(model) -> bool:
    return all(v.type.HasField("tensor_type") for v in list(model.graph.input) + list(model.graph.output))


@functools.lru_cache(maxsize=1)
def node_cases() -> dict[str, tuple]:
    """name -> (ModelProto, [(inputs, outputs), ...], rtol, atol) for every node test."""
    default = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    data_dir = Path(os.environ.get("ANASIM_ONNX_NODE_DATA", default))
    cases = {}
    if data_dir.is_dir():
        for d in sorted(data_dir.iterdir()):
            if not (d / "model.onnx").exists():
                continue
            model = onnx.load(str(d / "model.onnx"))
            tensors_only = _tensors_only(model)
            sets = []
            for s in sorted(d.glob("test_data_set_*")) if tensors_only else []:
                def pbs(kind, s=s):
                    return sorted(s.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
                read = lambda p: numpy_helper.to_array(onnx.load_tensor(str(p)))  # noqa: E731
                sets.append(([read(p) for p in pbs("input")], [read(p) for p in pbs("output")]))
            cases[d.name] = (model, sets, 1e-3, 1e-7)
        return cases
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for c in node.collect_testcases(None):
            cases[c.name] = (c.model, c.data_sets, c.rtol, c.atol)
    return cases


def ops_of(model) -> set[str]:
    return {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            for n in model.graph.node}


def selected_cases() -> list[str]:
    supported = set(supported_ops())
    return [name for name, (model, *_rest) in node_cases().items() if ops_of(model) <= supported]


def run_case(name: str) -> None:
    """Run one node test; raises AssertionError (or the anasim error) on failure."""
    model, data_sets, rtol, atol = node_cases()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opsets newer than anasim's MAX_OPSET warn
        graph = anasim.load(model)
    init = {t.name for t in model.graph.initializer}
    in_names = [i.name for i in model.graph.input if i.name not in init]
    out_names = [o.name for o in model.graph.output]
    for inputs, expected in data_sets:
        feeds = {n: _to_array(v) for n, v in zip(in_names, inputs)}
        with np.errstate(all="ignore"):
            got = graph.run(feeds)
        for oname, ref in zip(out_names, expected):
            ref, out = _to_array(ref), np.asarray(got[oname])
            assert out.dtype == ref.dtype, f"output {oname!r}: dtype {out.dtype}, expected {ref.dtype}"
            assert out.shape == ref.shape, f"output {oname!r}: shape {out.shape}, expected {ref.shape}"
            if ref.dtype.kind in "fc":
                np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, err_msg=f"output {oname!r}")
            else:
                np.testing.assert_array_equal(out, ref, err_msg=f"output {oname!r}")


def _params():
    for name in selected_cases():
        reason = excluded_reason(name)
        marks = [pytest.mark.skip(reason=f"excluded: {reason}")] if reason else []
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_node(name):
    run_case(name)


def test_exclusions_are_live():
    """Every exclusion pattern matches at least one existing node test (no stale entries)."""
    if os.environ.get("ANASIM_ONNX_NODE_DATA"):
        pytest.skip("a custom node-test folder may hold a subset of the tests")
    names = list(node_cases())
    stale = [p for p in EXCLUDED if not any(re.fullmatch(p, n) for n in names)]
    assert not stale, f"exclusion patterns that match no node test: {stale}"


# ------------------------------------------------------------------------ report
def report(verbose: bool = False, substring: str = "") -> dict[str, dict[str, list]]:
    """Run the selected node tests and print pass / fail / excluded counts per op type."""
    by_op: dict[str, dict[str, list]] = {}
    total = {"pass": 0, "fail": 0, "excluded": 0}
    for name in selected_cases():
        if substring and substring not in name:
            continue
        reason = excluded_reason(name)
        if reason:
            status, why = "excluded", reason
        else:
            try:
                run_case(name)
                status, why = "pass", ""
            except Exception as exc:  # noqa: BLE001 - a report lists every failure kind
                status = "fail"
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        total[status] += 1
        for op in sorted(ops_of(node_cases()[name][0])):
            by_op.setdefault(op, {"pass": [], "fail": [], "excluded": []})[status].append((name, why))
    print(f"{'op':<22}{'pass':>6}{'fail':>6}{'excl':>6}")
    for op, r in sorted(by_op.items()):
        print(f"{op:<22}{len(r['pass']):>6}{len(r['fail']):>6}{len(r['excluded']):>6}")
    print(f"{'TOTAL (tests)':<22}{total['pass']:>6}{total['fail']:>6}{total['excluded']:>6}")
    if verbose:
        seen = set()
        for op, r in sorted(by_op.items()):
            for name, why in r["fail"]:
                if name not in seen:
                    seen.add(name)
                    print(f"FAIL {name}: {why}")
    return by_op


if __name__ == "__main__":
    args = sys.argv[1:]
    sub = args[args.index("-k") + 1] if "-k" in args else ""
    report(verbose="-v" in args, substring=sub)
