"""anasim.experiment.sweep: grid files, resumability (also after SIGKILL), locking,
local processes and Dask."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anasim.errors import ConfigError
from anasim.experiment import ResultLock, Results, ResultsFileError, load_grid, sweep
from anasim.experiment.results import KINDS
from anasim.experiment.storage import read_table
from test_experiment_evaluate import tiny_files

ROOT = Path(__file__).resolve().parents[1]

GRID = """
base = "aihwkit"
times = [0, 3600]
repeats = 2
seed = 1
[grid]
"forward.out_res" = [62, 254]
forward.out_noise = [0.0, 0.04]
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    model, data = tiny_files(folder, n=32)
    grid = folder / "grid.toml"
    grid.write_text(GRID)
    return model, data, grid


def _points(path):
    """{point: [row keys]} of a results file, checking every row parses."""
    cols, rows, _, torn = read_table(path, KINDS)
    out = {}
    for r in rows:
        out.setdefault(r["point"], []).append((r["kind"], r["t_inference"], r["repetition"]))
    return out, torn


def test_grid_file_format(tmp_path):
    (tmp_path / "chip.toml").write_text('preset = "aihwkit"\n[forward]\nout_noise = 0.01\n')
    (tmp_path / "g.toml").write_text("""
base = "chip.toml"
set = ["mapping.max_input_size=128"]
times = [0, 60]
[grid]
"forward.out_res" = [62, 126]
forward.inp_res = [30, 62, 126]
[[points]]
base = "ideal"
"forward.out_noise" = 0.5
[[points]]
noise_model = {type = "pcm", prog_noise_scale = 0.5}
""")
    g = load_grid(tmp_path / "g.toml")
    assert g.params == ["forward.out_res", "forward.inp_res", "base", "forward.out_noise", "noise_model"]
    assert len(g.points) == 2 * 3 + 2
    assert g.points[:2] == [{"forward.out_res": 62, "forward.inp_res": 30},
                            {"forward.out_res": 62, "forward.inp_res": 62}]
    configs = g.configs()
    cols, cfg = configs[0]
    assert cfg.forward.out_noise == 0.01 and cfg.mapping.max_input_size == 128 and cfg.forward.out_res == 62
    assert cols["base"] == "chip.toml" and cols["forward.out_noise"] == 0.01
    cols, cfg = configs[6]
    assert cfg.forward.out_noise == 0.5 and "noise_model" not in cfg.sections and cols["base"] == "ideal"
    cols, cfg = configs[7]
    assert cfg.to_dict()["noise_model"]["prog_noise_scale"] == 0.5
    assert load_grid(tmp_path / "g.toml", times=[5], repeats=4).times == (5.0,)
    bad = [("timez = [0]", "Did you mean 'times'"),
           ('[grid]\n"forward.out_nosie" = [0.1]', "Did you mean 'out_noise'"),
           ('[grid]\n"forward.out_noise" = 0.1', "must be a non-empty list"),
           ("repeats = 0", "repeats must be")]
    for text, msg in bad:
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_grid(tmp_path / "bad.toml").configs()


