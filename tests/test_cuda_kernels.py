"""CUDA kernels (:mod:`anasim.kernels.cuda`) and :class:`CudaAnalogMatrix` against their CPU twins.

Three groups, so that the suite checks the GPU code on machines without a GPU:

* ``test_sim_*`` run under Numba's CUDA simulator. The simulator must be switched on
  before Numba is imported, so :func:`test_simulator_suite` runs them in a child pytest
  process with ``NUMBA_ENABLE_CUDASIM=1`` (they run directly when the whole session has
  that variable set, and are skipped otherwise). Sizes are tiny: the simulator runs
  one Python thread per CUDA thread.
* :func:`test_ptx_has_no_contracted_fma` compiles the kernels to PTX with NVVM (no GPU
  needed) in a child process and checks that no float32 product was fused into an FMA
  (numba.cuda passes ``-fma=1`` to NVVM whatever ``fastmath`` says) and that no float64
  one was either: the normal tails use anasim's own logarithm (``_log_odd_rn``, products
  through ``mul.rn``), not libdevice's ``log``, whose polynomial NVVM fuses.
* ``test_gpu_*`` need a real GPU (``numba.cuda.is_available()`` without the simulator):
  larger sizes, bit-exactness on dyadic data, and a throughput print.

Exact comparisons use dyadic data (weights k/64, DAC step 1/64) where every float32
MVM sum is exact whatever the summation order, as ``test_tile_properties`` does.
"""

from __future__ import annotations

import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
from cuda_helpers import gpu_only, run_ptx_script, run_simulator_suite, sim_only

try:  # a module global, so that the simulator can swap it inside kernels defined here
    from numba import cuda
except ImportError:  # pragma: no cover
    cuda = None

# ---------------------------------------------------------------------- helpers


