"""Builds the floored forget gate's extension, with gatekit's flags and directives: the portable
build and, on x86-64, its AVX2 and AVX-512 builds (GATEKIT_DEBUG=1: the portable one alone, with
bounds checks). Metadata lives in pyproject.toml."""
from setuptools import setup

from gatekit import build

setup(ext_modules=build.extension("gatekit_floored_forget._floored",
                                  "src/gatekit_floored_forget/_floored.pyx"),
      options=build.options())
