"""Analog hardware configuration: sections, presets, TOML/JSON files, overrides.

Semantics and parameter names follow IBM aihwkit's inference model
(``IOParameters`` → ``[forward]``, ``MappingParameter`` → ``[mapping]``); the defaults are
the ``ideal`` preset, ``preset("aihwkit")`` gives aihwkit's ``InferenceRPUConfig()``.

>>> cfg = load_config({"forward": {"out_noise": 0.04, "out_bound": 10.0, "out_res": 254}})
>>> cfg.forward.output_step
0.07874015748031496
"""

from .analog_config import AnalogConfig, merge_dicts
from .describe import describe_parameters, format_parameters
from .io import apply_overrides, dump_config, dumps_toml, load_config, parse_literal
from .layers import LayerConfig, LayerOverride, check_patterns, unmatched_patterns
from .params import Interval, ParamRecord, Section, documented, param
from .presets import list_presets, preset
from .registry import TypedFactory, register_section, registered_sections, unregister_section
from .schema import ForwardParameters, MappingParameters, resolution, split_sizes

__all__ = [
    "AnalogConfig", "ForwardParameters", "MappingParameters", "LayerOverride", "LayerConfig",
    "load_config", "dump_config", "apply_overrides", "preset", "list_presets",
    "describe_parameters", "format_parameters", "unmatched_patterns", "check_patterns",
    "register_section", "registered_sections", "unregister_section", "TypedFactory",
    "Section", "param", "Interval", "ParamRecord", "documented", "resolution", "split_sizes",
    "parse_literal", "dumps_toml", "merge_dicts",
]
