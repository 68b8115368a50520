"""Analog layers: the tile model (:mod:`.tile`), ONNX nodes made analog (:mod:`.layer`),
the chip state as arrays (:mod:`.state`) and the simulator (:mod:`.simulator`).

The top-level function :func:`anasim.analog` (this package's :func:`.simulator.analog`)
shares the package's name: ``anasim.analog(graph, config, seed)`` is the function, and
the modules are imported by name (``from anasim.analog.tile import AnalogMatrix``).
"""

from .simulator import AnalogSimulator, analog
from .tile import AnalogMatrix, PhysicalTile, split_sizes

__all__ = ["AnalogMatrix", "PhysicalTile", "split_sizes", "AnalogSimulator", "analog"]
