"""Fuzzing the importer: mutated real models raise only anasim's documented exceptions.

Two mutation families on ResNet-20 from ../shared (a real model): random byte flips
and truncations of the serialized file, and random edits of protobuf fields (tensor
dims, data types, node inputs, attributes, op types). Whatever happens, ``anasim.load``
and running the graph on a correct input must either work or raise an
:class:`~anasim.errors.AnasimError` — never a raw exception from NumPy or protobuf.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anasim
from anasim.errors import AnasimError
from conftest import shared_path

_CACHE = {}


def _model_bytes() -> bytes:
    if "b" not in _CACHE:
        _CACHE["b"] = shared_path("models", "resnet20_cifar10.onnx").read_bytes()
    return _CACHE["b"]


def _load_and_run(data) -> None:
    try:
        g = anasim.load(data)
    except AnasimError:
        return
    x = np.zeros((1, 3, 32, 32), np.float32)
    try:
        g.run({g.inputs[0].name: x} if g.inputs else {})
    except AnasimError:
        return


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@FUZZ
@given(st.data())
def test_byte_mutations(data):
    raw = bytearray(_model_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        a = data.draw(st.integers(0, len(raw) - 1))
        raw[a:a] = data.draw(st.binary(min_size=1, max_size=64))
    _load_and_run(bytes(raw))


@FUZZ
@given(st.data())
def test_protobuf_field_mutations(data):
    m = onnx.ModelProto()
    m.ParseFromString(_model_bytes())
    g = m.graph
    for _ in range(data.draw(st.integers(1, 3))):
        what = data.draw(st.sampled_from(["dims", "dtype", "input", "attr", "optype", "drop_node", "dup_output"]))
        if what == "dims":
            t = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
            if t.dims:
                t.dims[data.draw(st.integers(0, len(t.dims) - 1))] = data.draw(
                    st.sampled_from([0, 1, 3, 7, 2**31, 2**40]))
        elif what == "dtype":
            t = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
            t.data_type = data.draw(st.sampled_from([0, 2, 6, 7, 8, 10, 11, 16, 99]))
        elif what == "input":
            n = g.node[data.draw(st.integers(0, len(g.node) - 1))]
            if n.input:
                n.input[data.draw(st.integers(0, len(n.input) - 1))] = data.draw(
                    st.sampled_from(["", "missing", g.node[0].output[0], g.output[0].name]))
        elif what == "attr":
            n = g.node[data.draw(st.integers(0, len(g.node) - 1))]
            for a in n.attribute:
                if a.ints:
                    a.ints[0] = data.draw(st.sampled_from([-5, 0, 9, 2**30]))
                elif a.type == onnx.AttributeProto.INT:
                    a.i = data.draw(st.sampled_from([-5, 0, 9, 2**30]))
        elif what == "optype":
            n = g.node[data.draw(st.integers(0, len(g.node) - 1))]
            n.op_type = data.draw(st.sampled_from(["Relu", "Conv", "Gemm", "Unknown", "Add", "Reshape"]))
        elif what == "drop_node" and len(g.node) > 1:
            del g.node[data.draw(st.integers(0, len(g.node) - 1))]
        elif what == "dup_output":
            a, b = g.node[0], g.node[data.draw(st.integers(1, len(g.node) - 1))]
            b.output[0] = a.output[0]
    try:
        _load_and_run(m.SerializeToString())
    except MemoryError:
        pytest.fail("a mutated model made anasim allocate unbounded memory")


def test_huge_declared_constant_is_refused_without_allocating():
    """ConstantOfShape with an absurd shape is not folded into a multi-GB array on load."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "shape")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="big"),
             helper.make_node("ReduceSum", ["big"], ["s"], name="sum", keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"], name="add")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [shape]),
                          opset_imports=[helper.make_opsetid("", 17)])
    g = anasim.load(m)  # must not try to materialize 4 TiB
    with pytest.raises(AnasimError, match="big"):
        g(np.zeros(1, np.float32))
