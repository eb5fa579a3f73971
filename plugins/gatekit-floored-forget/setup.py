"""Builds the floored forget gate's extension. Metadata lives in pyproject.toml.

The compiler directives are gatekit's own (see gatekit's setup.py): bounds, wraparound and
initialisation checks are off unless GATEKIT_DEBUG=1.
"""
import os

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
extensions = [
    Extension("gatekit_floored_forget._floored", ["src/gatekit_floored_forget/_floored.pyx"],
              include_dirs=[numpy.get_include()],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
              # -fno-trapping-math, as gatekit's: lets the gate maths vectorise.
              extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math"])
]

BUILD = "build/debug" if DEBUG else "build/release"
setup(ext_modules=cythonize(extensions, compiler_directives=directives, build_dir=f"{BUILD}/cython"),
      options={"build": {"build_base": BUILD}})
