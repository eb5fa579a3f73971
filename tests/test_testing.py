"""gatekit.testing, the checks for gate authors: gradcheck's tolerance (tiny gradients, right
and wrong) and check_gate's threaded checks (what two compiled threads must agree on, a failure
that is not about threads named as such, and Python gates run from two Python threads at
once)."""
import numpy as np
import pytest

import gatekit
from gatekit.core import plugins
from gatekit.core import reference
from gatekit.core.cell import _loop
from gatekit.testing import GradcheckError, check_against_reference, check_gate, gradcheck

from support import make_plugin, random_inputs, steps_for_a_team

# --- gradcheck's tolerance ------------------------------------------------------------------

def saturated_cell():
    """A forget gate held near 1 by its bias: σ'(16) = 1.1e-7, so W_f's gradient is ~1e-7."""
    cell = gatekit.Cell(3, 4, dtype=np.float64, seed=3)
    cell.params["b_f"][...] = 16.0
    return cell


def test_gradcheck_passes_a_tiny_correct_gradient():
    cell = saturated_cell()
    x, state = random_inputs(cell, 5, 2, seed=9)
    # The oracle for "tiny": the derivative of σ at the pre-activations, written here.
    s = np.einsum("bk,hk->bh", np.concatenate([state[0], x[0]], 1), cell.params["W_f"]) + 16.0
    assert np.all(np.exp(-s) / (1 + np.exp(-s)) ** 2 < 1e-6)
    result = gradcheck(cell, x, state)
    assert result.errors["W_f"] > 1e-6          # beyond any relative tolerance alone ...
    assert result.differences["W_f"] < 1e-9     # ... but its difference is rounding only


class TwiceTheForgetGradient(gatekit.PythonGate):
    """The standard forget gate with a backward pass off by a factor of two."""
    role, name, blocks, params = "forget", "twice_the_gradient", ("f",), {}
    definition = staticmethod(reference.forget)

    def forward(self, step):
        step.f_t[...] = reference.sigmoid(step.z("f"))

    def backward(self, step):
        step.dz("f")[...] += 2 * step.df_t * step.f_t * (1 - step.f_t)


def test_gradcheck_fails_a_tiny_wrong_gradient(register):
    register(make_plugin(gates=[TwiceTheForgetGradient]), name="test-twice-the-gradient")
    cell = gatekit.Cell(3, 4, forget="twice_the_gradient", dtype=np.float64, seed=3)
    cell.params["b_f"][...] = 16.0
    x, state = random_inputs(cell, 5, 2, seed=9)
    with pytest.raises(GradcheckError, match="W_f|b_f"):
        gradcheck(cell, x, state)


# --- check_against_reference (the pytest plugin's guard) -----------------------------------

@pytest.mark.parametrize("variant", gatekit.variants())
def test_every_registered_variant_matches_the_reference(variant):
    cell = check_against_reference(variant)
    assert cell.dtype == np.float64 and cell.variant == variant


class TwiceTheDefinedGradient(TwiceTheForgetGradient):
    """The same wrong backward pass, with a NumPy backward definition to hold it to."""
    name = "twice_the_defined_gradient"
    backward_definition = staticmethod(reference.forget_backward)


class OffForward(TwiceTheForgetGradient):
    """A forward pass 0.1% off its definition."""
    name = "off_forward"

    def forward(self, step):
        step.f_t[...] = 0.999 * reference.sigmoid(step.z("f"))


@pytest.mark.parametrize("gate, message", [
    (TwiceTheForgetGradient, "W_f|b_f"),            # against finite differences
    (TwiceTheDefinedGradient, "the compiled gradient of '(W_f|b_f|W_n|b_n|W_i|b_i|W_v|b_v|x)' "
                              "differs from gatekit.reference's"),
    (OffForward, r"standard\+forget=off_forward: the compiled outputs differ from "
                 "gatekit.reference by up to")])
def test_check_against_reference_fails_a_wrong_gate(register, gate, message):
    register(make_plugin(gates=[gate]), name=f"test-{gate.name}")
    with pytest.raises(GradcheckError, match=message):
        check_against_reference("standard", forget=gate.name)


