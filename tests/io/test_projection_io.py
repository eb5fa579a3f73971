"""A projected STM (``proj_size``) across the library's borders: PyTorch's
``nn.LSTM(proj_size=P)`` both ways (its equations written out here on a state dict in its own
layout, always; the module itself, forward and autograd, when installed), save and load."""
import numpy as np
import pytest

import gatekit
from gatekit import interop

from interop_support import needs_torch, torch, torch_dtype
from support import rel_error, sigmoid


def random_projected_state(rng, D, H, P, num_layers, bidirectional):
    """A torch.nn.LSTM(proj_size=P) state dict in PyTorch's layout, drawn here."""
    directions = 2 if bidirectional else 1
    state = {}
    for layer in range(num_layers):
        size = D if layer == 0 else directions * P
        for suffix in ("", "_reverse")[:directions]:
            state[f"weight_ih_l{layer}{suffix}"] = rng.uniform(-.5, .5, (4 * H, size))
            state[f"weight_hh_l{layer}{suffix}"] = rng.uniform(-.5, .5, (4 * H, P))
            state[f"bias_ih_l{layer}{suffix}"] = rng.uniform(-.5, .5, 4 * H)
            state[f"bias_hh_l{layer}{suffix}"] = rng.uniform(-.5, .5, 4 * H)
            state[f"weight_hr_l{layer}{suffix}"] = rng.uniform(-.5, .5, (P, H))
    return state


def torch_projected_equations(state, x, num_layers, bidirectional, lengths):
    """PyTorch's documented LSTM with projection on its own layout: gates i, f, g, o stacked in
    weight_ih (4H, D) and weight_hh (4H, P); c' = f c + i g, h' = weight_hr (o tanh(c')). The
    reverse direction runs over each sequence reversed within its length. Returns y, h_n, c_n
    (zero initial state)."""
    T, B, _ = x.shape
    directions = 2 if bidirectional else 1
    layer_input, finals_h, finals_c = x, [], []
    for layer in range(num_layers):
        outputs = []
        for suffix in ("", "_reverse")[:directions]:
            key = f"_l{layer}{suffix}"
            W_ih, W_hh, W_hr = (state[f"{name}{key}"] for name in ("weight_ih", "weight_hh",
                                                                    "weight_hr"))
            bias = state[f"bias_ih{key}"] + state[f"bias_hh{key}"]
            H, P = W_hh.shape[0] // 4, W_hr.shape[0]
            y = np.zeros((T, B, P))
            h_n, c_n = np.zeros((B, P)), np.zeros((B, H))
            for b, n in enumerate(lengths):
                h, c = np.zeros(P), np.zeros(H)
                steps = range(n) if not suffix else reversed(range(n))
                for t in steps:
                    gates = W_ih @ layer_input[t, b] + W_hh @ h + bias
                    i, f = sigmoid(gates[:H]), sigmoid(gates[H:2 * H])
                    g, o = np.tanh(gates[2 * H:3 * H]), sigmoid(gates[3 * H:])
                    c = f * c + i * g
                    h = W_hr @ (o * np.tanh(c))
                    y[t, b] = h
                h_n[b], c_n[b] = h, c
            outputs.append(y)
            finals_h.append(h_n)
            finals_c.append(c_n)
        layer_input = np.concatenate(outputs, axis=2)
    return layer_input, np.stack(finals_h), np.stack(finals_c)


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True), (3, False)])
def test_from_torch_state_dict_runs_pytorchs_projected_equations(num_layers, bidirectional):
    rng = np.random.default_rng(0)
    D, H, P, T, B = 3, 5, 2, 6, 3
    state = random_projected_state(rng, D, H, P, num_layers, bidirectional)
    lstm = interop.from_torch(state)
    assert (lstm.proj_size, lstm.hidden_size, lstm.num_layers) == (P, H, num_layers)
    assert lstm.cells["l0"].params["W_hr"].shape == (P, H)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([6, 2, 4])
    y, (h, c) = lstm(x, lengths=lengths)
    y_want, h_want, c_want = torch_projected_equations(state, x, num_layers, bidirectional,
                                                       lengths)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, h_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c, c_want, rtol=0, atol=1e-12)
    # and back: to_torch gives PyTorch's layout, the two biases summed into bias_ih
    back = interop.to_torch(lstm)
    assert set(back) == set(state)
    for key, value in state.items():
        if key.startswith("bias"):
            continue
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    for key in (k for k in state if k.startswith("bias_ih")):
        np.testing.assert_allclose(back[key], state[key] + state[key.replace("ih", "hh")],
                                   rtol=0, atol=1e-15)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("weight_hr_l1"), "lacks 'weight_hr_l1'"),
    (lambda s: s.update(weight_hr_l1=np.zeros((3, 5))),
     r"weight_hr_l1 has shape \(3, 5\); expected \(2, 5\)"),
    (lambda s: s.update(weight_hh_l1=np.zeros((20, 5))),
     r"weight_hh_l1 has shape \(20, 5\); expected \(20, 2\)"),
    (lambda s: s.update(weight_ih_l1=np.zeros((20, 5))),
     r"weight_ih_l1 has shape \(20, 5\); expected \(20, 2\)"),
])
def test_bad_projected_state_dicts_name_the_key(change, message):
    state = random_projected_state(np.random.default_rng(1), 3, 5, 2, 2, False)
    change(state)
    with pytest.raises(ValueError, match=message):
        interop.from_torch(state)


