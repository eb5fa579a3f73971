"""gatekit.interop: weights from and to PyTorch, Keras and ONNX.

Oracles: PyTorch's nn.LSTM / nn.LSTMCell (forward and autograd), Keras's LSTM layers (torch
backend), onnxruntime's LSTM operator, each when installed; and, always, each library's
equations written out here in NumPy from its documentation, run on hand-built weights in that
library's own layout.
"""
import numpy as np
import pytest

import gatekit
from gatekit import interop

from interop_support import (KERAS_WARNING, TOLERANCES, assert_relatively_close, keras,
                             keras_numpy, needs_keras, needs_ort, needs_torch, ort, run_layers,
                             torch, torch_dtype)
from support import rel_error, sigmoid

pytestmark = KERAS_WARNING

REFUSED_BY_ONNX = ["course", "literal", "nig", "nfg", "nog", "niaf", "noaf", "janet"]


# --- PyTorch: its equations on hand-built state dicts (no torch needed) --------------------------

def torch_step(w, x, h, c):
    """PyTorch's LSTM step from its documentation: gates i, f, g, o; two biases."""
    z = x @ w["weight_ih"].T + w["bias_ih"] + h @ w["weight_hh"].T + w["bias_hh"]
    i, f, g, o = np.split(z, 4, axis=1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def torch_equations(state_dict, x, num_layers, bidirectional, lengths=None):
    layers = []
    for layer in range(num_layers):
        directions = []
        for suffix in ("", "_reverse")[:2 if bidirectional else 1]:
            w = {k: np.asarray(state_dict[f"{k}_l{layer}{suffix}"], np.float64)
                 for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            w["H"] = w["weight_hh"].shape[1]
            directions.append(w)
        layers.append(directions)
    return run_layers(torch_step, x, layers, lengths, memories=2)


def random_torch_state(rng, D, H, num_layers, bidirectional, dtype=np.float64):
    state = {}
    for layer in range(num_layers):
        size = D if layer == 0 else (2 if bidirectional else 1) * H
        for suffix in ("", "_reverse")[:2 if bidirectional else 1]:
            state[f"weight_ih_l{layer}{suffix}"] = rng.uniform(-.5, .5, (4 * H, size))
            state[f"weight_hh_l{layer}{suffix}"] = rng.uniform(-.5, .5, (4 * H, H))
            state[f"bias_ih_l{layer}{suffix}"] = rng.uniform(-.5, .5, 4 * H)
            state[f"bias_hh_l{layer}{suffix}"] = rng.uniform(-.5, .5, 4 * H)
    return {k: v.astype(dtype) for k, v in state.items()}


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True), (3, False)])
def test_from_torch_state_dict_runs_pytorchs_equations(num_layers, bidirectional):
    rng = np.random.default_rng(0)
    D, H, T, B = 3, 4, 6, 3
    state = random_torch_state(rng, D, H, num_layers, bidirectional)
    lstm = interop.from_torch(state)
    assert isinstance(lstm, gatekit.LSTM) and lstm.dtype == np.float64
    assert (lstm.num_layers, lstm.bidirectional, lstm.hidden_size) == (num_layers,
                                                                     bidirectional, H)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([6, 2, 4])
    y, (h, c) = lstm(x, lengths=lengths)
    y_want, h_want, c_want = torch_equations(state, x, num_layers, bidirectional, lengths)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, h_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c, c_want, rtol=0, atol=1e-12)


