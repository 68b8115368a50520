"""Numba kernels of the tile model: counter-based RNG (:mod:`.rng`) and CPU kernels (:mod:`.cpu`)."""
