"""Named configurations: ``ideal``, ``aihwkit`` and ``hwa-standard``.

Every value is written out in full, with the aihwkit source file it comes from, so a
preset does not change if anasim's defaults do. Sources (IBM/aihwkit, main branch,
read for aihwkit 1.0.x; file paths relative to ``src/aihwkit/``):

* ``simulator/parameters/io.py`` — ``IOParameters`` field defaults;
* ``simulator/parameters/mapping.py`` — ``MappingParameter`` field defaults;
* ``simulator/configs/configs.py`` — ``InferenceRPUConfig``: ``forward =
  IOParameters()`` (plain defaults, nothing changed), ``mapping = MappingParameter()``
  (inherited from ``MappableRPU``), ``noise_model = PCMLikeNoiseModel()``,
  ``drift_compensation = GlobalDriftCompensation()``;
* ``simulator/presets/inference.py`` — ``StandardHWATrainingPreset`` (forward
  ``PresetIOParameters(...)`` with ten fields changed, its own ``MappingParameter``);
* ``simulator/presets/utils.py`` — ``PresetIOParameters`` (the class those ten fields
  are changed on; it contributes ``inp_sto_round = False``).

:data:`AIHWKIT_FORWARD` and :data:`AIHWKIT_MAPPING` are the one written copy of aihwkit's
``IOParameters()`` / ``MappingParameter()`` defaults in anasim: the ``aihwkit`` preset is
made of them, and the tile model (``anasim.analog.tile.Periphery.from_params``) falls back
on them for a field an aihwkit-like parameter object does not have.

A preset is data only (this module does not build an ``AnalogConfig``; :func:`preset` is
in :mod:`anasim.config.io`). Its sections must all be known: a preset naming a section
that is not registered is an error, never silently dropped.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass

from ..errors import ConfigError, closest
from .registry import BUILTIN, registered_sections
from .schema import IR_DROP_G_RATIO

# aihwkit IOParameters() defaults — src/aihwkit/simulator/parameters/io.py
AIHWKIT_FORWARD = types.MappingProxyType({
    "is_perfect": False,                 # io.py: is_perfect: bool = False
    "inp_bound": 1.0,                    # io.py: inp_bound: float = 1.0
    "inp_res": 1 / (2**7 - 2),           # io.py: inp_res: float = 1 / (2**7 - 2)  (7-bit DAC, 126 steps)
    "inp_noise": 0.0,                    # io.py: inp_noise: float = 0.0
    "inp_sto_round": False,              # io.py: inp_sto_round: bool = False
    "out_bound": 12.0,                   # io.py: out_bound: float = 12.0
    "out_res": 1 / (2**9 - 2),           # io.py: out_res: float = 1 / (2**9 - 2)  (9-bit ADC, 510 steps)
    "out_noise": 0.06,                   # io.py: out_noise: float = 0.06
    "out_sto_round": False,              # io.py: out_sto_round: bool = False
    "w_noise": 0.0,                      # io.py: w_noise: float = 0.0
    "w_noise_type": "none",              # io.py: w_noise_type = WeightNoiseType.NONE
    "ir_drop": 0.0,                      # io.py: ir_drop: float = 0.0
    "ir_drop_g_ratio": IR_DROP_G_RATIO,  # io.py: ir_drop_g_ratio: float = 1.0 / 0.35 / 5e-6
    "out_nonlinearity": 0.0,             # io.py: out_nonlinearity: float = 0.0
    "noise_management": "abs_max",       # io.py: noise_management = NoiseManagementType.ABS_MAX
    "nm_thres": 0.0,                     # io.py: nm_thres: float = 0.0
    "bound_management": "iterative",     # io.py: bound_management = BoundManagementType.ITERATIVE
    "max_bm_factor": 1000,               # io.py: max_bm_factor: int = 1000
    "max_bm_res": 0.25,                  # io.py: max_bm_res: float = 0.25
    "bm_test_negative_bound": True,      # io.py: bm_test_negative_bound: bool = True
    # (anasim only) aihwkit has only the simple IR-drop model; the circuit model's fields
    # at values that leave it off (also the tile model's fallback for aihwkit objects)
    "ir_drop_model": "simple",
    "wire_resistance": 0.0,
    "g_max_siemens": 5e-6,               # the 5 µS that ir_drop_g_ratio assumes
    "ir_drop_tol": 1e-6,
    "ir_drop_max_iter": 200,
    # (anasim only) ADC mismatch and INL, off
    "adc_gain_std": 0.0,
    "adc_offset_std": 0.0,
    "adc_inl": (),
})

# aihwkit MappingParameter() defaults — src/aihwkit/simulator/parameters/mapping.py
AIHWKIT_MAPPING = types.MappingProxyType({
    "max_input_size": 512,               # mapping.py: max_input_size: int = 512
    "max_output_size": 512,              # mapping.py: max_output_size: int = 512
    "digital_bias": True,                # mapping.py: digital_bias: bool = True
    "weight_scaling_omega": 0.0,         # mapping.py: weight_scaling_omega: float = 0.0
    "weight_scaling_columnwise": False,  # mapping.py: weight_scaling_columnwise: bool = False
    "fold_batchnorm": False,             # (anasim only) aihwkit keeps an unfused BatchNorm digital
})

# StandardHWATrainingPreset — src/aihwkit/simulator/presets/inference.py
_HWA_STANDARD_IO = dict(
    AIHWKIT_FORWARD,
    inp_sto_round=False,                 # presets/utils.py: PresetIOParameters.inp_sto_round = False
    inp_res=254.0,                       # inference.py: PresetIOParameters(inp_res=254.0, ...)
    out_res=254.0,                       # inference.py: out_res=254.0
    bound_management="none",             # inference.py: bound_management=BoundManagementType.NONE
    noise_management="constant",         # inference.py: noise_management=NoiseManagementType.CONSTANT
    nm_thres=1.0,                        # inference.py: nm_thres=1.0
    w_noise=0.0175,                      # inference.py: w_noise=0.0175
    w_noise_type="pcm_read",             # inference.py: w_noise_type=WeightNoiseType.PCM_READ
    ir_drop=1.0,                         # inference.py: ir_drop=1.0
    out_noise=0.04,                      # inference.py: out_noise=0.04
    out_bound=10.0,                      # inference.py: out_bound=10.0
)
_HWA_STANDARD_MAPPING = {
    "max_input_size": 512,               # inference.py: MappingParameter(max_input_size=512, ...)
    "max_output_size": 0,                # inference.py: max_output_size=0 (no split along outputs)
    "digital_bias": True,                # inference.py: digital_bias=True
    "weight_scaling_omega": 1.0,         # inference.py: weight_scaling_omega=1.0
    "weight_scaling_columnwise": True,   # inference.py: weight_scaling_columnwise=True
    "fold_batchnorm": False,             # (anasim only) as aihwkit
}
# InferenceRPUConfig / StandardHWATrainingPreset: noise_model = PCMLikeNoiseModel(),
# drift_compensation = GlobalDriftCompensation() — src/aihwkit/simulator/configs/configs.py
_AIHWKIT_DEVICES = {"noise_model": {"type": "pcm"}, "drift_compensation": {"type": "global"}}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    data: dict


PRESETS: dict[str, Preset] = {
    p.name: p for p in [
        Preset("ideal",
               "No non-idealities: no DAC/ADC quantization, no noise, no clipping, no IR "
               "drop, ideal devices; the analog result equals the digital graph (the default).",
               {}),
        Preset("aihwkit",
               "aihwkit InferenceRPUConfig() defaults: IOParameters() forward (7-bit DAC, 9-bit "
               "ADC, out_bound 12, out_noise 0.06, abs_max noise and iterative bound "
               "management), MappingParameter() (512×512 tiles, digital bias, no weight "
               "scaling), BatchNorm kept digital, PCM noise model, global drift compensation.",
               {"forward": dict(AIHWKIT_FORWARD), "mapping": dict(AIHWKIT_MAPPING), **_AIHWKIT_DEVICES}),
        Preset("hwa-standard",
               "Forward/mapping of aihwkit's StandardHWATrainingPreset (Rasch et al. 2023): "
               "8-bit DAC/ADC (254 steps), out_bound 10, out_noise 0.04, PCM read noise 0.0175, "
               "IR drop 1, constant noise management (nm_thres 1) without bound management, "
               "columnwise weight scaling to 1, 512-row tiles, PCM noise, global drift "
               "compensation. aihwkit pairs it with learned per-layer input ranges, which "
               "anasim does not model: inputs are used as they are, clipped to ±1.",
               {"forward": _HWA_STANDARD_IO, "mapping": _HWA_STANDARD_MAPPING, **_AIHWKIT_DEVICES}),
    ]
}


def preset_key(name: str) -> str:
    """A preset name as :data:`PRESETS` spells it (case, ``_`` for ``-`` and surrounding
    blanks forgiven)."""
    return name.strip().lower().replace("_", "-")


def list_presets() -> dict[str, str]:
    """``{name: description}`` of every preset."""
    return {name: p.description for name, p in PRESETS.items()}


def preset_dict(name: str) -> dict:
    """The preset as a configuration dict (a copy). A section of the preset that is not
    registered raises ConfigError naming it (it would otherwise be lost)."""
    if not isinstance(name, str) or preset_key(name) not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}.{closest(str(name), PRESETS)} "
                          f"Available presets: {', '.join(PRESETS)}.")
    data = copy.deepcopy(PRESETS[preset_key(name)].data)
    entries = registered_sections()
    unknown = [k for k in data if k not in BUILTIN and k not in entries]
    if unknown:
        raise ConfigError(
            f"Preset {name!r} has section(s) {', '.join(repr(k) for k in unknown)} that are not "
            f"registered (register them with anasim.config.register_section before using the "
            f"preset). Registered sections: {', '.join(entries)}.")
    return data