def test_torch_round_trip_is_exact_and_puts_the_bias_in_bias_ih():
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, dtype=np.float64, seed=1)
    state = interop.to_torch(lstm)
    assert sorted(state) == sorted(f"{k}_l{layer}{s}" for layer in (0, 1)
                                   for s in ("", "_reverse")
                                   for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    assert all(np.all(state[k] == 0) for k in state if k.startswith("bias_hh"))
    # PyTorch's equations on the exported state compute what the gatekit layer computes
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    y_want, _, _ = torch_equations(state, x, 2, True)
    np.testing.assert_allclose(lstm(x)[0], y_want, rtol=0, atol=1e-12)
    back = interop.from_torch(state)
    for name, value in lstm.params.items():
        np.testing.assert_array_equal(back.params[name], value)


def test_from_torch_lstmcell_state_dict():
    rng = np.random.default_rng(2)
    D, H = 3, 5
    state = {k[:-3]: v for k, v in random_torch_state(rng, D, H, 1, False).items()}
    cell = interop.from_torch(state)
    assert isinstance(cell, gatekit.Cell) and cell.gate_names["use"] == "standard"
    x = rng.standard_normal((4, 2, D))
    y, (h, c) = cell(x)
    w = {**state, "H": H}
    y_want, h_want, c_want = run_layers(torch_step, x, [[w]], memories=2)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c, c_want[0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(interop.to_torch(cell)["weight_ih"], state["weight_ih"])


def test_from_torch_without_biases_and_in_other_precisions():
    rng = np.random.default_rng(3)
    state = {k: v for k, v in random_torch_state(rng, 2, 3, 2, False).items()
             if k.startswith("weight")}
    lstm = interop.from_torch(state)
    assert all(np.all(lstm.params[f"l{k}.b_{b}"] == 0) for k in (0, 1) for b in "ifnv")
    half = {k: v.astype(np.float16) for k, v in state.items()}
    with pytest.raises(TypeError, match="float16.*pass dtype="):
        interop.from_torch(half)
    assert interop.from_torch(half, dtype=np.float32).dtype == np.float32
    assert interop.from_torch({k: v.astype(np.float32) for k, v in state.items()}).dtype == \
        np.float32


@pytest.fixture
def torch_state():
    return random_torch_state(np.random.default_rng(4), 3, 4, 2, True)


@pytest.mark.parametrize("change, error, message", [
    (lambda s: s.pop("bias_hh_l1"), ValueError, "lacks 'bias_hh_l1'"),
    (lambda s: s.pop("weight_ih_l0_reverse"), ValueError, "lacks 'weight_ih_l0_reverse'"),
    (lambda s: s.update(extra=np.zeros(3)), ValueError, "unexpected keys 'extra'"),
    (lambda s: s.update(weight_hh_l1_reverse=np.zeros((16, 5))), ValueError,
     r"weight_hh_l1_reverse has shape \(16, 5\); expected \(16, 4\)"),
    (lambda s: s.update(weight_ih_l1=np.zeros((16, 4))), ValueError,
     r"weight_ih_l1 has shape \(16, 4\); expected \(16, 8\)"),
    (lambda s: s.update(bias_ih_l0=np.zeros(15)), ValueError, r"bias_ih_l0 has shape \(15,\)"),
    (lambda s: s.update(weight_hh_l0=np.zeros((12, 4))), ValueError, "weight_hh_l0 has shape"),
    (lambda s: s.update(weight_ih_l3=np.zeros((16, 8))), ValueError,
     "keys of layer l3 but none of layer l2 .no weight_ih_l2"),
    # a projection in one cell of four: the others lack theirs
    (lambda s: s.update(weight_hr_l0=np.zeros((2, 4))), ValueError,
     "lacks 'weight_hr_l0_reverse'"),
    (lambda s: s.update(weight_ih_l0=np.zeros((16, 3), np.int64)), TypeError,
     "weight_ih_l0 must hold floating-point numbers"),
])
def test_bad_torch_state_dicts_name_the_key(torch_state, change, error, message):
    change(torch_state)
    with pytest.raises(error, match=message):
        interop.from_torch(torch_state)


def test_torch_layer_count_and_direction_must_agree(torch_state):
    with pytest.raises(ValueError, match=r"num_layers=3, but the state dict holds layers up to "
                                         r"l1 \(2 layers\)"):
        interop.from_torch(torch_state, num_layers=3)
    with pytest.raises(ValueError, match="bidirectional=False, but the state dict has _reverse"):
        interop.from_torch(torch_state, bidirectional=False)
    lstm = interop.from_torch(torch_state, num_layers=2, bidirectional=True, batch_first=True,
                              dropout=0.3)
    assert lstm.batch_first and lstm.dropout == 0.3
    with pytest.raises(ValueError, match="none of the keys of torch.nn.LSTM"):
        interop.from_torch({"weight": np.zeros((4, 4))})
    cell_state = {"weight_ih": np.zeros((8, 3)), "weight_hh": np.zeros((8, 2))}
    with pytest.raises(ValueError, match="LSTMCell.*num_layers"):
        interop.from_torch(cell_state, num_layers=1)
    with pytest.raises(ValueError, match="lacks 'bias_hh'"):
        interop.from_torch({**cell_state, "bias_ih": np.zeros(8)})
    with pytest.raises(TypeError, match="from_torch takes"):
        interop.from_torch([np.zeros((8, 3))])


def test_only_the_standard_cell_goes_to_torch_and_keras():
    for model in (gatekit.Cell(2, 3, "peephole"), gatekit.LSTM(2, 3, variant="course"),
                  gatekit.Cell(2, 3, "standard", learn="coupled")):
        with pytest.raises(ValueError, match="PyTorch runs only the standard LSTM cell"):
            interop.to_torch(model)
        with pytest.raises(ValueError, match="Keras runs only the standard LSTM cell"):
            interop.to_keras(model)


# --- PyTorch itself ------------------------------------------------------------------------------

def torch_grads_by_gatekit_name(module, prefix_of):
    """The gradients of a torch module under gatekit's names: the layout written out here,
    independent of gatekit.interop (blocks i, f, g, o -> W_i, W_f, W_n, W_v; STM columns first;
    both bias gradients, which must agree, -> b_k)."""
    grads = {}
    params = dict(module.named_parameters())
    for key in params:
        if not key.startswith("weight_ih"):
            continue
        suffix = key[len("weight_ih"):]
        w_ih = params[key].grad.numpy()
        w_hh = params[f"weight_hh{suffix}"].grad.numpy()
        b_ih = params[f"bias_ih{suffix}"].grad.numpy()
        b_hh = params[f"bias_hh{suffix}"].grad.numpy()
        assert rel_error(b_ih, b_hh) < (1e-6 if b_ih.dtype == np.float32 else 1e-13)
        H = w_hh.shape[1]
        for k, block in enumerate("ifnv"):
            rows = slice(k * H, (k + 1) * H)
            grads[f"{prefix_of(suffix)}W_{block}"] = np.concatenate([w_hh[rows], w_ih[rows]], 1)
            grads[f"{prefix_of(suffix)}b_{block}"] = b_ih[rows]
    return grads


TORCH_CONFIGS = [
    pytest.param(dict(num_layers=1, bidirectional=False), False, False, id="1layer"),
    pytest.param(dict(num_layers=2, bidirectional=True), True, True, id="2layers-bidir-ragged"),
    pytest.param(dict(num_layers=3, bidirectional=False, batch_first=True), True, False,
                 id="3layers-batchfirst-ragged"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), False, True,
                 id="2layers-bidir-batchfirst"),
]


@needs_torch
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("config, ragged, with_state", TORCH_CONFIGS)
def test_converted_torch_lstm_matches_forward_and_gradients(config, ragged, with_state, dtype,
                                                            tol):
    T, B, D, H = 7, 4, 3, 5
    torch.manual_seed(0)
    tdtype = torch_dtype(dtype)
    module = torch.nn.LSTM(D, H, **config, dtype=tdtype)
    lstm = interop.from_torch(module)
    assert lstm.dtype == dtype and lstm.batch_first == config.get("batch_first", False)
    L = config["num_layers"] * (2 if config["bidirectional"] else 1)
    rng = np.random.default_rng(1)
    batch_first = config.get("batch_first", False)

    def draw(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x = draw(B, T, D) if batch_first else draw(T, B, D)
    lengths = np.array([5, 7, 1, 3]) if ragged else None
    h0, c0 = (draw(L, B, H), draw(L, B, H)) if with_state else (None, None)
    dy = draw(B, T, L // config["num_layers"] * H) if batch_first else \
        draw(T, B, L // config["num_layers"] * H)
    dh, dc = draw(L, B, H), draw(L, B, H)
    if ragged:          # padded outputs are zeros in both libraries: their dy must not matter
        for b, n in enumerate(lengths):
            (dy[b, n:] if batch_first else dy[n:, b])[...] = 1e3

    tx = torch.tensor(x, requires_grad=True)
    state = None
    if with_state:
        th0, tc0 = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
        state = (th0, tc0)
    inputs = tx
    if ragged:
        inputs = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths),
                                                         batch_first=batch_first,
                                                         enforce_sorted=False)
    ty, (th, tc) = module(inputs, state)
    if ragged:
        ty, _ = torch.nn.utils.rnn.pad_packed_sequence(ty, batch_first=batch_first,
                                                       total_length=T)
    loss = ((ty * torch.from_numpy(dy)).sum() + (th * torch.from_numpy(dh)).sum()
            + (tc * torch.from_numpy(dc)).sum())
    loss.backward()

    y, (h, c), tape = lstm.forward(x, None if not with_state else (h0, c0), lengths=lengths,
                                   keep=True)
    grads = lstm.backward(tape, dy, (dh, dc))

    assert_relatively_close(y, ty.detach().numpy(), tol, "y")
    assert_relatively_close(h, th.detach().numpy(), tol, "final stm")
    assert_relatively_close(c, tc.detach().numpy(), tol, "final ltm")
    want = torch_grads_by_gatekit_name(module, lambda suffix: suffix[1:] + ".")
    want["x"] = tx.grad.numpy()
    if with_state:
        want["stm0"], want["ltm0"] = th0.grad.numpy(), tc0.grad.numpy()
    assert set(want) - {"stm0", "ltm0"} == set(lstm.params) | {"x"}
    bad = {name: rel_error(grads[name], want[name]) for name in want
           if not rel_error(grads[name], want[name]) <= tol}
    assert not bad, f"gradients off PyTorch's by more than {tol:g}: {bad}"


@needs_torch
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
def test_converted_torch_lstmcell_matches_over_a_sequence(dtype, tol):
    T, B, D, H = 6, 3, 4, 5
    torch.manual_seed(1)
    tdtype = torch_dtype(dtype)
    module = torch.nn.LSTMCell(D, H, dtype=tdtype)
    cell = interop.from_torch(module)
    assert isinstance(cell, gatekit.Cell) and cell.dtype == dtype
    rng = np.random.default_rng(2)
    x, h0, c0 = (rng.standard_normal(s).astype(dtype) for s in ((T, B, D), (B, H), (B, H)))
    dy, dh, dc = (rng.standard_normal(s).astype(dtype) for s in ((T, B, H), (B, H), (B, H)))
    tx = torch.tensor(x, requires_grad=True)
    th0, tc0 = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    h, c, outputs = th0, tc0, []
    for t in range(T):
        h, c = module(tx[t], (h, c))
        outputs.append(h)
    ty = torch.stack(outputs)
    ((ty * torch.from_numpy(dy)).sum() + (h * torch.from_numpy(dh)).sum()
     + (c * torch.from_numpy(dc)).sum()).backward()
    y, (stm, ltm), tape = cell.forward(x, (h0, c0), keep=True)
    grads = cell.backward(tape, dy, dh, dc)
    assert_relatively_close(y, ty.detach().numpy(), tol, "y")
    assert_relatively_close(ltm, c.detach().numpy(), tol, "ltm")
    want = torch_grads_by_gatekit_name(module, lambda suffix: "")
    want.update(x=tx.grad.numpy(), stm0=th0.grad.numpy(), ltm0=tc0.grad.numpy())
    for name in want:
        assert_relatively_close(grads[name], want[name], tol, name)


@needs_torch
def test_to_torch_builds_and_fills_modules():
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, batch_first=True, dtype=np.float64, seed=3)
    x = np.random.default_rng(3).standard_normal((2, 5, 3))
    y, (h, c) = lstm(x)
    module = interop.to_torch(lstm, module=True)
    assert isinstance(module, torch.nn.LSTM) and module.batch_first and module.bidirectional
    ty, (th, tc) = module(torch.from_numpy(x))
    np.testing.assert_allclose(ty.detach().numpy(), y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tc.detach().numpy(), c, rtol=0, atol=1e-12)
    # the NumPy state dict loads into a module the user built
    fresh = torch.nn.LSTM(3, 4, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torch(lstm).items()})
    np.testing.assert_allclose(fresh(torch.from_numpy(x))[0].detach().numpy(), y, rtol=0,
                               atol=1e-12)
    # filling an existing float32 module
    target = torch.nn.LSTM(3, 4, 2, bidirectional=True, batch_first=True)
    assert interop.to_torch(lstm, module=target) is target
    assert rel_error(target(torch.from_numpy(x).float())[0].detach().numpy(), y) < 1e-5
    cell = gatekit.Cell(3, 4, dtype=np.float64, seed=4)
    tcell = interop.to_torch(cell, module=True)
    th, tc = tcell(torch.from_numpy(x[:, 0]))
    _, (stm, ltm) = cell(x[:, :1].transpose(1, 0, 2))
    np.testing.assert_allclose(tc.detach().numpy(), ltm, rtol=0, atol=1e-12)


