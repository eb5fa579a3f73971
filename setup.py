"""Builds gatekit's compiled core. Metadata lives in pyproject.toml.

GATEKIT_DEBUG=1 builds with bounds checks, wraparound checks and initialisation checks on, for
the test suite to run against at least once.
"""
import os
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
extensions = [
    Extension(f"gatekit.{name}", [f"gatekit/{name}.pyx"],
              include_dirs=[numpy.get_include()],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
                             ("GATEKIT_DEBUG", "1" if DEBUG else "0")],
              extra_compile_args=["-O0", "-g"] if DEBUG else OPTIMISE)
    for name in ("_gate", "_builtin", "_loop")
]

# Separate build folders, so switching GATEKIT_DEBUG never reuses the other build's objects.
BUILD = "build/debug" if DEBUG else "build/release"
setup(ext_modules=cythonize(extensions, compiler_directives=directives, build_dir=f"{BUILD}/cython"),
      options={"build": {"build_base": BUILD}})
