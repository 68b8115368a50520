"""Times after programming as people read them (a leaf of the experiment package)."""

from __future__ import annotations


def format_time(t) -> str:
    """Seconds as a short human unit: 0 s, 30 s, 5 min, 1 h, 1 d, 30 d, 1 y (= 365 d)."""
    if t is None:
        return ""
    t = float(t)
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= size:
            return f"{t / size:.3g} {unit}"
    return f"{t:.3g} s"
