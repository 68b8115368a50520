"""Circuit-level IR drop (forward.ir_drop_model = "circuit", anasim.analog.ir_circuit).

The reference is a dense nodal solve written here (numpy.linalg.solve on the full
Kirchhoff system of both crossbars of the differential pair), independent of the
line-relaxation solver under test.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import anasim
from anasim.analog.ir_circuit import crossbar_mvm
from anasim.analog.tile import AnalogMatrix, Periphery
from anasim.config import ForwardParameters, describe_parameters, format_parameters
from anasim.errors import ConfigError, ExecutionError

PLAIN = dict(noise_management="none", inp_bound=0.0)  # x̃ = x: the MVM alone


def dense_nodal(x, weight, rg):
    """Column outputs (weight units) of the crossbar pair by a dense solve of KCL.

    Unknowns per crossbar: row-wire voltages u[j, k] and column-wire voltages c[j, k]
    (j input row, k output column); r·G = rg·max(±w, 0); row j driven at its start by
    x_j through one wire segment, open at its end; column k open at its top, through one
    segment into a virtual ground after the last row. Equations multiplied by r."""
    wt = np.asarray(weight, np.float64).T  # (n inputs, m outputs)
    n, m = wt.shape
    out = np.zeros((x.shape[0], m))
    for sign, w in ((1.0, np.maximum(wt, 0)), (-1.0, np.maximum(-wt, 0))):
        a = w * rg
        size = 2 * n * m
        u_ = lambda j, k: j * m + k  # noqa: E731
        c_ = lambda j, k: n * m + j * m + k  # noqa: E731
        A = np.zeros((size, size))
        rhs_unit = np.zeros((size, n))
        for j in range(n):
            for k in range(m):
                u, c = u_(j, k), c_(j, k)
                # row node: left segment (to the driver at k = 0), right segment, cell
                A[u, u] += 1.0
                if k > 0:
                    A[u, u_(j, k - 1)] -= 1.0
                else:
                    rhs_unit[u, j] = 1.0  # driver voltage x_j through one segment
                if k < m - 1:
                    A[u, u] += 1.0
                    A[u, u_(j, k + 1)] -= 1.0
                A[u, u] += a[j, k]
                A[u, c] -= a[j, k]
                # column node: upper segment, lower segment (to ground after the last row), cell
                if j > 0:
                    A[c, c] += 1.0
                    A[c, c_(j - 1, k)] -= 1.0
                A[c, c] += 1.0
                if j < n - 1:
                    A[c, c_(j + 1, k)] -= 1.0
                A[c, c] += a[j, k]
                A[c, u] -= a[j, k]
        sol = np.linalg.solve(A, rhs_unit @ x.T.astype(np.float64))  # (size, B)
        u = sol[: n * m].T.reshape(-1, n, m)
        c = sol[n * m:].T.reshape(-1, n, m)
        out += sign * np.einsum("jk,bjk->bk", w, u - c)
    return out


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _tile(w, **fwd):
    return AnalogMatrix(w, None, ForwardParameters(ir_drop_model="circuit", **PLAIN, **fwd), None)


def test_zero_wire_resistance_is_the_ideal_product():
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (40, 70)).astype(np.float32)
    x = rng.uniform(-1, 1, (13, 70)).astype(np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    y = crossbar_mvm(x, w, 0.0, 5e-6, tol=1e-6, max_iter=1)  # converges in one sweep
    assert y.dtype == np.float32 and y.shape == (13, 40)
    assert _rel(y, exact) < 1e-6
    y_tile = _tile(w, wire_resistance=0.0)(x)
    assert _rel(y_tile, exact) < 1e-6


@pytest.mark.parametrize("rg", [1e-3, 2e-2, 0.3])
def test_small_tile_matches_dense_nodal_solve(rg):
    rng = np.random.default_rng(1)
    w = rng.uniform(-1, 1, (4, 6)).astype(np.float32)  # 4 outputs × 6 inputs
    w[0, :3] = 0.0  # open cells
    x = rng.uniform(-1, 1, (5, 6)).astype(np.float32)
    x[2] = 0.0  # an all-zero input vector
    ref = dense_nodal(x, w, rg)
    y = crossbar_mvm(x, w, rg / 5e-6, 5e-6, tol=1e-10, max_iter=10000)
    assert _rel(y, ref) < 1e-6
    assert np.all(y[2] == 0)
    # the wires matter at these values: the ideal product is farther than the tolerance
    assert _rel(x.astype(np.float64) @ w.T, ref) > 1e-4
    # through the tile (noise management 'none', no DAC): the same numbers
    y_tile = _tile(w, wire_resistance=rg / 5e-6, ir_drop_tol=1e-10, ir_drop_max_iter=10000)(x)
    assert _rel(y_tile, ref) < 1e-6


def test_only_the_product_r_times_g_matters_and_signs_are_symmetric():
    rng = np.random.default_rng(2)
    w = rng.uniform(-1, 1, (8, 9)).astype(np.float32)
    x = rng.uniform(-1, 1, (3, 9)).astype(np.float32)
    a = crossbar_mvm(x, w, 1.0, 1e-3, tol=1e-12, max_iter=10000)
    b = crossbar_mvm(x, w, 100.0, 1e-5, tol=1e-12, max_iter=10000)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # −W: the two crossbars swap, the output changes sign
    np.testing.assert_allclose(crossbar_mvm(x, -w, 1.0, 1e-3, tol=1e-12, max_iter=10000), -a,
                               rtol=1e-6, atol=1e-7)


def _error_at(n, rg, seed=3):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0, 1, (n, n)).astype(np.float32)  # all positive: no cancellation
    x = rng.uniform(0, 1, (4, n)).astype(np.float32)
    y = crossbar_mvm(x, w, rg, 1.0, tol=1e-9, max_iter=10000)
    return _rel(y, x.astype(np.float64) @ w.T)


def test_larger_arrays_and_larger_wire_resistance_lose_more():
    by_size = [_error_at(n, 1e-5) for n in (8, 16, 32, 64, 128)]
    assert all(b > a for a, b in zip(by_size, by_size[1:])), by_size
    by_r = [_error_at(32, rg) for rg in (1e-6, 1e-5, 1e-4, 1e-3)]
    assert all(b > a for a, b in zip(by_r, by_r[1:])), by_r
    assert by_size[0] < 1e-3 < by_size[-1]
    # all-positive weights and inputs: the wires only ever lower the currents
    rng = np.random.default_rng(3)
    w = rng.uniform(0, 1, (16, 16)).astype(np.float32)
    x = rng.uniform(0, 1, (4, 16)).astype(np.float32)
    assert np.all(crossbar_mvm(x, w, 1e-3, 1.0, tol=1e-9, max_iter=10000) < x @ w.T)


def test_non_convergence_is_an_error_naming_tile_sweeps_and_residual():
    rng = np.random.default_rng(4)
    w = rng.uniform(-1, 1, (16, 16)).astype(np.float32)
    x = rng.uniform(-1, 1, (3, 16)).astype(np.float32)
    m = _tile(w, wire_resistance=1e3, ir_drop_max_iter=1)
    with pytest.raises(ExecutionError) as e:
        m(x)
    msg = str(e.value)
    assert "tile 0" in msg and "after 1 sweeps" in msg and "ir_drop_max_iter = 1" in msg
    assert "3 of 3 input vector(s)" in msg and "ir_drop_tol" in msg
    assert re.search(r"change is [0-9.e+-]+ of the input scale", msg)
    # enough sweeps: the same tile converges
    _tile(w, wire_resistance=1e3, ir_drop_max_iter=1000)(x)


def test_periphery_unchanged_around_the_solve():
    """Noise management, DAC, ADC and bound management act as with the plain product: with
    r = 0 the circuit model gives the simple model's (ir_drop = 0) numbers."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((20, 50)) * 0.3).astype(np.float32)
    x = rng.standard_normal((17, 50)).astype(np.float32) * 3
    noisy = dict(inp_res=254, out_res=254, out_bound=2.0, out_noise=0.02, inp_noise=0.01,
                 bound_management="iterative", w_noise=0.01, w_noise_type="pcm_read")
    mapping = type("M", (), {"max_input_size": 32, "max_output_size": 16})()
    simple = AnalogMatrix(w, None, ForwardParameters(**noisy), mapping, key=(1, 2))
    circuit = AnalogMatrix(w, None, ForwardParameters(**noisy, ir_drop_model="circuit"), mapping, key=(1, 2))
    a, b = simple(x), circuit(x)
    # ADC steps: a value on a step boundary may move one step under float rounding
    step = ForwardParameters(**noisy).output_step
    assert np.mean(np.isclose(a, b, rtol=1e-5, atol=1e-6)) > 0.98
    assert np.abs(a - b).max() <= 2 * step * 16  # at most a step or two, times the input scale
    # with wires the outputs move (and bound management still runs)
    c = AnalogMatrix(w, None, ForwardParameters(**noisy, ir_drop_model="circuit", wire_resistance=50.0),
                     mapping, key=(1, 2))(x)
    assert np.abs(c - a).max() > 10 * step


