"""Reading the pickled CIFAR "python version" batches without running pickle code.

A pickle is a program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable and
``REDUCE`` calls it, so ``pickle.load`` on a downloaded file can run ``os.system``.
:class:`RestrictedUnpickler` resolves globals only from :data:`ALLOWED_GLOBALS`, by exact
(module, name); everything else is refused with a :class:`DataError` naming the file and
the global, before anything is called.

The official CIFAR-10/100 python batches (Python 2 ``cPickle``, protocol 2) contain a
dict of byte strings, lists of ints and byte strings, and one ``uint8`` array. The array
is pickled as ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` followed by
``ndarray.__setstate__`` whose state holds ``numpy.dtype('u1', 0, 1)`` (with its own
``__setstate__``) and the raw bytes. Those three globals are all that is needed; NumPy 2
writes the first as ``numpy._core.multiarray._reconstruct`` (a protocol 3/4 re-pickle of
the data by a current NumPy), so that spelling is admitted too. Dicts, lists, tuples,
strings, bytes, ints, floats, booleans and None are built by opcodes and need no global.
Protocol-5 pickles (``numpy._core.numeric._frombuffer``) and Python 3 protocol-2 pickles
of bytes (``_codecs.encode``) are refused: convert such files to ``.npz``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from .preprocessing import DataError

try:  # NumPy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

#: (module, name) -> object: the only globals a CIFAR python pickle may reference.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobalError(DataError):
    """A pickle referenced a global outside :data:`ALLOWED_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file, source: str):
        # encoding="bytes": Python 2 str objects (the dict keys, file names) become bytes,
        # as in the official CIFAR loading snippet; nothing is decoded as text.
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            allowed = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
            raise RefusedGlobalError(
                f"{self.source}: refused to unpickle the global {module}.{name} (a CIFAR "
                f"python batch may only reference {allowed}); the file is not a genuine "
                "CIFAR batch or was re-pickled in an unsupported way (convert it to .npz)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobalError(f"{self.source}: refused a persistent id in the pickle.")


def safe_loads(data: bytes, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any failure is a DataError."""
    if not data:
        raise DataError(f"{source}: the file is empty.")
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{source}: the pickle asks for more memory than is available.") from None
    except Exception as exc:  # untrusted input: every decoding failure is a data error
        what = "truncated" if isinstance(exc, EOFError) else "malformed"
        raise DataError(f"{source}: not a readable pickle ({what}: "
                        f"{type(exc).__name__}: {exc}).") from None
