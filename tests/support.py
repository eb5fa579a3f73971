"""Helpers shared by gatekit's forward-pass tests (imported by the test modules; fixtures live in
conftest.py).

Every numerical check compares the compiled core with ``gatekit.reference.forward`` run in float64:
the NumPy reference is the oracle, never the core itself.
"""
from pathlib import Path

import numpy as np

import gatekit
from gatekit.core import reference

# The repository (the README, the examples).
REPO = Path(__file__).resolve().parent.parent
# The presets and gates gatekit itself ships (third-party plugins may add more to
# gatekit.variants() / gatekit.gates(); those are tested too where we iterate over variants()).
BUILTIN_PRESETS = ("standard", "course", "literal", "peephole", "nig", "nfg", "nog", "niaf",
                   "noaf", "cifg", "janet")
BUILTIN_GATES = {
    "forget": ("standard", "peephole", "none"),
    "learn": ("standard", "peephole", "no_ignore", "linear", "linear_peephole", "coupled", "janet"),
    "remember": ("standard",),
    "use": ("standard", "peephole", "linear", "linear_peephole", "no_output_gate", "memory",
            "literal", "course"),
}
# Forget gates that hand their pre-activation s_t to later gates (JANET's learn gate needs it).
FORGET_WITH_S_T = ("standard", "peephole")

# float64 core against float64 reference: same maths, different summation order (BLAS vs
# NumPy matmul), so only rounding differences of order 1e-16 * T * (H + D) remain.
F64_ATOL = 1e-10
# float32 core against the float64 reference: float32 eps is ~1.2e-7 and each step's rounding
# error is carried into the next through the recurrence, so over T <= 12 steps of H + D <= 18
# terms errors stay ~1e-6. rtol 1e-4 is the contract; atol 1e-5 covers outputs that are close to
# zero (a sigmoid times a tanh can be ~1e-6), where a relative bound means nothing.
F32_RTOL, F32_ATOL = 1e-4, 1e-5


def random_inputs(cell, T, B, seed=0, state=True, scale=1.0):
    """x (T, B, D) and, if ``state``, a nonzero initial (stm0, ltm0), in the cell's dtype (so the
    reference sees exactly the numbers the core sees)."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((T, B, cell.input_size))).astype(cell.dtype)
    if not state:
        return x, None
    H = cell.hidden_size
    stm0 = rng.uniform(-1, 1, (B, H)).astype(cell.dtype)
    ltm0 = rng.uniform(-2, 2, (B, H)).astype(cell.dtype)
    return x, (stm0, ltm0)


def assert_matches_reference(cell, x, state=None, result=None):
    """The core's (y, (stm, ltm)) agree with the float64 reference within the dtype's tolerance."""
    y, (stm, ltm) = cell(x, state) if result is None else result
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state, dtype=np.float64)
    T, B = np.shape(x)[:2]
    H = cell.hidden_size
    assert y.shape == (T, B, H) and stm.shape == (B, H) and ltm.shape == (B, H)
    assert y.dtype == stm.dtype == ltm.dtype == cell.dtype
    for name, actual, expected in (("y", y, y_ref), ("stm", stm, stm_ref), ("ltm", ltm, ltm_ref)):
        if cell.dtype == np.float64:
            np.testing.assert_allclose(actual, expected, rtol=0, atol=F64_ATOL, err_msg=name)
        else:
            np.testing.assert_allclose(actual, expected, rtol=F32_RTOL, atol=F32_ATOL,
                                       err_msg=name)
    return y, (stm, ltm)


def make_plugin(gates=(), variants=()):
    """A plugin object implementing both hooks: registers ``gates`` (classes) and ``variants``
    (``(name, {role: gate})`` pairs)."""
    class Plugin:
        @gatekit.hookimpl
        def register_gates(self, register):
            for gate in gates:
                register(gate)

        @gatekit.hookimpl
        def register_variants(self, register):
            for name, spec in variants:
                register(name, spec)

    return Plugin()
