"""Builds gatekit's compiled core. Metadata lives in pyproject.toml; the flags, directives and
builds per instruction set in src/gatekit/core/building.py (shared with Cython gate plugins,
through gatekit.build, and with the equation gates' compiler).

The built-in gates of gatekit.core.derived have no hand-written kernels: their definitions are
traced and their kernels generated here, into the build folder, and compiled into _builtin.

GATEKIT_DEBUG=1 builds with bounds checks, wraparound checks and initialisation checks on, for
the test suite to run against at least once.
"""
import importlib
import sys
import types
from pathlib import Path

from setuptools import setup

SOURCE = Path(__file__).parent / "src" / "gatekit"


def _pure(name):
    """The pure-Python module ``gatekit.core.<name>``, imported without running gatekit's
    ``__init__`` (which imports the compiled modules this builds)."""
    packages = {"gatekit": SOURCE, "gatekit.core": SOURCE / "core"}
    for package, path in packages.items():
        sys.modules[package] = types.ModuleType(package)
        sys.modules[package].__path__ = [str(path)]
    try:
        return importlib.import_module(f"gatekit.core.{name}")
    finally:
        for module in [module for module in sys.modules if module.split(".")[0] == "gatekit"]:
            del sys.modules[module]


def _write_derived(building):
    """The header of the kernels of gatekit.core.derived, written to the build folder only
    when it differs (so an unchanged build stays built)."""
    derived = _pure("derived")
    header = building.generated_folder() / derived.HEADER
    text = derived.header()
    if not header.exists() or header.read_text() != text:
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_text(text)
    return header


building = _pure("building")
derived_header = _write_derived(building)
# The time loop, its scan and the built-in gates again per instruction set, picked at run time
# by gatekit.core.instruction_sets on a CPU that has it.
VECTORISED = ("_builtin", "_loop", "_scan")
extensions = [extension
              for name in ("_gate", "_builtin", "_loop", "_projection", "_scan", "_generated")
              for extension in building.extension(
                  f"gatekit.core.{name}", f"src/gatekit/core/{name}.pyx",
                  vector=name in VECTORISED,
                  **({"include_dirs": [derived_header.parent], "depends": [derived_header]}
                     if name == "_builtin" else {}))]
setup(ext_modules=extensions, options=building.options())
