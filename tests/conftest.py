"""Shared fixtures: paths of ../shared and data.

Tests find the reference models and data through :func:`shared_path`, under ``../shared``
beside the repository (or ``$ANASIM_SHARED``). A missing folder or file skips the test,
unless ``ANASIM_REQUIRE_SHARED=1`` (CI sets it, ``.ci/run``): then the test fails, naming
the file, so that a checkout without ../shared cannot pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("ANASIM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
REQUIRE_SHARED = os.environ.get("ANASIM_REQUIRE_SHARED", "").strip().lower() not in ("", "0", "false", "no", "off")
MODELS = SHARED / "models"
DATA = SHARED / "data"
GOLDEN = SHARED / "golden"

CIFAR_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
CIFAR_STD = np.array([0.229, 0.224, 0.225], np.float32)


def shared_path(*parts: str) -> Path:
    """Path under ../shared; skip the calling test if it is not there, or fail it when
    ``ANASIM_REQUIRE_SHARED=1``."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        why = f"{SHARED} is absent" if not SHARED.is_dir() else f"{SHARED} has no {Path(*parts)}"
        if REQUIRE_SHARED:
            pytest.fail(f"{p} is missing ({why}), and ANASIM_REQUIRE_SHARED=1 makes that a failure: "
                        "put the reference models and data there, point ANASIM_SHARED at them, or "
                        "unset ANASIM_REQUIRE_SHARED to skip these tests.", pytrace=False)
        pytest.skip(f"{p} not available ({why})")
    return p


def pytest_report_header(config):
    state = "present" if SHARED.is_dir() else "absent"
    mode = "missing files fail (ANASIM_REQUIRE_SHARED=1)" if REQUIRE_SHARED else "missing files skip"
    return f"anasim reference data: {SHARED} ({state}; {mode})"


def cifar10_test(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 test images preprocessed as the shared models expect (N×3×32×32 float32)."""
    d = np.load(shared_path("data", "cifar10_test1000.npz"))
    x, y = d["x"][:n], d["y"][:n]
    x = (x.astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def fmnist_test(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test images preprocessed as the shared models expect (N×1×32×32)."""
    d = np.load(shared_path("data", "fashion_mnist_test.npz"))
    x, y = d["x"][:n], d["y"][:n]
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    x = (x - 0.2860) / 0.3530
    return np.ascontiguousarray(x[:, None]), y


MODEL_DATA = {
    "resnet20_cifar10.onnx": cifar10_test,
    "resnet32_cifar10.onnx": cifar10_test,
    "resnet44_cifar10.onnx": cifar10_test,
    "resnet56_cifar10.onnx": cifar10_test,
    "resnet18_fmnist.onnx": fmnist_test,
    "resnet34_fmnist.onnx": fmnist_test,
    "vgg16_fmnist.onnx": fmnist_test,
    "mobilenet_v2_fmnist.onnx": fmnist_test,
}


def ort_session(path, threads: int = 2):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(autouse=True)
def thread_settings():
    """Every test leaves the thread settings as it found them: Numba's thread count, BLAS's
    (threadpoolctl) and the thread variables of the environment, which ``set_threads`` /
    ``--threads`` change for the whole process."""
    import numba

    from anasim import threads

    names = (threads.ENV,) + threads.BLAS_ENV + threads.IMPORT_ENV
    env = {k: os.environ.get(k) for k in names}
    n_numba = numba.get_num_threads()
    limiter = threads._limiter
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        blas = threadpool_info()
    except ImportError:
        blas = None
    try:
        yield
    finally:
        numba.set_num_threads(n_numba)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if threads._limiter is not limiter:  # set_threads limited BLAS: undo it
            threads._limiter = limiter
            if blas is not None:
                threadpool_limits(limits=blas)
