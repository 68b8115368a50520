"""anasim.datasets: readers of every format (files written here in the real formats),
safety of the CIFAR pickle reader, robustness to corrupt files, and the preprocessing
against the reference implementations the shared models were evaluated with."""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anasim.datasets import (
    ALLOWED_GLOBALS, FORMATS, PREPROCESSING_PRESETS, DataError, Dataset, Preprocessing,
    load_dataset,
)
from anasim.errors import AnasimError, ConfigError, InputError

from conftest import DATA, shared_path

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------
# writers of the real formats
# ---------------------------------------------------------------------------------------
def images(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 images N×H×W×C (N×H×W if c == 0)."""
    shape = (n, h, w) if c == 0 else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_cifar_binary(path: Path, x: np.ndarray, y: np.ndarray, coarse=None) -> Path:
    """x N×32×32×3 uint8; CIFAR-10 records (label, R plane, G plane, B plane), or CIFAR-100
    records (coarse, fine, planes) when ``coarse`` is given."""
    planes = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    cols = [np.asarray(y, np.uint8)[:, None], planes]
    if coarse is not None:
        cols.insert(0, np.asarray(coarse, np.uint8)[:, None])
    path.write_bytes(np.concatenate(cols, axis=1).tobytes())
    return path


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _py2_value(v) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, list):
        return b"](" + b"".join(_py2_value(i) for i in v) + b"e"
    if isinstance(v, int):
        return _py2_int(v)
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
    # exactly what Python 2 cPickle wrote for the official batches (numpy 1.x)
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
            + _py2_str(b"b") + b"\x87R(" + _py2_int(1) + _py2_int(v.shape[0])
            + _py2_int(v.shape[1]) + b"\x86cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0)
            + _py2_int(1) + b"\x87R(" + _py2_int(3) + _py2_str(b"|") + b"NNN"
            + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + _py2_int(0) + b"tb\x89"
            + _py2_str(v.tobytes()) + b"tb")


def py2_pickle(d: dict) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote the CIFAR python batches."""
    body = b"".join(_py2_str(k) + _py2_value(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."


def cifar_py_dict(x: np.ndarray, y, coarse=None) -> dict:
    d = {b"batch_label": b"testing batch 1 of 1",
         b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))}
    if coarse is None:
        d[b"labels"] = [int(i) for i in y]
    else:
        d[b"fine_labels"] = [int(i) for i in y]
        d[b"coarse_labels"] = [int(i) for i in coarse]
    d[b"filenames"] = [b"img_%d.png" % i for i in range(len(x))]
    return d


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}
    head = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_tar(path: Path, folder: Path, arcname: str) -> Path:
    with tarfile.open(path, "w:gz") as t:
        t.add(folder, arcname=arcname)
    return path


