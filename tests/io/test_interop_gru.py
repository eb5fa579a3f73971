"""gatekit.interop for the GRU (variant ``gru``): PyTorch, Keras and ONNX weights both ways.

Oracles: each library's GRU equations written out here in NumPy from its documentation, run on
hand-built weights in that library's own layout (always); and, when installed, PyTorch's
nn.GRU / nn.GRUCell (forward and autograd), Keras' GRU layers (torch backend) and onnxruntime's
GRU operator; finite differences for a converted cell's gradients.
"""
import numpy as np
import pytest

import gatekit
from gatekit import interop
from gatekit.testing import gradcheck

from interop_support import (KERAS_WARNING, TOLERANCES, assert_relatively_close, keras,
                             keras_numpy, needs_keras, needs_ort, needs_torch, ort, run_layers,
                             torch, torch_dtype)
from support import rel_error, sigmoid, steps_for_a_team

pytestmark = KERAS_WARNING

GRU_GATES = {"forget": "standard", "learn": "reset", "remember": "standard", "use": "memory"}


def randomize(model, seed):
    """Every parameter drawn anew, b_hn included (a fresh cell's biases may be zeros, which
    would hide a bias put in the wrong place)."""
    rng = np.random.default_rng(seed)
    for name, array in model.params.items():
        array[...] = rng.uniform(-0.8, 0.8, array.shape)
    return model


# --- PyTorch: its equations on hand-built state dicts (no torch needed) --------------------------

