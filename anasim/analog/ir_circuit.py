"""Circuit-level IR drop: a tile solved as a resistive network (``ir_drop_model = "circuit"``).

aihwkit's IR-drop model (``ir_drop_model = "simple"``, the default) is a closed-form
estimate of the drop along the inputs. The circuit model instead solves Kirchhoff's
current law on the whole crossbar, for every input vector, like CrossSim's parasitic
solver; it replaces the tile's ideal product ``x̃ Wᵀ`` (step 3 of DESIGN.md "The tile
model"), and everything else of the periphery (noise, ADC, bound management, digital
scales) is unchanged.

The network (one tile of n inputs × m outputs)
----------------------------------------------
* **Differential pair.** A weight w is the difference of two devices, G⁺ = max(w, 0)·g
  and G⁻ = max(−w, 0)·g, with g = ``g_max_siemens`` (S) the conductance of a weight of
  magnitude 1. The G⁺ and G⁻ devices sit on two separate crossbars (as CrossSim's
  balanced core) driven by the same input voltages; the output is I⁺ − I⁻. No g_min
  offset: a zero weight is an open cell. The tile's effective weights are used (after
  programming, drift and read noise of the device model).
* **Rows** (inputs, index j): row j is driven at its start by the DAC voltage V_j = x̃_j
  (the input after noise management, DAC and input noise, in units of the DAC full
  scale; the network is linear, so the voltage unit cancels) and is open at its end.
  Input 0 is farthest from the column outputs, as in aihwkit's simple model.
* **Columns** (outputs, index k) end, after the last row, at a virtual-ground sense
  amplifier (0 V) that measures the column current.
* **Wires.** Every segment between neighbouring cells, from the driver to the first
  cell and from the last cell to the virtual ground has resistance r =
  ``wire_resistance`` (Ω), along rows and columns alike. Only the dimensionless
  product r·g matters.

The column current is returned in weight units (I / (g·V_unit)), so r = 0 gives exactly
``x̃ Wᵀ`` (up to float rounding; the sums are float64, rounded to float32 at the end).

Solver
------
Block Gauss–Seidel over lines (:mod:`anasim.kernels.ir_circuit`): alternately every row
line and every column line is solved exactly (tridiagonal, factors computed once per
call), in float64, one input vector per Numba thread. The nodal matrix is symmetric
positive definite, so the sweeps converge; the rate falls as r·g·n·m grows. A vector
stops when no node voltage changed by more than ``ir_drop_tol`` × max_j |V_j| in a sweep;
one that has not after ``ir_drop_max_iter`` sweeps raises :class:`~anasim.errors.ExecutionError`
naming the tile, the sweeps and the residual (nothing approximate is returned).

Cost
----
O(sweeps · n · m) per input vector and crossbar (about 7 ns per node and sweep), against
one BLAS product. Measured on a 256 × 256 tile, 512 input vectors, 8-bit DAC/ADC, g =
5 µS, 2 CPU cores (``AnalogMatrix.forward``, best of 3): the plain analog forward takes
20 ms; the circuit model 1.4 s at 0.35 Ω (3 sweeps to 1e-6; largest output error 3 % of
the largest output), 1.6 s at 3.5 Ω (4 sweeps, 27 %), 2.4 s at 35 Ω (10 sweeps) — about
70× to 120×. The fused CPU convolution and the CUDA tile do not have the model: layers
with it run the blocked CPU path, and ``device="cuda"`` refuses it with a ConfigError.
"""

from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from ..kernels import ir_circuit as K

__all__ = ["crossbar_mvm"]


def crossbar_mvm(xt, weight, wire_resistance, g_max, *, tol, max_iter, serial=False,
                 where="tile") -> np.ndarray:
    """The column outputs of a tile as a resistive network, for a batch of DAC voltages.

    Parameters
    ----------
    xt : (B, n) float32 input voltages (the tile's prepared inputs, DAC full scale).
    weight : (m, n) effective weights of the tile (y = W x̃ when the wires are ideal).
    wire_resistance : Ω per cell segment (>= 0).
    g_max : S, the conductance of a weight of magnitude 1.
    tol, max_iter : stop rule (module docstring).
    serial : solve in the calling thread (worker threads).
    where : how an error names the tile.

    Returns
    -------
    (B, m) float32 outputs in weight × input units (``xt @ weight.T`` when r = 0).
    """
    xt = np.asarray(xt)
    m, n = weight.shape
    if xt.shape[0] == 0:
        return np.zeros((0, m), np.float32)
    y, sweeps, change = K.solve_pair(xt, np.asarray(weight).T, float(wire_resistance) * float(g_max),
                                     tol, max_iter, serial=serial)
    bad = sweeps < 0
    if bad.any():
        worst = int(np.argmax(np.where(bad, change, -1.0)))
        raise ExecutionError(
            f"Circuit IR-drop solve of {where} ({m} outputs × {n} inputs) did not converge for "
            f"{int(bad.sum())} of {xt.shape[0]} input vector(s): after {-int(sweeps[worst])} sweeps "
            f"(ir_drop_max_iter = {max_iter}) the largest node-voltage change is "
            f"{float(change[worst]):.3g} of the input scale, above ir_drop_tol = {tol:g} "
            f"(wire_resistance·g_max_siemens = {float(wire_resistance) * float(g_max):.3g}). Raise "
            "ir_drop_max_iter or ir_drop_tol, or use smaller tiles (mapping.max_input_size / "
            "max_output_size).")
    return y.astype(np.float32)
