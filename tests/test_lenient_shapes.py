"""Shapes as lenient as onnxruntime's (issue 16 item 3): a -1 dimension is dynamic, and graph
outputs declared without a type or shape run; what onnxruntime refuses stays refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import anasim
from anasim.errors import InputError


def _model(extra_outputs=(), first_dim="N"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [first_dim, 3])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    g = helper.make_graph(nodes, "g", [x], [y, *extra_outputs])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _both(model, x):
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    got = list(anasim.load(model).run({"x": x}).values())
    return want, got


@pytest.mark.parametrize("extra", [helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
                                   onnx.ValueInfoProto(name="r")], ids=["no shape", "no type"])
def test_outputs_without_type_or_shape_run_as_in_onnxruntime(extra):
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    want, got = _both(_model([extra]), x)
    assert len(got) == 2
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    g = anasim.load(_model([extra]))
    assert [o.describe() for o in g.outputs] == ["y: float32 [Nx3]", "r: float32 [Nx3]"]


def test_a_minus_one_dimension_is_dynamic():
    m = _model(first_dim=-1)
    for n in (1, 5):
        x = np.ones((n, 3), np.float32)
        want, got = _both(m, x)
        np.testing.assert_array_equal(got[0], want[0])
    assert anasim.load(m).inputs[0].describe() == "x: float32 [?x3]"
    with pytest.raises(InputError, match="dimension 1 must be 3"):
        anasim.load(m).run({"x": np.ones((2, 4), np.float32)})


def test_what_onnxruntime_refuses_stays_refused():
    m = _model(first_dim=0)  # a fixed size 0: onnxruntime refuses other sizes, so does anasim
    with pytest.raises(Exception):
        ort.InferenceSession(m.SerializeToString()).run(None, {"x": np.ones((2, 3), np.float32)})
    with pytest.raises(InputError, match="dimension 0 must be 0"):
        anasim.load(m).run({"x": np.ones((2, 3), np.float32)})
    bad = _model([helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, [2])])  # an output nothing makes
    with pytest.raises(anasim.ModelLoadError):
        anasim.load(bad)
