"""The vector width of the CPU kernels.

LLVM's tuning for most AVX-512 CPUs (Skylake-X to Sapphire Rapids and later) prefers
256-bit vectors, for the clock slow-down that 512-bit instructions cost the first of
these chips; Numba compiles with that tuning, so its loops use half of the registers'
width. :func:`wide_vectors`, called first in a CPU kernel, gives that kernel's LLVM
function the attribute ``"prefer-vector-width"="512"``: its loops may then vectorise
over the full 512-bit registers where the CPU has them (on an AVX2 CPU nothing changes).
Only the instruction selection changes, never an operation or its order, so the numbers
are the same bit for bit.

The tile kernels call it (:mod:`~anasim.kernels.cpu`, :mod:`~anasim.kernels.cpu_conv`),
except those whose loops run along one output row of a convolution (``_gather``,
``_gather_dac``, ``_map_stat``): rows of 4 to 32 pixels are too short for
16 float32 lanes, and those loops ran slower. Measured on a 2-core AVX-512 Xeon (LLVM
names it rocketlake), alternating processes: Philox blocks 2.40 -> 1.68 ns, analog
``aihwkit`` MobileNetV2 -10 %, ResNet-20 -7 %, ResNet-18 unchanged (with the row kernels
wide as well: +3 %, their DAC stage +40 %). The digital ops' kernels measured unchanged,
so they keep the default.

The attribute is set when the kernel is compiled and is kept in Numba's on-disk cache
with the machine code.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic

__all__ = ["wide_vectors"]

#: The function attribute (a string attribute: llvmlite's ``attributes.add`` accepts
#: only keyword attributes, so it is added to the set directly).
_ATTRIBUTE = '"prefer-vector-width"="512"'


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling CPU kernel's loops over 512-bit registers (a no-op
    on CPUs without AVX-512). Call it in the kernel's own body: a parallel (``prange``)
    loop body is a function of its own, so the kernels it calls carry the call."""

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, _ATTRIBUTE)
        return context.get_dummy_value()

    return types.none(), codegen
