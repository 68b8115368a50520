"""Hostile input, second round (issue 13 items 7a, 9, 10, 12b, 15): an output the metric
cannot score, labels the model can never give, NaN ideal outputs and a top-k over every
class are one anasim error before anything analog runs, never a crash or a silently wrong
number; the worker processes of a killed sweep die with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from anasim.cli import main
from anasim.errors import InputError
from anasim.experiment import evaluate, get_metric
from test_experiment_evaluate import tiny_files, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("scoring"), n=16)


@pytest.fixture
def no_analog(monkeypatch):
    """Fail the test if the analog simulator is ever built: the checks come first."""
    def refuse(*a, **k):
        raise AssertionError("the analog simulator ran before the refusal")

    import importlib

    monkeypatch.setattr(importlib.import_module("anasim.analog.simulator"), "analog", refuse)


def _error(capsys, argv) -> str:
    """Run the CLI; it must fail with exit status 2 and one line starting 'anasim: error:'."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("anasim: error: "), err
    return err


def _with_outputs(path, nodes, outputs, inits=()):
    """The tiny model (output 'logits', N×10) plus ``nodes`` and extra graph ``outputs``
    (name, element type, declared shape), written to ``path``."""
    m = tiny_model()
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    for name, elem, shape in outputs:
        m.graph.output.append(helper.make_tensor_value_info(name, elem, shape))
    onnx.save(m, path)
    return str(path)


# ------------------------------------------------------------------ 7a: a scalar output
def test_scalar_output_is_refused_naming_it_its_shape_and_the_way_out(files, tmp_path, capsys,
                                                                        no_analog):
    _, data = files
    reduce = helper.make_node("ReduceMean", ["logits"], ["total"], keepdims=0)
    declared = _with_outputs(tmp_path / "declared.onnx", [reduce], [("total", TensorProto.FLOAT, [])])
    for metric in ("top1", "logits_rel_error"):  # were IndexError / TypeError
        err = _error(capsys, ["evaluate", declared, "--data", str(data), "--output", "total",
                              "--metric", metric, "--quiet", "--repeats", "1", "--times", "0"])
        assert "'total'" in err and "scalar" in err and "shape ()" in err and "declares" in err, err
        assert "--output NAME" in err and "'logits'" in err, err
    # declared as one value per sample, but the network computes a scalar: the ideal pass
    # reveals it, on its first chunk, before anything analog
    wrong = _with_outputs(tmp_path / "wrong.onnx", [reduce], [("total", TensorProto.FLOAT, ["N"])])
    err = _error(capsys, ["evaluate", wrong, "--data", str(data), "--output", "total", "--metric",
                          "logits_rel_error", "--quiet", "--repeats", "1", "--times", "0"])
    assert "'total'" in err and "scalar" in err and "ideal network computes" in err and "--output NAME" in err
    with pytest.raises(InputError, match="'total' is a scalar"):
        evaluate(wrong, data, "aihwkit", output="total", metric="logits_rel_error", progress=False)
    # in a sweep's worker processes too (where the analog simulator is not patched out)
    err = _error(capsys, ["sweep", wrong, "--data", str(data), "--grid", _grid(tmp_path), "--output", "total",
                          "--metric", "logits_rel_error", "--quiet", "--workers", "2", "--threads", "2"])
    assert "'total' is a scalar" in err and "ideal network computes" in err


def test_output_without_the_batch_axis_is_refused(files, tmp_path, capsys, no_analog):
    _, data = files
    mean = helper.make_node("ReduceMean", ["logits"], ["per_class"], axes=[0], keepdims=0)
    model = _with_outputs(tmp_path / "m.onnx", [mean], [("per_class", TensorProto.FLOAT, ["N"])])
    err = _error(capsys, ["evaluate", model, "--data", str(data), "--output", "per_class", "--metric",
                          "logits_rel_error", "--quiet", "--repeats", "1", "--times", "0"])
    assert "'per_class' has shape (10,) for a batch of 16 samples" in err and "--output NAME" in err


