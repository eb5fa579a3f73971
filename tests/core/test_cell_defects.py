"""Robustness of the cell's public entry points: ragged batches through ``cell(...)``,
read-only inputs, parameters that change between forward and backward, values a parameter must
refuse (a layer's too), and Python gates that keep their step arrays. Every value is checked
against ``gatekit.reference`` (or an equation written here)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gatekit
from gatekit.core import reference

from support import F64_ATOL, child_env, frozen, random_inputs


def f64_cell(**kwargs):
    return gatekit.Cell(3, 4, dtype=np.float64, seed=3, **kwargs)


# --- cell(x, lengths=...) --------------------------------------------------------------------

def test_calling_a_cell_takes_lengths_and_matches_the_reference_per_sequence():
    cell = f64_cell()
    x, state = random_inputs(cell, 6, 3, seed=1)
    lengths = np.array([6, 2, 4])
    y, (stm, ltm) = cell(x, state, lengths=lengths)
    for b, length in enumerate(lengths):
        one = (state[0][b:b + 1], state[1][b:b + 1])
        y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x[:length, b:b + 1], one)
        np.testing.assert_allclose(y[:length, b], y_ref[:, 0], rtol=0, atol=F64_ATOL)
        assert np.all(y[length:, b] == 0)
        np.testing.assert_allclose(stm[b], stm_ref[0], rtol=0, atol=F64_ATOL)
        np.testing.assert_allclose(ltm[b], ltm_ref[0], rtol=0, atol=F64_ATOL)


# --- read-only inputs --------------------------------------------------------------------------

def test_read_only_inputs_of_the_cells_dtype_just_work(tmp_path):
    cell = f64_cell()
    x, state = random_inputs(cell, 5, 2, seed=4)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not mapped.flags.writeable and mapped.dtype == cell.dtype
    frozen_state = (frozen(state[0]), frozen(state[1]))
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state)

    y, (stm, ltm) = cell(mapped, frozen_state)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=F64_ATOL)
    np.testing.assert_allclose(ltm, ltm_ref, rtol=0, atol=F64_ATOL)
    lengths = frozen(np.array([5, 3], dtype=np.intp))
    y, _ = cell(mapped, frozen_state, lengths=lengths)
    np.testing.assert_allclose(y[:, 0], y_ref[:, 0], rtol=0, atol=F64_ATOL)

    rng = np.random.default_rng(5)
    dy, dstm, dltm = (rng.standard_normal(shape) for shape in ((5, 2, 4), (2, 4), (2, 4)))
    _, _, tape = cell.forward(mapped, frozen_state, keep=True)
    got = cell.backward(tape, frozen(dy), frozen(dstm), frozen(dltm))
    want = reference.backward(cell, x, dy, state, dstm, dltm)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)


# --- backward after the parameters changed ------------------------------------------------------

@pytest.mark.parametrize("change", ["in-place", "assignment", "optimiser"])
def test_backward_refuses_a_tape_whose_parameters_changed(change):
    cell = f64_cell()
    x, state = random_inputs(cell, 4, 2, seed=7)
    dy = np.random.default_rng(8).standard_normal((4, 2, 4))
    _, _, tape = cell.forward(x, state, keep=True)
    if change == "in-place":
        cell.params["W_f"][...] += 1
    elif change == "assignment":
        cell.params["b_f"] = cell.params["b_f"] + 0.5
    else:
        grads = cell.backward(tape, dy)
        optimiser = gatekit.optimisers.SGD(cell.params, lr=0.1)
        optimiser.step(grads)
    with pytest.raises(ValueError, match=r"changed after the forward pass") as info:
        cell.backward(tape, dy)
    if change != "optimiser":
        assert ("'W_f'" if change == "in-place" else "'b_f'") in str(info.value)
    # A fresh tape of the new parameters is what the reference says.
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy)
    want = reference.backward(cell, x, dy, state)
    np.testing.assert_allclose(got["W_f"], want["W_f"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("changed", [["W_u"], ["W_v"], ["b_n", "W_u"]])
def test_backward_names_exactly_the_parameters_that_changed(changed):
    # Course cell: W_u is a gate's own parameter, the others are blocks of the packed weights.
    cell = gatekit.Cell(3, 4, "course", dtype=np.float64, seed=1)
    x, state = random_inputs(cell, 3, 2, seed=2)
    y, _, tape = cell.forward(x, state, keep=True)
    for name in changed:
        cell.params[name].reshape(-1)[0] += 1e-12
    with pytest.raises(ValueError) as info:
        cell.backward(tape, np.ones_like(y))
    named = [name for name in cell.params if repr(name) in str(info.value)]
    assert named == [name for name in cell.params if name in changed]


# --- what a parameter refuses -------------------------------------------------------------------

@pytest.mark.parametrize("value,given", [
    (np.full((4, 7), 1 + 2j), "complex128"),
    (np.full((4, 7), "0.5"), "<U3"),
    ([["a"] * 7] * 4, "<U1"),
], ids=["complex", "strings", "nested-lists-of-strings"])
def test_parameter_refuses_values_that_are_not_real_numbers(value, given):
    cell = f64_cell()
    lstm = gatekit.LSTM(3, 4, dtype=np.float64, seed=1)
    for params, name in ((cell.params, "W_f"), (lstm.params, "l0.W_f")):
        before = params[name].copy()
        with pytest.raises(TypeError) as info:
            params[name] = value
        message = str(info.value)
        assert repr(name) in message and given in message and "real numbers" in message
        assert np.array_equal(params[name], before)


def test_parameter_takes_real_numbers_of_any_kind():
    cell = f64_cell()
    cell.params["b_f"] = np.arange(4)                    # integers
    np.testing.assert_array_equal(cell.params["b_f"], [0.0, 1.0, 2.0, 3.0])
    cell.params["b_f"] = np.full(4, 0.25, np.float32)
    np.testing.assert_array_equal(cell.params["b_f"], [0.25] * 4)


# --- Python gates that keep their step arrays ---------------------------------------------------

KEEPER = textwrap.dedent("""
    import gc
    import numpy as np
    import gatekit
    from gatekit.core import reference
    kept = []

    class Keeper(gatekit.PythonGate):
        role, name, blocks, params = "forget", "keeper", ("f",), {}
        definition = staticmethod(reference.forget)

        def forward(self, step):
            step.f_t[...] = reference.sigmoid(step.z("f"))
            kept.append((step.f_t, step.z("f"), step.STM_prev, step.LTM_t))

        def backward(self, step):
            step.dz("f")[...] += step.df_t * step.f_t * (1 - step.f_t)
            kept.append((step.dz("f"), step.df_t, step.dLTM_prev))

    class Plugin:
        @gatekit.hookimpl
        def register_gates(self, register):
            register(Keeper)

    gatekit.register_plugin(Plugin(), name="keeper")
    for dtype in (np.float32, np.float64):
        for size in (64, 96):
            cell = gatekit.Cell(8, size, forget="keeper", dtype=dtype, seed=0)
            x = np.ones((8, 4, 8), dtype)       # steps enough to keep several of each buffer
            cell(x)
            _, _, tape = cell.forward(x, keep=True)
            cell.backward(tape, np.ones((8, 4, size), dtype))
            del cell, tape
            gc.collect()
    first = kept[0][0].copy()
    for round in range(30):
        junk = [np.full((1 << 16,), round, np.float64) for _ in range(20)]
        for arrays in kept:
            for array in arrays:
                if array is not None and array.flags.writeable:
                    array += 1.0
                    array *= 0.5
                float(np.sum(array))
        del junk
    print("kept", len(kept), "arrays alive")
""")


def test_a_python_gate_may_keep_its_step_arrays(tmp_path):
    # In a child process: a use-after-free would kill it, not the test run.
    result = subprocess.run([sys.executable, "-c", KEEPER], env=child_env(), capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "arrays alive" in result.stdout
