"""``load_dataset`` (format detection) and the :class:`Dataset` it returns."""

from __future__ import annotations

import hashlib
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError, closest
from ..files import check_readable
from .preprocessing import DataError, Preprocessing, as_preprocessing, to_nchw
from .readers import (
    Blob, Raw, check_labels, cifar_binary_files, file_blobs, idx_in_dir, idx_partner, is_tar,
    read_cifar_binary, read_cifar_python, read_idx, read_image_folder, read_npz,
    read_text_names, sha256_files, tar_blobs, IMAGE_EXT,
)

#: Format names accepted by ``load_dataset(format=...)`` (and recorded in ``Dataset.format``).
FORMATS = ("npz", "cifar10-binary", "cifar100-binary", "cifar10-python", "cifar100-python",
           "idx", "image-folder")
SPLITS = ("test", "train")
CIFAR100_LABELS = ("fine", "coarse")

_CIFAR10_BIN = re.compile(r"^(data_batch_\d+|test_batch)\.bin$")
_CIFAR100_BIN = re.compile(r"^(train|test)\.bin$")
_CIFAR10_PY = re.compile(r"^(data_batch_\d+|test_batch)$")
_IDX_NAME = re.compile(r"idx\d[-._]ubyte(\.gz)?$")


@dataclass(eq=False)
class Dataset:
    """A preprocessed data set and where it came from.

    ``x``: the model input (``preprocessing.dtype``, ``preprocessing.layout``, C-contiguous);
    ``y``: int64 labels (N,) or None; ``source``: the path read (``archive:member`` inside
    a tar); ``format``: one of :data:`FORMATS`; ``sha256``: of the file read (several files:
    of their ``sha256sum`` listing, see :func:`anasim.datasets.readers.sha256_files`);
    ``input_layout``: how the stored pixels were interpreted; ``n_total``: samples in the
    file(s) before ``limit``.
    """

    x: np.ndarray
    y: np.ndarray | None
    preprocessing: Preprocessing
    source: str
    format: str
    sha256: str
    input_layout: str
    num_classes: int | None = None
    class_names: list | None = None
    n_total: int | None = None
    limit: int | None = None
    split: str | None = None

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """``(offset, x[offset:offset+b], y[...] or None)`` covering every sample once, in
        order (views, no copies); the last batch may be shorter."""
        if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}.")
        b = int(batch_size)
        for off in range(0, len(self.x), b):
            yield off, self.x[off:off + b], None if self.y is None else self.y[off:off + b]

    def provenance(self) -> dict:
        """What a result file records about the data (JSON-serialisable)."""
        return {"source": self.source, "format": self.format, "sha256": self.sha256,
                "split": self.split, "n": len(self), "n_total": self.n_total,
                "limit": self.limit, "input_layout": self.input_layout,
                "num_classes": self.num_classes, "shape": list(self.x.shape),
                "preprocessing": self.preprocessing.to_dict()}

    @classmethod
    def from_arrays(cls, x: Any, y: Any = None, preprocessing: Any = None, *,
                    source: str = "<array>", num_classes: int | None = None) -> "Dataset":
        """A Dataset from in-memory raw arrays (same rules as an ``.npz`` file; the
        SHA-256 is of the raw x and y: dtype, shape and bytes)."""
        pre = as_preprocessing(preprocessing)
        x = np.asarray(x)
        h = hashlib.sha256()
        for a in (x, None if y is None else np.asarray(y)):
            if a is not None:
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
        raw = Raw(x=x, layout="auto", y=None if y is None else np.asarray(y), format="array",
                  source=source, n_total=len(x) if x.ndim else 0)
        return _finish(raw, pre, h.hexdigest(), None, None, num_classes)


