"""Registering equation gates: definitions outside the traced subset refused with the operation
and the line, the build cache across processes, a missing or failing compiler, and the
definition's hash in saved models."""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import gatekit
from gatekit import reference
from gatekit.core.compiler import CompileError
from gatekit.core.equation import UnsupportedOperation
from gatekit.io.files import LoadError


def _line_of(function, text):
    """The line of ``function``'s file holding ``text``."""
    lines, first = inspect.getsourcelines(function)
    return first + next(k for k, line in enumerate(lines) if text in line)


def _forget(name, body):
    """A forget gate whose definition is ``f_t = body(s)``."""
    class Forget(gatekit.EquationGate):
        role, blocks = "forget", ("f",)
        params = {"p_f": ("H",)}

        @staticmethod
        def definition(STM_prev, E_t, W_f, b_f, p_f):
            s = reference.linear(W_f, STM_prev, E_t, b_f)
            return {"f_t": body(s, p_f)}
    Forget.name = name
    return Forget


def sine(s, p):
    return np.sin(s) * p                           # np.sin: not in the subset


def mean(s, p):
    return s - s.mean(axis=-1)                     # cross-unit: not yet compiled


def branch(s, p):
    if s > 0:                                      # the truth value of an array
        return s
    return p


def product(s, p):
    return s @ p                                   # a matrix product


def array_constant(s, p):
    return s * np.arange(3.0)                      # a constant array, not a number


@pytest.mark.parametrize("body, operation", [(sine, "np.sin"), (mean, ".mean"),
                                             (branch, "truth value"), (product, "matrix product"),
                                             (array_constant, "ndarray")])
def test_unsupported_operations_are_refused_at_registration(register_gate, body, operation):
    gate = _forget(f"bad_{body.__name__}", body)
    with pytest.raises(UnsupportedOperation) as raised:
        register_gate(gate)
    message = str(raised.value)
    line = _line_of(body, "return" if body is not branch else "if s > 0")
    called = _line_of(_forget, "body(s, p_f)")
    assert operation in message, message
    assert f"{__file__}, line {line}, called from the definition at {__file__}, line {called}" \
        in message, message
    assert f"bad_{body.__name__}" not in gatekit.gates()["forget"]


def test_a_block_weight_outside_linear_is_refused(register_gate):
    class Peek(gatekit.EquationGate):
        role, name, blocks = "forget", "peek", ("f",)

        @staticmethod
        def definition(STM_prev, E_t, W_f, b_f):
            return {"f_t": reference.sigmoid(b_f + STM_prev)}
    with pytest.raises(UnsupportedOperation, match="the bias b_f"):
        register_gate(Peek)


def test_a_gate_with_its_own_product_is_refused(register_gate):
    """A product over H of the gate's own (H, H) weight (what a Cython gate declares in
    ``products``, the loop computing it on packed panels) is refused, naming the parameter,
    its shape and the line."""
    class Mixing(gatekit.EquationGate):
        role, name, blocks = "use", "mixing_eq", ("v",)
        params = {"W_u": ("H", "H")}

        @staticmethod
        def definition(STM_prev, E_t, LTM_t, W_v, b_v, W_u):
            U_t = np.tanh(LTM_t @ W_u.T)
            V_t = reference.sigmoid(reference.linear(W_v, STM_prev, E_t, b_v))
            return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}
    with pytest.raises(UnsupportedOperation,
                       match=r"the parameter W_u of shape \('H', 'H'\) \(only per-unit "
                             r"parameters, shape \('H',\), and scalars, shape \(\), are traced\)"
                             r" is not in the subset gatekit compiles \(.*, line \d+, in "):
        register_gate(Mixing)
    assert "mixing_eq" not in gatekit.gates()["use"]


