"""Writing results and plots: one rule for every writer (anasim.experiment.results/storage/plot).

* ``Results.to_csv()`` / ``to_json()`` without a path return the text and write nothing;
  with a path they write exactly that path (returned as a Path), holding that same text.
* The path is never changed: an extension that does not match the format is refused with
  an anasim error naming the choices (``save`` and ``plot`` pick the format by extension).
* An existing file is refused unless ``overwrite=True`` (the default is False everywhere),
  with an error naming the file and ``overwrite=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anasim.errors import AnasimError, ConfigError
from anasim.experiment import Results, ResultsFileError
from anasim.experiment import storage
from anasim.experiment.storage import FORMAT_TAG, atomic_write, write_table


def _results() -> Results:
    tail = dict(n_samples=8, seed=0, fold_batchnorm=False, model="m.onnx", model_sha256="a" * 64,
                data="d.npz", data_sha256="b" * 64, preprocessing={"scale": 1 / 255}, limit=None,
                config={"forward": {"out_noise": 0.02}}, anasim_version="0")
    rows = [dict(point="0123456789abcdef", kind="ideal", t_inference=None, repetition=None,
                 top1=0.875, top5=1.0, **tail)]
    for rep in range(2):
        for t in (0.0, 3600.0):
            rows.append(dict(point="0123456789abcdef", kind="analog", t_inference=t, repetition=rep,
                             top1=0.75 - 0.125 * rep - t / 36000, top5=1.0,
                             logits_rel_error=0.01 * (1 + rep) + t / 3.6e6, **tail))
    rows[0]["logits_rel_error"] = 0.0
    return Results(rows, metrics=["top1", "top5"], meta={"times": [0.0, 3600.0], "repeats": 2})


@pytest.fixture
def res():
    return _results()


def _no_temporaries(folder: Path):
    assert not list(folder.glob(".*tmp")), list(folder.iterdir())


def test_to_csv_and_to_json_return_text_without_a_path(res, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv_text = res.to_csv()
    json_text = res.to_json()
    assert isinstance(csv_text, str) and isinstance(json_text, str)
    assert list(tmp_path.iterdir()) == []  # nothing written
    lines = csv_text.splitlines()
    assert lines[0].split(",")[:6] == ["point", "kind", "t_inference", "repetition", "top1", "top5"]
    assert len(lines) == 1 + len(res)
    doc = json.loads(json_text)
    assert doc["format"] == FORMAT_TAG and doc["columns"] == res.columns
    assert doc["meta"]["repeats"] == 2 and doc["meta"]["metrics"] == ["top1", "top5"]
    assert len(doc["rows"]) == len(res)


def test_to_csv_and_to_json_with_a_path_write_exactly_it(res, tmp_path):
    for method, name in (("to_csv", "r.csv"), ("to_json", "r.json"), ("to_csv", "UPPER.CSV")):
        path = tmp_path / name
        got = getattr(res, method)(path)
        assert isinstance(got, Path) and got == path
        assert path.read_text(encoding="utf-8") == getattr(res, method)()  # the text it returns
        assert Results.load(path) == res
        got = getattr(res, method)(str(path), overwrite=True)  # str paths too
        assert got == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UPPER.CSV", "r.csv", "r.json"]
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("method, name", [("to_csv", "r.tsv"), ("to_csv", "r.json"), ("to_csv", "r"),
                                          ("to_json", "r.csv"), ("to_json", "r.txt"), ("to_json", "r.jsonl")])
def test_a_mismatched_extension_is_refused_not_changed(res, tmp_path, method, name):
    fmt = method[3:]
    with pytest.raises(ResultsFileError) as info:
        getattr(res, method)(tmp_path / name)
    msg = str(info.value)
    assert isinstance(info.value, AnasimError) and isinstance(info.value, ValueError)
    assert name in msg and f".{fmt} files" in msg and "save(path) for .csv, .json or .jsonl" in msg
    assert list(tmp_path.iterdir()) == []  # neither the given name nor a renamed one


def test_save_picks_the_format_by_extension_and_refuses_others(res, tmp_path):
    for name in ("r.csv", "r.json", "r.jsonl"):
        assert res.save(tmp_path / name) == tmp_path / name
        assert Results.load(tmp_path / name) == res
    for name in ("r.tsv", "r.txt", "r"):
        with pytest.raises(ResultsFileError, match=r"use \.csv, \.json or \.jsonl"):
            res.save(tmp_path / name)
        assert not (tmp_path / name).exists()
    with pytest.raises(ResultsFileError, match="folder .* does not exist"):
        res.save(tmp_path / "missing" / "r.csv")


@pytest.mark.parametrize("write", [
    lambda r, p, **kw: r.save(p.with_suffix(".jsonl"), **kw),
    lambda r, p, **kw: r.to_csv(p.with_suffix(".csv"), **kw),
    lambda r, p, **kw: r.to_json(p.with_suffix(".json"), **kw),
    lambda r, p, **kw: write_table(p.with_suffix(".csv"), r.columns, r.rows, **kw),
    lambda r, p, **kw: atomic_write(p.with_suffix(".txt"), "new\n", **kw),
], ids=["save", "to_csv", "to_json", "write_table", "atomic_write"])
def test_existing_files_are_refused_unless_overwrite(res, tmp_path, write):
    path = write(res, tmp_path / "out")
    path.write_text("keep me\n")
    with pytest.raises(ResultsFileError) as info:
        write(res, tmp_path / "out")
    assert str(path) in str(info.value) and "overwrite=True" in str(info.value)
    assert path.read_text() == "keep me\n"
    assert write(res, tmp_path / "out", overwrite=True) == path
    assert path.read_text() != "keep me\n"
    _no_temporaries(tmp_path)


def test_atomic_write_text_and_bytes(tmp_path):
    assert atomic_write(tmp_path / "a.txt", "é\n") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_bytes() == "é\n".encode("utf-8")
    assert atomic_write(tmp_path / "b.bin", b"\x00\x89PNG") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x89PNG"
    _no_temporaries(tmp_path)


def test_a_file_appearing_after_the_check_is_still_not_overwritten(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    path.write_text("someone else's\n")
    monkeypatch.setattr(storage, "check_writable", lambda p, overwrite=False: tmp_path)  # the check missed it
    with pytest.raises(ResultsFileError, match="refusing to overwrite"):
        atomic_write(path, "mine\n")
    assert path.read_text() == "someone else's\n"
    _no_temporaries(tmp_path)


def test_plot_returns_the_figure_and_writes_only_the_given_path(res, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    assert isinstance(res.plot(), Figure)
    assert list(tmp_path.iterdir()) == []
    for name, magic in (("acc.png", b"\x89PNG"), ("acc.PDF", b"%PDF"), ("acc.svg", b"<?xml")):
        fig = res.plot(tmp_path / name)
        assert isinstance(fig, Figure)
        assert (tmp_path / name).read_bytes().startswith(magic), name
    assert res.plot(tmp_path / "noext") is not None  # no extension: PNG, at exactly that path
    assert (tmp_path / "noext").read_bytes()[:4] == b"\x89PNG"
    _no_temporaries(tmp_path)
    assert res.plot().axes[0].get_ylabel() == "top-1 accuracy (%)"
    err = Results(res.rows, metrics=["logits_rel_error", "top1", "top5"])
    assert err.plot().axes[0].get_ylabel() == "relative output error, lower is better"


def test_to_pandas_or_a_clear_error(res):
    try:
        import pandas  # noqa: F401  (not in any extra: both outcomes are checked)
    except ImportError:
        with pytest.raises(ConfigError, match="pip install pandas"):
            res.to_pandas()
        return
    df = res.to_pandas()
    assert list(df.columns) == res.columns and len(df) == len(res)


def test_plot_refuses_existing_files_and_unknown_extensions(res, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "acc.png"
    path.write_bytes(b"old")
    with pytest.raises(ResultsFileError) as info:
        res.plot(path)
    assert str(path) in str(info.value) and "overwrite=True" in str(info.value)
    assert path.read_bytes() == b"old"
    res.plot(path, overwrite=True)
    assert path.read_bytes()[:4] == b"\x89PNG"
    for name in ("acc.xyz", "acc.csv"):
        with pytest.raises(ResultsFileError) as info:
            res.plot(tmp_path / name)
        msg = str(info.value)
        assert name in msg and ".png" in msg and ".pdf" in msg and ".svg" in msg
        assert not (tmp_path / name).exists()
    _no_temporaries(tmp_path)


def test_cli_refuses_a_bad_plot_extension_before_evaluating(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from anasim.cli import main
    from test_experiment_evaluate import tiny_files

    model, data = tiny_files(tmp_path, n=8)
    out = tmp_path / "r.csv"
    rc = main(["evaluate", str(model), "--data", str(data), "--quiet", "--out", str(out),
               "--plot", str(tmp_path / "acc.xyz")])
    err = capsys.readouterr().err
    assert rc == 2 and "acc.xyz" in err and ".png" in err
    assert not out.exists()  # refused before any work or any file
    res = _results()
    res.save(out)
    (tmp_path / "old.png").write_bytes(b"old")
    assert main(["show", str(out), "--plot", str(tmp_path / "old.png")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "old.png").read_bytes() == b"old"
    assert main(["show", str(out), "--plot", str(tmp_path / "old.png"), "--overwrite"]) == 0
    assert (tmp_path / "old.png").read_bytes()[:4] == b"\x89PNG"