def test_config_validation():
    ForwardParameters(ir_drop_model="circuit", wire_resistance=0.35)
    ForwardParameters(ir_drop_model="CIRCUIT")  # choices are matched loosely, as the others
    with pytest.raises(ConfigError, match=r"'ir_drop_model'.*'simple', 'circuit'"):
        ForwardParameters(ir_drop_model="spice")
    with pytest.raises(ConfigError, match=r"'wire_resistance'.*\[0\.0, inf\)"):
        ForwardParameters(ir_drop_model="circuit", wire_resistance=-1.0)
    with pytest.raises(ConfigError, match=r"'g_max_siemens'"):
        ForwardParameters(ir_drop_model="circuit", g_max_siemens=0.0)
    with pytest.raises(ConfigError, match=r"'ir_drop_tol'.*\[1e-14, 0\.1\]"):
        ForwardParameters(ir_drop_model="circuit", ir_drop_tol=0.5)
    with pytest.raises(ConfigError, match=r"'ir_drop_max_iter'.*int"):
        ForwardParameters(ir_drop_model="circuit", ir_drop_max_iter=0)
    # combinations that make no sense
    with pytest.raises(ConfigError, match=r"replaces aihwkit's simple.*set ir_drop = 0"):
        ForwardParameters(ir_drop_model="circuit", ir_drop=1.0)
    with pytest.raises(ConfigError, match=r"wire_resistance = 0.35 has no effect.*'simple'"):
        ForwardParameters(wire_resistance=0.35)
    # and for aihwkit-like objects read by the tile model
    import types

    with pytest.raises(ConfigError, match="ir_drop"):
        Periphery.from_params(types.SimpleNamespace(ir_drop_model="circuit", ir_drop=1.0))
    with pytest.raises(ValueError, match="ir_drop_model"):
        Periphery.from_params(types.SimpleNamespace(ir_drop_model="nodal"))
    assert not Periphery.from_params(object()).ir_circuit
    # ideal only with ideal wires
    assert ForwardParameters(ir_drop_model="circuit").is_ideal
    assert not ForwardParameters(ir_drop_model="circuit", wire_resistance=0.35).is_ideal
    # in `anasim params`, with units
    text = format_parameters(describe_parameters("forward"))
    for name, unit in [("ir_drop_model", "choice"), ("wire_resistance", "Ω"), ("g_max_siemens", "S"),
                       ("ir_drop_tol", "1"), ("ir_drop_max_iter", "sweeps")]:
        assert re.search(rf"{name} = .*\[{unit}\]", text), name
    # through a configuration file's dict
    cfg = anasim.config.load_config({"forward": {"ir_drop_model": "circuit", "wire_resistance": 1.0}})
    assert cfg.forward.ir_drop_model == "circuit"


