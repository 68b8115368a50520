"""The chip state of an analog simulator as one flat mapping of arrays.

:meth:`AnalogSimulator.state_dict` returns, and :meth:`AnalogSimulator.load_state_dict`
takes, a ``dict`` of NumPy arrays::

    seed, repetition, t_inference              0-d int64 / int64 / float64
    <layer>/group<g>/tile<k>/weight            (n_out, n_in) float32: the effective weights the MVM uses
    <layer>/group<g>/tile<k>/mapping_scale     (n_out,) float32: digital factor of weight scaling ω
    <layer>/group<g>/tile<k>/post_scale        (n_out,) float32: digital factor of drift compensation
    <layer>/group<g>/tile<k>/adc_offset        (n_out,) float32: ADC offset per column  } only with ADC
    <layer>/group<g>/tile<k>/adc_gain          (n_out,) float32: ADC gain per column    } mismatch or INL
    <layer>/group<g>/tile<k>/state/<array>     the programmed device state (tiles with a device
                                               model): target, conductances, drift_param, stuck,
                                               converter_params/<key> (see ProgrammedState)
    <layer>/calibration/<array>                the layer's calibration (only what is set):
                                               weight_clip/group<g> (out_g,), nm_thres, out_bound
                                               0-d, scale, offset (channels,) float32
                                               (anasim.analog.calibration.LayerCalibration)
    batchnorm/<node>/mean, .../var             (channels,) float32: re-estimated running statistics
                                               of a digital BatchNormalization node (calibration)
    calibration_samples                        (2,) int64 [start, stop): the data-set samples
                                               the calibration used (only when calibrated)

``<layer>`` is the ONNX node name escaped by :func:`escape_name` (so it holds no ``/``);
everything after ``state/`` is the device state's own key. The mapping is all there is
to a chip: a simulator of the same model, configuration and seed that loads it computes
the same outputs bit for bit. :mod:`anasim.snapshot` writes it to HDF5.
"""

from __future__ import annotations

import re

META = ("seed", "repetition", "t_inference")
"""The keys that say whose chip it is and when."""
TILE_ARRAYS = ("weight", "mapping_scale", "post_scale")
"""Arrays every tile has, device model or not."""
ADC_ARRAYS = ("adc_offset", "adc_gain")
"""Arrays of the tiles whose [forward] configures ADC mismatch or an INL curve (drawn per chip)."""
STATE = "state/"
"""Prefix of the device-state arrays within a tile."""
CALIBRATION = "calibration/"
"""Prefix of a layer's calibration arrays, after its escaped name."""
CALIBRATION_SAMPLES = "calibration_samples"
"""Key of the [start, stop) range of the samples a calibration used."""
BATCHNORM = "batchnorm/"
"""Prefix of the re-estimated BatchNorm statistics: ``batchnorm/<escaped node>/mean|var``."""


def escape_name(name: str) -> str:
    """An ONNX node name as a key component (injective): ``%`` → ``%25``, ``/`` → ``%2F``,
    a leading ``.`` → ``%2E``, the empty name → ``%00``."""
    out = name.replace("%", "%25").replace("/", "%2F")
    if out.startswith(".") or out == "":
        out = "%2E" + out[1:] if out else "%00"
    return out


def unescape_name(text: str) -> str:
    """Inverse of :func:`escape_name`."""
    if text == "%00":
        return ""
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def tile_prefix(layer: str, group: int, tile: int) -> str:
    """``<escaped layer>/group<g>/tile<k>/``: the start of every key of one tile."""
    return f"{escape_name(layer)}/group{group}/tile{tile}/"


def calibration_prefix(layer: str) -> str:
    """``<escaped layer>/calibration/``: the start of every key of a layer's calibration."""
    return f"{escape_name(layer)}/{CALIBRATION}"
