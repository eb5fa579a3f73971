"""Python gates called from the compiled time loop, step by step, and what happens when one of
them cannot compute gradients."""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference

pytest.importorskip(
    "gatekit_numpy_gates", exc_type=ImportError,
    reason="the example plugin is not installed: pip install plugins/gatekit-numpy-gates")
from gatekit_numpy_gates import ForgetHardSigmoid, UseSoftsign  # noqa: E402

D, H, T, B = 3, 4, 5, 2


class CountingSoftsign(UseSoftsign):
    """The softsign Use gate, recording every call the time loop makes to it."""
    name = "test_counting_softsign"
    calls = []

    def forward(self, step):
        type(self).calls.append(("forward", step.t))
        super().forward(step)

    def backward(self, step):
        type(self).calls.append(("backward", step.t))
        super().backward(step)


def forget_half(LTM_prev):
    """f_t = 1/2"""
    return {"f_t": np.full_like(LTM_prev, 0.5)}


class ForgetHalfNoBackward(gatekit.PythonGate):
    """A forget gate with a forward pass only."""
    role, name = "forget", "test_half_no_backward"
    definition = staticmethod(forget_half)

    def forward(self, step):
        step.f_t[...] = 0.5


class GatesOfTheseTests:
    @gatekit.hookimpl
    def register_gates(self, register):
        register(CountingSoftsign)
        register(ForgetHalfNoBackward)


@pytest.fixture(scope="module", autouse=True)
def gates_of_these_tests():
    name = gatekit.register_plugin(GatesOfTheseTests(), name="gatekit-numpy-gates-tests")
    yield
    gatekit.unregister_plugin(name)


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    return rng.standard_normal((T, B, D)), (rng.standard_normal((B, H)),
                                            rng.standard_normal((B, H)))


def test_loop_calls_the_python_gate_at_every_step(data):
    x, state = data
    cell = gatekit.Cell(D, H, "standard", forget="hard_sigmoid", use="test_counting_softsign",
                        dtype=np.float64)
    CountingSoftsign.calls.clear()
    y, _, tape = cell.forward(x, state, keep=True)
    assert CountingSoftsign.calls == [("forward", t) for t in range(T)]
    np.testing.assert_allclose(y, reference.forward(cell, x, state)[0], rtol=0, atol=1e-12)

    CountingSoftsign.calls.clear()
    cell.backward(tape, np.ones_like(y))
    assert CountingSoftsign.calls == [("backward", t) for t in reversed(range(T))]


def test_composition_from_the_brief(data):
    x, state = data
    for dtype, tol in ((np.float64, dict(rtol=0, atol=1e-12)),
                       (np.float32, dict(rtol=1e-5, atol=1e-6))):
        cell = gatekit.Cell(3, 4, "standard", use="softsign", dtype=dtype)
        assert isinstance(cell.gates[3], UseSoftsign)
        y, (stm, ltm) = cell(x, state)
        y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state, dtype=np.float64)
        np.testing.assert_allclose(y, y_ref, **tol)
        np.testing.assert_allclose(ltm, ltm_ref, **tol)


def test_two_python_gates_in_one_cell(data):
    x, state = data
    cell = gatekit.Cell(D, H, "standard", forget="hard_sigmoid", use="softsign",
                        dtype=np.float64)
    assert isinstance(cell.gates[0], ForgetHardSigmoid) and isinstance(cell.gates[3], UseSoftsign)
    y, (stm, ltm) = cell(x, state)
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ltm, ltm_ref, rtol=0, atol=1e-12)
    assert gatekit.Cell(D, H, "hard_softsign").gate_names == cell.gate_names


def test_gate_without_backward_fails_before_any_work(data):
    x, state = data
    cell = gatekit.Cell(D, H, "standard", forget="test_half_no_backward",
                        use="test_counting_softsign", dtype=np.float64)
    # forward works, and is what its definition says
    CountingSoftsign.calls.clear()
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    y_ref, (_, ltm_ref) = reference.forward(cell, x, state)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ltm, ltm_ref, rtol=0, atol=1e-12)
    assert len(CountingSoftsign.calls) == T

    CountingSoftsign.calls.clear()
    with pytest.raises(NotImplementedError, match="test_half_no_backward") as raised:
        cell.backward(tape, np.ones_like(y))
    assert "ForgetHalfNoBackward" in str(raised.value)
    # the use gate runs first in backward: it was never called, so nothing was computed
    assert CountingSoftsign.calls == []
    # and the cell still runs forward afterwards
    np.testing.assert_array_equal(cell(x, state)[0], y)
