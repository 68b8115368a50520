"""Recurrent layers (anasim.ops.recurrent: LSTM, GRU, RNN) against onnxruntime, ideal mode.

One-node models built with onnx.helper run in onnxruntime and through ``anasim.load`` /
``Graph.run``; every output is compared as max |Δ| <= 1e-5 × max(1, max |reference|).
onnxruntime implements neither ``layout=1`` nor float64 for these ops: layout 1 is checked
against onnxruntime on the layout-0 model with the inputs and outputs transposed (and
against the ONNX reference evaluator), float64 against the float32 onnxruntime result at
float32 precision and against the ONNX reference evaluator.

Also: a small CRNN (Conv → Transpose/Reshape → bidirectional LSTM → Gemm), the analog
simulator in ideal mode leaving the LSTM digital (not an analog candidate), and the
seam of the recurrences (tile-like callables in place of the matmuls).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import onnx
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

import anasim  # noqa: E402
from anasim.ops import recurrent as RC  # noqa: E402

RTOL = 1e-5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


# ----------------------------------------------------------------------------- helpers
def _vi(name, dtype, rank):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, [None] * rank)


def make_model(op, feeds: dict, attrs: dict, opset=14, outputs=None):
    """One ``op`` node; ``feeds`` maps input names (INPUTS) to arrays (absent: empty name).

    ``outputs``: the node's output names ("" = not wanted); default all of the op's outputs.
    """
    names = [n if n in feeds else "" for n in INPUTS]
    while names[-1] == "":
        names.pop()
    outputs = list(OUTS[op]) if outputs is None else list(outputs)
    dtype = feeds["X"].dtype
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), feeds[n].shape)
           for n in names if n]
    outs = [_vi(n, dtype, 4 if n == "Y" else 3) for n in outputs if n]
    node = helper.make_node(op, names, outputs, **attrs)
    model = helper.make_model(helper.make_graph([node], "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_ort(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def run_anasim(model, feeds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = anasim.load(model)
    return graph.run(feeds)


def run_reference(model, feeds):
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(model)
    return dict(zip(ref.output_names, ref.run(None, feeds)))


def assert_close(got, ref, what="", rtol=RTOL):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    tol = rtol * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= tol, f"{what}: max |Δ| {err:.3g} > {tol:.3g}"


def make_feeds(op, *, T=5, batch=3, I=4, H=3, nd=1, layout=0, lens=None, init=False, peep=False,
               bias=True, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[op]
    r = lambda *s: (0.7 * rng.standard_normal(s)).astype(dtype)  # noqa: E731
    f = {"X": r(batch, T, I) if layout else r(T, batch, I), "W": r(nd, G * H, I), "R": r(nd, G * H, H)}
    if bias:
        f["B"] = r(nd, 2 * G * H)
    if lens is not None:
        f["sequence_lens"] = np.asarray(lens, np.int32)
    if init:
        shape = (batch, nd, H) if layout else (nd, batch, H)
        f["initial_h"] = r(*shape)
        if op == "LSTM":
            f["initial_c"] = r(*shape)
    if peep:
        f["P"] = r(nd, 3 * H)
    return f


def check_vs_ort(op, feeds, attrs, opset=14, outputs=None):
    model = make_model(op, feeds, attrs, opset, outputs)
    ref = run_ort(model, feeds)
    got = run_anasim(model, feeds)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        assert_close(got[name], ref[name], f"{op} {attrs} {name}")
    return got, ref


def _to_layout0(feeds):
    f = dict(feeds)
    f["X"] = np.ascontiguousarray(f["X"].transpose(1, 0, 2))
    for k in ("initial_h", "initial_c"):
        if k in f:
            f[k] = np.ascontiguousarray(f[k].transpose(1, 0, 2))
    return f


def check_layout1(op, feeds, attrs, opset=14):
    """layout=1 in anasim == onnxruntime's layout-0 result, transposed (and == the ONNX reference)."""
    model = make_model(op, feeds, {**attrs, "layout": 1}, opset)
    got = run_anasim(model, feeds)
    ref0 = run_ort(make_model(op, _to_layout0(feeds), attrs, opset), _to_layout0(feeds))
    for name, ref in ref0.items():
        ref = ref.transpose(2, 0, 1, 3) if name == "Y" else ref.transpose(1, 0, 2)
        assert_close(got[name], ref, f"{op} layout=1 {attrs} {name}")
    return got


