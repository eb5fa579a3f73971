"""The backward pass of the compiled core, held to independent oracles.

Oracles:
- ``gatekit.reference.backward``: BPTT written in plain NumPy, one gate's ``backward_definition``
  at a time, run step by step (it never touches the compiled loop);
- centred finite differences of the forward pass (``gatekit.testing.gradcheck``);
- elementary facts that need no oracle at all (causality: y_t does not depend on x_s for s > t;
  a zero upstream gradient gives exactly zero gradients).

Every comparison of gradients is per gradient and relative in norm (``support.rel_error``), so
one tolerance serves gradients of every scale.
"""
import gc
import re

import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.testing import gradcheck

from support import (BUILTIN_VARIANTS, PythonForget, centred_difference, input_size_for, rel_error,
                     run_in_threads, sigmoid)

VARIANTS = gatekit.variants()

# Compositions no variant has (section 4), gate overrides on a variant.
COMPOSITIONS = [
    ("standard", {"forget": "peephole"}),
    ("course", {"learn": "coupled"}),
    ("janet", {"use": "course"}),
    ("literal", {"learn": "janet"}),
    ("janet", {"forget": "peephole"}),               # JANET's learn gate reading a peephole s_t
    ("standard", {"learn": "linear", "use": "linear"}),
    ("nfg", {"learn": "no_ignore", "use": "literal"}),
    ("cifg", {"forget": "standard", "use": "no_output_gate"}),
    ("course", {"forget": "none", "learn": "linear_peephole"}),
    ("peephole", {"use": "memory"}),
]

# float64 core against the float64 reference: both evaluate the same formulas, only in a different
# order (BLAS products over whole sequences vs. per-step NumPy). Observed disagreement is
# ~1e-15 (a few ulps, up to ~1e-14 after 300 steps); 1e-9 leaves a wide margin yet catches any
# wrong term, which shows up at 1e-3 or worse.
F64_TOL = 1e-9