@needs_torch
def test_torch_modules_that_do_not_fit_are_refused():
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True)
    with pytest.raises(ValueError, match="num_layers=3; the gatekit LSTM has num_layers=2"):
        interop.to_torch(lstm, module=torch.nn.LSTM(3, 4, 3, bidirectional=True))
    with pytest.raises(ValueError, match="no bias_ih_l0.*bias=False"):
        interop.to_torch(lstm, module=torch.nn.LSTM(3, 4, 2, bidirectional=True, bias=False))
    with pytest.raises(ValueError, match="proj_size=2"):
        interop.to_torch(lstm, module=torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2))
    with pytest.raises(TypeError, match="into a torch.nn.LSTMCell"):
        interop.to_torch(gatekit.Cell(3, 4), module=torch.nn.LSTM(3, 4))
    with pytest.raises(TypeError, match="got RNN"):
        interop.from_torch(torch.nn.RNN(3, 4))
    with pytest.raises(ValueError, match="num_layers=1 disagrees"):
        interop.from_torch(torch.nn.LSTM(3, 4, 2), num_layers=1)
    # a state dict of tensors converts like one of arrays
    module = torch.nn.LSTM(3, 4, 2, dtype=torch.float64)
    from_tensors = interop.from_torch(module.state_dict())
    from_module = interop.from_torch(module)
    for name in from_module.params:
        np.testing.assert_array_equal(from_tensors.params[name], from_module.params[name])