# ----------------------------------------------------------------------------- the grid
GRID = list(itertools.product(("LSTM", "GRU", "RNN"), ("forward", "reverse", "bidirectional"), (0, 1),
                              (False, True), (False, True), (1, 3)))


@pytest.mark.parametrize("op,direction,layout,with_lens,init,batch", GRID,
                         ids=[f"{o}-{d}-layout{lay}-{'lens' if sl else 'full'}-{'init' if i else 'zero'}-b{b}"
                              for o, d, lay, sl, i, b in GRID])
def test_grid(op, direction, layout, with_lens, init, batch):
    """Each op × direction × layout × sequence_lens (varied lengths) × initial states × batch."""
    T, nd = 5, 2 if direction == "bidirectional" else 1
    lens = None
    if with_lens:
        lens = [3] if batch == 1 else [5, 2, 4]
    feeds = make_feeds(op, T=T, batch=batch, nd=nd, layout=layout, lens=lens, init=init,
                       peep=op == "LSTM" and init,
                       seed=GRID.index((op, direction, layout, with_lens, init, batch)))
    attrs = {"hidden_size": 3, "direction": direction}
    if layout:
        got = check_layout1(op, feeds, attrs)
    else:
        got, _ = check_vs_ort(op, feeds, attrs)
    if with_lens:  # steps past a sequence's end are zero
        Y = got["Y"] if layout == 0 else got["Y"].transpose(1, 2, 0, 3)
        for b, n in enumerate(lens):
            assert not Y[n:, :, b].any()
            assert Y[:n, :, b].all()


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_zero_and_full_lengths_with_initial_state(op, direction):
    """A length-0 sequence, a full one and a short one in one batch, with initial states."""
    nd = 2 if direction == "bidirectional" else 1
    feeds = make_feeds(op, T=4, batch=3, nd=nd, lens=[0, 4, 1], init=True, seed=7)
    check_vs_ort(op, feeds, {"hidden_size": 3, "direction": direction})


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_clip(op, direction):
    nd = 2 if direction == "bidirectional" else 1
    feeds = make_feeds(op, nd=nd, lens=[5, 3, 1], init=True, peep=op == "LSTM", seed=3)
    feeds["X"] *= 4  # pre-activations well beyond the clip
    check_vs_ort(op, feeds, {"hidden_size": 3, "direction": direction, "clip": 0.8})


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("peep", [False, True])
def test_lstm_input_forget_and_peepholes(direction, peep):
    nd = 2 if direction == "bidirectional" else 1
    feeds = make_feeds("LSTM", nd=nd, lens=[5, 2, 4], init=True, peep=peep, seed=11)
    check_vs_ort("LSTM", feeds, {"hidden_size": 3, "direction": direction, "input_forget": 1})
    check_vs_ort("LSTM", feeds, {"hidden_size": 3, "direction": direction, "input_forget": 0})


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_gru_linear_before_reset(lbr, direction, layout):
    nd = 2 if direction == "bidirectional" else 1
    feeds = make_feeds("GRU", nd=nd, layout=layout, lens=[4, 5, 1], init=True, seed=13 + lbr)
    attrs = {"hidden_size": 3, "direction": direction, "linear_before_reset": lbr}
    if layout:
        check_layout1("GRU", feeds, attrs)
    else:
        check_vs_ort("GRU", feeds, attrs)


