"""anasim.experiment.sensitivity and `anasim sensitivity`: per-layer points as one sweep."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.cli import main
from anasim.errors import ConfigError
from anasim.experiment import Results, ResultsFileError, Sensitivity, evaluate, sensitivity
from anasim.experiment.sensitivity import COLUMNS

NOISY = {"forward": {"inp_res": 126, "out_res": 254, "out_bound": 10.0, "out_noise": 0.05},
         "mapping": {"max_input_size": 64}}
"""Forward noise only (no device model): the same numbers at every t_inference."""
LAYERS = ["conv", "fc1", "fc2"]


def three_layer_model(path, seed=0):
    """Conv(1→4, 3×3) → Relu → Flatten → Gemm(256 → 16) → Relu → Gemm(16 → 10); N×1×8×8."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    inits = [numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((16, 256)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(16, np.float32), "b2"),
             numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.3).astype(np.float32), "w3"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b3")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["hr"], name="relu2"),
             helper.make_node("Gemm", ["hr", "w3", "b3"], ["logits"], name="fc2", transB=1)]
    m = helper.make_model(helper.make_graph(nodes, "three", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(m.SerializeToString())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sens")
    model = three_layer_model(folder / "three.onnx")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 8, 8)).astype(np.uint8)
    y = anasim.load(model)((x / 255.0).astype(np.float32)[:, None]).argmax(1)
    flip = rng.random(32) < 0.2
    y[flip] = rng.integers(0, 10, flip.sum())
    data = folder / "three.npz"
    np.savez(data, x=x, y=y.astype(np.int64))
    return model, data


