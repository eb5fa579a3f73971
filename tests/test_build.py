"""gatekit.build: the extensions of a Cython gate plugin on each platform branch, with
gatekit's flags and directives, and their generated sources."""
import numpy as np
import pytest

import gatekit
from gatekit import build
from gatekit.core import compiler

PORTABLE = ["-O3", "-fno-trapping-math"]
AVX2 = ["-mavx2", "-mfma"]
AVX512 = ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx2", "-mfma",
          "-mprefer-vector-width=512"]


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A gate module's source, in a plugin folder that is the working directory (as setup.py's
    is when it builds)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src" / "my_gates").mkdir(parents=True)
    path = tmp_path / "src" / "my_gates" / "_gate.pyx"
    path.write_text("def element(double[:] a, Py_ssize_t i):\n    return a[i]\n\n\n"
                    "def quotient(int a, int b):\n    return a // b\n")
    return "src/my_gates/_gate.pyx"


def described(extensions):
    return [(e.name, e.sources, e.extra_compile_args, dict(e.define_macros))
            for e in extensions]


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_x86_64_gets_the_portable_avx2_and_avx512_builds(source, machine):
    extensions = build.extension("my_gates._gate", source, machine=machine, debug=False,
                                 cythonize=False)
    macros = {"NPY_NO_DEPRECATED_API": "NPY_2_0_API_VERSION", "GATEKIT_DEBUG": "0"}
    assert described(extensions) == [
        ("my_gates._gate", [source], PORTABLE, macros),
        ("my_gates._gate_avx2", ["src/my_gates/_gate_avx2.pyx"], PORTABLE + AVX2, macros),
        ("my_gates._gate_avx512", ["src/my_gates/_gate_avx512.pyx"], PORTABLE + AVX512,
         macros)]
    for e in extensions:
        assert e.include_dirs[:2] == [np.get_include(), gatekit.get_include()]
    # Each instruction set's module compiles the same source again, by including it.
    with open("src/my_gates/_gate_avx2.pyx") as f:
        assert f.read() == ("# Written by setup.py: _gate.pyx, compiled for AVX2 and FMA.\n"
                            'include "_gate.pyx"\n')


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le"])
def test_other_machines_get_the_portable_build_alone(source, machine):
    extensions = build.extension("my_gates._gate", source, machine=machine, debug=False,
                                 cythonize=False)
    assert [(e.name, e.extra_compile_args) for e in extensions] == [("my_gates._gate",
                                                                      PORTABLE)]


def test_the_debug_build_is_portable_unoptimised_and_checked(source):
    extensions = build.extension("my_gates._gate", source, machine="x86_64", debug=True,
                                 cythonize=False)
    assert described(extensions) == [
        ("my_gates._gate", [source], ["-O0", "-g"],
         {"NPY_NO_DEPRECATED_API": "NPY_2_0_API_VERSION", "GATEKIT_DEBUG": "1"})]
    assert build.options(debug=True) == {"build": {"build_base": "build/debug"}}
    assert build.options(debug=False) == {"build": {"build_base": "build/release"}}


def test_gatekit_debug_in_the_environment_chooses_the_debug_build(source, monkeypatch):
    monkeypatch.setenv("GATEKIT_DEBUG", "1")
    assert build.vector_builds("x86_64") == []
    assert build.options() == {"build": {"build_base": "build/debug"}}
    monkeypatch.setenv("GATEKIT_DEBUG", "0")
    assert build.vector_builds("x86_64") == ["avx2", "avx512"]


def test_vector_false_and_extra_options(source):
    extensions = build.extension("my_gates._gate", source, machine="x86_64", debug=False,
                                 vector=False, include_dirs=["include"],
                                 define_macros=[("MY_GATE", "1")], cythonize=False)
    assert len(extensions) == 1
    assert extensions[0].include_dirs[-1] == "include"
    assert ("MY_GATE", "1") in extensions[0].define_macros


@pytest.mark.parametrize("debug", [False, True])
def test_cython_runs_with_gatekit_directives(source, debug):
    cythonized = build.extension("my_gates._gate", source, machine="aarch64", debug=debug)
    folder = "build/debug" if debug else "build/release"
    (generated,) = cythonized[0].sources
    assert generated == f"{folder}/cython/src/my_gates/_gate.c"
    with open(generated) as f:
        text = f.read()
    # Bounds checks (a[i]) only in the debug build; C division (a // b: no call of Cython's
    # Python-semantics helper) in both.
    assert ("__Pyx_RaiseBufferIndexError" in text) == debug
    assert "__Pyx_div_int(" not in text and "__pyx_v_a / __pyx_v_b" in text


def test_the_equation_gates_compile_with_the_same_flags():
    assert compiler.OPTIMISE[:2] == PORTABLE
    assert compiler.FLAGS == {"baseline": [], "avx2": AVX2, "avx512": AVX512}