# every activation at least once in every role; alpha/beta consumed by those that take them
ACTS = {
    "LSTM": [
        (["HardSigmoid", "LeakyRelu", "ScaledTanh"], [0.3, 0.05, 1.5], [0.4, 0.7]),
        (["Sigmoid", "Affine", "Elu"], [0.8, 0.9], [0.1]),
        (["Softsign", "Softplus", "ThresholdedRelu"], [0.2], None),
        (["Relu", "Tanh", "Relu"], None, None),
        (["HardSigmoid", "Tanh", "LeakyRelu", "Sigmoid", "ScaledTanh", "Softsign"], [0.25, 0.1, 1.2],
         [0.45, 0.9]),
        (["sigmoid", "tanh", "tanh"], None, None),
    ],
    "GRU": [
        (["HardSigmoid", "LeakyRelu"], [0.3, 0.05], [0.4]),
        (["Sigmoid", "Affine"], [0.8], [0.1]),
        (["Softsign", "Elu"], [0.6], None),
        (["Sigmoid", "ScaledTanh"], [1.5], [0.7]),
        (["Sigmoid", "Softplus"], None, None),
        (["HardSigmoid", "ThresholdedRelu"], [0.3, 0.1], [0.4]),
        (["Sigmoid", "Relu", "HardSigmoid", "Tanh"], [0.3], [0.4]),
    ],
    "RNN": [
        (["Relu"], None, None), (["Sigmoid"], None, None), (["LeakyRelu"], [0.2], None),
        (["ThresholdedRelu"], [0.3], None), (["ScaledTanh"], [1.3], [0.6]), (["HardSigmoid"], [0.3], [0.4]),
        (["Elu"], [0.7], None), (["Softsign"], None, None), (["Softplus"], None, None),
        (["Affine"], [0.5], [0.2]), (["Relu", "Tanh"], None, None),
    ],
}
ACT_CASES = [(op, *a) for op, cases in ACTS.items() for a in cases]


@pytest.mark.parametrize("op,acts,alpha,beta", ACT_CASES,
                         ids=[f"{op}-{'-'.join(a)}" for op, a, _, _ in ACT_CASES])
def test_activations(op, acts, alpha, beta):
    per = len(RC._DEFAULT_ACTS[op])
    direction = "bidirectional" if len(acts) == 2 * per else "forward"
    nd = 2 if direction == "bidirectional" else 1
    feeds = make_feeds(op, nd=nd, lens=[5, 3, 2], init=True, seed=17)
    attrs = {"hidden_size": 3, "direction": direction, "activations": acts}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    check_vs_ort(op, feeds, attrs)


def test_one_activation_set_for_both_directions():
    """Bidirectional with one direction's activations: anasim uses them for both directions
    (onnxruntime refuses the model; it equals onnxruntime with the list given twice)."""
    feeds = make_feeds("LSTM", nd=2, init=True, seed=19)
    acts = ["HardSigmoid", "Tanh", "Softsign"]
    got = run_anasim(make_model("LSTM", feeds, {"hidden_size": 3, "direction": "bidirectional",
                                                "activations": acts}), feeds)
    ref = run_ort(make_model("LSTM", feeds, {"hidden_size": 3, "direction": "bidirectional",
                                             "activations": acts * 2}), feeds)
    for name in ref:
        assert_close(got[name], ref[name], name)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("opset", [7, 14, 22])
def test_opsets(op, opset):
    feeds = make_feeds(op, nd=2, lens=[5, 1, 3], init=True, peep=op == "LSTM", seed=opset)
    check_vs_ort(op, feeds, {"hidden_size": 3, "direction": "bidirectional"}, opset=opset)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_opset1_equals_opset7(op):
    """Opset 1 (``output_sequence``; GRU: no linear_before_reset, "foward") computes what opset 7 does."""
    feeds = make_feeds(op, nd=1, lens=[5, 2, 3], init=True, seed=23)
    got1 = run_anasim(make_model(op, feeds, {"hidden_size": 3, "output_sequence": 1}, opset=1), feeds)
    got7 = run_anasim(make_model(op, feeds, {"hidden_size": 3}, opset=7), feeds)
    for name in got7:
        np.testing.assert_array_equal(got1[name], got7[name])


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_no_bias_no_hidden_size(op):
    """B omitted (zeros) and hidden_size omitted (taken from W)."""
    feeds = make_feeds(op, nd=2, bias=False, seed=29)
    model = make_model(op, feeds, {"direction": "bidirectional"})
    got = run_anasim(model, feeds)
    ref = run_ort(make_model(op, feeds, {"direction": "bidirectional", "hidden_size": 3}), feeds)
    for name in ref:
        assert_close(got[name], ref[name], name)


