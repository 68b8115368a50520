"""Device physics: conductance converters, noise/drift models, drift compensation.

Pure NumPy library code with a small protocol (see :mod:`anasim.devices.base`)::

    from anasim.devices import (build_converter, build_noise_model, build_compensation,
                                build_faults, rng_factory, program_weights, drifted_weights)

    conv = build_converter({"type": "single_pair", "g_max": 25.0})
    model = build_noise_model({"type": "pcm"})
    rngs = rng_factory(seed=0, layer="conv1", tile=(0, 0), repetition=3)
    state = program_weights(w_tile, conv, model, rngs)          # once per repetition
    w_t = drifted_weights(state, 3600.0, conv, model, rngs)     # per t_inference
    comp = build_compensation({"type": "global"})               # or "per_column", "none"
    # the tile runs comp.readout_input(n_in) through its forward pass (with periphery) and
    # reduces the outputs with comp.readout(y); readout_weights is the ideal-periphery shortcut
    ref = comp.readout_weights(state.weights(conv))             # once, after programming
    factor = comp.factor(ref, comp.readout_weights(w_t))        # per t: scalar or (n_out,)

Types are resolved by name from built-in registries (:func:`names`) or, for user
classes, from ``"package.module:ClassName"``; :func:`describe` lists every parameter.
"""

from .base import (
    Component,
    Converter,
    DeviceContext,
    DriftCompensation,
    NoiseModel,
    NoiseModelParams,
    ProgrammedState,
    describe_params,
    drifted_weights,
    program_weights,
)
from .rng import PURPOSES, device_rng, rng_factory, time_key
from .registry import (
    build,
    build_compensation,
    build_converter,
    build_faults,
    build_noise_model,
    describe,
    get_class,
    names,
    register,
)
from . import converters, pcm, reram, generic, compensation  # noqa: E402,F401  (register built-ins)
from .faults import DeviceFaults, FaultParams

__all__ = [
    "Component",
    "Converter",
    "DeviceContext",
    "DriftCompensation",
    "NoiseModel",
    "NoiseModelParams",
    "ProgrammedState",
    "DeviceFaults",
    "FaultParams",
    "PURPOSES",
    "device_rng",
    "rng_factory",
    "time_key",
    "program_weights",
    "drifted_weights",
    "build",
    "build_noise_model",
    "build_converter",
    "build_compensation",
    "build_faults",
    "describe",
    "describe_params",
    "get_class",
    "names",
    "register",
]
