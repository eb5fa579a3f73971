"""The built-in gates exist twice, compiled for any x86-64 and for AVX2 + FMA; both must match
the reference, whichever this CPU picks by default."""
import os
import subprocess
import sys

import pytest

from gatekit import kernels

PROBE = """
import numpy as np, gatekit
from gatekit import kernels
rng = np.random.default_rng(0)
worst = {np.float64: 0.0, np.float32: 0.0}
for variant in gatekit.variants():
    for dtype in worst:
        cell = gatekit.Cell(5, 6, variant, dtype=dtype, seed=1)
        x = rng.standard_normal((7, 3, 5)) * 2
        y, _ = cell(x)
        want, _ = gatekit.reference.forward(cell, x, dtype=np.float64)
        worst[dtype] = max(worst[dtype], float(np.abs(y - want).max()))
print(kernels.load("_builtin").__name__, worst[np.float64], worst[np.float32])
"""


@pytest.mark.parametrize("build", ["baseline", "default"])
def test_both_kernel_builds_match_the_reference(build, tmp_path):
    env = dict(os.environ)
    env[kernels.ENV] = build
    # cwd away from the source tree, so the child imports the installed gatekit.
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    module, worst64, worst32 = run.stdout.split()
    if build == "baseline":
        assert module == "gatekit._builtin"
    # Outputs lie in (-1, 1) (most presets) or are sums of a few such steps: absolute bounds.
    assert float(worst64) < 1e-10
    assert float(worst32) < 1e-5


def test_this_process_uses_a_compiled_kernel_module():
    assert kernels.load("_builtin").__name__ in ("gatekit._builtin", "gatekit._builtin_avx2")
    assert kernels.load("_loop").__name__ in ("gatekit._loop", "gatekit._loop_avx2")