def test_keras_and_onnx_refuse_a_projected_model():
    lstm = gatekit.LSTM(3, 5, proj_size=2)
    with pytest.raises(ValueError, match="Keras has no LSTM with a projected STM"):
        interop.to_keras(lstm)
    with pytest.raises(ValueError, match="ONNX has no LSTM with a projected STM"):
        interop.to_onnx(lstm)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_save_and_load_keep_the_projection(tmp_path, dtype, bidirectional):
    lstm = gatekit.LSTM(3, 5, 2, bidirectional=bidirectional, proj_size=2, dtype=dtype, seed=2)
    cell = gatekit.Cell(3, 5, proj_size=4, dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 2, 3)).astype(dtype)
    for model in (lstm, cell):
        path = tmp_path / "model.npz"
        gatekit.save(model, path)
        loaded = gatekit.load(path)
        assert loaded.proj_size == model.proj_size
        assert set(loaded.params) == set(model.params)
        for name, value in model.params.items():
            np.testing.assert_array_equal(loaded.params[name], value, err_msg=name)
        y, state = model(x)
        y_loaded, state_loaded = loaded(x)
        np.testing.assert_array_equal(y_loaded, y)
        for a, b in zip(state, state_loaded):
            np.testing.assert_array_equal(a, b)


def test_a_file_whose_projection_has_the_wrong_shape_is_refused(tmp_path):
    cell = gatekit.Cell(3, 5, proj_size=2, seed=5)
    path = tmp_path / "cell.npz"
    gatekit.save(cell, path)
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["param/W_hr"] = np.zeros((3, 5), np.float32)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"'W_hr' has shape \(3, 5\).*\(2, 5\)"):
        gatekit.load(path)


# --- PyTorch itself -----------------------------------------------------------------------------

def torch_grads_by_gatekit_name(module, prefix_of):
    """The gradients of a projected torch.nn.LSTM under gatekit's names, from PyTorch's layout
    written out here: blocks i, f, g, o -> W_i, W_f, W_n, W_v, the P STM columns first;
    weight_hr -> W_hr."""
    grads = {}
    params = dict(module.named_parameters())
    for key in params:
        if not key.startswith("weight_ih"):
            continue
        suffix = key[len("weight_ih"):]
        w_ih, w_hh = params[key].grad.numpy(), params[f"weight_hh{suffix}"].grad.numpy()
        b_ih, b_hh = (params[f"bias_{part}{suffix}"].grad.numpy() for part in ("ih", "hh"))
        assert rel_error(b_ih, b_hh) < (1e-6 if b_ih.dtype == np.float32 else 1e-13)
        H = w_hh.shape[0] // 4
        for k, block in enumerate("ifnv"):
            rows = slice(k * H, (k + 1) * H)
            grads[f"{prefix_of(suffix)}W_{block}"] = np.concatenate([w_hh[rows], w_ih[rows]], 1)
            grads[f"{prefix_of(suffix)}b_{block}"] = b_ih[rows]
        grads[f"{prefix_of(suffix)}W_hr"] = params[f"weight_hr{suffix}"].grad.numpy()
    return grads


def run_torch(module, x, h0, c0, lengths, dy, dh, dc):
    """PyTorch's outputs, final state and gradients (of x, h0, c0 and every parameter)."""
    T = x.shape[0]
    tx = torch.tensor(x, requires_grad=True)
    th0, tc0 = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    inputs = tx
    if lengths is not None:
        inputs = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths),
                                                         enforce_sorted=False)
    ty, (th, tc) = module(inputs, (th0, tc0))
    if lengths is not None:
        ty, _ = torch.nn.utils.rnn.pad_packed_sequence(ty, total_length=T)
    loss = ((ty * torch.from_numpy(dy)).sum() + (th * torch.from_numpy(dh)).sum()
            + (tc * torch.from_numpy(dc)).sum())
    module.zero_grad()
    loss.backward()
    grads = torch_grads_by_gatekit_name(module, lambda suffix: suffix[1:] + ".")
    grads.update(x=tx.grad.numpy(), stm0=th0.grad.numpy(), ltm0=tc0.grad.numpy())
    return (ty.detach().numpy(), th.detach().numpy(), tc.detach().numpy()), grads


