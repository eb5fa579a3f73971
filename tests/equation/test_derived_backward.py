"""The reference backward of an equation gate, derived from its traced graph (no hand-written
``backward_definition``), held to centred finite differences of the reference forward, which
calls the definition itself on arrays, never the tracer's reading of it; and to the compiled
backward, whose kernels come from the same graph."""
import numpy as np
import pytest

import gatekit
from gatekit import reference

from support import numerical_gradient, rel_error
from test_equation_gates import (AveragedUse, ClippedRemember, EventLearn, HardForget, MinLearn,
                                 NormalisedForget, SoftFloorForget)


class ScalarSlopeUse(gatekit.EquationGate):
    """A parameter of shape (): one slope shared by every unit, U_t = tanh(κ LTM_t)."""
    role, name, blocks = "use", "scalar_slope_eq", ("v",)
    params = {"kappa": ()}
    init = {"kappa": 0.8}

    @staticmethod
    def definition(STM_prev, E_t, LTM_t, W_v, b_v, kappa):
        U_t = np.tanh(kappa * LTM_t)
        V_t = reference.sigmoid(reference.linear(W_v, STM_prev, E_t, b_v))
        return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


class UnbiasedForget(gatekit.EquationGate):
    """Blocks without biases (``block_biases = False``): f_t = σ(W_f [STM_{t-1}, E_t])."""
    role, name, blocks = "forget", "unbiased_eq", ("f",)
    block_biases = False

    @staticmethod
    def definition(STM_prev, E_t, W_f):
        return {"f_t": reference.sigmoid(np.concatenate([STM_prev, E_t], axis=-1) @ W_f.T)}


# Each gate with a variant its outputs fit (HardForget's s_t read by JANET's learn gate).
CASES = [(SoftFloorForget, "standard"), (HardForget, "janet"), (EventLearn, "standard"),
         (ClippedRemember, "peephole"), (AveragedUse, "standard"),
         (NormalisedForget, "standard"), (MinLearn, "mingru")]


def reference_loss_gradients(cell, x, state, dy, dstm, dltm):
    """d/d(each parameter, x, initial state) of Σ dy ⊙ y + Σ dstm ⊙ STM_T + Σ dltm ⊙ LTM_T,
    the reference forward run, by centred differences."""
    def loss():
        y, final = reference.forward(cell, x, state)
        return float(np.sum(dy * y) + np.sum(dstm * final[0]) + np.sum(dltm * final[1]))
    def through(array):
        """d loss / d array for a parameter that may be a strided view of the cell's weights:
        perturbed in a contiguous copy, written back before each loss."""
        copy = array.copy()

        def loss_of_copy():
            array[...] = copy
            return loss()
        gradient = numerical_gradient(loss_of_copy, copy)
        array[...] = copy
        return gradient
    want = {name: through(array) for name, array in cell.params.items()}
    want.update(x=numerical_gradient(loss, x), stm0=numerical_gradient(loss, state[0]),
                ltm0=numerical_gradient(loss, state[1]))
    return want


def make_case(gate, variant, seed=0, threads=1):
    D = H = 3
    cell = gatekit.Cell(D, H, variant, **{gate.role: gate.name}, dtype=np.float64, seed=seed,
                        threads=threads)
    rng = np.random.default_rng(seed)
    for array in cell.params.values():      # away from initial values that hide a term
        array[...] += 0.3 * rng.standard_normal(array.shape)
    x = rng.standard_normal((3, 2, D))
    state = (rng.standard_normal((2, H)), rng.standard_normal((2, H)))
    if cell.one_memory:                 # its STM is its LTM: one memory, given twice
        state = (state[0], state[0].copy())
    dstm, dltm = rng.standard_normal((2, H)), rng.standard_normal((2, H))
    return cell, x, state, rng.standard_normal((3, 2, H)), dstm, dltm


@pytest.mark.parametrize("gate, variant", CASES + [(ScalarSlopeUse, "standard"),
                                                   (UnbiasedForget, "standard")],
                         ids=lambda value: getattr(value, "name", value))
def test_derived_backward_against_finite_differences(register_gate, gate, variant):
    cls = register_gate(gate, compile=gate is not ScalarSlopeUse)
    assert gate.backward_definition is None and cls.backward_definition is not None
    cell, x, state, dy, dstm, dltm = make_case(gate, variant)
    got = reference.backward(cell, x, dy, state, dstm, dltm)
    want = reference_loss_gradients(cell, x, state, dy, dstm, dltm)
    for name, expected in want.items():
        assert rel_error(got[name], expected) < 1e-7, name


@pytest.mark.parametrize("gate, variant, compile",
                         [(gate, variant, True) for gate, variant in CASES]
                         + [(UnbiasedForget, "standard", True),
                            (ScalarSlopeUse, "standard", False)],
                         ids=lambda value: getattr(value, "name", str(value)))
def test_compiled_backward_matches_the_derived_one(register_gate, gate, variant, compile):
    """The cell's backward (the compiled kernels; for a scalar parameter, the Python gate
    evaluating the traced graph) against the reference's derived one."""
    register_gate(gate, compile=compile)
    cell, x, state, dy, dstm, dltm = make_case(gate, variant, seed=1, threads=2)
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy, dstm, dltm)
    want = reference.backward(cell, x, dy, state, dstm, dltm)
    for name in got:
        assert rel_error(got[name], want[name]) < 1e-12, name


class WrittenOut(gatekit.EquationGate):
    """SoftFloorForget with a backward_definition of its own, which is kept."""
    role, name, blocks = "forget", "written_out_eq", ("f",)
    params = {"phi_f": ("H",)}
    init = {"phi_f": 0.1}
    definition = SoftFloorForget.definition

    @staticmethod
    def backward_definition(STM_prev, E_t, f_t, df_t, W_f, phi_f):
        squashed = (f_t - phi_f) / (1 - phi_f)
        dz = df_t * (1 - phi_f) * squashed * (1 - squashed)
        return reference.merge(reference.linear_backward(dz, W_f, STM_prev, E_t, "f"),
                               {"dphi_f": (df_t * (1 - squashed)).sum(axis=0)})


@pytest.mark.parametrize("compile", [True, False])
def test_a_written_backward_is_kept(register_gate, compile):
    cls = register_gate(WrittenOut, compile=compile)
    assert cls.backward_definition is WrittenOut.backward_definition


def test_a_scalar_parameter_is_refused_compiled_with_its_reason(register_gate):
    with pytest.raises(gatekit.core.equation.UnsupportedOperation,
                       match=r"parameter kappa of shape \(\) is traced but not compiled"):
        register_gate(ScalarSlopeUse)
