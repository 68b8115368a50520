"""Hostile but realistic input (issue 13): one clear anasim error, before the work where it
can be known up front, never a raw traceback or a silently wrong number."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import anasim
from anasim.cli import main
from anasim.datasets import DataError, load_dataset
from anasim.errors import AnasimError, ConfigError, InputError, ModelLoadError
from anasim.snapshot import load_snapshot, save_snapshot
from test_analog_simulator import NOISY, _small_cnn
from test_experiment_evaluate import tiny_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("hostile"), n=16)


def _error(capsys, argv) -> str:
    """Run the CLI; it must fail with exit status 2 and one line starting 'anasim: error:'."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("anasim: error: "), err
    return err


# ------------------------------------------------------------------ files that cannot be read
def test_missing_model_or_a_directory(files, tmp_path, capsys):
    _, data = files
    err = _error(capsys, ["evaluate", str(tmp_path / "none.onnx"), "--data", str(data)])
    assert "Cannot read the model" in err and "no such file" in err
    err = _error(capsys, ["evaluate", str(tmp_path), "--data", str(data)])
    assert "is a directory" in err
    with pytest.raises(ModelLoadError, match="is a directory"):
        anasim.load(tmp_path)


def test_not_utf8_and_pathologically_nested_files(files, tmp_path, capsys):
    model, data = files
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[forward]\n")
    assert "not UTF-8" in _error(capsys, ["evaluate", str(model), "--data", str(data), "--config", str(bad)])
    for name, text in (("deep.json", "[" * 100000 + "]" * 100000), ("deep.toml", "a = " + "[" * 100000 + "]" * 100000)):
        p = tmp_path / name
        p.write_text(text)
        err = _error(capsys, ["evaluate", str(model), "--data", str(data), "--config", str(p)])
        assert "nested too deeply" in err
        with pytest.raises(ConfigError, match="nested too deeply"):
            anasim.load_config(p)
    grid = tmp_path / "grid.toml"
    grid.write_bytes(b'base = "ideal"\n# \xe9\n')
    assert "not UTF-8" in _error(capsys, ["sweep", str(model), "--data", str(data), "--grid", str(grid)])
    folder = tmp_path / "gdir"
    folder.mkdir()
    assert "is a directory" in _error(capsys, ["sweep", str(model), "--data", str(data), "--grid", str(folder)])