# ----------------------------------------- 9: labels, N×1 and ArgMax outputs scored as logits
def test_labels_the_model_can_never_give_are_refused(tmp_path, capsys, no_analog):
    model, _ = tiny_files(tmp_path, n=16)
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8)).astype(np.uint8)
    y = np.arange(16) * 7  # 0..105 for a model with 10 classes
    data = tmp_path / "hundred.npz"
    np.savez(data, x=x, y=y)
    for metric in ("top1", "top5"):
        err = _error(capsys, ["evaluate", str(model), "--data", str(data), "--metric", metric, "--quiet"])
        assert f"--metric {metric}: 14 of 16 labels" in err and "sample 2: label 14" in err, err
        assert "0..105" in err and "classes 0..9" in err and "'logits'" in err and "[N, 10]" in err, err
    err = _error(capsys, ["sweep", str(model), "--data", str(data), "--grid", _grid(tmp_path), "--quiet",
                          "--workers", "2"])
    assert "14 of 16 labels" in err


def test_labels_the_model_can_never_give_drop_the_default_accuracies_loudly(tmp_path):
    """logits_rel_error needs no labels: it runs, without the accuracies added by default."""
    model, _ = tiny_files(tmp_path, n=16)
    data = tmp_path / "hundred.npz"
    np.savez(data, x=np.zeros((16, 8, 8), np.uint8) + 9, y=np.arange(16) * 7)
    with pytest.warns(UserWarning, match=r"Not recording top1 .*14 of 16 labels"):
        res = evaluate(model, str(data), "ideal", metric="logits_rel_error", progress=False)
    assert res.metrics == ["logits_rel_error"] and res.ideal() == 0.0


def test_single_value_and_argmax_outputs_are_not_scored_as_logits(files, tmp_path, capsys, no_analog):
    _, data = files
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["f", "w1x", "b1x"], ["one"], name="fc1", transB=1),
             helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=1),
             helper.make_node("ArgMax", ["logits"], ["flat_cls"], axis=1, keepdims=0)]
    inits = [numpy_helper.from_array((rng.standard_normal((1, 256)) * 0.1).astype(np.float32), "w1x"),
             numpy_helper.from_array(np.zeros(1, np.float32), "b1x")]
    model = _with_outputs(tmp_path / "m.onnx", nodes, [("one", TensorProto.FLOAT, ["N", 1]),
                                                       ("cls", TensorProto.INT64, ["N", 1]),
                                                       ("flat_cls", TensorProto.INT64, ["N"])], inits)
    err = _error(capsys, ["evaluate", model, "--data", str(data), "--output", "one", "--quiet"])
    assert "--metric top1: output 'one' has one value per sample (shape [N, 1])" in err
    assert "class 0 for every sample" in err and "--output NAME" in err and "'logits'" in err
    for name in ("cls", "flat_cls"):
        err = _error(capsys, ["evaluate", model, "--data", str(data), "--output", name, "--quiet"])
        assert f"output {name!r} holds int64 values" in err and "ArgMax" in err, err
        assert "--output NAME" in err, err


