"""The floored forget gate, f_t = σ(q_f) + (1 - σ(q_f)) σ(W_f [STM_{t-1}, E_t] + b_f), held to
oracles that do not come from this plugin: an LSTM written out below in NumPy, gatekit's
built-in forget gates at the limits of the floor, centred finite differences, and a closed-form
optimum for a floor learnt by gradient descent."""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.testing import check_gate, gradcheck

pytest.importorskip(
    "gatekit_floored_forget", exc_type=ImportError,
    reason="the example plugin is not installed: pip install plugins/gatekit-floored-forget")
from gatekit_floored_forget import ForgetFloored, _floored  # noqa: E402

D, H, T, B = 3, 4, 7, 2


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def floored_lstm(params, x, stm, ltm):
    """The standard LSTM with the floored forget factor, step by step, written from the
    equations (not from the plugin's definition)."""
    ys = []
    for x_t in x:
        h_x = np.concatenate([stm, x_t], axis=1)
        floor = sigmoid(params["q_f"])
        f = floor + (1 - floor) * sigmoid(h_x @ params["W_f"].T + params["b_f"])
        i = sigmoid(h_x @ params["W_i"].T + params["b_i"])
        g = np.tanh(h_x @ params["W_n"].T + params["b_n"])
        o = sigmoid(h_x @ params["W_v"].T + params["b_v"])
        ltm = f * ltm + i * g
        stm = o * np.tanh(ltm)
        ys.append(stm)
    return np.stack(ys), (stm, ltm)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, D))
    state = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    return rng, x, state


def floored_cell(rng, dtype=np.float64):
    cell = gatekit.Cell(D, H, "floored", dtype=dtype, seed=3)
    cell.params["q_f"] = rng.uniform(-3, 3, H)      # a different floor in every unit
    return cell


def test_is_a_compiled_gate():
    assert issubclass(ForgetFloored, gatekit.Gate)
    assert not issubclass(ForgetFloored, gatekit.PythonGate)
    assert _floored.__file__.endswith((".so", ".pyd"))
    assert ForgetFloored.differentiable
    assert ForgetFloored.provides() == ("f_t",)


@pytest.mark.parametrize("variant", ["standard", "peephole", "course"])
def test_check_gate(variant):
    check_gate(ForgetFloored, variant)


def test_init_sets_the_floor():
    cell = gatekit.Cell(D, H, "floored", seed=0)
    np.testing.assert_array_equal(cell.params["q_f"], np.full(H, -2.0, np.float32))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_forward_matches_lstm_written_out(data, dtype, tol):
    rng, x, state = data
    cell = floored_cell(rng, dtype)
    y, (stm, ltm) = cell(x, state)
    params64 = {name: np.asarray(value, np.float64) for name, value in cell.params.items()}
    y_want, (stm_want, ltm_want) = floored_lstm(params64, x.astype(dtype), *state)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=tol)
    np.testing.assert_allclose(stm, stm_want, rtol=0, atol=tol)
    np.testing.assert_allclose(ltm, ltm_want, rtol=0, atol=tol)


def test_forget_factor_stays_between_floor_and_one(data):
    rng, x, state = data
    cell = floored_cell(rng)
    cell.params["W_f"] = 20 * cell.params["W_f"]     # drive σ(s) to both of its ends
    floor = sigmoid(cell.params["q_f"])
    stm, ltm = state
    factors = []
    for x_t in x:
        quantities = reference.step(cell, x_t, stm, ltm)
        factors.append(quantities["f_t"])
        stm, ltm = quantities["STM_t"], quantities["LTM_t"]
    factors = np.stack(factors)
    assert np.all(factors >= floor) and np.all(factors <= 1)
    assert np.any(factors - floor < 1e-3) and np.any(1 - factors < 1e-3)
    # and the compiled cell agrees with the definition there too
    y, _ = cell(x, state)
    np.testing.assert_allclose(y, reference.forward(cell, x, state)[0], rtol=0, atol=1e-12)


def test_floor_to_zero_is_the_standard_forget_gate(data):
    _, x, state = data
    floored = gatekit.Cell(D, H, "floored", dtype=np.float64, seed=5)
    floored.params["q_f"] = np.full(H, -60.0)          # φ = σ(-60) ≈ 9e-27
    standard = gatekit.Cell(D, H, "standard", dtype=np.float64, seed=11)
    for name in standard.params:
        standard.params[name] = floored.params[name]
    y, (stm, ltm) = floored(x, state)
    y_std, (stm_std, ltm_std) = standard(x, state)
    np.testing.assert_allclose(y, y_std, rtol=0, atol=1e-14)
    np.testing.assert_allclose(ltm, ltm_std, rtol=0, atol=1e-14)


def test_floor_to_one_never_forgets_like_forget_none(data):
    _, x, state = data
    floored = gatekit.Cell(D, H, "floored", dtype=np.float64, seed=5)
    floored.params["q_f"] = np.full(H, 60.0)           # φ = 1 - 9e-27: f_t = 1 in float64
    nothing_forgotten = gatekit.Cell(D, H, "standard", forget="none", dtype=np.float64, seed=11)
    for name in nothing_forgotten.params:
        nothing_forgotten.params[name] = floored.params[name]
    y, (stm, ltm) = floored(x, state)
    y_none, (stm_none, ltm_none) = nothing_forgotten(x, state)
    np.testing.assert_allclose(y, y_none, rtol=0, atol=1e-14)
    np.testing.assert_allclose(ltm, ltm_none, rtol=0, atol=1e-14)


