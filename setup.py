"""Builds gatekit's compiled core. Metadata lives in pyproject.toml.

GATEKIT_DEBUG=1 builds with bounds checks, wraparound checks and initialisation checks on, for
the test suite to run against at least once.
"""
import os
import platform
from pathlib import Path

import numpy
import scipy.linalg
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("GATEKIT_DEBUG", "") not in ("", "0")
HERE = Path(__file__).parent


def write_blas_int_pxd():
    """SciPy 1.18 declares `blas_int` in cython_blas; older SciPy takes plain `int`."""
    scipy_pxd = Path(scipy.linalg.__file__).parent / "cython_blas.pxd"
    has_blas_int = "blas_int" in scipy_pxd.read_text()
    line = ("from scipy.linalg.cython_blas cimport blas_int" if has_blas_int
            else "ctypedef int blas_int")
    target = HERE / "gatekit" / "_blas_int.pxd"
    text = f"# Written by setup.py for the SciPy it builds against.\n{line}\n"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


write_blas_int_pxd()

# -fno-trapping-math lets the compiler turn the selects of the gate maths into vector blends
# (nothing here reads floating-point exception flags); without it no gate loop vectorises.
OPTIMISE = ["-O3", "-fno-trapping-math"]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}


def extension(name, source=None, extra=()):
    return Extension(f"gatekit.{name}", [source or f"gatekit/{name}.pyx"],
                     include_dirs=[numpy.get_include(), str(HERE / "gatekit")],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
                                    ("GATEKIT_DEBUG", "1" if DEBUG else "0")],
                     extra_compile_args=["-O0", "-g"] if DEBUG else OPTIMISE + list(extra))


extensions = [extension(name) for name in ("_gate", "_builtin", "_loop")]


def write_avx2_source(name):
    """``name`` once more, compiled for AVX2 and FMA: twice the vector width for the gate maths.
    gatekit.kernels picks it at run time on a CPU that has both (never -march=native, so what
    is installed runs on any x86-64)."""
    target = HERE / "gatekit" / f"{name}_avx2.pyx"
    text = f'# Written by setup.py: {name}.pyx, compiled for AVX2 and FMA.\ninclude "{name}.pyx"\n'
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


if platform.machine().lower() in ("x86_64", "amd64") and not DEBUG:
    for name in ("_builtin", "_loop"):
        write_avx2_source(name)
        extensions.append(extension(f"{name}_avx2", extra=["-mavx2", "-mfma"]))

# Separate build folders, so switching GATEKIT_DEBUG never reuses the other build's objects.
BUILD = "build/debug" if DEBUG else "build/release"
setup(ext_modules=cythonize(extensions, compiler_directives=directives, build_dir=f"{BUILD}/cython"),
      options={"build": {"build_base": BUILD}})