def make_case(variant, T, B, D, H, *, dtype=np.float64, seed=0, overrides=None):
    """A cell and random, nonzero inputs, initial state and upstream gradients (all already of
    the cell's dtype, so the core and the reference see exactly the same numbers)."""
    D = input_size_for(variant, D, H, **(overrides or {}))
    cell = gatekit.Cell(D, H, variant, **(overrides or {}), dtype=dtype, seed=seed)
    rng = np.random.default_rng(1000 + seed)

    def draw(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x = draw(T, B, D)
    state = (draw(B, H), draw(B, H))
    if cell.one_memory:                 # its STM is its LTM: one memory, given twice
        state = (state[0], state[0].copy())
    dy, dstm, dltm = draw(T, B, H), draw(B, H), draw(B, H)
    return cell, x, state, dy, dstm, dltm


def core_backward(cell, x, state, dy, dstm=None, dltm=None):
    _, _, tape = cell.forward(x, state, keep=True)
    return cell.backward(tape, dy, dstm, dltm)


def assert_gradients_match(cell, got, want, tol, x_shape):
    """Same names (every parameter, plus x, stm0 and ltm0), shapes and dtypes; each gradient within
    ``tol`` (relative, in norm) of ``want``."""
    T, B, D = x_shape
    H = cell.hidden_size
    expected_names = (set(cell.params) | {"x", "stm0", "ltm0"}
                      | {f"{name}0" for name in cell.memories})
    assert set(got) == expected_names
    assert set(want) >= expected_names
    shapes = {name: array.shape for name, array in cell.params.items()}
    shapes.update(x=(T, B, D), stm0=(B, cell.proj_size or H), ltm0=(B, H))
    shapes.update({f"{name}0": (B, H) for name in cell.memories})
    errors = {}
    for name in sorted(expected_names):
        assert got[name].shape == shapes[name], name
        assert got[name].dtype == cell.dtype, name
        assert np.all(np.isfinite(got[name])), name
        errors[name] = rel_error(got[name], want[name])
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"{cell!r}: gradients off the oracle by more than {tol:g}: {bad}"


# --- 1. Every variant, float64: core vs the reference backward -----------------------------------

SHAPES = [
    pytest.param((1, 1, 1, 1), id="T1-B1-D1-H1"),
    pytest.param((1, 1, 3, 1), id="T1-B1-D3-H1"),
    pytest.param((5, 3, 4, 2), id="T5-B3-D4-H2"),
    pytest.param((4, 2, 2, 5), id="T4-B2-D2-H5"),
    pytest.param((300, 2, 2, 3), id="T300-B2-D2-H3"),
]


@pytest.mark.parametrize("final_gradients", [True, False], ids=["dstate", "no-dstate"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_backward_matches_reference_float64(variant, shape, final_gradients):
    T, B, D, H = shape
    cell, x, state, dy, dstm, dltm = make_case(variant, T, B, D, H, seed=T + 7 * H)
    if not final_gradients:
        dstm = dltm = None
    got = core_backward(cell, x, state, dy, dstm, dltm)
    want = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64)
    assert_gradients_match(cell, got, want, F64_TOL, x.shape)
    if variant == "layernorm" and H == 1:
        # Layer normalisation over one unit gives zero: this cell's STM is then
        # σ(a_v) ⊙ tanh(b_c), zero at its initial b_c = 0 whatever the input, and only a
        # gradient of the final LTM reaches the input (the agreement above is what holds).
        assert np.all(cell(x, state)[0] == 0)
        return
    # The oracle itself is not degenerate: the input and initial-STM gradients are nonzero (of
    # a cell with one memory, which its gates may read as the LTM only: that memory's gradient).
    memory0 = want["stm0"] + want["ltm0"] if cell.one_memory else want["stm0"]
    assert np.linalg.norm(want["x"]) > 0 and np.linalg.norm(memory0) > 0


def test_literal_use_gate_sends_no_gradient_to_initial_ltm_through_outputs():
    # The literal Use gate never reads the long-term memory, so with no gradient on the final LTM
    # the initial LTM gets exactly none (both in the core and in the reference).
    cell, x, state, dy, _, _ = make_case("literal", 6, 2, 3, 4, seed=3)
    got = core_backward(cell, x, state, dy, np.ones((2, 4)), None)
    want = reference.backward(cell, x, dy, state, np.ones((2, 4)), None)
    assert np.all(got["ltm0"] == 0) and np.all(want["ltm0"] == 0)


# --- 2. Finite differences, every variant, float64 and float32 cells -----------------------------
#
# gatekit.testing.gradcheck: Richardson-extrapolated centred differences (steps 1e-4 and 5e-5) on
# a float64 copy of the cell, 1e-6 relative plus 1e-9 absolute. A centred difference carries a
# rounding error of about 1e-16 * |loss| / eps, so a gradient that is ~1e-5 of the loss (it
# happens in the smallest shapes, where a parameter has a single entry) is measured only to
# ~1e-7 relative, and gradcheck's absolute part could hide an error of that size. So cells of
# T = B = H = 1 are also held to Richardson differences written here, every entry and no
# absolute tolerance (test_tiny_cell_matches_richardson_differences).

@pytest.mark.parametrize("shape", [(1, 1, 2, 1), (1, 2, 3, 2), (4, 2, 3, 3)],
                         ids=lambda s: "T{}-B{}-D{}-H{}".format(*s))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_backward_matches_finite_differences(variant, dtype, shape):
    T, B, D, H = shape
    cell, x, state, _, _, _ = make_case(variant, T, B, D, H, dtype=dtype, seed=11 * T + H)
    result = gradcheck(cell, x, state, tolerance=1e-6, max_entries=12)
    assert result, result.errors
    memory = {"memory0"} if cell.one_memory else {"stm0", "ltm0"}
    assert set(result.errors) == (set(cell.params) | {"x"} | memory
                                  | {f"{name}0" for name in cell.memories})


def richardson_gradients(cell, x, state, dy, dstm, dltm, h=1e-2):
    """Every entry of every gradient of L = sum(y dy) + sum(STM_T dstm) + sum(LTM_T dltm) by
    centred differences at steps h and h/10, Richardson-extrapolated to cancel the h^2 term:
    (100 D(h/10) - D(h)) / 99. Error O(h^4) + O(1e-16 |L| / h); written here, independent of
    gatekit.testing. float64 cells only. A cell with one memory gets one array as both halves
    of its state, whose gradient comes as ``memory0``."""
    assert cell.dtype == np.float64
    x = np.array(x, dtype=np.float64)
    state = tuple(np.array(a, dtype=np.float64) for a in state)
    if cell.one_memory:
        state = (state[0], state[0])

    def loss():
        y, (stm, ltm) = cell(x, state)
        return np.sum(y * dy) + np.sum(stm * dstm) + np.sum(ltm * dltm)

    inputs = dict(cell.params)
    if cell.one_memory:
        inputs.update(x=x, memory0=state[0])
    else:
        inputs.update(x=x, stm0=state[0], ltm0=state[1])
    numeric = {}
    for name, array in inputs.items():
        flat = array.reshape(-1)
        assert np.shares_memory(flat, array)
        values = np.empty(flat.size)
        for index in range(flat.size):
            values[index] = (100 * centred_difference(loss, flat, index, h / 10)
                             - centred_difference(loss, flat, index, h)) / 99
        numeric[name] = values.reshape(array.shape)
    return numeric


# Richardson steps of 1e-2 would straddle the kink of a piecewise-linear gate (a plugin's hard
# sigmoid saturating at |s| = 2.5 is one), so this covers the built-in gates, which are smooth.
TINY_CASES = [(variant, {}) for variant in BUILTIN_VARIANTS] + COMPOSITIONS


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("case", TINY_CASES,
                         ids=[v + "".join(f"+{r}={n}" for r, n in o.items()) for v, o in TINY_CASES])
def test_tiny_cell_matches_richardson_differences(case, seed):
    # T = B = H = 1: every parameter is a handful of numbers; all entries are checked. These
    # seeds include cases where a gradient is 1e-5..1e-7 of the loss (gradcheck's noise floor).
    variant, overrides = case
    cell, x, state, dy, dstm, dltm = make_case(variant, 1, 1, 2, 1, seed=seed, overrides=overrides)
    got = core_backward(cell, x, state, dy, dstm, dltm)
    numeric = richardson_gradients(cell, x, state, dy, dstm, dltm)
    if cell.one_memory:
        memory0 = numeric.pop("memory0")
        assert rel_error(got["stm0"] + got["ltm0"], memory0) <= 1e-6, (got, memory0)
        numeric.update(stm0=got["stm0"], ltm0=got["ltm0"])      # checked through their sum
    assert_gradients_match(cell, got, numeric, 1e-6, x.shape)


# --- 3. float32 core vs float64 reference ------------------------------------------------------

# float32 has a unit roundoff of 6e-8. A gradient here is a sum over T * B terms, each a product
# of a few dozen rounded factors along the backward chain, so its rounding error is a small
# multiple of 1e-7 times the magnitude of its terms; over these shapes and 15 seeds of every
# variant the worst observed norm-relative error was 3e-6. 1e-4 leaves a 30x margin while a wrong
# term (an error of order 1) still fails by orders of magnitude. Shapes have several units and
# sequences so that the norm is not dominated by a single entry that is the near-cancellation of
# larger terms (for such an entry, error relative to its own size says nothing about precision).
F32_TOL = 1e-4


@pytest.mark.parametrize("shape", [(1, 4, 3, 5), (20, 3, 4, 5)],
                         ids=lambda s: "T{}-B{}-D{}-H{}".format(*s))
@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_backward_matches_float64_reference(variant, shape):
    T, B, D, H = shape
    cell, x, state, dy, dstm, dltm = make_case(variant, T, B, D, H, dtype=np.float32, seed=5)
    got = core_backward(cell, x, state, dy, dstm, dltm)
    # The reference reads the float32 cell's parameters and these float32 inputs exactly and
    # computes in float64: the only difference left is the precision of the arithmetic.
    want = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64)
    assert_gradients_match(cell, got, want, F32_TOL, x.shape)


# --- 4. Compositions no variant has (COMPOSITIONS, at the top) ----------------------------------------

def _composition_id(case):
    variant, overrides = case
    return variant + "+" + ",".join(f"{role}={name}" for role, name in overrides.items())


@pytest.mark.parametrize("case", COMPOSITIONS, ids=[_composition_id(c) for c in COMPOSITIONS])
@pytest.mark.parametrize("shape", [(1, 1, 2, 1), (1, 2, 3, 2), (6, 3, 4, 3)],
                         ids=lambda s: "T{}-B{}-D{}-H{}".format(*s))
def test_composition_backward_matches_reference_and_finite_differences(case, shape):
    variant, overrides = case
    T, B, D, H = shape
    cell, x, state, dy, dstm, dltm = make_case(variant, T, B, D, H, seed=2, overrides=overrides)
    assert {role: name for role, name in cell.gate_names.items() if role in overrides} == overrides
    got = core_backward(cell, x, state, dy, dstm, dltm)
    want = reference.backward(cell, x, dy, state, dstm, dltm)
    assert_gradients_match(cell, got, want, F64_TOL, x.shape)
    if B * H > 1:     # T = B = H = 1 is held to Richardson differences above (noise floor)
        assert gradcheck(cell, x, state, tolerance=1e-6, max_entries=8)


# --- 5. Errors -----------------------------------------------------------------------------------

@pytest.fixture
def taped():
    cell, x, state, dy, dstm, dltm = make_case("standard", 4, 2, 3, 5, seed=1)
    _, _, tape = cell.forward(x, state, keep=True)
    return cell, tape, dy, dstm, dltm


@pytest.mark.parametrize("bad_shape", [(4, 2, 4), (3, 2, 5), (4, 1, 5), (4, 2), (1, 4, 2, 5)])
def test_dy_of_wrong_shape_names_dy_and_expected_shape(taped, bad_shape):
    cell, tape, _, _, _ = taped
    with pytest.raises(ValueError) as info:
        cell.backward(tape, np.zeros(bad_shape))
    message = str(info.value)
    assert re.search(r"\bdy\b", message), message
    assert str((4, 2, 5)) in message, message


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_non_float_dy_is_rejected(taped, dtype):
    cell, tape, _, _, _ = taped
    with pytest.raises(TypeError, match=r"\bdy\b"):
        cell.backward(tape, np.ones((4, 2, 5), dtype=dtype))


def test_integer_nested_list_dy_is_rejected(taped):
    cell, tape, _, _, _ = taped
    with pytest.raises(TypeError, match=r"\bdy\b"):
        cell.backward(tape, [[[1] * 5] * 2] * 4)


def test_tape_from_another_cell_is_rejected(taped):
    cell, tape, dy, _, _ = taped
    twin = cell.copy()                           # same gates, same parameters: still another cell
    with pytest.raises(ValueError, match="another cell"):
        twin.backward(tape, dy)
    other = gatekit.Cell(3, 5, "course", dtype=np.float64, seed=1)
    with pytest.raises(ValueError):
        other.backward(tape, dy)


@pytest.mark.parametrize("not_a_tape", [None, (1, 2), {"x": 1}, "tape", np.zeros((4, 2, 5))],
                         ids=["None", "tuple", "dict", "str", "array"])
def test_something_that_is_not_a_tape_is_rejected(taped, not_a_tape):
    cell, _, dy, _, _ = taped
    with pytest.raises(TypeError, match="tape"):
        cell.backward(not_a_tape, dy)


def test_forward_output_tuple_is_not_a_tape(taped):
    cell, _, dy, _, _ = taped
    result = cell.forward(np.zeros((4, 2, 3)), keep=True)
    with pytest.raises(TypeError):
        cell.backward(result, dy)                # the whole triple, not result[2]


@pytest.mark.parametrize("which", ["dstm", "dltm"])
@pytest.mark.parametrize("bad_shape", [(2, 4), (3, 5), (5,), (1, 2, 5)])
def test_final_state_gradient_of_wrong_shape_is_rejected(taped, which, bad_shape):
    cell, tape, dy, _, _ = taped
    with pytest.raises(ValueError) as info:
        cell.backward(tape, dy, **{which: np.zeros(bad_shape)})
    message = str(info.value)
    assert which in message and str((2, 5)) in message, message


@pytest.mark.parametrize("which", ["dstm", "dltm"])
def test_integer_final_state_gradient_is_rejected(taped, which):
    cell, tape, dy, _, _ = taped
    with pytest.raises(TypeError, match=which):
        cell.backward(tape, dy, **{which: np.ones((2, 5), dtype=np.int64)})


# --- Gates written in Python ---------------------------------------------------------------------

class NoBackwardForget(gatekit.PythonGate):
    """f_t = σ(z_f), forward only: a cell using it can run but not be trained."""
    role, name, blocks = "forget", "tb_no_backward", ("f",)
    params = {}    # PythonGate's instance property hides Gate.params; declare it on the class
    definition = staticmethod(reference.forget)

    def forward(self, step):
        step.f_t[...] = sigmoid(step.z("f"))


class SpyUse(gatekit.PythonGate):
    """The standard Use gate (STM_t = σ(z_v) ⊙ tanh(LTM_t)) in NumPy, counting backward calls.
    In backward it runs first (use, remember, learn, forget), so a call means work was done."""
    role, name, blocks = "use", "tb_spy", ("v",)
    params = {}
    definition = staticmethod(reference.use)
    backward_definition = staticmethod(reference.use_backward)
    backward_calls = 0
    forward_calls = 0

    def forward(self, step):
        type(self).forward_calls += 1
        step.U_t[...] = np.tanh(step.LTM_t)
        step.V_t[...] = sigmoid(step.z("v"))
        step.STM_t[...] = step.U_t * step.V_t

    def backward(self, step):
        type(self).backward_calls += 1
        U, V = step.U_t, step.V_t
        step.dU_t[...] += step.dSTM_t * V
        step.dV_t[...] += step.dSTM_t * U
        step.dLTM_t[...] += step.dU_t * (1 - U * U)
        step.dz("v")[...] += step.dV_t * V * (1 - V)

    def finish(self, step):
        type(self).backward_calls += 1


class _TestGates:
    @gatekit.hookimpl
    def register_gates(self, register):
        for gate in (NoBackwardForget, PythonForget, SpyUse):
            register(gate)


@pytest.fixture
def python_gates(request):
    name = gatekit.register_plugin(_TestGates(), name="tests.core.test_backward.python_gates")
    request.addfinalizer(lambda: gatekit.unregister_plugin(name))
    SpyUse.backward_calls = SpyUse.forward_calls = 0
    return name


def test_gate_without_backward_runs_forward_but_refuses_backward_before_any_work(python_gates):
    D, H, T, B = 3, 4, 5, 2
    cell = gatekit.Cell(D, H, "standard", forget="tb_no_backward", use="tb_spy",
                        dtype=np.float64, seed=4)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, D))
    state = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))

    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    assert SpyUse.forward_calls == T
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ltm, ltm_ref, rtol=0, atol=1e-12)

    with pytest.raises(NotImplementedError) as info:
        cell.backward(tape, np.ones((T, B, H)))
    message = str(info.value)
    assert "tb_no_backward" in message and "forget" in message, message
    # The Use gate (differentiable, first in the backward order) was never asked for anything.
    assert SpyUse.backward_calls == 0
    # It is raised before the arguments are even looked at.
    with pytest.raises(NotImplementedError, match="tb_no_backward"):
        cell.backward(tape, np.ones((1, 1, 1)))
    # gradcheck cannot help either
    with pytest.raises(NotImplementedError, match="tb_no_backward"):
        gradcheck(cell, x, state)


