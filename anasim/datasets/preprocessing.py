"""Preprocessing of raw images into the tensor a model expects (the ``[data]`` section).

The pipeline is fixed and documented, so a result that records ``Preprocessing.to_dict()``
can be reproduced bit for bit. Starting from the raw pixels of the file (any integer or
float dtype), interpreted as N×C×H×W:

1. ``center_crop``: keep the central ``s×s`` window (offset ``(H − s) // 2``, same for W);
2. ``pad``: add ``pad`` pixels of raw value 0 on each side (before any scaling, so a padded
   pixel becomes ``(0·scale − mean) / std`` like every raw 0 does);
3. conversion to ``dtype`` (float32 by default; every following step runs in that dtype);
4. ``channels``: 1 → 3 repeats the grey plane, 3 → 1 takes the ITU-R BT.601 luma
   ``0.299 R + 0.587 G + 0.114 B`` (coefficients rounded to ``dtype``);
5. ``scale``: ``x · scale``. When ``scale`` is ``1/k`` for an integer ``k`` (``1/255``),
   this is computed as the division ``x / k``, the correctly rounded value, identical to
   what ``x / 255`` gives in NumPy or PyTorch; otherwise as ``x * dtype(scale)``;
6. ``mean``/``std``: ``(x − mean_c) / std_c`` per channel ``c``, with ``mean`` and ``std``
   rounded to ``dtype`` (as ``torchvision.transforms.Normalize`` does);
7. ``layout``: N×C×H×W or N×H×W×C, C-contiguous.

Every step is vectorised over the whole array (no per-image Python loop). ``scale`` applies
to every input, whatever its dtype: a float file whose values are already in [0, 1] needs
``scale = 1``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..params import Interval, Section, documented, param
from ..errors import ConfigError, InputError, closest


class DataError(InputError):
    """A data set file is missing, malformed, truncated, unsafe or inconsistent with the
    preprocessing; the message names the file and the problem (an ``InputError``, hence
    also an ``AnasimError`` and a ``ValueError``)."""


INPUT_LAYOUTS = ("auto", "NHW", "NHWC", "NCHW")
LUMA = (0.299, 0.587, 0.114)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _channel_values(positive: bool):
    def check(value: Any) -> str | None:
        values = value if isinstance(value, tuple) else (value,)
        if not values or not all(_is_real(v) and math.isfinite(v) for v in values):
            return check.__doc__.strip().splitlines()[0]
        if positive and not all(v > 0 for v in values):
            return check.__doc__.strip().splitlines()[0]
        return None

    check.__doc__ = ("a finite float > 0 or a non-empty list of them (one per channel)" if positive
                     else "a finite float or a non-empty list of finite floats (one per channel)")
    return check


def _optional_size(value: Any) -> str | None:
    """None or an int in the range [1, 65536]"""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return _optional_size.__doc__
    return None if 1 <= int(value) <= 65536 else _optional_size.__doc__


def _optional_channels(value: Any) -> str | None:
    """None, 1 or 3"""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return _optional_channels.__doc__
    return None if int(value) in (1, 3) else _optional_channels.__doc__


def _as_channel_values(value: Any) -> Any:
    """list/tuple/array of reals -> tuple of floats; real -> float; anything else unchanged."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if all(_is_real(v) for v in value):
            return tuple(float(v) for v in value)
        return tuple(value)
    if _is_real(value):
        return float(value)
    return value


