"""Builds the floored forget gate's extension. Metadata lives in pyproject.toml.

The compiler directives are gatekit's own (see gatekit's setup.py): bounds, wraparound and
initialisation checks are off unless GATEKIT_DEBUG=1.
"""
import os
import platform
from pathlib import Path

import gatekit
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("GATEKIT_DEBUG", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
SOURCE = Path(__file__).parent / "src" / "gatekit_floored_forget"


def extension(name, extra=()):
    return Extension(f"gatekit_floored_forget.{name}", [f"src/gatekit_floored_forget/{name}.pyx"],
                     include_dirs=[numpy.get_include(), gatekit.get_include()],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
                     # -fno-trapping-math, as gatekit's: lets the gate maths vectorise.
                     extra_compile_args=["-O0", "-g"] if DEBUG
                     else ["-O3", "-fno-trapping-math", *extra])


extensions = [extension("_floored")]
# As gatekit does for its own gates: builds for AVX2 + FMA and for AVX-512, picked at run time
# (gatekit.core.instruction_sets.load), so the plugin's gate maths has the built-in gates' vector width.
VECTOR_BUILDS = {
    "avx2": ("AVX2 and FMA", ["-mavx2", "-mfma"]),
    "avx512": ("AVX-512", ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx2",
                           "-mfma", "-mprefer-vector-width=512"]),
}
if platform.machine().lower() in ("x86_64", "amd64") and not DEBUG:
    for build, (instructions, flags) in VECTOR_BUILDS.items():
        (SOURCE / f"_floored_{build}.pyx").write_text(
            f"# Written by setup.py: _floored.pyx, compiled for {instructions}.\n"
            'include "_floored.pyx"\n')
        extensions.append(extension(f"_floored_{build}", flags))

BUILD = "build/debug" if DEBUG else "build/release"
setup(ext_modules=cythonize(extensions, compiler_directives=directives, build_dir=f"{BUILD}/cython"),
      options={"build": {"build_base": BUILD}})
