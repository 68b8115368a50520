"""Winograd F(4×4, 3×3) (:mod:`anasim.ops.winograd_f4`): the same convolution as the direct sum.

* on random geometries (padding on any side, maps that are not a multiple of the 4×4 tile,
  channel counts that are not a multiple of the vector width, bias and epilogues) the
  result equals the float64 direct sum to a few 1e-6 of the output's scale;
* the result does not depend on how the batch is cut into blocks or on the thread count;
* :func:`anasim.ops.conv.conv` takes this path exactly where :func:`f4_applies` says so.
"""

from __future__ import annotations

import numpy as np
import pytest

from anasim.ops import conv as C
from anasim.ops import winograd_f4 as F4
from anasim.ops.conv_geometry import conv_geometry
from anasim.ops.epilogue import Epilogue


def _direct64(x, w, b, geom):
    """The convolution as a float64 sum over the nine taps."""
    (ph, pw), (oh, ow) = geom.pads_begin, geom.out_shape
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, oh + 2, ow + 2))
    hh, ww = min(h, oh + 2 - ph), min(wd, ow + 2 - pw)
    xp[:, :, ph:ph + hh, pw:pw + ww] = x[:, :, :hh, :ww]
    y = np.zeros((n, w.shape[0], oh, ow))
    for a in range(3):
        for e in range(3):
            y += np.einsum("oc,nchw->nohw", w[:, :, a, e].astype(np.float64), xp[:, :, a:a + oh, e:e + ow])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def test_f4_equals_the_direct_sum_on_random_geometries():
    rng = np.random.default_rng(4)
    worst = 0.0
    for case in range(40):
        c = int(rng.integers(32, 80))
        oc = int(rng.integers(1, 70))
        h, wd = int(rng.integers(2, 19)), int(rng.integers(2, 19))
        pads = [int(rng.integers(0, 3)) for _ in range(4)]
        x = np.maximum(rng.standard_normal((int(rng.integers(1, 5)), c, h, wd)), -0.2).astype(np.float32)
        w = (rng.standard_normal((oc, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        b = rng.standard_normal(oc).astype(np.float32) if case % 3 else None
        geom = conv_geometry(x.shape, w.shape, pads=pads)
        if min(geom.out_shape) < 2:
            continue
        assert F4.f4_applies(geom, np.float32)
        y = F4.conv2d_winograd_f4(x, w, b, geom)
        ref = _direct64(x, w, b, geom)
        assert y.shape == ref.shape and y.dtype == np.float32
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        worst = max(worst, err)
        assert err < 2e-5, (case, x.shape, oc, pads, err)
    assert worst > 0  # not the direct sum in disguise: F(4×4, 3×3) rounds differently


@pytest.mark.parametrize("act", ["", "Relu", "Clip"])
def test_f4_applies_the_epilogue(act):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 32, 9, 7)).astype(np.float32)
    w = (rng.standard_normal((24, 32, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    geom = conv_geometry(x.shape, w.shape, pads=[1, 1, 1, 1])
    r = rng.standard_normal((3, 24, 9, 7)).astype(np.float32)
    plain = F4.conv2d_winograd_f4(x, w, b, geom)
    y = F4.conv2d_winograd_f4(x, w, b, geom, Epilogue(r, act, -0.3, 0.4))
    ref = plain + r
    if act == "Relu":
        ref = np.maximum(ref, 0)
    elif act == "Clip":
        ref = np.clip(ref, np.float32(-0.3), np.float32(0.4))
    np.testing.assert_array_equal(y, ref)


def test_f4_does_not_depend_on_blocks_or_threads(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 48, 8, 8)).astype(np.float32)
    w = rng.standard_normal((40, 48, 3, 3)).astype(np.float32)
    geom = conv_geometry(x.shape, w.shape, pads=[1, 1, 1, 1])
    ref = F4.conv2d_winograd_f4(x, w, None, geom)
    from anasim.ops import conv_geometry as cg

    monkeypatch.setattr(cg, "_CHUNK_MAX_BYTES", 4096)  # one sample per block
    monkeypatch.setattr(cg, "_CHUNK_MIN_BYTES", 4096)
    blocked = F4.conv2d_winograd_f4(x, w, None, geom)
    # Other blocks are other sgemm shapes: OpenBLAS's small-matrix kernels (DYNAMIC_ARCH
    # builds on AMD Zen, for one) sum those in another order, so across block sizes both
    # results are F(4×4, 3×3)'s accuracy from the exact sum, not equal bit for bit. The
    # blocks are fixed by the shapes alone; across thread counts the outputs are identical.
    exact = _direct64(x, w, None, geom)
    for y in (ref, blocked):
        assert np.abs(y - exact).max() < 2e-5 * np.abs(exact).max()
    from anasim import threads

    monkeypatch.setattr(threads, "num_threads", lambda: 1)  # every block in the calling thread
    np.testing.assert_array_equal(F4.conv2d_winograd_f4(x, w, None, geom), blocked)
    monkeypatch.undo()
    np.testing.assert_array_equal(F4.conv2d_winograd_f4(x, w, None, geom), ref)


def test_conv_dispatches_to_f4_where_it_applies(monkeypatch):
    calls = []
    real = F4.conv2d_winograd_f4
    monkeypatch.setattr(C, "conv2d_winograd_f4", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(7)
    for c, kw, hw, expect in [(32, {}, 8, True), (64, {}, 1, False),  # 1×1 map: the direct product
                              (31, {}, 8, False), (32, dict(strides=[2, 2]), 8, False),
                              (32, dict(dilations=[2, 2]), 8, False), (32, dict(group=2), 8, False)]:
        g = kw.get("group", 1)
        x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((8, c // g, 3, 3)).astype(np.float32)
        pads = [2, 2, 2, 2] if "dilations" in kw else [1, 1, 1, 1]
        geom = conv_geometry(x.shape, w.shape, pads=pads, **kw)
        calls.clear()
        y = C.conv(x, w, None, geom)
        assert bool(calls) == expect == F4.f4_applies(geom, np.float32), (c, kw, hw)
        ref = C._conv2d_gemm(x, w, None, geom).reshape(y.shape)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=2e-5 * float(np.abs(ref).max()))
    x64 = rng.standard_normal((2, 32, 8, 8))  # float64 keeps the exact paths
    assert not F4.f4_applies(conv_geometry(x64.shape, (8, 32, 3, 3), pads=[1, 1, 1, 1]), x64.dtype)