def torch_gru_step(w, x, h):
    """torch.nn.GRU's step from its documentation: blocks r, z, n of weight_ih, weight_hh and
    two biases; the reset gate multiplies W_hn h + b_hn."""
    gi = x @ w["weight_ih"].T + w["bias_ih"]
    gh = h @ w["weight_hh"].T + w["bias_hh"]
    i_r, i_z, i_n = np.split(gi, 3, axis=1)
    h_r, h_z, h_n = np.split(gh, 3, axis=1)
    r, z = sigmoid(i_r + h_r), sigmoid(i_z + h_z)
    n = np.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def torch_directions(state, num_layers, bidirectional):
    layers = []
    for layer in range(num_layers):
        directions = []
        for suffix in ("", "_reverse")[:2 if bidirectional else 1]:
            w = {k: np.asarray(state[f"{k}_l{layer}{suffix}"], np.float64)
                 for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            w["H"] = w["weight_hh"].shape[1]
            directions.append(w)
        layers.append(directions)
    return layers


def random_torch_gru_state(rng, D, H, num_layers, bidirectional):
    state = {}
    for layer in range(num_layers):
        size = D if layer == 0 else (2 if bidirectional else 1) * H
        for suffix in ("", "_reverse")[:2 if bidirectional else 1]:
            state[f"weight_ih_l{layer}{suffix}"] = rng.uniform(-.5, .5, (3 * H, size))
            state[f"weight_hh_l{layer}{suffix}"] = rng.uniform(-.5, .5, (3 * H, H))
            state[f"bias_ih_l{layer}{suffix}"] = rng.uniform(-.5, .5, 3 * H)
            state[f"bias_hh_l{layer}{suffix}"] = rng.uniform(-.5, .5, 3 * H)
    return state


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_from_torch_gru_state_dict_runs_pytorchs_equations(num_layers, bidirectional):
    rng = np.random.default_rng(0)
    D, H, T, B = 3, 4, 6, 3
    state = random_torch_gru_state(rng, D, H, num_layers, bidirectional)
    gru = interop.from_torch(state)
    assert isinstance(gru, gatekit.LSTM) and gru.variant == "gru"
    assert gru.gate_names == GRU_GATES and gru.dtype == np.float64
    assert (gru.num_layers, gru.bidirectional, gru.hidden_size) == (num_layers, bidirectional, H)
    assert gru.params["l0.W_n"].shape == (H, D) and gru.params["l0.W_hn"].shape == (H, H)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([6, 2, 4])
    y, (stm, ltm) = gru(x, lengths=lengths)
    y_want, h_want = run_layers(torch_gru_step, x,
                                torch_directions(state, num_layers, bidirectional), lengths)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stm, h_want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(stm, ltm)       # one memory: STM_t = LTM_t


def test_torch_gru_round_trip_keeps_b_hn_apart_and_sums_the_other_biases():
    gru = randomize(gatekit.LSTM(3, 4, 2, bidirectional=True, variant="gru", dtype=np.float64),
                    1)
    state = interop.to_torch(gru)
    assert sorted(state) == sorted(f"{k}_l{layer}{s}" for layer in (0, 1)
                                   for s in ("", "_reverse")
                                   for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    assert state["weight_ih_l0"].shape == (12, 3) and state["weight_hh_l1"].shape == (12, 4)
    assert state["weight_ih_l1_reverse"].shape == (12, 8)
    H = 4
    for key in (k for k in state if k.startswith("bias_hh")):
        assert np.all(state[key][:2 * H] == 0)                   # r and z: summed into bias_ih
        cell = key.removeprefix("bias_hh_")                     # l0, l0_reverse, ...
        assert np.array_equal(state[key][2 * H:], gru.params[f"{cell}.b_hn"])
    # PyTorch's equations on the exported state compute what the gatekit layer computes
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    y_want, _ = run_layers(torch_gru_step, x, torch_directions(state, 2, True))
    np.testing.assert_allclose(gru(x)[0], y_want, rtol=0, atol=1e-12)
    back = interop.from_torch(state)
    assert back.variant == "gru"
    for name, value in gru.params.items():
        np.testing.assert_array_equal(back.params[name], value)


def test_from_torch_grucell_state_dict_and_without_biases():
    rng = np.random.default_rng(2)
    D, H = 3, 5
    state = {k[:-3]: v for k, v in random_torch_gru_state(rng, D, H, 1, False).items()}
    cell = interop.from_torch(state)
    assert isinstance(cell, gatekit.Cell) and cell.gate_names == GRU_GATES
    x = rng.standard_normal((4, 2, D))
    y, (stm, _) = cell(x)
    y_want, h_want = run_layers(torch_gru_step, x, [[{**state, "H": H}]])
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stm, h_want[0], rtol=0, atol=1e-12)
    exported = interop.to_torch(cell)
    assert sorted(exported) == ["bias_hh", "bias_ih", "weight_hh", "weight_ih"]
    np.testing.assert_array_equal(exported["weight_hh"], state["weight_hh"])
    bare = interop.from_torch({k: v for k, v in state.items() if k.startswith("weight")})
    assert all(np.all(bare.params[name] == 0) for name in ("b_f", "b_r", "b_n", "b_hn"))


def test_a_converted_gru_cell_passes_finite_differences():
    rng = np.random.default_rng(3)
    state = {k[:-3]: v for k, v in random_torch_gru_state(rng, 3, 4, 1, False).items()}
    cell = interop.from_torch(state)
    x = rng.standard_normal((6, 2, 3))
    h0 = rng.uniform(-1, 1, (2, 4))
    assert gradcheck(cell, x, (h0, h0.copy()))


@pytest.mark.parametrize("change, error, message", [
    (lambda s: s.pop("bias_hh_l0"), ValueError, "the torch.nn.GRU state dict lacks 'bias_hh_l0'"),
    (lambda s: s.update(weight_hh_l0=np.zeros((12, 5))), ValueError,
     r"weight_hh_l0 has shape \(12, 5\); expected \(4 \* hidden_size, hidden_size\) for an "
     r"LSTM or \(3 \* hidden_size, hidden_size\) for a GRU"),
    (lambda s: s.update(weight_ih_l1=np.zeros((12, 5))), ValueError,
     r"weight_ih_l1 has shape \(12, 5\); expected \(12, 4\) \(3 \* hidden_size"),
    (lambda s: s.update(bias_hh_l1=np.zeros(16)), ValueError,
     r"bias_hh_l1 has shape \(16,\); expected \(12,\) \(3 \* hidden_size\)"),
])
def test_bad_torch_gru_state_dicts_name_the_key(change, error, message):
    state = random_torch_gru_state(np.random.default_rng(4), 3, 4, 2, False)
    change(state)
    with pytest.raises(error, match=message):
        interop.from_torch(state)


@pytest.mark.parametrize("variant, gates", [("mgu", {}), ("standard", {"use": "memory"}),
                                            ("gru", {"use": "standard"}), ("janet", {})])
def test_only_the_standard_cell_and_the_gru_convert_to_torch_and_keras(variant, gates):
    if variant not in gatekit.variants():
        pytest.skip(f"variant {variant!r} is not registered")
    model = gatekit.Cell(3, 3, variant, **gates)
    with pytest.raises(ValueError, match="PyTorch runs only the standard LSTM cell and the GRU"):
        interop.to_torch(model)
    with pytest.raises(ValueError, match="Keras runs only the standard LSTM cell and the GRU"):
        interop.to_keras(model)


# --- PyTorch itself ------------------------------------------------------------------------------

def torch_gru_grads_by_gatekit_name(module, prefix_of):
    """The gradients of a torch GRU module under gatekit's names, from the layout written out
    here, independent of gatekit.interop: rows r, z, n; z is gatekit's forget block f; the
    summed biases of r and z take either gradient (they must agree); n's input rows are W_n,
    b_n and its recurrent rows W_hn, b_hn."""
    grads = {}
    params = dict(module.named_parameters())
    for key in params:
        if not key.startswith("weight_ih"):
            continue
        suffix = key[len("weight_ih"):]
        w_ih, w_hh = (params[f"{k}{suffix}"].grad.numpy() for k in ("weight_ih", "weight_hh"))
        b_ih, b_hh = (params[f"{k}{suffix}"].grad.numpy() for k in ("bias_ih", "bias_hh"))
        H = w_hh.shape[1]
        r, z, n = (slice(k * H, (k + 1) * H) for k in range(3))
        assert rel_error(b_ih[:2 * H], b_hh[:2 * H]) < (1e-6 if b_ih.dtype == np.float32
                                                        else 1e-13)
        prefix = prefix_of(suffix)
        grads.update({f"{prefix}W_r": np.concatenate([w_hh[r], w_ih[r]], 1),
                      f"{prefix}b_r": b_ih[r],
                      f"{prefix}W_f": np.concatenate([w_hh[z], w_ih[z]], 1),
                      f"{prefix}b_f": b_ih[z],
                      f"{prefix}W_n": w_ih[n], f"{prefix}b_n": b_ih[n],
                      f"{prefix}W_hn": w_hh[n], f"{prefix}b_hn": b_hh[n]})
    return grads


TORCH_CONFIGS = [
    pytest.param(dict(num_layers=1, bidirectional=False), False, True, 1, id="1layer-state"),
    pytest.param(dict(num_layers=2, bidirectional=False), True, False, 2,
                 id="2layers-ragged-2threads"),
    pytest.param(dict(num_layers=2, bidirectional=True), True, True, 3,
                 id="2layers-bidir-ragged-state-3threads"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), False, True, None,
                 id="2layers-bidir-batchfirst-state"),
    pytest.param(dict(num_layers=1, bidirectional=False, batch_first=True), True, False, 2,
                 id="1layer-batchfirst-ragged-2threads"),
]