KW = dict(times=[0, 3600], repeats=2, seed=3, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def noisy(files):
    model, data = files
    return sensitivity(model, data, NOISY, **KW)


def _key(r):
    return (r["kind"], r["t_inference"], r["repetition"])


def test_one_row_per_layer_mode_time_and_repetition(noisy):
    res = noisy.results
    assert res.params == COLUMNS and res.columns[1:6] == COLUMNS
    points = {}
    for r in res.rows:
        points.setdefault((r["layer"], r["mode"]), []).append(r)
    assert set(points) == {("*", "all")} | {(n, m) for n in LAYERS for m in ("only", "all-but")}
    for rows in points.values():  # the ideal row, then one per (repetition, t)
        assert sorted(map(_key, rows), key=str) == sorted(
            [("ideal", None, None)] + [("analog", t, r) for r in range(2) for t in (0.0, 3600.0)], key=str)
        assert len({r["point"] for r in rows}) == 1
    info = {r["layer"]: (r["layer_index"], r["tile_grid"], r["n_params"]) for r in res.rows}
    # max_input_size 64: fc1's 256 inputs take 4 tiles
    assert info == {"conv": (0, "1x1", 36), "fc1": (1, "4x1", 4096), "fc2": (2, "1x1", 160),
                    "*": (None, "6 tiles", 4292)}
    assert len({r["point"] for r in res.rows}) == 7
    cfgs = {(r["layer"], r["mode"]): r["config"] for r in res.rows}
    assert cfgs[("fc1", "only")]["layers"] == [{"match": ["conv", "fc2"], "digital": True}]
    assert cfgs[("fc1", "all-but")]["layers"] == [{"match": "fc1", "digital": True}]
    assert "layers" not in cfgs[("*", "all")]


def test_all_analog_point_is_a_plain_evaluate_bit_for_bit(files, noisy):
    model, data = files
    plain = evaluate(model, data, NOISY, **KW)
    base = [r for r in noisy.results.rows if r["mode"] == "all"]
    assert [{k: v for k, v in r.items() if k not in COLUMNS} for r in base] == plain.rows


def test_device_model_all_point_equals_evaluate(files):
    model, data = files
    kw = dict(times=[0, 86400], repeats=1, seed=5, batch_size=8, progress=False)
    s = sensitivity(model, data, "aihwkit", layers=["fc2"], modes=["all-but"], **kw)
    plain = evaluate(model, data, "aihwkit", **kw)
    base = [{k: v for k, v in r.items() if k not in COLUMNS} for r in s.results.rows if r["mode"] == "all"]
    assert base == plain.rows
    assert {(r["layer"], r["mode"]) for r in s.results.rows} == {("*", "all"), ("fc2", "all-but")}


def test_only_a_noise_free_layer_analog_equals_ideal(files):
    model, data = files
    cfg = dict(NOISY, layers=[{"match": "fc2", "forward": {"is_perfect": True}}])
    s = sensitivity(model, data, cfg, metric="logits_rel_error", modes="only", **KW)
    rows = [r for r in s.results.rows if r["layer"] == "fc2" and r["kind"] == "analog"]
    ideal = s.results.ideal("top1")
    assert len(rows) == 4 and all(r["top1"] == ideal for r in rows)
    assert all(r["logits_rel_error"] < 1e-5 for r in rows)
    others = [r for r in s.results.rows if r["layer"] in ("conv", "fc1") and r["kind"] == "analog"]
    assert all(r["logits_rel_error"] > 1e-3 for r in others)
    rank = s.ranking()  # by logits_rel_error: the noise-free layer costs (almost) nothing
    assert rank[-1]["layer"] == "fc2" and rank[-1]["score"] < 1e-5 < rank[0]["score"]
    assert all(t["gain"]["n"] == 0 for x in rank for t in x["times"])  # no all-but points


def _rows(values, ideal=0.9):
    """A hand-made sensitivity table: values[(layer, mode)] = {t: [per repetition]}."""
    rows = []
    for (layer, mode), per_t in values.items():
        point = f"{layer}-{mode}"
        cols = {"layer": layer, "layer_index": None if layer == "*" else "abc".index(layer), "mode": mode,
                "tile_grid": "1x1", "n_params": 10}
        rows.append({"point": point, **cols, "kind": "ideal", "t_inference": None, "repetition": None,
                     "top1": ideal})
        for t, vals in per_t.items():
            for rep, v in enumerate(vals):
                rows.append({"point": point, **cols, "kind": "analog", "t_inference": t, "repetition": rep,
                             "top1": v})
    return Results(rows, params=COLUMNS, metrics=["top1"])


def test_ranking_order_and_numbers_on_a_constructed_case():
    res = _rows({("*", "all"): {0.0: [0.70, 0.72], 60.0: [0.60, 0.62]},
                 ("a", "only"): {0.0: [0.88, 0.88], 60.0: [0.86, 0.86]},   # drop 2, 4 points
                 ("a", "all-but"): {0.0: [0.71, 0.73], 60.0: [0.61, 0.63]},  # gain 1, 1
                 ("b", "only"): {0.0: [0.80, 0.78], 60.0: [0.70, 0.68]},   # drop 11, 21
                 ("b", "all-but"): {0.0: [0.85, 0.87], 60.0: [0.80, 0.82]},  # gain 15, 20
                 ("c", "only"): {0.0: [0.85, 0.85], 60.0: [0.85, 0.85]},   # drop 5, 5
                 ("c", "all-but"): {0.0: [0.74, 0.74], 60.0: [0.70, 0.70]}})  # gain 3, 9
    s = Sensitivity(res)
    rank = s.ranking()
    assert [x["layer"] for x in rank] == ["b", "c", "a"] and [x["rank"] for x in rank] == [1, 2, 3]
    b = rank[0]
    assert b["score"] == pytest.approx((0.11 + 0.21) / 2)
    assert b["times"][0]["drop"]["mean"] == pytest.approx(0.11)
    assert b["times"][0]["drop"]["std"] == pytest.approx(np.std([0.10, 0.12], ddof=1))
    assert b["times"][1]["gain"]["mean"] == pytest.approx(0.20)
    assert b["times"][1]["gain"]["std"] == pytest.approx(0)
    assert b["times"][0]["all"]["mean"] == pytest.approx(0.71)
    assert [x["layer"] for x in s.ranking(by="all-but")] == ["b", "c", "a"]
    # by the gain, a layer that costs little alone but much among the others ranks first
    res2 = _rows({("*", "all"): {0.0: [0.70]}, ("a", "only"): {0.0: [0.89]}, ("a", "all-but"): {0.0: [0.80]},
                  ("b", "only"): {0.0: [0.80]}, ("b", "all-but"): {0.0: [0.72]}})
    s2 = Sensitivity(res2)
    assert [x["layer"] for x in s2.ranking()] == ["b", "a"]
    assert [x["layer"] for x in s2.ranking(by="all-but")] == ["a", "b"]
    text = s.table()
    lines = text.splitlines()
    assert "ideal (digital) 90.00%" in lines[0] and "all analog 0 s 71.00 ± 1.41" in lines[0]
    assert "drop: only this layer analog" in lines[1] and "gain: all but this layer analog" in lines[1]
    body = [ln.split()[1] for ln in lines[4:7]]
    assert body == ["b", "c", "a"]
    assert "+11.00 ± 1.41" in lines[4] and "+20.00 ± 0.00" in lines[4]
    with pytest.raises(ConfigError, match="top5"):
        s.ranking("top5")
    with pytest.raises(ConfigError, match="by must be"):
        s.ranking(by="sideways")
    with pytest.raises(ConfigError, match="Not a sensitivity"):
        Sensitivity(Results(res.rows, params=[], metrics=["top1"]))


def test_lower_is_better_metric_turns_the_signs():
    rows = _rows({("*", "all"): {0.0: [0.30]}, ("a", "only"): {0.0: [0.10]}, ("a", "all-but"): {0.0: [0.25]},
                  ("b", "only"): {0.0: [0.20]}, ("b", "all-but"): {0.0: [0.05]}}, ideal=0.0).rows
    for r in rows:
        r["logits_rel_error"] = r.pop("top1")
    s = Sensitivity(Results(rows, params=COLUMNS, metrics=["logits_rel_error"]))
    rank = s.ranking()
    assert [x["layer"] for x in rank] == ["b", "a"]
    assert rank[0]["times"][0]["drop"]["mean"] == pytest.approx(0.20)   # 0.20 worse than ideal
    assert rank[0]["times"][0]["gain"]["mean"] == pytest.approx(0.25)   # 0.30 -> 0.05 without it


def test_resume_skips_finished_points(files, tmp_path):
    model, data = files
    out = tmp_path / "sens.csv"
    lines = []
    part = sensitivity(model, data, NOISY, layers=["fc*"], out=out, log=lines.append, **KW)
    assert part.results.meta["evaluated"] == 5 and [x["layer"] for x in part.layers()] == ["fc1", "fc2"]
    full = sensitivity(model, data, NOISY, out=out, log=lines.append, **KW)
    assert full.results.meta["evaluated"] == 2 and full.results.meta["skipped"] == 5
    assert any("5 of 7 point(s) already in" in s for s in lines)
    again = sensitivity(model, data, NOISY, out=out, log=lines.append, **KW)
    assert again.results.meta["evaluated"] == 0 and again.results.meta["skipped"] == 7
    assert again.results == full.results
    loaded = Sensitivity(Results.load(out))
    assert len(loaded.results) == 7 * 5 and loaded.table() == full.table()
    assert [x["layer"] for x in loaded.ranking()] == [x["layer"] for x in full.ranking()]
    # resuming into the file with another seed is refused before any evaluation
    with pytest.raises(ResultsFileError, match="seed"):
        sensitivity(model, data, NOISY, out=out, **dict(KW, seed=4))


def test_bad_arguments(files):
    model, data = files
    with pytest.raises(ConfigError, match="matches no analog layer"):
        sensitivity(model, data, NOISY, layers=["fc3"], **KW)
    with pytest.raises(ConfigError, match="modes"):
        sensitivity(model, data, NOISY, modes=["sideways"], **KW)
    digital = dict(NOISY, layers=[{"match": "*", "digital": True}])
    with pytest.raises(ConfigError, match="no analog layer"):
        sensitivity(model, data, digital, **KW)


def test_layers_kept_digital_by_the_config_stay_digital(files):
    model, data = files
    cfg = dict(NOISY, layers=[{"match": "conv", "digital": True}])
    s = sensitivity(model, data, cfg, times=[0], repeats=1, seed=0, progress=False)
    assert [(x["layer"], x["layer_index"]) for x in s.layers()] == [("fc1", 1), ("fc2", 2)]  # index among all Conv/Gemm/MatMul layers
    cfgs = {(r["layer"], r["mode"]): r["config"]["layers"] for r in s.results.rows if r["mode"] != "all"}
    assert cfgs[("fc1", "only")] == [{"match": "conv", "digital": True}, {"match": ["fc2"], "digital": True}]


def test_cli_end_to_end(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, data = files
    out, png = tmp_path / "s.csv", tmp_path / "s.png"
    args = ["sensitivity", str(model), "--data", str(data), "--preprocess", "none", "--scale", "1/255",
            "--set", "forward.out_noise=0.05", "--set", "mapping.max_input_size=64", "--times", "0,1h",
            "--repeats", "2", "--seed", "3", "--batch-size", "8", "-q", "--out", str(out), "--plot", str(png)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Layer sensitivity" in text and all(n in text for n in LAYERS)
    res = Results.load(out)
    assert res.params == COLUMNS and len(res) == 7 * 5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the plot exists: refused before any work; --out and --plot the same file: refused
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main(args[:-4] + ["--out", str(out), "--plot", str(out)]) == 2
    assert "named twice" in capsys.readouterr().err
    # rerun with --overwrite: every point resumed from the file, the same table
    assert main(args + ["--overwrite"]) == 0
    assert capsys.readouterr().out == text
    assert main(["sensitivity", str(model), "--data", str(data), "--layer", "nope", "-q"]) == 2
    assert "matches no analog layer" in capsys.readouterr().err


def test_worker_processes_give_the_same_table(files, noisy):
    model, data = files
    par = sensitivity(model, data, NOISY, workers=2, threads=2, **KW)
    assert par.results == noisy.results and par.table() == noisy.table()
