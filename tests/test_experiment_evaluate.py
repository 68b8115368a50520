"""anasim.experiment.evaluate: tidy results, reproducibility, metrics, files, plots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.errors import ConfigError, InputError
from anasim.experiment import Results, ResultsFileError, evaluate, format_time
from anasim.experiment.metrics import get_metric
from anasim.experiment.stats import describe, t975

NOISY = {"forward": {"inp_res": 126, "out_res": 254, "out_bound": 10.0, "out_noise": 0.05},
         "mapping": {"max_input_size": 64}}
"""Forward noise only (no device model): the same numbers at every t_inference."""


def tiny_model(path=None, seed=0, bn=False):
    """Conv(1→4, 3×3) [→ BatchNorm] → Relu → Flatten → Gemm(256 → 10); input N×1×8×8."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    inits = [numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((10, 256)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    last = "c"
    if bn:
        for n, v in (("s", 1.5), ("bb", 0.1), ("m", 0.2), ("v", 2.0)):
            inits.append(numpy_helper.from_array(np.full(4, v, np.float32), n))
        nodes.append(helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["cb"], name="bn"))
        last = "cb"
    nodes += [helper.make_node("Relu", [last], ["r"], name="relu"),
              helper.make_node("Flatten", ["r"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], name="fc", transB=1)]
    m = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    if path is not None:
        with open(path, "wb") as fh:
            fh.write(m.SerializeToString())
    return m


def tiny_files(folder, n=48, seed=1, bn=False):
    """(model path, .npz path): uint8 8×8 images, labels = the model's own prediction with
    20 % replaced at random (so ideal accuracy is about 80 %)."""
    model = folder / ("tiny_bn.onnx" if bn else "tiny.onnx")
    tiny_model(model, bn=bn)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)
    y = anasim.load(model)((x / 255.0).astype(np.float32)[:, None]).argmax(1)
    flip = rng.random(n) < 0.2
    y[flip] = rng.integers(0, 10, flip.sum())
    data = folder / f"tiny_{n}.npz"
    np.savez(data, x=x, y=y.astype(np.int64))
    return model, data


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("exp"))


def test_table_layout_and_provenance(files):
    model, data = files
    res = evaluate(model, data, "aihwkit", times=[0, 3600], repeats=2, seed=0, batch_size=16, progress=False)
    assert res.metrics == ["top1", "top5"]
    assert len(res) == 1 + 2 * 2
    ideal, *analog = res.rows
    assert ideal["kind"] == "ideal" and ideal["t_inference"] is None and ideal["repetition"] is None
    assert [(r["repetition"], r["t_inference"]) for r in analog] == [
        (0, 0.0), (0, 3600.0), (1, 0.0), (1, 3600.0)]
    r = analog[0]
    assert r["model_sha256"] == anasim.load(model).ir.sha256
    assert len(r["data_sha256"]) == 64 and r["n_samples"] == 48 and r["seed"] == 0
    assert r["fold_batchnorm"] is False  # the aihwkit preset keeps BatchNorm digital
    assert r["config"] == anasim.preset("aihwkit").to_dict()
    assert r["preprocessing"]["scale"] == 1 / 255 and r["anasim_version"] == anasim.__version__
    assert len({row["point"] for row in res.rows}) == 1
    assert all(0.0 <= row["top1"] <= row["top5"] <= 1.0 for row in res.rows)
    text = res.summary()
    assert "ideal (digital)" in text and "95 % CI" in text and "1 h" in text


def test_same_seed_same_table_whatever_the_batch_size(files):
    model, data = files
    kw = dict(times=[0, 86400], repeats=2, seed=3, metric="logits_rel_error", progress=False)
    a = evaluate(model, data, "aihwkit", batch_size=48, **kw)
    b = evaluate(model, data, "aihwkit", batch_size=5, **kw)
    assert a == b and a.table() == b.table()  # bit-identical floats, not approximately equal
    c = evaluate(model, data, "aihwkit", batch_size=48, **dict(kw, seed=4))
    assert c.column("logits_rel_error")[1:] != a.column("logits_rel_error")[1:]
    assert a.metrics == ["logits_rel_error", "top1", "top5"] and a.ideal() == 0.0
    assert all(v > 0 for v in a.column("logits_rel_error")[1:])


