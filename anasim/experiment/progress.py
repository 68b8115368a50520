"""Progress bars: tqdm when installed (the ``progress`` extra), else a small stderr bar.

Shown only when stderr is a terminal (and not with ``--quiet`` / ``progress=False``).
"""

from __future__ import annotations

import sys
import time


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass

    def write(self, s):
        print(s, file=sys.stderr)


class _SimpleBar:
    """``desc  42% |#########           | 4200/10000 [00:12<00:17]`` on stderr."""

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit = max(int(total), 1), desc, unit
        self.n, self.t0, self.last, self.postfix = 0, time.monotonic(), 0.0, ""
        self._draw(force=True)

    def update(self, n=1):
        self.n += n
        self._draw()

    def set_postfix_str(self, s):
        self.postfix = s
        self._draw()

    def _draw(self, force=False):
        now = time.monotonic()
        if not force and now - self.last < 0.2 and self.n < self.total:
            return
        self.last = now
        frac = min(self.n / self.total, 1.0)
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        bar = "#" * int(25 * frac) + " " * (25 - int(25 * frac))
        extra = f" {self.postfix}" if self.postfix else ""
        sys.stderr.write(f"\r{self.desc} {100 * frac:3.0f}% |{bar}| {self.n}/{self.total} {self.unit} "
                         f"[{_mmss(el)}<{_mmss(eta)}]{extra}\x1b[K")
        sys.stderr.flush()

    def write(self, s):
        sys.stderr.write("\r\x1b[K" + s + "\n")
        self._draw(force=True)

    def close(self):
        self._draw(force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


def _mmss(s):
    s = int(max(s, 0))
    return f"{s // 60:02d}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_bar(total, desc="", unit="it", enabled=None):
    """A bar with ``update(n)``, ``set_postfix_str(s)``, ``write(s)``, ``close()``.

    ``enabled``: True/False, or None for "when stderr is a terminal"."""
    if enabled is None:
        enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not enabled:
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _SimpleBar(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


__all__ = ["progress_bar"]
