"""How every compiled gate is built: the compiler flags and Cython directives of gatekit's own
modules (setup.py, which loads this file by its path: the package is not importable while it is
being built), of Cython gate plugins (:func:`extension`, public as ``gatekit.build``) and of the
equation gates compiled at run time (:mod:`gatekit.core.compiler`). The standard library only at
import, for that reason; NumPy, setuptools and Cython when :func:`extension` runs."""
import os
import platform
from pathlib import Path

__all__ = ["DEBUG_ENV", "DEBUG_FLAGS", "OPTIMISE", "VECTOR_BUILDS", "debug_requested",
           "directives", "extension", "generated_folder", "options", "vector_builds"]

#: GATEKIT_DEBUG=1 builds with bounds, wraparound and initialisation checks on and no
#: optimisation, for a test suite to run against at least once.
DEBUG_ENV = "GATEKIT_DEBUG"
DEBUG_FLAGS = ["-O0", "-g"]
# -fno-trapping-math lets the compiler turn the selects of the gate maths into vector blends
# (nothing here reads floating-point exception flags); without it no gate loop vectorises.
OPTIMISE = ["-O3", "-fno-trapping-math"]
#: Each build of a module beyond the portable one: (the instructions, in words; their flags).
#: Picked at run time on a CPU that has them (gatekit.core.instruction_sets), never
#: -march=native, so what is installed runs on any x86-64.
VECTOR_BUILDS = {
    "avx2": ("AVX2 and FMA", ["-mavx2", "-mfma"]),
    "avx512": ("AVX-512", ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx2",
                           "-mfma", "-mprefer-vector-width=512"]),
}


def debug_requested(environ=None):
    """Whether the environment asks for the debug build (``GATEKIT_DEBUG`` set, not ``0``)."""
    return (os.environ if environ is None else environ).get(DEBUG_ENV, "") not in ("", "0")


def directives(debug):
    """The Cython compiler directives: the checks on only in the debug build."""
    return {"language_level": 3, "boundscheck": debug, "wraparound": debug,
            "initializedcheck": debug, "cdivision": True, "embedsignature": True}


#: gatekit's C headers and ``_gate.pxd``: this folder.
INCLUDE = Path(__file__).parent
X86_64 = ("x86_64", "amd64")


def vector_builds(machine=None, debug=None):
    """The instruction sets a module is built for besides the portable build: ``avx2`` and
    ``avx512`` on x86-64 (``machine`` as :func:`platform.machine` names it), none elsewhere or
    in the debug build (``debug``: None reads ``GATEKIT_DEBUG``)."""
    debug = debug_requested() if debug is None else debug
    machine = platform.machine() if machine is None else machine
    return [] if debug or machine.lower() not in X86_64 else list(VECTOR_BUILDS)


def _build_folder(debug):
    # Separate folders, so that switching GATEKIT_DEBUG never reuses the other build's objects.
    return "build/debug" if debug else "build/release"


def generated_folder(debug=None):
    """Where a build writes the C it generates (gatekit.core.derived), in its build folder."""
    debug = debug_requested() if debug is None else debug
    return Path(_build_folder(debug)) / "generated"


def options(debug=None):
    """``setup(options=...)``: the build folder of the release or the debug build."""
    debug = debug_requested() if debug is None else debug
    return {"build": {"build_base": _build_folder(debug)}}


def _write_vector_source(source, build):
    """``<module>_<build>.pyx`` beside ``source``, which includes it, to compile it again with
    the flags of ``build``; written only when it differs, so an unchanged build stays built."""
    source = Path(source)
    target = source.with_name(f"{source.stem}_{build}{source.suffix}")
    text = (f"# Written by setup.py: {source.name}, compiled for "
            f"{VECTOR_BUILDS[build][0]}.\ninclude \"{source.name}\"\n")
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return target.as_posix()


def extension(name, source, *, include_dirs=(), define_macros=(), depends=(), vector=True,
              debug=None, machine=None, cythonize=True):
    """The extensions of the Cython module ``name`` (dotted) compiled from ``source`` (a .pyx
    path relative to setup.py): the portable build, and one per instruction set of
    :func:`vector_builds` (``vector=False``: the portable one only), named ``<name>_avx2`` and
    ``<name>_avx512``. ``include_dirs`` are searched after NumPy's and gatekit's own (this
    folder: ``_gate.pxd`` and the headers it includes, installed or, for gatekit's own build,
    in the source tree). ``depends``: files whose change rebuilds it (headers it includes
    that Cython does not see). ``debug``: None reads ``GATEKIT_DEBUG``; ``machine``: None is
    this one.

    Returns what :func:`Cython.Build.cythonize` returns, ready for ``setup(ext_modules=...)``,
    or the :class:`setuptools.Extension` objects before Cython (``cythonize=False``).
    """
    import numpy
    from setuptools import Extension

    debug = debug_requested() if debug is None else debug
    includes = [numpy.get_include(), str(INCLUDE), *map(str, include_dirs)]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
              ("GATEKIT_DEBUG", "1" if debug else "0"), *define_macros]

    def one(module, path, extra=()):
        return Extension(module, [str(path)], include_dirs=includes, define_macros=macros,
                         depends=[str(path) for path in depends],
                         extra_compile_args=DEBUG_FLAGS if debug else OPTIMISE + list(extra))

    built = [one(name, source)]
    for build in vector_builds(machine, debug) if vector else ():
        built.append(one(f"{name}_{build}", _write_vector_source(source, build),
                         VECTOR_BUILDS[build][1]))
    if not cythonize:
        return built
    from Cython.Build import cythonize as run_cython
    return run_cython(built, compiler_directives=directives(debug),
                      build_dir=f"{_build_folder(debug)}/cython")