def _sgd_run(cell, x, state, dy, steps, lr=0.1):
    """A few steps of gradient descent on L = sum(y * dy); the losses along the way."""
    losses = []
    for _ in range(steps):
        y, _, tape = cell.forward(x, state, keep=True)
        losses.append(float(np.sum(y * dy)))
        grads = cell.backward(tape, dy)
        for name in cell.params:
            cell.params[name] = cell.params[name] - lr * grads[name]
    return losses


@pytest.mark.parametrize("use", ["standard", "tb_spy"])
def test_python_gate_with_backward_matches_builtin_gate(python_gates, use):
    D, H, T, B = 3, 4, 7, 3
    builtin = gatekit.Cell(D, H, "standard", use=use, dtype=np.float64, seed=9)
    python = gatekit.Cell(D, H, "standard", forget=PythonForget.name, use=use,
                          dtype=np.float64, seed=10)
    assert list(python.params) == list(builtin.params)
    for name in builtin.params:                   # the same parameters in both
        python.params[name] = builtin.params[name]
    rng = np.random.default_rng(9)
    x = rng.standard_normal((T, B, D))
    state = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    dy, dstm, dltm = (rng.standard_normal((T, B, H)), rng.standard_normal((B, H)),
                      rng.standard_normal((B, H)))

    y_b, _, tape_b = builtin.forward(x, state, keep=True)
    y_p, _, tape_p = python.forward(x, state, keep=True)
    np.testing.assert_allclose(y_p, y_b, rtol=0, atol=1e-12)
    got = python.backward(tape_p, dy, dstm, dltm)
    want = builtin.backward(tape_b, dy, dstm, dltm)
    # The two forget gates compute σ through different routines (NumPy vs the C kernel), which
    # may differ in the last ulp: 1e-12 is a few thousand ulps of headroom, no more.
    assert_gradients_match(python, got, want, 1e-12, x.shape)
    # ... and both agree with the independent oracle.
    assert_gradients_match(python, got, reference.backward(python, x, dy, state, dstm, dltm),
                           F64_TOL, x.shape)
    if use == "tb_spy":
        assert SpyUse.backward_calls > 0

    # It trains inside the loop: gradient descent follows the built-in gate's path.
    losses_b = _sgd_run(builtin, x, state, dy, steps=4)
    losses_p = _sgd_run(python, x, state, dy, steps=4)
    assert losses_b[-1] < losses_b[0]
    np.testing.assert_allclose(losses_p, losses_b, rtol=1e-12)
    for name in builtin.params:
        assert rel_error(python.params[name], builtin.params[name]) <= 1e-12, name