@needs_torch
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("config, ragged, with_state, threads", TORCH_CONFIGS)
def test_converted_torch_gru_matches_forward_and_every_gradient(config, ragged, with_state,
                                                                threads, dtype, tol):
    T, B, D, H = 7, 4, 3, 5
    torch.manual_seed(0)
    module = torch.nn.GRU(D, H, **config, dtype=torch_dtype(dtype))
    gru = interop.from_torch(module)
    assert gru.variant == "gru" and gru.dtype == dtype
    gru = _with_threads(gru, threads)
    L = config["num_layers"] * (2 if config["bidirectional"] else 1)
    width = L // config["num_layers"] * H
    rng = np.random.default_rng(1)
    batch_first = config.get("batch_first", False)

    def draw(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x = draw(B, T, D) if batch_first else draw(T, B, D)
    lengths = np.array([5, 7, 1, 3]) if ragged else None
    h0 = draw(L, B, H) if with_state else None
    dy = draw(B, T, width) if batch_first else draw(T, B, width)
    dh = draw(L, B, H)
    if ragged:          # padded outputs are zeros in both libraries: their dy must not matter
        for b, n in enumerate(lengths):
            (dy[b, n:] if batch_first else dy[n:, b])[...] = 1e3

    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True) if with_state else None
    inputs = tx
    if ragged:
        inputs = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths),
                                                         batch_first=batch_first,
                                                         enforce_sorted=False)
    ty, th = module(inputs, th0)
    if ragged:
        ty, _ = torch.nn.utils.rnn.pad_packed_sequence(ty, batch_first=batch_first,
                                                       total_length=T)
    ((ty * torch.from_numpy(dy)).sum() + (th * torch.from_numpy(dh)).sum()).backward()

    # One memory: the state is (h0, h0), and the final state (h, h); the loss reads h once.
    state = (h0, h0.copy()) if with_state else None
    y, (stm, ltm), tape = gru.forward(x, state, lengths=lengths, keep=True)
    grads = gru.backward(tape, dy, (dh, np.zeros_like(dh)))

    assert_relatively_close(y, ty.detach().numpy(), tol, "y")
    assert_relatively_close(stm, th.detach().numpy(), tol, "final stm")
    np.testing.assert_array_equal(ltm, stm)
    want = torch_gru_grads_by_gatekit_name(module, lambda suffix: suffix[1:] + ".")
    want["x"] = tx.grad.numpy()
    assert set(want) == set(gru.params) | {"x"}
    if with_state:
        want["h0"] = th0.grad.numpy()
        grads["h0"] = grads["stm0"] + grads["ltm0"]
    bad = {name: rel_error(grads[name], want[name]) for name in want
           if not rel_error(grads[name], want[name]) <= tol}
    assert not bad, f"gradients off PyTorch's by more than {tol:g}: {bad}"


