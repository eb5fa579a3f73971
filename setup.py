"""Builds gatekit's compiled core. Metadata lives in pyproject.toml; the flags, directives and
builds per instruction set in src/gatekit/core/building.py (shared with Cython gate plugins,
through gatekit.build, and with the equation gates' compiler).

GATEKIT_DEBUG=1 builds with bounds checks, wraparound checks and initialisation checks on, for
the test suite to run against at least once.
"""
import importlib.util
from pathlib import Path

from setuptools import setup

CORE = Path(__file__).parent / "src" / "gatekit" / "core"


def _building():
    # By its path: gatekit itself cannot be imported before it is built.
    spec = importlib.util.spec_from_file_location("gatekit_building", CORE / "building.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


building = _building()
# The time loop, its scan and the built-in gates again per instruction set, picked at run time
# by gatekit.core.instruction_sets on a CPU that has it.
VECTORISED = ("_builtin", "_loop", "_scan")
extensions = [extension
              for name in ("_gate", "_builtin", "_loop", "_projection", "_scan", "_generated")
              for extension in building.extension(
                  f"gatekit.core.{name}", f"src/gatekit/core/{name}.pyx",
                  vector=name in VECTORISED)]
setup(ext_modules=extensions, options=building.options())