# --- Keras: its equations on hand-built weights ------------------------------------------------

def keras_step(w, x, h, c):
    """Keras's LSTM step: z = x kernel + h recurrent_kernel + bias, gates i, f, c, o."""
    z = x @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"]
    i, f, g, o = np.split(z, 4, axis=1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def random_keras_weights(rng, D, H):
    return [rng.uniform(-.5, .5, (D, 4 * H)), rng.uniform(-.5, .5, (H, 4 * H)),
            rng.uniform(-.5, .5, 4 * H)]


def keras_dict(weights):
    kernel, recurrent, *bias = weights
    H = recurrent.shape[0]
    return {"kernel": kernel, "recurrent_kernel": recurrent,
            "bias": bias[0] if bias else np.zeros(4 * H), "H": H}


def test_from_keras_runs_keras_equations_on_hand_built_weights():
    rng = np.random.default_rng(5)
    D, H, T, B = 3, 4, 5, 2
    weights = random_keras_weights(rng, D, H)
    cell = interop.from_keras(weights)
    assert isinstance(cell, gatekit.Cell)
    x = rng.standard_normal((T, B, D))
    y_want, _, c_want = run_layers(keras_step, x, [[keras_dict(weights)]], memories=2)
    y, (_, c) = cell(x)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c, c_want[0], rtol=0, atol=1e-12)
    # without a bias
    y_nobias, _ = interop.from_keras(weights[:2])(x)
    y_want, _, _ = run_layers(keras_step, x, [[keras_dict(weights[:2])]], memories=2)
    np.testing.assert_allclose(y_nobias, y_want, rtol=0, atol=1e-12)
    # a bidirectional layer's six arrays, and a stack of two (batch-major, as Keras)
    second = random_keras_weights(rng, 2 * H, H) + random_keras_weights(rng, 2 * H, H)
    first = weights + random_keras_weights(rng, D, H)
    lstm = interop.from_keras([first, second])
    assert lstm.bidirectional and lstm.num_layers == 2 and lstm.batch_first
    lengths = np.array([5, 3])
    y, (h, c) = lstm(x.transpose(1, 0, 2), lengths=lengths)
    top, h_want, _ = run_layers(keras_step, x, [[keras_dict(first[:3]), keras_dict(first[3:])],
                                                [keras_dict(second[:3]), keras_dict(second[3:])]],
                                lengths, memories=2)
    np.testing.assert_allclose(y, top.transpose(1, 0, 2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, h_want, rtol=0, atol=1e-12)


def test_keras_round_trip_is_exact():
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, seed=6)
    weights = interop.to_keras(lstm)
    assert [[w.shape for w in layer] for layer in weights] == [
        [(3, 16), (4, 16), (16,)] * 2, [(8, 16), (4, 16), (16,)] * 2]
    back = interop.from_keras(weights, batch_first=False)
    for name, value in lstm.params.items():
        np.testing.assert_array_equal(back.params[name], value)
    cell = gatekit.Cell(3, 4, seed=7)
    for name, value in interop.from_keras(interop.to_keras(cell)).params.items():
        np.testing.assert_array_equal(value, cell.params[name])