def _with_threads(model, threads):
    """``model`` rebuilt with ``threads`` (the same parameters)."""
    if threads is None:
        return model
    again = gatekit.LSTM(model.input_size, model.hidden_size, model.num_layers,
                         bidirectional=model.bidirectional, batch_first=model.batch_first,
                         variant=model.variant, dtype=model.dtype, threads=threads)
    for name, value in model.params.items():
        again.params[name] = value
    return again


@needs_torch
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_converted_torch_gru_on_a_team_of_threads_matches_pytorch(threads):
    # Large enough a call that the compiled loop splits the units between `threads` threads.
    D, H, B = 24, 40, 73
    torch.manual_seed(2)
    module = torch.nn.GRU(D, H, dtype=torch.float64)
    gru = _with_threads(interop.from_torch(module), threads)
    T = steps_for_a_team(gru.cells["l0"], B, threads, multiple=1)
    assert T is not None, f"no call of {B} sequences runs on {threads} threads"
    rng = np.random.default_rng(3)
    x, h0 = rng.standard_normal((T, B, D)), rng.standard_normal((1, B, H))
    dy, dh = rng.standard_normal((T, B, H)), rng.standard_normal((1, B, H))
    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    ty, th = module(tx, th0)
    ((ty * torch.from_numpy(dy)).sum() + (th * torch.from_numpy(dh)).sum()).backward()
    y, (stm, _), tape = gru.forward(x, (h0, h0.copy()), keep=True)
    grads = gru.backward(tape, dy, (dh, np.zeros_like(dh)))
    assert_relatively_close(y, ty.detach().numpy(), 1e-10, "y")
    assert_relatively_close(stm, th.detach().numpy(), 1e-10, "final stm")
    want = torch_gru_grads_by_gatekit_name(module, lambda suffix: suffix[1:] + ".")
    want.update(x=tx.grad.numpy(), h0=th0.grad.numpy())
    grads["h0"] = grads["stm0"] + grads["ltm0"]
    for name in want:
        assert_relatively_close(grads[name], want[name], 1e-10, name)


@needs_torch
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
def test_converted_torch_grucell_matches_over_a_sequence(dtype, tol):
    T, B, D, H = 6, 3, 4, 5
    torch.manual_seed(1)
    module = torch.nn.GRUCell(D, H, dtype=torch_dtype(dtype))
    cell = interop.from_torch(module)
    assert isinstance(cell, gatekit.Cell) and cell.variant == "gru" and cell.dtype == dtype
    rng = np.random.default_rng(2)
    x, h0 = (rng.standard_normal(s).astype(dtype) for s in ((T, B, D), (B, H)))
    dy, dh = (rng.standard_normal(s).astype(dtype) for s in ((T, B, H), (B, H)))
    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True)
    h, outputs = th0, []
    for t in range(T):
        h = module(tx[t], h)
        outputs.append(h)
    ty = torch.stack(outputs)
    ((ty * torch.from_numpy(dy)).sum() + (h * torch.from_numpy(dh)).sum()).backward()
    y, (stm, ltm), tape = cell.forward(x, (h0, h0.copy()), keep=True)
    grads = cell.backward(tape, dy, dh)
    assert_relatively_close(y, ty.detach().numpy(), tol, "y")
    assert_relatively_close(stm, h.detach().numpy(), tol, "stm")
    want = torch_gru_grads_by_gatekit_name(module, lambda suffix: "")
    want.update(x=tx.grad.numpy(), h0=th0.grad.numpy())
    grads["h0"] = grads["stm0"] + grads["ltm0"]
    for name in want:
        assert_relatively_close(grads[name], want[name], tol, name)


@needs_torch
def test_to_torch_builds_and_fills_gru_modules_and_round_trips():
    gru = randomize(gatekit.LSTM(3, 4, 2, bidirectional=True, batch_first=True, variant="gru",
                                 dtype=np.float64), 3)
    x = np.random.default_rng(3).standard_normal((2, 5, 3))
    y, (h, _) = gru(x)
    module = interop.to_torch(gru, module=True)
    assert isinstance(module, torch.nn.GRU) and module.batch_first and module.bidirectional
    assert module.weight_hh_l0.dtype == torch.float64
    ty, th = module(torch.from_numpy(x))
    np.testing.assert_allclose(ty.detach().numpy(), y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(th.detach().numpy(), h, rtol=0, atol=1e-12)
    # gatekit -> torch -> gatekit gives the same parameters, bit for bit
    back = interop.from_torch(module)
    assert back.variant == "gru" and back.batch_first and back.bidirectional
    for name, value in gru.params.items():
        np.testing.assert_array_equal(back.params[name], value)
    # the NumPy state dict loads into a module the user built
    fresh = torch.nn.GRU(3, 4, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torch(gru).items()})
    np.testing.assert_allclose(fresh(torch.from_numpy(x))[0].detach().numpy(), y, rtol=0,
                               atol=1e-12)
    # filling an existing float32 module
    target = torch.nn.GRU(3, 4, 2, bidirectional=True, batch_first=True)
    assert interop.to_torch(gru, module=target) is target
    assert rel_error(target(torch.from_numpy(x).float())[0].detach().numpy(), y) < 1e-5
    # a cell becomes a GRUCell
    cell = randomize(gatekit.Cell(3, 4, "gru", dtype=np.float64), 4)
    tcell = interop.to_torch(cell, module=True)
    assert isinstance(tcell, torch.nn.GRUCell)
    th = tcell(torch.from_numpy(x[:, 0]))
    _, (stm, _) = cell(x[:, :1].transpose(1, 0, 2))
    np.testing.assert_allclose(th.detach().numpy(), stm, rtol=0, atol=1e-12)


