"""anasim.threads: the one thread setting, the convolutions' Python worker threads, and
results that do not depend on the number of threads."""

from __future__ import annotations

import ast
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim import threads
from anasim.ops.conv import conv
from anasim.ops.conv_geometry import conv_geometry
from thread_helpers import numba_threads, rerun_with_two_threads


def _need_worker_threads():
    if not threads.Blas.available():
        pytest.skip("no OpenBLAS thread control: run_chunks runs in the calling thread by design")


class _CountingPool(ThreadPoolExecutor):
    """The worker pool of :func:`anasim.threads.run_chunks`, counting the workers it starts."""

    def __init__(self):
        super().__init__(max_workers=2, thread_name_prefix="anasim-test")
        self.submits = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submits += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def counting_pool(monkeypatch):
    pool = _CountingPool()
    monkeypatch.setattr(threads, "_POOL", pool)
    monkeypatch.setattr(threads, "_POOL_SIZE", 2)
    yield pool
    pool.shutdown(wait=True)


# ---------------------------------------------------------------------- the worker threads
def test_run_chunks_runs_on_numba_thread_count_workers(request):
    if rerun_with_two_threads(request):
        return
    _need_worker_threads()
    main = threading.get_ident()
    for n in (1, 2):
        seen: dict[int, int] = {}
        barrier = threading.Barrier(n, timeout=30)  # two chunks at once: two workers

        def do_chunk(state, i):
            if i < n:
                barrier.wait()
            seen[i] = threading.get_ident()

        with numba_threads(n):
            assert threads.num_threads() == n
            threads.run_chunks(6, lambda: None, do_chunk)
        assert sorted(seen) == list(range(6))
        idents = set(seen.values())
        assert idents == {main} if n == 1 else (len(idents) == 2 and main not in idents)


def test_run_chunks_reraises_a_worker_error(request):
    if rerun_with_two_threads(request):
        return
    _need_worker_threads()

    def do_chunk(state, i):
        if i == 3:
            raise ValueError("chunk 3")

    with numba_threads(2), pytest.raises(ValueError, match="chunk 3"):
        threads.run_chunks(8, lambda: None, do_chunk)


def _conv_net(rng):
    """Conv(8→16, 3×3) → Relu → Conv(16→16, 3×3, group 4): a blocked and a grouped analog layer."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 16, 16])
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1], group=4)]
    m = helper.make_model(helper.make_graph(nodes, "convs", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    return anasim.load(m)


NOISY = {"forward": {"inp_res": 254, "out_res": 254, "out_bound": 10.0, "out_noise": 0.04, "inp_noise": 0.01,
                     "w_noise": 0.02, "w_noise_type": "additive_constant", "bound_management": "iterative"},
         "mapping": {"max_input_size": 64, "max_output_size": 32}}


def test_conv_results_identical_on_one_and_two_worker_threads(request, counting_pool):
    """The Python worker-thread paths (run_chunks): the digital convolutions
    (Winograd, im2col + GEMM, grouped, depthwise, 1-D) and an analog network's blocked and
    grouped convolution layers give the same bits on 1 and on 2 worker threads, and the
    2-thread runs do share their blocks out among 2 workers."""
    if rerun_with_two_threads(request):
        return
    _need_worker_threads()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 32, 20, 20)).astype(np.float32)  # >= 2 blocks on every path
    digital = [((16, 32, 3, 3), dict(pads=[1, 1, 1, 1])),             # Winograd
               ((16, 32, 3, 3), dict(strides=[2, 2], pads=[0, 1, 1, 0])),  # im2col + GEMM
               ((16, 8, 3, 3), dict(group=4, dilations=[2, 1])),        # grouped GEMM
               ((32, 1, 3, 3), dict(group=32, pads=[1, 1, 1, 1]))]      # depthwise
    weights = [rng.standard_normal(s).astype(np.float32) for s, _ in digital]
    bias = rng.standard_normal(32).astype(np.float32)
    x1, w1 = x.reshape(12, 32, 400), rng.standard_normal((8, 32, 5)).astype(np.float32)

    graph = _conv_net(rng)
    sim = anasim.analog(graph, NOISY, seed=5)
    for layer in sim.layers:
        layer._fused = None  # the unfused paths: im2col row blocks / groups on the worker threads
    xa = rng.standard_normal((24, 8, 16, 16)).astype(np.float32)  # 6144 rows: 2 blocks of conv1

    results, submits = [], []
    for t in (1, 2):
        with numba_threads(t):
            before = counting_pool.submits
            out = []
            for (w_shape, kw), w in zip(digital, weights):
                g = conv_geometry(x.shape, w_shape, **kw)
                out.append(conv(x, w, bias[:w_shape[0]], g))
            out.append(conv(x1, w1, None, conv_geometry(x1.shape, w1.shape, pads=[2, 2])))
            out.append(sim(xa))
            submits.append(counting_pool.submits - before)
            results.append(out)
    assert submits[0] == 0, "one thread: every block in the calling thread"
    # every digital convolution and both analog layers shared their blocks among 2 workers
    assert submits[1] >= 2 * (len(digital) + 1 + 2), submits
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert np.abs(results[0][-1] - graph(xa)).max() > 1e-3  # the analog network is noisy


# ---------------------------------------------------------------------- the setting
def test_worker_env_sets_and_restores_the_blas_variables(monkeypatch):
    for k in threads.BLAS_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with threads.worker_env(3):
        assert all(os.environ[k] == "3" for k in threads.BLAS_ENV)
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert not any(k in os.environ for k in threads.BLAS_ENV if k != "OMP_NUM_THREADS")
    with threads.worker_env(None):
        assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ


def test_env_defaults_from_anasim_num_threads(monkeypatch):
    for k in threads.IMPORT_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # already set: kept
    monkeypatch.setenv(threads.ENV, "3")
    threads.apply_env_defaults()
    assert [os.environ[k] for k in threads.IMPORT_ENV] == ["5", "3", "3", "3"]
    for k in threads.IMPORT_ENV[1:]:
        monkeypatch.delenv(k)
    monkeypatch.setenv(threads.ENV, "all")
    threads.apply_env_defaults()
    assert not any(k in os.environ for k in threads.IMPORT_ENV[1:])


def test_threads_module_is_a_leaf():
    """anasim.threads imports the standard library, Numba/threadpoolctl and anasim.errors
    only, and nothing heavy at import time (``import anasim`` runs it before NumPy loads)."""
    path = Path(threads.__file__)
    top, inner = set(), set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else ["." * node.level + (node.module or "")])
            (top if node in tree.body else inner).update(n.split(".")[0] if not n.startswith(".") else n
                                                         for n in names)
    assert top <= {"__future__", "ctypes", "itertools", "os", "threading", "concurrent", "contextlib",
                   ".errors"}, top
    assert inner <= {"numba", "threadpoolctl"}, inner
