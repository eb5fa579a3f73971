"""Extra memories in the gate interface (``Gate.memories``), apart from sLSTM: a gate written in
Python that keeps a memory of its own, run on the compiled loop and held to its NumPy
definition, to the equations written out here and to finite differences; the state, the tape,
the trace, ragged batches and ``check_gate`` carry it; cells without extra memories keep their
``(stm, ltm)`` exactly."""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.core.plugins import PluginError
from gatekit.testing import check_gate, gradcheck
from support import assert_close, dtype_id, make_plugin, sigmoid

DTYPES = [np.float64, np.float32]
H, D = 5, 3
# The memory's declared initial value: not zero, so that a default that fell back to zeros
# would show.
A0 = 0.5


def use_averaged(STM_prev, E_t, LTM_t, a_prev, W_v, b_v):
    """a_t = (a_{t-1} + tanh(LTM_t)) / 2, a running average of the squashed LTM kept as an extra
    memory; U_t = a_t, V_t = σ(W_v [STM_{t-1}, E_t] + b_v), STM_t = U_t ⊙ V_t."""
    a_t = 0.5 * a_prev + 0.5 * np.tanh(LTM_t)
    V_t = reference.sigmoid(reference.linear(W_v, STM_prev, E_t, b_v))
    return {"a_t": a_t, "U_t": a_t, "V_t": V_t, "STM_t": a_t * V_t}


def use_averaged_backward(STM_prev, E_t, LTM_t, U_t, V_t, dSTM_t, da_t, W_v):
    da = da_t + dSTM_t * V_t                     # U_t is a_t
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return reference.merge(reference.linear_backward(dz_v, W_v, STM_prev, E_t, "v"),
                           {"dLTM_t": 0.5 * da * (1 - np.tanh(LTM_t) ** 2), "da_prev": 0.5 * da})


class AveragedUse(gatekit.PythonGate):
    role, name, blocks = "use", "averaged", ("v",)
    memories = {"a": A0}
    definition = staticmethod(use_averaged)
    backward_definition = staticmethod(use_averaged_backward)

    def forward(self, step):
        step.a_t[...] = 0.5 * step.a_prev + 0.5 * np.tanh(step.LTM_t)
        step.V_t[...] = reference.sigmoid(step.z("v"))
        step.U_t[...] = step.a_t
        step.STM_t[...] = step.U_t * step.V_t

    def backward(self, step):
        dU = step.dSTM_t * step.V_t
        step.dU_t += dU
        step.dV_t += step.dSTM_t * step.U_t
        step.dz("v")[...] += step.dSTM_t * step.U_t * step.V_t * (1 - step.V_t)
        da = step.da_t + dU
        step.dLTM_t += 0.5 * da * (1 - np.tanh(step.LTM_t) ** 2)
        step.da_prev += 0.5 * da


@pytest.fixture
def averaged(register):
    register(make_plugin(gates=[AveragedUse]), name="test-averaged-use")


def oracle(cell, x, state):
    """The standard LSTM with the averaged output, written out from the equations, in float64."""
    p = {name: np.asarray(value, np.float64) for name, value in cell.params.items()}
    h, c, a = (np.array(value, np.float64) for value in state)
    ys = []
    for E in np.asarray(x, np.float64):
        hx = np.concatenate([h, E], axis=1)
        f = sigmoid(hx @ p["W_f"].T + p["b_f"])
        i = sigmoid(hx @ p["W_i"].T + p["b_i"])
        n = np.tanh(hx @ p["W_n"].T + p["b_n"])
        c = f * c + i * n
        a = (a + np.tanh(c)) / 2
        h = a * sigmoid(hx @ p["W_v"].T + p["b_v"])
        ys.append(h)
    return np.array(ys), (h, c, a)