@needs_torch
def test_torch_gru_modules_that_do_not_fit_are_refused():
    gru = gatekit.LSTM(3, 4, 2, bidirectional=True, variant="gru")
    with pytest.raises(TypeError, match="variant 'gru' converts into a torch.nn.GRU; got LSTM"):
        interop.to_torch(gru, module=torch.nn.LSTM(3, 4, 2, bidirectional=True))
    with pytest.raises(TypeError, match="converts into a torch.nn.LSTM; got GRU"):
        interop.to_torch(gatekit.LSTM(3, 4), module=torch.nn.GRU(3, 4))
    with pytest.raises(ValueError, match="hidden_size=5; the gatekit LSTM has hidden_size=4"):
        interop.to_torch(gru, module=torch.nn.GRU(3, 5, 2, bidirectional=True))
    with pytest.raises(ValueError, match="no bias_ih_l0.*bias=False"):
        interop.to_torch(gru, module=torch.nn.GRU(3, 4, 2, bidirectional=True, bias=False))
    with pytest.raises(TypeError, match="into a torch.nn.GRUCell; got LSTMCell"):
        interop.to_torch(gatekit.Cell(3, 4, "gru"), module=torch.nn.LSTMCell(3, 4))
    with pytest.raises(ValueError, match="num_layers=1 disagrees"):
        interop.from_torch(torch.nn.GRU(3, 4, 2), num_layers=1)
    with pytest.raises(ValueError, match="a torch.nn.GRUCell converts to a gatekit.Cell"):
        interop.from_torch(torch.nn.GRUCell(3, 4), batch_first=True)
    with pytest.raises(TypeError, match="got RNN"):
        interop.from_torch(torch.nn.RNN(3, 4))
    # a GRU built without biases converts, with zero biases
    bare = interop.from_torch(torch.nn.GRU(3, 4, bias=False, dtype=torch.float64))
    assert all(np.all(bare.params[f"l0.{b}"] == 0) for b in ("b_f", "b_r", "b_n", "b_hn"))


# --- Keras: its equations on hand-built weights --------------------------------------------------

def keras_gru_step(w, x, h):
    """Keras' GRU step with reset_after=True: blocks z, r, h of kernel and recurrent_kernel,
    bias (2, 3H) = input bias, recurrent bias; h_t = z ⊙ h_{t-1} + (1 - z) ⊙ hh."""
    x_z, x_r, x_h = np.split(x @ w["kernel"] + w["bias"][0], 3, axis=1)
    h_z, h_r, h_h = np.split(h @ w["recurrent_kernel"] + w["bias"][1], 3, axis=1)
    z, r = sigmoid(x_z + h_z), sigmoid(x_r + h_r)
    hh = np.tanh(x_h + r * h_h)
    return z * h + (1 - z) * hh


def random_keras_gru_weights(rng, D, H):
    return [rng.uniform(-.5, .5, (D, 3 * H)), rng.uniform(-.5, .5, (H, 3 * H)),
            rng.uniform(-.5, .5, (2, 3 * H))]


def keras_dict(weights):
    kernel, recurrent, *bias = weights
    H = recurrent.shape[0]
    return {"kernel": kernel, "recurrent_kernel": recurrent,
            "bias": bias[0] if bias else np.zeros((2, 3 * H)), "H": H}


