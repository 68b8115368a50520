"""What one run of a graph is: the record handed to every injected node callable.

The executor knows no analog layers; it passes a :class:`RunContext` to each callable
that replaced a node (``Graph(ir, overrides)``), as the keyword argument ``context``
(the pattern of the ONNX reference evaluator, whose ops receive the run's context the
same way). A context is immutable: a run that splits its batch into chunks hands the
chunk that starts at sample ``s`` the context :meth:`RunContext.shifted` by ``s``, so
nothing is shared between runs and a graph (or a simulator) can run in several threads
at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


SAMPLE_OFFSET_LIMIT = 2**40
"""Data sets have fewer samples than this: a sample's rows are numbered from
``sample_offset × rows per sample``, which must stay within 64-bit row ids."""


@dataclass(frozen=True)
class RunContext:
    """One run's identity: which samples of the data set, which Monte-Carlo repetition."""

    sample_offset: int = 0
    """Index, in the whole data set, of the first sample of the arrays being run. Analog
    layers derive every row's random-stream index from it, so a sample draws the same
    noise whatever the batch it travels in."""
    repetition: int = 0
    """Monte-Carlo repetition (a freshly programmed chip); part of the key of the
    forward-noise random streams."""
    profile: dict | None = None
    """When a dict: every fused analog convolution adds the CPU cycles of its stages to
    ``profile[layer name]`` ((chunks, len(cpu_conv.STAGES)) int64, see ``bench/profile.py``)
    and the seconds of its host-side preparation to ``profile[(layer name, "host")]``;
    the executor adds the seconds and the count of the nodes it runs, per op type, to
    ``profile[("op", op type)]`` = (seconds, count) -- the nodes as they run, fused ones
    (``ConvEpilogue``, ...) included. The dict is the caller's; the run only adds to it."""

    def shifted(self, n: int) -> "RunContext":
        """The context of the samples that start ``n`` places after this one's first."""
        return replace(self, sample_offset=self.sample_offset + int(n)) if n else self
