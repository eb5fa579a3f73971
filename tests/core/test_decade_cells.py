"""The compiled one-memory cells of the last decade: the presets gru, mingru, minlstm, mgu, mut1.

Oracles: the NumPy definitions of gatekit.reference, the equations of REFERENCE.md written out
here in each paper's own parametrisation (with the mapping to gatekit's gates stated once, in
PAPER_WEIGHTS), finite differences, and torch.nn.GRU where PyTorch is installed.
"""
import numpy as np
import pytest

import gatekit
from gatekit.core import plugins, reference
from gatekit.core.cell import _loop
from gatekit.study import sweep, tasks
from gatekit.testing import check_gate, gradcheck

from support import assert_close, centred_difference, needs, sigmoid, steps_for_a_team

PRESETS = ["gru", "mingru", "minlstm", "mgu", "mut1"]
DTYPES = [np.float64, np.float32]
GATES = {
    "gru": {"forget": "standard", "learn": "reset", "remember": "standard", "use": "memory"},
    "mingru": {"forget": "event", "learn": "min", "remember": "standard", "use": "memory"},
    "minlstm": {"forget": "min", "learn": "min", "remember": "standard", "use": "memory"},
    "mgu": {"forget": "standard", "learn": "mgu", "remember": "standard", "use": "memory"},
    "mut1": {"forget": "event", "learn": "mut1", "remember": "standard", "use": "memory"},
}


def input_size(kind, D, H):
    """MUT1 adds tanh(E_t) to its candidate unit by unit: its event has H entries."""
    return H if kind == "mut1" else D


def make(kind, D, H, dtype=np.float64, seed=0, **options):
    return gatekit.Cell(input_size(kind, D, H), H, kind, dtype=dtype, seed=seed, **options)


def one_memory_inputs(cell, T, B, seed=1):
    """x and an initial state whose two halves are the one memory of these cells."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, cell.input_size)).astype(cell.dtype)
    h0 = rng.uniform(-1, 1, (B, cell.hidden_size)).astype(cell.dtype)
    return x, (h0, h0.copy())


# --- The equations of REFERENCE.md, in each paper's parametrisation ---------------------------

def paper_weights(kind, p, H):
    """Each paper's weights from gatekit's parameters. gatekit's f_t is what the memory keeps;
    GRU's z keeps too (h_t = (1 - z) n + z h), but minGRU's and MUT1's z and MGU's f are what it
    takes in: those are 1 - f_t, so their weights are gatekit's negated."""
    if kind == "gru":
        return {"W_hr": p["W_r"][:, :H], "W_ir": p["W_r"][:, H:], "b_r": p["b_r"],
                "W_hz": p["W_f"][:, :H], "W_iz": p["W_f"][:, H:], "b_z": p["b_f"],
                "W_in": p["W_n"], "b_in": p["b_n"], "W_hn": p["W_hn"], "b_hn": p["b_hn"]}
    if kind == "mingru":
        return {"W_z": -p["W_f"], "b_z": -p["b_f"], "W_n": p["W_n"], "b_n": p["b_n"]}
    if kind == "minlstm":
        return {"W_f": p["W_f"], "b_f": p["b_f"], "W_i": p["W_i"], "b_i": p["b_i"],
                "W_n": p["W_n"], "b_n": p["b_n"]}
    if kind == "mgu":
        # MGU's n = tanh(W_n [f ⊙ h, x] + b_n): its recurrent columns are gatekit's W_hn
        return {"W_f": -p["W_f"], "b_f": -p["b_f"], "W_n": np.hstack([p["W_hn"], p["W_n"]]),
                "b_n": p["b_n"]}
    assert kind == "mut1"
    return {"W_xz": -p["W_f"], "b_z": -p["b_f"], "W_hr": p["W_r"][:, :H],
            "W_xr": p["W_r"][:, H:], "b_r": p["b_r"], "W_hh": p["W_hh"], "b_h": p["b_h"]}


