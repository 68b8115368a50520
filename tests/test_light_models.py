"""Real network graphs (onnx's ``backend/test/data/light``): anasim vs onnxruntime.

The light models are the graphs of ResNet-50, VGG-19, SqueezeNet, ShuffleNet,
DenseNet-121, Inception v1/v2, AlexNet and ZFNet-512 (Caffe2 exports, opset 9, IR 3)
with their weights replaced by ``ConstantOfShape`` nodes filled with 0.02. With such
weights every class gets the same score and the test would be blind, so
:func:`randomized` turns each of those nodes into a seeded random initializer (He-normal
weights, positive scales/variances, small biases), makes the batch dimension 2 (the graphs
hard-code 1 in their Reshape targets), and adds the input of the final Softmax as an extra
output so the logits are compared too. Both runtimes then run the same model on the same
seeded input; every output must satisfy max |Δ| ≤ 1e-4 · max |reference|.

The logits are multiplied by a ``logit_scale`` input (a Mul node inserted before the
Softmax) chosen from a first onnxruntime run so that their standard deviation is about 3:
with the raw random weights they reach 1e4 and the softmax becomes a one-hot vector,
which would hide errors (and magnify harmless float32 rounding of the logits).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper  # noqa: E402

import anasim  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
BATCH = 2
REL_TOL = 1e-4

# more than ~10 s on a 2-core machine (randomising, onnxruntime, anasim load and run): marked
# slow. AlexNet, ZFNet and VGG are dominated by their 60-140 M weights (load), the others by
# the convolutions.
SLOW = {"bvlc_alexnet", "densenet121", "inception_v2", "resnet50", "vgg19", "zfnet512"}
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512"]


def _consumers(graph):
    out = {}
    for n in graph.node:
        for k, i in enumerate(n.input):
            out.setdefault(i, []).append((n, k))
    return out


def _role(name, consumers, depth=0):
    """(op, input index, node) of the first real consumer, looking through Reshape/Unsqueeze."""
    for node, k in consumers.get(name, []):
        if node.op_type in ("Reshape", "Unsqueeze") and k == 0 and depth < 3:
            return _role(node.output[0], consumers, depth + 1)
        return node.op_type, k, node
    return None, None, None


def randomized(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light model with random weights, batch BATCH, and (if it ends in Softmax) a
    ``logit_scale`` input multiplying the logits, which become an extra output."""
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    g = model.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in g.initializer}
    cons = _consumers(g)
    keep = []
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[n.input[0]]))
            op, k, node = _role(n.output[0], cons)
            value = _random_tensor(shape, op, k, node, rng)
            g.initializer.append(numpy_helper.from_array(value, n.output[0]))
            # IR 3: every initializer is also a graph input
            g.input.append(helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, shape))
        else:
            keep.append(n)
    # batch dimension: graph input and every Reshape target that starts with 1
    real_inputs = [i for i in g.input if i.name not in inits]
    real_inputs[0].type.tensor_type.shape.dim[0].dim_value = BATCH
    for n in keep:
        if n.op_type == "Reshape" and n.input[1] in inits:
            t = inits[n.input[1]]
            target = numpy_helper.to_array(t).copy()
            if target[0] == 1:
                target[0] = -1
                t.CopyFrom(numpy_helper.from_array(target, t.name))
    for o in g.output:
        o.type.tensor_type.ClearField("shape")
    softmax = [n for n in keep if n.op_type == "Softmax"]
    if softmax:
        sm = softmax[-1]
        scaled = sm.input[0] + "_scaled"
        k = keep.index(sm)
        mul = helper.make_node("Mul", [sm.input[0], "logit_scale"], [scaled], name="logit_scale_mul")
        keep.insert(k, mul)
        sm.input[0] = scaled
        g.input.append(helper.make_tensor_value_info("logit_scale", onnx.TensorProto.FLOAT, []))
        g.output.append(helper.make_tensor_value_info(scaled, onnx.TensorProto.FLOAT, None))
    del g.node[:]
    g.node.extend(keep)
    return model


def _random_tensor(shape, op, k, node, rng) -> np.ndarray:
    if len(shape) >= 2:  # Conv / Gemm weight: He-normal
        if op == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            fan_in = shape[1] if trans_b else shape[0]
        else:
            fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if (op == "BatchNormalization" and k in (1, 4)) or op == "Mul":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)  # scales and variances: positive
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)  # biases, means


def _feeds(model) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits or vi.name == "logit_scale":
            continue
        shape = [BATCH] + [d.dim_value for d in vi.type.tensor_type.shape.dim[1:]]
        feeds[vi.name] = np.random.default_rng(1234).standard_normal(shape).astype(np.float32)
    return feeds


def _ort_session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3  # the Caffe2 exports carry unused initializers
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def compare(name: str, verbose: bool = False) -> dict[str, float]:
    """Run one light model in both runtimes; return max|Δ| / max|ref| per output."""
    model = randomized(name)
    feeds = _feeds(model)
    outs = [o.name for o in model.graph.output]
    t0 = time.perf_counter()
    sess = _ort_session(model)
    if any(i.name == "logit_scale" for i in model.graph.input):
        # logits with std ~3: a one-hot softmax would hide errors and magnify rounding
        logits = sess.run([outs[-1]], {**feeds, "logit_scale": np.array(1.0, np.float32)})[0]
        feeds["logit_scale"] = np.array(3.0 / max(float(logits.std()), 1e-12), np.float32)
    ref = dict(zip(outs, sess.run(outs, feeds)))
    for o in model.graph.output:  # the ONNX checker wants shaped outputs in IR 3 models
        shaped = helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ref[o.name].shape)
        o.type.tensor_type.shape.CopyFrom(shaped.tensor_type.shape)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = anasim.load(model)
    t2 = time.perf_counter()
    got = graph.run(feeds, outputs=outs)
    t3 = time.perf_counter()
    result = {}
    for o in outs:
        assert got[o].shape == ref[o].shape, f"{name} {o}: shape {got[o].shape} vs {ref[o].shape}"
        assert got[o].dtype == ref[o].dtype, f"{name} {o}: dtype {got[o].dtype} vs {ref[o].dtype}"
        scale = float(np.abs(ref[o]).max())
        result[o] = float(np.abs(got[o].astype(np.float64) - ref[o]).max()) / max(scale, 1e-30)
    if verbose:
        print(f"{name:<14} ort {t1 - t0:5.1f}s  load {t2 - t1:5.1f}s  anasim run {t3 - t2:5.1f}s  "
              + "  ".join(f"{o}: {r:.2e}" for o, r in result.items()))
    return result


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=[pytest.mark.slow] if m in SLOW else []) for m in MODELS]
)
def test_light_model_parity(name):
    if not (LIGHT / f"light_{name}.onnx").exists():
        pytest.skip(f"light_{name}.onnx is not shipped with this onnx version")
    errors = compare(name)
    bad = {o: r for o, r in errors.items() if not r <= REL_TOL}
    assert not bad, f"{name}: max|Δ|/max|ref| above {REL_TOL}: {bad}"


def test_randomized_models_are_not_degenerate():
    """The randomisation works: the classes get different scores and the samples differ."""
    model = randomized("squeezenet")
    feeds = {**_feeds(model), "logit_scale": np.array(1.0, np.float32)}
    out = _ort_session(model).run(None, feeds)[0].reshape(BATCH, -1)
    assert out.std(axis=1).min() > 1e-4
    assert np.abs(out[0] - out[1]).max() > 1e-4


if __name__ == "__main__":
    for m in MODELS:
        compare(m, verbose=True)
