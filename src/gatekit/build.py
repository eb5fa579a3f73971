"""Building a Cython gate plugin the way gatekit builds its own gates.

A plugin's ``setup.py``::

    from setuptools import setup
    from gatekit import build

    setup(ext_modules=build.extension("my_gates._gate", "src/my_gates/_gate.pyx"),
          options=build.options())

gives the portable build of ``my_gates._gate`` and, on x86-64, ``my_gates._gate_avx2`` and
``my_gates._gate_avx512`` (pick the widest the CPU runs with
``gatekit.core.instruction_sets.load("_gate", package="my_gates")``), compiled with gatekit's
flags and Cython directives; ``GATEKIT_DEBUG=1`` builds the portable module alone, with bounds
checks and no optimisation, into a build folder of its own.
"""
from gatekit.core.building import extension, options, vector_builds

__all__ = ["extension", "options", "vector_builds"]