@pytest.mark.parametrize("weights, message", [
    (lambda w: [w[0], w[1].T, w[2]], r"recurrent_kernel has shape \(16, 4\)"),
    (lambda w: [w[0][:, :12], w[1], w[2]], r"the Keras layer kernel has shape \(3, 12\); "
                                           r"expected \(3, 16\)"),
    (lambda w: [w[0], w[1], w[2][:8]], r"bias has shape \(8,\)"),
    (lambda w: w + [w[0]], "has 4 arrays|has shape"),
    (lambda w: w + w[:2], "has 5 arrays"),
    (lambda w: [w, [w[0], w[1], w[2]]], r"layer 1 kernel has shape \(3, 16\); expected "
                                               r"\(4, 16\)"),
])
def test_bad_keras_weights_are_refused_by_name(weights, message):
    w = random_keras_weights(np.random.default_rng(8), 3, 4)
    with pytest.raises(ValueError, match=message):
        interop.from_keras(weights(w))


# --- Keras itself --------------------------------------------------------------------------------

@needs_keras
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
def test_from_keras_layer_matches_keras(dtype, tol):
    T, B, D, H = 6, 3, 4, 5
    rng = np.random.default_rng(9)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    keras.utils.set_random_seed(0)
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True,
                              bias_initializer="random_normal", dtype=np.dtype(dtype).name)
    y_k, h_k, c_k = keras_numpy(layer(x))
    lstm = interop.from_keras(layer)
    assert isinstance(lstm, gatekit.LSTM) and lstm.batch_first and lstm.dtype == dtype
    y, (h, c) = lstm(x)
    assert_relatively_close(y, y_k, tol, "y")
    assert_relatively_close(h[0], h_k, tol, "final stm")
    assert_relatively_close(c[0], c_k, tol, "final ltm")