def load_dataset(path: str | Path, preprocessing: Any = None, limit: int | None = None, *,
                 format: str | None = None, split: str = "test", labels: str = "fine",
                 num_classes: int | None = None) -> Dataset:
    """Read a data set file (or directory, or CIFAR ``.tar.gz``) and preprocess it.

    Parameters
    ----------
    path : an ``.npz`` (arrays ``x``, optional ``y``, optional ``class_names``); a CIFAR-10/100
        binary batch (``data_batch_<i>.bin``, ``test_batch.bin``, ``train.bin``,
        ``test.bin``) or python batch (``data_batch_<i>``, ``test_batch``, ``train``,
        ``test``); a directory or tar archive holding them (the official
        ``cifar-*-{binary,python}.tar.gz`` or their extracted folder); an IDX images file
        (``*-images-idx3-ubyte[.gz]``; the labels file beside it is found by name) or a
        directory holding ``t10k-``/``train-`` IDX pairs; a folder ``root/<class>/*.png``
        (needs Pillow).
    preprocessing : a :class:`Preprocessing`, a preset name of ``PREPROCESSING_PRESETS``, a
        dict (``{"preset": "cifar10", "layout": "NHWC"}``) or None (x/255, NCHW).
    limit : read only the first ``limit`` samples (None: all).
    format : force one of :data:`FORMATS` instead of detecting it.
    split : for directories and archives: ``"test"`` (``test_batch``, ``test``, ``t10k-``)
        or ``"train"`` (``data_batch_1..5``, ``train``, ``train-``).
    labels : CIFAR-100 label set, ``"fine"`` (100 classes) or ``"coarse"`` (20).
    num_classes : refuse labels outside ``[0, num_classes)`` (CIFAR knows its own).

    Every problem with the data raises :class:`DataError` naming the file.
    """
    pre = as_preprocessing(preprocessing)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)
                              or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None; got {limit!r}.")
    limit = None if limit is None else int(limit)
    for name, value, choices in (("split", split, SPLITS), ("labels", labels, CIFAR100_LABELS)):
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}."
                              f"{closest(str(value), choices)}")
    if format is not None and format not in FORMATS:
        raise ConfigError(f"Unknown data set format {format!r}.{closest(str(format), FORMATS)} "
                          f"Valid formats: {', '.join(FORMATS)}.")
    if (num_classes is not None and (isinstance(num_classes, bool)
                                     or not isinstance(num_classes, numbers.Integral)
                                     or num_classes < 1)):
        raise ConfigError(f"num_classes must be a positive integer or None; got {num_classes!r}.")
    path = check_readable(path, "data set", DataError, directory_ok=True)
    try:
        raw, files = _read(path, format, split, labels, limit, num_classes)
    except OSError as exc:  # a file inside a folder or archive that cannot be read
        where = exc.filename or path
        raise DataError(f"{where}: cannot read it ({exc.strerror or exc}); check its permissions "
                        "(ls -l) or copy the data somewhere readable.") from None
    return _finish(raw, pre, sha256_files(files), limit, split if _split_applies(path) else None,
                   num_classes)


def _split_applies(path: Path) -> bool:
    return path.is_dir() or is_tar(path)


def _finish(raw: Raw, pre: Preprocessing, sha: str, limit: int | None, split: str | None,
            num_classes: int | None) -> Dataset:
    if raw.layout != "auto" and pre.input_layout not in ("auto", raw.layout):
        raise DataError(f"{raw.source}: the {raw.format} format stores images as "
                        f"{raw.layout}; input_layout = {pre.input_layout!r} does not apply "
                        "(leave it 'auto').")
    layout = raw.layout if raw.layout != "auto" else pre.input_layout
    nchw, layout = to_nchw(raw.x, layout, raw.source)
    y = raw.y
    if y is not None:
        if len(y) != len(raw.x):
            raise DataError(f"{raw.source}: x has {len(raw.x)} samples but y has {len(y)}.")
        known = raw.num_classes
        y = check_labels(y, raw.source, known)
        if num_classes is not None:
            y = check_labels(y, raw.source, num_classes)
    if limit is not None:
        nchw = nchw[:limit]
        y = None if y is None else y[:limit]
    x = pre._apply_nchw(nchw, raw.source)
    return Dataset(x=x, y=y, preprocessing=pre, source=raw.source, format=raw.format,
                   sha256=sha, input_layout=layout,
                   num_classes=num_classes if num_classes is not None else raw.num_classes,
                   class_names=raw.class_names, n_total=raw.n_total, limit=limit, split=split)


# ----------------------------------------------------------------------- detection
def _format_from_names(names: set[str], has_idx: bool) -> str | None:
    if {"test_batch.bin", "data_batch_1.bin"} & names:
        return "cifar10-binary"
    if {"test.bin", "train.bin"} & names:
        return "cifar100-binary"
    if {"test_batch", "data_batch_1"} & names:
        return "cifar10-python"
    if {"test", "train"} & names and "meta" in names:
        return "cifar100-python"
    if has_idx:
        return "idx"
    return None


def _detect_file(path: Path) -> str:
    name = path.name
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise DataError(f"{path}: the file is empty.")
    if head[:4] == b"PK\x03\x04" or name.lower().endswith(".npz"):
        return "npz"
    if _IDX_NAME.search(name):
        return "idx"
    if _CIFAR10_BIN.match(name):
        return "cifar10-binary"
    if _CIFAR100_BIN.match(name):
        return "cifar100-binary"
    if _CIFAR10_PY.match(name):
        return "cifar10-python"
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return "cifar100-python" if name in ("train", "test") else "cifar10-python"
    if head[:2] == b"\x1f\x8b" or (head[:2] == b"\x00\x00" and head[2] in (8, 9, 11, 12, 13, 14)):
        return "idx"
    if name.lower().endswith(".bin"):
        size = path.stat().st_size
        fits = [v for v, rec in ((10, 3073), (100, 3074)) if size % rec == 0]
        if len(fits) == 1:
            return f"cifar{fits[0]}-binary"
    raise DataError(f"{path}: cannot recognise the data set format; name it with --data-format (CLI) or format= "
                    "(load_dataset), one of "
                    f"{', '.join(FORMATS)}.")


def _has_images(root: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXT for d in root.iterdir() if d.is_dir()
               for p in d.iterdir())


