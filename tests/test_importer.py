"""Importer: loading, passes (folding, identity removal) and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.errors import InputError, ModelLoadError, UnsupportedOpError
from conftest import ort_session, shared_path

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, inits=(), opset=OPSET):
    g = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=opset)
    m.ir_version = 8
    return m


def _conv_bn_model(rng, with_bias=True, gemm=False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8] if not gemm else ["N", 12])
    c = 4
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 8, 8] if not gemm else ["N", c])
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3) if not gemm else (c, 12)).astype(np.float32), "W")]
    ins = ["x", "W"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "B"))
        ins.append("B")
    for name, v in [("s", rng.uniform(0.5, 2, c)), ("b", rng.standard_normal(c)), ("m", rng.standard_normal(c)),
                    ("v", rng.uniform(0.5, 2, c))]:
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
    if gemm:
        first = helper.make_node("Gemm", ins, ["h"], name="fc", transB=1, alpha=0.5, beta=2.0)
    else:
        first = helper.make_node("Conv", ins, ["h"], name="conv", pads=[1, 1, 1, 1])
    bn = helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["y"], name="bn", epsilon=1e-3)
    return _model([first, bn], [x], [y], inits)


@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_batchnorm_folding_is_exact(tmp_path, gemm, with_bias):
    rng = np.random.default_rng(0)
    m = _conv_bn_model(rng, with_bias, gemm)
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    x = rng.standard_normal((5, 3, 8, 8) if not gemm else (5, 12)).astype(np.float32)
    ref = ort_session(p).run(None, {"x": x})[0]
    folded = anasim.load(p)
    assert [n.op_type for n in folded.nodes] == ["Gemm" if gemm else "Conv"]
    assert folded.analog_candidates == ["fc" if gemm else "conv"]
    np.testing.assert_allclose(folded(x), ref, rtol=1e-5, atol=1e-5)
    kept = anasim.load(p, fold_batchnorm=False)
    assert [n.op_type for n in kept.nodes][-1] == "BatchNormalization"
    np.testing.assert_allclose(kept(x), ref, rtol=1e-5, atol=1e-5)


def test_load_path_bytes_and_proto_agree(tmp_path):
    rng = np.random.default_rng(1)
    m = _conv_bn_model(rng)
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    outs = [anasim.load(src)(x) for src in (p, str(p), p.read_bytes(), m)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    g = anasim.load(p)
    assert g.inputs[0].shape == ("N", 3, 8, 8)
    assert g.inputs[0].dtype == np.float32


def test_identity_and_dropout_removed():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Identity", ["x"], ["a"], name="id"),
             helper.make_node("Dropout", ["a"], ["b"], name="drop"),
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    g = anasim.load(_model(nodes, [x], [y]))
    assert [n.op_type for n in g.nodes] == ["Relu"]
    v = np.array([[-1, 2, -3, 4]], np.float32)
    np.testing.assert_array_equal(g(v), np.maximum(v, 0))


def test_shared_fp16_weights_and_constant_chains_are_folded():
    r18 = anasim.load(shared_path("models", "resnet18_fmnist.onnx"))
    ops = {n.op_type for n in r18.nodes}
    assert "Cast" not in ops and "Constant" not in ops
    assert all(r18.ir.constants[r18.ir.nodes[0].inputs[1]].dtype == np.float32 for _ in [0])
    assert len(r18.analog_candidates) == 21  # 20 Conv + 1 Gemm
    r20 = anasim.load(shared_path("models", "resnet20_cifar10.onnx"))
    ops = {n.op_type for n in r20.nodes}
    assert not ops & {"Constant", "ConstantOfShape", "Cast"}, ops
    assert len(r20.analog_candidates) == 20


def test_not_an_onnx_file(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"this is certainly not a protobuf \x00\xff" * 10)
    with pytest.raises(ModelLoadError, match="junk.onnx"):
        anasim.load(p)
    with pytest.raises(ModelLoadError, match="no such file"):
        anasim.load(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        anasim.load(tmp_path / "empty.onnx")


def test_truncated_model(tmp_path):
    data = shared_path("models", "resnet20_cifar10.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        anasim.load(p)


def test_checker_failure_names_file(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    m = _model([helper.make_node("Relu", ["nowhere"], ["y"], name="r")], [x], [y])
    p = tmp_path / "broken.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="broken.onnx"):
        anasim.load(p)
    with pytest.raises(ModelLoadError, match="nowhere"):
        anasim.load(p, check=False)


def test_unsupported_op_message():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    m = _model([helper.make_node("Hardmax", ["x"], ["y"], name="the_node")], [x], [y])
    with pytest.raises(UnsupportedOpError) as e:
        anasim.load(m)
    msg = str(e.value)
    for part in ("the_node", "Hardmax", "ai.onnx", "opset 17", "Conv", "Relu"):
        assert part in msg


def test_cycle_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
             helper.make_node("Relu", ["a"], ["b"], name="n2"),
             helper.make_node("Relu", ["a"], ["y"], name="n3")]
    with pytest.raises(ModelLoadError, match="cycle"):
        anasim.load(_model(nodes, [x], [y]), check=False)


def test_external_data_outside_model_folder_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    m = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [x], [y], [w])
    p = tmp_path / "evil.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        anasim.load(p)


def _relu_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])
    return anasim.load(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [x], [y]))


def test_input_errors_say_expected_and_got():
    g = _relu_graph()
    with pytest.raises(InputError, match=r"Unknown input name.*\['x'\]"):
        g.run({"input": np.zeros((1, 3, 4), np.float32)})
    with pytest.raises(InputError, match="rank 2.*expected rank 3"):
        g(np.zeros((3, 4), np.float32))
    with pytest.raises(InputError, match=r"dimension 2 must be 4"):
        g(np.zeros((1, 3, 5), np.float32))
    with pytest.raises(InputError, match="dtype int64; expected float32"):
        g(np.zeros((1, 3, 4), np.int64))
    with pytest.raises(InputError, match="Missing input"):
        g.run({})
    # float64 is accepted and cast; any batch size is accepted for the symbolic dimension
    assert g(np.ones((7, 3, 4))).dtype == np.float32


def test_batch_size_chunking_gives_identical_results():
    g = anasim.load(shared_path("models", "resnet20_cifar10.onnx"))
    x = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(g(x, batch_size=3), np.concatenate([g(x[:3]), g(x[3:6]), g(x[6:9]), g(x[9:])]))


def test_cli_inspect(capsys):
    from anasim.cli import main

    assert main(["inspect", str(shared_path("models", "resnet20_cifar10.onnx"))]) == 0
    out = capsys.readouterr().out
    assert "20 analog layers" in out and "Gemm" in out and "N" in out
    assert main(["inspect", "/nonexistent/model.onnx"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_nan_weights_and_inputs_are_reported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    w = np.ones((3, 4), np.float32)
    w[1, 2] = np.nan
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], [x], [y],
               [numpy_helper.from_array(w, "w")])
    with pytest.raises(ModelLoadError, match=r"'w' \(used by 'fc' \(Gemm\)\) contains 1 NaN"):
        anasim.load(m)
    g = _relu_graph()
    bad = np.zeros((3, 3, 4), np.float32)
    bad[2, 0, 0] = np.inf
    with pytest.raises(InputError, match=r"1 NaN/infinite value.*sample\(s\) \[2\]"):
        g(bad, check_finite=True)
    with pytest.raises(InputError, match=r"1 NaN/infinite value.*sample\(s\) \[2\]"):
        anasim.analog(g)(bad)
    assert np.isinf(g(bad)).sum() == 1  # plain graphs follow ONNX: inf is a value


def _external(tmp_path, location, name="evil.onnx"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    m = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [x], [y], [w])
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return p


def test_external_data_absolute_path_and_symlink_refused(tmp_path):
    secret = tmp_path.parent / f"{tmp_path.name}_secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        anasim.load(_external(tmp_path, str(secret)))
    (tmp_path / "link.bin").symlink_to(secret)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        anasim.load(_external(tmp_path, "link.bin"))
    # the same data inside the folder loads, and a length beyond the file is refused
    (tmp_path / "ok.bin").write_bytes(np.full(4, 2, np.float32).tobytes())
    g = anasim.load(_external(tmp_path, "ok.bin", "good.onnx"))
    np.testing.assert_array_equal(g(np.zeros((1, 4), np.float32)), np.full((1, 4), 2, np.float32))
    (tmp_path / "short.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="beyond the end"):
        anasim.load(_external(tmp_path, "short.bin", "short.onnx"))


def test_inconsistent_tensor_and_unknown_domain(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.dims[:] = [1000]  # declares 1000 values, holds 4
    m = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [x], [y], [w])
    with pytest.raises(ModelLoadError, match="'w'"):
        anasim.load(m, check=False)
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example")
    m = _model([node], [x], [y], opset=OPSET + [helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpError, match="com.example"):
        anasim.load(m, check=False)