@needs_keras
def test_keras_bidirectional_stack_with_mask_matches_ragged_gatekit():
    T, B, D, H = 6, 4, 3, 4
    rng = np.random.default_rng(10)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    lengths = np.array([6, 2, 5, 1])
    mask = np.arange(T)[None, :] < lengths[:, None]
    keras.utils.set_random_seed(1)
    first = keras.layers.Bidirectional(keras.layers.LSTM(
        H, return_sequences=True, bias_initializer="random_normal"))
    second = keras.layers.Bidirectional(keras.layers.LSTM(
        H, return_sequences=True, return_state=True, bias_initializer="random_normal"))
    y_k, h_f, c_f, h_b, c_b = keras_numpy(second(first(x, mask=mask), mask=mask))
    lstm = interop.from_keras([first, second])
    y, (h, c) = lstm(x, lengths=lengths)
    for b, n in enumerate(lengths):         # Keras leaves zeros at masked steps, as gatekit does
        assert_relatively_close(y[b, :n], y_k[b, :n], 1e-5, f"y of sequence {b}")
        assert np.all(y[b, n:] == 0)
    assert_relatively_close(h[2], h_f, 1e-5, "forward stm")
    assert_relatively_close(c[3], c_b, 1e-5, "backward ltm")
    # and back: gatekit weights into fresh Keras layers compute the same
    keras.utils.set_random_seed(2)
    again = gatekit.LSTM(D, H, bidirectional=True, batch_first=True, seed=11)
    layer = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True))
    layer.build((B, T, D))
    layer.set_weights(interop.to_keras(again)[0])
    assert_relatively_close(again(x, lengths=lengths)[0], keras_numpy([layer(x, mask=mask)])[0], 1e-5,
                 "to_keras")


@needs_keras
def test_keras_layers_gatekit_cannot_run_are_refused():
    x = np.zeros((1, 2, 3), np.float32)
    hard = keras.layers.LSTM(4, recurrent_activation="hard_sigmoid")
    hard(x)
    with pytest.raises(ValueError, match="recurrent_activation='hard_sigmoid'"):
        interop.from_keras(hard)
    relu = keras.layers.LSTMCell(4, activation="relu")
    relu.build((None, 3))
    with pytest.raises(ValueError, match="activation='relu'"):
        interop.from_keras(relu)
    backwards = keras.layers.LSTM(4, go_backwards=True)
    backwards(x)
    with pytest.raises(ValueError, match="go_backwards=True"):
        interop.from_keras(backwards)
    summed = keras.layers.Bidirectional(keras.layers.LSTM(4), merge_mode="sum")
    summed(x)
    with pytest.raises(ValueError, match="merge_mode='sum'"):
        interop.from_keras(summed)
    simple = keras.layers.SimpleRNN(4)
    simple(x)
    with pytest.raises(TypeError, match="Keras SimpleRNN"):
        interop.from_keras(simple)
    cell = keras.layers.LSTMCell(4)
    with pytest.raises(ValueError, match="has no weights yet"):
        interop.from_keras(cell)
    cell.build((None, 3))
    assert isinstance(interop.from_keras(cell), gatekit.Cell)


# --- ONNX: the operator's equations on hand-built weights --------------------------------------

def onnx_step(w, x, h, c):
    """ONNX LSTM (opset 14) with default activations: gates i, o, f, c; peepholes i, o, f;
    input_forget couples f = 1 - i."""
    z = x @ w["W"].T + h @ w["R"].T + w["B"][:4 * w["H"]] + w["B"][4 * w["H"]:]
    zi, zo, zf, zc = np.split(z, 4, axis=1)
    pi, po, pf = np.split(w["P"], 3)
    i = sigmoid(zi + pi * c)
    f = 1 - i if w["input_forget"] else sigmoid(zf + pf * c)
    c = f * c + i * np.tanh(zc)
    o = sigmoid(zo + po * c)
    return o * np.tanh(c), c


def onnx_equations(layers, x, lengths=None, input_forget=None):
    """A stack of ONNX LSTM nodes on (T, B, D) input; ``input_forget`` overrides the layers'."""
    stack = []
    for layer in layers:
        directions = []
        H = layer["R"].shape[2]
        for d in range(layer["W"].shape[0]):
            directions.append({
                "W": np.asarray(layer["W"][d], np.float64), "R": np.asarray(layer["R"][d],
                                                                            np.float64),
                "B": np.zeros(8 * H) if layer.get("B") is None else layer["B"][d],
                "P": np.zeros(3 * H) if layer.get("P") is None else layer["P"][d], "H": H,
                "input_forget": layer.get("input_forget", 0) if input_forget is None
                else input_forget})
        stack.append(directions)
    return run_layers(onnx_step, x, stack, lengths, memories=2)


def random_onnx_layer(rng, D, H, directions, peepholes, input_forget):
    layer = {"W": rng.uniform(-.5, .5, (directions, 4 * H, D)),
             "R": rng.uniform(-.5, .5, (directions, 4 * H, H)),
             "B": rng.uniform(-.5, .5, (directions, 8 * H)),
             "hidden_size": H, "input_forget": input_forget,
             "direction": "bidirectional" if directions == 2 else "forward"}
    if peepholes:
        layer["P"] = rng.uniform(-.5, .5, (directions, 3 * H))
    return layer


