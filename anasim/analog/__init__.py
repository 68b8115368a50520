"""Analog layers: the tile model (:mod:`.tile`), ONNX nodes made analog (:mod:`.layer`) and
the simulator (:mod:`.simulator`).

This package is also the function ``anasim.analog(graph, config, seed=0)`` (the module is
callable), so ``anasim.analog(...)`` and ``anasim.analog.tile`` both work.
"""

import sys
import types

from .tile import AnalogMatrix, PhysicalTile, split_sizes

__all__ = ["AnalogMatrix", "PhysicalTile", "split_sizes", "AnalogSimulator", "analog"]


def analog(graph, config=None, seed: int = 0, **kwargs):
    """Map ``graph``'s Conv/Gemm/MatMul layers onto simulated analog tiles.

    See :func:`anasim.analog.simulator.analog` for the parameters.
    """
    from .simulator import analog as _analog

    return _analog(graph, config, seed, **kwargs)


def __getattr__(name):
    if name == "AnalogSimulator":
        from .simulator import AnalogSimulator

        return AnalogSimulator
    raise AttributeError(name)


class _CallableModule(types.ModuleType):
    """Lets ``anasim.analog(graph, config, seed)`` call :func:`analog`."""

    def __call__(self, graph, config=None, seed: int = 0, **kwargs):
        return analog(graph, config, seed, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
