"""The ops: NumPy/Numba implementations of the ONNX operators (contract: :mod:`.registry`).

Importing the package registers the built-in ops: the modules below register theirs with
explicit ``@register`` decorators when they are imported. :mod:`.registry` imports none of
them (no import cycle); as Python runs this file before any module of the package, whoever
imports ``anasim.ops.registry.resolve`` (the executor, the graph passes) finds a loaded
registry.
"""

from . import elementwise, nn, reduce, resize, tensor  # noqa: F401  (register their ops)
from . import quant  # noqa: F401  (quantization ops)
from . import recurrent  # noqa: F401  (LSTM, GRU, RNN)