# --------------------------------------------------------------- 10: NaN ideal outputs
def test_nan_ideal_outputs_are_refused_never_a_perfect_score(tmp_path, capsys, no_analog):
    # logits * (s / s) with s the sum of the input image: NaN for the all-black images 3 and 7
    nodes = [helper.make_node("ReduceSum", ["input", "axes"], ["s"], keepdims=1),
             helper.make_node("Reshape", ["s", "shape2"], ["s2"]),
             helper.make_node("Div", ["s2", "s2"], ["one"]),
             helper.make_node("Mul", ["logits", "one"], ["masked"])]
    inits = [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "shape2")]
    model = _with_outputs(tmp_path / "nan.onnx", nodes, [("masked", TensorProto.FLOAT, ["N", 10])], inits)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (16, 8, 8)).astype(np.uint8)
    x[[3, 7]] = 0
    data = tmp_path / "black.npz"
    np.savez(data, x=x, y=rng.integers(0, 10, 16))
    for metric in ("logits_rel_error", "top1"):
        err = _error(capsys, ["evaluate", model, "--data", str(data), "--output", "masked",
                              "--metric", metric, "--quiet", "--preset", "ideal"])
        assert "ideal (digital) network's output 'masked' has 20 NaN or infinite value(s)" in err, err
        assert "in 2 of 16 samples (sample(s) 3, 7)" in err and metric in err, err
    # the metric itself: NaN in, NaN out (it used to be 0.0, a perfect score)
    ideal = np.array([[np.nan, 1.0], [0.0, 0.0], [1.0, 1.0], [np.inf, 0.0]])
    analog = np.array([[np.nan, 1.0], [np.nan, 0.0], [1.0, 1.0], [np.inf, 0.0]])
    err_values = get_metric("logits_rel_error")(analog, None, ideal)
    assert np.isnan(err_values[[0, 1, 3]]).all() and err_values[2] == 0.0
    # NaN scores never count as a correct classification
    scores = np.array([[np.nan, np.nan, np.nan], [0.1, 0.9, 0.0]])
    assert get_metric("top2")(scores, np.array([0, 1])).tolist() == [0.0, 1.0]
    assert get_metric("top1")(scores, np.array([0, 1])).tolist() == [0.0, 1.0]


# -------------------------------------------------------------- 12b: top-k over all classes
def test_top_k_with_k_at_least_the_number_of_classes_is_refused(files, tmp_path, capsys, no_analog):
    model, data = files
    for k in (20, 10):
        err = _error(capsys, ["evaluate", str(model), "--data", str(data), "--metric", f"top{k}",
                              "--quiet"])
        assert f"--metric top{k}: output 'logits' (shape [N, 10]) has 10 classes" in err, err
        assert f"top-{k} accuracy is 100 %" in err and "Choose k < 10 (e.g. --metric top5)" in err, err
    err = _error(capsys, ["sweep", str(model), "--data", str(data), "--grid", _grid(tmp_path),
                          "--metric", "top20", "--quiet"])
    assert "has 10 classes" in err and "top-20" in err
    with pytest.raises(InputError, match=r"top-3 accuracy of 3 class\(es\) is 100 %"):
        get_metric("top3")(np.eye(3), np.arange(3))


def test_top_k_below_the_classes_still_scores(files):
    model, data = files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate(model, data, "ideal", metric="top9", progress=False)
    assert res.metrics == ["top9", "top1", "top5"] and res.ideal("top9") >= res.ideal("top5")


def _grid(folder) -> str:
    grid = folder / "grid.toml"
    grid.write_text('base = "ideal"\n[grid]\n"forward.out_noise" = [0.0, 0.01]\n')
    return str(grid)


# ----------------------------------------------------- 15: workers die with a killed sweep
def _children(pid: int) -> dict[int, str]:
    """pid -> start time (jiffies after boot) of the live processes whose parent is ``pid``."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry.name)] = fields[19]
    return out


def _alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` started at ``start`` still runs (a zombie is dead; a reused pid
    is another process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through Linux's /proc")
def test_kill_9_of_a_sweep_with_workers_takes_the_workers_along(tmp_path):
    model, data = tiny_files(tmp_path, n=400)
    grid = tmp_path / "grid.toml"
    grid.write_text('base = "aihwkit"\ntimes = [0, 3600]\nrepeats = 3\n[grid]\n"forward.out_noise" = '
                    "[0.0, 0.01, 0.02, 0.03, 0.04, 0.05]\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "anasim", "sweep", str(model), "--data", str(data), "--grid", str(grid),
           "--out", str(tmp_path / "res.csv"), "--quiet", "--workers", "2", "--threads", "2"]
    out = tmp_path / "res.csv"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and proc.poll() is None:
            children.update(_children(proc.pid))
            # the resource tracker and two workers, which have finished a first point
            if len(children) >= 3 and out.exists() and out.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert len(children) >= 3, f"expected two workers and the resource tracker; found {children}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in children.items()):
        time.sleep(0.1)
    left = [p for p, s in children.items() if _alive(p, s)]
    for p in left:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes of the killed sweep still alive: {left}"