@pytest.mark.parametrize("op,outputs", [("LSTM", ["", "Y_h"]), ("LSTM", ["Y"]), ("LSTM", ["", "", "Y_c"]),
                                        ("LSTM", ["Y", "", "Y_c"]), ("GRU", ["", "Y_h"]), ("RNN", ["Y"])])
def test_optional_outputs(op, outputs):
    feeds = make_feeds(op, nd=2, lens=[5, 2, 3], init=True, seed=31)
    got, _ = check_vs_ort(op, feeds, {"hidden_size": 3, "direction": "bidirectional"}, outputs=outputs)
    assert set(got) == {o for o in outputs if o}


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_float64(op):
    """float64 in, float64 out: = the ONNX reference evaluator; = onnxruntime's float32 result at
    float32 precision."""
    feeds = make_feeds(op, nd=2, init=True, dtype=np.float64, seed=37)
    model = make_model(op, feeds, {"hidden_size": 3, "direction": "bidirectional"})
    got = run_anasim(model, feeds)
    ref = run_reference(model, feeds)
    f32 = {k: v.astype(np.float32) for k, v in feeds.items()}
    ref32 = run_ort(make_model(op, f32, {"hidden_size": 3, "direction": "bidirectional"}), f32)
    for name in ref:
        assert got[name].dtype == np.float64
        assert_close(got[name], ref[name], name, rtol=1e-12)
        assert_close(got[name], ref32[name], name, rtol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_layout1_vs_reference(op):
    feeds = make_feeds(op, nd=2, layout=1, init=True, seed=41)
    model = make_model(op, feeds, {"hidden_size": 3, "direction": "bidirectional", "layout": 1})
    got, ref = run_anasim(model, feeds), run_reference(model, feeds)
    for name in ref:
        assert_close(got[name], ref[name], name)


def test_larger_lstm():
    """A PyTorch-sized layer: T=20, batch 8, 32 inputs, 64 hidden, bidirectional, ragged lengths."""
    feeds = make_feeds("LSTM", T=20, batch=8, I=32, H=64, nd=2, init=True,
                       lens=[20, 1, 7, 13, 20, 2, 19, 10], seed=43)
    feeds = {k: (v * 0.3).astype(v.dtype) if k in ("W", "R") else v for k, v in feeds.items()}
    check_vs_ort("LSTM", feeds, {"hidden_size": 64, "direction": "bidirectional"})


# ----------------------------------------------------------------------------- the seam
def test_seam_callables():
    """The recurrences only see the projections: tile-like callables give the same result."""
    op_feeds = make_feeds("GRU", nd=1, lens=[5, 2, 4], init=True, seed=47)
    X, W, R = op_feeds["X"], op_feeds["W"][0], op_feeds["R"][0]
    wb, rb = op_feeds["B"][0, :9], op_feeds["B"][0, 9:]
    acts = RC._activations(None, None, None, ("Sigmoid", "Tanh"), 1)[0]
    lens = op_feeds["sequence_lens"].astype(np.int64)
    calls = []

    def rproj(v, rows, t):  # what a tile would compute: R's selected rows times v, row by row
        calls.append((rows, t))
        return np.stack([R[rows] @ row for row in v])

    xw = np.einsum("tbi,gi->tbg", X, W)
    for lbr in (0, 1):
        calls.clear()
        y, yh = RC.gru_direction(xw, rproj, wb, rb, op_feeds["initial_h"][0], acts, lens=lens,
                                 linear_before_reset=lbr)
        ref = run_ort(make_model("GRU", op_feeds, {"hidden_size": 3, "linear_before_reset": lbr}), op_feeds)
        assert_close(y, ref["Y"][:, 0], "Y")
        assert_close(yh, ref["Y_h"][0], "Y_h")
        assert len(calls) == 5 * (2 if lbr == 0 else 1)
        assert [t for _, t in calls][::2 if lbr == 0 else 1] == list(range(5))  # each step says which
    xw_ideal, _ = RC._ideal_projections(X, W, R)
    assert_close(xw, xw_ideal, "xw")


# ----------------------------------------------------------------------------- a CRNN
def _init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def crnn_model(seed=0, batch="N"):
    """Conv(1→4, 3x3, pad 1) → Relu → Transpose/Reshape to (W=T, N, C·H) → bidirectional LSTM →
    Gemm per step."""
    rng = np.random.default_rng(seed)
    r = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    C, Hh, Wd, hid, ncls = 4, 6, 10, 8, 5
    I = C * Hh
    inits = [
        _init("cw", r(C, 1, 3, 3)), _init("cb", r(C)),
        _init("perm_shape", np.array([Wd, -1, I], np.int64)),
        _init("lw", r(2, 4 * hid, I)), _init("lr", r(2, 4 * hid, hid)), _init("lb", r(2, 8 * hid)),
        _init("y_shape", np.array([-1, 2 * hid], np.int64)),
        _init("fw", r(ncls, 2 * hid)), _init("fb", r(ncls)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["cr"], name="relu"),
        helper.make_node("Transpose", ["cr"], ["ct"], name="to_seq", perm=[3, 0, 1, 2]),  # (W, N, C, H)
        helper.make_node("Reshape", ["ct", "perm_shape"], ["seq"], name="flatten"),  # (W, N, C·H)
        helper.make_node("LSTM", ["seq", "lw", "lr", "lb"], ["y", "", ""], name="lstm", hidden_size=hid,
                         direction="bidirectional"),  # (W, 2, N, hid)
        helper.make_node("Transpose", ["y"], ["yt"], name="merge_dirs", perm=[0, 2, 1, 3]),  # (W, N, 2, hid)
        helper.make_node("Reshape", ["yt", "y_shape"], ["yf"], name="rows"),  # (W·N, 2·hid)
        helper.make_node("Gemm", ["yf", "fw", "fb"], ["logits"], name="classifier", transB=1),
    ]
    graph = helper.make_graph(nodes, "crnn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                            [batch, 1, Hh, Wd])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None, ncls])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("batch", [1, 4])
def test_crnn_vs_ort(batch):
    model = crnn_model()
    x = np.random.default_rng(batch).standard_normal((batch, 1, 6, 10)).astype(np.float32)
    ref = run_ort(model, {"x": x})["logits"]
    got = run_anasim(model, {"x": x})["logits"]
    assert got.shape == (10 * batch, 5)
    assert_close(got, ref, "logits")


def test_crnn_analog_ideal_equals_digital_with_the_lstm_on_tiles():
    """analog(graph, "ideal") == the digital graph; the LSTM is an analog layer: per direction
    its W and R on tiles (aihwkit's AnalogLSTM), biases digital."""
    model = crnn_model(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = anasim.load(model)
    assert "lstm" in graph.analog_candidates
    assert set(graph.analog_candidates) == {"conv", "lstm", "classifier"}
    x = np.random.default_rng(5).standard_normal((3, 1, 6, 10)).astype(np.float32)
    digital = graph.run({"x": x})["logits"]
    sim = anasim.analog(graph, "ideal")
    lstm = sim.layer("lstm")
    assert lstm.op_type == "LSTM" and len(lstm.matrices) == 4  # bidirectional: W, R per direction
    analog = sim.run({"x": x})["logits"]
    assert_close(analog, digital, "analog ideal vs digital", rtol=1e-5)


def test_crnn_inspect_lists_the_lstm_as_analog(tmp_path, capsys):
    from anasim import cli

    path = tmp_path / "crnn.onnx"
    onnx.save(crnn_model(), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["inspect", str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    rows = {ln.split()[1]: ln.split() for ln in out.splitlines()
            if ln.strip()[:1].isdigit() and len(ln.split()) > 4}
    assert rows["lstm"][2] == "LSTM" and "yes" in rows["lstm"]
    assert "yes" in rows["conv"] and "yes" in rows["classifier"]
    assert "3 analog layers" in out