def ref_cifar(x: np.ndarray, pre: Preprocessing = PREPROCESSING_PRESETS["cifar10"]) -> np.ndarray:
    """The reference the shared CIFAR models were evaluated with (NHWC uint8 in)."""
    mean, std = np.array(pre.mean, np.float32), np.array(pre.std, np.float32)
    return ((x.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)


@pytest.fixture
def cifar10(tmp_path):
    x, y = images(23, seed=1), RNG.integers(0, 10, 23)
    return x, y


# ---------------------------------------------------------------------------------------
# reference preprocessing of the shared models (exact equality)
# ---------------------------------------------------------------------------------------
def test_cifar10_preset_reproduces_reference():
    path = shared_path("data", "cifar10_test1000.npz")
    d = np.load(path)
    ds = load_dataset(path, preprocessing=PREPROCESSING_PRESETS["cifar10"])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    ref = ((d["x"] / 255 - mean.astype(np.float32)) / std.astype(np.float32))
    ref32 = ((d["x"].astype(np.float32) / 255 - mean.astype(np.float32))
             / std.astype(np.float32)).transpose(0, 3, 1, 2)
    assert ds.x.dtype == np.float32 and ds.x.shape == (1000, 3, 32, 32)
    assert ds.x.flags.c_contiguous
    np.testing.assert_array_equal(ds.x, ref32)
    np.testing.assert_allclose(ds.x, ref.transpose(0, 3, 1, 2), rtol=0, atol=3e-6)
    np.testing.assert_array_equal(ds.y, d["y"])
    assert ds.y.dtype == np.int64 and (ds.format, ds.input_layout) == ("npz", "NHWC")
    assert len(ds.sha256) == 64 and ds.sha256 == load_dataset(path, limit=5).sha256
    assert ds.provenance()["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_fmnist_presets_reproduce_reference():
    path = shared_path("data", "fashion_mnist_test.npz")
    d = np.load(path)
    ds = load_dataset(path, PREPROCESSING_PRESETS["fmnist32"])
    ref = (np.pad(d["x"], ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0 - 0.2860) / 0.3530
    np.testing.assert_array_equal(ds.x, ref[:, None])
    assert ds.x.shape == (10000, 1, 32, 32)
    assert ds.x[0, 0, 0, 0] == np.float32((np.float32(0) - np.float32(0.286)) / np.float32(0.353))
    ds28 = load_dataset(path, "fmnist28", limit=100)
    ref28 = (d["x"][:100].astype(np.float32) / 255.0 - 0.2860) / 0.3530
    np.testing.assert_array_equal(ds28.x, ref28[:, None])
    assert len(ds28) == 100 and ds28.n_total == 10000 and ds28.limit == 100


@pytest.mark.skipif(not (DEBIAN_FMNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_idx():
    ds = load_dataset(DEBIAN_FMNIST, "fmnist32")  # directory, split "test" -> t10k-*
    assert ds.format == "idx" and ds.source.endswith("t10k-images-idx3-ubyte.gz")
    assert ds.x.shape == (10000, 1, 32, 32) and ds.split == "test"
    ref = load_dataset(shared_path("data", "fashion_mnist_test.npz"), "fmnist32")
    np.testing.assert_array_equal(ds.x, ref.x)
    np.testing.assert_array_equal(ds.y, ref.y)
    tr = load_dataset(DEBIAN_FMNIST / "train-images-idx3-ubyte.gz", "none", limit=50)
    assert tr.x.shape == (50, 1, 28, 28) and tr.n_total == 60000 and tr.y.max() <= 9
    assert tr.x.max() <= 255 and tr.x.dtype == np.float32


# ---------------------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_layouts_round_trip(tmp_path, cifar10, compressed):
    x, y = cifar10
    save = np.savez_compressed if compressed else np.savez
    ref = ref_cifar(x)
    save(tmp_path / "nhwc.npz", x=x, y=y)
    save(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2), y=y.astype(np.uint8))
    for name, layout in (("nhwc", "NHWC"), ("nchw", "NCHW")):
        ds = load_dataset(tmp_path / f"{name}.npz", "cifar10")
        np.testing.assert_array_equal(ds.x, ref)
        np.testing.assert_array_equal(ds.y, y)
        assert ds.input_layout == layout and ds.y.dtype == np.int64
        lim = load_dataset(tmp_path / f"{name}.npz", "cifar10", limit=5)
        np.testing.assert_array_equal(lim.x, ref[:5])
        assert len(lim) == 5 and lim.n_total == 23
    # model expects NHWC
    ds = load_dataset(tmp_path / "nchw.npz", PREPROCESSING_PRESETS["cifar10"].replace(layout="NHWC"))
    np.testing.assert_array_equal(ds.x, ref.transpose(0, 2, 3, 1))
    assert ds.x.flags.c_contiguous
    # grayscale N×H×W, no labels, float input
    g = images(7, c=0, h=28, w=28).astype(np.float64) / 255
    save(tmp_path / "grey.npz", x=g)
    with pytest.warns(UserWarning, match=r"grey\.npz.*set scale = 1\.0"):
        load_dataset(tmp_path / "grey.npz")
    ds = load_dataset(tmp_path / "grey.npz", Preprocessing(scale=1.0))
    assert ds.y is None and ds.x.shape == (7, 1, 28, 28) and ds.input_layout == "NHW"
    np.testing.assert_array_equal(ds.x[:, 0], g.astype(np.float32))
    assert [yb for _, _, yb in ds.batches(3)] == [None] * 3


def test_npz_layout_rules(tmp_path):
    amb = np.zeros((4, 3, 8, 3), np.uint8)
    np.savez(tmp_path / "amb.npz", x=amb)
    with pytest.raises(DataError, match=r"amb\.npz.*input_layout"):
        load_dataset(tmp_path / "amb.npz")
    ds = load_dataset(tmp_path / "amb.npz", {"input_layout": "NHWC"})
    assert ds.x.shape == (4, 3, 3, 8)
    ds = load_dataset(tmp_path / "amb.npz", {"input_layout": "nchw"})
    assert ds.x.shape == (4, 3, 8, 3)
    np.savez(tmp_path / "four.npz", x=np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(DataError, match="neither"):
        load_dataset(tmp_path / "four.npz")
    assert load_dataset(tmp_path / "four.npz", {"input_layout": "NHWC"}).x.shape == (2, 4, 8, 8)
    np.savez(tmp_path / "flat.npz", x=np.zeros((5, 784), np.uint8))
    with pytest.raises(DataError, match=r"flat\.npz.*flattened"):
        load_dataset(tmp_path / "flat.npz")
    with pytest.raises(DataError, match="does not match input_layout"):
        load_dataset(tmp_path / "flat.npz", {"input_layout": "NHW"})
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"empty\.npz.*no samples"):
        load_dataset(tmp_path / "empty.npz")


def test_npz_bad_contents(tmp_path):
    x = images(6, c=0, h=8, w=8)
    cases = {
        "neg.npz": dict(x=x, y=np.array([0, 1, -1, 2, 3, 4])),
        "floaty.npz": dict(x=x, y=np.arange(6.0)),
        "short.npz": dict(x=x, y=np.arange(5)),
        "nan.npz": dict(x=np.where(x > 250, np.nan, x / 255.0), y=np.arange(6)),
        "obj.npz": dict(x=np.array([object(), 1], dtype=object)),
        "nox.npz": dict(images=x),
        "bool.npz": dict(x=x > 3),
        "range.npz": dict(x=x, y=np.array([0, 1, 2, 3, 4, 12])),
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
    msgs = {"neg.npz": "negative label -1 at sample 2", "floaty.npz": "expected integers",
            "short.npz": "'x' has 6 samples but 'y' has 5", "nan.npz": "NaN",
            "obj.npz": "object arrays are never loaded", "nox.npz": "no array named 'x'",
            "bool.npz": "dtype bool", "range.npz": "out of range for 10 classes"}
    for name, msg in msgs.items():
        kw = {"num_classes": 10} if name == "range.npz" else {}
        with pytest.raises(DataError, match=re.escape(name) + ".*" + re.escape(msg)):
            load_dataset(tmp_path / name, **kw)
    # class names recorded and used as the class count
    np.savez(tmp_path / "named.npz", x=x, y=np.array([0, 1, 2, 0, 1, 5]),
             class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="label 5 at sample 5 is out of range for 3 classes"):
        load_dataset(tmp_path / "named.npz")


def test_npz_truncated_and_corrupt(tmp_path):
    x = images(50, c=0, h=16, w=16)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(50) % 10)
    blob = (tmp_path / "ok.npz").read_bytes()
    for name, data in (("cut.npz", blob[: len(blob) // 2]), ("zero.npz", b""),
                       ("junk.npz", b"PK\x03\x04" + b"\x00" * 100)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=re.escape(name)):
            load_dataset(tmp_path / name)
    # a header that declares more rows than stored (hand-made .npy inside the zip)
    import zipfile
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                               "shape": (1000, 16, 16)})
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", buf.getvalue() + x.tobytes())
    with pytest.raises(DataError, match=r"lie\.npz.*truncated"):
        load_dataset(tmp_path / "lie.npz")
    assert load_dataset(tmp_path / "lie.npz", limit=50).x.shape == (50, 1, 16, 16)


# ---------------------------------------------------------------------------------------
# CIFAR binary
# ---------------------------------------------------------------------------------------
def test_cifar10_binary_file_dir_and_tar(tmp_path, cifar10):
    x, y = cifar10
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    write_cifar_binary(root / "test_batch.bin", x, y)
    train = [(images(4, seed=10 + i), RNG.integers(0, 10, 4)) for i in range(5)]
    for i, (xt, yt) in enumerate(train, 1):
        write_cifar_binary(root / f"data_batch_{i}.bin", xt, yt)
    (root / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    ref = ref_cifar(x)
    for src in (root / "test_batch.bin", root, tmp_path):  # file, folder, folder above it
        ds = load_dataset(src, "cifar10")
        assert ds.format == "cifar10-binary" and ds.input_layout == "NCHW"
        np.testing.assert_array_equal(ds.x, ref)
        np.testing.assert_array_equal(ds.y, y)
        assert ds.num_classes == 10 and ds.class_names[3] == "class3"
    tr = load_dataset(root, "cifar10", split="train")
    np.testing.assert_array_equal(tr.x, ref_cifar(np.concatenate([a for a, _ in train])))
    np.testing.assert_array_equal(tr.y, np.concatenate([b for _, b in train]))
    lim = load_dataset(root, "cifar10", split="train", limit=6)  # crosses a file boundary
    np.testing.assert_array_equal(lim.x, tr.x[:6])
    assert lim.n_total == 20
    tgz = make_tar(tmp_path / "cifar-10-binary.tar.gz", root, "cifar-10-batches-bin")
    ds = load_dataset(tgz, "cifar10", limit=10)
    np.testing.assert_array_equal(ds.x, ref[:10])
    assert ds.source.endswith("cifar-10-batches-bin/test_batch.bin") and ds.split == "test"
    assert ds.sha256 == load_dataset(tgz).sha256 != load_dataset(root).sha256
    np.testing.assert_array_equal(load_dataset(tgz, split="train").y, tr.y)
    # the model may want NHWC
    nhwc = load_dataset(root, PREPROCESSING_PRESETS["cifar10"].replace(layout="NHWC"))
    np.testing.assert_array_equal(nhwc.x, ref.transpose(0, 2, 3, 1))
    with pytest.raises(DataError, match="stores images as NCHW"):
        load_dataset(root, {"preset": "cifar10", "input_layout": "NHWC"})


def test_cifar100_binary(tmp_path):
    x, fine, coarse = images(9, seed=3), RNG.integers(0, 100, 9), RNG.integers(0, 20, 9)
    write_cifar_binary(tmp_path / "test.bin", x, fine, coarse)
    ds = load_dataset(tmp_path / "test.bin", "cifar10")
    assert ds.format == "cifar100-binary" and ds.num_classes == 100
    np.testing.assert_array_equal(ds.y, fine)
    np.testing.assert_array_equal(ds.x, ref_cifar(x))
    ds = load_dataset(tmp_path, labels="coarse")
    np.testing.assert_array_equal(ds.y, coarse)
    assert ds.num_classes == 20
    # a generic name is recognised by its record size, or forced with format=
    write_cifar_binary(tmp_path / "some.bin", x, fine, coarse)
    assert load_dataset(tmp_path / "some.bin").format == "cifar100-binary"
    write_cifar_binary(tmp_path / "bad.bin", x, fine + 100, coarse)
    with pytest.raises(DataError, match=r"bad\.bin.*out of range for 100 classes"):
        load_dataset(tmp_path / "bad.bin", format="cifar100-binary")


def test_cifar_binary_corrupt(tmp_path, cifar10):
    x, y = cifar10
    good = write_cifar_binary(tmp_path / "good.bin", x, y).read_bytes()
    (tmp_path / "test_batch.bin").write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"test_batch\.bin.*not a multiple of the CIFAR-10 record size 3073"):
        load_dataset(tmp_path / "test_batch.bin")
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"test_batch\.bin.*empty"):
        load_dataset(tmp_path / "test_batch.bin")
    write_cifar_binary(tmp_path / "test_batch.bin", x, np.where(y == 0, 10, y))
    with pytest.raises(DataError, match=r"test_batch\.bin: label 10 .* out of range for 10"):
        load_dataset(tmp_path / "test_batch.bin")
    with pytest.raises(DataError, match="data_batch_1.bin"):
        load_dataset(tmp_path, split="train")
    # a truncated official archive
    tgz_dir = tmp_path / "d"
    tgz_dir.mkdir()
    write_cifar_binary(tgz_dir / "test_batch.bin", x, y)
    blob = make_tar(tmp_path / "a.tar.gz", tgz_dir, "cifar-10-batches-bin").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz"):
        load_dataset(tmp_path / "cut.tar.gz")


# ---------------------------------------------------------------------------------------
# CIFAR python (pickles) and the restricted unpickler
# ---------------------------------------------------------------------------------------
def test_py2_pickle_writer_is_faithful(cifar10):
    x, y = cifar10
    data = py2_pickle(cifar_py_dict(x, y))
    d = pickle.loads(data, encoding="bytes")  # our own bytes: safe to load normally
    np.testing.assert_array_equal(d[b"data"], x.transpose(0, 3, 1, 2).reshape(len(x), -1))
    assert d[b"labels"] == list(y) and d[b"data"].dtype == np.uint8
    import pickletools
    globs = [arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"]
    assert globs == ["numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"]


def test_cifar10_python_file_dir_tar(tmp_path, cifar10):
    x, y = cifar10
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "test_batch").write_bytes(py2_pickle(cifar_py_dict(x, y)))
    train = [(images(3, seed=20 + i), RNG.integers(0, 10, 3)) for i in range(5)]
    for i, (xt, yt) in enumerate(train, 1):
        (root / f"data_batch_{i}").write_bytes(py2_pickle(cifar_py_dict(xt, yt)))
    (root / "batches.meta").write_bytes(py2_pickle(
        {b"label_names": [b"airplane", b"automobile"] + [b"c%d" % i for i in range(8)],
         b"num_vis": 3072}))
    ref = ref_cifar(x)
    for src in (root / "test_batch", root, tmp_path):
        ds = load_dataset(src, "cifar10")
        assert ds.format == "cifar10-python"
        np.testing.assert_array_equal(ds.x, ref)
        np.testing.assert_array_equal(ds.y, y)
        assert ds.class_names[:2] == ["airplane", "automobile"]
    tr = load_dataset(root, "cifar10", split="train", limit=7)
    np.testing.assert_array_equal(tr.x, ref_cifar(np.concatenate([a for a, _ in train]))[:7])
    tgz = make_tar(tmp_path / "cifar-10-python.tar.gz", root, "cifar-10-batches-py")
    ds = load_dataset(tgz, "cifar10")
    np.testing.assert_array_equal(ds.x, ref)
    # re-pickled by a current NumPy (protocol 4: numpy._core.multiarray._reconstruct)
    d4 = {"data": cifar_py_dict(x, y)[b"data"], "labels": [int(i) for i in y]}
    (tmp_path / "repickled").write_bytes(pickle.dumps(d4, protocol=4))
    ds = load_dataset(tmp_path / "repickled", "cifar10", format="cifar10-python")
    np.testing.assert_array_equal(ds.x, ref)


def test_cifar100_python(tmp_path):
    x, fine, coarse = images(8, seed=5), RNG.integers(0, 100, 8), RNG.integers(0, 20, 8)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    (root / "test").write_bytes(py2_pickle(cifar_py_dict(x, fine, coarse)))
    (root / "meta").write_bytes(py2_pickle(
        {b"fine_label_names": [b"f%d" % i for i in range(100)],
         b"coarse_label_names": [b"c%d" % i for i in range(20)]}))
    ds = load_dataset(tmp_path, "cifar10")
    assert ds.format == "cifar100-python" and ds.num_classes == 100
    np.testing.assert_array_equal(ds.y, fine)
    np.testing.assert_array_equal(ds.x, ref_cifar(x))
    assert ds.class_names[7] == "f7"
    dc = load_dataset(root / "test", labels="coarse")
    np.testing.assert_array_equal(dc.y, coarse)
    assert dc.class_names[7] == "c7"
    with pytest.raises(DataError, match="holds 'cifar100-python'"):
        load_dataset(root / "test", format="cifar10-python")


class _System:
    """Pickles as os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def test_malicious_pickles_are_refused(tmp_path, cifar10):
    x, y = cifar10
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    arr = cifar_py_dict(x, y)[b"data"]
    payloads = {
        "plain_p0": pickle.dumps(_System(cmd), protocol=0),
        "plain_p2": pickle.dumps(_System(cmd), protocol=2),
        "plain_p4": pickle.dumps(_System(cmd), protocol=4),
        # a valid CIFAR dict whose last value runs the command
        "hidden": pickle.dumps({"data": arr, "labels": list(map(int, y)), "x": _System(cmd)},
                               protocol=4),
        "eval": pickle.dumps({"data": arr, "labels": [0] * len(y),
                              "e": _Eval(f"open({str(marker)!r}, 'w')")}, protocol=4),
        "hand_global": b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.",
        "protocol5": pickle.dumps({"data": arr, "labels": list(map(int, y))}, protocol=5),
        "codecs": pickle.dumps({b"data": arr, b"labels": [0]}, protocol=2),
        "getattr": b"\x80\x02cnumpy\nload\n.",
    }
    refused = {"plain_p0": "posix.system", "plain_p2": "posix.system", "plain_p4": "posix.system",
               "hidden": "posix.system", "eval": "builtins.eval",
               "hand_global": "os.system", "protocol5": "numpy._core.numeric._frombuffer",
               "codecs": "_codecs.encode", "getattr": "numpy.load"}
    for name, data in payloads.items():
        path = tmp_path / "test_batch"
        path.write_bytes(data)
        with pytest.raises(DataError) as info:
            load_dataset(path)
        msg = str(info.value)
        assert str(path) in msg and refused[name] in msg and "refused" in msg, msg
        # also through a tar archive
        d = tmp_path / f"d_{name}"
        d.mkdir()
        (d / "test_batch").write_bytes(data)
        with pytest.raises(DataError, match="refused"):
            load_dataset(make_tar(tmp_path / f"{name}.tar.gz", d, "cifar-10-batches-py"))
    assert not marker.exists()
    assert set(ALLOWED_GLOBALS) == {("numpy.core.multiarray", "_reconstruct"),
                                    ("numpy._core.multiarray", "_reconstruct"),
                                    ("numpy", "ndarray"), ("numpy", "dtype")}


def test_cifar_python_corrupt(tmp_path, cifar10):
    x, y = cifar10
    good = py2_pickle(cifar_py_dict(x, y))
    cases = {
        "truncated": good[: len(good) // 2],
        "notdict": pickle.dumps([1, 2, 3], protocol=2),
        "listdata": pickle.dumps({"data": [[0] * 3072], "labels": [1]}, protocol=4),
        "nolabels": pickle.dumps({"data": cifar_py_dict(x, y)[b"data"]}, protocol=4),
        "shortlabels": pickle.dumps({"data": cifar_py_dict(x, y)[b"data"], "labels": [1]}, protocol=4),
        "neglabel": py2_pickle(cifar_py_dict(x, np.where(y == 0, -1, y))),
        "floatdata": pickle.dumps({"data": np.zeros((2, 3072)), "labels": [1, 2]}, protocol=4),
        "garbage": b"\x80\x02" + bytes(range(256)) * 4,
    }
    msgs = {"truncated": "truncated", "notdict": "expected a pickled dict",
            "listdata": "uint8 N×3072 array", "nolabels": "no 'labels'",
            "shortlabels": "has 1 entries", "neglabel": "negative label -1",
            "floatdata": "float64 array", "garbage": "not a readable pickle"}
    if not (y == 0).any():
        msgs.pop("neglabel")
    for name, msg in msgs.items():
        p = tmp_path / name
        p.write_bytes(cases[name])
        with pytest.raises(DataError, match=re.escape(str(p)) + ".*" + re.escape(msg)):
            load_dataset(p, format="cifar10-python")


# ---------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    x, y = images(12, c=0, h=28, w=28, seed=7), RNG.integers(0, 10, 12).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", x, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", y, gz)
    ref = (x.astype(np.float32) / 255.0 - 0.2860) / 0.3530
    for src in (tmp_path / f"t10k-images-idx3-ubyte{ext}", tmp_path / f"t10k-labels-idx1-ubyte{ext}",
                tmp_path):
        ds = load_dataset(src, "fmnist28")
        assert ds.format == "idx" and ds.input_layout == "NHW"
        np.testing.assert_array_equal(ds.x[:, 0], ref)
        np.testing.assert_array_equal(ds.y, y)
    ds = load_dataset(tmp_path, "fmnist32", limit=4)
    np.testing.assert_array_equal(
        ds.x[:, 0], (np.pad(x[:4], ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0 - 0.2860) / 0.3530)
    assert ds.n_total == 12 and ds.y.tolist() == y[:4].tolist()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset(tmp_path, split="train")
    # grayscale -> RGB for a 3-channel model
    rgb = load_dataset(tmp_path, {"channels": 3, "mean": [0.1, 0.2, 0.3], "std": 0.5})
    assert rgb.x.shape == (12, 3, 28, 28)
    for c, m in enumerate((0.1, 0.2, 0.3)):
        want = (x.astype(np.float32) / 255 - np.float32(m)) / np.float32(0.5)
        np.testing.assert_array_equal(rgb.x[:, c], want)
    # images without a labels file
    (tmp_path / "solo").mkdir()
    write_idx(tmp_path / "solo" / "my-images-idx3-ubyte", x[:3])
    ds = load_dataset(tmp_path / "solo" / "my-images-idx3-ubyte")
    assert ds.y is None and len(ds) == 3 and ds.sha256
    # int16 / float32 IDX payloads are big-endian
    write_idx(tmp_path / "solo" / "f-images-idx3-ubyte", (x[:2].astype(np.float32) - 100))
    ds = load_dataset(tmp_path / "solo" / "f-images-idx3-ubyte", "none")
    np.testing.assert_array_equal(ds.x[:, 0], x[:2].astype(np.float32) - 100)


def test_idx_corrupt(tmp_path):
    x, y = images(10, c=0, h=8, w=8), np.arange(10, dtype=np.uint8)
    good = write_idx(tmp_path / "good-images-idx3-ubyte", x).read_bytes()
    write_idx(tmp_path / "good-labels-idx1-ubyte", y)
    cases = {
        "a-images-idx3-ubyte": (good[:-5], "truncated: the header declares 10 items"),
        "b-images-idx3-ubyte": (good + b"xx", "2 extra bytes"),
        "c-images-idx3-ubyte": (b"", "empty"),
        "d-images-idx3-ubyte": (b"\x01\x02\x08\x03" + good[4:], "not an IDX file"),
        "e-images-idx3-ubyte": (good[:10], "truncated"),
        "f-images-idx3-ubyte": (write_idx(tmp_path / "tmp", y).read_bytes(), "1 dimensions"),
        "g-images-idx3-ubyte.gz": (gzip.compress(good)[:-30], "truncated or corrupt"),
        "h-images-idx3-ubyte.gz": (gzip.compress(good[:-64]), "truncated"),
        "i-images-idx3-ubyte.gz": (gzip.compress(good + b"z"), "extra bytes"),
        "j-images-idx3-ubyte.gz": (b"\x1f\x8b" + b"\x00" * 40, "corrupt"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=re.escape(name) + ".*" + re.escape(msg)):
            load_dataset(tmp_path / name)
    # count mismatch between images and labels; labels out of range
    write_idx(tmp_path / "m-images-idx3-ubyte", x)
    write_idx(tmp_path / "m-labels-idx1-ubyte", y[:9])
    with pytest.raises(DataError, match="has 10 images but .*m-labels-idx1-ubyte has 9 labels"):
        load_dataset(tmp_path / "m-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"good-labels-idx1-ubyte: label 5 at sample 5 is out of range"):
        load_dataset(tmp_path / "good-images-idx3-ubyte", num_classes=5)
    # a header claiming 4 billion images: refused from the size, nothing allocated
    liar = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 8, 8) + b"\0" * 64
    (tmp_path / "k-images-idx3-ubyte").write_bytes(liar)
    with pytest.raises(DataError, match="truncated"):
        load_dataset(tmp_path / "k-images-idx3-ubyte")
    (tmp_path / "l-images-idx3-ubyte.gz").write_bytes(gzip.compress(liar))
    with pytest.raises(DataError, match="truncated"):
        load_dataset(tmp_path / "l-images-idx3-ubyte.gz")


# ---------------------------------------------------------------------------------------
# load_dataset arguments, detection, image folders
# ---------------------------------------------------------------------------------------
def test_errors_are_input_errors(tmp_path):
    assert issubclass(DataError, InputError) and issubclass(DataError, AnasimError)
    assert issubclass(DataError, ValueError)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "mystery.dat").write_bytes(b"hello world")
    with pytest.raises(DataError, match=r"mystery\.dat.*cannot recognise"):
        load_dataset(tmp_path / "mystery.dat")
    (tmp_path / "empty.dat").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.dat.*empty"):
        load_dataset(tmp_path / "empty.dat")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no data set files"):
        load_dataset(tmp_path / "emptydir")
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ConfigError, match="Did you mean 'cifar10-binary'"):
        load_dataset(tmp_path / "a.npz", format="cifar10-bin")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="limit"):
            load_dataset(tmp_path / "a.npz", limit=bad)
    with pytest.raises(ConfigError, match="split"):
        load_dataset(tmp_path / "a.npz", split="val")
    with pytest.raises(ConfigError, match="Did you mean 'fmnist32'"):
        load_dataset(tmp_path / "a.npz", "fmnist33")
    assert set(FORMATS) >= {"npz", "idx", "cifar10-binary", "cifar100-python"}


def test_image_folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
    try:
        from PIL import Image
    except ImportError:
        (tmp_path / "imgs" / "cat" / "a.png").write_bytes(b"\x89PNG")
        with pytest.raises(DataError, match="Pillow"):
            load_dataset(tmp_path / "imgs")
        return
    x = images(4, c=3, h=6, w=6)
    for i, img in enumerate(x):
        Image.fromarray(img).save(tmp_path / "imgs" / ("cat", "dog")[i % 2] / f"{i}.png")
    ds = load_dataset(tmp_path / "imgs", "none")
    assert ds.format == "image-folder" and ds.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ds.y, [0, 0, 1, 1])
    np.testing.assert_array_equal(ds.x, x[[0, 2, 1, 3]].transpose(0, 3, 1, 2).astype(np.float32))


def test_batches_cover_every_sample_once():
    x = images(103, c=1, h=5, w=5)
    ds = Dataset.from_arrays(x, np.arange(103) % 7, "none")
    assert ds.format == "array" and ds.input_layout == "NHWC"
    for b in (1, 10, 64, 103, 500):
        seen = []
        for off, xb, yb in ds.batches(b):
            assert len(xb) == len(yb) <= b
            np.testing.assert_array_equal(xb, ds.x[off:off + len(xb)])
            np.testing.assert_array_equal(yb, ds.y[off:off + len(xb)])
            seen += list(range(off, off + len(xb)))
        assert seen == list(range(103))
    for bad in (0, -2, 1.5, True, None):
        with pytest.raises(ConfigError, match="batch_size"):
            list(ds.batches(bad))
    with pytest.raises(DataError, match="x has 103 samples but y has 3"):
        Dataset.from_arrays(x, [1, 2, 3])
    assert Dataset.from_arrays(x).sha256 != Dataset.from_arrays(x, np.zeros(103, int)).sha256


# ---------------------------------------------------------------------------------------
# Preprocessing: parameters, presets, properties
# ---------------------------------------------------------------------------------------
def test_preprocessing_fields_documented_and_validated():
    for f in dataclasses.fields(Preprocessing):
        md = f.metadata
        assert len(md["doc"].split()) >= 4 and md["unit"] and md["valid"] is not None
        valid = md["valid"]
        bad = md.get("invalid") or (("nope", 3, None) if isinstance(valid, tuple)
                                     else ("0.5", True, None, math.nan, -1))
        for value in bad:
            with pytest.raises(ConfigError, match=rf"\b{f.name}\b"):
                Preprocessing(**{f.name: value})
    assert Preprocessing.section == "data"
    with pytest.raises(ConfigError, match="mean has 3 values but std has 2"):
        Preprocessing(mean=[1, 2, 3], std=[1, 2])
    with pytest.raises(ConfigError, match="channels = 1"):
        Preprocessing(mean=[1, 2, 3], channels=1)
    with pytest.raises(ConfigError, match="Did you mean 'center_crop'"):
        Preprocessing.from_dict({"centre_crop": 3})
    with pytest.raises(DataError, match="mean has 3 values but the preprocessed data has 1 channel"):
        Dataset.from_arrays(np.zeros((2, 4, 4), np.uint8), preprocessing="cifar10")
    with pytest.raises(DataError, match="larger than the images"):
        Dataset.from_arrays(np.zeros((2, 4, 4), np.uint8), preprocessing={"center_crop": 5})


def test_preprocessing_dicts_and_presets():
    assert set(PREPROCESSING_PRESETS) >= {"cifar10", "fmnist32", "fmnist28", "none"}
    for name, pre in PREPROCESSING_PRESETS.items():
        d = pre.to_dict()
        assert Preprocessing.from_dict(d) == pre
        assert Preprocessing.from_dict({"preset": name}) == pre
        import json
        assert Preprocessing.from_dict(json.loads(json.dumps(d))) == pre
    c = PREPROCESSING_PRESETS["cifar10"]
    assert (c.scale, c.mean, c.std, c.layout, c.pad) == (
        1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "NCHW", 0)
    f = PREPROCESSING_PRESETS["fmnist32"]
    assert (f.mean, f.std, f.pad) == (0.286, 0.353, 2)
    assert PREPROCESSING_PRESETS["none"].scale == 1.0
    p = Preprocessing.from_dict({"preset": "cifar10", "layout": "NHWC"})
    assert p.layout == "NHWC" and p.mean == c.mean
    assert Preprocessing(mean=np.array([0.5]), std=[2]).mean == 0.5
    assert Preprocessing(mean=np.array([1, 2, 3])).mean == (1.0, 2.0, 3.0)
    assert Preprocessing(center_crop=np.int64(24)).center_crop == 24
    assert Preprocessing().divisor == 255 and Preprocessing(scale=0.3).divisor is None


def test_crop_pad_luma_and_float64():
    x = images(3, c=3, h=10, w=12, seed=9)
    pre = Preprocessing(center_crop=6, pad=1, channels=1, scale=1.0)
    out = Dataset.from_arrays(x, preprocessing=pre).x
    crop = x[:, 2:8, 3:9].astype(np.float32)
    r, g, b = (np.float32(v) for v in (0.299, 0.587, 0.114))
    luma = (crop[..., 0] * r + crop[..., 1] * g) + crop[..., 2] * b
    np.testing.assert_array_equal(out[:, 0], np.pad(luma, ((0, 0), (1, 1), (1, 1))))
    assert pre.output_shape(3, 10, 12) == out.shape[1:] == (1, 8, 8)
    np.testing.assert_array_equal(pre.apply(x, "NHWC"), out)
    np.testing.assert_array_equal(pre.replace(input_layout="NCHW").apply(x.transpose(0, 3, 1, 2)), out)
    out64 = Dataset.from_arrays(x, preprocessing={"preset": "cifar10", "dtype": "float64"}).x
    assert out64.dtype == np.float64
    ref64 = ((x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    np.testing.assert_allclose(out64, ref64.transpose(0, 3, 1, 2), rtol=0, atol=1e-14)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), c=st.sampled_from([0, 1, 3]), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 1000), pad=st.integers(0, 3), nhwc=st.booleans(),
       mean=st.floats(-2, 2), std=st.floats(0.01, 10), seed=st.integers(0, 2**31),
       percell=st.booleans())
def test_preprocessing_properties(n, c, h, w, k, pad, nhwc, mean, std, seed, percell):
    x = images(n, c=c, h=h, w=w, seed=seed)
    cc = max(c, 1)
    rng = np.random.default_rng(seed)
    m = tuple(float(v) for v in rng.uniform(-2, 2, cc)) if percell else mean
    s = tuple(float(v) for v in rng.uniform(0.01, 10, cc)) if percell else std
    pre = Preprocessing(scale=1 / k, mean=m, std=s, pad=pad, layout="NHWC" if nhwc else "NCHW",
                        input_layout="NHW" if c == 0 else "NHWC")
    out = Dataset.from_arrays(x, preprocessing=pre).x
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out.shape == (n,) + pre.output_shape(cc, h, w)
    nchw = out.transpose(0, 3, 1, 2) if nhwc else out
    # the documented float32 sequence, written out: pad raw 0, /k, -mean, /std
    raw = x[:, None] if c == 0 else x.transpose(0, 3, 1, 2)
    raw = np.pad(raw, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float32)
    mm = np.asarray(m, np.float32).reshape(-1, 1, 1)
    ss = np.asarray(s, np.float32).reshape(-1, 1, 1)
    np.testing.assert_array_equal(nchw, (raw / np.float32(k) - mm) / ss)
    # normalisation inverts: x·std + mean recovers raw/k to float32 rounding
    back = nchw.astype(np.float64) * ss + mm
    np.testing.assert_allclose(back, raw / k, rtol=0, atol=4e-7 * (1 + np.abs(mm).max() + 255 / k))
    # per-sample independence: a prefix preprocessed alone gives the same rows
    np.testing.assert_array_equal(Dataset.from_arrays(x[:1], preprocessing=pre).x, out[:1])
    # identity preprocessing returns the raw values exactly
    ident = Dataset.from_arrays(x, preprocessing=PREPROCESSING_PRESETS["none"].replace(
        input_layout=pre.input_layout)).x
    np.testing.assert_array_equal(ident, (x[:, None] if c == 0 else x.transpose(0, 3, 1, 2)))
