"""Blocks that read the event only or the STM only, and the step's E_t, dSTM_prev and dE_t.

The gates here are written in Python against the step the compiled loop hands them; the loop
itself (its input and recurrent products skipping the runs of blocks that do not read them, its
carry to STM_{t-1} and dx) is what is under test. Oracles: the NumPy definitions of
gatekit.reference, the equations of REFERENCE.md written out here, finite differences, and
torch.nn.GRU where PyTorch is installed.
"""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.testing import gradcheck
from support import (EventForget, MinForget, MinLearn, assert_close, needs,
                     registered_for_the_module, sigmoid)


class ResetLearn(gatekit.PythonGate):
    """GRU's candidate: N_t = tanh(z_n + σ(z_r) ⊙ z_hn), i_t = 1 - f_t."""
    role, name, blocks = "learn", "tr_reset", ("r", "n", "hn")
    reads = {"n": "event", "hn": "STM"}
    definition = staticmethod(reference.learn_reset)
    backward_definition = staticmethod(reference.learn_reset_backward)

    def forward(self, step):
        r = sigmoid(step.z("r"))
        step.N_t[...] = np.tanh(step.z("n") + r * step.z("hn"))
        step.i_t[...] = 1 - step.f_t

    def backward(self, step):
        r = sigmoid(step.z("r"))
        da = step.dN_t * (1 - step.N_t ** 2)
        step.dz("n")[...] += da
        step.dz("hn")[...] += da * r
        step.dz("r")[...] += da * step.z("hn") * r * (1 - r)
        step.df_t[...] -= step.di_t


class MguLearn(gatekit.PythonGate):
    """MGU: N_t = tanh(W_hn (i_t ⊙ STM_{t-1}) + z_n), whose gradient reaches STM_{t-1}
    outside z."""
    role, name, blocks = "learn", "tr_mgu", ("n",)
    reads = {"n": "event"}
    params = {"W_hn": ("H", "H")}
    definition = staticmethod(reference.learn_mgu)
    backward_definition = staticmethod(reference.learn_mgu_backward)

    def forward(self, step):
        i = 1 - step.f_t
        step.i_t[...] = i
        step.N_t[...] = np.tanh((i * step.STM_prev) @ self.arrays["W_hn"].T + step.z("n"))

    def backward(self, step):
        da = step.dN_t * (1 - step.N_t ** 2)
        step.dz("n")[...] += da
        d_reset = da @ self.arrays["W_hn"]
        step.dparams["W_hn"][...] += da.T @ (step.i_t * step.STM_prev)
        step.dSTM_prev[...] += d_reset * step.i_t
        step.df_t[...] -= step.di_t + d_reset * step.STM_prev


class Mut1Learn(gatekit.PythonGate):
    """MUT1's candidate reads tanh(E_t) outside z: its gradient reaches dE_t directly."""
    role, name, blocks = "learn", "tr_mut1", ("r",)
    params = {"W_hh": ("H", "H"), "b_h": ("H",)}
    definition = staticmethod(reference.learn_mut1)
    backward_definition = staticmethod(reference.learn_mut1_backward)

    def forward(self, step):
        r = sigmoid(step.z("r"))
        step.N_t[...] = np.tanh((r * step.STM_prev) @ self.arrays["W_hh"].T
                                + np.tanh(step.E_t) + self.arrays["b_h"])
        step.i_t[...] = 1 - step.f_t

    def backward(self, step):
        r = sigmoid(step.z("r"))
        da = step.dN_t * (1 - step.N_t ** 2)
        d_reset = da @ self.arrays["W_hh"]
        step.dz("r")[...] += d_reset * step.STM_prev * r * (1 - r)
        step.dparams["W_hh"][...] += da.T @ (r * step.STM_prev)
        step.dparams["b_h"][...] += da.sum(axis=0)
        step.dSTM_prev[...] += d_reset * r
        step.dE_t[...] += da * (1 - np.tanh(step.E_t) ** 2)
        step.df_t[...] -= step.di_t


# The cells of REFERENCE.md's table, on one memory (use "memory": STM_t = LTM_t).
CELLS = {
    "gru": {"learn": "tr_reset"},
    "minlstm": {"forget": "py_min", "learn": "py_min"},
    "mingru": {"forget": "py_event", "learn": "py_min"},
    "mgu": {"learn": "tr_mgu"},
    "mut1": {"forget": "py_event", "learn": "tr_mut1"},
}


