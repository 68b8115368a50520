"""Results files that cannot be trusted as they are (issue 13, second round).

* The writer lock belongs to the file, not to the name it was given: a second writer
  through a symbolic link, another spelling of the path or a hard link is refused.
* Reading a results file leaves nothing out silently: duplicated (point, t_inference,
  repetition) rows and damaged rows are refused with the file, the lines and the way out
  (``duplicates="first"`` / ``--dedupe``, ``damaged="drop"`` / ``--drop-damaged``); a file
  of the wrong shape is one ResultsFileError naming the file and what is wrong.
* A sweep resuming into a file of another model, data set, seed, times, repeats or metric
  is refused before any evaluation, naming each field that differs with both values.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from anasim.cli import main
from anasim.experiment import ResultLock, Results, ResultsFileError, sweep
from anasim.experiment.evaluate import Job
from anasim.experiment.storage import ResultsWarning
from test_experiment_evaluate import tiny_files
from test_results_io import _results

GRID = """
base = "aihwkit"
times = [0, 60]
repeats = 2
seed = 1
[grid]
"forward.out_noise" = [0.0, 0.05]
"""
ROWS = 2 * (1 + 2 * 2)  # two points: the ideal row and 2 repetitions x 2 times each


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("integrity")
    model, data = tiny_files(folder, n=32)
    grid = folder / "grid.toml"
    grid.write_text(GRID)
    out = folder / "done.csv"
    assert main(_sweep_args(model, data, grid, out)) == 0
    return model, data, grid, out


def _sweep_args(model, data, grid, out, *extra):
    return ["sweep", str(model), "--data", str(data), "--grid", str(grid), "--out", str(out),
            "--threads", "1", "--quiet", *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("anasim: error: ") and "Traceback" not in err, err
    return err


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _no_evaluation(monkeypatch):
    def run(*a, **k):
        raise AssertionError("a point was evaluated")

    monkeypatch.setattr(Job, "run", run)


# ----------------------------------------------------------------------------- item 13
def test_a_lock_belongs_to_the_file_not_to_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    real = tmp_path / "r.csv"
    link = tmp_path / "link.csv"
    link.symlink_to(real)  # dangling until the file exists: the lock still follows it
    names = [link, Path("./sub/../r.csv"), Path("r.csv"), Path("sub/../link.csv")]
    for held in [real] + names:
        with ResultLock(held) as lock:
            assert lock.path == real.with_name("r.csv.lock")
            for other in [real] + names:
                with pytest.raises(ResultsFileError, match=r"being written by another anasim run \(pid \d+"):
                    ResultLock(other).acquire()
        assert not real.with_name("r.csv.lock").exists()
    with ResultLock(real):
        with pytest.raises(ResultsFileError) as info:
            ResultLock(link).acquire()
    assert f"the same file as {real}" in str(info.value) and "use another --out" in str(info.value)
    real.write_text("point,kind\n")
    hard = tmp_path / "hard.csv"
    os.link(real, hard)  # another name for the same inode
    for a, b in ((real, hard), (hard, real)):
        with ResultLock(a):
            with pytest.raises(ResultsFileError, match="another name for the same file, a hard link"):
                ResultLock(b).acquire()
        with ResultLock(b):  # released: free again
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.csv", "link.csv", "r.csv", "sub"]


def test_a_sweep_through_a_symlink_is_locked_and_writes_the_target(files, tmp_path, capsys):
    model, data, grid, done = files
    real = _copy(done, tmp_path / "r.csv")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    before = real.read_bytes()
    with ResultLock(real):
        assert main(_sweep_args(model, data, grid, link)) == 2
        err = _error_line(capsys)
        assert "being written by another anasim run" in err and f"the same file as {real}" in err
    (tmp_path / "sub").mkdir()
    with ResultLock(tmp_path / "sub" / ".." / "r.csv"):
        assert main(_sweep_args(model, data, grid, link)) == 2
        assert "being written by another anasim run" in _error_line(capsys)
    assert real.read_bytes() == before  # nothing appended alongside
    assert main(_sweep_args(model, data, grid, link)[:-1]) == 0
    assert "0 evaluated now, 2 already in" in capsys.readouterr().out
    # the resume path through the link: a torn last line is dropped and the target rewritten
    lines = before.decode().splitlines(keepends=True)
    real.write_text("".join(lines[:-1]) + lines[-1][:30])
    assert main(_sweep_args(model, data, grid, link)[:-1]) == 0
    captured = capsys.readouterr()
    assert "1 evaluated now, 1 already in" in captured.out
    assert f"dropping the incomplete last line {len(lines)} (a write cut short)" in captured.err
    assert "dropping 1 incomplete point of this grid, evaluated again" in captured.err
    assert link.is_symlink() and link.resolve() == real  # the target was rewritten, not the link
    assert Results.load(real) == Results.load(done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "r.csv", "sub"]


# ----------------------------------------------------------------------------- item 14
def test_duplicated_rows_are_refused_then_deduplicated_on_request(files, tmp_path, capsys):
    model, data, grid, done = files
    text = done.read_text()
    header, body = text.split("\n", 1)
    dup = tmp_path / "dup.csv"
    dup.write_text(header + "\n" + body + body)  # what two writers appending alongside leave
    first = Results.load(done).rows[0]["point"]
    assert main(["show", str(dup)]) == 2
    err = _error_line(capsys)
    for part in (str(dup), f"{ROWS} (point, t_inference, repetition) keys appear more than once "
                 f"({ROWS} extra rows)", f"e.g. the ideal row of point {first} on line 2 and line {2 + ROWS}",
                 "the copies are identical", "extra repetitions", "--dedupe", 'duplicates="first"'):
        assert part in err, part
    with pytest.raises(ResultsFileError, match="appear more than once"):
        Results.load(dup)
    assert main(["show", str(done)]) == 0
    want = capsys.readouterr().out
    assert main(["show", str(dup), "--dedupe"]) == 0
    captured = capsys.readouterr()
    assert captured.out == want  # the intervals of the file without its copies
    assert captured.err.startswith(f"anasim: warning: {dup}: left out {ROWS} duplicated rows (kept the first")
    with pytest.warns(ResultsWarning, match=f"left out {ROWS} duplicated rows"):
        assert Results.load(dup, duplicates="first") == Results.load(done)
    # copies that differ are said to differ
    lines = text.splitlines(keepends=True)
    changed = lines[3].replace(",0.", ",0.9", 1)
    assert changed != lines[3]
    (tmp_path / "differ.csv").write_text("".join(lines) + changed)
    with pytest.raises(ResultsFileError) as info:
        Results.load(tmp_path / "differ.csv")
    msg = str(info.value)
    assert "1 (point, t_inference, repetition) key appears more than once (1 extra row)" in msg
    assert f"on line 4 and line {len(lines) + 1}" in msg and "the copies of 1 key differ" in msg
    with pytest.raises(Exception, match="duplicates must be 'error' or 'first'"):
        Results.load(done, duplicates="last")


def test_damaged_rows_are_refused_or_dropped_with_their_line_numbers(files, tmp_path, capsys):
    model, data, grid, done = files
    lines = done.read_text().splitlines(keepends=True)
    cells = lines[6].split(",")
    rep = lines[0].split(",").index("repetition")
    cells[rep] = "x"
    bad = lines[:3] + [",".join(lines[3].split(",")[:3]) + "\n"] + lines[4:6] + [",".join(cells)] + lines[7:]
    path = tmp_path / "bad.csv"
    path.write_text("".join(bad))
    assert main(["show", str(path)]) == 2
    err = _error_line(capsys)
    n = len(lines[0].split(","))
    for part in (str(path), "2 damaged rows", f"line 4: 3 cells where the header has {n}",
                 "line 7: repetition is 'x', not an integer", "--drop-damaged", 'damaged="drop"'):
        assert part in err, part
    assert main(["show", str(path), "--drop-damaged"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"anasim: warning: {path}: left out 2 damaged rows (line 4: 3 cells")
    assert "ideal (digital)" in captured.out or "forward.out_noise" in captured.out
    with pytest.warns(ResultsWarning, match="left out 2 damaged rows"):
        assert len(Results.load(path, damaged="drop")) == ROWS - 2
    # an incomplete last line (a killed sweep) is left out with a warning, not refused
    torn = tmp_path / "torn.csv"
    torn.write_text("".join(lines[:-1]) + lines[-1][:25])
    assert main(["show", str(torn)]) == 0
    assert f"left out the incomplete last line {len(lines)} (a write cut short" in capsys.readouterr().err
    with pytest.warns(ResultsWarning, match="incomplete last line"):
        assert len(Results.load(torn)) == ROWS - 1


def test_a_sweep_resuming_repairs_damage_and_says_so(files, tmp_path):
    model, data, grid, done = files
    lines = done.read_text().splitlines(keepends=True)
    out = tmp_path / "r.csv"
    # a damaged row of the second point, and the first point appended twice
    out.write_text("".join(lines[:7]) + lines[7][:20] + "\n" + "".join(lines[8:]) + "".join(lines[1:6]))
    said = []
    res = sweep(model, data, grid, out=out, progress=False, threads=1, log=said.append)
    assert res.meta["evaluated"] == 1 and res.meta["skipped"] == 1
    text = " ".join(said)
    assert "dropping 1 damaged line: line 8:" in text and "dropping 5 duplicated rows" in text
    assert "dropping 1 incomplete point of this grid, evaluated again" in text
    assert sorted(map(str, Results.load(out).table())) == sorted(map(str, Results.load(done).table()))
    # without a log the same is a warning
    out.write_text("".join(lines) + "".join(lines[1:3]))
    with pytest.warns(ResultsWarning, match="dropping 2 duplicated rows"):
        assert sweep(model, data, grid, out=out, progress=False, threads=1).meta["evaluated"] == 0
    assert Results.load(out) == Results.load(done)


BAD_FILES = [
    ("r.json", '{"rows": 5}', "'rows' is a number; it must be an array of row objects"),
    ("r.json", "[1, 2]", "holds an array, not an anasim results JSON file"),
    ("r.json", '"rows"', "holds a string, not an anasim results JSON file"),
    ("r.json", '{"columns": []}', "no 'rows'"),
    ("r.json", '{"rows": [1, {"point": 2}]}',
     "no 'kind', 't_inference', 'repetition' columns (its columns: point)"),
    ("r.json", '{"rows": [{"a": 1}]}', "not an anasim results table: no 'point', 'kind'"),
    ("r.json", '{"columns": 5, "rows": []}', "'columns' must be an array of column names"),
    ("r.json", '{"meta": [], "rows": []}', "'meta' is an array; it must be an object"),
    ("r.json", '{"format": "other/9", "rows": []}', "format 'other/9' is not 'anasim-results/1'"),
    ("r.json", "{not json", "not valid JSON"),
    ("r.jsonl", "[1]\n[2]\n",
     "none of its rows can be read (line 1: an array, not a JSON object; line 2: an array"),
    ("r.jsonl", '{"point": "p"}\n', "no 'kind', 't_inference', 'repetition' columns"),
    ("r.jsonl", '{"point": "p"\n', "line 1: not valid JSON"),
    ("r.csv", "", "the file is empty"),
    ("r.csv", "a,b\n1,2\n", "not an anasim results table: no 'point', 'kind', 't_inference', 'repetition'"),
    ("r.csv", "point,kind,t_inference,repetition\n", "no metric column"),
    ("r.csv", "point,kind,kind\n", "names column(s) 'kind' more than once"),
    ("r.csv", '"point,kind\n', "unreadable CSV header on line 1"),
]


def _doc_with(change) -> str:
    doc = json.loads(_results().to_json())
    change(doc)
    return json.dumps(doc)


WRONG_VALUES = [
    (lambda d: d["rows"][1].update(repetition="x"), "row 2: repetition is 'x', not an integer >= 0"),
    (lambda d: d["rows"][1].update(repetition=-1), "row 2: repetition is -1, not an integer >= 0"),
    (lambda d: d["rows"][2].update(t_inference="1h"), "row 3: t_inference is '1h', not seconds >= 0"),
    (lambda d: d["rows"][0].update(kind="digital"), "row 1: kind is 'digital', not 'ideal' or 'analog'"),
    (lambda d: d["rows"][0].update(t_inference=5), "row 1: an ideal row with t_inference 5"),
    (lambda d: d["rows"][3].update(top1="abc"), "row 4: top1 is 'abc', not a number"),
    (lambda d: d["rows"][3].update(top1=True), "row 4: top1 is True, not a number"),
    (lambda d: d["rows"][4].update(point=7), "row 5: point is 7, not a point id"),
    (lambda d: d["rows"][4].update(seed="0"), "row 5: seed is '0', not an integer"),
    (lambda d: d["rows"][4].update(model_sha256=1), "row 5: model_sha256 is 1, not text"),
    (lambda d: d["rows"].append([]), "row 6: an array, not a row object"),
    (lambda d: d["meta"].update(metrics="top1"), "meta 'metrics' must be a list of column names"),
    (lambda d: d["meta"].update(metrics=["top9"]),
     "meta names column(s) 'top9' that the table does not have"),
]


@pytest.mark.parametrize("name, text, msg",
                         BAD_FILES + [("r.json", _doc_with(c), m) for c, m in WRONG_VALUES])
def test_a_malformed_results_file_is_one_error_naming_it(tmp_path, capsys, name, text, msg):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ResultsFileError) as info:
        Results.load(path)
    assert str(path) in str(info.value) and msg in str(info.value), str(info.value)
    assert main(["show", str(path)]) == 2
    err = _error_line(capsys)
    assert str(path) in err and msg in err


def test_malformed_csv_cells_are_damaged_rows(tmp_path):
    res = _results()
    path = res.save(tmp_path / "r.csv")
    lines = path.read_text().splitlines(keepends=True)
    cols = lines[0].rstrip("\n").split(",")
    for col, value, msg in (("fold_batchnorm", "yes", "fold_batchnorm is 'yes', not true or false"),
                            ("seed", "0.5", "seed is '0.5', not an integer"),
                            ("t_inference", "soon", "t_inference is 'soon', not a number"),
                            ("top1", "high", "top1 is 'high', not a number")):
        cells = lines[2].rstrip("\n").split(",")
        cells[cols.index(col)] = value
        path.write_text(lines[0] + lines[1] + ",".join(cells) + "\n" + "".join(lines[3:]))
        with pytest.raises(ResultsFileError, match=f"1 damaged row \\(line 3: {msg}\\)"):
            Results.load(path)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            assert len(Results.load(path, damaged="drop")) == len(res) - 1
    path.write_text(lines[0] + '"unclosed,' + lines[1])
    with pytest.raises(ResultsFileError, match="line 2: unreadable CSV"):
        Results.load(path)
    # a line break inside a value never splits a row
    path.write_text(res.to_csv().replace("m.onnx", "m\u2028.onnx"))
    assert len(Results.load(path)) == len(res)


# ----------------------------------------------------------------------------- item 16
def test_resuming_with_other_settings_is_refused_before_any_evaluation(files, tmp_path, capsys, monkeypatch):
    model, data, grid, done = files
    out = _copy(done, tmp_path / "r.csv")
    before = out.read_bytes()
    other_model, _ = tiny_files(tmp_path, n=8, bn=True)
    _, other_data = tiny_files(tmp_path, n=24)
    file_rows = Results.load(done).rows
    sha = file_rows[0]["model_sha256"][:12]
    _no_evaluation(monkeypatch)
    cases = [
        (["--seed", "2"], ["seed: file 1, this run 2"]),
        (["--times", "0"], ["times: file [0 s, 1 min], this run [0 s]"]),
        (["--times", "60,0"], ["times: file [0 s, 1 min], this run [1 min, 0 s]"]),
        (["--repeats", "3"], ["repeats: file 2, this run 3"]),
        (["--metric", "top5"], ["metric: file top1, this run top5"]),
        (["--limit", "16"], ["limit: file none, this run 16", "n_samples: file 32, this run 16"]),
        (["--data", str(other_data)], ["data_sha256: file ", f"({data}), this run ", f"({other_data})",
                                       "n_samples: file 32, this run 24"]),
        (["--scale", "0.5"], ["preprocessing: file {", '"scale":0.5']),
    ]
    for extra, parts in cases:
        assert main(_sweep_args(model, data, grid, out, *extra)) == 2, extra
        err = _error_line(capsys)
        for part in [f"{out} holds the results of another run", "would mix the two", "Use another --out",
                     f"move {out} away to start over"] + parts:
            assert part in err, (extra, part, err)
        assert out.read_bytes() == before
    args = _sweep_args(other_model, data, grid, out)
    assert main(args) == 2
    err = _error_line(capsys)
    assert f"model_sha256: file {sha}… ({model}), this run " in err and f"({other_model})" in err
    assert "seed" not in err and "times" not in err  # only what differs
    with pytest.raises(ResultsFileError, match="seed: file 1, this run 3"):
        sweep(model, data, grid, out=out, seed=3, progress=False)
    assert out.read_bytes() == before
    # the same settings resume (nothing to evaluate), and another grid may add points
    assert main(_sweep_args(model, data, grid, out)[:-1]) == 0
    assert "0 evaluated now, 2 already in" in capsys.readouterr().out
    monkeypatch.undo()
    grown = tmp_path / "grown.toml"
    grown.write_text(GRID.replace("[0.0, 0.05]", "[0.1]"))
    assert sweep(model, data, grown, out=out, progress=False, threads=1).meta["evaluated"] == 1
    assert out.read_bytes().startswith(before)


def test_evaluate_never_appends_to_an_existing_out(files, tmp_path, capsys):
    model, data, grid, done = files
    out = _copy(done, tmp_path / "r.csv")
    assert main(["evaluate", str(model), "--data", str(data), "--times", "0", "--repeats", "1", "--seed", "5",
                 "--quiet", "--out", str(out)]) == 2
    assert "refusing to overwrite" in _error_line(capsys)
    assert out.read_bytes() == done.read_bytes()
