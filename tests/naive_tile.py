"""Slow, obviously-correct NumPy twin of the tile forward pass (the oracle of the kernels).

One input vector at a time, one tile at a time, written as a transcription of aihwkit's
``ForwardBackwardPassIOManaged<float>::forwardVector`` (``rpu_forward_backward_pass.cpp``)
in float32 NumPy scalars. Random numbers come from :func:`anasim.kernels.rng.normals_numpy`
/ :func:`~anasim.kernels.rng.uniforms_numpy` at the same (key, row id, element, round) as
the Numba kernels. Only the structure (tiles, scales, keys) is taken from the
:class:`~anasim.analog.tile.AnalogMatrix` under test.
"""

from __future__ import annotations

import numpy as np

from anasim.kernels import cpu, stages
from anasim.kernels.rng import normals_numpy, uniforms_numpy

f32 = np.float32



def _quantize(v, res, sto, u):
    if res <= 0:
        return v
    if sto:
        return (np.rint(v / res + (u - f32(0.5))).astype(f32) * res).astype(f32)
    return (np.rint(v / res).astype(f32) * res).astype(f32)


def _outputs(am, t, v, row, keys, rnd):
    """MVM and every output stage of one prepared input vector ``v``; returns (y, passed)."""
    p = am.periphery
    k = v.size
    n = t.n_out
    cols_out = np.arange(n)
    # MVM
    y = (t.weight.astype(np.float64) @ v.astype(np.float64)).astype(f32)
    # IR drop
    if p.ir_drop > 0:
        cur = (np.abs(t.weight).astype(np.float64) @ np.abs(v).astype(np.float64)).astype(f32)
        a = (f32(f32(k) / p.ir_drop_g_ratio) * cur).astype(f32)
        c = (a * (a * (f32(0.05) * a - f32(0.2)) + f32(0.5))).astype(f32)
        pj = (f32(1) - np.arange(k, dtype=f32) / f32(k)).astype(f32)
        xir = (v * (f32(1) - pj * pj)).astype(f32)
        irm = (t.weight.astype(np.float64) @ xir.astype(np.float64)).astype(f32)
        y = (y - c * (p.ir_drop * irm).astype(f32)).astype(f32)
    # weight noise
    if p.w_noise > 0 and p.wn_type != cpu.WN_NONE:
        g = normals_numpy(row, cols_out, keys["w_noise"], rnd)
        if p.wn_type == cpu.WN_ADDITIVE:
            std = f32(p.w_noise * f32(np.sqrt(np.sum(v.astype(np.float64) ** 2))))
            y = (y + std * g).astype(f32)
        else:
            pw = (np.abs(t.weight).astype(np.float64) @ (v.astype(np.float64) ** 2)).astype(f32)
            y = (y + p.w_noise * np.sqrt(pw) * g).astype(f32)
    # non-linearity, output noise, ADC, bound test
    if t.nl_vec is not None:
        y = (t.nlf * y / (f32(1) + np.abs(t.nl_vec * y))).astype(f32)
    if t.noise_vec is not None:
        y = (y + t.noise_vec * normals_numpy(row, cols_out, keys["out_noise"], rnd)).astype(f32)
    if t.adc_gain is not None:  # per-column ADC offset, INL curve, gain
        y = np.array([stages.adc_transfer(y[i], t.adc_offset[i], t.adc_gain[i], am.inl, am.inl.shape[1])
                      for i in range(n)], f32)
    u = uniforms_numpy(row, cols_out, keys["out_sto_round"], rnd)
    y = _quantize(y, p.out_step, p.out_sto_round, u)
    hi, lo = y > p.out_bound, y < -p.out_bound
    passed = not (hi.any() or (p.bm_test_negative_bound and lo.any()))
    return np.clip(y, -p.out_bound, p.out_bound).astype(f32), passed