def paper_step(kind, w, x, h):
    """One step of REFERENCE.md's table: h_t from x_t and h_{t-1}."""
    if kind == "gru":
        r = sigmoid(x @ w["W_ir"].T + h @ w["W_hr"].T + w["b_r"])
        z = sigmoid(x @ w["W_iz"].T + h @ w["W_hz"].T + w["b_z"])
        n = np.tanh(x @ w["W_in"].T + w["b_in"] + r * (h @ w["W_hn"].T + w["b_hn"]))
        return (1 - z) * n + z * h
    if kind == "mingru":
        z = sigmoid(x @ w["W_z"].T + w["b_z"])
        n = x @ w["W_n"].T + w["b_n"]
        return (1 - z) * h + z * n
    if kind == "minlstm":
        f = sigmoid(x @ w["W_f"].T + w["b_f"])
        i = sigmoid(x @ w["W_i"].T + w["b_i"])
        n = x @ w["W_n"].T + w["b_n"]
        return f / (f + i) * h + i / (f + i) * n
    if kind == "mgu":
        f = sigmoid(np.concatenate([h, x], axis=-1) @ w["W_f"].T + w["b_f"])
        n = np.tanh(np.concatenate([f * h, x], axis=-1) @ w["W_n"].T + w["b_n"])
        return (1 - f) * h + f * n
    z = sigmoid(x @ w["W_xz"].T + w["b_z"])
    r = sigmoid(x @ w["W_xr"].T + h @ w["W_hr"].T + w["b_r"])
    return np.tanh((r * h) @ w["W_hh"].T + np.tanh(x) + w["b_h"]) * z + h * (1 - z)


def paper_forward(kind, cell, x, h0):
    w = paper_weights(kind, {k: np.asarray(v, np.float64) for k, v in cell.params.items()},
                      cell.hidden_size)
    h, ys = np.asarray(h0, np.float64), []
    for x_t in np.asarray(x, np.float64):
        h = paper_step(kind, w, x_t, h)
        ys.append(h)
    return np.stack(ys)


# --- The presets and their gates ---------------------------------------------------------------

@pytest.mark.parametrize("kind", PRESETS)
def test_presets_compose_the_gates_of_their_cell(kind):
    cell = make(kind, 3, 4)
    assert cell.gate_names == GATES[kind]
    assert kind in gatekit.variants()
    # Compiled: a gate written in Python would hold the call to one thread.
    assert _loop.threads_for(cell.gates, 3) == 3


def expected_shapes(kind, D, H):
    return {
        "gru": {"W_f": (H, H + D), "b_f": (H,), "W_r": (H, H + D), "b_r": (H,), "W_n": (H, D),
                "b_n": (H,), "W_hn": (H, H), "b_hn": (H,)},
        "mingru": {"W_f": (H, D), "b_f": (H,), "W_n": (H, D), "b_n": (H,)},
        "minlstm": {"W_f": (H, D), "b_f": (H,), "W_i": (H, D), "b_i": (H,), "W_n": (H, D),
                    "b_n": (H,)},
        "mgu": {"W_f": (H, H + D), "b_f": (H,), "W_n": (H, D), "b_n": (H,), "W_hn": (H, H)},
        "mut1": {"W_f": (H, H), "b_f": (H,), "W_r": (H, 2 * H), "b_r": (H,), "W_hh": (H, H),
                 "b_h": (H,)},
    }[kind]


@pytest.mark.parametrize("kind", PRESETS)
def test_parameters_have_the_shapes_of_what_their_blocks_read(kind):
    D, H = input_size(kind, 3, 5), 5
    shapes = {name: a.shape for name, a in make(kind, D, H).params.items()}
    assert shapes == expected_shapes(kind, D, H)