def random_state(B, rng, dtype):
    return tuple(rng.uniform(-1, 1, (B, H)).astype(dtype) for _ in range(3))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_python_gate_with_a_memory_matches_its_definition_and_the_equations(averaged, dtype):
    cell = gatekit.Cell(D, H, use="averaged", dtype=dtype, seed=1)
    assert cell.memories == ("a",)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 3, D)).astype(dtype)
    state = random_state(3, rng, dtype)
    y, final = cell(x, state)
    assert len(final) == 3 and all(v.shape == (3, H) and v.dtype == dtype for v in final)
    y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
    y_eq, final_eq = oracle(cell, x, state)
    for what, got, ref, eq in zip(("stm", "ltm", "a"), final, final_ref, final_eq):
        assert_close(dtype, got, ref, what)
        assert_close(dtype, got, eq, what)
    assert_close(dtype, y, y_ref, "y")
    assert_close(dtype, y, y_eq, "y")


def test_memory_starts_from_its_declared_value(averaged):
    cell = gatekit.Cell(D, H, use="averaged", dtype=np.float64, seed=2)
    x = np.random.default_rng(2).standard_normal((4, 2, D))
    zeros = np.zeros((2, H))
    declared = (zeros, zeros, np.full((2, H), A0))
    y, final = cell(x)
    y_pair, final_pair = cell(x, (zeros, zeros))          # a pair: the memory at its default
    y_eq, final_eq = oracle(cell, x, declared)
    for got in (y, y_pair):
        np.testing.assert_allclose(got, y_eq, rtol=0, atol=1e-12)
    for got in (final, final_pair):
        for value, want in zip(got, final_eq):
            np.testing.assert_allclose(value, want, rtol=0, atol=1e-12)
    # No step: the state passes through, the memory included.
    _, (stm, ltm, a) = cell(x[:0])
    np.testing.assert_array_equal(a, np.full((2, H), A0))


def test_gradients_of_a_memory_against_finite_differences(averaged):
    cell = gatekit.Cell(D, H, use="averaged", dtype=np.float64, seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, D))
    state = random_state(2, rng, np.float64)
    result = gradcheck(cell, x, state)
    assert "a0" in result.errors and result.errors["a0"] < 1e-6
    # and against the reference backward, final memory gradient included
    dy = rng.standard_normal((6, 2, H))
    da = rng.standard_normal((2, H))
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy, dmemories={"a": da})
    want = reference.backward(cell, x, dy, state, dmemories={"a": da})
    assert set(got) == set(want) and "a0" in got
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)
    # dmemories in order, as a sequence, is the same thing
    again = cell.backward(tape, dy, dmemories=[da])
    np.testing.assert_array_equal(again["a0"], got["a0"])


