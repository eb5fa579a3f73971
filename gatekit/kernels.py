"""Which build of the compiled modules runs here.

``_builtin`` (the built-in gates) and ``_loop`` (the time loop) are compiled twice on x86-64:
for any x86-64 CPU, and for AVX2 + FMA (``*_avx2``), twice the vector width for the gate maths.
The second is used where the CPU has both and it was built; ``GATEKIT_KERNELS=baseline``
forces the first (to compare them, or to rule them out).
"""
import importlib
import os

from gatekit._gate import has_avx2_fma

ENV = "GATEKIT_KERNELS"


def load(name, package="gatekit"):
    """The module ``<package>.<name>`` in the build for this CPU: ``<name>_avx2`` if it was
    built and the CPU runs it. A Cython gate plugin that builds both can pick its own with
    this (see plugins/gatekit-floored-forget)."""
    if os.environ.get(ENV, "") != "baseline" and has_avx2_fma():
        try:
            return importlib.import_module(f"{package}.{name}_avx2")
        except ImportError:
            pass
    return importlib.import_module(f"{package}.{name}")
