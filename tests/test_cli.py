"""The anasim command line: evaluate, sweep, show; one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anasim.cli import main, parse_times
from anasim.experiment import ResultLock, Results
from test_experiment_evaluate import tiny_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("cli"), n=40)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("anasim: error: ")
    return err


def test_evaluate_prints_the_table_and_writes_csv_and_json(files, tmp_path, capsys):
    model, data = files
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    rc = main(["evaluate", str(model), "--data", str(data), "--times", "0,1h,1d", "--repeats", "2",
               "--batch-size", "16", "--out", str(csv_path), "--out", str(json_path), "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("ideal (digital)", "mean ± std", "95 % CI", "top-1 accuracy (%)", "top-5 accuracy (%)",
                 "1 h", "1 d", "preset aihwkit", "BatchNorm kept digital", f"wrote {csv_path}"):
        assert text in out, text
    res = Results.load(csv_path)
    assert len(res) == 1 + 3 * 2 and res == Results.load(json_path)
    doc = json.loads(json_path.read_text())
    assert doc["meta"]["repeats"] == 2 and doc["meta"]["times"] == [0.0, 3600.0, 86400.0]
    assert doc["rows"][0]["model_sha256"] == res.rows[0]["model_sha256"]
    # existing results are kept
    rc = main(["evaluate", str(model), "--data", str(data), "--out", str(csv_path), "--quiet"])
    assert rc == 2 and "refusing to overwrite" in _error_line(capsys)
    rc = main(["evaluate", str(model), "--data", str(data), "--times", "0", "--repeats", "1", "--out",
               str(csv_path), "--overwrite", "--quiet", "--metric", "logits_rel_error", "--set",
               "forward.out_noise=0.0"])
    out = capsys.readouterr().out
    assert rc == 0 and "relative output error" in out and "n/a" in out
    res = Results.load(csv_path)
    assert res.metrics[0] == "logits_rel_error" and res.rows[1]["config"]["forward"]["out_noise"] == 0.0


def test_unknown_set_key_is_one_line_naming_the_closest(files, capsys):
    model, data = files
    rc = main(["evaluate", str(model), "--data", str(data), "--set", "forward.out_nosie=0.02"])
    err = _error_line(capsys)
    assert rc == 2 and "'out_nosie'" in err and "Did you mean 'out_noise'?" in err
    rc = main(["evaluate", str(model), "--data", str(data), "--set", "froward.out_noise=0.02"])
    assert rc == 2 and "Did you mean 'forward'?" in _error_line(capsys)
    rc = main(["evaluate", str(model), "--data", str(data), "--times", "1 fortnight"])
    assert rc == 2 and "--times" in _error_line(capsys)
    rc = main(["evaluate", str(model), "--data", str(data), "--preprocess", "cifar11"])
    assert rc == 2 and "cifar10" in _error_line(capsys)


def test_missing_data_and_unavailable_device_are_one_line_errors(files, tmp_path, capsys):
    model, data = files
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\n"forward.out_noise" = [0.0, 0.1]\n')
    rc = main(["sweep", str(model), "--grid", str(grid)])
    assert rc == 2 and "sweep needs --data" in _error_line(capsys)
    rc = main(["evaluate", str(model)])
    assert rc == 2 and "evaluate needs --data" in _error_line(capsys)
    from anasim.kernels.cuda import available

    if available():
        return
    for cmd in (["evaluate", str(model), "--data", str(data)],
                ["sweep", str(model), "--data", str(data), "--grid", str(grid), "--out", str(tmp_path / "r.csv")]):
        rc = main(cmd + ["--device", "cuda", "-q"])
        assert rc == 2 and "needs a CUDA GPU" in _error_line(capsys)
    assert not (tmp_path / "r.csv").exists()


def test_parse_times():
    assert parse_times("0,1,3600") == [0.0, 1.0, 3600.0]
    assert parse_times("10s, 2min,1h,1d,1w,1y, 1e6") == [
        10.0, 120.0, 3600.0, 86400.0, 604800.0, 31536000.0, 1e6]


def test_sweep_show_and_lock(files, tmp_path, capsys):
    model, data = files
    grid = tmp_path / "grid.toml"
    grid.write_text('base = "aihwkit"\ntimes = [0, 60]\nrepeats = 2\n'
                    '[grid]\n"forward.out_noise" = [0.0, 0.1]\n')
    out = tmp_path / "sweep.csv"
    args = ["sweep", str(model), "--data", str(data), "--grid", str(grid), "--out", str(out),
            "--threads", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "forward.out_noise" in text and "2 point(s): 2 evaluated now, 0 already in" in text
    assert main(args) == 0
    assert "0 evaluated now, 2 already in" in capsys.readouterr().out
    with ResultLock(out):
        assert main(args) == 2
        assert "being written by another anasim run" in _error_line(capsys)
    assert main(["show", str(out)]) == 0
    assert "forward.out_noise" in capsys.readouterr().out
    assert main(["sweep", str(model), "--data", str(data), "--grid", str(tmp_path / "nope.toml")]) == 2
    err = _error_line(capsys)
    assert "Cannot read the grid file" in err and "no such file" in err


def test_plot_option(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, data = files
    png = tmp_path / "acc.png"
    assert main(["evaluate", str(model), "--data", str(data), "--times", "0,1h", "--repeats", "2", "--quiet",
                 "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_default_evaluate_runs_the_bundled_model(capsys):
    for name in ("fmnist_cnn.onnx", "fmnist_cnn.json", "fmnist_test.npz"):  # tracked in git
        assert (ROOT / "data" / name).is_file(), f"data/{name} (the bundled demo) is missing"
    rc = main(["evaluate", "--limit", "200", "--times", "0,1d", "--repeats", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "bundled demo" in out and "fmnist_cnn.onnx" in out and "preset aihwkit" in out
    assert "fmnist_cnn.json" in out  # preprocessing taken from the model's metadata
    assert "first 200 of 10000" in out and "ideal (digital)" in out and "1 d" in out