@documented
@dataclass(frozen=True)
class Preprocessing(Section):
    """How raw images become the model's input tensor (see :mod:`anasim.datasets`)."""

    section: ClassVar[str] = "data"

    layout: str = param(
        "NCHW", "Memory layout of the tensor the MODEL expects: N×C×H×W or N×H×W×C. The "
        "layout of the file is given by its format (or by input_layout for .npz).",
        unit="choice", valid=("NCHW", "NHWC"))
    scale: float = param(
        1 / 255, "Factor applied to the raw values after cropping and padding and before "
        "mean/std (x·scale); 1/k for an integer k is computed as the division x/k. Applies to "
        "every input dtype: use 1.0 for float files that are already scaled.",
        unit="1/raw unit", valid=Interval(0.0, None, closed="neither"))
    mean: float | tuple[float, ...] = param(
        0.0, "Value subtracted after scaling: one float for all channels or one per channel "
        "(in the model's channel order).", unit="scaled units", valid=_channel_values(False),
        invalid=("0.5", None, [], [0.1, math.nan], True))
    std: float | tuple[float, ...] = param(
        1.0, "Divisor applied after subtracting mean: one float for all channels or one per "
        "channel; must be > 0.", unit="scaled units", valid=_channel_values(True),
        invalid=("1", None, [], 0.0, [1.0, -1.0], math.inf))
    pad: int = param(
        0, "Zero padding added on each side of H and W, in raw value 0 before scaling (so "
        "padded pixels are normalised like black pixels), after center_crop.",
        unit="px", valid=Interval(0, 4096, kind="int"))
    center_crop: int | None = param(
        None, "Side of the central square window kept before padding (offset (H-s)//2); "
        "None keeps the whole image.", unit="px", valid=_optional_size,
        invalid=(0, -3, 1.5, "32", True))
    channels: int | None = param(
        None, "Force the channel count: 1 -> 3 repeats a grey plane, 3 -> 1 takes the "
        "BT.601 luma 0.299R+0.587G+0.114B; None keeps the file's channels.",
        unit="channels", valid=_optional_channels, invalid=(2, 0, 3.0, "3", True))
    input_layout: str = param(
        "auto", "Layout of x in an .npz file: 'auto' reads 3-D as N×H×W (grey), 4-D as N×H×W×C "
        "when the last axis is 1 or 3, as N×C×H×W when axis 1 is 1 or 3 (neither or both: "
        "error). The other formats have a fixed layout and refuse a contradicting value.",
        unit="choice", valid=INPUT_LAYOUTS)
    dtype: str = param(
        "float32", "Floating-point type of the output and of every arithmetic step.",
        unit="choice", valid=("float32", "float64"))

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = _as_channel_values(getattr(self, name))
            if isinstance(value, tuple) and len(value) == 1 and _is_real(value[0]):
                value = value[0]
            object.__setattr__(self, name, value)
        for name in ("center_crop", "channels"):
            v = getattr(self, name)
            if isinstance(v, np.integer):
                object.__setattr__(self, name, int(v))
        super().__post_init__()

    def check(self) -> None:
        m, s = self.mean, self.std
        if isinstance(m, tuple) and isinstance(s, tuple) and len(m) != len(s):
            self.fail(f"mean has {len(m)} values but std has {len(s)}; give one per channel "
                      "(or a single float).")
        for name, v in (("mean", m), ("std", s)):
            if isinstance(v, tuple) and self.channels is not None and len(v) != self.channels:
                self.fail(f"{name} has {len(v)} values but channels = {self.channels}.")

    # ----------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, data: dict, where: str | None = None) -> "Preprocessing":
        """Build from a dict (a ``[data]`` table); a ``preset`` key starts from that preset
        of :data:`PREPROCESSING_PRESETS` and the other keys override it."""
        if isinstance(data, dict) and "preset" in data:
            data = dict(data)
            base = preset(data.pop("preset"))
            cls.check_keys(data, where)
            return base.replace(**data)
        return super().from_dict(data, where)

    def to_dict(self, only_changed: bool = False) -> dict:
        """Plain dict (lists instead of tuples) that :meth:`from_dict` turns back into an
        equal object; JSON/TOML friendly except ``None`` values (unset)."""
        out = super().to_dict(only_changed)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    # ----------------------------------------------------------------------- applying
    @property
    def divisor(self) -> int | None:
        """``k`` when ``scale`` is ``1/k`` for an integer ``k`` (then x/k is used)."""
        k = round(1.0 / self.scale)
        return k if k >= 1 and 1.0 / k == self.scale else None

    def output_shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed sample given the raw (C, H, W)."""
        if self.center_crop is not None:
            h = w = self.center_crop
        h, w = h + 2 * self.pad, w + 2 * self.pad
        c = self.channels or c
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    def apply(self, raw: np.ndarray, input_layout: str | None = None,
              source: str = "<array>") -> np.ndarray:
        """Preprocess a raw array (N×H×W, N×H×W×C or N×C×H×W, see ``input_layout``).

        Returns a C-contiguous array of ``dtype`` in ``layout``. Errors (bad shape, NaN,
        crop larger than the image, mean/std length not matching the channels) raise
        :class:`DataError` naming ``source``.
        """
        raw = np.asarray(raw)
        nchw, _ = to_nchw(raw, input_layout or self.input_layout, source)
        return self._apply_nchw(nchw, source)

    def _apply_nchw(self, raw: np.ndarray, source: str) -> np.ndarray:
        ft = np.dtype(self.dtype)
        if raw.dtype.kind == "f" and raw.size and not np.isfinite(raw).all():
            bad = int(np.flatnonzero((~np.isfinite(raw.reshape(len(raw), -1))).any(axis=1))[0])
            raise DataError(f"{source}: x contains NaN or infinite values (first in sample {bad}).")
        n, c, h, w = raw.shape
        if (raw.dtype.kind == "f" and self.scale < 1 and raw.size
                and -1.0 <= float(raw.min()) and float(raw.max()) <= 1.0):
            warnings.warn(f"{source}: x is float with values in [-1, 1] but scale = "
                          f"{self.scale:g}; set scale = 1.0 if the data is already scaled.",
                          UserWarning, stacklevel=3)
        if self.center_crop is not None:
            s = self.center_crop
            if s > h or s > w:
                raise DataError(f"{source}: center_crop = {s} is larger than the images "
                                f"({h}×{w}).")
            top, left = (h - s) // 2, (w - s) // 2
            raw = raw[:, :, top:top + s, left:left + s]
        if self.pad:
            p = self.pad
            raw = np.pad(raw, ((0, 0), (0, 0), (p, p), (p, p)))  # raw value 0
        x = np.ascontiguousarray(raw, dtype=ft)
        if self.channels is not None and self.channels != c:
            if c == 1 and self.channels == 3:
                x = np.repeat(x, 3, axis=1)
            elif c == 3 and self.channels == 1:
                r, g, b = (ft.type(v) for v in LUMA)
                x = (x[:, 0:1] * r + x[:, 1:2] * g) + x[:, 2:3] * b
            else:
                raise DataError(f"{source}: cannot convert {c} channels to {self.channels} "
                                "(only 1 -> 3 and 3 -> 1).")
            c = self.channels
        k = self.divisor
        if k is not None:
            if k != 1:
                np.divide(x, ft.type(k), out=x)
        else:
            np.multiply(x, ft.type(self.scale), out=x)
        for name, v in (("mean", self.mean), ("std", self.std)):
            if isinstance(v, tuple) and len(v) != c:
                raise DataError(f"{source}: [data] {name} has {len(v)} values but the "
                                f"preprocessed data has {c} channel{'s' * (c != 1)}.")
        mean = np.asarray(self.mean, ft).reshape(-1, 1, 1)
        std = np.asarray(self.std, ft).reshape(-1, 1, 1)
        if np.any(mean != 0):
            np.subtract(x, mean, out=x)
        if np.any(std != 1):
            np.divide(x, std, out=x)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return x


def to_nchw(raw: np.ndarray, input_layout: str, source: str) -> tuple[np.ndarray, str]:
    """(a view of ``raw`` as N×C×H×W, the layout it was read as), following the
    ``input_layout`` rule (see the field); DataError naming ``source`` if it cannot."""
    if input_layout not in INPUT_LAYOUTS:
        raise ConfigError(f"input_layout must be one of {', '.join(INPUT_LAYOUTS)}; got "
                          f"{input_layout!r}.{closest(str(input_layout), INPUT_LAYOUTS)}")
    if raw.dtype.kind not in "uif":
        raise DataError(f"{source}: x has dtype {raw.dtype}; expected an integer or float "
                        "image array.")
    shape = "×".join(map(str, raw.shape))
    layout = input_layout
    if layout == "auto":
        if raw.ndim == 3:
            layout = "NHW"
        elif raw.ndim == 4:
            last, second = raw.shape[3] in (1, 3), raw.shape[1] in (1, 3)
            if last and not second:
                layout = "NHWC"
            elif second and not last:
                layout = "NCHW"
            else:
                why = "both axis 1 and axis 3 could be" if last else "neither axis 1 nor axis 3 is"
                raise DataError(
                    f"{source}: cannot tell the channel axis of x with shape {shape} ({why} a "
                    "1- or 3-channel axis); set input_layout = 'NHWC' or 'NCHW' in [data].")
        else:
            hint = (" (flattened images? reshape them to N×H×W or N×H×W×C)" if raw.ndim == 2
                    else "")
            raise DataError(f"{source}: x has shape {shape}; expected N×H×W, N×H×W×C or "
                            f"N×C×H×W{hint}.")
    want = 3 if layout == "NHW" else 4
    if raw.ndim != want:
        raise DataError(f"{source}: x has shape {shape}, which does not match input_layout "
                        f"= {layout!r} ({want}-D expected).")
    if raw.shape[0] == 0:
        raise DataError(f"{source}: contains no samples (x has shape {shape}).")
    if 0 in raw.shape:
        raise DataError(f"{source}: x has shape {shape}; images must not be empty.")
    if layout == "NHW":
        return raw[:, None], layout
    if layout == "NHWC":
        return raw.transpose(0, 3, 1, 2), layout
    return raw, layout


#: Named preprocessings of the shared reference models (``../shared/README.md``).
PREPROCESSING_PRESETS: dict[str, Preprocessing] = {
    # ResNet-20/32/44/56 on CIFAR-10: x/255, ImageNet mean/std per channel, NCHW.
    "cifar10": Preprocessing(scale=1 / 255, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225)),
    # Fashion-MNIST models: zero-pad 2 px to 32×32, x/255, (x − 0.2860)/0.3530, N×1×32×32.
    "fmnist32": Preprocessing(scale=1 / 255, mean=0.2860, std=0.3530, pad=2),
    # Same normalisation at the native 28×28.
    "fmnist28": Preprocessing(scale=1 / 255, mean=0.2860, std=0.3530),
    # Raw values as float32, nothing else.
    "none": Preprocessing(scale=1.0),
}


def preset(name: str) -> Preprocessing:
    """The preset ``name`` of :data:`PREPROCESSING_PRESETS` (ConfigError if unknown)."""
    if not isinstance(name, str) or name not in PREPROCESSING_PRESETS:
        hint = closest(str(name), PREPROCESSING_PRESETS)
        raise ConfigError(f"Unknown preprocessing preset {name!r}.{hint} "
                          f"Valid presets: {', '.join(PREPROCESSING_PRESETS)}.")
    return PREPROCESSING_PRESETS[name]


def as_preprocessing(value: Any) -> Preprocessing:
    """Preprocessing from an instance, a preset name, a dict, or None (the default x/255)."""
    if value is None:
        return Preprocessing()
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, str):
        return preset(value)
    if isinstance(value, dict):
        return Preprocessing.from_dict(value)
    raise ConfigError("preprocessing must be a Preprocessing, a preset name or a dict; got "
                      f"{type(value).__name__}.")


__all__ = ["DataError", "Preprocessing", "PREPROCESSING_PRESETS", "preset", "as_preprocessing",
           "to_nchw"]
