"""Deterministic random streams for device models (programming, drift, read noise, faults).

Every random number a device model draws comes from a NumPy ``Generator`` on a
``Philox`` bit generator (Philox-4x64-10) whose key and counter are a pure function of
*where* the numbers are used::

    key     = blake2b-128("anasim.devices" | seed | layer | tile | purpose)   -> 2 x uint64
    counter = (0, 0, extra, repetition)                                       -> 4 x uint64

* ``seed``: the experiment seed (any integer; taken mod 2**64).
* ``layer``: the analog layer, as an index (int) or its ONNX node name (str).
* ``tile``: the tile of that layer, an int or a tuple of ints (e.g. (row, column) chunk).
* ``purpose``: what the numbers are for, a name from :data:`PURPOSES` or any other
  string (user models); different purposes never share a key, so their streams are
  unrelated.
* ``repetition``: the Monte-Carlo repetition (a freshly programmed chip).
* ``extra``: a further index, e.g. the inference time: :func:`time_key` turns a time
  in seconds into one (the IEEE-754 bits of ``float(t)``), so the read noise at t depends
  on t alone, not on which other times are evaluated or in which order.

``repetition`` and ``extra`` live in the two high words of Philox's 256-bit counter;
the generator advances the low words, so every (repetition, extra) pair owns 2**128
draws before it could meet another — streams never overlap in practice. The same
tuple always gives the same stream, on any machine, in any process.

These streams are used once per programming / per t_inference on whole arrays
(NumPy); the per-MVM noise of the tile kernels uses :mod:`anasim.kernels.rng`
(Philox-4x32) instead. Purpose codes 16-20 mirror the device entries of
``anasim.kernels.rng.PURPOSE`` so both modules speak the same vocabulary.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Callable

import numpy as np

from ..errors import ConfigError

__all__ = ["PURPOSES", "device_rng", "time_key", "RngFactory", "rng_factory"]

#: Purpose names used by the built-in device models, with their codes.
PURPOSES = {
    "programming": 16,  # programming noise (NoiseModel.program)
    "drift": 17,  # drift parameters, e.g. nu (NoiseModel.drift_parameters)
    "read_noise": 18,  # drift + read noise at t (NoiseModel.drift), extra = time_key(t)
    "faults": 19,  # stuck-at faults (DeviceFaults)
    "d2d": 20,  # device-to-device variation of g_max (DeviceFaults)
}

_MASK64 = (1 << 64) - 1

#: A callable ``rngs(purpose, extra=0) -> numpy.random.Generator``.
RngFactory = Callable[..., np.random.Generator]


def _canon(value, what: str) -> bytes:
    """Canonical bytes of an int, a str or a tuple of ints (for the key hash)."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"device_rng: {what} must be an int, a str or a tuple of ints; got {value!r}.")
    if isinstance(value, (int, np.integer)):
        return b"i" + str(int(value) & _MASK64).encode()
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, tuple):
        return b"t(" + b",".join(_canon(v, what) for v in value) + b")"
    raise ConfigError(f"device_rng: {what} must be an int, a str or a tuple of ints; got {value!r}.")


def _purpose_code(purpose) -> bytes:
    if isinstance(purpose, str) and purpose in PURPOSES:
        return b"p" + str(PURPOSES[purpose]).encode()
    if isinstance(purpose, (int, np.integer)) and not isinstance(purpose, bool):
        return b"p" + str(int(purpose)).encode()
    if isinstance(purpose, str):
        return b"u" + purpose.encode("utf-8")  # user purpose: never equal to a code
    raise ConfigError(f"device_rng: purpose must be a name or an int; got {purpose!r}.")


def _index(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"device_rng: {what} must be a non-negative int; got {value!r}.")
    value = int(value)
    if value < 0 or value > _MASK64:
        raise ConfigError(f"device_rng: {what} must be in [0, 2**64); got {value}.")
    return value


def device_rng(seed, layer, tile, purpose, repetition: int = 0, extra: int = 0) -> np.random.Generator:
    """The random stream of one (seed, layer, tile, purpose, repetition, extra) tuple.

    Returns a fresh ``numpy.random.Generator(numpy.random.Philox(key=..., counter=...))``;
    calling it again with the same arguments gives a generator that draws the same
    numbers. See the module docstring for the key and counter layout.

    Parameters
    ----------
    seed : int. layer : int or str. tile : int or tuple of ints.
    purpose : a name from :data:`PURPOSES`, an int code, or any string.
    repetition, extra : non-negative ints below 2**64.
    """
    h = hashlib.blake2b(digest_size=16, person=b"anasim.devices")
    for part, what in ((seed, "seed"), (layer, "layer"), (tile, "tile")):
        h.update(_canon(part, what) + b"|")
    h.update(_purpose_code(purpose))
    key = np.frombuffer(h.digest(), dtype="<u8").astype(np.uint64)
    counter = np.array([0, 0, _index(extra, "extra"), _index(repetition, "repetition")], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(counter=counter, key=key))


def time_key(t: float) -> int:
    """The ``extra`` index of inference time ``t`` (s): the IEEE-754 bits of ``float(t)``."""
    return struct.unpack("<Q", struct.pack("<d", float(t)))[0]


def rng_factory(seed, layer=0, tile=0, repetition: int = 0) -> RngFactory:
    """Bind (seed, layer, tile, repetition): returns ``rngs(purpose, extra=0) -> Generator``.

    This is the ``rngs`` argument of :func:`anasim.devices.program_weights` and
    :func:`anasim.devices.drifted_weights`.
    """

    def rngs(purpose, extra: int = 0) -> np.random.Generator:
        return device_rng(seed, layer, tile, purpose, repetition, extra)

    rngs.__doc__ = f"device_rng({seed!r}, {layer!r}, {tile!r}, purpose, {repetition!r}, extra)"
    return rngs
