"""Save and restore the programmed (and drifted) state of an analog simulator (HDF5).

A plain serializer: the arrays are the simulator's :meth:`~anasim.analog.simulator.AnalogSimulator.state_dict`
(layout in :mod:`anasim.analog.state`), written with checksums and atomically, and read
back through :meth:`~anasim.analog.simulator.AnalogSimulator.load_state_dict` after the
file, the model, the configuration, the seed and the tile layout are checked.

>>> sim = anasim.analog(graph, config, seed=0).program(2).drift(3600.0)
>>> anasim.snapshot.save_snapshot(sim, "chip.h5")
>>> sim2 = anasim.analog(graph, config, seed=0)
>>> anasim.snapshot.load_snapshot(sim2, "chip.h5")     # sim2(x) == sim(x), bit for bit
>>> sim2.drift(86400.0)                                 # drifts on from the saved devices
>>> anasim.snapshot.open_snapshot("chip.h5")["t_inference"]   # metadata only
3600.0

File layout (format version 1)::

    /                         attrs: format = "anasim-snapshot", format_version, anasim_version,
                              model_sha256, model_name, config_json, seed, repetition,
                              t_inference, include, created (ISO 8601, UTC), n_layers
    /layers/<escaped name>    one group per analog layer; attrs: name (the ONNX node name),
                              op_type, index, weight_shape, n_groups
      group<g>/               one per convolution group (a single one for Gemm/MatMul)
        tile<k>/              one per physical tile; attrs: index, in_start, in_stop,
                              out_start, out_stop, has_state
          weight              (n_out, n_in) float32: the effective weights the MVM uses
          mapping_scale       (n_out,) float32: digital factor from weight scaling ω
          post_scale          (n_out,) float32: digital factor of drift compensation
          state/              only for tiles programmed by a device model
            target            (n_slices, n_out, n_in) float32 µS
            conductances      (n_slices, n_out, n_in) float32 µS, as programmed (t = 0)
            drift_param       same shape, float32 (ν for PCM), if the model has one
            stuck             same shape, int8, if device faults are configured
            converter_params/<key>   the converter's arrays (e.g. scale)

Layer names are escaped for HDF5 (``%`` → ``%25``, ``/`` → ``%2F``, a leading ``.`` →
``%2E``, the empty name → ``%00``); the real name is the group's ``name`` attribute.

Integrity: every dataset is chunked and carries the fletcher32 checksum, so a flipped
bit in the data is detected on reading; the file is written in the HDF5 1.10 format
(``libver=("v110", "latest")``), whose metadata (object headers, B-trees) is
checksummed too, and strings are fixed-length UTF-8 attributes kept in those object
headers (variable-length strings would sit unchecked in the global heap). 0-d arrays
are stored with shape (1,) and the attribute ``scalar = 1`` (HDF5 cannot chunk a scalar
dataspace). No dataset has an object dtype; nothing is pickled.

Writing goes to a temporary file in the target folder that is renamed into place once
complete, so a crash never leaves a partial snapshot under the final name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .analog.state import ADC_ARRAYS, STATE, TILE_ARRAYS, escape_name, tile_prefix, unescape_name
from .analog.state import BATCHNORM, CALIBRATION_SAMPLES, calibration_prefix
from .errors import AnasimError, ConfigError, InputError
from .version import __version__

__all__ = ["SnapshotError", "save_snapshot", "load_snapshot", "open_snapshot", "FORMAT_VERSION"]

FORMAT = "anasim-snapshot"
FORMAT_VERSION = 1
INCLUDE = ("drifted", "programmed")


class SnapshotError(AnasimError, ValueError):
    """A snapshot cannot be loaded: damaged file, or a model / configuration / layer mismatch.

    The message names the file and what differs (or which dataset is damaged).
    """


# --------------------------------------------------------------------------- names


# --------------------------------------------------------------------------- saving


def save_snapshot(sim, path, *, overwrite: bool = False, include: str = "drifted",
                  compression: str | None = None) -> Path:
    """Write the simulator's chip state to an HDF5 file; returns the path.

    Parameters
    ----------
    sim : AnalogSimulator
    path : str or Path of the file to write.
    overwrite : bool, default False. An existing file is refused (FileExistsError)
        unless True. A directory is refused (InputError); a missing folder raises
        FileNotFoundError.
    include : "drifted" (default) or "programmed".
        "drifted": the tiles as they are now, at ``sim.t_inference`` (effective weights
        and drift-compensation scales), plus the programmed device state.
        "programmed": the state right after programming (t_inference = 0): weights
        converted back from the programmed conductances, post scales 1.
        Either way the device state is saved, so the loaded simulator can drift to any t.
    compression : None (default) or "gzip" (with the shuffle filter; about 25 % smaller
        files for device conductances, slower to write). Readable by any HDF5 tool.
    """
    if include not in INCLUDE:
        raise InputError(f"include must be one of {list(INCLUDE)}; got {include!r}.")
    if compression not in (None, "gzip"):
        raise InputError(f"compression must be None or 'gzip'; got {compression!r}.")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give the snapshot a file name, e.g. {path / 'chip.h5'}.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"Folder {folder} of snapshot {path.name!r} does not exist.")
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never clobber; 0o666 so the umask decides the final permissions.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        _write(sim, tmp, include, compression)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, path, overwrite)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return path


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished temporary file to ``path`` atomically."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path appeared meanwhile: no clobbering
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.") from None
    except OSError:  # file system without hard links
        if path.exists():
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(sim, tmp: Path, include: str, compression: str | None = None) -> None:
    """The simulator's :meth:`state_dict` as HDF5, with the layer and tile layout as attributes."""
    import h5py

    state = sim.state_dict(include)
    with h5py.File(tmp, "w", libver=("v110", "latest")) as f:
        a = f.attrs
        _text(a, "format", FORMAT)
        a["format_version"] = np.int64(FORMAT_VERSION)
        _text(a, "anasim_version", str(__version__))
        _text(a, "model_sha256", str(sim.graph.ir.sha256))
        _text(a, "model_name", str(sim.graph.ir.name))
        _text(a, "config_json", sim.config.to_json())
        a["seed"] = np.int64(state["seed"])
        a["repetition"] = np.int64(state["repetition"])
        a["t_inference"] = np.float64(state["t_inference"])
        if CALIBRATION_SAMPLES in state:
            a[CALIBRATION_SAMPLES] = np.asarray(state[CALIBRATION_SAMPLES], np.int64)
        _text(a, "include", include)
        _text(a, "created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        a["n_layers"] = np.int64(len(sim.layers))
        bn = {k[len(BATCHNORM):]: v for k, v in state.items() if k.startswith(BATCHNORM)}
        if bn:  # re-estimated BatchNorm statistics (calibration): /batchnorm/<escaped node>/mean|var
            bg = f.create_group("batchnorm")
            for key, arr in bn.items():
                node, _, what = key.rpartition("/")
                _put(bg.require_group(node), what, arr)
        root = f.create_group("layers")
        for layer in sim.layers:
            lg = root.create_group(escape_name(layer.name))
            _text(lg.attrs, "name", layer.name)
            _text(lg.attrs, "op_type", layer.op_type)
            lg.attrs["index"] = np.int64(layer.index)
            lg.attrs["weight_shape"] = np.asarray(layer.weight_shape, np.int64)
            lg.attrs["n_groups"] = np.int64(len(layer.matrices))
            cp = calibration_prefix(layer.name)
            cal = {k[len(cp):]: v for k, v in state.items() if k.startswith(cp)}
            if cal:  # the layer's calibration (anasim.analog.calibration), names escaped
                cgrp = lg.create_group("calibration")
                for name, arr in cal.items():
                    _put(cgrp, escape_name(name), arr)
            for g, m in enumerate(layer.matrices):
                gg = lg.create_group(f"group{g}")
                gg.attrs["n_tiles"] = np.int64(len(m.tiles))
                for t in m.tiles:
                    tg = gg.create_group(f"tile{t.index}")
                    for name in ("index", "in_start", "in_stop", "out_start", "out_stop"):
                        tg.attrs[name] = np.int64(getattr(t, name))
                    key = tile_prefix(layer.name, g, t.index)
                    device = sorted(k for k in state if k.startswith(key + STATE))
                    tg.attrs["has_state"] = np.int8(bool(device))
                    for name in TILE_ARRAYS + tuple(n for n in ADC_ARRAYS if key + n in state):
                        _put(tg, name, state[key + name], compression if name == "weight" else None)
                    if device:
                        sg = tg.create_group("state")
                        cg = None
                        for k in device:
                            name = k[len(key) + len(STATE):]
                            if name.startswith("converter_params/"):
                                cg = cg if cg is not None else sg.create_group("converter_params")
                                _put(cg, escape_name(name[len("converter_params/"):]), state[k], compression)
                            else:
                                _put(sg, name, state[k], compression)


def _text(attrs, name: str, value: str) -> None:
    """A string attribute as fixed-length UTF-8: stored in the (checksummed) object header,
    not in the global heap where variable-length strings go unchecked."""
    import h5py

    data = value.encode("utf-8")
    attrs.create(name, np.array(data, dtype=h5py.string_dtype("utf-8", max(len(data), 1))))


def _put(group, name: str, arr, compression: str | None = None) -> None:
    """A chunked, fletcher32-checked dataset; refuses anything that is not plain numbers."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise InputError(
            f"Cannot save {group.name}/{name}: dtype {arr.dtype} is not numeric (snapshots store "
            "numbers only, never pickled objects).")
    scalar = arr.ndim == 0
    ds = group.create_dataset(name, data=arr.reshape(1) if scalar else arr, chunks=True, fletcher32=True,
                              compression=compression, shuffle=compression is not None)
    if scalar:
        ds.attrs["scalar"] = np.int8(1)


# --------------------------------------------------------------------------- reading


@dataclass
class _Tile:
    attrs: dict
    arrays: dict  # weight, mapping_scale, post_scale
    state: dict | None  # ProgrammedState.to_arrays() keys


@dataclass
class _Layer:
    name: str
    attrs: dict
    groups: list = field(default_factory=list)  # list of list of _Tile
    calibration: dict = field(default_factory=dict)  # name -> array (anasim.analog.calibration)


def _plain(value):
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


_ROOT_ATTRS = ("format_version", "anasim_version", "model_sha256", "config_json", "seed", "repetition",
               "t_inference")


def _open(path: Path):
    import h5py

    if not path.exists():
        raise FileNotFoundError(f"No snapshot file {str(path)!r}.")
    if not path.is_file():
        raise SnapshotError(f"{path} is not a file.")
    try:
        is_h5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read the file: {exc}") from None
    if not is_h5:
        raise SnapshotError(f"{path} is not an HDF5 file (no HDF5 signature); not an anasim snapshot.")
    try:
        return h5py.File(path, "r")
    except Exception as exc:  # truncated or damaged metadata
        raise SnapshotError(f"{path}: cannot open the HDF5 file (truncated or damaged?): {exc}") from None


def _read_meta(f, path: Path) -> dict:
    a = f.attrs
    if _plain(a.get("format", "")) != FORMAT:
        raise SnapshotError(f"{path} is an HDF5 file but not an anasim snapshot (root attribute "
                            f"format = {_plain(a.get('format'))!r}, expected {FORMAT!r}).")
    missing = [k for k in _ROOT_ATTRS if k not in a]
    if missing:
        raise SnapshotError(f"{path}: damaged snapshot, root attribute(s) {missing} missing.")
    meta = {k: _plain(a[k]) for k in a.keys()}
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise SnapshotError(
            f"{path}: snapshot format version {meta['format_version']} was written by anasim "
            f"{meta['anasim_version']}; this anasim ({__version__}) reads versions up to {FORMAT_VERSION}.")
    try:
        meta["config"] = json.loads(meta["config_json"])
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{path}: damaged snapshot, config_json is not valid JSON: {exc}") from None
    return meta


def _layer_groups(f, path: Path):
    if "layers" not in f:
        raise SnapshotError(f"{path}: damaged snapshot, group /layers missing.")
    items = [(int(_plain(g.attrs.get("index", -1))), key, g) for key, g in f["layers"].items()]
    return sorted(items, key=lambda x: x[0])


def _read_array(ds, path: Path) -> np.ndarray:
    try:
        arr = ds[()]
    except OSError as exc:
        raise SnapshotError(
            f"{path}: dataset {ds.name} is damaged (checksum or read error: {exc}).") from None
    if ds.attrs.get("scalar", 0):
        arr = arr.reshape(())
    return np.asarray(arr)


def _read_layers(f, path: Path) -> list[_Layer]:
    layers = []
    for _, key, lg in _layer_groups(f, path):
        name = _plain(lg.attrs.get("name", unescape_name(key)))
        layer = _Layer(name, {k: _plain(v) for k, v in lg.attrs.items()})
        n_groups = int(layer.attrs.get("n_groups", 0))
        for g in range(n_groups):
            gname = f"group{g}"
            if gname not in lg:
                raise SnapshotError(f"{path}: damaged snapshot, {lg.name}/{gname} missing.")
            gg = lg[gname]
            tiles = []
            for k in range(int(_plain(gg.attrs.get("n_tiles", 0)))):
                tname = f"tile{k}"
                if tname not in gg:
                    raise SnapshotError(f"{path}: damaged snapshot, {gg.name}/{tname} missing.")
                tg = gg[tname]
                arrays = {}
                for ds_name in ("weight", "mapping_scale", "post_scale"):
                    if ds_name not in tg:
                        raise SnapshotError(f"{path}: damaged snapshot, dataset {tg.name}/{ds_name} missing.")
                    arrays[ds_name] = _read_array(tg[ds_name], path)
                for ds_name in ADC_ARRAYS:  # only tiles with ADC mismatch or INL have them
                    if ds_name in tg:
                        arrays[ds_name] = _read_array(tg[ds_name], path)
                state = None
                if "state" in tg:
                    sg = tg["state"]
                    state = {}
                    for sk, obj in sg.items():
                        if sk == "converter_params":
                            for ck, ds in obj.items():
                                state[f"converter_params/{unescape_name(ck)}"] = _read_array(ds, path)
                        else:
                            state[sk] = _read_array(obj, path)
                tiles.append(_Tile({k2: _plain(v) for k2, v in tg.attrs.items()}, arrays, state))
            layer.groups.append(tiles)
        if "calibration" in lg:
            layer.calibration = {unescape_name(k): _read_array(ds, path) for k, ds in lg["calibration"].items()}
        layers.append(layer)
    return layers


def _read(path: Path, arrays: bool = True) -> tuple[dict, list[_Layer] | None]:
    f = _open(path)
    try:
        with f:
            meta = _read_meta(f, path)
            if not arrays:
                return meta, None
            meta["batchnorm_arrays"] = ({f"{node}/{what}": _read_array(ds, path) for node, g in f["batchnorm"].items()
                                         for what, ds in g.items()} if "batchnorm" in f else {})
            return meta, _read_layers(f, path)
    except (SnapshotError, FileNotFoundError):
        raise
    except Exception as exc:  # damaged metadata deeper in the file
        raise SnapshotError(f"{path}: damaged snapshot: {type(exc).__name__}: {exc}") from None


def open_snapshot(path, *, verify: bool = False) -> dict:
    """The metadata of a snapshot, for inspection (the file is only read).

    Returns a dict: ``path``, ``format_version``, ``anasim_version``, ``model_sha256``,
    ``model_name``, ``config`` (dict), ``config_json``, ``seed``, ``repetition``,
    ``t_inference``, ``include``, ``created`` and ``layers`` (one dict per analog layer:
    ``name``, ``op_type``, ``index``, ``weight_shape``, ``n_groups``, ``n_tiles``,
    ``tile_shapes`` as (rows, columns) = (inputs, outputs), ``device_state``).
    ``verify=True`` also reads every dataset, so a damaged one raises
    :class:`SnapshotError` (checksums are otherwise checked only by :func:`load_snapshot`).
    """
    import h5py

    path = Path(path)
    meta, _ = _read(path, arrays=False)
    if verify:
        _read(path)
    out = {"path": str(path)}
    out.update(meta)
    layers = []
    try:
        with h5py.File(path, "r") as f:
            for _, key, lg in _layer_groups(f, path):
                shapes, state = [], False
                for g in range(int(_plain(lg.attrs.get("n_groups", 0)))):
                    gg = lg[f"group{g}"]
                    for k in range(int(_plain(gg.attrs.get("n_tiles", 0)))):
                        ta = gg[f"tile{k}"].attrs
                        shapes.append((int(ta["in_stop"] - ta["in_start"]),
                                       int(ta["out_stop"] - ta["out_start"])))
                        state = state or bool(ta.get("has_state", 0))
                layers.append({
                    "name": _plain(lg.attrs.get("name", unescape_name(key))),
                    "op_type": _plain(lg.attrs.get("op_type", "")),
                    "index": int(_plain(lg.attrs.get("index", -1))),
                    "weight_shape": tuple(_plain(lg.attrs.get("weight_shape", []))),
                    "n_groups": int(_plain(lg.attrs.get("n_groups", 0))),
                    "n_tiles": len(shapes),
                    "tile_shapes": shapes,
                    "device_state": state,
                })
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"{path}: damaged snapshot: {type(exc).__name__}: {exc}") from None
    out["layers"] = layers
    return out


# --------------------------------------------------------------------------- loading


def load_snapshot(sim, path):
    """Restore a snapshot into ``sim``, a simulator of the same model, configuration and seed.

    After loading, ``sim`` holds the saved tiles, device state, ``repetition`` and
    ``t_inference``: ``sim(x)`` reproduces the saved simulator's outputs bit for bit, and
    ``sim.drift(t)`` drifts the saved devices to another time. Everything is read and
    checked before ``sim`` is changed, so a failed load leaves it as it was.

    Raises
    ------
    FileNotFoundError : no such file.
    SnapshotError : not an HDF5 file / not a snapshot / truncated / a dataset fails its
        checksum (the message names the dataset); or the snapshot belongs to another
        model (SHA-256 expected vs got), configuration (the differing keys with both
        values), seed, or layer / tile layout (the missing or extra layer, the tile
        whose shape differs).

    Returns ``sim``.
    """
    path = Path(path)
    meta, layers = _read(path)
    _check_compatible(sim, meta, layers, path)
    _restore(sim, meta, layers, path)
    return sim


def _check_compatible(sim, meta: dict, layers: list[_Layer], path: Path) -> None:
    got = str(sim.graph.ir.sha256)
    if meta["model_sha256"] != got:
        raise SnapshotError(
            f"{path}: the snapshot is of another model: model SHA-256 expected {meta['model_sha256']} "
            f"(snapshot of {meta.get('model_name', '?')!r}), got {got} (simulator's model "
            f"{sim.graph.ir.name!r}).")
    diffs = config_differences(meta["config"], json.loads(sim.config.to_json()))
    # how to calibrate is no part of the chip (what a calibration found is, as data in the file)
    diffs = [d for d in diffs if not d.startswith("calibration.")]
    if diffs:
        more = f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else ""
        raise SnapshotError(f"{path}: the configuration differs from the simulator's: "
                            + "; ".join(diffs[:10]) + more + ".")
    if int(meta["seed"]) != sim.seed:
        raise SnapshotError(
            f"{path}: seed: snapshot {meta['seed']}, simulator {sim.seed}. The forward noise and read "
            f"noise depend on the seed; build the simulator with seed={meta['seed']}.")
    saved = {x.name: x for x in layers}
    have = {x.name: x for x in sim.layers}
    missing = [n for n in have if n not in saved]
    extra = [n for n in saved if n not in have]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"analog layer(s) {missing} of the simulator are missing from the snapshot")
        if extra:
            parts.append(f"the snapshot has layer(s) {extra} that are not analog layers of the simulator")
        raise SnapshotError(f"{path}: " + "; ".join(parts) + ".")
    for layer in sim.layers:
        _check_layer(layer, saved[layer.name], path)


def _check_layer(layer, saved: _Layer, path: Path) -> None:
    where = f"{path}: layer {layer.name!r}"
    if int(saved.attrs.get("index", -1)) != layer.index:
        raise SnapshotError(f"{where}: position among the analog layers: snapshot "
                            f"{saved.attrs.get('index')}, simulator {layer.index}.")
    if len(saved.groups) != len(layer.matrices):
        raise SnapshotError(f"{where}: {len(saved.groups)} convolution group(s) in the snapshot, "
                            f"{len(layer.matrices)} in the simulator.")
    for g, (m, tiles) in enumerate(zip(layer.matrices, saved.groups)):
        if len(tiles) != len(m.tiles):
            raise SnapshotError(f"{where}, group {g}: {len(tiles)} tile(s) in the snapshot, "
                                f"{len(m.tiles)} in the simulator.")
        for t, st in zip(m.tiles, tiles):
            tw = f"{where}, group {g}, tile {t.index}"
            span = tuple(int(st.attrs.get(k, -1)) for k in ("in_start", "in_stop", "out_start", "out_stop"))
            if span != (t.in_start, t.in_stop, t.out_start, t.out_stop):
                raise SnapshotError(
                    f"{tw}: covers inputs {span[0]}:{span[1]}, outputs {span[2]}:{span[3]} in the snapshot, "
                    f"inputs {t.in_start}:{t.in_stop}, outputs {t.out_start}:{t.out_stop} in the simulator.")
            want = {"weight": (t.n_out, t.n_in), "mapping_scale": (t.n_out,), "post_scale": (t.n_out,)}
            for name, shape in want.items():
                a = st.arrays[name]
                if a.shape != shape or a.dtype.kind != "f":
                    raise SnapshotError(f"{tw}: dataset {name} has shape {a.shape} ({a.dtype}) in the "
                                        f"snapshot, expected {shape} (float32).")
            has_state = (g, t.index) in layer.states
            if (st.state is not None) != has_state:
                raise SnapshotError(
                    f"{tw}: the snapshot {'has' if st.state is not None else 'has no'} device state, the "
                    f"simulator's configuration {'has' if has_state else 'has no'} device noise model.")
            if st.state is not None:
                _check_state(st.state, t, tw)


def _check_state(state: dict, t, where: str) -> None:
    from .devices.base import ProgrammedState

    for key in ("target", "conductances"):
        if key not in state:
            raise SnapshotError(f"{where}: device state dataset {key!r} missing.")
    g = state["conductances"]
    if g.ndim != 3 or g.shape[1:] != (t.n_out, t.n_in):
        raise SnapshotError(f"{where}: device conductances have shape {g.shape}, expected "
                            f"(n_slices, {t.n_out}, {t.n_in}).")
    try:
        ProgrammedState.from_arrays(state)
    except Exception as exc:
        raise SnapshotError(f"{where}: invalid device state: {exc}") from None


def _restore(sim, meta: dict, layers: list[_Layer], path: Path) -> None:
    """Put the (checked) saved state into ``sim``: the file's arrays as the flat mapping
    :meth:`AnalogSimulator.load_state_dict` takes."""
    state = {"seed": np.int64(meta["seed"]), "repetition": np.int64(meta["repetition"]),
             "t_inference": np.float64(meta["t_inference"])}
    saved = {x.name: x for x in layers}
    for layer in sim.layers:
        for g, tiles in enumerate(saved[layer.name].groups):
            for st in tiles:
                key = tile_prefix(layer.name, g, int(st.attrs["index"]))
                for name, arr in st.arrays.items():
                    state[key + name] = arr
                for name, arr in (st.state or {}).items():
                    state[key + STATE + name] = arr
    for layer in sim.layers:
        for name, arr in saved[layer.name].calibration.items():
            state[calibration_prefix(layer.name) + name] = arr
    for key, arr in meta.get("batchnorm_arrays", {}).items():
        state[BATCHNORM + key] = arr
    if CALIBRATION_SAMPLES in meta:
        state[CALIBRATION_SAMPLES] = np.asarray(meta[CALIBRATION_SAMPLES], np.int64).reshape(-1)
    try:
        sim.load_state_dict(state)
    except InputError as exc:  # checked above already; a mismatch left over is still the file's
        raise SnapshotError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- config diff


def _canonical(config: dict) -> dict:
    """A configuration dict as the current anasim writes it (defaults made explicit)."""
    from .config import load_config

    try:
        return json.loads(load_config(config).to_json())
    except ConfigError:  # e.g. a plugin section not registered here: compare as written
        return config


def _flatten(value: Any, prefix: str, out: dict) -> dict:
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
        out.setdefault(f"{prefix}.length", len(value))
    else:
        out[prefix] = value
    return out


_ABSENT = object()


def config_differences(snapshot: dict, simulator: dict) -> list[str]:
    """``"key: snapshot A, simulator B"`` for every leaf where two configuration dicts differ."""
    a = _flatten(_canonical(snapshot), "", {})
    b = _flatten(_canonical(simulator), "", {})
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if not _same(va, vb):
            out.append(f"{key}: snapshot {_show(va)}, simulator {_show(vb)}")
    return out


def _same(a, b) -> bool:
    """Equal values; 1 and 1.0 are the same number, True and 1 are not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _show(v) -> str:
    if v is _ABSENT:
        return "(absent)"
    return json.dumps(v) if isinstance(v, str) else repr(v)
