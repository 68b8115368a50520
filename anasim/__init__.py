"""anasim: simulate analog in-memory-computing inference hardware on trained ONNX networks."""

from .version import __version__

# One setting governs every thread pool (the rule: anasim.threads): ANASIM_NUM_THREADS is
# the default of the BLAS/OpenMP and Numba thread variables, which they read when they load,
# so this runs before anything imports NumPy.
from .threads import apply_env_defaults as _apply_env_defaults  # noqa: E402

_apply_env_defaults()

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
    "analog",
    "load_config",
    "preset",
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


# the function; it shares its name with the package anasim.analog, whose modules are
# imported by name (from anasim.analog.tile import AnalogMatrix)
from .analog.simulator import analog  # noqa: E402


def load_config(source):
    """Load an analog configuration (TOML/JSON path, dict, preset name); see :mod:`anasim.config`."""
    from .config import load_config as _load_config

    return _load_config(source)


def preset(name: str):
    """A named configuration preset: ``ideal``, ``aihwkit``, ``hwa-standard``; see :mod:`anasim.config`."""
    from .config import preset as _preset

    return _preset(name)


def __getattr__(name):
    # Heavier submodules load on first use: anasim.snapshot (h5py), anasim.datasets,
    # anasim.experiment.
    if name in ("snapshot", "datasets", "experiment", "config", "devices"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'anasim' has no attribute {name!r}")