def test_gradcheck_resolves_a_tiny_gradient():
    # W_u's gradient here is 6.6e-6 of a loss of 0.25: plain centred differences with a tiny
    # step measured it only to 1.3e-6 relative; gradcheck's extrapolated differences resolve
    # it to 1e-6 with no absolute tolerance to lean on.
    cell = gatekit.Cell(2, 1, "course", learn="coupled", dtype=np.float64, seed=2)
    rng = np.random.default_rng(1002)
    x = rng.standard_normal((1, 1, 2))
    state = (rng.standard_normal((1, 1)), rng.standard_normal((1, 1)))
    result = gradcheck(cell, x, state, tolerance=1e-6, atol=0)
    assert result.errors["W_u"] <= 1e-6, result.errors


# --- check_gate's threaded checks ------------------------------------------------------------

B, H, D = 16, 64, 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", ["standard", "course", "peephole", "literal", "janet"])
def test_two_threads_give_one_threads_results_bit_for_bit(variant, dtype):
    # Each unit's arithmetic is the same whatever share of the units a thread computes, so the
    # split is invisible: not merely within rounding, but in every bit.
    one, two = (gatekit.Cell(D, H, variant, dtype=dtype, seed=4, threads=t) for t in (1, 2))
    T = steps_for_a_team(two, B, 2)
    assert _loop.plan(T, B, D, H, two._weights.shape[0], 2, dtype == np.float32)[0] == 2
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    y1, state1, tape1 = one.forward(x, keep=True)
    y2, state2, tape2 = two.forward(x, keep=True)
    assert np.array_equal(y1, y2) and all(map(np.array_equal, state1, state2))
    g1, g2 = one.backward(tape1, dy), two.backward(tape2, dy)
    for name in g1:
        assert np.array_equal(g1[name], g2[name]), name
    # And both are the definition's, to float32 rounding over T steps.
    y_ref, _ = reference.forward(one, x, dtype=np.float64)
    np.testing.assert_allclose(y1, y_ref, rtol=1e-3 if dtype == np.float32 else 0,
                               atol=1e-4 if dtype == np.float32 else 1e-10)


def test_rounding_accumulated_over_a_long_sequence_is_not_blamed_on_threads():
    # With no forgetting, float32 rounding piles up in the memory over the long threaded run
    # (one thread as much as two); the short check passes.
    learn = plugins.registry().gates["learn"]["standard"].cls
    with pytest.raises(GradcheckError) as info:
        check_gate(learn, variant="nfg")
    message = str(info.value)
    assert "float32" in message and "not about threads" in message
    assert "on two threads" not in message


class SharedCacheForget(gatekit.PythonGate):
    """The standard forget gate, with its backward reading σ(z) from a cache that is shared by
    every instance: correct in one cell at a time, wrong when two cells run at once."""
    role, name, blocks, params = "forget", "shared_cache", ("f",), {}
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget)
    backward_definition = staticmethod(reference.forget_backward)
    cache = {}

    def forward(self, step):
        step.f_t[...] = reference.sigmoid(step.z("f"))
        SharedCacheForget.cache[step.t] = step.f_t.copy()

    def backward(self, step):
        f = SharedCacheForget.cache[step.t]
        step.dz("f")[...] += step.df_t * f * (1 - f)


class OwnStateForget(SharedCacheForget):
    """The same gate with the cache on the instance: safe."""
    name = "own_state"

    def forward(self, step):
        if not hasattr(self, "own"):
            self.own = {}
        step.f_t[...] = reference.sigmoid(step.z("f"))
        self.own[step.t] = step.f_t.copy()

    def backward(self, step):
        f = self.own[step.t]
        step.dz("f")[...] += step.df_t * f * (1 - f)


def test_python_gate_sharing_state_between_instances_fails_from_two_python_threads():
    with pytest.raises(GradcheckError, match="two Python threads"):
        check_gate(SharedCacheForget)


def test_python_gate_keeping_its_own_state_passes_from_two_python_threads():
    check_gate(OwnStateForget)
