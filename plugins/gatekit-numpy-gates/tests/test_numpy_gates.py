"""The NumPy gates inside gatekit's compiled time loop, held to oracles that do not come from
this plugin: an LSTM written out below in NumPy, centred finite differences, and gatekit's
conformance check."""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.testing import check_gate, gradcheck

pytest.importorskip(
    "gatekit_numpy_gates", exc_type=ImportError,
    reason="the example plugin is not installed: pip install plugins/gatekit-numpy-gates")
from gatekit_numpy_gates import ForgetHardSigmoid, UseSoftsign  # noqa: E402

D, H, T, B = 3, 4, 6, 2


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def lstm(params, x, stm, ltm, forget, squash):
    """A standard LSTM written from the equations, with the forget factor ``forget(s)`` and
    the output squashing ``squash(LTM_t)`` swapped in. Returns y, the final state and every
    forget pre-activation s."""
    ys, ss = [], []
    for x_t in x:
        h_x = np.concatenate([stm, x_t], axis=1)
        s = h_x @ params["W_f"].T + params["b_f"]
        i = sigmoid(h_x @ params["W_i"].T + params["b_i"])
        g = np.tanh(h_x @ params["W_n"].T + params["b_n"])
        o = sigmoid(h_x @ params["W_v"].T + params["b_v"])
        ltm = forget(s) * ltm + i * g
        stm = o * squash(ltm)
        ys.append(stm)
        ss.append(s)
    return np.stack(ys), (stm, ltm), np.stack(ss)


def hard_sigmoid(s):
    return np.minimum(1.0, np.maximum(0.0, s / 5 + 0.5))


def softsign(a):
    return a / (1 + np.abs(a))


@pytest.fixture
def data():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, D))
    state = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    return rng, x, state


# --- Conformance --------------------------------------------------------------------------

@pytest.mark.parametrize("gate, variant", [
    (UseSoftsign, "standard"),
    (UseSoftsign, "hard_softsign"),           # two Python gates in one cell
    (ForgetHardSigmoid, "standard"),
    (ForgetHardSigmoid, "janet"),             # JANET's learn gate reads the Python gate's s_t
    (ForgetHardSigmoid, "cifg"),              # the coupled learn gate reads f_t, sends df_t
])
def test_check_gate(gate, variant):
    check_gate(gate, variant)


def test_python_gates_are_differentiable():
    for gate in (UseSoftsign, ForgetHardSigmoid):
        assert issubclass(gate, gatekit.PythonGate) and gate.is_differentiable()
    assert ForgetHardSigmoid.provides() == ("s_t", "f_t")


# --- Against the LSTM written out ---------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("forget, use", [("standard", "softsign"),
                                         ("hard_sigmoid", "standard"),
                                         ("hard_sigmoid", "softsign")])
def test_forward_matches_lstm_written_out(data, dtype, tol, forget, use):
    _, x, state = data
    cell = gatekit.Cell(D, H, "standard", forget=forget, use=use, dtype=dtype, seed=4)
    y, (stm, ltm) = cell(x, state)
    assert y.dtype == stm.dtype == ltm.dtype == np.dtype(dtype)
    params = {name: np.asarray(value, np.float64) for name, value in cell.params.items()}
    y_want, (stm_want, ltm_want), _ = lstm(
        params, x.astype(dtype), *state,
        forget=hard_sigmoid if forget == "hard_sigmoid" else sigmoid,
        squash=softsign if use == "softsign" else np.tanh)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=tol)
    np.testing.assert_allclose(stm, stm_want, rtol=0, atol=tol)
    np.testing.assert_allclose(ltm, ltm_want, rtol=0, atol=tol)


def saturating_cell(x, state):
    """A hard-sigmoid cell whose forget pre-activations fall on both flat parts and the slope,
    none within 1e-3 of a kink (where finite differences would straddle it)."""
    cell = gatekit.Cell(D, H, "hard_softsign", dtype=np.float64, seed=4)
    cell.params["W_f"] = 8 * cell.params["W_f"]
    params = dict(cell.params)
    _, _, s = lstm(params, x, *state, forget=hard_sigmoid, squash=softsign)
    assert np.any(s <= -2.5) and np.any(s >= 2.5) and np.any(np.abs(s) < 2.5)
    assert np.min(np.abs(np.abs(s) - 2.5)) > 1e-3
    return cell


def test_saturated_forward_matches(data):
    _, x, state = data
    cell = saturating_cell(x, state)
    y, (stm, ltm) = cell(x, state)
    y_want, (_, ltm_want), _ = lstm(dict(cell.params), x, *state, forget=hard_sigmoid,
                                    squash=softsign)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ltm, ltm_want, rtol=0, atol=1e-12)


def test_saturated_gradients_match_finite_differences(data):
    _, x, state = data
    gradcheck(saturating_cell(x, state), x, state)


def test_gradients_match_reference_backward(data):
    rng, x, state = data
    cell = saturating_cell(x, state)
    dy = rng.standard_normal((T, B, H))
    dstm, dltm = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy, dstm, dltm)
    want = reference.backward(cell, x, dy, state, dstm, dltm)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_float32_backward_agrees_with_float64(data):
    rng, x, state = data
    cell64 = gatekit.Cell(D, H, "hard_softsign", dtype=np.float64, seed=4)
    cell32 = cell64.copy(np.float32)
    dy = rng.standard_normal((T, B, H))
    grads = []
    for cell in (cell64, cell32):
        _, _, tape = cell.forward(x, state, keep=True)
        grads.append(cell.backward(tape, dy))
    for name, want in grads[0].items():
        got = grads[1][name]
        assert got.dtype == np.float32
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), name


def test_softsign_gradient_survives_large_memories():
    """Where tanh'(LTM) has underflowed to nothing, softsign still passes a gradient back:
    d STM_t / d LTM_t = V_t / (1 + |LTM_t|)²."""
    cell = gatekit.Cell(1, 1, "softsign", dtype=np.float64, seed=0)
    cell.params["W_v"] = np.zeros((1, 2))
    cell.params["b_v"] = np.zeros(1)                   # V_t = 1/2
    cell.params["W_i"] = np.zeros((1, 2))
    cell.params["b_i"] = np.full(1, -80.0)             # nothing new: LTM_1 = f_1 LTM_0
    cell.params["W_f"] = np.zeros((1, 2))
    cell.params["b_f"] = np.full(1, 80.0)              # f_1 = 1: LTM_1 = LTM_0
    ltm0 = np.array([[40.0]])
    _, _, tape = cell.forward(np.zeros((1, 1, 1)), (np.zeros((1, 1)), ltm0), keep=True)
    grads = cell.backward(tape, np.ones((1, 1, 1)))
    np.testing.assert_allclose(grads["ltm0"], 0.5 / 41 ** 2, rtol=1e-12)

    standard = gatekit.Cell(1, 1, "standard", dtype=np.float64)
    for name in standard.params:
        standard.params[name] = cell.params[name]
    _, _, tape = standard.forward(np.zeros((1, 1, 1)), (np.zeros((1, 1)), ltm0), keep=True)
    assert standard.backward(tape, np.ones((1, 1, 1)))["ltm0"][0, 0] < 1e-30
