"""Which build of the compiled modules runs here.

``_builtin`` (the built-in gates), ``_loop`` (the time loop) and ``_scan`` (the scan over the
whole sequence, for cells that allow it) are compiled three times on
x86-64: for any x86-64 CPU, for AVX2 + FMA (``*_avx2``, twice the vector width of the
baseline) and for AVX-512 (``*_avx512``, twice again, and 32 vector registers for the loop's
matrix products). The widest build the CPU runs is used where it was built;
``GATEKIT_KERNELS=avx2`` or ``=baseline`` caps the choice (to compare builds, or to rule one
out).
"""
import importlib
import os
import warnings

from gatekit.core._gate import has_avx2_fma, has_avx512

__all__ = ["BUILDS", "builds", "ENV", "load"]

ENV = "GATEKIT_KERNELS"
# Widest first: (suffix of the module, whether this CPU runs it).
BUILDS = (("avx512", has_avx512), ("avx2", has_avx2_fma))


def builds():
    """The builds this process may use, widest first, as ``GATEKIT_KERNELS`` allows."""
    cap = os.environ.get(ENV, "")
    names = [name for name, _ in BUILDS]
    if cap == "baseline":
        return []
    if cap in names:
        names = names[names.index(cap):]
    elif cap:
        raise ValueError(f"{ENV} must be one of {', '.join(names)} or baseline; got {cap!r}")
    return [name for name, runs in BUILDS if name in names and runs()]


def load(name, package="gatekit.core"):
    """The module ``<package>.<name>`` in the widest build this CPU runs (``<name>_avx512``,
    ``<name>_avx2``, else ``<name>``), among those that were built. A Cython gate plugin that
    builds more than one can pick its own with this (see plugins/gatekit-floored-forget)."""
    for build in builds():
        module = f"{package}.{name}_{build}"
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:        # it was built, but needs something that is missing
                _warn_unusable(module, error)
        except ImportError as error:
            _warn_unusable(module, error)
    return importlib.import_module(f"{package}.{name}")


def _warn_unusable(module, error):
    # A build that exists but does not load would otherwise be replaced, silently, by a
    # narrower and slower one.
    warnings.warn(f"{module} was built for this CPU but does not load ({error}); using a "
                  f"narrower build of it instead", RuntimeWarning, stacklevel=3)