def test_results_resume_and_grow(files, tmp_path):
    model, data, grid = files
    out = tmp_path / "res.csv"
    res = sweep(model, data, grid, out=out, progress=False)
    assert res.meta["evaluated"] == 4 and res.params == ["forward.out_res", "forward.out_noise"]
    assert len(res) == 4 * (1 + 2 * 2)
    assert [r["forward.out_res"] for r in res.rows[::5]] == [62, 62, 254, 254]
    assert [r["forward.out_noise"] for r in res.rows[::5]] == [0.0, 0.04, 0.0, 0.04]
    before = out.read_bytes()
    again = sweep(model, data, grid, out=out, progress=False)
    assert again.meta["evaluated"] == 0 and again.meta["skipped"] == 4
    assert out.read_bytes() == before and again == res
    # one more value: only the new points run, the old rows stay as they were
    grown = out.parent / "grown.toml"
    grown.write_text(GRID.replace("[62, 254]", "[62, 254, 126]"))
    more = sweep(model, data, grown, out=out, progress=False)
    assert more.meta["evaluated"] == 2 and more.meta["skipped"] == 4
    assert out.read_bytes().startswith(before)
    points, torn = _points(out)
    assert len(points) == 6 and not torn and all(len(v) == 5 for v in points.values())
    # the evaluation of a point does not depend on the grid it is part of
    assert Results.load(out).table()[:20] == res.table()
    if importlib.util.find_spec("matplotlib"):
        more.plot(tmp_path / "sweep.png")
        assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_torn_line_and_incomplete_point_are_redone(files, tmp_path):
    model, data, grid = files
    out = tmp_path / "res.csv"
    full = sweep(model, data, grid, out=out, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    # a point cut after 3 of its 5 rows, then a write torn in the middle of a line
    out.write_text("".join(lines[:1 + 15 + 3]) + lines[19][:40])
    points, torn = _points(out)
    assert torn and len(points) == 4
    redo = sweep(model, data, grid, out=out, progress=False)
    assert redo.meta["evaluated"] == 1 and redo.meta["skipped"] == 3
    points, torn = _points(out)
    assert not torn and len(points) == 4
    assert all(sorted(map(str, v)) == sorted(map(str, points[next(iter(points))])) for v in points.values())
    assert sorted(map(str, Results.load(out).table())) == sorted(map(str, full.table()))


def test_concurrent_writer_is_refused(files, tmp_path):
    model, data, grid = files
    out = tmp_path / "res.csv"
    with ResultLock(out):
        with pytest.raises(ResultsFileError, match=r"being written by another anasim run \(pid \d+"):
            sweep(model, data, grid, out=out, progress=False)
    assert not out.exists()
    assert sweep(model, data, grid, out=out, progress=False).meta["evaluated"] == 4  # lock released
    assert not Path(str(out) + ".lock").exists()


def test_sigkill_mid_sweep_then_rerun_loses_and_duplicates_nothing(tmp_path):
    model, data = tiny_files(tmp_path, n=200)
    grid = tmp_path / "grid.toml"
    grid.write_text('base = "aihwkit"\ntimes = [0, 3600]\nrepeats = 2\n[grid]\n"forward.out_noise" = '
                    + str([round(0.01 * i, 2) for i in range(12)]) + "\n")
    out = tmp_path / "res.csv"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "anasim", "sweep", str(model), "--data", str(data), "--grid", str(grid),
           "--out", str(out), "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 1 + 2 * 5:  # header + two points
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed, _ = _points(out)
    done = [p for p, keys in killed.items() if len(keys) == 5]
    assert 2 <= len(done) < 12
    snapshot = {r["point"]: r for r in read_table(out, KINDS)[1] if r["kind"] == "ideal"}
    assert Path(str(out) + ".lock").exists()  # left behind by the killed process, but not held
    res = sweep(model, data, grid, out=out, progress=False)
    assert res.meta["skipped"] == len(done) and res.meta["evaluated"] == 12 - len(done)
    points, torn = _points(out)
    assert len(points) == 12 and not torn
    for keys in points.values():
        assert len(keys) == len(set(keys)) == 5
    after = {r["point"]: r for r in read_table(out, KINDS)[1] if r["kind"] == "ideal"}
    assert all(after[p] == snapshot[p] for p in done)


def test_worker_processes_give_the_same_table(files, tmp_path):
    model, data, grid = files
    one = sweep(model, data, grid, progress=False)
    two = sweep(model, data, grid, out=tmp_path / "w.jsonl", workers=2, threads=2, progress=False)
    assert two == one
    assert sorted(map(str, Results.load(tmp_path / "w.jsonl").table())) == sorted(map(str, one.table()))


def test_dask_local_cluster(files):
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    model, data, grid = files
    local = sweep(model, data, grid, progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        res = sweep(model, data, grid, scheduler=cluster.scheduler_address, progress=False)
    assert res == local
