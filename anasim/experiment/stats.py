"""Summary statistics over Monte-Carlo repetitions: mean, sample std, 95 % t-interval."""

from __future__ import annotations

import math

# two-sided 95 % quantiles of Student's t, t_{0.975}(df), df = 1..30
_T975 = (12.706204736, 4.30265273, 3.182446305, 2.776445105, 2.570581836, 2.446911851,
         2.364624252, 2.306004135, 2.262157163, 2.228138852, 2.20098516, 2.17881283,
         2.160368656, 2.144786688, 2.131449546, 2.119905299, 2.109815578, 2.10092204,
         2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.06865761, 2.063898562,
         2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """Student's t 0.975 quantile for ``df`` degrees of freedom (table up to 30, then the
    Cornish-Fisher expansion, error < 3e-6)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= 30:
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def describe(values) -> dict:
    """``{"n", "mean", "std", "ci_low", "ci_high"}`` of ``values`` (NaN/None dropped).

    ``std`` is the sample standard deviation (ddof = 1) over repetitions and the interval
    is the 95 % confidence interval of the mean, mean ± t_{0.975}(n−1)·std/√n; with one
    value std and the interval are None ("n/a")."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = math.fsum(vals) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
    std = math.sqrt(var)
    half = t975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


__all__ = ["describe", "t975"]