@needs_torch
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
@pytest.mark.parametrize("num_layers, bidirectional, ragged", [
    (1, False, False), (2, True, True), (2, False, True)])
def test_converted_torch_projected_lstm_matches_forward_and_gradients(
        dtype, tol, num_layers, bidirectional, ragged):
    T, B, D, H, P = 7, 4, 3, 6, 4
    torch.manual_seed(0)
    tdtype = torch_dtype(dtype)
    module = torch.nn.LSTM(D, H, num_layers, bidirectional=bidirectional, proj_size=P,
                           dtype=tdtype)
    lstm = interop.from_torch(module)
    assert lstm.proj_size == P and lstm.dtype == dtype
    L = num_layers * (2 if bidirectional else 1)
    rng = np.random.default_rng(1)

    def draw(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, h0, c0 = draw(T, B, D), draw(L, B, P), draw(L, B, H)
    dy, dh, dc = draw(T, B, L // num_layers * P), draw(L, B, P), draw(L, B, H)
    lengths = np.array([5, 7, 1, 3]) if ragged else None
    if ragged:          # padded outputs are zeros in both libraries: their dy must not matter
        for b, n in enumerate(lengths):
            dy[n:, b] = 1e3
    (ty, th, tc), want = run_torch(module, x, h0, c0, lengths, dy, dh, dc)
    y, (h, c), tape = lstm.forward(x, (h0, c0), lengths=lengths, keep=True)
    grads = lstm.backward(tape, dy, (dh, dc))
    for name, got, expected in (("y", y, ty), ("h_n", h, th), ("c_n", c, tc)):
        assert rel_error(got, expected) <= tol, (name, rel_error(got, expected))
    assert set(want) == set(lstm.params) | {"x", "stm0", "ltm0"}
    bad = {name: rel_error(grads[name], want[name]) for name in want
           if not rel_error(grads[name], want[name]) <= tol}
    assert not bad, f"gradients off PyTorch's by more than {tol:g}: {bad}"


@needs_torch
@pytest.mark.parametrize("bidirectional", [False, True])
def test_to_torch_builds_the_projected_module_that_computes_the_same(bidirectional):
    lstm = gatekit.LSTM(3, 6, 2, bidirectional=bidirectional, proj_size=2, dtype=np.float64,
                        seed=6)
    module = interop.to_torch(lstm, module=True)
    assert module.proj_size == 2 and module.hidden_size == 6
    rng = np.random.default_rng(7)
    L = 2 * lstm.directions
    x, h0, c0 = (rng.standard_normal(s) for s in ((5, 3, 3), (L, 3, 2), (L, 3, 6)))
    dy = rng.standard_normal((5, 3, lstm.directions * 2))
    dh, dc = rng.standard_normal((L, 3, 2)), rng.standard_normal((L, 3, 6))
    (ty, th, tc), want = run_torch(module, x, h0, c0, None, dy, dh, dc)
    y, (h, c), tape = lstm.forward(x, (h0, c0), keep=True)
    grads = lstm.backward(tape, dy, (dh, dc))
    for got, expected in ((y, ty), (h, th), (c, tc)):
        assert rel_error(got, expected) <= 1e-10
    for name in want:
        assert rel_error(grads[name], want[name]) <= 1e-10, name
    # into a module of the same sizes; one without projection, or of another, is refused
    same = torch.nn.LSTM(3, 6, 2, bidirectional=bidirectional, proj_size=2,
                         dtype=torch.float64)
    interop.to_torch(lstm, module=same)
    for key, value in same.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), module.state_dict()[key].numpy())
    with pytest.raises(ValueError, match="proj_size=0; the gatekit LSTM has proj_size=2"):
        interop.to_torch(lstm, module=torch.nn.LSTM(3, 6, 2, bidirectional=bidirectional))
    with pytest.raises(ValueError, match="proj_size=3; the gatekit LSTM has proj_size=2"):
        interop.to_torch(lstm, module=torch.nn.LSTM(3, 6, 2, bidirectional=bidirectional,
                                                    proj_size=3))
    with pytest.raises(ValueError, match="LSTMCell has no projection"):
        interop.to_torch(gatekit.Cell(3, 6, proj_size=2), module=True)
