"""Builds gatekit's compiled core. Metadata lives in pyproject.toml.

GATEKIT_DEBUG=1 builds with bounds checks, wraparound checks and initialisation checks on, for
the test suite to run against at least once.
"""
import os
import platform
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("GATEKIT_DEBUG", "") not in ("", "0")
HERE = Path(__file__).parent
CORE = HERE / "src" / "gatekit" / "core"


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
    return Extension(f"gatekit.core.{name}", [source or f"src/gatekit/core/{name}.pyx"],
                     include_dirs=[numpy.get_include(), str(CORE)],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
                                    ("GATEKIT_DEBUG", "1" if DEBUG else "0")],
                     extra_compile_args=["-O0", "-g"] if DEBUG else OPTIMISE + list(extra))


extensions = [extension(name) for name in ("_gate", "_builtin", "_loop", "_projection", "_scan",
                                               "_generated")]


# Each module once more per instruction set, picked at run time by gatekit.core.instruction_sets
# on a CPU that has it (never -march=native, so what is installed runs on any x86-64).
VECTOR_BUILDS = {
    "avx2": ("AVX2 and FMA", ["-mavx2", "-mfma"]),
    "avx512": ("AVX-512", ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx2",
                           "-mfma", "-mprefer-vector-width=512"]),
}


def write_vector_source(name, build):
    """``name``.pyx included by ``name``_``build``.pyx, to compile it with other flags."""
    target = CORE / f"{name}_{build}.pyx"
    text = (f"# Written by setup.py: {name}.pyx, compiled for {VECTOR_BUILDS[build][0]}.\n"
            f'include "{name}.pyx"\n')
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


if platform.machine().lower() in ("x86_64", "amd64") and not DEBUG:
    for name in ("_builtin", "_loop", "_scan"):
        for build, (_, flags) in VECTOR_BUILDS.items():
            write_vector_source(name, build)
            extensions.append(extension(f"{name}_{build}", extra=flags))

# Separate build folders, so switching GATEKIT_DEBUG never reuses the other build's objects.
BUILD = "build/debug" if DEBUG else "build/release"
setup(ext_modules=cythonize(extensions, compiler_directives=directives, build_dir=f"{BUILD}/cython"),
      options={"build": {"build_base": BUILD}})
