"""Recurrent layers: ``LSTM``, ``GRU`` and ``RNN`` (ONNX opsets 1-22), ideal (digital) arithmetic.

Supported: directions ``forward`` / ``reverse`` / ``bidirectional``; ``sequence_lens``
(steps at or past a sequence's length are 0 in ``Y``, ``Y_h`` / ``Y_c`` hold its last valid
step, and the reverse direction starts at each sequence's own end; a length-0 sequence has
zero ``Y_h`` / ``Y_c``, as in onnxruntime, whatever the initial state); ``initial_h`` /
``initial_c``; LSTM peepholes ``P`` and ``input_forget`` (the forget gate is ``1 - i``, as
onnxruntime does); ``clip`` (applied to every gate's pre-activation); ``layout`` 0 / 1
(opset 14+); the ONNX activation set (Relu, Tanh, Sigmoid, Affine, LeakyRelu,
ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus; names case-insensitive)
with ``activation_alpha`` / ``activation_beta`` consumed in order by the activations that
take them; GRU ``linear_before_reset`` 0 / 1. Outputs keep the input dtype (float32, or
float64 if the model uses it); optional outputs are computed and dropped by the executor.

The batch is vectorised; the time loop is Python (one iteration per step and direction).

Seam for the analog mapping
---------------------------
The recurrences (:func:`lstm_direction`, :func:`gru_direction`, :func:`rnn_direction`)
never see W or R. Per direction they take:

``xw``
    the input projection of all steps at once, ``X @ W.T`` of shape
    ``(seq_length, batch, gates * hidden)`` (no bias), i.e. one (T·B, I) x (I, G·H)
    matrix product: on analog hardware, one MVM per time step and sample on W's tiles.
``recurrent_proj(v, rows, t)``
    ``v @ R[rows].T`` for ``v`` of shape ``(batch, hidden)``, ``rows`` a ``slice`` of R's
    rows (``slice(None)`` = every gate) and ``t`` the time step; called once per step (GRU with
    ``linear_before_reset=0`` calls it twice: rows ``[0, 2H)`` with ``h`` and rows
    ``[2H, 3H)`` with ``r ⊙ h``). On analog hardware, the per-step MVM on R's tiles.

The biases ``Wb + Rb`` (and GRU's ``Rbh`` inside the reset product), peepholes, gate
activations, cell update and ``sequence_lens`` masking stay digital in the recurrence.
The ideal op (:func:`_run`) passes plain NumPy matmuls (:func:`_ideal_projections`); an
analog layer would pass tile-backed callables with the same contract.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import UnsupportedOpError
from .registry import register

# =========================================================================== activations
_DEFAULT_ALPHA = {"affine": 1.0, "leakyrelu": 0.01, "thresholdedrelu": 1.0, "scaledtanh": 1.0,
                  "hardsigmoid": 0.2, "elu": 1.0}
_DEFAULT_BETA = {"affine": 0.0, "scaledtanh": 1.0, "hardsigmoid": 0.5}


def _sigmoid(x):
    # exp of -|x| only: no overflow warning for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _softplus(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


def _activation(name: str, alpha: float | None, beta: float | None) -> Callable[[np.ndarray], np.ndarray]:
    n = name.lower()
    a = _DEFAULT_ALPHA.get(n) if alpha is None else alpha
    b = _DEFAULT_BETA.get(n) if beta is None else beta
    if n == "relu":
        return lambda x: np.maximum(x, 0)
    if n == "tanh":
        return np.tanh
    if n == "sigmoid":
        return _sigmoid
    if n == "affine":
        return lambda x: (a * x + b).astype(x.dtype, copy=False)
    if n == "leakyrelu":
        return lambda x: np.where(x >= 0, x, x * x.dtype.type(a))
    if n == "thresholdedrelu":
        return lambda x: np.where(x >= a, x, x.dtype.type(0))
    if n == "scaledtanh":
        return lambda x: (a * np.tanh(b * x)).astype(x.dtype, copy=False)
    if n == "hardsigmoid":
        return lambda x: np.clip(a * x + b, 0, 1).astype(x.dtype, copy=False)
    if n == "elu":
        return lambda x: np.where(x >= 0, x, (a * np.expm1(np.minimum(x, 0))).astype(x.dtype, copy=False))
    if n == "softsign":
        return lambda x: x / (1 + np.abs(x))
    if n == "softplus":
        return _softplus
    raise UnsupportedOpError(
        f"recurrent activation {name!r} is not an ONNX RNN activation (Relu, Tanh, Sigmoid, Affine, "
        "LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus)")


def _activations(names, alphas, betas, defaults: Sequence[str], num_directions: int) -> list[list[Callable]]:
    """Per direction, the list of activation callables (``len(defaults)`` of them)."""
    per = len(defaults)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in (names or [])]
    if not names:
        names = list(defaults) * num_directions
    elif len(names) == per and num_directions == 2:
        names = names * 2  # one set given: both directions use it (onnxruntime refuses this)
    if len(names) != per * num_directions:
        raise UnsupportedOpError(
            f"recurrent op: {len(names)} activations given, expected {per * num_directions} "
            f"({per} per direction)")
    alphas, betas = list(alphas or []), list(betas or [])
    fns = []
    for n in names:  # alpha/beta are consumed, in order, by the activations that take them
        key = n.lower()
        a = alphas.pop(0) if key in _DEFAULT_ALPHA and alphas else None
        b = betas.pop(0) if key in _DEFAULT_BETA and betas else None
        fns.append(_activation(n, a, b))
    return [fns[d * per:(d + 1) * per] for d in range(num_directions)]


# =========================================================================== recurrences
def _clipper(clip):
    if clip is None:
        return lambda x: x
    c = float(clip)
    return lambda x: np.clip(x, -c, c, out=x)


def _step_mask(t: int, lens: np.ndarray | None):
    """(batch, 1) bool: which sequences have step ``t``; None when all do."""
    if lens is None:
        return None
    return (t < lens)[:, None]


def _time_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def lstm_direction(xw, recurrent_proj, bias, h0, c0, p, acts, *, lens=None, reverse=False,
                   clip=None, input_forget=False):
    """One direction of an LSTM.

    ``xw`` (T, B, 4H) = X @ W.T (gates i, o, f, c); ``recurrent_proj(h, slice(None))`` =
    h @ R.T (B, 4H); ``bias`` (4H,) = Wb + Rb; ``h0``, ``c0`` (B, H); ``p`` (3H,) peepholes
    (i, o, f) or None; ``acts`` = (f, g, h); ``lens`` (B,) int or None.
    Returns Y (T, B, H), Y_h (B, H), Y_c (B, H).
    """
    T, B, _ = xw.shape
    H = h0.shape[1]
    f, g, hact = acts
    cl = _clipper(clip)
    pi, po, pf = (None, None, None) if p is None else (p[:H], p[H:2 * H], p[2 * H:])
    h, c = h0, c0
    y = np.zeros((T, B, H), xw.dtype)
    every = slice(None)
    for t in _time_order(T, reverse):
        gates = xw[t] + recurrent_proj(h, every, t) + bias
        gi, go, gf, gc = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        if pi is not None:
            gi = gi + pi * c
            gf = gf + pf * c
        i = f(cl(gi))
        fg = (1 - i) if input_forget else f(cl(gf))
        c_new = fg * c + i * g(cl(gc))
        if po is not None:
            go = go + po * c_new
        o = f(cl(go))
        h_new = o * hact(c_new)
        m = _step_mask(t, lens)
        if m is None:
            h, c = h_new, c_new
            y[t] = h_new
        else:
            h, c = np.where(m, h_new, h), np.where(m, c_new, c)
            y[t] = np.where(m, h_new, 0)
    return y, h, c


def gru_direction(xw, recurrent_proj, wb, rb, h0, acts, *, lens=None, reverse=False, clip=None,
                  linear_before_reset=0):
    """One direction of a GRU.

    ``xw`` (T, B, 3H) = X @ W.T (gates z, r, h); ``recurrent_proj(v, rows)`` = v @ R[rows].T;
    ``wb``, ``rb`` (3H,) the W and R biases; ``h0`` (B, H); ``acts`` = (f, g).
    Returns Y (T, B, H), Y_h (B, H).
    """
    T, B, _ = xw.shape
    H = h0.shape[1]
    f, g = acts
    cl = _clipper(clip)
    h = h0
    y = np.zeros((T, B, H), xw.dtype)
    zr_bias = wb[:2 * H] + rb[:2 * H]
    all_rows, zr_rows, h_rows = slice(None), slice(0, 2 * H), slice(2 * H, 3 * H)
    for t in _time_order(T, reverse):
        x = xw[t]
        if linear_before_reset:
            hr = recurrent_proj(h, all_rows, t)
            zr = x[:, :2 * H] + hr[:, :2 * H] + zr_bias
            z, r = f(cl(zr[:, :H])), f(cl(zr[:, H:]))
            ht = g(cl(x[:, 2 * H:] + r * (hr[:, 2 * H:] + rb[2 * H:]) + wb[2 * H:]))
        else:
            zr = x[:, :2 * H] + recurrent_proj(h, zr_rows, t) + zr_bias
            z, r = f(cl(zr[:, :H])), f(cl(zr[:, H:]))
            ht = g(cl(x[:, 2 * H:] + recurrent_proj(r * h, h_rows, t) + rb[2 * H:] + wb[2 * H:]))
        h_new = (1 - z) * ht + z * h
        m = _step_mask(t, lens)
        if m is None:
            h = h_new
            y[t] = h_new
        else:
            h = np.where(m, h_new, h)
            y[t] = np.where(m, h_new, 0)
    return y, h


def rnn_direction(xw, recurrent_proj, bias, h0, acts, *, lens=None, reverse=False, clip=None):
    """One direction of a simple RNN: H_t = f(xw_t + H_{t-1} @ R.T + Wb + Rb). Returns Y, Y_h."""
    T, B, _ = xw.shape
    H = h0.shape[1]
    (f,) = acts
    cl = _clipper(clip)
    h = h0
    y = np.zeros((T, B, H), xw.dtype)
    every = slice(None)
    for t in _time_order(T, reverse):
        h_new = f(cl(xw[t] + recurrent_proj(h, every, t) + bias))
        m = _step_mask(t, lens)
        if m is None:
            h = h_new
            y[t] = h_new
        else:
            h = np.where(m, h_new, h)
            y[t] = np.where(m, h_new, 0)
    return y, h


# =========================================================================== the ops
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


def _ideal_projections(X, W, R, direction=0):
    """The plain-matmul seam: ``xw`` = X @ W.T for all steps, ``recurrent_proj`` = v @ R[rows].T.
    ``direction`` (0, or 1 for a bidirectional layer's reverse half) is for analog callers."""
    T, B, I = X.shape
    xw = (X.reshape(T * B, I) @ W.T).reshape(T, B, W.shape[0])
    Rt = np.ascontiguousarray(R.T)  # (H, G·H): columns are R's rows

    def recurrent_proj(v, rows, t):
        return v @ Rt[:, rows]

    return xw, recurrent_proj


def _run(op, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *,
         hidden_size=None, direction="forward", layout=0, clip=None, activations=None,
         activation_alpha=None, activation_beta=None, input_forget=0, linear_before_reset=0,
         projections=_ideal_projections):
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedOpError(f"{op}: direction {direction!r} is not forward, reverse or bidirectional")
    nd = 2 if direction == "bidirectional" else 1
    X = np.asarray(X)
    dtype = X.dtype if X.dtype.kind == "f" else np.dtype(np.float32)
    X = X.astype(dtype, copy=False)
    if layout:
        X = X.transpose(1, 0, 2)
    T, Bt, _ = X.shape
    G = _GATES[op]
    H = int(hidden_size) if hidden_size is not None else W.shape[1] // G
    W, R = np.asarray(W, dtype), np.asarray(R, dtype)
    B = np.zeros((nd, 2 * G * H), dtype) if B is None else np.asarray(B, dtype)

    def state(v):
        if v is None:
            return np.zeros((nd, Bt, H), dtype)
        v = np.asarray(v, dtype)
        return v.transpose(1, 0, 2) if layout else v

    h0, c0 = state(initial_h), state(initial_c)
    lens = None
    if sequence_lens is not None:
        lens = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
        if lens.size == 1 and Bt != 1:
            lens = np.full(Bt, lens[0])
        if np.all(lens >= T):
            lens = None
    acts = _activations(activations, activation_alpha, activation_beta, _DEFAULT_ACTS[op], nd)
    Y = np.zeros((T, nd, Bt, H), dtype)
    Y_h = np.zeros((nd, Bt, H), dtype)
    Y_c = np.zeros((nd, Bt, H), dtype)
    for d in range(nd):
        reverse = direction == "reverse" or d == 1
        xw, rproj = projections(X, W[d], R[d], d)
        wb, rb = B[d, :G * H], B[d, G * H:]
        common = dict(lens=lens, reverse=reverse, clip=clip)
        if op == "LSTM":
            p = None if P is None else np.asarray(P, dtype)[d]
            y, yh, yc = lstm_direction(xw, rproj, wb + rb, h0[d], c0[d], p, acts[d],
                                       input_forget=bool(input_forget), **common)
            Y_c[d] = yc
        elif op == "GRU":
            y, yh = gru_direction(xw, rproj, wb, rb, h0[d], acts[d],
                                  linear_before_reset=int(linear_before_reset), **common)
        else:
            y, yh = rnn_direction(xw, rproj, wb + rb, h0[d], acts[d], **common)
        Y[:, d] = y
        Y_h[d] = yh
    if lens is not None and (lens <= 0).any():  # an empty sequence: zero states (as onnxruntime)
        Y_h[:, lens <= 0] = 0
        Y_c[:, lens <= 0] = 0
    if layout:
        Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
    return Y, Y_h, Y_c


def run(op: str, *inputs, projections, **attrs):
    """An LSTM / GRU / RNN node of any opset with the given ``projections`` factory
    ``(X (T, B, I), W_d, R_d, d) -> (xw, recurrent_proj)`` (the seam above): what an analog
    layer calls with its tiles. Returns the node's outputs (Y, Y_h[, Y_c])."""
    attrs = {k: v for k, v in attrs.items() if k != "output_sequence"}
    if attrs.get("direction") in ("foward", b"foward"):  # GRU-1's default, as its spec spells it
        attrs["direction"] = "forward"
    out = _run(op, *inputs, projections=projections, **attrs)
    return out if op == "LSTM" else out[:2]


# --------------------------------------------------------------------------- registration
VERSIONS = {"LSTM": (1, 7, 14, 22), "GRU": (1, 3, 7, 14, 22), "RNN": (1, 7, 14, 22)}
"""The opsets at which each op's schema changed. The versions differ only in the attributes
they admit (``output_sequence`` up to 7, GRU's ``linear_before_reset`` from 3, ``layout``
from 14, wider types at 22), which :func:`run` reads alike, so one implementation serves
every version; an attribute that is absent takes the spec's default in :func:`_run`."""


def _ideal(op: str):
    def impl(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, **attrs):
        return run(op, X, W, R, B, sequence_lens, initial_h, initial_c, P, projections=_ideal_projections, **attrs)

    impl.__name__ = impl.__qualname__ = op.lower()
    impl.__doc__ = f"ONNX {op}, ideal arithmetic (plain matrix products): :func:`run` with :func:`_ideal_projections`."
    return impl


for _op, _versions in VERSIONS.items():
    _impl = _ideal(_op)
    for _v in _versions:
        register(_op, since=_v)(_impl)