def test_tape_and_trace_hold_the_memory(averaged):
    cell = gatekit.Cell(D, H, use="averaged", dtype=np.float64, seed=4)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 2, D))
    state = random_state(2, rng, np.float64)
    traced = cell.trace(x, state)
    _, _, tape = cell.forward(x, state, keep=True)
    assert tape.mem.shape == (6, 1, 2, H)
    np.testing.assert_array_equal(tape.mem[0, 0], state[2])
    a = state[2]
    for t in range(5):
        a = 0.5 * a + 0.5 * np.tanh(traced["LTM_t"][t])
        np.testing.assert_allclose(traced["a_t"][t], a, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(traced["U_t"], traced["a_t"])


def test_ragged_batch_keeps_each_sequence_memory_from_its_last_step(averaged):
    cell = gatekit.Cell(D, H, use="averaged", dtype=np.float64, seed=5)
    rng = np.random.default_rng(5)
    T, lengths = 6, np.array([6, 2, 4])
    x = rng.standard_normal((T, 3, D))
    state = random_state(3, rng, np.float64)
    dy = rng.standard_normal((T, 3, H))
    da = rng.standard_normal((3, H))
    y, final, tape = cell.forward(x, state, keep=True, lengths=lengths)
    grads = cell.backward(tape, dy, dmemories={"a": da})
    for b, length in enumerate(lengths):
        alone = tuple(value[b:b + 1] for value in state)
        y_b, final_b, tape_b = cell.forward(x[:length, b:b + 1], alone, keep=True)
        np.testing.assert_allclose(y[:length, b:b + 1], y_b, rtol=0, atol=1e-12)
        for value, want in zip(final, final_b):
            np.testing.assert_allclose(value[b:b + 1], want, rtol=0, atol=1e-12)
        grads_b = cell.backward(tape_b, dy[:length, b:b + 1], dmemories={"a": da[b:b + 1]})
        for name in ("stm0", "ltm0", "a0"):
            np.testing.assert_allclose(grads[name][b:b + 1], grads_b[name], rtol=1e-12,
                                       atol=1e-12, err_msg=name)


def test_check_gate_accepts_a_gate_with_a_memory():
    check_gate(AveragedUse)


def test_check_gate_catches_a_memory_left_unwritten():
    class Forgetful(AveragedUse):
        name = "forgetful"

        def forward(self, step):
            super().forward(step)
            step.a_t[...] = 0          # the output used the memory, the memory is lost

    with pytest.raises(AssertionError):
        check_gate(Forgetful)


def test_cells_without_extra_memories_keep_their_pair(averaged):
    cell = gatekit.Cell(D, H, seed=6)
    assert cell.memories == ()
    x = np.random.default_rng(6).standard_normal((3, 2, D))
    y, state = cell(x)
    assert len(state) == 2
    _, ref_state = reference.forward(cell, x)
    assert len(ref_state) == 2
    _, _, tape = cell.forward(x, keep=True)
    assert tape.mem is None
    assert set(cell.backward(tape, np.ones_like(y))) == set(cell.params) | {"x", "stm0", "ltm0"}


def test_state_of_the_wrong_length_is_refused_by_name(averaged):
    cell = gatekit.Cell(D, H, use="averaged", seed=7)
    x = np.zeros((2, 2, D), np.float32)
    with pytest.raises(TypeError, match=r"\(stm, ltm\) or \(stm, ltm, a\).* of 4"):
        cell(x, (np.zeros((2, H)),) * 4)
    with pytest.raises(ValueError, match=r"state\[2\] \(a\) must have shape"):
        cell(x, (np.zeros((2, H)), np.zeros((2, H)), np.zeros((3, H))))
    _, _, tape = cell.forward(x, keep=True)
    with pytest.raises(ValueError, match="dmemories names 'b'"):
        cell.backward(tape, np.zeros((2, 2, H)), dmemories={"b": np.zeros((2, H))})


def test_two_gates_declaring_one_memory_name_are_refused(register):
    class AveragedForget(gatekit.PythonGate):
        role, name, blocks = "forget", "averaged_forget", ("f",)
        memories = ("a",)
        definition = staticmethod(lambda STM_prev, E_t, W_f, b_f: {})

    register(make_plugin(gates=[AveragedUse, AveragedForget]), name="test-memory-clash")
    with pytest.raises(ValueError, match="memory 'a' of use gate 'averaged' is declared already"):
        gatekit.Cell(D, H, forget="averaged_forget", use="averaged")


def test_raw_loop_refuses_gates_with_memories_and_no_room_for_them():
    # The compiled gates write their memories through raw pointers: a call of the loop that
    # gives them none is refused before any step.
    from gatekit.core.cell import _loop
    cell = gatekit.Cell(D, H, "slstm", dtype=np.float64, seed=8)
    T, B = 3, 2
    KH = cell._weights.shape[0]
    size, _ = _loop.workspace_layout(T, B, D, H, KH, False, 1, False)
    x, stm0, y = np.zeros((T, B, D)), np.zeros((B, H)), np.zeros((T, B, H))
    with pytest.raises(ValueError, match=r"the gates keep 2 extra memories \('m', 'n'\); "
                                         "this call has 0"):
        _loop.forward(cell.gates, cell._weights, cell._bias, x, stm0, y, np.zeros(size), False,
                      None, cell._forget_preactivation, cell._reads, 1)


@pytest.mark.parametrize("memories", [("1a",), ("a", "a"), ("a", "b", "c", "d", "e"),
                                      {"a": "zero"}, "a"])
def test_bad_memory_declarations_are_refused_at_registration(register, memories):
    bad = type("BadMemories", (AveragedUse,), {"name": "bad_memories", "memories": memories})
    with pytest.raises(PluginError, match="memories .* must be a tuple of at most 4"):
        register(make_plugin(gates=[bad]), name="test-bad-memories")