def _read(path: Path, fmt: str | None, split: str, labels: str, limit: int | None,
          num_classes: int | None) -> tuple[Raw, list]:
    if path.is_dir():
        roots = [path] + sorted(d for d in path.iterdir() if d.is_dir())
        for root in roots:
            names = {p.name for p in root.iterdir() if p.is_file()}
            found = _format_from_names(names, idx_in_dir(root, split) is not None)
            if fmt is None or fmt == found:
                if found is not None:
                    return _read_collection(root, file_blobs(root), found, split, labels,
                                            limit, num_classes)
        if fmt in (None, "image-folder") and _has_images(path):
            raw = read_image_folder(path, limit)
            return raw, raw.files
        want = f"{fmt} " if fmt else ""
        expect = (("test_batch.bin", "test.bin", "test_batch", "test + meta",
                   "t10k-images-idx3-ubyte[.gz]") if split == "test" else
                  ("data_batch_1.bin", "train.bin", "data_batch_1", "train + meta",
                   "train-images-idx3-ubyte[.gz]"))
        raise DataError(f"{path}: no {want}data set files found for split {split!r} (looked for "
                        f"{', '.join(expect)} here and one folder down, and for class folders "
                        "of images).")
    if is_tar(path):
        blobs = tar_blobs(path)
        found = fmt or _format_from_names(set(blobs), False)
        if found is None or found in ("idx", "image-folder", "npz"):
            raise DataError(f"{path}: no CIFAR batches in this archive (tar archives of the "
                            "official CIFAR-10/100 binary and python versions are supported).")
        raw, _ = _read_collection(path, blobs, found, split, labels, limit, num_classes)
        return raw, [path]
    fmt = fmt or _detect_file(path)
    if fmt == "npz":
        raw = read_npz(path, limit)
        return raw, [path]
    if fmt == "idx":
        images, lab = idx_partner(path)
        raw = read_idx(Blob.file(images), None if lab is None else Blob.file(lab), limit,
                       str(images), num_classes)
        return raw, raw.files
    if fmt == "image-folder":
        raise DataError(f"{path}: the image-folder format needs a directory.")
    siblings = {p.name: p for p in path.parent.iterdir() if p.is_file()}
    blob = Blob.file(path)
    if fmt.endswith("-binary"):
        variant = 10 if fmt.startswith("cifar10-") else 100
        raw = read_cifar_binary([blob], variant, limit, labels, str(path))
        raw.class_names = _binary_names(siblings, variant, labels)
    else:
        meta = siblings.get("batches.meta") or siblings.get("meta")
        raw = read_cifar_python([blob], limit, labels, str(path),
                                None if meta is None else Blob.file(meta))
        _check_variant(raw, fmt, path)
    return raw, [path]


def _binary_names(blobs: dict, variant: int, labels: str) -> list | None:
    name = "batches.meta.txt" if variant == 10 else f"{labels}_label_names.txt"
    blob = blobs.get(name)
    if blob is not None and not isinstance(blob, Blob):
        blob = Blob.file(blob)
    return read_text_names(blob)


def _check_variant(raw: Raw, fmt: str, where: Any) -> None:
    if raw.format != fmt:
        raise DataError(f"{where}: format {fmt!r} was asked for but the file holds "
                        f"{raw.format!r} batches.")


def _read_collection(root: Path, blobs: dict[str, Blob], fmt: str, split: str, labels: str,
                     limit: int | None, num_classes: int | None) -> tuple[Raw, list]:
    where = str(root)
    if fmt.endswith("-binary"):
        variant = 10 if fmt.startswith("cifar10-") else 100
        chosen = cifar_binary_files(blobs, variant, split, where)
        raw = read_cifar_binary(chosen, variant, limit, labels,
                                chosen[0].name if len(chosen) == 1 else where)
        raw.class_names = _binary_names(blobs, variant, labels)
    elif fmt.endswith("-python"):
        variant = 10 if fmt.startswith("cifar10-") else 100
        if variant == 10:
            names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
            meta = blobs.get("batches.meta")
        else:
            names, meta = [split], blobs.get("meta")
        missing = [n for n in names if n not in blobs]
        if missing:
            raise DataError(f"{where}: CIFAR-{variant} python {split} split needs "
                            f"{', '.join(missing)}, which is not there.")
        chosen = [blobs[n] for n in names]
        raw = read_cifar_python(chosen, limit, labels,
                                chosen[0].name if len(chosen) == 1 else where, meta)
        _check_variant(raw, fmt, where)
    elif fmt == "idx":
        pair = idx_in_dir(root, split) if root.is_dir() else None
        if pair is None:
            raise DataError(f"{where}: no {'t10k' if split == 'test' else 'train'}-images-idx3-ubyte"
                            f"[.gz] file for split {split!r}.")
        raw = read_idx(Blob.file(pair[0]), None if pair[1] is None else Blob.file(pair[1]),
                       limit, str(pair[0]), num_classes)
        return raw, raw.files
    elif fmt == "npz":
        raise DataError(f"{where}: give the .npz file itself, not a directory.")
    else:  # image-folder
        raw = read_image_folder(root, limit)
        return raw, raw.files
    files = list(dict.fromkeys(b.path for b in chosen))
    return raw, files
