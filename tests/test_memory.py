"""anasim.memory: large arrays from the heap (glibc), switchable off with ANASIM_MALLOC=system."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = """
import numpy as np, anasim
from anasim import memory
assert not memory.heap_in_use()
g = anasim.load({model!r})
g(np.zeros((2, 3, 32, 32), np.float32))
print(memory.heap_in_use())
"""


def _run(env_value):
    from conftest import shared_path

    model = shared_path("models", "resnet20_cifar10.onnx")
    env = dict(os.environ)
    env.pop("ANASIM_MALLOC", None)
    if env_value is not None:
        env["ANASIM_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", CODE.format(model=str(model))], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_first_run_switches_to_heap_allocation_unless_told_not_to():
    assert _run(None) == "True"
    assert _run("system") == "False"
