"""anasim.snapshot: HDF5 save/load of the programmed and drifted chip state."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.errors import AnasimError
from anasim.snapshot import (SnapshotError, escape_name, load_snapshot, open_snapshot, save_snapshot,
                             unescape_name)

PCM = {
    "noise_model": {"type": "pcm"},
    "drift_compensation": {"type": "global"},
    "forward": {"out_noise": 0.02, "inp_res": 254, "out_res": 254, "out_bound": 10},
    # small tiles so that every layer is split into several tiles
    "mapping": {"max_input_size": 32, "max_output_size": 4},
}
SEED = 5


def _model(weight_seed=0):
    """Conv → Relu → grouped Conv → Reshape → Gemm; node names with '/' (escaped in HDF5)."""
    rng = np.random.default_rng(weight_seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    inits = [numpy_helper.from_array((rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((8, 2, 3, 3)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal((5, 8 * 36)) * 0.1).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b3"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="block/conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="block/gconv", pads=[1, 1, 1, 1], group=4),
             helper.make_node("Reshape", ["c2", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "snapnet", [x], [y], inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.fixture(scope="module")
def graph():
    return _model()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(7).standard_normal((6, 4, 6, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(graph, x, tmp_path_factory):
    """A simulator programmed for repetition 2 and drifted to 1 h, its outputs and its snapshot."""
    sim = anasim.analog(graph, PCM, seed=SEED).program(2).drift(3600.0)
    path = tmp_path_factory.mktemp("snap") / "chip.h5"
    save_snapshot(sim, path)
    return sim, sim(x), path


def _fresh(graph, config=PCM, seed=SEED):
    return anasim.analog(graph, config, seed=seed)  # programmed for repetition 0, t = 0


def _state(sim):
    return ([t.weight.copy() for layer in sim.layers for m in layer.matrices for t in m.tiles],
            sim.repetition, sim.t_inference)


# --------------------------------------------------------------------------- round trip


def test_load_reproduces_outputs_and_drifts_on(graph, x, saved):
    sim, ref, path = saved
    assert [layer.tile_grid for layer in sim.layers] == [(1, 2, 2), (4, 1, 1), (1, 9, 2)]
    sim2 = _fresh(graph)
    assert not np.array_equal(sim2(x), ref)
    assert load_snapshot(sim2, path) is sim2
    assert (sim2.repetition, sim2.t_inference) == (2, 3600.0)
    np.testing.assert_array_equal(sim2(x), ref)
    np.testing.assert_array_equal(sim2(x[2:5], sample_offset=2), ref[2:5])
    # the device state came back: drifting on gives what the original chip gives
    out2 = sim2.drift(86400.0)(x)
    out1 = sim.drift(86400.0)(x)
    np.testing.assert_array_equal(out2, out1)
    np.testing.assert_array_equal(sim2.drift(0.0)(x), sim.drift(0.0)(x))
    sim.drift(3600.0)  # back to the fixture's state for the other tests
    np.testing.assert_array_equal(sim(x), ref)


def test_include_programmed_saves_time_zero(graph, x, saved, tmp_path):
    sim, ref, _ = saved
    path = save_snapshot(sim, tmp_path / "prog.h5", include="programmed")
    assert open_snapshot(path)["t_inference"] == 0.0
    sim2 = load_snapshot(_fresh(graph), path)
    assert (sim2.repetition, sim2.t_inference) == (2, 0.0)
    np.testing.assert_array_equal(sim2(x), _fresh(graph).program(2)(x))
    np.testing.assert_array_equal(sim2.drift(3600.0)(x), ref)
    path = save_snapshot(sim, tmp_path / "gz.h5", compression="gzip")
    with h5py.File(path, "r") as f:
        assert f["layers/fc/group0/tile0/state/conductances"].compression == "gzip"
    assert _same_chip(load_snapshot(_fresh(graph), path), sim)
    with pytest.raises(ValueError, match="include"):
        save_snapshot(sim, tmp_path / "bad.h5", include="everything")


def test_ideal_layers_without_device_state(graph, x, tmp_path):
    cfg = {"forward": {"out_noise": 0.03, "inp_res": 254, "out_res": 254, "out_bound": 10}}
    sim = anasim.analog(graph, cfg, seed=1)
    path = save_snapshot(sim, tmp_path / "ideal.h5", compression="gzip")
    assert not any(layer["device_state"] for layer in open_snapshot(path)["layers"])
    np.testing.assert_array_equal(load_snapshot(anasim.analog(graph, cfg, seed=1), path)(x), sim(x))


def test_file_layout_and_metadata(graph, saved):
    sim, _, path = saved
    meta = open_snapshot(path)
    assert meta["format_version"] == 1 and meta["anasim_version"] == anasim.__version__
    assert meta["model_sha256"] == graph.ir.sha256
    assert (meta["seed"], meta["repetition"], meta["t_inference"]) == (SEED, 2, 3600.0)
    assert meta["config"] == json.loads(sim.config.to_json())
    assert meta["created"].endswith("+00:00")
    assert [layer["name"] for layer in meta["layers"]] == ["block/conv", "block/gconv", "fc"]
    assert meta["layers"][1]["n_groups"] == 4 and meta["layers"][2]["n_tiles"] == 18
    assert meta["layers"][0]["tile_shapes"] == sim.layers[0].tile_shapes
    with h5py.File(path, "r") as f:
        assert sorted(f["layers"]) == ["block%2Fconv", "block%2Fgconv", "fc"]
        tile = f["layers/block%2Fgconv/group3/tile0"]
        assert tile.parent.parent.attrs["name"] == "block/gconv".encode()  # fixed-length UTF-8
        assert {"weight", "mapping_scale", "post_scale", "state"} <= set(tile)
        assert {"target", "conductances", "drift_param", "converter_params"} <= set(tile["state"])
        assert tile["weight"].dtype == np.float32 and tile["weight"].shape == (2, 18)
        np.testing.assert_array_equal(tile["weight"][()], sim.layers[1].matrices[3].tiles[0].weight)
        np.testing.assert_array_equal(tile["state/conductances"][()],
                                      sim.layers[1].states[(3, 0)].conductances)


def test_no_pickle_and_every_dataset_checksummed(saved):
    _, _, path = saved
    datasets = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert len(datasets) > 100
        for ds in datasets:
            assert ds.dtype.kind in "fiub" or (ds.dtype.kind == "S" and h5py.check_string_dtype(ds.dtype)
                                              and h5py.check_string_dtype(ds.dtype).length), ds.name
            assert ds.fletcher32 and ds.chunks is not None, ds.name
        for obj in [f] + [f[n] for n in _groups(f)]:
            for value in obj.attrs.values():
                assert not (isinstance(value, np.ndarray) and value.dtype.kind == "O"), obj.name


def _groups(f):
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Group) else None)
    return names


def test_name_escaping_round_trips():
    for name in ["fc", "a/b/c", "%2F", ".", "..", ".x/y", "", "50%", "é/ü", "%00"]:
        esc = escape_name(name)
        assert "/" not in esc and esc not in ("", ".", "..") and not esc.startswith(".")
        assert unescape_name(esc) == name
    assert len({escape_name(n) for n in ["a/b", "a%2Fb", "a%252Fb"]}) == 3


# --------------------------------------------------------------------------- mismatches


def test_other_model_names_the_hashes(saved):
    _, _, path = saved
    other = _model(weight_seed=1)
    with pytest.raises(SnapshotError, match="SHA-256") as info:
        load_snapshot(_fresh(other), path)
    msg = str(info.value)
    assert open_snapshot(path)["model_sha256"] in msg and other.ir.sha256 in msg


def test_other_config_names_the_key(graph, x, saved):
    _, _, path = saved
    cfg = dict(PCM, forward=dict(PCM["forward"], out_noise=0.06))
    sim2 = _fresh(graph, cfg)
    before = _state(sim2)
    with pytest.raises(SnapshotError, match=r"forward\.out_noise: snapshot 0\.02, simulator 0\.06") as info:
        load_snapshot(sim2, path)
    assert "inp_res" not in str(info.value)  # only the keys that differ
    after = _state(sim2)  # a refused snapshot leaves the simulator as it was
    assert before[1:] == after[1:] and all(np.array_equal(a, b) for a, b in zip(before[0], after[0]))
    cfg = {k: v for k, v in PCM.items() if k != "drift_compensation"}
    with pytest.raises(SnapshotError,
                       match=r"drift_compensation\.type: snapshot \"global\", simulator \(absent\)"):
        load_snapshot(_fresh(graph, cfg), path)


def test_other_seed_is_refused(graph, saved):
    _, _, path = saved
    with pytest.raises(SnapshotError, match=f"seed: snapshot {SEED}, simulator 0"):
        load_snapshot(_fresh(graph, seed=0), path)


def test_missing_and_extra_layer_named(graph, saved, tmp_path):
    _, _, path = saved
    bad = tmp_path / "renamed.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "r+") as f:
        f["layers"].move("fc", "fc2")
        f["layers/fc2"].attrs["name"] = "fc2"
    with pytest.raises(SnapshotError, match=r"\['fc'\].*missing from the snapshot.*\['fc2'\]"):
        load_snapshot(_fresh(graph), bad)


def test_tile_shape_mismatch_named(graph, saved, tmp_path):
    _, _, path = saved
    bad = tmp_path / "tiles.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "r+") as f:
        f["layers/fc/group0/tile1"].attrs["out_stop"] = 6
    with pytest.raises(SnapshotError, match=r"layer 'fc', group 0, tile 1: covers"):
        load_snapshot(_fresh(graph), bad)


# --------------------------------------------------------------------------- damaged files


def test_truncated_file(graph, saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 64):
        bad = tmp_path / f"cut{cut}.h5"
        bad.write_bytes(data[:cut])
        with pytest.raises(SnapshotError, match=str(bad.name)):
            load_snapshot(_fresh(graph), bad)
        with pytest.raises(SnapshotError):
            open_snapshot(bad)


def test_flipped_byte_in_data_is_caught_by_checksum(graph, saved, tmp_path):
    _, _, path = saved
    bad = tmp_path / "flipped.h5"
    shutil.copy(path, bad)
    name = "/layers/block%2Fgconv/group2/tile0/state/conductances"
    with h5py.File(bad, "r") as f:
        ds = f[name]
        info = ds.id.get_chunk_info(0)  # where the (single) chunk's bytes lie in the file
        assert ds.id.get_offset() is None  # chunked (fletcher32 needs it): no contiguous offset
        offset, size = info.byte_offset, info.size
    assert size > 8
    raw = bytearray(bad.read_bytes())
    raw[offset + size // 2] ^= 0x10
    bad.write_bytes(bytes(raw))
    sim2 = _fresh(graph)
    before = _state(sim2)
    with pytest.raises(SnapshotError) as info:
        load_snapshot(sim2, bad)
    msg = str(info.value)
    assert str(bad) in msg and name in msg and "checksum" in msg
    assert isinstance(info.value, AnasimError) and isinstance(info.value, ValueError)
    assert _state(sim2)[1:] == before[1:]
    open_snapshot(bad)  # metadata only: still readable
    with pytest.raises(SnapshotError, match=name):
        open_snapshot(bad, verify=True)


def _same_chip(a, b):
    if (a.repetition, a.t_inference) != (b.repetition, b.t_inference):
        return False
    for la, lb in zip(a.layers, b.layers):
        for ma, mb in zip(la.matrices, lb.matrices):
            for ta, tb in zip(ma.tiles, mb.tiles):
                if not all(np.array_equal(getattr(ta, k), getattr(tb, k))
                           for k in ("weight", "mapping_scale", "post_scale")):
                    return False
        if la.states.keys() != lb.states.keys():
            return False
        for key, sa in la.states.items():
            xa, xb = sa.to_arrays(), lb.states[key].to_arrays()
            if xa.keys() != xb.keys() or not all(
                    np.array_equal(xa[k], xb[k]) and xa[k].dtype == xb[k].dtype for k in xa):
                return False
    return True


def test_random_byte_flips_are_caught_or_harmless(graph, saved, tmp_path):
    """Metadata has checksums too (HDF5 1.10 file format), strings are fixed-length
    attributes in the checksummed object headers: a flipped byte anywhere is either an
    error or lands in unused space. Never a silently different chip."""
    sim, _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "flip.h5"
    sim2 = _fresh(graph)
    caught = 0
    for off in np.random.default_rng(3).integers(0, len(data), 30):
        raw = bytearray(data)
        raw[off] ^= 0x04
        bad.write_bytes(bytes(raw))
        try:
            load_snapshot(sim2, bad)
        except SnapshotError:
            caught += 1
            continue
        assert _same_chip(sim2, sim), f"byte {off} flipped: loaded a different chip"
    assert caught >= 20


def test_not_a_snapshot(graph, tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"definitely not HDF5\n" * 100)
    with pytest.raises(SnapshotError, match="not an HDF5 file"):
        load_snapshot(_fresh(graph), junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(SnapshotError, match="not an anasim snapshot"):
        open_snapshot(other)
    with pytest.raises(FileNotFoundError):
        load_snapshot(_fresh(graph), tmp_path / "absent.h5")


# --------------------------------------------------------------------------- writing


def test_overwrite_refused_and_atomic(graph, saved, tmp_path, monkeypatch):
    sim, _, _ = saved
    path = tmp_path / "chip.h5"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_snapshot(sim, path)
    assert path.read_bytes() == b"keep me"
    save_snapshot(sim, path, overwrite=True)
    assert open_snapshot(path)["repetition"] == 2
    assert sorted(os.listdir(tmp_path)) == ["chip.h5"]  # no temporary files left behind

    import anasim.snapshot as snap

    def crash(sim, tmp, include, compression):
        with h5py.File(tmp, "w") as f:
            f["half"] = np.zeros(10)
        raise KeyboardInterrupt  # e.g. the user stops the program mid-write

    monkeypatch.setattr(snap, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(sim, tmp_path / "new.h5")
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(sim, path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["chip.h5"]  # neither a partial file nor a clobbered one
    assert open_snapshot(path)["repetition"] == 2