def test_python_gate_with_backward_passes_gradcheck_in_both_dtypes(python_gates):
    for dtype in (np.float64, np.float32):
        cell, x, state, _, _, _ = make_case("standard", 3, 2, 3, 2, dtype=dtype, seed=6,
                                            overrides={"forget": PythonForget.name,
                                                       "use": "tb_spy"})
        assert gradcheck(cell, x, state, tolerance=1e-6, max_entries=10)


# --- 6. The tape ---------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["standard", "course", "peephole", "janet"])
def test_tape_is_reusable(variant):
    cell, x, state, dy, dstm, dltm = make_case(variant, 6, 2, 3, 4, seed=8)
    _, _, tape = cell.forward(x, state, keep=True)
    first = cell.backward(tape, dy, dstm, dltm)
    kept = {name: array.copy() for name, array in first.items()}
    # Another backward on the same tape with other upstream gradients in between.
    cell.backward(tape, -3 * dy, None, dltm)
    second = cell.backward(tape, dy, dstm, dltm)
    for name in kept:
        np.testing.assert_array_equal(second[name], kept[name], err_msg=name)
        np.testing.assert_array_equal(first[name], kept[name], err_msg=name)  # not overwritten
    assert_gradients_match(cell, second, reference.backward(cell, x, dy, state, dstm, dltm),
                           F64_TOL, x.shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("variant", ["standard", "course", "literal", "janet"])
def test_tape_is_unaffected_by_caller_changing_returned_outputs(variant, dtype):
    cell, x, state, dy, dstm, dltm = make_case(variant, 6, 2, 3, 4, dtype=dtype, seed=12)
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    before = cell.backward(tape, dy, dstm, dltm)
    y[...] = 123.0
    y[2] *= -1
    stm[...] = 7.0
    ltm[...] = -7.0
    after = cell.backward(tape, dy, dstm, dltm)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    tol = F64_TOL if dtype == np.float64 else F32_TOL
    want = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64)
    assert_gradients_match(cell, after, want, tol, x.shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("changed", ["x", "stm0", "ltm0"])
def test_tape_is_unaffected_by_caller_changing_its_inputs(changed, dtype):
    # The caller reuses its input buffers (say, for the next batch) between forward and
    # backward; the gradients must still be those of the forward pass that was recorded.
    cell, x, state, dy, dstm, dltm = make_case("standard", 6, 2, 3, 4, dtype=dtype, seed=13)
    want = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64)
    buffers = {"x": x.copy(), "stm0": state[0].copy(), "ltm0": state[1].copy()}
    _, _, tape = cell.forward(buffers["x"], (buffers["stm0"], buffers["ltm0"]), keep=True)
    buffers[changed][...] = 5.0
    got = cell.backward(tape, dy, dstm, dltm)
    tol = F64_TOL if dtype == np.float64 else F32_TOL
    assert_gradients_match(cell, got, want, tol, x.shape)