gates = registered_for_the_module(
    "tests.core.test_block_reads",
    [ResetLearn, MinForget, MinLearn, MguLearn, Mut1Learn, EventForget])


def make(kind, D, H, dtype=np.float64, seed=0, **options):
    return gatekit.Cell(D, H, "standard", use="memory", **CELLS[kind], dtype=dtype, seed=seed,
                        **options)


def inputs(cell, T, B, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, cell.input_size)).astype(cell.dtype)
    h0 = rng.uniform(-1, 1, (B, cell.hidden_size)).astype(cell.dtype)
    return x, (h0, h0.copy())


def test_a_block_that_reads_the_event_or_the_stm_only_has_weights_of_that_width():
    cell = make("gru", 3, 5)
    shapes = {name: array.shape for name, array in cell.params.items()}
    assert shapes == {"W_f": (5, 8), "b_f": (5,), "W_r": (5, 8), "b_r": (5,), "W_n": (5, 3),
                      "b_n": (5,), "W_hn": (5, 5), "b_hn": (5,)}
    assert ResetLearn.shapes(3, 5)["W_n"] == (5, 3)
    # The columns a block does not read take no part in the computation and are not trained.
    _, _, tape = cell.forward(*inputs(cell, 4, 2), keep=True)
    grads = cell.backward(tape, np.ones((4, 2, 5)))
    assert all(grads[name].shape == shapes[name] for name in shapes)


def test_gates_with_reads_need_blocks_they_declare():
    class Wrong(gatekit.PythonGate):
        role, name, blocks = "learn", "tr_wrong", ("n",)
        reads = {"n": "memory"}
        definition = staticmethod(reference.learn_min)

    class Plugin:
        @gatekit.hookimpl
        def register_gates(self, register):
            register(Wrong)

    with pytest.raises(gatekit.core.plugins.PluginError, match="reads"):
        gatekit.register_plugin(Plugin(), name="tests.core.test_block_reads.wrong")


# (T, B, D, H): the plain loop, then the tiled one (more than 8 steps).
SIZES = [(5, 2, 3, 4), (24, 5, 6, 20)]


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("T, B, D, H", SIZES)
def test_forward_and_backward_match_the_numpy_definitions(kind, T, B, D, H):
    D = H if kind == "mut1" else D
    cell = make(kind, D, H)
    x, state = inputs(cell, T, B)
    y, final, tape = cell.forward(x, state, keep=True)
    y_ref, final_ref = reference.forward(cell, x, state)
    assert_close(np.float64, y, y_ref, "y")
    assert_close(np.float64, final[1], final_ref[1], "ltm")
    rng = np.random.default_rng(2)
    dy = rng.standard_normal(y.shape)
    grads = cell.backward(tape, dy)
    expected = reference.backward(cell, x, dy, state)
    for name in (*cell.params, "x", "stm0", "ltm0"):
        assert_close(np.float64, grads[name], expected[name], name)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_every_gradient_agrees_with_finite_differences(kind):
    D, H = (4, 4) if kind == "mut1" else (3, 4)
    cell = make(kind, D, H, seed=3)
    x, state = inputs(cell, 6, 2, seed=4)
    assert gradcheck(cell, x, state)


@pytest.mark.parametrize("kind", ["gru", "mgu"])
def test_ragged_batches_hold_the_state_of_each_sequence_at_its_end(kind):
    cell = make(kind, 3, 6)
    x, state = inputs(cell, 12, 3)
    lengths = np.array([12, 5, 9])
    y, (stm, ltm), tape = cell.forward(x, state, keep=True, lengths=lengths)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    grads = cell.backward(tape, dy)
    for b, length in enumerate(lengths):
        one = (state[0][b:b + 1], state[1][b:b + 1])
        y_b, (stm_b, ltm_b) = reference.forward(cell, x[:length, b:b + 1], one)
        assert_close(np.float64, y[:length, b], y_b[:, 0], f"y of sequence {b}")
        assert np.all(y[length:, b] == 0)
        assert_close(np.float64, ltm[b], ltm_b[0], f"ltm of sequence {b}")
        expected = reference.backward(cell, x[:length, b:b + 1], dy[:length, b:b + 1], one)
        assert_close(np.float64, grads["x"][:length, b], expected["x"][:, 0], f"dx of {b}")
        assert np.all(grads["x"][length:, b] == 0)
        assert_close(np.float64, grads["stm0"][b], expected["stm0"][0], f"dstm0 of {b}")