def _without_read_permission(argv_list, tmp_path):
    """Run CLI invocations in a child that cannot override file permissions: a non-root
    user as is, root with the DAC capabilities dropped (setpriv)."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    script = ("import sys, json; from anasim.cli import main; out = []\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    out.append(main(argv))\n"
              "print(json.dumps(out))\n")
    proc = subprocess.run(prefix + [sys.executable, "-c", script, json.dumps(argv_list)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_unreadable_model_data_config_and_grid(files, tmp_path):
    model, data = files
    locked = {}
    for name, src in (("m.onnx", model), ("d.npz", data)):
        locked[name] = tmp_path / name
        shutil.copy(src, locked[name])
    (tmp_path / "c.toml").write_text("[forward]\nout_noise = 0.0\n")
    (tmp_path / "g.toml").write_text('base = "ideal"\n')
    for name in ("m.onnx", "d.npz", "c.toml", "g.toml"):
        (tmp_path / name).chmod(0)
    ok_model, ok_data = str(model), str(data)
    runs = [["evaluate", "m.onnx", "--data", ok_data], ["evaluate", ok_model, "--data", "d.npz"],
            ["evaluate", ok_model, "--data", ok_data, "--config", "c.toml"],
            ["sweep", ok_model, "--data", ok_data, "--grid", "g.toml"], ["inspect", "m.onnx"]]
    codes, err = _without_read_permission(runs, tmp_path)
    assert codes == [2] * len(runs), err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == len(runs) and all(x.startswith("anasim: error: ") for x in lines), err
    for line, what in zip(lines, ("model 'm.onnx'", "data set 'd.npz'", "configuration file 'c.toml'",
                                  "grid file 'g.toml'", "model 'm.onnx'")):
        assert what in line and "permission denied" in line, line


# ------------------------------------------------------------------ sweeps: the scheduler
def test_scheduler_address_checked_before_the_work(files, tmp_path, capsys):
    pytest.importorskip("distributed")  # an optional extra, not an anasim module
    model, data = files
    grid = tmp_path / "g.toml"
    grid.write_text('base = "ideal"\ntimes = [0]\n[grid]\n"forward.out_noise" = [0.0, 0.01]\n')
    out = tmp_path / "r.csv"
    argv = ["sweep", str(model), "--data", str(data), "--grid", str(grid), "--out", str(out)]
    assert "not a Dask scheduler address" in _error(capsys, argv + ["--scheduler", "not an address"])
    err = _error(capsys, argv + ["--scheduler", "tcp://127.0.0.1:1"])
    assert "Cannot reach the Dask scheduler" in err and "within 10 s" in err  # anasim's timeout, not Dask's 30 s
    assert not out.exists()  # nothing written


# ------------------------------------------------------------------ seeds, times, data format
def test_seeds_outside_the_key_space_are_refused(files, tmp_path, capsys):
    model, data = files
    err = _error(capsys, ["evaluate", str(model), "--data", str(data), "--seed", str(2**64), "--times", "0"])
    assert "2**64" in err
    g = anasim.load(model)
    with pytest.raises(ConfigError, match="2\\*\\*64"):
        anasim.analog(g, "aihwkit", seed=2**64)
    assert anasim.analog(g, "ideal", seed=2**64 - 1).seed == 2**64 - 1
    grid = tmp_path / "g.toml"
    grid.write_text(f'base = "ideal"\nseed = {2**64}\n')
    assert "2**64" in _error(capsys, ["sweep", str(model), "--data", str(data), "--grid", str(grid)])


def test_empty_times_are_an_error_not_the_default(files, capsys):
    model, data = files
    assert "--times is empty" in _error(capsys, ["evaluate", str(model), "--data", str(data), "--times", ""])


def test_unrecognised_data_points_to_the_cli_option(files, tmp_path, capsys):
    model, _ = files
    odd = tmp_path / "data.xyz"
    odd.write_bytes(b"\x00\x01\x02\x03" * 16)
    err = _error(capsys, ["evaluate", str(model), "--data", str(odd)])
    assert "--data-format" in err
    with pytest.raises(DataError, match="format="):
        load_dataset(odd)


# ------------------------------------------------------------------ Python API
def test_python_api_refusals():
    g = _small_cnn(np.random.default_rng(0))
    sim = anasim.analog(g, NOISY)
    x = np.zeros((1, 4, 6, 6), np.float32)
    with pytest.raises(InputError, match="number of seconds"):
        sim.drift("1h")
    with pytest.raises(InputError, match="2\\*\\*40"):
        sim(x, sample_offset=2**70)
    assert sim(x, sample_offset=2**40 - 1).shape == (1, 5)
    with pytest.raises(InputError, match="no samples"):
        sim(x[:0])
    with pytest.raises(InputError, match="no samples"):
        g(x[:0])
    with pytest.raises(DataError, match="must be a file path"):
        load_dataset(None)


def test_snapshot_api_errors(tmp_path):
    g = _small_cnn(np.random.default_rng(0))
    sim = anasim.analog(g, NOISY)
    with pytest.raises(FileNotFoundError, match="No snapshot file"):
        load_snapshot(sim, tmp_path / "missing.h5")
    p = save_snapshot(sim, tmp_path / "chip.h5")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_snapshot(sim, p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_snapshot(sim, tmp_path / "no" / "chip.h5")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="is a directory"):
            save_snapshot(sim, tmp_path, overwrite=overwrite)
    assert all(isinstance(e, type) and issubclass(e, AnasimError) for e in (InputError, DataError))


# ------------------------------------------------------------------ outputs
def test_unwritable_out_is_refused_before_the_run(files, tmp_path):
    model, data = files
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    runs = [["evaluate", str(model), "--data", str(data), "--times", "0", "--out", "ro/r.csv"],
            ["evaluate", str(model), "--data", str(data), "--times", "0", "--plot", "ro/p.png"]]
    codes, err = _without_read_permission(runs, tmp_path)
    assert codes == [2, 2], err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 2 and all("Cannot write ro/" in x and "ermission denied" in x for x in lines), err
    assert list(ro.iterdir()) == []


def test_results_are_rescued_when_writing_fails_at_the_end(files, tmp_path, capsys, monkeypatch):
    from anasim.experiment import Results

    model, data = files
    out = tmp_path / "r.csv"
    real_save = Results.save

    def failing_save(self, path, **kw):
        if Path(path) == out:
            raise PermissionError(13, "Permission denied", str(path))
        return real_save(self, path, **kw)

    monkeypatch.setattr(Results, "save", failing_save)
    err = _error(capsys, ["evaluate", str(model), "--data", str(data), "--times", "0", "--repeats", "1",
                          "--out", str(out), "--quiet"])
    assert "the results are safe in " in err
    rescued = Path(err.rsplit("the results are safe in ", 1)[1].rstrip("."))
    try:
        rows = Results.load(rescued).rows
        assert len(rows) == 2 and rows[0]["kind"] == "ideal"
    finally:
        rescued.unlink()


def test_outputs_named_twice_or_into_a_missing_folder(files, tmp_path, capsys):
    model, data = files
    base = ["evaluate", str(model), "--data", str(data), "--times", "0"]
    a = tmp_path / "a.csv"
    err = _error(capsys, base + ["--out", str(a), "--out", str(tmp_path / "." / "a.csv")])
    assert "named twice" in err and not a.exists()
    pytest.importorskip("matplotlib")  # an optional extra
    assert "does not exist" in _error(capsys, base + ["--plot", str(tmp_path / "no" / "p.png")])
    assert "cannot write a plot as '.txt'" in _error(capsys, base + ["--plot", str(tmp_path / "p.txt")])


def test_messages_quote_long_values_briefly(files, tmp_path, capsys):
    model, data = files
    cfg = tmp_path / "big.toml"
    cfg.write_text("[forward]\nout_noise = [" + ",".join(["0.1"] * 200000) + "]\n")
    err = _error(capsys, ["evaluate", str(model), "--data", str(data), "--config", str(cfg)])
    assert len(err) < 1000 and "out_noise" in err and "characters" in err
    with pytest.raises(ConfigError) as info:
        anasim.load_config(cfg)
    assert len(str(info.value)) < 1000


def test_cli_warnings_are_one_line(files, capsys):
    """A warning during a CLI run is printed as `anasim: warning: ...`, without Python's source line."""
    model, data = files
    import warnings

    from anasim import cli

    def warn_then_ok(args):
        warnings.warn("labels 10..14 are not among the classes 0..9\n(second line)", UserWarning)
        return 0

    parser = cli.build_parser()
    args = parser.parse_args(["evaluate", str(model), "--data", str(data)])
    args.func = warn_then_ok
    original = cli.build_parser
    try:
        cli.build_parser = lambda: type("P", (), {"parse_args": lambda self, argv: args})()
        assert cli.main([]) == 0
    finally:
        cli.build_parser = original
    err = capsys.readouterr().err.strip()
    assert err == "anasim: warning: labels 10..14 are not among the classes 0..9 (second line)", err
