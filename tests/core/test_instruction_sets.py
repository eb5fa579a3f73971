"""The built-in gates exist up to three times, compiled for any x86-64, for AVX2 + FMA and for
AVX-512; each build this CPU runs must match the reference."""
import subprocess
import sys

import pytest

from gatekit.core import instruction_sets as kernels

from support import child_env

PROBE = """
import itertools
import numpy as np, gatekit
from gatekit.core import instruction_sets as kernels
rng = np.random.default_rng(0)
worst = {np.float64: 0.0, np.float32: 0.0}
# (7, 3, 5, 6) runs the plain loop, (9, 7, 5, 37) the tiled one (gatekit.core._loop.plan).
for (T, B, D, H), variant in itertools.product([(7, 3, 5, 6), (9, 7, 5, 37)], gatekit.variants()):
    for dtype in worst:
        if gatekit.Cell(H, H, variant).gate_names["learn"] == "mut1":
            D = H                   # MUT1 adds the event to the memory unit by unit
        cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=1)
        x = rng.standard_normal((T, B, D)) * 2
        y, _ = cell(x)
        want, _ = gatekit.reference.forward(cell, x, dtype=np.float64)
        worst[dtype] = max(worst[dtype], float(np.abs(y - want).max()))
print(kernels.load("_builtin").__name__, worst[np.float64], worst[np.float32])
"""


@pytest.mark.parametrize("build", ["baseline", "avx2", "default"])
def test_both_kernel_builds_match_the_reference(build, tmp_path):
    env = child_env(**{kernels.ENV: None if build == "default" else build})
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    module, worst64, worst32 = run.stdout.split()
    if build == "baseline":
        assert module == "gatekit.core._builtin"
    if build == "avx2":
        assert module in ("gatekit.core._builtin", "gatekit.core._builtin_avx2")
    # Outputs lie in (-1, 1) (most variants) or are sums of a few such steps: absolute bounds.
    assert float(worst64) < 1e-10
    assert float(worst32) < 1e-5


def test_this_process_uses_a_compiled_kernel_module():
    for name in ("_builtin", "_loop", "_scan"):
        assert kernels.load(name).__name__ in (f"gatekit.core.{name}", f"gatekit.core.{name}_avx2",
                                                f"gatekit.core.{name}_avx512")


def test_an_unknown_build_name_is_refused(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "avx1024")
    with pytest.raises(ValueError, match="GATEKIT_KERNELS must be one of avx512, avx2"):
        kernels.load("_loop")


def test_builds_are_capped_by_the_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "avx2")
    assert "avx512" not in kernels.builds()
    monkeypatch.setenv(kernels.ENV, "baseline")
    assert kernels.builds() == []


@pytest.fixture
def package_with_builds(tmp_path, monkeypatch):
    """A package ``builds_probe`` holding ``_thing`` (portable) and what a test adds of
    ``_thing_avx2``, importable from here; this CPU runs AVX2 or the tests skip."""
    if not kernels.has_avx2_fma():
        pytest.skip("this CPU has no AVX2 + FMA")
    package = tmp_path / "builds_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_thing.py").write_text("BUILD = 'portable'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(kernels.ENV, "avx2")
    yield package
    for name in [m for m in sys.modules if m.startswith("builds_probe")]:
        del sys.modules[name]


def test_a_wider_build_that_fails_to_load_is_reported_by_name(package_with_builds):
    (package_with_builds / "_thing_avx2.py").write_text("raise ImportError('undefined symbol')\n")
    with pytest.warns(RuntimeWarning, match=r"builds_probe\._thing_avx2 .*undefined symbol"):
        module = kernels.load("_thing", package="builds_probe")
    assert module.BUILD == "portable"


def test_a_wider_build_that_needs_a_missing_module_is_reported(package_with_builds):
    (package_with_builds / "_thing_avx2.py").write_text("import no_such_dependency_here\n")
    with pytest.warns(RuntimeWarning, match=r"builds_probe\._thing_avx2 .*no_such_dependency"):
        kernels.load("_thing", package="builds_probe")


def test_a_wider_build_that_was_never_built_is_skipped_quietly(package_with_builds, recwarn):
    module = kernels.load("_thing", package="builds_probe")
    assert module.BUILD == "portable"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_the_wider_build_loads_when_it_works(package_with_builds):
    (package_with_builds / "_thing_avx2.py").write_text("BUILD = 'avx2'\n")
    assert kernels.load("_thing", package="builds_probe").BUILD == "avx2"
