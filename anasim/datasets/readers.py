"""Readers of the supported file formats, returning raw (unpreprocessed) arrays.

Each reader returns a :class:`Raw`: the pixels as stored (``x``, in ``layout``), the
labels as int64 (or None), what is known about the classes, and the files read (for the
SHA-256). Readers never trust a header: sizes are checked against the bytes actually
present before anything is allocated, reads are chunked, and ``limit`` stops reading after
the first n samples (for gzip/tar streams too).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import numpy as np
import numpy.lib.format as npformat

from .preprocessing import DataError
from .safe_pickle import safe_loads

CHUNK = 1 << 24
CIFAR_PIXELS = 3 * 32 * 32
#: What reading a damaged file, gzip stream, zip member or tar member can raise.
READ_ERRORS = (EOFError, OSError, zipfile.BadZipFile, tarfile.TarError, zlib.error)


@dataclass
class Raw:
    x: np.ndarray
    layout: str  # "NHW", "NHWC", "NCHW" or "auto" (npz: decided by the preprocessing rule)
    y: np.ndarray | None
    format: str
    source: str
    files: list = field(default_factory=list)  # Paths hashed for provenance, in read order
    num_classes: int | None = None
    class_names: list | None = None
    n_total: int | None = None  # samples in the file(s), when known without reading all


# ----------------------------------------------------------------------------- helpers
def read_exact(f: IO[bytes], n: int, source: str, what: str = "data") -> bytes:
    """Read exactly n bytes in chunks (never allocating more than what arrives)."""
    parts, got = [], 0
    try:
        while got < n:
            chunk = f.read(min(CHUNK, n - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
    except READ_ERRORS as exc:
        raise DataError(f"{source}: the file is truncated or corrupt while reading {what} "
                        f"({type(exc).__name__}: {exc}).") from None
    if got < n:
        raise DataError(f"{source}: the file is truncated: {what} needs {n} bytes but only "
                        f"{got} are there.")
    return b"".join(parts)


def sha256_files(paths: list) -> str:
    """SHA-256 of one file's bytes; for several files, of their ``sha256sum`` listing
    (``"<hex>  <basename>\\n"`` per file, in read order)."""
    digests = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests.append((h.hexdigest(), Path(p).name))
    if len(digests) == 1:
        return digests[0][0]
    listing = "".join(f"{d}  {name}\n" for d, name in digests)
    return hashlib.sha256(listing.encode()).hexdigest()


def check_labels(y: np.ndarray, source: str, num_classes: int | None) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels have dtype {y.dtype}; expected integers.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: labels have shape {y.shape}; expected (N,).")
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            i = int(np.flatnonzero(y < 0)[0])
            raise DataError(f"{source}: negative label {int(y[i])} at sample {i}.")
        if num_classes is not None and hi >= num_classes:
            i = int(np.flatnonzero(y >= num_classes)[0])
            raise DataError(f"{source}: label {int(y[i])} at sample {i} is out of range for "
                            f"{num_classes} classes.")
    if y.dtype.kind == "u" and y.dtype.itemsize == 8 and y.size and y.max() > np.iinfo(np.int64).max:
        raise DataError(f"{source}: labels do not fit in int64.")
    return y.astype(np.int64)


class Blob:
    """A readable byte stream: a file (optionally gzip-compressed) or a tar member."""

    def __init__(self, name: str, opener: Callable[[], IO[bytes]], size: int | None,
                 path: Path | None = None):
        self.name, self.opener, self.size, self.path = name, opener, size, path

    @classmethod
    def file(cls, path: Path) -> "Blob":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                magic = f.read(2)
            size = path.stat().st_size
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc}).") from None
        if magic == b"\x1f\x8b":
            return cls(str(path), lambda: gzip.open(path, "rb"), None, path)
        return cls(str(path), lambda: open(path, "rb"), size, path)

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc}).") from None


def tar_blobs(path: Path) -> dict[str, Blob]:
    """Regular-file members of a tar archive by basename (never extracted to disk)."""
    tar = open_tar(path)
    out = {}
    try:
        members = tar.getmembers()
    except READ_ERRORS as exc:
        raise DataError(f"{path}: corrupt tar archive ({exc}).") from None
    for m in members:
        if m.isfile():
            base = m.name.rsplit("/", 1)[-1]
            out.setdefault(base, Blob(f"{path}:{m.name}", lambda m=m: tar.extractfile(m),
                                      m.size, path))
    return out


# --------------------------------------------------------------------------------- npz
NPY_DTYPES = "uif"


def _npz_member(z: zipfile.ZipFile, key: str, path: Path, limit: int | None) -> tuple[np.ndarray, int]:
    source = f"{path} (array {key!r})"
    try:
        info = z.getinfo(f"{key}.npy")
        f = z.open(info)
    except (KeyError, zipfile.BadZipFile, OSError, RuntimeError) as exc:
        raise DataError(f"{source}: cannot open the array ({exc}).") from None
    with f:
        try:
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{source}: malformed .npy header ({exc}).") from None
        if dtype.hasobject or dtype.kind not in NPY_DTYPES or dtype.fields is not None:
            raise DataError(f"{source}: dtype {dtype} is not allowed (expected integers or "
                            "floats; object arrays are never loaded).")
        if len(shape) == 0:
            raise DataError(f"{source}: is a scalar; expected an array with one row per sample.")
        n_total = shape[0]
        n = n_total if (limit is None or fortran) else min(limit, n_total)
        row = int(np.prod(shape[1:], dtype=object)) * dtype.itemsize
        need = n * row
        if info.file_size and need > info.file_size:
            raise DataError(f"{source}: the file is truncated: the header declares shape "
                            f"{shape} ({need} bytes) but the member holds {info.file_size}.")
        data = read_exact(f, need, source, "the array")
        if limit is None and f.read(1):
            raise DataError(f"{source}: extra bytes after the array the header declares.")
    arr = np.frombuffer(data, dtype=dtype)
    if fortran:
        arr = arr.reshape(shape[::-1]).transpose()[:limit]
    else:
        arr = arr.reshape((n,) + tuple(shape[1:]))
    if not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr, n_total


def read_npz(path: Path, limit: int | None, **_) -> Raw:
    """``.npz`` with ``x`` (images) and optionally ``y`` (integer labels), parsed without
    ``np.load`` so that ``limit`` reads only the first rows; never unpickles."""
    try:
        z = zipfile.ZipFile(path)
    except READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable .npz (zip) file ({exc}).") from None
    with z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        if "x" not in names:
            raise DataError(f"{path}: no array named 'x' (found: {', '.join(names) or 'none'}); "
                            "an .npz data set holds 'x' (images) and 'y' (labels).")
        x, n_total = _npz_member(z, "x", path, limit)
        y = None
        if "y" in names:
            y, ny = _npz_member(z, "y", path, limit)
            if ny != n_total:
                raise DataError(f"{path}: 'x' has {n_total} samples but 'y' has {ny}.")
        names_arr = None
        if "class_names" in names:
            arr, _n = _npz_member_text(z, path)
            names_arr = arr
    return Raw(x=x, layout="auto", y=y, format="npz", source=str(path), files=[path],
               class_names=names_arr, num_classes=len(names_arr) if names_arr else None,
               n_total=n_total)


def _npz_member_text(z: zipfile.ZipFile, path: Path) -> tuple[list, int]:
    source = f"{path} (array 'class_names')"
    with z.open("class_names.npy") as f:
        try:
            version = npformat.read_magic(f)
            reader = (npformat.read_array_header_1_0 if version == (1, 0)
                      else npformat.read_array_header_2_0)
            shape, fortran, dtype = reader(f)
        except Exception as exc:
            raise DataError(f"{source}: malformed .npy header ({exc}).") from None
        if dtype.kind != "U" or len(shape) != 1:
            raise DataError(f"{source}: expected a 1-D unicode string array, got {dtype} "
                            f"{shape}.")
        data = read_exact(f, shape[0] * dtype.itemsize, source)
    return [str(s) for s in np.frombuffer(data, dtype)], shape[0]


# ------------------------------------------------------------------------ CIFAR binary
def cifar_binary_files(blobs: dict[str, Blob], variant: int, split: str, where: str) -> list:
    if variant == 10:
        names = (["test_batch.bin"] if split == "test"
                 else [f"data_batch_{i}.bin" for i in range(1, 6)])
    else:
        names = ["test.bin" if split == "test" else "train.bin"]
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DataError(f"{where}: CIFAR-{variant} binary {split} split needs "
                        f"{', '.join(missing)}, which is not there.")
    return [blobs[n] for n in names]


def read_cifar_binary(blobs: list[Blob], variant: int, limit: int | None, labels: str,
                      where: str) -> Raw:
    """CIFAR-10 records: 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, rows of
    32); CIFAR-100 records: coarse label byte, fine label byte, 3072 pixel bytes."""
    nl = 1 if variant == 10 else 2
    rec = nl + CIFAR_PIXELS
    xs, ys, n_total = [], [], 0
    for blob in blobs:
        if blob.size is not None:
            if blob.size == 0:
                raise DataError(f"{blob.name}: the file is empty.")
            if blob.size % rec:
                raise DataError(f"{blob.name}: the file length {blob.size} is not a multiple of "
                                f"the CIFAR-{variant} record size {rec} (truncated or not a "
                                f"CIFAR-{variant} binary batch).")
            count = blob.size // rec
        else:
            count = None
        remaining = None if limit is None else limit - sum(len(a) for a in xs)
        if remaining == 0:
            n_total += count or 0
            continue
        try:
            f = blob.opener()
        except READ_ERRORS as exc:
            raise DataError(f"{blob.name}: cannot read ({exc}).") from None
        with f:
            if count is not None:
                want = count if remaining is None else min(count, remaining)
                data = read_exact(f, want * rec, blob.name, "the records")
            else:  # compressed stream: read what is asked (or everything)
                want_bytes = None if remaining is None else remaining * rec
                data = _read_stream(f, want_bytes, blob.name)
                if not data:
                    raise DataError(f"{blob.name}: the file is empty.")
                if len(data) % rec:
                    raise DataError(f"{blob.name}: the data length {len(data)} is not a multiple "
                                    f"of the CIFAR-{variant} record size {rec} (truncated).")
        arr = np.frombuffer(data, np.uint8).reshape(-1, rec)
        n_total += count if count is not None else len(arr)
        xs.append(arr[:, nl:].reshape(-1, 3, 32, 32))
        ys.append(arr[:, 0 if (variant == 10 or labels == "coarse") else 1])
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = ys[0] if len(ys) == 1 else np.concatenate(ys)
    num_classes = 10 if variant == 10 else (20 if labels == "coarse" else 100)
    y = check_labels(y, blobs[0].name if len(blobs) == 1 else where, num_classes)
    return Raw(x=x, layout="NCHW", y=y, format=f"cifar{variant}-binary", source=where,
               num_classes=num_classes, n_total=n_total)


def _read_stream(f: IO[bytes], n: int | None, source: str) -> bytes:
    if n is not None:
        parts, got = [], 0
        try:
            while got < n:
                chunk = f.read(min(CHUNK, n - got))
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except READ_ERRORS as exc:
            raise DataError(f"{source}: the file is truncated or corrupt ({exc}).") from None
        return b"".join(parts)
    try:
        return b"".join(iter(lambda: f.read(CHUNK), b""))
    except READ_ERRORS as exc:
        raise DataError(f"{source}: the file is truncated or corrupt ({exc}).") from None


def read_text_names(blob: Blob | None) -> list | None:
    if blob is None:
        return None
    with blob.opener() as f:
        text = _read_stream(f, None, blob.name)
    try:
        return [s.strip() for s in text.decode("utf-8").splitlines() if s.strip()]
    except UnicodeDecodeError:
        raise DataError(f"{blob.name}: class names are not UTF-8 text.") from None


# ------------------------------------------------------------------------ CIFAR python
def _get(d: dict, key: str):
    return d[key.encode()] if key.encode() in d else d.get(key)


def read_cifar_python(blobs: list[Blob], limit: int | None, labels: str, where: str,
                      meta: Blob | None = None) -> Raw:
    """Pickled dicts (``data``: uint8 N×3072 planes, ``labels`` or ``fine_labels`` /
    ``coarse_labels``), read with :class:`~anasim.datasets.safe_pickle.RestrictedUnpickler`."""
    xs, ys, variant, n_total = [], [], None, 0
    for blob in blobs:
        with blob.opener() as f:
            raw = _read_stream(f, None, blob.name)
        obj = safe_loads(raw, blob.name)
        if not isinstance(obj, dict):
            raise DataError(f"{blob.name}: expected a pickled dict, got {type(obj).__name__}.")
        data = _get(obj, "data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != CIFAR_PIXELS:
            what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                    else type(data).__name__)
            raise DataError(f"{blob.name}: 'data' must be a uint8 N×3072 array; got {what}.")
        if _get(obj, "fine_labels") is not None:
            v, key = 100, ("coarse_labels" if labels == "coarse" else "fine_labels")
        elif _get(obj, "labels") is not None:
            v, key = 10, "labels"
        else:
            raise DataError(f"{blob.name}: no 'labels' or 'fine_labels' entry.")
        if variant is not None and v != variant:
            raise DataError(f"{blob.name}: mixes CIFAR-10 and CIFAR-100 batches.")
        variant = v
        lab = _get(obj, key)
        if not isinstance(lab, (list, np.ndarray)) or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in lab):
            raise DataError(f"{blob.name}: {key!r} must be a list of ints.")
        if len(lab) != len(data):
            raise DataError(f"{blob.name}: 'data' has {len(data)} rows but {key!r} has "
                            f"{len(lab)} entries.")
        if len(data) == 0:
            raise DataError(f"{blob.name}: contains no samples.")
        try:
            lab = np.asarray(lab, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{blob.name}: a label does not fit in int64.") from None
        n_total += len(data)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(lab)
    x, y = np.concatenate(xs) if len(xs) > 1 else xs[0], np.concatenate(ys) if len(ys) > 1 else ys[0]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    num_classes = 10 if variant == 10 else (20 if labels == "coarse" else 100)
    y = check_labels(y, blobs[0].name if len(blobs) == 1 else where, num_classes)
    names = None
    if meta is not None:
        with meta.opener() as f:
            m = safe_loads(_read_stream(f, None, meta.name), meta.name)
        key = "label_names" if variant == 10 else f"{labels}_label_names"
        lst = _get(m, key) if isinstance(m, dict) else None
        if isinstance(lst, list) and all(isinstance(s, (bytes, str)) for s in lst):
            names = [s.decode("utf-8", "replace") if isinstance(s, bytes) else s for s in lst]
    return Raw(x=x, layout="NCHW", y=y, format=f"cifar{variant}-python", source=where,
               num_classes=num_classes, class_names=names, n_total=n_total)


# --------------------------------------------------------------------------------- IDX
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx_file(blob: Blob, limit: int | None, ndim: int) -> tuple[np.ndarray, int]:
    """One IDX file (magic 0 0 type ndim, big-endian uint32 dims, big-endian data)."""
    src = blob.name
    try:
        f = blob.opener()
    except OSError as exc:
        raise DataError(f"{src}: cannot read ({exc}).") from None
    with f:
        head = _read_stream(f, 4, src)
        if not head:
            raise DataError(f"{src}: the file is empty.")
        if len(head) < 4 or head[0] or head[1] or head[2] not in IDX_TYPES or head[3] == 0:
            raise DataError(f"{src}: not an IDX file (bad magic {head.hex()}).")
        if head[3] != ndim:
            raise DataError(f"{src}: IDX file has {head[3]} dimensions; expected {ndim} "
                            f"({'N×H×W images' if ndim == 3 else 'N labels'}).")
        dims = tuple(int(d) for d in np.frombuffer(read_exact(f, 4 * ndim, src, "the header"),
                                                   ">u4"))
        dtype = np.dtype(IDX_TYPES[head[2]])
        n_total = dims[0]
        n = n_total if limit is None else min(limit, n_total)
        row = int(np.prod(dims[1:], dtype=object)) * dtype.itemsize
        need = n * row
        if blob.size is not None:
            have = blob.size - 4 - 4 * ndim
            full = n_total * row
            if have < full:
                raise DataError(f"{src}: the file is truncated: the header declares {n_total} "
                                f"items of {row} bytes ({full} bytes) but {have} are there.")
            if have > full:
                raise DataError(f"{src}: {have - full} extra bytes after the data the header "
                                "declares.")
        data = read_exact(f, need, src, "the data")
        if limit is None and blob.size is None:
            try:
                extra = f.read(1)
            except READ_ERRORS as exc:
                raise DataError(f"{src}: corrupt compressed data ({exc}).") from None
            if extra:
                raise DataError(f"{src}: extra bytes after the data the header declares.")
    arr = np.frombuffer(data, dtype).reshape((n,) + dims[1:])
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr, n_total


def read_idx(images: Blob, labels: Blob | None, limit: int | None, where: str,
             num_classes: int | None) -> Raw:
    x, n_total = read_idx_file(images, limit, 3)
    if x.shape[0] == 0:
        raise DataError(f"{images.name}: contains no samples.")
    y = None
    files = [images.path]
    if labels is not None:
        y, ny = read_idx_file(labels, limit, 1)
        if ny != n_total:
            raise DataError(f"{images.name} has {n_total} images but {labels.name} has {ny} "
                            "labels.")
        y = check_labels(y, labels.name, num_classes)
        files.append(labels.path)
    return Raw(x=x, layout="NHW", y=y, format="idx", source=where, files=files,
               num_classes=num_classes, n_total=n_total)


IDX_IMAGES = re.compile(r"^(?P<pre>.*?)(?P<s1>[-._])images(?P<s2>[-._])idx3(?P<s3>[-._])ubyte"
                        r"(?P<gz>\.gz)?$")
IDX_LABELS = re.compile(r"^(?P<pre>.*?)(?P<s1>[-._])labels(?P<s2>[-._])idx1(?P<s3>[-._])ubyte"
                        r"(?P<gz>\.gz)?$")


def idx_partner(path: Path) -> tuple[Path, Path | None]:
    """(images, labels) for a given IDX images or labels file; the partner is the file
    beside it with ``images-idx3`` ↔ ``labels-idx1`` swapped (gzip or not); None if absent."""
    name = path.name
    m = IDX_IMAGES.match(name)
    if m:
        other = f"{m['pre']}{m['s1']}labels{m['s2']}idx1{m['s3']}ubyte"
        for cand in (other + (m["gz"] or ""), other + ".gz", other):
            if (path.parent / cand).is_file():
                return path, path.parent / cand
        return path, None
    m = IDX_LABELS.match(name)
    if m:
        other = f"{m['pre']}{m['s1']}images{m['s2']}idx3{m['s3']}ubyte"
        for cand in (other + (m["gz"] or ""), other + ".gz", other):
            if (path.parent / cand).is_file():
                return path.parent / cand, path
        raise DataError(f"{path}: is an IDX labels file and no images file {other}[.gz] is "
                        "beside it; give the images file.")
    return path, None


def idx_in_dir(root: Path, split: str) -> tuple[Path, Path | None] | None:
    prefix = "t10k" if split == "test" else "train"
    for f in sorted(root.iterdir()):
        m = IDX_IMAGES.match(f.name)
        if m and m["pre"] == prefix and f.is_file():
            return idx_partner(f)
    return None


# ------------------------------------------------------------------------ image folder
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image_folder(root: Path, limit: int | None) -> Raw:
    """``root/<class>/<image>``; classes are the sorted sub-folder names (index = position,
    as torchvision's ImageFolder), images sorted by name within a class; all images must
    have the same size; grey if every image is grey ("L"), else RGB. Needs Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{root}: reading a folder of images needs Pillow, which is not "
                        "installed (pip install pillow), or convert the images to .npz.") from None
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [(p, k) for k, c in enumerate(classes) for p in sorted((root / c).iterdir())
             if p.suffix.lower() in IMAGE_EXT and p.is_file()]
    if not items:
        raise DataError(f"{root}: no images found in class sub-folders.")
    n_total = len(items)
    items = items[:limit]
    imgs = []
    for p, _k in items:
        try:
            with Image.open(p) as im:
                imgs.append((im.mode, im.convert("RGB") if im.mode != "L" else im.copy()))
        except Exception as exc:
            raise DataError(f"{p}: cannot decode the image ({exc}).") from None
    grey = all(mode == "L" for mode, _ in imgs)
    arrays = [np.asarray(im if grey else im.convert("RGB"), np.uint8) for _, im in imgs]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{root}: images have different sizes ({sorted(shapes)[:3]}...); "
                        "resize them to one size first.")
    x = np.stack(arrays)
    y = np.array([k for _, k in items], np.int64)
    return Raw(x=x, layout="NHW" if grey else "NHWC", y=y, format="image-folder",
               source=str(root), files=[p for p, _ in items], num_classes=len(classes),
               class_names=classes, n_total=n_total)


def file_blobs(root: Path) -> dict[str, Blob]:
    return {p.name: Blob.file(p) for p in sorted(root.iterdir()) if p.is_file()}


def is_tar(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return True
    try:
        return path.is_file() and tarfile.is_tarfile(path)
    except READ_ERRORS:
        return False


__all__ = ["Raw", "Blob", "read_npz", "read_cifar_binary", "read_cifar_python", "read_idx",
           "read_image_folder", "sha256_files", "tar_blobs", "file_blobs", "idx_partner",
           "idx_in_dir", "cifar_binary_files", "read_text_names", "is_tar", "check_labels"]
