"""Post-gate recurrent products (``Gate.products``): a gate's own (H, H) product whose input
waits for another gate (course's W_u (LTM_{t-1} ⊙ f_t), MGU's W_hn (i_t ⊙ STM_{t-1}), MUT1's
W_hh (σ(z_r) ⊙ STM_{t-1})), packed by the loop once per call and split between its threads.

Oracles: the NumPy definitions of gatekit.reference, the same gate without the declaration
(which runs its product through ``gemm`` at every step, the path third-party gates keep), and
finite differences.
"""
import functools

import numpy as np
import pytest

import gatekit
from gatekit.core import cell as cell_module
from gatekit.core import reference
from gatekit.core.plugins import PluginError
from gatekit.testing import gradcheck

from support import assert_close, assert_same_bits, make_plugin, steps_for_a_team

DTYPES = [np.float64, np.float32]
# (variant, the gate that declares the product, its role, the parameter it names)
DECLARING = [("course", "use", "W_u"), ("mgu", "learn", "W_hn"), ("mut1", "learn", "W_hh")]
ROLE_INDEX = {"forget": 0, "learn": 1, "remember": 2, "use": 3}


def gate_class(variant, role):
    return type(gatekit.Cell(4, 4, variant).gates[ROLE_INDEX[role]])


def unpacked(variant, role):
    """The built-in gate of ``variant`` in ``role`` with its declaration taken away: the step
    then has no packed product, and the gate multiplies through gemm at every step."""
    return type(f"Gemm{variant.title()}", (gate_class(variant, role),),
                {"name": f"gemm_{variant}", "products": ()})


def make(variant, D, H, dtype, threads=1, seed=5, **gates):
    D = H if variant == "mut1" else D
    return gatekit.Cell(D, H, variant, dtype=dtype, seed=seed, threads=threads, **gates)


def inputs(cell, T, B, seed):
    rng = np.random.default_rng(seed)
    x = (0.5 * rng.standard_normal((T, B, cell.input_size))).astype(cell.dtype)
    h0 = rng.uniform(-1, 1, (B, cell.hidden_size)).astype(cell.dtype)
    # the one-memory cells (mgu, mut1) take one memory given twice
    c0 = h0.copy() if cell.variant in ("mgu", "mut1") else (
        rng.uniform(-1, 1, (B, cell.hidden_size)).astype(cell.dtype))
    dy = (rng.standard_normal((T, B, cell.hidden_size)) / T).astype(cell.dtype)
    return x, (h0, c0), dy


def run(cell, x, state, dy, lengths=None):
    y, final, tape = cell.forward(x, state, keep=True, lengths=lengths)
    return y, final, cell.backward(tape, dy)


@pytest.mark.parametrize("variant, role, weight", DECLARING)
def test_the_built_in_gates_declare_their_product(variant, role, weight):
    cls = gate_class(variant, role)
    assert cls.products == (weight,)
    assert cls.params[weight] == ("H", "H") and cls.syncs == 1
    assert all(not type(gate).products for gate in gatekit.Cell(4, 4, "standard").gates)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("variant, role, weight", DECLARING)