def test_without_device_model_every_time_has_the_numbers_of_its_repetition(files):
    model, data = files
    both = evaluate(model, data, NOISY, times=[0, 1e6], repeats=2, progress=False, metric="logits_rel_error")
    alone = evaluate(model, data, NOISY, times=[1e6], repeats=2, progress=False, metric="logits_rel_error")
    vals = {(r["repetition"], r["t_inference"]): r["logits_rel_error"] for r in both.rows[1:]}
    assert vals[(0, 0.0)] == vals[(0, 1e6)] != vals[(1, 0.0)] == vals[(1, 1e6)]
    assert [r["logits_rel_error"] for r in alone.rows[1:]] == [vals[(0, 1e6)], vals[(1, 1e6)]]


def test_ideal_preset_scores_like_the_digital_network(files):
    model, data = files
    res = evaluate(model, data, "ideal", times=[0], progress=False, metric="logits_rel_error")
    assert res.rows[1]["top1"] == res.rows[0]["top1"]
    assert res.rows[1]["logits_rel_error"] < 1e-5


def test_overrides_and_batchnorm_folding_recorded(tmp_path):
    model, data = tiny_files(tmp_path, n=16, bn=True)
    kept = evaluate(model, data, "aihwkit", progress=False)
    folded = evaluate(model, data, "aihwkit", progress=False,
                      overrides=["mapping.fold_batchnorm=true", "forward.out_noise=0.0"])
    assert {r["fold_batchnorm"] for r in kept.rows} == {False}
    assert {r["fold_batchnorm"] for r in folded.rows} == {True}
    assert folded.rows[0]["config"]["forward"]["out_noise"] == 0.0
    assert kept.rows[0]["point"] != folded.rows[0]["point"]
    assert kept.rows[0]["top1"] == folded.rows[0]["top1"]  # folding is exact for the ideal network
    with pytest.raises(ConfigError, match="Did you mean 'out_noise'"):
        evaluate(model, data, "aihwkit", overrides=["forward.out_nosie=0.1"], progress=False)


def test_arrays_and_argument_errors(files):
    model, _ = files
    x = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32)
    res = evaluate(model, (x, None), NOISY, metric="logits_rel_error", progress=False)
    assert res.metrics == ["logits_rel_error"] and res.rows[0]["data"] == "<array>"
    with pytest.raises(InputError, match="needs labels"):
        evaluate(model, (x, None), NOISY, progress=False)
    for bad in (dict(times=[-1]), dict(times=[]), dict(repeats=0), dict(batch_size=0), dict(metric="top0"),
                dict(metric="acc")):
        with pytest.raises(ConfigError):
            evaluate(model, (x, np.zeros(10, np.int64)), NOISY, progress=False, **bad)


def test_files_roundtrip_atomic_and_never_overwritten(files, tmp_path):
    model, data = files
    res = evaluate(model, data, "aihwkit", times=[0, 60], repeats=2, progress=False)
    for name in ("r.csv", "r.json", "r.jsonl"):
        path = res.save(tmp_path / name)
        assert Results.load(path) == res
        with pytest.raises(ResultsFileError, match="refusing to overwrite"):
            res.save(path)
        res.save(path, overwrite=True)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["meta"]["times"] == [0.0, 60.0] and doc["meta"]["repeats"] == 2
    assert doc["rows"][1]["config"]["noise_model"]["type"] == "pcm"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["point", "kind", "t_inference", "repetition", "top1", "top5"]
    assert {"model_sha256", "data_sha256", "preprocessing", "config", "seed", "fold_batchnorm",
            "anasim_version"} <= set(header)