def _bit_serial(am, t, v, s, row, keys):
    """Bit-serial input: the contribution of every cycle of the DAC outputs ``v``."""
    p, cyc = am.periphery, am.input_cycles
    out = []
    for j in range(cyc.n_cycles):
        ck = am.cycle_keys(keys, j)
        d = np.array([stages.input_cycle(vi, p.inp_step, cyc.drive, j, cyc.bits, cyc.n_cycles, cyc.twos)
                      for vi in v], f32)
        if p.inp_noise > 0:
            d = (d + p.inp_noise * normals_numpy(row, np.arange(v.size), ck["inp_noise"], 0)).astype(f32)
        y, _ = _outputs(am, t, d, row, ck, 0)
        f = f32(p.out_scale / f32(s / f32(cyc.shift(j))))
        out.append((((y * f).astype(f32) * t.mapping_scale).astype(f32) * t.post_scale).astype(f32))
    return out


def tile_vector(am, t, xs, row, repetition):
    """One tile, one vector: returns the tile's contributions (before the digital sum; one
    per bit-serial input cycle)."""
    p = am.periphery
    keys = am.stream_keys(t.index, repetition)
    k = xs.size
    n = t.n_out
    # noise management
    nm = p.nm_type != cpu.NM_NONE
    if p.nm_type == cpu.NM_ABS_MAX:
        a = np.abs(xs).max()
        nmv = min(a, p.nm_thres) if p.nm_thres > 0 else a
    elif p.nm_type == cpu.NM_MAX:
        a = xs.max()
        nmv = min(a, p.nm_thres) if p.nm_thres > 0 else a
    elif p.nm_type == cpu.NM_CONSTANT:
        nmv = p.nm_thres if p.nm_thres > 0 else f32(1)
    else:
        nmv = f32(1)
    nmv = f32(nmv)
    if nm and nmv <= 0 and p.inp_noise <= 0:
        return [np.zeros(n, f32)]
    red, rnd = f32(1), 0
    cols_in, cols_out = np.arange(k), np.arange(n)
    while True:
        s = f32(1)
        if nm and nmv > 0:
            s = f32(s / nmv)
        if p.bm:
            s = f32(s / red)
        # input: scale, DAC, clip, noise
        u = uniforms_numpy(row, cols_in, keys["inp_sto_round"], rnd)
        v = (xs * s).astype(f32)
        v = _quantize(v, p.inp_step, p.inp_sto_round, u)
        v = np.clip(v, -p.inp_bound, p.inp_bound).astype(f32)
        if am.input_cycles is not None:  # (no bound management with bit-serial input)
            return _bit_serial(am, t, v, s, row, keys)
        if p.inp_noise > 0:
            v = (v + p.inp_noise * normals_numpy(row, cols_in, keys["inp_noise"], rnd)).astype(f32)
        y, passed = _outputs(am, t, v, row, keys, rnd)
        if not p.bm or passed or p.bm_limit_reached(red):
            break
        red, rnd = f32(red * 2), rnd + 1
    f = f32(p.out_scale / s)
    return [(((y * f).astype(f32) * t.mapping_scale).astype(f32) * t.post_scale).astype(f32)]


def naive_forward(am, x, row_ids=None, repetition=0):
    """The whole layer, vector by vector; same result as ``am.forward``."""
    x = np.asarray(x, dtype=f32)
    m = x.shape[0]
    row_ids = np.arange(m) if row_ids is None else np.asarray(row_ids, np.int64)
    if am.analog_bias:
        x = np.concatenate([x, np.ones((m, 1), f32)], axis=1)
    out = np.zeros((m, am.out_size), f32)
    for r in range(m):
        for t in am.tiles:  # in-chunk major, as aihwkit sums the input chunks in order
            xs = x[r, t.in_start:t.in_stop]
            if am.periphery.perfect:
                y = (t.weight.astype(np.float64) @ xs.astype(np.float64)).astype(f32)
                ys = [((y * am.periphery.out_scale).astype(f32) * t.mapping_scale * t.post_scale).astype(f32)]
            else:
                ys = tile_vector(am, t, xs, int(row_ids[r]), repetition)
            for y in ys:
                out[r, t.out_start:t.out_stop] = (out[r, t.out_start:t.out_stop] + y).astype(f32)
    if am.bias is not None:
        out = (out + am.bias).astype(f32)
    return out
