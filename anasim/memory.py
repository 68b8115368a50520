"""Large arrays from the heap: glibc's malloc told not to map and unmap them each time.

glibc serves allocations above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns them with ``munmap`` when they are freed, so every activation of a large
batch -- allocated, used once, freed, allocated again by the next layer -- starts on
fresh pages, each faulted in by the kernel on first touch: about a fifth of an ideal
ResNet-20 forward pass at batch 128, a quarter of MobileNetV2's. :func:`use_heap` turns
that off for the process (``mallopt(M_MMAP_MAX, 0)``: large blocks from the heap, where
freed memory is reused; ``M_TRIM_THRESHOLD`` raised so that freeing does not hand the top
of the heap back just to fault it in again) -- what ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...`` in the environment does for a new process. The price: the
process keeps the memory it has used (its peak, not its current need) until it exits.

anasim applies it the first time it runs a graph, unless ``ANASIM_MALLOC=system`` (keep
glibc's defaults); nothing happens on other C libraries (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["ENV", "use_heap", "heap_in_use"]

ENV = "ANASIM_MALLOC"
"""``system``: leave malloc's settings alone; ``heap`` (default): :func:`use_heap` on first run."""

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_TRIM = 2**31 - 1  # mallopt takes a C int
_state: dict[str, bool] = {}


def use_heap(force: bool = False) -> bool:
    """Serve large allocations from the heap for the rest of the process (see the module
    docstring); returns whether glibc accepted it. Runs once; ``ANASIM_MALLOC=system``
    makes it a no-op unless ``force``."""
    if "applied" in _state and not force:
        return _state["applied"]
    ok = False
    if force or os.environ.get(ENV, "heap").strip().lower() != "system":
        try:
            libc = ctypes.CDLL(None)
            ok = (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")
                  and libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM) == 1)
        except (OSError, AttributeError):
            ok = False
    _state["applied"] = ok
    return ok


def heap_in_use() -> bool:
    """Whether :func:`use_heap` has been applied in this process."""
    return _state.get("applied", False)