def test_from_keras_gru_runs_keras_equations_on_hand_built_weights():
    rng = np.random.default_rng(5)
    D, H, T, B = 3, 4, 5, 2
    weights = random_keras_gru_weights(rng, D, H)
    cell = interop.from_keras(weights)
    assert isinstance(cell, gatekit.Cell) and cell.variant == "gru"
    x = rng.standard_normal((T, B, D))
    y_want, h_want = run_layers(keras_gru_step, x, [[keras_dict(weights)]])
    y, (stm, _) = cell(x)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stm, h_want[0], rtol=0, atol=1e-12)
    y_nobias, _ = interop.from_keras(weights[:2])(x)
    np.testing.assert_allclose(y_nobias, run_layers(keras_gru_step, x,
                                                    [[keras_dict(weights[:2])]])[0],
                               rtol=0, atol=1e-12)
    # a bidirectional stack of two (batch-major, as Keras), ragged
    first = weights + random_keras_gru_weights(rng, D, H)
    second = random_keras_gru_weights(rng, 2 * H, H) + random_keras_gru_weights(rng, 2 * H, H)
    gru = interop.from_keras([first, second])
    assert gru.bidirectional and gru.num_layers == 2 and gru.batch_first and gru.variant == "gru"
    lengths = np.array([5, 3])
    y, (stm, _) = gru(x.transpose(1, 0, 2), lengths=lengths)
    y_want, h_want = run_layers(keras_gru_step, x,
                                [[keras_dict(first[:3]), keras_dict(first[3:])],
                                 [keras_dict(second[:3]), keras_dict(second[3:])]], lengths)
    np.testing.assert_allclose(y, y_want.transpose(1, 0, 2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stm, h_want, rtol=0, atol=1e-12)


def test_keras_gru_round_trip_is_exact():
    gru = randomize(gatekit.LSTM(3, 4, 2, bidirectional=True, variant="gru"), 6)
    weights = interop.to_keras(gru)
    assert [[w.shape for w in layer] for layer in weights] == [
        [(3, 12), (4, 12), (2, 12)] * 2, [(8, 12), (4, 12), (2, 12)] * 2]
    assert all(np.all(layer[2][1, :8] == 0) for layer in weights)   # z, r: whole bias in row 0
    back = interop.from_keras(weights, batch_first=False)
    assert back.variant == "gru"
    for name, value in gru.params.items():
        np.testing.assert_array_equal(back.params[name], value)
    cell = randomize(gatekit.Cell(3, 4, "gru"), 7)
    for name, value in interop.from_keras(interop.to_keras(cell)).params.items():
        np.testing.assert_array_equal(value, cell.params[name])


@pytest.mark.parametrize("weights, message", [
    (lambda w: [w[0], w[1], w[2][0]], r"bias has shape \(12,\), a GRU with reset_after=False"),
    (lambda w: [w[0], w[1], w[2][:, :8]], r"bias has shape \(2, 8\); expected \(2, 12\)"),
    (lambda w: [w[0][:, :8], w[1], w[2]], r"kernel has shape \(3, 8\); expected \(3, 12\)"),
    (lambda w: [w[0], w[1][:, :10], w[2]], r"recurrent_kernel has shape \(4, 10\)"),
])
def test_bad_keras_gru_weights_are_refused_by_name(weights, message):
    w = random_keras_gru_weights(np.random.default_rng(8), 3, 4)
    with pytest.raises(ValueError, match=message):
        interop.from_keras(weights(w))


@needs_keras
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
def test_from_keras_gru_layer_matches_keras(dtype, tol):
    T, B, D, H = 6, 3, 4, 5
    rng = np.random.default_rng(9)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    keras.utils.set_random_seed(0)
    layer = keras.layers.GRU(H, return_sequences=True, return_state=True,
                             bias_initializer="random_normal", dtype=np.dtype(dtype).name)
    y_k, h_k = keras_numpy(layer(x))
    gru = interop.from_keras(layer)
    assert isinstance(gru, gatekit.LSTM) and gru.variant == "gru" and gru.dtype == dtype
    y, (stm, _) = gru(x)
    assert_relatively_close(y, y_k, tol, "y")
    assert_relatively_close(stm[0], h_k, tol, "final stm")


@needs_keras
def test_keras_bidirectional_gru_stack_with_mask_both_ways():
    T, B, D, H = 6, 4, 3, 4
    rng = np.random.default_rng(10)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    lengths = np.array([6, 2, 5, 1])
    mask = np.arange(T)[None, :] < lengths[:, None]
    keras.utils.set_random_seed(1)
    first = keras.layers.Bidirectional(keras.layers.GRU(
        H, return_sequences=True, bias_initializer="random_normal"))
    second = keras.layers.Bidirectional(keras.layers.GRU(
        H, return_sequences=True, return_state=True, bias_initializer="random_normal"))
    y_k, h_f, h_b = keras_numpy(second(first(x, mask=mask), mask=mask))
    gru = interop.from_keras([first, second])
    assert gru.variant == "gru" and gru.num_layers == 2
    y, (stm, _) = gru(x, lengths=lengths)
    for b, n in enumerate(lengths):
        assert_relatively_close(y[b, :n], y_k[b, :n], 1e-5, f"y of sequence {b}")
        assert np.all(y[b, n:] == 0)
    assert_relatively_close(stm[2], h_f, 1e-5, "forward stm")
    assert_relatively_close(stm[3], h_b, 1e-5, "backward stm")
    # and back: gatekit weights into fresh Keras layers compute the same
    again = randomize(gatekit.LSTM(D, H, bidirectional=True, batch_first=True, variant="gru"),
                      11)
    layer = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True))
    layer.build((B, T, D))
    layer.set_weights(interop.to_keras(again)[0])
    assert_relatively_close(again(x, lengths=lengths)[0],
                            keras_numpy([layer(x, mask=mask)])[0], 1e-5, "to_keras")


