"""Analog hardware configuration: sections, presets, TOML/JSON files, overrides.

Semantics and parameter names follow IBM aihwkit's inference model
(``IOParameters`` → ``[forward]``, ``MappingParameter`` → ``[mapping]``); the defaults are
the ``ideal`` preset, ``preset("aihwkit")`` gives aihwkit's ``InferenceRPUConfig()``.
The device sections (``[noise_model]``, ``[converter]``, ``[drift_compensation]``,
``[device_faults]``) are parsed by :mod:`anasim.devices`, which this package imports;
the parameter machinery (``Section``, ``param``, ``Interval``) is the leaf module
:mod:`anasim.params`.

Modules: ``schema`` ([forward], [mapping]), ``registry`` (the other sections, typed
access), ``layers`` ([[layers]]), ``presets`` (data), ``text`` (TOML/JSON text),
``analog_config`` (:class:`AnalogConfig`), ``io`` (files, presets, overrides),
``describe`` (``anasim params``); each imports only those before it.

>>> cfg = load_config({"forward": {"out_noise": 0.04, "out_bound": 10.0, "out_res": 254}})
>>> cfg.forward.output_step
0.07874015748031496
"""

from ..params import Interval, ParamRecord, Section, documented, import_class, param
from .analog_config import AnalogConfig, merge_dicts
from .describe import describe_parameters, format_parameters
from .io import apply_overrides, dump_config, load_config, preset
from .layers import LayerConfig, LayerOverride, check_patterns, unmatched_patterns
from .presets import AIHWKIT_FORWARD, AIHWKIT_MAPPING, list_presets
from .registry import (
    DEVICE_SECTIONS,
    SectionAccess,
    TypedFactory,
    register_section,
    registered_sections,
    unregister_section,
)
from .schema import ForwardParameters, MappingParameters, resolution, split_sizes
from .text import dumps_toml, parse_literal
from .calibration import CalibrationParameters  # registers [calibration]
from .bit_slicing import BitSlicingParameters  # registers [bit_slicing]

__all__ = [
    "AnalogConfig", "ForwardParameters", "MappingParameters", "LayerOverride", "LayerConfig",
    "load_config", "dump_config", "apply_overrides", "preset", "list_presets",
    "describe_parameters", "format_parameters", "unmatched_patterns", "check_patterns",
    "register_section", "registered_sections", "unregister_section", "TypedFactory",
    "SectionAccess", "DEVICE_SECTIONS", "AIHWKIT_FORWARD", "AIHWKIT_MAPPING",
    "Section", "param", "Interval", "ParamRecord", "documented", "import_class", "resolution",
    "split_sizes", "parse_literal", "dumps_toml", "merge_dicts", "CalibrationParameters",
    "BitSlicingParameters",
]
