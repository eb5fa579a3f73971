"""The ``standard`` variant against PyTorch's ``torch.nn.LSTM``: forward outputs, final states and
every gradient, under the same parameters.

PyTorch keeps the four gate blocks in the order i, f, g, o in ``weight_ih_l0`` (4H, D),
``weight_hh_l0`` (4H, H) and two biases that are summed. gatekit names them after the
equations: ``W_i`` the input gate, ``W_f`` forget, ``W_n`` the candidate g, ``W_v`` the output
gate o, each (H, H + D) acting on ``[STM_{t-1}, E_t]`` with the STM (hidden) columns first.
Only the standard cell exists in PyTorch; the other variants are held to the NumPy reference
and to finite differences in test_backward.py.
"""
import numpy as np
import pytest

import gatekit

from support import needs, rel_error, sigmoid

torch = needs("torch")

# gatekit block names in PyTorch's gate order i, f, g, o.
TORCH_ORDER = ("i", "f", "n", "v")
TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}


def torch_lstm_from_cell(cell):
    """A ``torch.nn.LSTM(D, H)`` computing what the gatekit ``standard`` cell computes."""
    assert cell.gate_names == {"forget": "standard", "learn": "standard",
                               "remember": "standard", "use": "standard"}
    D, H = cell.input_size, cell.hidden_size
    lstm = torch.nn.LSTM(D, H).to(TORCH_DTYPES[cell.dtype])
    blocks = [np.asarray(cell.params[f"W_{k}"]) for k in TORCH_ORDER]
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([W[:, :H] for W in blocks])))
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([W[:, H:] for W in blocks])))
        lstm.bias_ih_l0.copy_(torch.from_numpy(
            np.concatenate([np.asarray(cell.params[f"b_{k}"]) for k in TORCH_ORDER])))
        lstm.bias_hh_l0.zero_()
    return lstm


def cell_gradients_from_torch(lstm, H):
    """The gradients of ``lstm``'s parameters under gatekit's names and layout."""
    w_hh = lstm.weight_hh_l0.grad.detach().numpy()
    w_ih = lstm.weight_ih_l0.grad.detach().numpy()
    b_ih = lstm.bias_ih_l0.grad.detach().numpy()
    b_hh = lstm.bias_hh_l0.grad.detach().numpy()
    # The two biases are summed, so they get the same gradient (up to PyTorch's own order of
    # summation).
    assert rel_error(b_ih, b_hh) <= (1e-6 if b_ih.dtype == np.float32 else 1e-13)
    grads = {}
    for k, block in enumerate(TORCH_ORDER):
        rows = slice(k * H, (k + 1) * H)
        grads[f"W_{block}"] = np.concatenate([w_hh[rows], w_ih[rows]], axis=1)
        grads[f"b_{block}"] = b_ih[rows]
    return grads


SHAPES = [(1, 1, 2, 1), (1, 3, 2, 4), (7, 3, 4, 5), (60, 2, 3, 6)]

# float64: the same formulas in a different order of operations (and PyTorch adds the zero
# hh-bias); observed ~1e-16..1e-15, so 1e-10 is wide yet fails on any wrong term or block.
# float32: unit roundoff 6e-8 in both libraries, errors of a few 1e-7 over these sequences;
# 1e-5 leaves a margin of more than 10.
TOLERANCES = [pytest.param(np.float64, 1e-10, id="f64"), pytest.param(np.float32, 1e-5, id="f32")]


@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-D{}-H{}".format(*s))
def test_standard_cell_matches_torch_lstm(shape, dtype, tol):
    T, B, D, H = shape
    torch.manual_seed(0)
    cell = gatekit.Cell(D, H, "standard", dtype=dtype, seed=T + H)
    lstm = torch_lstm_from_cell(cell)
    rng = np.random.default_rng(T * 100 + B)

    def draw(*s):
        return rng.standard_normal(s).astype(dtype)

    x, stm0, ltm0 = draw(T, B, D), draw(B, H), draw(B, H)
    dy, dstm, dltm = draw(T, B, H), draw(B, H), draw(B, H)

    # PyTorch
    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(stm0[None], requires_grad=True)
    tc0 = torch.tensor(ltm0[None], requires_grad=True)
    ty, (th, tc) = lstm(tx, (th0, tc0))
    loss = ((ty * torch.from_numpy(dy)).sum() + (th[0] * torch.from_numpy(dstm)).sum()
            + (tc[0] * torch.from_numpy(dltm)).sum())
    loss.backward()
    want = cell_gradients_from_torch(lstm, H)
    want.update(x=tx.grad.numpy(), stm0=th0.grad[0].numpy(), ltm0=tc0.grad[0].numpy())

    # gatekit
    y, (stm, ltm), tape = cell.forward(x, (stm0, ltm0), keep=True)
    got = cell.backward(tape, dy, dstm, dltm)

    # forward: outputs and final states
    if dtype == np.float64:
        # |y|, |STM| < 1 and |LTM| a few units: an absolute 1e-10 is ~1e-10 relative
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=0, atol=tol)
        np.testing.assert_allclose(stm, th[0].detach().numpy(), rtol=0, atol=tol)
        np.testing.assert_allclose(ltm, tc[0].detach().numpy(), rtol=0, atol=tol)
    else:
        for name, a, b in (("y", y, ty), ("stm", stm, th[0]), ("ltm", ltm, tc[0])):
            assert rel_error(a, b.detach().numpy()) <= tol, name

    # backward: every parameter, the input and the initial state
    assert set(got) == set(want) == set(cell.params) | {"x", "stm0", "ltm0"}
    errors = {name: rel_error(got[name], want[name]) for name in want}
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"gradients off PyTorch's by more than {tol:g}: {bad}"
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == np.dtype(dtype), name


def test_conversion_helper_puts_each_block_where_torch_expects_it():
    # Independent of the helper's inverse: PyTorch's own LSTM equations, written out, from the
    # torch module's parameters, agree with gatekit's one-step output.
    D, H, B = 3, 2, 4
    cell = gatekit.Cell(D, H, "standard", dtype=np.float64, seed=3)
    lstm = torch_lstm_from_cell(cell)
    rng = np.random.default_rng(3)
    x, h0, c0 = rng.standard_normal((1, B, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    W_ih = lstm.weight_ih_l0.detach().numpy()
    W_hh = lstm.weight_hh_l0.detach().numpy()
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()
    gates = x[0] @ W_ih.T + h0 @ W_hh.T + b
    i, f, o = sigmoid(gates[:, :H]), sigmoid(gates[:, H:2 * H]), sigmoid(gates[:, 3 * H:])
    g = np.tanh(gates[:, 2 * H:3 * H])
    c1 = f * c0 + i * g
    h1 = o * np.tanh(c1)
    y, (stm, ltm) = cell(x, (h0, c0))
    np.testing.assert_allclose(y[0], h1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ltm, c1, rtol=0, atol=1e-12)