def test_packed_product_matches_the_reference_and_the_gemm_path(register, variant, role, weight,
                                                                threads, dtype):
    register(make_plugin(gates=[unpacked(variant, role)]), name=f"test-gemm-{variant}")
    B, D, H = 16, 20, 48
    cell = make(variant, D, H, dtype, threads)
    gemm_cell = make(variant, D, H, dtype, threads, **{role: f"gemm_{variant}"})
    T = steps_for_a_team(cell, B, threads)
    x, state, dy = inputs(cell, T, B, seed=threads)
    lengths = np.random.default_rng(7).integers(T // 2, T + 1, size=B)
    lengths[0] = T
    for ragged in (None, lengths):
        y, final, grads = run(cell, x, state, dy, ragged)
        y_gemm, final_gemm, grads_gemm = run(gemm_cell, x, state, dy, ragged)
        assert_close(dtype, y, y_gemm, "y against the gemm path")
        for name in grads:
            assert_close(dtype, grads[name], grads_gemm[name], f"d{name} against the gemm path")
        if ragged is None:
            y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
            assert_close(dtype, y, y_ref, "y")
            assert_close(dtype, final[1], final_ref[1], "ltm")
            expected = reference.backward(cell, x, dy, state, dtype=np.float64)
            for name in grads:
                error = np.linalg.norm(grads[name] - expected[name])
                scale = np.linalg.norm(expected[name])
                tolerance = 1e-10 if dtype == np.float64 else 1e-4
                assert error <= tolerance * scale + 10 * tolerance ** 1.5, name
    if threads > 1:
        solo = make(variant, D, H, dtype, threads=1)
        for ragged in (None, lengths):
            y, final, grads = run(cell, x, state, dy, ragged)
            y1, final1, grads1 = run(solo, x, state, dy, ragged)
            assert_same_bits(y, y1, "y")
            for name in grads:
                assert_same_bits(grads[name], grads1[name], f"d{name}")


class LoopGoingAlone:
    """The compiled loop with every pass told to go on alone after step ``at``."""

    def __init__(self, loop, at):
        self._loop = loop
        self.forward = functools.partial(loop.forward, alone_at=at)
        self.backward = functools.partial(loop.backward, alone_at=at)

    def __getattr__(self, name):
        return getattr(self._loop, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("at", [0, 9])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("variant", ["mgu", "mut1"])
def test_going_alone_changes_no_bit(monkeypatch, variant, threads, at, dtype):
    # Thread 0 alone goes over every thread's packed panels of the post-gate product.
    B, D, H = 24, 24, 96
    team = make(variant, D, H, dtype, threads)
    solo = make(variant, D, H, dtype, threads=1)
    T = max(steps_for_a_team(team, B, threads), at + 2)
    x, state, dy = inputs(team, T, B, seed=at + threads)
    want = run(solo, x, state, dy)
    monkeypatch.setattr(cell_module, "_loop", LoopGoingAlone(cell_module._loop, at))
    y, final, grads = run(team, x, state, dy)
    assert_same_bits(y, want[0], "y")
    for name in grads:
        assert_same_bits(grads[name], want[2][name], f"d{name}")


@pytest.mark.parametrize("variant", ["course", "mgu", "mut1"])
def test_gradients_agree_with_finite_differences(variant):
    cell = make(variant, 3, 5, np.float64, seed=2)
    x, state, _ = inputs(cell, 6, 2, seed=3)
    gradcheck(cell, x, state)


@pytest.mark.parametrize("variant", ["course", "mgu"])
def test_layers_stacked_and_bidirectional(variant):
    # A layer's cells run the packed product too: the reverse direction and the second layer.
    H, D, T, B = 6, 4, 7, 3
    lstm = gatekit.LSTM(D, H, num_layers=2, bidirectional=True, variant=variant,
                        dtype=np.float64, seed=4)
    x = np.random.default_rng(5).standard_normal((T, B, D))
    y, _ = lstm(x)
    layer_input = x
    for layer in range(2):
        outputs = []
        for direction in range(2):
            cell = lstm.cell(layer, reverse=bool(direction))
            seen = layer_input if direction == 0 else layer_input[::-1]
            zeros = np.zeros((B, H))
            out, _ = reference.forward(cell, seen, (zeros, zeros), dtype=np.float64)
            outputs.append(out if direction == 0 else out[::-1])
        layer_input = np.concatenate(outputs, axis=2)
    assert_close(np.float64, y, layer_input, "y of the layers")


# --- The declaration, as registration checks it --------------------------------------------------

def test_a_product_must_name_an_h_by_h_parameter(register):
    class WrongShape(gate_class("course", "use")):
        name = "course_wrong_product"
        products = ("b_u",)

    with pytest.raises(PluginError, match=r"products \('b_u',\) must name"):
        register(make_plugin(gates=[WrongShape]), name="test-wrong-product")


def test_a_gate_declares_one_product(register):
    class Two(gate_class("course", "use")):
        name = "course_two_products"
        params = {"W_u": ("H", "H"), "b_u": ("H",), "W_x": ("H", "H")}
        products = ("W_u", "W_x")

    with pytest.raises(PluginError, match="at most one"):
        register(make_plugin(gates=[Two]), name="test-two-products")


def test_a_product_needs_a_gate_that_shares_its_work(register):
    class Unshared(gate_class("course", "use")):
        name = "course_unshared_product"
        syncs = 0
        mixes_units = True

    with pytest.raises(PluginError, match="syncs"):
        register(make_plugin(gates=[Unshared]), name="test-unshared-product")