def test_gru_is_the_equations_of_the_reference_table():
    """REFERENCE.md's GRU, written out here: r, z, n; h_t = (1 - z) ⊙ n + z ⊙ h."""
    cell = make("gru", 3, 4)
    x, state = inputs(cell, 7, 2)
    p = cell.params
    h = state[0]
    for t in range(7):
        r = sigmoid(h @ p["W_r"][:, :4].T + x[t] @ p["W_r"][:, 4:].T + p["b_r"])
        z = sigmoid(h @ p["W_f"][:, :4].T + x[t] @ p["W_f"][:, 4:].T + p["b_f"])
        n = np.tanh(x[t] @ p["W_n"].T + p["b_n"] + r * (h @ p["W_hn"].T + p["b_hn"]))
        h = (1 - z) * n + z * h
    _, (stm, ltm) = cell(x, state)
    assert_close(np.float64, stm, h, "h_T")
    assert_close(np.float64, ltm, h, "h_T")


def test_minlstm_is_the_equations_of_the_reference_table():
    cell = make("minlstm", 3, 4)
    x, state = inputs(cell, 7, 2)
    p = cell.params
    h = state[0]
    for t in range(7):
        f = sigmoid(x[t] @ p["W_f"].T + p["b_f"])
        i = sigmoid(x[t] @ p["W_i"].T + p["b_i"])
        n = x[t] @ p["W_n"].T + p["b_n"]
        h = f / (f + i) * h + i / (f + i) * n
    assert_close(np.float64, cell(x, state)[1][0], h, "h_T")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_matches_torch_gru_outputs_and_gradients(dtype):
    torch = needs("torch")
    D, H, T, B = 3, 5, 9, 4
    torch.manual_seed(0)
    gru = torch.nn.GRU(D, H).double()
    cell = make("gru", D, H, dtype=dtype)
    w_ih, w_hh = gru.weight_ih_l0.detach().numpy(), gru.weight_hh_l0.detach().numpy()
    b_ih, b_hh = gru.bias_ih_l0.detach().numpy(), gru.bias_hh_l0.detach().numpy()
    rows = {k: slice(j * H, (j + 1) * H) for j, k in enumerate("rzn")}
    # PyTorch's z weighs the old memory: gatekit's forget factor f_t.
    cell.params["W_f"] = np.hstack([w_hh[rows["z"]], w_ih[rows["z"]]])
    cell.params["b_f"] = b_ih[rows["z"]] + b_hh[rows["z"]]
    cell.params["W_r"] = np.hstack([w_hh[rows["r"]], w_ih[rows["r"]]])
    cell.params["b_r"] = b_ih[rows["r"]] + b_hh[rows["r"]]
    cell.params["W_n"], cell.params["b_n"] = w_ih[rows["n"]], b_ih[rows["n"]]
    cell.params["W_hn"], cell.params["b_hn"] = w_hh[rows["n"]], b_hh[rows["n"]]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((B, H))
    dy = rng.standard_normal((T, B, H))

    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0[None], requires_grad=True)
    out, _ = gru(xt, ht)
    (out * torch.tensor(dy)).sum().backward()

    y, _, tape = cell.forward(x, (h0, h0), keep=True)
    grads = cell.backward(tape, dy)
    assert_close(dtype, y, out.detach().numpy(), "y")
    assert_close(dtype, grads["x"], xt.grad.numpy(), "dx")
    assert_close(dtype, grads["stm0"] + grads["ltm0"], ht.grad.numpy()[0], "dh0")
    assert_close(dtype, grads["W_n"], gru.weight_ih_l0.grad.numpy()[rows["n"]], "dW_in")
    assert_close(dtype, grads["W_hn"], gru.weight_hh_l0.grad.numpy()[rows["n"]], "dW_hn")
    assert_close(dtype, grads["b_hn"], gru.bias_hh_l0.grad.numpy()[rows["n"]], "db_hn")
    assert_close(dtype, grads["W_r"][:, :H], gru.weight_hh_l0.grad.numpy()[rows["r"]], "dW_hr")
    assert_close(dtype, grads["W_f"][:, H:], gru.weight_ih_l0.grad.numpy()[rows["z"]], "dW_iz")
