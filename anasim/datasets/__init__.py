"""Reading data sets safely and preprocessing them reproducibly.

>>> from anasim.datasets import load_dataset, PREPROCESSING_PRESETS
>>> ds = load_dataset("cifar10_test1000.npz", PREPROCESSING_PRESETS["cifar10"])  # doctest: +SKIP
>>> for offset, xb, yb in ds.batches(256): ...                                    # doctest: +SKIP

Formats (detected from the content and the file name, or forced with ``format=``):

* ``npz``: arrays ``x`` (images; integer or float dtype; N×H×W, N×H×W×C or N×C×H×W, see
  ``Preprocessing.input_layout``), optional ``y`` (integer labels, N or N×1) and
  ``class_names`` (unicode strings). Parsed with NumPy's ``.npy`` header reader, never
  unpickled; ``limit`` reads only the first rows.
* ``cifar10-binary`` / ``cifar100-binary``: the official binary batches (records of 1 or 2
  label bytes and 3072 pixel bytes in R, G, B planes), a file, a directory, or the official
  ``.tar.gz`` (read in memory, nothing extracted).
* ``cifar10-python`` / ``cifar100-python``: the official pickled batches, read with a
  restricted unpickler (:mod:`anasim.datasets.safe_pickle`, ``ALLOWED_GLOBALS``).
* ``idx``: MNIST/Fashion-MNIST ``*-images-idx3-ubyte[.gz]`` with the ``*-labels-idx1-ubyte[.gz]``
  beside it, or a directory holding ``t10k-`` (split "test") / ``train-`` (split "train") pairs.
* ``image-folder``: ``root/<class>/<image>`` (needs Pillow).

Every problem with a file raises :class:`DataError` (an ``InputError``) naming the file.
"""

from .core import FORMATS, SPLITS, Dataset, load_dataset
from .preprocessing import (
    PREPROCESSING_PRESETS, DataError, Preprocessing, as_preprocessing, preset,
)
from .safe_pickle import ALLOWED_GLOBALS, RefusedGlobalError, RestrictedUnpickler, safe_loads

__all__ = [
    "Preprocessing", "Dataset", "load_dataset", "PREPROCESSING_PRESETS", "DataError",
    "FORMATS", "SPLITS", "preset", "as_preprocessing", "ALLOWED_GLOBALS",
    "RefusedGlobalError", "RestrictedUnpickler", "safe_loads",
]