def test_one_repetition_reports_na(files):
    model, data = files
    res = evaluate(model, data, "aihwkit", times=[0], repeats=1, progress=False)
    line = [x for x in res.summary().splitlines() if x.startswith("0 s")][0]
    assert "± n/a" in line and line.rstrip().endswith("n/a")


def test_plot(files, tmp_path, monkeypatch):
    model, data = files
    res = evaluate(model, data, "aihwkit", times=[0, 3600, 86400], repeats=2, progress=False)
    pytest.importorskip("matplotlib")
    res.plot(tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(ConfigError, match="pip install matplotlib"):
        res.plot(tmp_path / "other.png")


def test_metrics_and_statistics():
    out = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.3, 0.3, 0.4]])
    labels = np.array([1, 2, 0])
    assert get_metric("top1")(out, labels).tolist() == [1, 0, 0]
    assert get_metric("top2")(out, labels).tolist() == [1, 1, 1]  # tie at 0.3 counts for the label
    ideal = np.array([[0.0, 1.0, 0.0]] * 3)
    err = get_metric("logits_rel_error")(out, labels, ideal)
    np.testing.assert_allclose(err, np.linalg.norm(out - ideal, axis=1))
    assert t975(1) == pytest.approx(12.7062047, rel=1e-7) and t975(100) == pytest.approx(1.9839715, rel=1e-6)
    st = describe([0.5, 0.7, 0.6])
    assert st["mean"] == pytest.approx(0.6) and st["std"] == pytest.approx(0.1)
    assert st["ci_high"] - st["mean"] == pytest.approx(t975(2) * 0.1 / np.sqrt(3))
    assert describe([0.5])["std"] is None
    assert [format_time(t) for t in (0, 1, 90, 3600, 86400, 365 * 86400)] == [
        "0 s", "1 s", "1.5 min", "1 h", "1 d", "1 y"]


@pytest.mark.slow
def test_resnet20_on_cifar10_first_64(tmp_path):
    from conftest import cifar10_test, shared_path

    path = shared_path("models", "resnet20_cifar10.onnx")
    from anasim.datasets import load_dataset

    ds = load_dataset(shared_path("data", "cifar10_test1000.npz"), "cifar10", limit=64)
    res = evaluate(path, ds, "aihwkit", times=[0], repeats=2, batch_size=24, progress=False)
    x, y = cifar10_test(64)
    np.testing.assert_array_equal(ds.x, x)
    graph = anasim.load(path, fold_batchnorm=False)
    assert res.rows[0]["top1"] == float(np.mean(graph(x).argmax(1) == y))
    # repetition 1 = a second freshly programmed chip; one batch of 64 gives the same numbers
    sim = anasim.analog(graph, "aihwkit", seed=0)
    sim.program(1)
    sim.drift(0.0)
    assert res.rows[2]["top1"] == float(np.mean(sim(x).argmax(1) == y))


def test_threads_setting_governs_numba(monkeypatch, thread_settings):
    """set_threads changes Numba's and BLAS's threads and the environment for the whole
    process; the ``thread_settings`` fixture (conftest) restores them all afterwards."""
    import numba

    from anasim.experiment import set_threads
    from anasim.threads import resolve_threads

    info = set_threads(1)
    assert info["threads"] == 1 and numba.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1" and info["blas"] in ("threadpoolctl", "env")
    monkeypatch.setenv("ANASIM_NUM_THREADS", "3")
    assert resolve_threads() == 3 and resolve_threads(2) == 2
    monkeypatch.setenv("ANASIM_NUM_THREADS", "many")
    with pytest.raises(ConfigError, match="ANASIM_NUM_THREADS"):
        resolve_threads()


def test_progress_bar_without_tqdm(monkeypatch, capsys):
    import builtins

    from anasim.experiment.progress import progress_bar

    real = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    bar = progress_bar(10, desc="evaluating", unit="samples", enabled=True)
    bar.update(10)
    bar.close()
    assert "evaluating 100% |" in capsys.readouterr().err
    assert type(progress_bar(10, enabled=False)).__name__ == "_NullBar"