# A tape's memory goes back to its cell when the tape and every view of it are gone (a training
# step's next tape reuses those pages), and never while any of them is alive.
TAPE_PATHS = {"loop": {}, "projected": {"proj_size": 3},
              "scan": {"variant": "minlstm", "scan": True}}


@pytest.mark.parametrize("path", TAPE_PATHS)
def test_a_tape_in_use_keeps_its_memory_and_a_dropped_one_lends_it_again(path):
    options = dict(TAPE_PATHS[path])
    variant = options.pop("variant", "standard")
    cell = gatekit.Cell(3, 4, variant, **options, dtype=np.float64, seed=21)
    rng = np.random.default_rng(21)
    first, second = rng.standard_normal((2, 7, 2, 3))
    dy = rng.standard_normal((7, 2, options.get("proj_size", 4)))
    want = reference.backward(cell, first, dy)
    _, _, tape = cell.forward(first, keep=True)
    z = tape.z                                  # a view the caller holds on to
    address, z_first = z.__array_interface__["data"][0], z.copy()
    _, _, other = cell.forward(second, keep=True)
    assert other.z.__array_interface__["data"][0] != address
    assert_gradients_match(cell, cell.backward(tape, dy), want, F64_TOL, first.shape)
    del tape
    gc.collect()
    _, _, third = cell.forward(second, keep=True)
    np.testing.assert_array_equal(z, z_first)   # the view kept the first tape's memory
    assert third.z.__array_interface__["data"][0] != address
    del z
    gc.collect()
    _, _, fourth = cell.forward(first, keep=True)
    assert fourth.z.__array_interface__["data"][0] == address
    assert_gradients_match(cell, cell.backward(fourth, dy), want, F64_TOL, first.shape)