def test_compile_false_keeps_a_python_gate(register_gate):
    class Slow(gatekit.EquationGate):
        role, name, blocks = "forget", "slow_eq", ("f",)
        compile = False

        @staticmethod
        def definition(STM_prev, E_t, W_f, b_f):
            return {"f_t": reference.sigmoid(reference.linear(W_f, STM_prev, E_t, b_f))}
    cls = register_gate(Slow)
    assert issubclass(cls, gatekit.PythonGate)
    cell = gatekit.Cell(3, 4, forget="slow_eq", dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    np.testing.assert_allclose(cell(x)[0], reference.forward(cell, x)[0], atol=1e-13, rtol=0)


def test_compile_false_runs_a_definition_outside_the_subset_forward(register_gate):
    gate = _forget("sine_py", sine)
    cls = register_gate(gate, compile=False)
    assert issubclass(cls, gatekit.PythonGate) and not cls.is_differentiable()
    cell = gatekit.Cell(3, 4, forget="sine_py", dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    p = cell.params
    h, c = np.zeros((2, 4)), np.zeros((2, 4))
    for t in range(5):
        v = np.concatenate([h, x[t]], axis=1)
        c = (np.sin(v @ p["W_f"].T + p["b_f"]) * p["p_f"] * c
             + reference.sigmoid(v @ p["W_i"].T + p["b_i"]) * np.tanh(v @ p["W_n"].T + p["b_n"]))
        h = np.tanh(c) * reference.sigmoid(v @ p["W_v"].T + p["b_v"])
    np.testing.assert_allclose(cell(x)[0][-1], h, atol=1e-13, rtol=0)
    with pytest.raises(NotImplementedError, match="no backward"):
        cell.backward(cell.forward(x, keep=True)[2], np.ones((5, 2, 4)))


GATE_MODULE = '''
import sys, time
import numpy as np
import gatekit
from gatekit import reference


class Scaled(gatekit.EquationGate):
    role, name, blocks = "forget", "scaled", ("f",)

    @staticmethod
    def definition(STM_prev, E_t, W_f, b_f):
        return {{"f_t": {scale} * reference.sigmoid(reference.linear(W_f, STM_prev, E_t, b_f))}}


if __name__ == "__main__":
    gatekit.register_gate(Scaled)
    cls = gatekit.core.plugins.registry().gates["forget"]["scaled"].cls
    cell = gatekit.Cell(3, 4, forget="scaled", dtype=np.float64, seed=0, threads=2)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    error = np.abs(cell(x)[0] - reference.forward(cell, x)[0]).max()
    assert error < 1e-12, error
    print(cls.kernels.library)
'''


def _gate_script(folder, scale="0.9"):
    path = folder / f"scaled_{scale.replace('.', '_')}.py"
    path.write_text(GATE_MODULE.format(scale=scale))
    return path


def _run(script, cache, **environment):
    env = {**os.environ, "GATEKIT_CACHE_DIR": str(cache), **environment}
    return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out.strip()


def test_a_second_process_loads_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    script = _gate_script(tmp_path)
    library = _finish(_run(script, cache))
    built = os.stat(library)
    # Built once: the second process finds the library and leaves it as it was.
    assert _finish(_run(script, cache)) == library
    assert os.stat(library).st_mtime_ns == built.st_mtime_ns
    assert sorted(p.suffix for p in cache.glob("forget-scaled-*")) == [".c", ".so"]


def test_a_changed_definition_builds_anew(tmp_path):
    cache = tmp_path / "cache"
    first = _finish(_run(_gate_script(tmp_path, "0.9"), cache))
    second = _finish(_run(_gate_script(tmp_path, "0.8"), cache))
    assert first != second and os.path.exists(first) and os.path.exists(second)


def test_two_processes_building_at_once_both_work(tmp_path):
    cache = tmp_path / "cache"
    script = _gate_script(tmp_path)
    processes = [_run(script, cache) for _ in range(2)]
    libraries = {_finish(process) for process in processes}
    assert len(libraries) == 1
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_no_compiler_names_it_and_the_source(tmp_path, monkeypatch, register_gate):
    monkeypatch.setenv("GATEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    gate = _forget("uncompiled", lambda s, p: p * s)
    with pytest.raises(CompileError, match="no C compiler") as raised:
        register_gate(gate)
    source = next(tmp_path.glob("*.c"))
    assert str(source) in str(raised.value) and "no-such-cc" in str(raised.value)


def test_a_failing_compiler_gives_its_message(tmp_path, monkeypatch, register_gate):
    monkeypatch.setenv("GATEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "cc -include gatekit_no_such_header.h")
    gate = _forget("miscompiled", lambda s, p: p * s)
    with pytest.raises(CompileError, match="gatekit_no_such_header.h") as raised:
        register_gate(gate)
    assert str(next(tmp_path.glob("*.c"))) in str(raised.value)
    assert not list(tmp_path.glob("*.so"))


def _changed(scale):
    class Changing(gatekit.EquationGate):
        role, name, blocks = "forget", "changing", ("f",)

        @staticmethod
        def definition(STM_prev, E_t, W_f, b_f):
            return {"f_t": scale * reference.sigmoid(reference.linear(W_f, STM_prev, E_t, b_f))}
    return Changing


def test_load_detects_a_changed_definition(tmp_path, register_gate):
    register_gate(_changed(0.9))
    cell = gatekit.Cell(3, 4, forget="changing", seed=0)
    path = tmp_path / "cell.npz"
    gatekit.save(cell, path)
    assert gatekit.load(path, strict=True).params["W_f"].shape == (4, 7)
    gatekit.unregister_plugin("forget:changing")
    register_gate(_changed(0.8))
    with pytest.warns(UserWarning, match="definition that differs"):
        loaded = gatekit.load(path)
    np.testing.assert_array_equal(loaded.params["W_f"], cell.params["W_f"])
    with pytest.raises(LoadError, match="definition that differs"):
        gatekit.load(path, strict=True)


def test_the_cache_folder_is_documented_and_movable(tmp_path, monkeypatch):
    from gatekit.core import compiler
    monkeypatch.delenv("GATEKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compiler.cache_dir() == tmp_path / "gatekit"
    monkeypatch.setenv("GATEKIT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert compiler.cache_dir() == tmp_path / "elsewhere"
    assert "GATEKIT_CACHE_DIR" in compiler.__doc__


def test_each_instruction_set_is_built_when_needed(tmp_path):
    """GATEKIT_KERNELS caps the build as it caps the core's: a capped process builds (and
    uses) its own library beside the widest one."""
    from gatekit.core import instruction_sets
    cache = tmp_path / "cache"
    script = _gate_script(tmp_path)
    widest = _finish(_run(script, cache))
    expected = (instruction_sets.builds() or ["baseline"])[0]
    assert widest.endswith(f"-{expected}.so")
    baseline = _finish(_run(script, cache, GATEKIT_KERNELS="baseline"))
    assert baseline.endswith("-baseline.so") and os.path.exists(widest)


def test_register_gate_takes_any_gate(register_gate):
    """register_gate is the one-gate plugin for gates of every kind, not only equations."""
    class Halved(gatekit.PythonGate):
        role, name, blocks = "forget", "halved_py", ("f",)
        definition = staticmethod(lambda STM_prev, E_t, W_f, b_f: {
            "f_t": reference.sigmoid(reference.linear(W_f, STM_prev, E_t, b_f)) / 2})

        def forward(self, step):
            step.f_t[...] = reference.sigmoid(step.z("f")) / 2
    assert register_gate(Halved) is Halved
    assert gatekit.core.plugins.plugin_manager().get_plugin("forget:halved_py") is not None