@pytest.mark.parametrize("peepholes, input_forget, variant", [
    (False, 0, "standard"), (True, 0, "peephole"), (True, 1, "cifg"), (False, 1, "standard")])
@pytest.mark.parametrize("directions", [1, 2])
def test_from_onnx_runs_the_operators_equations(peepholes, input_forget, variant, directions):
    rng = np.random.default_rng(12)
    D, H, T, B = 3, 4, 6, 3
    layer = random_onnx_layer(rng, D, H, directions, peepholes, input_forget)
    model = interop.from_onnx(layer)
    assert model.variant == variant
    assert model.gate_names["learn"] == ("coupled" if input_forget else
                                         "peephole" if peepholes else "standard")
    assert isinstance(model, gatekit.Cell if directions == 1 else gatekit.LSTM)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([6, 3, 1])
    if directions == 1:
        y, (h, c) = model(x)
        lengths = None
    else:
        y, (h, c) = model(x, lengths=lengths)
    y_want, h_want, c_want = onnx_equations([layer], x, lengths)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.reshape(c, c_want.shape), c_want, rtol=0, atol=1e-12)


def test_from_onnx_stacks_layers_and_reads_layout():
    rng = np.random.default_rng(13)
    D, H, T, B = 3, 4, 5, 2
    layers = [random_onnx_layer(rng, D, H, 2, True, 0),
              random_onnx_layer(rng, 2 * H, H, 2, True, 0)]
    for layer in layers:
        layer["layout"] = 1
    lstm = interop.from_onnx(layers)
    assert lstm.num_layers == 2 and lstm.batch_first and lstm.variant == "peephole"
    x = rng.standard_normal((T, B, D))
    y, _ = lstm(x.transpose(1, 0, 2))
    np.testing.assert_allclose(y, onnx_equations(layers, x)[0].transpose(1, 0, 2), rtol=0,
                               atol=1e-12)


MIXED = [("standard", {}), ("peephole", {}), ("cifg", {}),
         ("standard", {"forget": "peephole"}), ("standard", {"learn": "coupled"}),
         ("standard", {"use": "peephole"}), ("peephole", {"learn": "standard"})]


@pytest.mark.parametrize("variant, gates", MIXED, ids=lambda v: str(v))
def test_to_onnx_computes_what_gatekit_computes(variant, gates):
    rng = np.random.default_rng(14)
    D, H, T, B = 3, 4, 6, 3
    cell = gatekit.Cell(D, H, variant, **gates, dtype=np.float64, seed=15)
    for name in cell.params:
        if name.startswith("p_"):       # peepholes start at zero; make them matter
            cell.params[name] = rng.uniform(-1, 1, H)
    layer = interop.to_onnx(cell)
    coupled = cell.gate_names["learn"] == "coupled"
    assert layer["input_forget"] == int(coupled) and layer["direction"] == "forward"
    assert ("P" in layer) == any(n.startswith("p_") for n in cell.params)
    x = rng.standard_normal((T, B, D))
    y, (h, c) = cell(x)
    np.testing.assert_allclose(onnx_equations([layer], x)[0], y, rtol=0, atol=1e-12)
    if coupled:
        # the forget slot holds gatekit's forget weights, so a runtime that ignores
        # input_forget computes the same
        np.testing.assert_allclose(onnx_equations([layer], x, input_forget=0)[0], y, rtol=0,
                                   atol=1e-12)
    back = interop.from_onnx(layer)
    assert back.gate_names["learn"] == ("coupled" if coupled else
                                        "peephole" if "P" in layer else "standard")
    np.testing.assert_allclose(back(x)[0], y, rtol=0, atol=1e-12)


def test_to_onnx_of_a_bidirectional_stack():
    rng = np.random.default_rng(16)
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, variant="cifg", dtype=np.float64, seed=16)
    for name in lstm.params:
        if ".p_" in name:
            lstm.params[name] = rng.uniform(-1, 1, 4)
    layers = interop.to_onnx(lstm)
    assert [layer["W"].shape for layer in layers] == [(2, 16, 3), (2, 16, 8)]
    assert all(layer["direction"] == "bidirectional" and layer["input_forget"] == 1
               for layer in layers)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([2, 5, 4])
    y, (h, c) = lstm(x, lengths=lengths)
    y_want, h_want, c_want = onnx_equations(layers, x, lengths)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, h_want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", REFUSED_BY_ONNX)
def test_variants_onnx_cannot_express_are_refused(variant):
    with pytest.raises(ValueError, match=f"ONNX's LSTM operator cannot express .*'{variant}'"):
        interop.to_onnx(gatekit.Cell(2, 3, variant))