def _small_cnn(rng):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w1 = (rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 6 * 25)) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "small", [x], [y], inits)
    return anasim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_network_through_the_simulator():
    rng = np.random.default_rng(6)
    g = _small_cnn(rng)
    x = rng.standard_normal((7, 3, 5, 5)).astype(np.float32)
    base = {"inp_res": 254, "out_res": 254, "out_bound": 10.0, "bound_management": "iterative"}
    simple = anasim.analog(g, {"forward": {**base, "ir_drop": 0.0}}, seed=1)
    circuit = anasim.analog(g, {"forward": {**base, "ir_drop_model": "circuit", "wire_resistance": 0.0}}, seed=1)
    assert all(layer._fused is None for layer in circuit.layers)  # the fused conv does not serve it
    ys, yc = simple(x), circuit(x)
    np.testing.assert_allclose(yc, ys, rtol=1e-5, atol=2e-2)  # an ADC step at most, rarely
    assert np.mean(np.isclose(yc, ys, rtol=1e-5, atol=1e-5)) > 0.98
    # ideal forward: r = 0 equals the digital graph
    ideal = anasim.analog(g, {"forward": {"ir_drop_model": "circuit"}})
    np.testing.assert_allclose(ideal(x), g(x), rtol=1e-5, atol=1e-5)
    # resistive wires change the result, more with more resistance
    errs = []
    for r in (20.0, 200.0):
        sim = anasim.analog(g, {"forward": {"ir_drop_model": "circuit", "wire_resistance": r}})
        errs.append(_rel(sim(x), g(x).astype(np.float64)))
    assert 1e-5 < errs[0] < errs[1]


def test_gpu_path_refuses_the_circuit_model():
    from anasim.analog.tile_cuda import CudaAnalogMatrix

    m = _tile(np.ones((2, 3), np.float32), wire_resistance=0.35)
    with pytest.raises(ConfigError, match="not available on the GPU path yet.*device='cpu'"):
        CudaAnalogMatrix(m)