# (T, B, D, H): the plain loop, then the tiled one (more than 8 steps).
SIZES = [(5, 2, 3, 4), (24, 5, 6, 20)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, D, H", SIZES)
@pytest.mark.parametrize("kind", PRESETS)
def test_forward_and_backward_match_the_numpy_definitions(kind, T, B, D, H, dtype):
    cell = make(kind, D, H, dtype=dtype)
    x, state = one_memory_inputs(cell, T, B)
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state, dtype=np.float64)
    assert_close(dtype, y, y_ref, "y")
    assert_close(dtype, stm, stm_ref, "stm")
    assert_close(dtype, ltm, ltm_ref, "ltm")
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    grads = cell.backward(tape, dy)
    expected = reference.backward(cell, x, dy, state, dtype=np.float64)
    assert set(grads) == set(cell.params) | {"x", "stm0", "ltm0"}
    for name in grads:
        assert_close(dtype, grads[name], expected[name], name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, D, H", SIZES)
@pytest.mark.parametrize("kind", PRESETS)
def test_forward_is_the_equations_of_the_reference_table(kind, T, B, D, H, dtype):
    cell = make(kind, D, H, dtype=dtype, seed=5)
    x, state = one_memory_inputs(cell, T, B, seed=6)
    y, (stm, ltm) = cell(x, state)
    expected = paper_forward(kind, cell, x, state[0])
    assert_close(dtype, y, expected, "h_t")
    assert_close(dtype, stm, expected[-1], "stm")
    assert_close(dtype, ltm, expected[-1], "ltm")


@pytest.mark.parametrize("kind", PRESETS)
def test_every_gradient_agrees_with_finite_differences(kind):
    cell = make(kind, 3, 4, seed=3)
    x, state = one_memory_inputs(cell, 7, 2, seed=4)
    assert gradcheck(cell, x, state)


@pytest.mark.parametrize("kind", PRESETS)
def test_gradient_of_the_one_memory_is_the_sum_of_its_two_halves(kind):
    """The STM of these cells is the LTM: the initial memory's gradient, by finite differences
    of the memory given as both halves, is grads["stm0"] + grads["ltm0"]."""
    cell = make(kind, 3, 4, seed=7)
    x, (h0, _) = one_memory_inputs(cell, 6, 2, seed=8)
    dy = np.random.default_rng(9).standard_normal((6, 2, 4))

    def loss():
        return float(np.sum(cell(x, (h0, h0))[0] * dy))

    _, _, tape = cell.forward(x, (h0, h0), keep=True)
    grads = cell.backward(tape, dy)
    flat = h0.reshape(-1)
    numeric = np.array([centred_difference(loss, flat, k, 1e-6) for k in range(flat.size)])
    np.testing.assert_allclose(grads["stm0"] + grads["ltm0"], numeric.reshape(h0.shape),
                               rtol=1e-7, atol=1e-9)


# --- Threads --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kind", PRESETS)
def test_every_thread_of_a_call_computes_its_units(kind, threads, dtype):
    B, D, H = 16, 32, 48
    cell = make(kind, D, H, dtype=dtype, seed=11, threads=threads)
    T = steps_for_a_team(cell, B, threads)
    x, state = one_memory_inputs(cell, T, B, seed=12)
    x *= dtype(0.5)
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    y_ref, (_, ltm_ref) = reference.forward(cell, x, state, dtype=np.float64)
    assert_close(dtype, y, y_ref, "y")
    assert_close(dtype, ltm, ltm_ref, "ltm")
    dy = (np.random.default_rng(13).standard_normal(y.shape) / T).astype(dtype)
    grads = cell.backward(tape, dy)
    expected = reference.backward(cell, x, dy, state, dtype=np.float64)
    for name in grads:
        if dtype == np.float64:
            assert_close(dtype, grads[name], expected[name], name)
        else:
            # float32 sums of T * B terms: held to the norm of the gradient, not entry by entry
            error = np.linalg.norm(grads[name] - expected[name])
            assert error <= 1e-4 * np.linalg.norm(expected[name]) + 1e-6, name
    if threads > 1:
        alone = make(kind, D, H, dtype=dtype, seed=11, threads=1)
        y_one, _, tape_one = alone.forward(x, state, keep=True)
        grads_one = alone.backward(tape_one, dy)
        assert y.tobytes() == y_one.tobytes(), "threads changed y"
        for name in grads:
            assert grads[name].tobytes() == grads_one[name].tobytes(), f"threads changed {name}"


# --- Ragged batches and layers ----------------------------------------------------------------

@pytest.mark.parametrize("T", [6, 12])
@pytest.mark.parametrize("kind", PRESETS)
def test_ragged_batches_hold_each_sequence_at_its_end(kind, T):
    cell = make(kind, 3, 6, seed=14)
    x, state = one_memory_inputs(cell, T, 3, seed=15)
    lengths = np.array([T, 2, T - 3])
    y, (stm, ltm), tape = cell.forward(x, state, keep=True, lengths=lengths)
    dy = np.random.default_rng(16).standard_normal(y.shape)
    grads = cell.backward(tape, dy)
    total = {name: 0 for name in cell.params}
    for b, length in enumerate(lengths):
        one = (state[0][b:b + 1], state[1][b:b + 1])
        y_b, (stm_b, ltm_b) = reference.forward(cell, x[:length, b:b + 1], one)
        assert_close(np.float64, y[:length, b], y_b[:, 0], f"y of sequence {b}")
        assert np.all(y[length:, b] == 0)
        assert_close(np.float64, stm[b], stm_b[0], f"stm of sequence {b}")
        assert_close(np.float64, ltm[b], ltm_b[0], f"ltm of sequence {b}")
        expected = reference.backward(cell, x[:length, b:b + 1], dy[:length, b:b + 1], one)
        assert_close(np.float64, grads["x"][:length, b], expected["x"][:, 0], f"dx of {b}")
        assert np.all(grads["x"][length:, b] == 0)
        for half in ("stm0", "ltm0"):
            assert_close(np.float64, grads[half][b], expected[half][0], f"d{half} of {b}")
        for name in cell.params:
            total[name] = total[name] + expected[name]
    for name in cell.params:
        assert_close(np.float64, grads[name], total[name], name)


def layer_shapes(kind):
    """(num_layers, bidirectional) of the layers tested: MUT1's second layer reads the first's
    H outputs (one direction) only; two directions would give it 2H."""
    return [(2, False), (1, True)] if kind == "mut1" else [(2, True)]


def reference_layers(lstm, x, h0):
    """The layers from the NumPy definitions, every sequence full length: y and final memory."""
    finals, layer_input = [], x
    for layer in range(lstm.num_layers):
        outputs = []
        for direction in range(lstm.directions):
            k = layer * lstm.directions + direction
            seen = layer_input if direction == 0 else layer_input[::-1]
            y, (h, _) = reference.forward(lstm.cell(layer, reverse=bool(direction)), seen,
                                          (h0[k], h0[k]), dtype=np.float64)
            outputs.append(y if direction == 0 else y[::-1])
            finals.append(h)
        layer_input = np.concatenate(outputs, axis=2)
    return layer_input, np.stack(finals)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", PRESETS)
def test_stacked_and_bidirectional_layers_match_the_definitions(kind, dtype):
    H, T, B = 5, 9, 3
    D = input_size(kind, 4, H)
    rng = np.random.default_rng(17)
    for num_layers, bidirectional in layer_shapes(kind):
        lstm = gatekit.LSTM(D, H, num_layers, bidirectional=bidirectional, variant=kind,
                            dtype=dtype, seed=17)
        x = rng.standard_normal((T, B, D)).astype(dtype)
        h0 = rng.uniform(-1, 1, (lstm.directions * num_layers, B, H)).astype(dtype)
        y, (stm, ltm) = lstm(x, (h0, h0))
        y_ref, final_ref = reference_layers(lstm, x, h0)
        assert_close(dtype, y, y_ref, "y")
        assert_close(dtype, stm, final_ref, "stm")
        assert_close(dtype, ltm, final_ref, "ltm")


@pytest.mark.parametrize("kind", PRESETS)
def test_layer_gradients_agree_with_finite_differences(kind):
    H, T, B = 3, 5, 3
    D = input_size(kind, 2, H)
    rng = np.random.default_rng(18)
    lengths = np.array([5, 2, 4])
    for num_layers, bidirectional in layer_shapes(kind):
        lstm = gatekit.LSTM(D, H, num_layers, bidirectional=bidirectional, variant=kind,
                            dtype=np.float64, seed=18)
        x = rng.standard_normal((T, B, D))
        # One array for both halves: a difference moves the one memory.
        h0 = rng.uniform(-1, 1, (lstm.directions * num_layers, B, H))
        y, (stm, _) = lstm(x, (h0, h0), lengths=lengths)
        dy, dh = rng.standard_normal(y.shape), rng.standard_normal(stm.shape)

        def loss():
            y, (stm, _) = lstm(x, (h0, h0), lengths=lengths)
            return float(np.sum(y * dy) + np.sum(stm * dh))

        _, _, tape = lstm.forward(x, (h0, h0), lengths=lengths, keep=True)
        grads = lstm.backward(tape, dy, (dh, None))
        grads["h0"] = grads["stm0"] + grads["ltm0"]
        for name, array in {**lstm.params, "x": x, "h0": h0}.items():
            flat = array.flat               # writes through a strided parameter view
            picked = rng.choice(array.size, size=min(6, array.size), replace=False)
            numeric = np.array([(4 * centred_difference(loss, flat, i, 5e-5)
                                 - centred_difference(loss, flat, i, 1e-4)) / 3 for i in picked])
            np.testing.assert_allclose(grads[name].reshape(-1)[picked], numeric, rtol=1e-6,
                                       atol=1e-9, err_msg=f"{name} ({num_layers}, "
                                                          f"{bidirectional})")


# --- The gates on their own ---------------------------------------------------------------------

@pytest.mark.parametrize("kind, role", [("gru", "learn"), ("mingru", "forget"),
                                        ("minlstm", "forget"), ("minlstm", "learn"),
                                        ("mgu", "learn"), ("mut1", "learn")])
def test_each_gate_passes_check_gate(kind, role):
    gate = plugins.registry().gates[role][GATES[kind][role]].cls
    size = 4 if kind == "mut1" else 3
    check_gate(gate, kind, input_size=size, hidden_size=4)


# --- One memory: the state's two halves ---------------------------------------------------------

@pytest.mark.parametrize("kind", PRESETS + ["janet"])
def test_a_one_memory_cell_refuses_a_state_whose_halves_differ(kind):
    cell = gatekit.Cell(input_size(kind, 3, 4), 4, kind)
    x = np.zeros((2, 1, cell.input_size))
    h = np.ones((1, 4))
    with pytest.raises(ValueError, match=r"state\[0\] \(stm\) must equal state\[1\] \(ltm\)"):
        cell(x, (h, 2 * h))
    cell(x, (h, h.copy()))                   # equal halves are one memory


def test_a_two_memory_cell_takes_halves_that_differ():
    cell = gatekit.Cell(3, 4, "standard")
    cell(np.zeros((2, 1, 3)), (np.ones((1, 4)), np.zeros((1, 4))))


def test_mut1_refuses_an_event_of_another_size():
    with pytest.raises(ValueError, match=r"mut1.*input_size \(3\).*hidden_size \(4\)"):
        gatekit.Cell(3, 4, "mut1")


# --- GRU against PyTorch ----------------------------------------------------------------------

def gru_from_torch(gru, cell):
    """gatekit's gru preset given torch.nn.GRU's weights (block order r, z, n): z keeps the old
    memory, as gatekit's forget factor does; r's and z's two biases add up."""
    H = gru.hidden_size
    w_ih, w_hh = gru.weight_ih_l0.detach().numpy(), gru.weight_hh_l0.detach().numpy()
    b_ih, b_hh = gru.bias_ih_l0.detach().numpy(), gru.bias_hh_l0.detach().numpy()
    rows = {k: slice(j * H, (j + 1) * H) for j, k in enumerate("rzn")}
    cell.params["W_f"] = np.hstack([w_hh[rows["z"]], w_ih[rows["z"]]])
    cell.params["b_f"] = b_ih[rows["z"]] + b_hh[rows["z"]]
    cell.params["W_r"] = np.hstack([w_hh[rows["r"]], w_ih[rows["r"]]])
    cell.params["b_r"] = b_ih[rows["r"]] + b_hh[rows["r"]]
    cell.params["W_n"], cell.params["b_n"] = w_ih[rows["n"]], b_ih[rows["n"]]
    cell.params["W_hn"], cell.params["b_hn"] = w_hh[rows["n"]], b_hh[rows["n"]]
    return rows


@pytest.mark.parametrize("T, B, D, H", [(9, 4, 3, 5), (40, 6, 7, 24)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_matches_torch_gru_outputs_state_and_every_gradient(dtype, T, B, D, H):
    torch = needs("torch")
    torch.manual_seed(0)
    gru = torch.nn.GRU(D, H).double()
    cell = gatekit.Cell(D, H, "gru", dtype=dtype)
    rows = gru_from_torch(gru, cell)
    rng = np.random.default_rng(19)
    x, h0 = rng.standard_normal((T, B, D)), rng.standard_normal((B, H))
    dy, dh = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))

    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0[None], requires_grad=True)
    out, h_T = gru(xt, ht)
    ((out * torch.tensor(dy)).sum() + (h_T[0] * torch.tensor(dh)).sum()).backward()

    y, (stm, ltm), tape = cell.forward(x.astype(dtype), (h0, h0), keep=True)
    grads = cell.backward(tape, dy.astype(dtype), dstm=dh.astype(dtype))
    tolerance = dict(rtol=0, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)

    def same(actual, expected, what):
        np.testing.assert_allclose(actual, expected.detach().numpy(), **tolerance, err_msg=what)

    same(y, out, "y")
    same(stm, h_T[0], "stm")
    same(ltm, h_T[0], "ltm")
    same(grads["x"], xt.grad, "x")
    same(grads["stm0"] + grads["ltm0"], ht.grad[0], "h0")
    w_ih, w_hh = gru.weight_ih_l0.grad, gru.weight_hh_l0.grad
    b_ih, b_hh = gru.bias_ih_l0.grad, gru.bias_hh_l0.grad
    for block, gate in (("r", "r"), ("z", "f")):
        same(grads[f"W_{gate}"][:, :H], w_hh[rows[block]], f"weight_hh {block}")
        same(grads[f"W_{gate}"][:, H:], w_ih[rows[block]], f"weight_ih {block}")
        # gatekit's one bias is their sum: its gradient is each of theirs
        same(grads[f"b_{gate}"], b_ih[rows[block]], f"bias_ih {block}")
        same(grads[f"b_{gate}"], b_hh[rows[block]], f"bias_hh {block}")
    same(grads["W_n"], w_ih[rows["n"]], "weight_ih n")
    same(grads["b_n"], b_ih[rows["n"]], "bias_ih n")
    same(grads["W_hn"], w_hh[rows["n"]], "weight_hh n")
    same(grads["b_hn"], b_hh[rows["n"]], "bias_hh n")


def test_two_gates_that_share_the_step_work_between_threads_are_refused():
    # mgu's product and course's both use the step's work: in one cell, a thread could overwrite
    # what another is still reading.
    with pytest.raises(ValueError, match=r"learn gate 'mgu' and use gate 'course' both share"):
        gatekit.Cell(3, 4, "mgu", use="course")


def test_a_sweep_refuses_mut1_on_a_task_whose_input_is_not_as_wide_as_its_memory():
    task = {"name": "temporal_order", "length": 10}
    size = tasks.make(**task).input_size
    with pytest.raises(ValueError, match=rf"'mut1'.*input size \({size}\).*hidden_size={size + 1}"):
        sweep.make_spec("mut1", task, 0, hidden_size=size + 1)
    assert sweep.make_spec("mut1", task, 0, hidden_size=size)["hidden_size"] == size
