"""PyTorch-exported nn.LSTM / nn.GRU classifiers (tests/fixtures/make_recurrent.py): anasim
matches PyTorch and onnxruntime, for other batch sizes too, and maps the layers onto tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import anasim

FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_exported_classifier_matches_pytorch_and_onnxruntime(name):
    ref = np.load(FIX / "recurrent_reference.npz")
    path = FIX / f"{name}_classifier.onnx"
    g = anasim.load(path)
    ours = g(ref["x"])
    np.testing.assert_allclose(ours, ref[name], rtol=1e-5, atol=1e-6)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = np.random.default_rng(1).standard_normal((1,) + ref["x"].shape[1:]).astype(np.float32)
    np.testing.assert_allclose(g(x3), sess.run(None, {"x": x3})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_exported_recurrent_layers_are_analog(name):
    ref = np.load(FIX / "recurrent_reference.npz")
    g = anasim.load(FIX / f"{name}_classifier.onnx")
    op = name.upper()
    rec = [n.name for n in g.ir.nodes if n.op_type == op]
    assert rec and set(rec) <= set(g.analog_candidates)
    sim = anasim.analog(g, "ideal")
    assert {layer.name for layer in sim.layers} >= set(rec)
    np.testing.assert_allclose(sim(ref["x"]), g(ref["x"]), rtol=1e-5, atol=1e-6)
    noisy = anasim.analog(g, "aihwkit", seed=0)(ref["x"])
    assert np.abs(noisy - ref[name]).max() > 1e-3 and np.isfinite(noisy).all()