def fwd(**kw):
    """aihwkit IOParameters defaults (as InferenceRPUConfig sets them), overridden by kw."""
    base = dict(
        is_perfect=False, inp_res=1 / 128, inp_bound=1.0, inp_noise=0.0, inp_sto_round=False,
        out_res=1 / 512, out_bound=8.0, out_noise=0.05, out_sto_round=False, w_noise=0.0,
        w_noise_type="none", ir_drop=0.0, ir_drop_g_ratio=1 / 0.35 / 5e-6, out_nonlinearity=0.0,
        noise_management="abs_max", nm_thres=0.0, bound_management="iterative",
        max_bm_factor=1000, max_bm_res=0.25, bm_test_negative_bound=True,
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


def mapping(**kw):
    base = dict(max_input_size=512, max_output_size=512, digital_bias=True,
                weight_scaling_omega=0.0, weight_scaling_columnwise=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


def dyadic(rng, shape, scale=64):
    """Values k/scale, |k| <= scale: products and sums are exact in float32."""
    return (rng.integers(-scale, scale + 1, size=shape) / scale).astype(np.float32)


def _tiny_x(rng, m=5, k=9):
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[2] = 0.0  # abs_max == 0: the exact-zero short cut
    x[3] = -np.abs(x[3]) - 0.1  # max < 0: the short cut for noise_management="max"
    return x


# ---------------------------------------------------------------------- launchers


def test_simulator_suite():
    """Run the ``test_sim_*`` tests of this file under the CUDA simulator (child process)."""
    run_simulator_suite(__file__, timeout=300)


_PTX_SCRIPT = textwrap.dedent(r'''
    import math, sys, types
    from numba.cuda.cudadrv import nvvm
    if not nvvm.is_available():
        print("SKIP: NVVM (libnvvm) not found"); sys.exit(0)
    from numba import cuda
    if not cuda.is_available():
        # compiling device functions asks the current device for its compute capability
        import numba.cuda.dispatcher as d
        d.get_current_device = lambda: types.SimpleNamespace(compute_capability=(8, 0))
    from anasim.kernels import cuda as K
    F2, F1, I1, B1 = "float32[:, ::1]", "float32[::1]", "int64[::1]", "boolean[::1]"
    sigs = {
        "_prepare_kernel": f"void({F2}, int64, int64, float32, float32, float32, float32, boolean, "
            f"float32, int64, {I1}, uint64, uint64, uint64, uint64, boolean, boolean, boolean, "
            f"{F2}, {F1}, {B1}, {F1}, {F2}, {F2}, {F2})",
        "_finalize_kernel": f"void({F2}, {B1}, {F2}, {F2}, {F2}, {F1}, float32, float32, boolean, "
            f"boolean, boolean, {F1}, float32, {F1}, boolean, boolean, int64, float32, float32, "
            f"float32, {I1}, int64, uint64, uint64, uint64, uint64, uint64, uint64, {B1}, boolean, "
            f"{F1}, float32, {F1}, {F1}, {F2}, int64, boolean, {F1}, {F1}, {F2})",
        "_accumulate_kernel": f"void({F2}, {F1}, float32, {F1}, {F1}, {F2}, int64)",
        "_input_cycle_kernel": f"void({F2}, float32, float32, int64, int64, int64, boolean, {F2})",
    }
    def ptx(fn, sig):
        return cuda.compile_ptx(fn, sig, cc=(8, 0))[0]
    def k_log(out, w):
        out[0] = math.log(out[1])
    def k_normal(out, w):
        out[0] = K._normal_rn(w[0])
    def k_contract(out, w):
        out[0] = out[1] * out[2] + out[3]
    probe = "void(float64[::1], uint64[::1])"
    # controls: NVVM does fuse a plain a*b+c and libdevice's log, so a count of 0 below means
    # the products really were kept apart, not that this check cannot see an FMA
    n_log = ptx(k_log, probe).count("fma.rn.f64")
    contracted = "fma.rn.f64" in ptx(k_contract, probe)
    n_norm = ptx(k_normal, probe).count("fma.rn.f64")
    print("libdevice_log_fma", n_log, "control_contracted", contracted, "normal_fma", n_norm)
    assert n_log > 0 and contracted, "the FMA probe no longer sees NVVM's contraction"
    assert n_norm == 0, "the normal transform (anasim's own log and quantile) was fused"
    for name, sig in sigs.items():
        p = ptx(getattr(K, name).py_func, sig)
        f32, f64 = p.count("fma.rn.f32") + p.count("fma.rn.ftz.f32"), p.count("fma.rn.f64")
        print(name, "fma.f32", f32, "fma.f64", f64, "mul.rn.f32", p.count("mul.rn.f32"))
        assert f32 == 0, name + ": a float32 product was contracted into an FMA"
        assert f64 == 0, name + ": a float64 product was contracted into an FMA"
    assert "cvt.rni.f32.f32" in ptx(K._prepare_kernel.py_func, sigs["_prepare_kernel"])
    others = {  # data movement and the fallback matmul: must compile
        "_matmul_nt_kernel": f"void({F2}, int64, {F2}, {F2})",
        "_gather_rows_kernel": f"void({F2}, {I1}, int64, {F2})",
        "_scatter_rows_kernel": f"void({F2}, {I1}, {F2}, {F1}, {F1})",
        "_add_bias_kernel": f"void({F2}, {F1})",
        "_append_ones_kernel": f"void({F2}, {F2})",
        "_fill_kernel": f"void({F1}, float32)",
        "_fill2_kernel": f"void({F2}, float32)",
    }
    for name, sig in others.items():
        ptx(getattr(K, name).py_func, sig)
    print("PTX OK")
''')


def test_ptx_has_no_contracted_fma():
    """NVVM contracts a*b+c by default; the kernels' products must stay unfused."""
    run_ptx_script(_PTX_SCRIPT)


# ---------------------------------------------------------------------- simulator: kernels

PREP_CASES = [
    dict(res=1 / 64),
    dict(res=1 / 64, sto_round=True),
    dict(inp_noise=0.1, want_norm=True, want_sq=True, want_ir=True),
    dict(nm_type=2, res=1 / 64, want_norm=True),  # NM_MAX
    dict(nm_type=3, nm_thres=2.0, red=4.0, rnd=2, res=0.01),  # NM_CONSTANT, bound management round
    dict(nm_type=0, bound=0.5, want_ir=True),  # NM_NONE
    dict(nm_thres=0.5, res=0.01, inp_noise=0.05, sto_round=True, want_norm=True, want_sq=True, rnd=1),
]


@sim_only
@pytest.mark.parametrize("kw", PREP_CASES, ids=[",".join(k for k in d) for d in PREP_CASES])
def test_sim_prepare_input_equals_cpu(kw):
    from anasim.kernels import cpu
    from anasim.kernels import cuda as G

    x = _tiny_x(np.random.default_rng(1))
    rows = np.arange(5, dtype=np.int64) * 3 + 1
    a = cpu.prepare_input(x, 1, 7, rows, noise_key=(5, 6), sto_key=(7, 8), **kw)
    b = G.prepare_input(x, 1, 7, rows, noise_key=(5, 6), sto_key=(7, 8), **kw)
    assert sorted(a) == sorted(b)
    live = ~a["skip"]  # the CPU leaves x̃², |x̃|, x̃_ir of skipped rows unwritten
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if k in ("xsq", "xabs", "xir"):
            np.testing.assert_array_equal(a[k][live], b[k][live], err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _fin_cases():
    rng = np.random.default_rng(2)
    m, n = 5, 7
    aux = {k: np.abs(rng.standard_normal((m, n))).astype(np.float32) for k in ("cur", "irm", "pw")}
    xnorm = np.abs(rng.standard_normal(m)).astype(np.float32)
    return [
        dict(res=0.05, bound=4.0, bm=True),
        dict(res=0.05, bound=4.0, bm=True, test_neg=False, sto_round=True,
             noise_vec=np.full(n, 0.1, np.float32)),
        dict(nl_vec=np.linspace(0.1, 0.5, n).astype(np.float32), nlf=1.2, wn_type=1, w_noise=0.05,
             xnorm=xnorm, noise_vec=np.linspace(0.01, 0.1, n).astype(np.float32)),
        dict(wn_type=2, w_noise=0.05, pw=aux["pw"], ir_drop=1.5, a_scale=0.3, cur=aux["cur"],
             irm=aux["irm"], res=0.01, bound=5.0),
        dict(res=0.05, bound=4.0, acc=True, scale=np.full(m, 0.5, np.float32), out_scale=2.0,
             ms=np.full(n, 0.7, np.float32), post=np.full(n, 1.1, np.float32),
             noise_vec=np.full(n, 0.2, np.float32)),
    ]


@sim_only
@pytest.mark.parametrize("case", range(5))
def test_sim_finalize_output_equals_cpu(case):
    from anasim.kernels import cpu
    from anasim.kernels import cuda as G

    kw = dict(_fin_cases()[case])
    rng = np.random.default_rng(3)
    y0 = (rng.standard_normal((5, 7)) * 3).astype(np.float32)
    skip = np.array([0, 0, 1, 0, 0], bool)
    rows = np.arange(5, dtype=np.int64) * 3 + 1
    acc_a = acc_b = None
    if kw.pop("acc", False):
        acc_a = rng.standard_normal((5, 9)).astype(np.float32)
        acc_b = acc_a.copy()
    ya, yb = y0.copy(), y0.copy()
    common = dict(rnd=1, noise_key=(1, 2), w_key=(3, 4), sto_key=(5, 6), col0=1)
    fa = cpu.finalize_output(ya, skip, rows, acc=acc_a, **common, **kw)
    fb = G.finalize_output(yb, skip, rows, acc=acc_b, **common, **kw)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(fa, fb)
    if acc_a is not None:
        np.testing.assert_array_equal(acc_a, acc_b)
    if kw.get("bm"):
        assert fa.any()  # the case exercises saturation


@sim_only
def test_sim_accumulate_and_matmul_equal_numpy():
    from anasim.kernels import cpu
    from anasim.kernels import cuda as G

    rng = np.random.default_rng(4)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    scale = rng.uniform(0.5, 2, 5).astype(np.float32)
    ms, post = rng.uniform(0.5, 2, 3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    acc_a = rng.standard_normal((5, 6)).astype(np.float32)
    acc_b = acc_a.copy()
    cpu.accumulate_output(y, scale, acc_a, 2, out_scale=1.5, ms=ms, post=post)
    G.accumulate_output(y, scale, acc_b, 2, out_scale=1.5, ms=ms, post=post)
    np.testing.assert_array_equal(acc_a, acc_b)
    a, w = dyadic(rng, (5, 11)), dyadic(rng, (3, 7))
    got = G.matmul_nt(G.as_device(a), G.as_device(w), col0=2, ncols=7).copy_to_host()
    np.testing.assert_array_equal(got, a[:, 2:9] @ w.T)


@sim_only
def test_sim_warmup_runs_and_wrappers_validate():
    from anasim.kernels import cuda as G

    G.warmup()
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="row_ids"):
        G.prepare_input(x, 0, 4, np.arange(2))
    with pytest.raises(ValueError, match="outside"):
        G.prepare_input(x, 2, 4, np.arange(3))
    with pytest.raises(ValueError, match="in place"):
        G.finalize_output(x.astype(np.float64), np.zeros(3, bool), np.arange(3))
    with pytest.raises(ValueError, match="nl_vec"):
        G.finalize_output(x, np.zeros(3, bool), np.arange(3), nl_vec=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        G.as_device(G.as_device(x), np.int64)


@sim_only
def test_sim_normals_and_uniforms_equal_rng():
    """The device quantile (unfused products) gives rng's numbers, tails included."""
    from anasim.kernels import cuda as G
    from anasim.kernels.rng import _normal_from_word, normals_numpy, uniform4, uniforms_numpy

    @cuda.jit
    def draw(rows, words, key, z, u, zw):
        i = cuda.grid(1)
        if i < rows.size:
            for b in range(3):
                g = G._normal4(b, 2, rows[i], key[0], key[1])
                v = uniform4(b, 2, rows[i], key[0], key[1])
                for lane in range(4):
                    z[i, 4 * b + lane] = g[lane]
                    u[i, 4 * b + lane] = v[lane]
        if i < words.size:
            zw[i] = G._normal_rn(words[i])

    rows = np.array([0, 7, 2**33 + 5], np.int64)
    lo = 104152956  # the last word whose p = (w + 0.5) 2**-32 is below P_LOW (lower tail)
    words = np.array([0, 1, lo, lo + 1, 2**31, 2**32 - 2 - lo, 2**32 - 1 - lo, 2**32 - 1], np.uint64)
    key = np.array([123, 456], np.uint64)
    z, u = np.zeros((3, 12), np.float32), np.zeros((3, 12), np.float32)
    zw = np.zeros(words.size, np.float64)
    draw[1, 8](rows, words, key, z, u, zw)
    els = np.arange(12)
    np.testing.assert_array_equal(z, normals_numpy(rows[:, None], els, tuple(key), 2))
    np.testing.assert_array_equal(u, uniforms_numpy(rows[:, None], els, tuple(key), 2))
    np.testing.assert_array_equal(zw, [_normal_from_word(w) for w in words])


# ---------------------------------------------------------------------- simulator: CudaAnalogMatrix

MATRIX_CASES = [
    (dict(), dict(max_input_size=4, max_output_size=4, weight_scaling_omega=1.0)),
    (dict(out_bound=1.0, out_noise=0.1), dict(max_input_size=5)),  # bound management, several rounds
    (dict(w_noise=0.05, w_noise_type="additive_constant", inp_sto_round=True, out_sto_round=True),
     dict(max_output_size=4, weight_scaling_omega=1.0, weight_scaling_columnwise=True)),
    (dict(w_noise=0.05, w_noise_type="pcm_read", out_bound=1.0), dict(max_input_size=5)),
    (dict(max_bm_factor=2, out_bound=0.5, bm_test_negative_bound=False), dict(digital_bias=False)),
    (dict(out_nonlinearity=0.5, out_bound=2.0, noise_management="max"), dict(max_input_size=5)),
    (dict(noise_management="constant", nm_thres=2.0, bound_management="none", out_bound=1.5), dict()),
    (dict(is_perfect=True, out_scale=2.0), dict(max_input_size=5, max_output_size=4)),
]


@sim_only
@pytest.mark.parametrize("case", range(len(MATRIX_CASES)))
def test_sim_cuda_matrix_equals_cpu_exactly(case):
    from anasim.analog import AnalogMatrix
    from anasim.analog.tile_cuda import to_cuda

    kw, mp = MATRIX_CASES[case]
    rng = np.random.default_rng(10 + case)
    w = dyadic(rng, (6, 9))
    w[:, 0] = 1.0  # max |w| = 1 per output: omega scaling keeps dyadic values
    b = dyadic(rng, 6)
    x = dyadic(rng, (5, 9)) * 2 if kw.get("is_perfect") else _tiny_x(rng)
    rows = np.arange(5, dtype=np.int64) * 7 + 3
    am = AnalogMatrix(w, b, fwd(**kw), mapping(**mp), key=(case, 5))
    want = am.forward(x, rows, repetition=1)
    got = to_cuda(am).forward(x, rows, repetition=1)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    if case in (1, 4):  # these cases do re-run saturated rows
        no_bm = AnalogMatrix(w, b, fwd(**dict(kw, bound_management="none")), mapping(**mp), key=(case, 5))
        assert not np.array_equal(want, no_bm.forward(x, rows, repetition=1))


@sim_only
def test_sim_cuda_matrix_input_noise_ir_drop_and_naive_twin():
    """Non-dyadic paths: equal to float32 rounding; and the NumPy twin agrees too."""
    sys.path.insert(0, str(Path(__file__).parent))
    from naive_tile import naive_forward

    from anasim.analog import AnalogMatrix
    from anasim.analog.tile_cuda import to_cuda

    rng = np.random.default_rng(5)
    w = rng.standard_normal((5, 10)).astype(np.float32) * 0.3
    x = rng.standard_normal((4, 10)).astype(np.float32)
    am = AnalogMatrix(w, None, fwd(inp_noise=0.03, ir_drop=2.0, out_res=-1, out_bound=50.0, w_noise=0.02,
                                   w_noise_type="pcm_read"), mapping(max_input_size=6), key=(1, 9))
    got = to_cuda(am).forward(x, repetition=2)
    np.testing.assert_allclose(got, am.forward(x, repetition=2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, naive_forward(am, x, repetition=2), rtol=1e-5, atol=1e-5)


@sim_only
def test_sim_cuda_matrix_device_io_and_weight_refresh():
    from anasim.analog import AnalogMatrix
    from anasim.analog.tile_cuda import CudaAnalogMatrix, to_cuda
    from anasim.kernels import cuda as G

    rng = np.random.default_rng(6)
    w = dyadic(rng, (4, 6))
    x = dyadic(rng, (3, 6))
    am = AnalogMatrix(w, None, fwd(out_noise=0.0), mapping(max_input_size=4), key=(2, 2))
    cm = to_cuda(am)
    assert to_cuda(cm) is cm and isinstance(cm, CudaAnalogMatrix)
    assert cm.in_size == 6 and cm.out_size == 4 and len(cm.tiles) == 2  # forwarded to the CPU object
    dy = cm.forward(G.as_device(x), G.as_device(np.arange(3), np.int64))
    assert G.is_device_array(dy)
    np.testing.assert_array_equal(dy.copy_to_host(), am.forward(x))
    cm.set_tile_weights([2 * t.weight for t in am.tiles])  # through the wrapper
    np.testing.assert_array_equal(cm.forward(x), am.forward(x))
    am.set_tile_weights([t.weight / 4 for t in am.tiles])  # behind its back: new arrays are noticed
    am.set_post_scales([np.float32(0.5), np.float32(2.0)])
    np.testing.assert_array_equal(cm.forward(x), am.forward(x))
    with pytest.raises(ValueError):
        cm.forward(x[:, :5])


def _tiny_mlp(rng):
    """Gemm(10→6) → Relu → Gemm(6→3): two analog layers (rows = samples: cheap in the simulator)."""
    import anasim
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    arrays = {"w1": rng.standard_normal((6, 10)) * 0.3, "b1": rng.standard_normal(6),
              "w2": rng.standard_normal((3, 6)) * 0.3, "b2": rng.standard_normal(3)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1, alpha=0.7)]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    return anasim.load(model)


@sim_only
def test_sim_simulator_with_cuda_tiles_programming_and_drift():
    """An AnalogSimulator whose matrices are swapped for CUDA twins: same outputs, and
    program() / drift() reach the device copies."""
    import anasim
    from anasim.analog.tile_cuda import to_cuda

    rng = np.random.default_rng(8)
    g = _tiny_mlp(rng)
    cfg = {"forward": {"inp_res": 254, "out_res": -1, "out_bound": 10.0, "out_noise": 0.04,
                       "w_noise": 0.02, "w_noise_type": "additive_constant"},
           "mapping": {"max_input_size": 6, "max_output_size": 4},
           "noise_model": {"type": "pcm"}, "drift_compensation": {"type": "global"}}
    ref, dev = anasim.analog(g, cfg, seed=1), anasim.analog(g, cfg, seed=1)
    for layer in dev.layers:
        layer.matrices = [to_cuda(m) for m in layer.matrices]
    assert sum(la.n_tiles for la in dev.layers) == 5
    x = rng.standard_normal((3, 10)).astype(np.float32)
    np.testing.assert_allclose(dev(x), ref(x), rtol=1e-5, atol=1e-5)
    ref.drift(3600.0)
    dev.drift(3600.0)
    np.testing.assert_allclose(dev(x), ref(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- real GPU


@gpu_only
def test_gpu_kernels_equal_cpu_at_size():
    from anasim.kernels import cpu
    from anasim.kernels import cuda as G

    rng = np.random.default_rng(7)
    m, k, n = 4096, 520, 130
    x = rng.standard_normal((m, k)).astype(np.float32)
    rows = np.arange(m, dtype=np.int64) + 10**6
    kw = dict(res=2 / 254, inp_noise=0.02, want_norm=True, want_sq=True, want_ir=True, noise_key=(3, 4),
              sto_key=(5, 6))
    a = cpu.prepare_input(x, 4, 512, rows, **kw)
    b = G.prepare_input(x, 4, 512, rows, **kw)
    # the normal draws are the CPU's bits (anasim's own log, no libm) and the norms are summed
    # in element order as on the CPU: every value is identical
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    y = (rng.standard_normal((m, n)) * 4).astype(np.float32)
    ya, yb = y.copy(), y.copy()
    fkw = dict(res=24 / 510, bound=12.0, bm=True, noise_vec=np.full(n, 0.06, np.float32), wn_type=1,
               w_noise=0.02, xnorm=a["xnorm"], noise_key=(1, 2), w_key=(3, 4))
    fa = cpu.finalize_output(ya, a["skip"], rows, **fkw)
    fb = G.finalize_output(yb, a["skip"], rows, **fkw)
    assert np.mean(ya != yb) < 1e-6 and np.abs(ya - yb).max() <= 24 / 510 * 1.01
    assert np.mean(fa != fb) < 1e-4


@gpu_only
@pytest.mark.parametrize("case", range(len(MATRIX_CASES)))
def test_gpu_cuda_matrix_equals_cpu_dyadic(case):
    from anasim.analog import AnalogMatrix
    from anasim.analog.tile_cuda import to_cuda

    kw, mp = MATRIX_CASES[case]
    mp = {k: (v * 50 if k.startswith("max_") else v) for k, v in mp.items()}  # sums stay exact
    rng = np.random.default_rng(case)
    w = dyadic(rng, (300, 900))
    w[:, 0] = 1.0
    if kw.get("is_perfect"):
        x = dyadic(rng, (3000, 900)) * 2
    else:
        x = rng.standard_normal((3000, 900)).astype(np.float32)
    am = AnalogMatrix(w, dyadic(rng, 300), fwd(**kw), mapping(**mp), key=(case, 1))
    want = am.forward(x, repetition=3)
    got = to_cuda(am).forward(x, repetition=3)
    assert np.mean(got != want) < 1e-6, np.abs(got - want).max()


@gpu_only
def test_gpu_throughput_print():
    """Prints rows/s of one aihwkit-like layer (ResNet-18 conv size; not a speed limit), and
    checks what was timed: finite positive times, and outputs of the right shape that agree
    with the CPU twin on the first rows (same row ids, so the same noise; float32 sums in
    another order may land a rare element on the other side of an ADC step)."""
    from anasim.analog import AnalogMatrix
    from anasim.analog.tile_cuda import to_cuda
    from anasim.kernels import cuda as G

    rng = np.random.default_rng(0)
    m, k, n, runs, check = 1024 * 64, 576, 64, 5, 2048
    am = AnalogMatrix(rng.standard_normal((n, k)).astype(np.float32) * 0.1, None,
                      fwd(inp_res=1 / 126, out_res=1 / 510, out_bound=12.0, out_noise=0.06), mapping())
    cm = to_cuda(am)
    x = rng.standard_normal((m, k)).astype(np.float32)
    dx = G.as_device(x)
    cm.forward(dx)
    cuda.synchronize()
    t = time.perf_counter()
    for _ in range(runs):
        dy = cm.forward(dx)
    cuda.synchronize()
    dt = (time.perf_counter() - t) / runs
    print(f"\nCudaAnalogMatrix {m}x{k}->{n}: {dt * 1e3:.2f} ms, {m / dt / 1e6:.1f} M rows/s "
          f"(matmul {G.matmul_backend()})")
    assert np.isfinite(dt) and dt > 0 and np.isfinite(m / dt) and m / dt > 0, dt
    assert G.is_device_array(dy), type(dy)
    y = G.to_host(dy)
    assert y.shape == (m, n) and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.abs(y).max() > 0 and np.std(y) > 0
    want = am.forward(x[:check])
    err = np.abs(y[:check] - want)
    assert np.mean(err <= 1e-5 * (1 + np.abs(want))) >= 0.99, np.mean(err > 1e-5 * (1 + np.abs(want)))
    assert err.max() <= 0.05 * np.abs(want).max(), (err.max(), np.abs(want).max())