# --- 7. No stale buffers: a gradient at one step only --------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_from_a_single_step(variant):
    T, B, D, H = 9, 2, 3, 4
    cell, x, state, dy_full, dstm, dltm = make_case(variant, T, B, D, H, seed=14)
    # Dirty whatever the core might reuse: a full backward, with final-state gradients, on a
    # longer sequence of this cell first.
    long_case = make_case(variant, 2 * T, B, D, H, seed=15)
    core_backward(cell, long_case[1], long_case[2], long_case[3], long_case[4], long_case[5])
    _, _, tape = cell.forward(x, state, keep=True)
    cell.backward(tape, dy_full, dstm, dltm)

    for t in (0, T // 2, T - 1):
        dy = np.zeros_like(dy_full)
        dy[t] = dy_full[t]
        got = cell.backward(tape, dy)
        want = reference.backward(cell, x, dy, state)
        assert_gradients_match(cell, got, want, F64_TOL, x.shape)
        # Causality: y_t depends on no later input, so those gradients are exactly zero.
        assert np.all(got["x"][t + 1:] == 0), t
        assert np.any(got["x"][t] != 0), t


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_upstream_gradient_gives_exactly_zero(variant):
    cell, x, state, dy, dstm, dltm = make_case(variant, 5, 2, 3, 4, seed=16)
    _, _, tape = cell.forward(x, state, keep=True)
    cell.backward(tape, dy, dstm, dltm)           # leave nonzero values in anything reused
    got = cell.backward(tape, np.zeros_like(dy))
    for name, array in got.items():
        assert np.all(array == 0), name


# --- 8. Threads ----------------------------------------------------------------------------------

def test_two_threads_on_two_cells_match_sequential_runs():
    cases = [make_case("course", 200, 4, 5, 8, seed=20),
             make_case("peephole", 150, 3, 6, 7, dtype=np.float32, seed=21)]

    def run(case):
        cell, x, state, dy, dstm, dltm = case
        y, final, tape = cell.forward(x, state, keep=True)
        return y, final, cell.backward(tape, dy, dstm, dltm)

    sequential = [run(case) for case in cases]
    repeats = 25
    together = run_in_threads([lambda case=case: [run(case) for _ in range(repeats)]
                               for case in cases])
    for runs, (y0, (stm0, ltm0), grads0) in zip(together, sequential):
        for y, (stm, ltm), grads in runs:
            np.testing.assert_array_equal(y, y0)
            np.testing.assert_array_equal(stm, stm0)
            np.testing.assert_array_equal(ltm, ltm0)
            for name in grads0:
                np.testing.assert_array_equal(grads[name], grads0[name], err_msg=name)
    # and the sequential results themselves are right
    for case, (_, _, grads) in zip(cases, sequential):
        cell, x, state, dy, dstm, dltm = case
        tol = F64_TOL if cell.dtype == np.float64 else F32_TOL
        want = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64)
        assert_gradients_match(cell, grads, want, tol, x.shape)
