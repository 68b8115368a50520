"""anasim: simulate analog in-memory-computing inference hardware on trained ONNX networks."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    AnasimError,
    ConfigError,
    ExecutionError,
    InputError,
    ModelLoadError,
    UnsupportedOpError,
)

__all__ = [
    "__version__",
    "load",
    "AnasimError",
    "ConfigError",
    "ExecutionError",
    "InputError",
    "ModelLoadError",
    "UnsupportedOpError",
]


def load(model, *, check: bool = True, fold_batchnorm: bool = True, name: str | None = None):
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) into a runnable :class:`Graph`.

    See :func:`anasim.graph.importer.load` for the parameters and errors.
    """
    from .graph.importer import load as _load

    return _load(model, check=check, fold_batchnorm=fold_batchnorm, name=name)
