"""The run context, the simulator's state API and BatchNorm folding as an IR pass."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import anasim
from anasim.errors import InputError
from anasim.graph.context import RunContext
from test_analog_simulator import NOISY, _small_cnn
from test_importer import _conv_bn_model

PCM = {**NOISY, "noise_model": {"type": "pcm"}, "drift_compensation": {"type": "global"}}


def _x(n=6, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 4, 6, 6)).astype(np.float32)


# ---------------------------------------------------------------------------- context
def test_overrides_receive_the_runs_context_shifted_per_chunk():
    g = _small_cnn(np.random.default_rng(0))
    seen = []

    def relu(x, *, context):
        seen.append(context)
        return np.maximum(x, 0)

    gr = g.with_overrides({"relu": relu})
    x = _x(7)
    np.testing.assert_allclose(gr.run({"x": x}, batch_size=3, context=RunContext(10, 4))["y"], g(x),
                               rtol=1e-6, atol=1e-6)  # BLAS sums depend on the chunk's rows
    assert [c.sample_offset for c in seen] == [10, 13, 16] and {c.repetition for c in seen} == {4}
    seen.clear()
    gr(x)  # no context given: the data set's first samples, repetition 0
    assert seen == [RunContext(0, 0)]


def test_run_arguments_after_the_feeds_are_keyword_only():
    g = _small_cnn(np.random.default_rng(0))
    sim = anasim.analog(g, NOISY)
    with pytest.raises(TypeError):
        g.run({"x": _x()}, 2)
    with pytest.raises(TypeError):
        sim.run({"x": _x()}, 2)
    with pytest.raises(TypeError):
        sim(_x(), 2)


def test_simulator_is_reentrant_across_threads():
    """Runs in several threads at once, each with its own samples, give the sequential numbers."""
    sim = anasim.analog(_small_cnn(np.random.default_rng(0)), PCM, seed=5).drift(3600.0)
    xs = [_x(5, seed=k) for k in range(6)]
    want = [sim(x, sample_offset=7 * k) for k, x in enumerate(xs)]
    got = [None] * len(xs)

    def work(k):
        for _ in range(3):
            got[k] = sim(xs[k], sample_offset=7 * k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w, y in zip(want, got):
        np.testing.assert_array_equal(y, w)
    assert not any(np.array_equal(want[0], w) for w in want[1:])  # different samples, different numbers


def test_repetition_reaches_the_forward_noise():
    sim = anasim.analog(_small_cnn(np.random.default_rng(0)), NOISY, seed=2)  # no device model
    x = _x()
    a = sim(x)
    sim.repetition = 3  # the Monte-Carlo index keys the forward-noise streams
    b = sim(x)
    assert not np.array_equal(a, b)
    sim.repetition = 0
    np.testing.assert_array_equal(sim(x), a)


# ---------------------------------------------------------------------------- state API
def test_state_dict_round_trip_is_bit_exact():
    g = _small_cnn(np.random.default_rng(0))
    sim = anasim.analog(g, PCM, seed=5).program(2).drift(86400.0)
    x = _x()
    want = sim(x)
    state = sim.state_dict()
    assert {"seed", "repetition", "t_inference"} <= set(state)
    assert int(state["repetition"]) == 2 and float(state["t_inference"]) == 86400.0
    assert any(k.endswith("/state/conductances") for k in state)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    other = anasim.analog(g, PCM, seed=5).program(7)
    assert not np.array_equal(other(x), want)
    other.load_state_dict(state)
    assert (other.repetition, other.t_inference) == (2, 86400.0)
    np.testing.assert_array_equal(other(x), want)
    # it drifts on from the loaded devices as the original does
    np.testing.assert_array_equal(other.drift(3600.0)(x), sim.drift(3600.0)(x))
    # a copy: changing the mapping does not change the simulator
    state[next(k for k in state if k.endswith("/weight"))][...] = 0
    np.testing.assert_array_equal(other(x), sim(x))


def test_state_dict_programmed_equals_a_fresh_programming():
    g = _small_cnn(np.random.default_rng(0))
    sim = anasim.analog(g, PCM, seed=5).program(1)
    programmed = {k: v.copy() for k, v in sim.state_dict().items()}
    sim.drift(3600.0)
    again = sim.state_dict(include="programmed")
    assert set(again) == set(programmed)
    for k in programmed:
        np.testing.assert_array_equal(again[k], programmed[k], err_msg=k)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(seed=np.int64(9)), "seed: state 9, simulator 5"),
    (lambda s: s.pop(next(k for k in s if k.endswith("/mapping_scale"))), "has no"),
    (lambda s: s.update({"conv/group0/tile99/weight": np.zeros(1, np.float32)}), "does not know"),
    (lambda s: s.update({k: v[:-1] for k, v in s.items() if k.endswith("/weight")}), "expected"),
    (lambda s: [s.pop(k) for k in [k for k in s if "/state/" in k]], "has no device state"),
])
def test_load_state_dict_refuses_a_mismatch_and_changes_nothing(change, message):
    g = _small_cnn(np.random.default_rng(0))
    state = anasim.analog(g, PCM, seed=5).program(2).state_dict()
    change(state)
    sim = anasim.analog(g, PCM, seed=5)
    before = sim(_x())
    with pytest.raises(InputError, match=message):
        sim.load_state_dict(state)
    assert sim.repetition == 0
    np.testing.assert_array_equal(sim(_x()), before)


# ---------------------------------------------------------------------------- BatchNorm folding
def test_batchnorm_folding_is_a_pass_over_the_imported_model(tmp_path):
    rng = np.random.default_rng(0)
    m = _conv_bn_model(rng, True, False)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    folded = anasim.load(m.SerializeToString())  # bytes: nothing to read again
    kept = folded.folded(False)
    assert [n.op_type for n in folded.nodes] == ["Conv"]
    assert [n.op_type for n in kept.nodes][-1] == "BatchNormalization"
    assert kept.ir is folded.unfolded and folded.ir.fold_batchnorm and not kept.ir.fold_batchnorm
    assert kept.folded(True).ir is folded.ir and folded.folded(True) is folded
    np.testing.assert_array_equal(kept(x), anasim.load(m, fold_batchnorm=False)(x))
    np.testing.assert_array_equal(folded(x), anasim.load(m)(x))
    # the pass leaves the imported model as it was
    assert [n.op_type for n in kept.unfolded.nodes][-1] == "BatchNormalization"
    # the simulator derives its graph from the caller's, as mapping.fold_batchnorm says
    sim = anasim.analog(folded, {"mapping": {"fold_batchnorm": False}})
    assert sim.graph.ir is folded.unfolded
    assert [layer.name for layer in sim.layers] == ["conv"]
    np.testing.assert_allclose(sim(x), kept(x), rtol=1e-5, atol=1e-5)
    sim = anasim.analog(kept, "ideal")  # folds by default
    assert sim.graph.ir is folded.ir


def test_a_layer_draws_the_same_noise_whether_or_not_others_are_digital():
    """Random streams are keyed by a layer's position among all Conv/Gemm/MatMul layers, so
    keeping another layer digital does not change its noise (common random numbers)."""
    g = _small_cnn(np.random.default_rng(0))
    full = anasim.analog(g, NOISY, seed=4)
    part = anasim.analog(g, {**NOISY, "layers": [{"match": "conv", "digital": True}]}, seed=4)
    assert part.digital_layers == ["conv"] and full.layer("fc").index == part.layer("fc").index == 1
    h = np.random.default_rng(2).standard_normal((5, 8 * 36)).astype(np.float32)
    ctx = RunContext(sample_offset=3, repetition=0)
    np.testing.assert_array_equal(full.layer("fc")(h, context=ctx), part.layer("fc")(h, context=ctx))