def test_floor_near_one_keeps_the_memory_a_standard_gate_loses():
    """No new information (i_t ≈ 0), and a forget pre-activation that tells a standard gate to
    forget everything: with the floor near 1 the memory survives 50 steps almost intact."""
    rng = np.random.default_rng(1)
    steps = 50
    x = rng.standard_normal((steps, B, D))
    ltm0 = rng.uniform(0.5, 2.0, (B, H)) * rng.choice([-1, 1], (B, H))
    state = (np.zeros((B, H)), ltm0)
    cell = gatekit.Cell(D, H, "floored", dtype=np.float64, seed=2)
    cell.params["b_f"] = np.full(H, -10.0)             # σ(s) ≈ 5e-5: "forget"
    cell.params["W_i"] = np.zeros((H, H + D))
    cell.params["b_i"] = np.full(H, -80.0)             # i_t ≈ 2e-35: nothing new is learnt
    cell.params["q_f"] = np.full(H, 12.0)              # φ ≈ 1 - 6e-6
    _, (_, ltm) = cell(x, state)

    _, (_, ltm_ref) = reference.forward(cell, x, state)
    np.testing.assert_allclose(ltm, ltm_ref, rtol=1e-13, atol=0)
    floor = sigmoid(12.0)
    kept = ltm / ltm0
    assert np.all(kept >= floor ** steps) and np.all(kept <= 1)
    assert np.all(kept > 0.9996)

    standard = gatekit.Cell(D, H, "standard", dtype=np.float64)
    for name in standard.params:
        standard.params[name] = cell.params[name]
    _, (_, ltm_std) = standard(x, state)
    # 50 factors of about 5e-5 leave nothing of LTM_0; only the i_t ≈ 2e-35 trickle remains
    assert np.all(np.abs(ltm_std) < 1e-30)


def test_gradients_match_finite_differences(data):
    rng, x, state = data
    cell = floored_cell(rng)
    result = gradcheck(cell, x, state)
    assert "q_f" in result.errors and result.errors["q_f"] <= 1e-6


def test_gradients_match_reference_backward(data):
    rng, x, state = data
    cell = floored_cell(rng)
    dy = rng.standard_normal((T, B, H))
    dltm = rng.standard_normal((B, H))
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy, dltm=dltm)
    want = reference.backward(cell, x, dy, state, dltm=dltm)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_float32_backward_agrees_with_float64(data):
    rng, x, state = data
    cell64 = floored_cell(rng)
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


def test_floor_is_learnt_by_gradient_descent():
    """Keep half of a memory over 3 steps with nothing else going on: the forget factor is
    then the floor alone, and the only optimum is φ = 0.5 ** (1 / 3), whatever the start."""
    steps, target_kept = 3, 0.5
    cell = gatekit.Cell(2, 3, "floored", dtype=np.float64, seed=0)
    cell.params["W_f"] = np.zeros((3, 5))
    cell.params["b_f"] = np.full(3, -40.0)             # σ(s) ≈ 4e-18: f_t = φ
    cell.params["W_i"] = np.zeros((3, 5))
    cell.params["b_i"] = np.full(3, -80.0)             # nothing new is learnt
    cell.params["q_f"] = np.array([-2.0, 0.0, 3.0])    # floors 0.12, 0.5, 0.95
    x = np.zeros((steps, 1, 2))
    ltm0 = np.array([[1.0, -1.5, 0.8]])
    target = target_kept * ltm0
    for _ in range(200):
        _, (_, ltm), tape = cell.forward(x, (np.zeros((1, 3)), ltm0), keep=True)
        grads = cell.backward(tape, np.zeros((steps, 1, 3)), dltm=2 * (ltm - target))
        cell.params["q_f"] = cell.params["q_f"] - 2.0 * grads["q_f"]
    floor = sigmoid(cell.params["q_f"])
    np.testing.assert_allclose(floor, target_kept ** (1 / steps), rtol=0, atol=1e-9)


def test_trace_shows_the_floor_of_each_unit():
    cell = gatekit.Cell(3, 4, "floored", dtype=np.float64, seed=0)
    cell.params["q_f"][...] = [-3.0, 0.0, 1.0, 5.0]
    traced = cell.trace(np.zeros((5, 2, 3)))
    floor = 1 / (1 + np.exp(-np.array([-3.0, 0.0, 1.0, 5.0])))
    np.testing.assert_allclose(traced["phi_f"], np.broadcast_to(floor, (5, 2, 4)), rtol=1e-15)
    assert np.all(traced["f_t"] >= traced["phi_f"])


def test_janet_learn_gate_is_refused():
    """JANET's learn gate reads the forget gate's pre-activation s_t, with f_t = σ(s_t); this
    gate's f_t is not σ of anything it could publish, so the composition is rejected."""
    with pytest.raises(ValueError, match="s_t"):
        gatekit.Cell(D, H, "janet", forget="floored")