@needs_keras
def test_keras_grus_gatekit_cannot_run_are_refused():
    x = np.zeros((1, 2, 3), np.float32)
    before = keras.layers.GRU(4, reset_after=False)
    before(x)
    with pytest.raises(ValueError, match="reset_after=False"):
        interop.from_keras(before)
    hard = keras.layers.GRU(4, recurrent_activation="hard_sigmoid")
    hard(x)
    with pytest.raises(ValueError, match="recurrent_activation='hard_sigmoid'.*GRU"):
        interop.from_keras(hard)
    relu = keras.layers.GRUCell(4, activation="relu")
    relu.build((None, 3))
    with pytest.raises(ValueError, match="activation='relu'"):
        interop.from_keras(relu)
    simple = keras.layers.SimpleRNN(4)
    simple(x)
    with pytest.raises(TypeError, match="Keras SimpleRNN"):
        interop.from_keras(simple)
    cell = keras.layers.GRUCell(4)
    cell.build((None, 3))
    converted = interop.from_keras(cell)
    assert isinstance(converted, gatekit.Cell) and converted.variant == "gru"


# --- ONNX: the operator's equations on hand-built weights ----------------------------------------

def onnx_gru_step(w, x, h):
    """ONNX GRU (opset 14) with linear_before_reset=1 and the default activations: blocks z, r,
    h of W, R; B = [Wb, Rb]; ht = tanh(x Wh^T + r ⊙ (h Rh^T + Rbh) + Wbh)."""
    H = w["H"]
    Wb, Rb = w["B"][:3 * H], w["B"][3 * H:]
    x_z, x_r, x_h = np.split(x @ w["W"].T + Wb, 3, axis=1)
    h_z, h_r, h_h = np.split(h @ w["R"].T + Rb, 3, axis=1)
    z, r = sigmoid(x_z + h_z), sigmoid(x_r + h_r)
    candidate = np.tanh(x_h + r * h_h)
    return (1 - z) * candidate + z * h


def onnx_directions(layers):
    found = []
    for layer in layers:
        H = layer["R"].shape[2]
        found.append([{"W": np.asarray(layer["W"][d], np.float64),
                       "R": np.asarray(layer["R"][d], np.float64),
                       "B": np.zeros(6 * H) if layer.get("B") is None else layer["B"][d],
                       "H": H} for d in range(layer["W"].shape[0])])
    return found


def random_onnx_gru(rng, D, H, directions):
    return {"W": rng.uniform(-.5, .5, (directions, 3 * H, D)),
            "R": rng.uniform(-.5, .5, (directions, 3 * H, H)),
            "B": rng.uniform(-.5, .5, (directions, 6 * H)),
            "hidden_size": H, "linear_before_reset": 1,
            "direction": "bidirectional" if directions == 2 else "forward"}


@pytest.mark.parametrize("directions", [1, 2])
def test_from_onnx_gru_runs_the_operators_equations(directions):
    rng = np.random.default_rng(12)
    D, H, T, B = 3, 4, 6, 3
    layer = random_onnx_gru(rng, D, H, directions)
    model = interop.from_onnx(layer)
    assert model.variant == "gru"
    assert isinstance(model, gatekit.Cell if directions == 1 else gatekit.LSTM)
    x = rng.standard_normal((T, B, D))
    lengths = None if directions == 1 else np.array([6, 3, 1])
    y, (stm, _) = model(x, lengths=lengths)
    y_want, h_want = run_layers(onnx_gru_step, x, onnx_directions([layer]), lengths)
    np.testing.assert_allclose(y, y_want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.reshape(stm, h_want.shape), h_want, rtol=0, atol=1e-12)


