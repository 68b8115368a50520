"""Numba kernels of the circuit-level IR-drop model (:mod:`anasim.analog.ir_circuit`).

One crossbar of n rows (inputs, index j) and m columns (outputs, index k), in
dimensionless form: every cell has a = r·G (wire resistance per segment times the
cell's conductance), node voltages are in units of the input voltage. Unknowns per
input vector: the row-wire drop p[j, k] = V_j − u[j, k] (u the row-wire voltage at cell
(j, k)) and the column-wire voltage c[j, k]. Kirchhoff's current law, multiplied by r:

* row j, cell k (driver before k = 0, open end after k = m−1):
  ``(p_k − p_{k−1}) + (p_k − p_{k+1}) + a_jk p_k = a_jk (V_j − c_jk)`` with p_{−1} = 0
  and no right term at k = m−1;
* column k, cell j (open end above j = 0, virtual ground below j = n−1):
  ``(c_j − c_{j−1}) + (c_j − c_{j+1}) + a_jk c_j = a_jk (V_j − p_jk)`` with no upper term at
  j = 0 and c_n = 0.

The solver is block Gauss–Seidel over lines: all row lines solved exactly for the
current column voltages (tridiagonal, Thomas algorithm), then all column lines for the
new row voltages; the nodal matrix is symmetric positive definite, so the sweeps
converge. The tridiagonal factors depend only on the conductances; they are computed
once per call (:func:`line_factors`) and shared by the batch and the iterations. Each
input vector iterates until the largest change of any node voltage in one sweep is at
most ``tol`` times its largest |V_j|, or ``max_iter`` sweeps are done. The output
current of column k, in units of G·V, is Σ_j G_jk (V_j − p_jk − c_jk) / G_unit, which is
exactly Σ_j w_jk V_j when a = 0. float64 throughout.

Numba's cache tracks only this file.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["line_factors", "solve_pair"]


@njit(nogil=True, cache=True)
def line_factors(a):
    """Inverse pivots of the row-line and column-line tridiagonal systems of one crossbar.

    ``a`` (n, m) float64 = r·G per cell. Returns (rinv, cinv), both (n, m): rinv[j, k] is
    1/w_k of row j's Thomas elimination, cinv[j, k] 1/w_j of column k's.
    """
    n, m = a.shape
    rinv = np.empty((n, m))
    cinv = np.empty((n, m))
    for j in range(n):
        w = 0.0
        for k in range(m):
            d = 1.0 + (1.0 if k < m - 1 else 0.0) + a[j, k]
            if k > 0:
                d -= 1.0 / w
            w = d
            rinv[j, k] = 1.0 / w
    for k in range(m):
        w = 0.0
        for j in range(n):
            d = (1.0 if j > 0 else 0.0) + 1.0 + a[j, k]
            if j > 0:
                d -= 1.0 / w
            w = d
            cinv[j, k] = 1.0 / w
    return rinv, cinv


@njit(inline="always")
def _solve_one(a, rinv, cinv, v, tol, max_iter, p, c, cn, z):
    """Iterate one input vector ``v`` (n,) on one crossbar. p, c, cn (n, m) and z (m,) are
    scratch; on return p and c hold the solution. Returns (sweeps, last change relative
    to max|v|, converged)."""
    n, m = a.shape
    p[:, :] = 0.0
    c[:, :] = 0.0
    scale = 0.0
    for j in range(n):
        scale = max(scale, abs(v[j]))
    if scale == 0.0:
        return 0, 0.0, True
    limit = tol * scale
    delta = 0.0
    it = 0
    while it < max_iter:
        it += 1
        delta = 0.0
        # row lines: for every j the tridiagonal system in p[j, :] (Thomas)
        for j in range(n):
            vj = v[j]
            zk = 0.0
            for k in range(m):
                zk = a[j, k] * (vj - c[j, k]) + (zk * rinv[j, k - 1] if k > 0 else 0.0)
                z[k] = zk
            x = 0.0
            for k in range(m - 1, -1, -1):
                x = (z[k] + x) * rinv[j, k]
                d = abs(x - p[j, k])
                if d > delta:
                    delta = d
                p[j, k] = x
        # column lines: all m systems at once, sweeping j (inner loop contiguous in k)
        for k in range(m):
            cn[0, k] = a[0, k] * (v[0] - p[0, k])
        for j in range(1, n):
            vj = v[j]
            for k in range(m):
                cn[j, k] = a[j, k] * (vj - p[j, k]) + cn[j - 1, k] * cinv[j - 1, k]
        for k in range(m):
            z[k] = 0.0
        for j in range(n - 1, -1, -1):
            for k in range(m):
                x = (cn[j, k] + z[k]) * cinv[j, k]
                z[k] = x
                d = abs(x - c[j, k])
                if d > delta:
                    delta = d
                c[j, k] = x
        if delta <= limit:
            return it, delta / scale, True
    return it, delta / scale, False


@njit(inline="always")
def _one_vector(b, x, ap, am, wp, wm, fp, fm, tol, max_iter, y, iters, resid):
    n, m = ap.shape
    v = np.empty(n)
    for j in range(n):
        v[j] = x[b, j]
    p = np.empty((n, m))
    c = np.empty((n, m))
    cn = np.empty((n, m))
    z = np.empty(m)
    out = np.zeros(m)
    its = 0
    res = 0.0
    ok = True
    for side in range(2):
        a = ap if side == 0 else am
        w = wp if side == 0 else wm
        f = fp if side == 0 else fm
        sign = 1.0 if side == 0 else -1.0
        if f[2] == 0.0:  # no conductance on this side
            continue
        it, r, conv = _solve_one(a, f[0], f[1], v, tol, max_iter, p, c, cn, z)
        ok = ok and conv
        its = max(its, it)
        res = max(res, r)
        for j in range(n):
            vj = v[j]
            for k in range(m):
                out[k] += sign * w[j, k] * (vj - p[j, k] - c[j, k])
    for k in range(m):
        y[b, k] = out[k]
    iters[b] = its if ok else -its
    resid[b] = res


@njit(nogil=True, cache=True, parallel=True)
def _solve_pair_parallel(x, ap, am, wp, wm, fp, fm, tol, max_iter, y, iters, resid):
    for b in prange(x.shape[0]):
        _one_vector(b, x, ap, am, wp, wm, fp, fm, tol, max_iter, y, iters, resid)


@njit(nogil=True, cache=True)
def _solve_pair_serial(x, ap, am, wp, wm, fp, fm, tol, max_iter, y, iters, resid):
    for b in range(x.shape[0]):
        _one_vector(b, x, ap, am, wp, wm, fp, fm, tol, max_iter, y, iters, resid)


def _factors(a):
    rinv, cinv = line_factors(a)
    return (rinv, cinv, float(a.any()))


def solve_pair(x, wt, rg, tol, max_iter, serial=False):
    """Column outputs of a differential pair of crossbars for a batch of input voltages.

    Parameters
    ----------
    x : (B, n) input voltages (in units of the DAC full scale; the network is linear).
    wt : (n, m) signed weights, rows = inputs, columns = outputs (the tile's Wᵀ), in
        units of the conductance G_unit that a weight of magnitude 1 has.
    rg : wire resistance per cell segment times G_unit (dimensionless, >= 0).
    tol, max_iter : stop rule (see the module docstring).
    serial : run in the calling thread (no Numba threads), for worker threads.

    Returns
    -------
    (y (B, m) float64 in weight × input units, sweeps (B,) int64 — negative for a vector
    that did not converge —, last relative change (B,)).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    wt = np.asarray(wt, dtype=np.float64)
    wp = np.ascontiguousarray(np.maximum(wt, 0.0))
    wm = np.ascontiguousarray(np.maximum(-wt, 0.0))
    ap, am = wp * float(rg), wm * float(rg)
    fp, fm = _factors(ap), _factors(am)
    # a side that has weights but r = 0 still contributes its ideal product
    fp = (fp[0], fp[1], float(wp.any()))
    fm = (fm[0], fm[1], float(wm.any()))
    bsz, m = x.shape[0], wt.shape[1]
    y = np.zeros((bsz, m))
    iters = np.zeros(bsz, np.int64)
    resid = np.zeros(bsz)
    kern = _solve_pair_serial if serial else _solve_pair_parallel
    kern(x, ap, am, wp, wm, fp, fm, float(tol), int(max_iter), y, iters, resid)
    return y, iters, resid