@pytest.mark.parametrize("change, message", [
    (dict(direction="reverse"), "direction='reverse'"),
    (dict(activations=["Sigmoid", "Tanh", "Relu"]), "activations="),
    (dict(clip=5.0), "clip=5.0"),
    (dict(input_forget=2), "input_forget=2"),
    (dict(hidden_size=5), "hidden_size=5"),
    (dict(P=np.zeros((1, 11))), r"the ONNX LSTM P has shape \(1, 11\); expected \(1, 12\)"),
    (dict(B=np.zeros((1, 16))), r"B has shape \(1, 16\)"),
    (dict(W=np.zeros((2, 16, 3))), r"W has shape \(2, 16, 3\); expected \(1, 16, 3\)"),
    (dict(initial_h=np.zeros((1, 1, 4))), "unknown keys 'initial_h'"),
])
def test_bad_onnx_layers_are_refused_by_name(change, message):
    layer = random_onnx_layer(np.random.default_rng(17), 3, 4, 1, True, 0)
    layer.update(change)
    with pytest.raises(ValueError, match=message):
        interop.from_onnx(layer)


def test_onnx_default_activations_are_accepted():
    layer = random_onnx_layer(np.random.default_rng(18), 3, 4, 2, False, 0)
    layer["activations"] = ["Sigmoid", "Tanh", "Tanh"] * 2
    assert interop.from_onnx(layer).bidirectional


# --- onnxruntime ---------------------------------------------------------------------------------

def ort_run(layers, x, lengths=None):
    """Run a stack of ONNX LSTM nodes (from to_onnx) in onnxruntime, float32, (T, B, D) in,
    (T, B, dirs * H) out."""
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []
    feed = {"X": x.astype(np.float32)}
    if lengths is not None:
        feed["L"] = np.asarray(lengths, np.int32)
    current = "X"
    for k, layer in enumerate(layers):
        names = []
        for key in ("W", "R", "B"):
            inits.append(numpy_helper.from_array(layer[key].astype(np.float32), f"{key}{k}"))
            names.append(f"{key}{k}")
        names += ["L" if lengths is not None else "", "", ""]
        if "P" in layer:
            inits.append(numpy_helper.from_array(layer["P"].astype(np.float32), f"P{k}"))
            names.append(f"P{k}")
        nodes.append(helper.make_node(
            "LSTM", [current] + names, [f"Y{k}", f"Yh{k}", f"Yc{k}"],
            hidden_size=layer["hidden_size"], direction=layer["direction"],
            input_forget=layer["input_forget"]))
        # (T, dirs, B, H) -> (T, B, dirs * H)
        nodes.append(helper.make_node("Transpose", [f"Y{k}"], [f"T{k}"], perm=[0, 2, 1, 3]))
        inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"S{k}"))
        nodes.append(helper.make_node("Reshape", [f"T{k}", f"S{k}"], [f"Z{k}"]))
        current = f"Z{k}"
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    if lengths is not None:
        inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, None))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
               for n in (current, f"Yh{len(layers) - 1}", f"Yc{len(layers) - 1}")]
    graph = helper.make_graph(nodes, "lstm", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@needs_ort
@pytest.mark.parametrize("variant", ["standard", "peephole", "cifg"])
def test_onnxruntime_runs_exported_layers_like_gatekit(variant):
    rng = np.random.default_rng(19)
    T, B, D, H = 7, 4, 3, 5
    lstm = gatekit.LSTM(D, H, 2, bidirectional=True, variant=variant, seed=19)
    for name in lstm.params:
        if ".p_" in name:
            lstm.params[name] = rng.uniform(-1, 1, H)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = np.array([7, 3, 1, 5])
    y, (h, c) = lstm(x, lengths=lengths)
    y_ort, h_ort, c_ort = ort_run(interop.to_onnx(lstm), x, lengths)
    assert_relatively_close(y, y_ort, 1e-5, "y")
    assert_relatively_close(h[2:], h_ort, 1e-5, "last layer's final stm")
    assert_relatively_close(c[2:], c_ort, 1e-5, "last layer's final ltm")


@needs_ort
@pytest.mark.parametrize("peepholes, input_forget", [(True, 1), (False, 1), (True, 0)])
def test_onnxruntime_weights_import_into_gatekit(peepholes, input_forget):
    rng = np.random.default_rng(20)
    D, H, T, B = 3, 4, 6, 2
    layer = random_onnx_layer(rng, D, H, 1, peepholes, input_forget)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    y_ort, _, c_ort = ort_run([layer], x)
    cell = interop.from_onnx(layer, dtype=np.float32)
    y, (_, c) = cell(x)
    assert_relatively_close(y, y_ort, 1e-5, "y")
    assert_relatively_close(c, c_ort[0], 1e-5, "ltm")