def test_to_onnx_of_a_gru_stack_and_back():
    rng = np.random.default_rng(16)
    gru = randomize(gatekit.LSTM(3, 4, 2, bidirectional=True, batch_first=True, variant="gru",
                                 dtype=np.float64), 16)
    layers = interop.to_onnx(gru)
    assert [layer["W"].shape for layer in layers] == [(2, 12, 3), (2, 12, 8)]
    assert [layer["B"].shape for layer in layers] == [(2, 24)] * 2
    assert all(layer["direction"] == "bidirectional" and layer["linear_before_reset"] == 1
               and layer["layout"] == 1 and "input_forget" not in layer and "P" not in layer
               for layer in layers)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([2, 5, 4])
    y, (stm, _) = gru(x.transpose(1, 0, 2), lengths=lengths)
    y_want, h_want = run_layers(onnx_gru_step, x, onnx_directions(layers), lengths)
    np.testing.assert_allclose(y, y_want.transpose(1, 0, 2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stm, h_want, rtol=0, atol=1e-12)
    back = interop.from_onnx(layers)
    assert back.variant == "gru" and back.batch_first and back.num_layers == 2
    for name, value in gru.params.items():
        np.testing.assert_array_equal(back.params[name], value)
    cell = randomize(gatekit.Cell(3, 4, "gru", dtype=np.float64), 17)
    exported = interop.to_onnx(cell)
    assert exported["W"].shape == (1, 12, 3) and exported["direction"] == "forward"
    np.testing.assert_allclose(interop.from_onnx(exported)(x)[0], cell(x)[0], rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("change, message", [
    (dict(linear_before_reset=0), "linear_before_reset=0: its reset gate multiplies the state "
                                  "before the recurrent product"),
    (dict(direction="reverse"), "direction='reverse'"),
    (dict(activations=["Sigmoid", "Relu"]), "activations="),
    (dict(clip=3.0), "clip=3.0"),
    (dict(input_forget=1), "unknown keys 'input_forget'"),
    (dict(hidden_size=5), "hidden_size=5"),
    (dict(B=np.zeros((1, 8))), r"the ONNX GRU B has shape \(1, 8\); expected \(1, 24\)"),
    (dict(W=np.zeros((1, 12, 2)), R=np.zeros((2, 12, 4))),
     r"the ONNX GRU R has shape \(2, 12, 4\); expected \(1, 12, 4\)"),
])
def test_bad_onnx_grus_are_refused_by_name(change, message):
    layer = random_onnx_gru(np.random.default_rng(17), 3, 4, 1)
    layer.update(change)
    with pytest.raises(ValueError, match=message):
        interop.from_onnx(layer)


def test_onnx_gru_without_linear_before_reset_is_refused_as_the_default():
    layer = random_onnx_gru(np.random.default_rng(18), 3, 4, 2)
    del layer["linear_before_reset"]
    with pytest.raises(ValueError, match=r"linear_before_reset=0 \(ONNX default\)"):
        interop.from_onnx(layer)
    layer.update(linear_before_reset=1, activations=["Sigmoid", "Tanh"] * 2)
    assert interop.from_onnx(layer).bidirectional
    lstm_layer = {"W": np.zeros((1, 16, 3)), "R": np.zeros((1, 16, 4))}
    with pytest.raises(ValueError, match="every layer must be a GRU or none"):
        interop.from_onnx([layer, lstm_layer])


# --- onnxruntime ---------------------------------------------------------------------------------

def ort_run_gru(layers, x, lengths=None):
    """Run a stack of ONNX GRU nodes in onnxruntime, float32, (T, B, D) in, (T, B, dirs * H)
    out, and the last layer's final state."""
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
        names.append("L" if lengths is not None else "")
        nodes.append(helper.make_node(
            "GRU", [current] + names, [f"Y{k}", f"Yh{k}"], hidden_size=layer["hidden_size"],
            direction=layer["direction"], linear_before_reset=layer["linear_before_reset"]))
        nodes.append(helper.make_node("Transpose", [f"Y{k}"], [f"T{k}"], perm=[0, 2, 1, 3]))
        inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"S{k}"))
        nodes.append(helper.make_node("Reshape", [f"T{k}", f"S{k}"], [f"Z{k}"]))
        current = f"Z{k}"
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    if lengths is not None:
        inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, None))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
               for n in (current, f"Yh{len(layers) - 1}")]
    graph = helper.make_graph(nodes, "gru", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@needs_ort
def test_onnxruntime_runs_exported_grus_like_gatekit():
    rng = np.random.default_rng(19)
    T, B, D, H = 7, 4, 3, 5
    gru = randomize(gatekit.LSTM(D, H, 2, bidirectional=True, variant="gru"), 19)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = np.array([7, 3, 1, 5])
    y, (stm, _) = gru(x, lengths=lengths)
    y_ort, h_ort = ort_run_gru(interop.to_onnx(gru), x, lengths)
    assert_relatively_close(y, y_ort, 1e-5, "y")
    assert_relatively_close(stm[2:], h_ort, 1e-5, "last layer's final stm")


@needs_ort
def test_onnxruntime_gru_weights_import_into_gatekit():
    rng = np.random.default_rng(20)
    D, H, T, B = 3, 4, 6, 2
    layer = random_onnx_gru(rng, D, H, 1)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    y_ort, h_ort = ort_run_gru([layer], x)
    cell = interop.from_onnx(layer, dtype=np.float32)
    y, (stm, _) = cell(x)
    assert_relatively_close(y, y_ort, 1e-5, "y")
    assert_relatively_close(stm, h_ort[0], 1e-5, "stm")
