"""The LayerNorm LSTM preset (Ba, Kiros & Hinton 2016, as haste's LayerNormLSTM), compiled, held
to its NumPy definitions in ``gatekit.reference`` and to REFERENCE.md's equations written out
here in their own layout (the gates in the order i, f, g, o, one (4H, D) and one (4H, H)
matrix): finite differences for every gradient, gains and shifts included; float32 and
float64; 1, 2 and 3 threads, with the same bits on each; ragged batches; layers stacked and
bidirectional; save and load."""
import numpy as np
import pytest

import gatekit
from gatekit.core import plugins, reference
from gatekit.testing import check_gate, gradcheck
from gatekit.core.plugins import PluginError
from support import (GoingAlone, assert_close, assert_matches_reference, dtype_id, make_plugin,
                     numerical_gradient, random_inputs, rel_error, reverse_each, sigmoid,
                     steps_for_a_team)

DTYPES = [np.float64, np.float32]
D, H = 3, 4
# float64 core against the float64 reference: the same formulas in another order.
F64_TOL = 1e-9
# float32 core against the float64 reference, per gradient, relative in norm: float32 rounding
# carried through a few steps and three normalisations (a normalisation divides by a standard
# deviation that may be small against the entries it centres).
F32_GRAD_TOL = 1e-3
EPSILON = 1e-5          # haste's and Ba et al.'s, inside the root; biased variance


def layer_norm(v, gain, shift):
    mean = v.mean(axis=-1, keepdims=True)
    variance = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return gain * (v - mean) / np.sqrt(variance + EPSILON) + shift


def layernorm_equations(params, x, state=None):
    """REFERENCE.md's LayerNorm LSTM, in float64 and in its own layout: a = LN(W_h h; γ_h, β_h)
    + LN(W_x x; γ_x, β_x) + b over the 4H pre-activations, split into i, f, g, o;
    c_t = σ(f) ⊙ c + σ(i) ⊙ tanh(g); h_t = σ(o) ⊙ tanh(LN(c_t; γ_c, β_c)). gatekit's blocks
    f, i, n, v are f, i, g, o; β_x = β_h = 0, as haste has it (b after them is the only
    shift). Returns y and the final (h, c)."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    order = ("i", "f", "n", "v")                        # REFERENCE's i, f, g, o
    row = {"f": 0, "i": 1, "n": 2, "v": 3}               # gatekit's rows of g_x, g_h, b
    W_x = np.concatenate([p[f"W_x{k}"] for k in order])  # (4H, D)
    W_h = np.concatenate([p[f"W_h{k}"] for k in order])  # (4H, H)
    gamma_x = np.concatenate([p["g_x"][row[k]] for k in order])
    gamma_h = np.concatenate([p["g_h"][row[k]] for k in order])
    bias = np.concatenate([p["b"][row[k]] for k in order])
    x = np.asarray(x, np.float64)
    B = x.shape[1]
    h, c = (np.zeros((B, H)), np.zeros((B, H))) if state is None else (
        np.array(value, np.float64) for value in state)
    ys = []
    for E in x:
        a = layer_norm(h @ W_h.T, gamma_h, 0) + layer_norm(E @ W_x.T, gamma_x, 0) + bias
        i, f, g, o = np.split(a, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(layer_norm(c, p["g_c"], p["b_c"]))
        ys.append(h)
    return np.array(ys), (h, c)


def layernorm(dtype=np.float64, seed=0, **kwargs):
    """A cell whose gains and shifts are drawn too (their initial values, ones and zeros,
    would hide a gain or a shift taken from the wrong row)."""
    cell = gatekit.Cell(D, H, "layernorm", dtype=dtype, seed=seed, **kwargs)
    rng = np.random.default_rng(seed + 100)
    for name in ("g_x", "g_h", "g_c"):
        cell.params[name] = rng.uniform(0.5, 1.5, cell.params[name].shape)
    for name in ("b", "b_c"):
        cell.params[name] = rng.uniform(-0.5, 0.5, cell.params[name].shape)
    return cell


def random_state(B, rng, dtype):
    return tuple(rng.uniform(-1, 1, (B, H)).astype(dtype) for _ in range(2))


def test_preset_gates_and_parameters():
    cell = gatekit.Cell(D, H, "layernorm", seed=0)
    assert cell.gate_names == {"forget": "layernorm", "learn": "layernorm",
                               "remember": "standard", "use": "layernorm"}
    assert {name: cell.params[name].shape for name in cell.params} == {
        **{f"W_x{k}": (H, D) for k in "finv"}, **{f"W_h{k}": (H, H) for k in "finv"},
        "g_x": (4, H), "g_h": (4, H), "b": (4, H), "g_c": (H,), "b_c": (H,)}
    # gains start at one and shifts at zero, as haste's
    for name in ("g_x", "g_h", "g_c"):
        np.testing.assert_array_equal(cell.params[name], 1)
    for name in ("b", "b_c"):
        np.testing.assert_array_equal(cell.params[name], 0)
    assert cell.memories == ()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_forward_matches_reference_and_equations(dtype):
    cell = layernorm(dtype, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 3, D)).astype(dtype)
    for state in (None, random_state(3, rng, dtype)):
        y, final = cell(x, state)
        assert [v.shape for v in final] == [(3, H)] * 2 and all(v.dtype == dtype for v in final)
        y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
        y_eq, final_eq = layernorm_equations(cell.params, x, state)
        for what, got, ref, eq in zip(("y", "stm", "ltm"), (y, *final), (y_ref, *final_ref),
                                      (y_eq, *final_eq)):
            assert_close(dtype, got, ref, what)
            assert_close(dtype, got, eq, what)


def test_outputs_do_not_depend_on_the_scale_of_the_products():
    # LN(W x) is the same for W and 7 W (up to ε): the cell normalises what it multiplies.
    cell = layernorm(seed=2)
    scaled = cell.copy()
    for k in "finv":
        scaled.params[f"W_x{k}"] = 7 * cell.params[f"W_x{k}"]
        scaled.params[f"W_h{k}"] = 7 * cell.params[f"W_h{k}"]
    x = np.random.default_rng(2).standard_normal((6, 2, D))
    y, _ = cell(x)
    y_scaled, _ = scaled(x)
    assert np.abs(y_scaled - y).max() < 1e-3          # only ε tells them apart
    assert np.abs(y_scaled - y).max() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_backward_matches_reference(dtype):
    cell = layernorm(dtype, seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3, D)).astype(dtype)
    state = random_state(3, rng, dtype)
    dy = rng.standard_normal((7, 3, H)).astype(dtype)
    dstm, dltm = (rng.standard_normal((3, H)).astype(dtype) for _ in range(2))
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy, dstm, dltm)
    want = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64)
    assert set(got) == set(want) == set(cell.params) | {"x", "stm0", "ltm0"}
    for name in want:
        assert rel_error(got[name], want[name]) < (F64_TOL if dtype == np.float64
                                                   else F32_GRAD_TOL), name


def test_gradients_against_finite_differences():
    cell = layernorm(seed=4)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 2, D))
    result = gradcheck(cell, x, random_state(2, rng, np.float64))
    assert set(cell.params) | {"x", "stm0", "ltm0"} <= set(result.errors)
    assert result
    assert gradcheck(cell, x)


def test_gradients_of_the_equations_by_finite_differences():
    # The compiled gradients against finite differences of the independent equations, not of
    # the cell: a loss over the outputs and the final state.
    cell = layernorm(seed=5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 2, D))
    state = random_state(2, rng, np.float64)
    dy, dstm, dltm = rng.standard_normal((5, 2, H)), *rng.standard_normal((2, 2, H))
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy, dstm, dltm)
    params = {name: np.array(value) for name, value in cell.params.items()}

    def loss():
        y, (h, c) = layernorm_equations(params, x, state)
        return np.sum(y * dy) + np.sum(h * dstm) + np.sum(c * dltm)

    for name in params:
        assert rel_error(got[name], numerical_gradient(loss, params[name])) < 1e-6, name


# --- Threads ---------------------------------------------------------------------------------

def threaded_call(dtype, team):
    """A cell and a call of it that the plan gives ``team`` threads (3: 48 units are 3 panels
    of 16 in float32, 6 of 8 in float64). Many sequences rather than many steps: float32
    rounding grows along this cell's trajectory (test_float32_rounding_grows_in_the_reference_too),
    past float32's tolerance after some 30 steps, in the reference run in float32 as well."""
    cell = gatekit.Cell(16, 48, "layernorm", dtype=dtype, seed=8, threads=team)
    rng = np.random.default_rng(team + 10)
    for name in ("g_x", "g_h", "g_c"):
        cell.params[name] = rng.uniform(0.5, 1.5, cell.params[name].shape)
    for name in ("b", "b_c"):
        cell.params[name] = rng.uniform(-0.5, 0.5, cell.params[name].shape)
    B = 64
    return cell, steps_for_a_team(cell, B, team), B


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("team", [1, 2, 3])
def test_threads(team, dtype):
    cell, T, B = threaded_call(dtype, team)
    rng = np.random.default_rng(team)
    x = rng.standard_normal((T, B, 16)).astype(dtype)
    state = tuple(rng.uniform(-1, 1, (B, 48)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal((T, B, 48)).astype(dtype)
    dstm, dltm = (rng.standard_normal((B, 48)).astype(dtype) for _ in range(2))
    y, final, tape = cell.forward(x, state, keep=True)
    y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
    for what, got, want in zip(("y", "stm", "ltm"), (y, *final), (y_ref, *final_ref)):
        assert_close(dtype, got, want, what)
    grads = cell.backward(tape, dy, dstm, dltm)
    want = reference.backward(cell, x, dy, state, dstm, dltm, np.float64)
    for name in want:
        assert rel_error(grads[name], want[name]) < (F64_TOL if dtype == np.float64
                                                     else F32_GRAD_TOL), name
    # every thread computes each row's statistics over all units in one order: a team gives
    # one thread's bits
    alone = cell.copy()
    alone.threads = 1
    y1, final1, tape1 = alone.forward(x, state, keep=True)
    np.testing.assert_array_equal(y, y1)
    for got, want in zip(final, final1):
        np.testing.assert_array_equal(got, want)
    grads1 = alone.backward(tape1, dy, dstm, dltm)
    for name in grads1:
        np.testing.assert_array_equal(grads[name], grads1[name], err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_thread_zero_going_on_alone_changes_no_bit(monkeypatch, dtype):
    from gatekit.core import cell as cell_module
    cell, T, B = threaded_call(dtype, 3)
    rng = np.random.default_rng(20)
    x = rng.standard_normal((T, B, 16)).astype(dtype)
    dy = rng.standard_normal((T, B, 48)).astype(dtype)
    lengths = rng.integers(T // 2, T + 1, B)
    solo = cell.copy()
    solo.threads = 1
    y1, final1, tape1 = solo.forward(x, keep=True, lengths=lengths)
    grads1 = solo.backward(tape1, dy)
    monkeypatch.setattr(cell_module, "_loop", GoingAlone(cell_module._loop, T // 2))
    y, final, tape = cell.forward(x, keep=True, lengths=lengths)
    grads = cell.backward(tape, dy)
    np.testing.assert_array_equal(y, y1)
    for got, want in zip(final, final1):
        np.testing.assert_array_equal(got, want)
    for name in grads1:
        np.testing.assert_array_equal(grads[name], grads1[name], err_msg=name)


# --- Ragged batches, layers, save and load ---------------------------------------------------

def test_ragged_batch():
    cell = layernorm(seed=9)
    rng = np.random.default_rng(9)
    T, lengths = 7, np.array([3, 7, 1, 5])
    x = rng.standard_normal((T, 4, D))
    state = random_state(4, rng, np.float64)
    dy = rng.standard_normal((T, 4, H))
    dstm, dltm = (rng.standard_normal((4, H)) for _ in range(2))
    y, final, tape = cell.forward(x, state, keep=True, lengths=lengths)
    grads = cell.backward(tape, dy, dstm, dltm)
    total = {name: np.zeros_like(value) for name, value in cell.params.items()}
    for b, length in enumerate(lengths):
        one = slice(b, b + 1)
        alone = tuple(value[one] for value in state)
        y_eq, final_eq = layernorm_equations(cell.params, x[:length, one], alone)
        np.testing.assert_allclose(y[:length, one], y_eq, rtol=0, atol=1e-12)
        assert np.all(y[length:, b] == 0)
        for got, want in zip(final, final_eq):
            np.testing.assert_allclose(got[one], want, rtol=0, atol=1e-12)
        _, _, tape_b = cell.forward(x[:length, one], alone, keep=True)
        grads_b = cell.backward(tape_b, dy[:length, one], dstm[one], dltm[one])
        for name in ("stm0", "ltm0"):
            np.testing.assert_allclose(grads[name][one], grads_b[name], rtol=1e-10, atol=1e-13,
                                       err_msg=name)
        np.testing.assert_allclose(grads["x"][:length, one], grads_b["x"], rtol=1e-10,
                                   atol=1e-13)
        for name in total:
            total[name] += grads_b[name]
    for name in total:
        assert rel_error(grads[name], total[name]) < F64_TOL, name


def test_stacked_bidirectional_layer():
    lstm = gatekit.LSTM(D, H, num_layers=2, bidirectional=True, variant="layernorm",
                        dtype=np.float64, seed=10)
    rng = np.random.default_rng(10)
    for name in lstm.params:
        if name.endswith((".g_x", ".g_h", ".g_c")):
            lstm.params[name] = rng.uniform(0.5, 1.5, lstm.params[name].shape)
        elif name.endswith((".b", ".b_c")):
            lstm.params[name] = rng.uniform(-0.5, 0.5, lstm.params[name].shape)
    T, B, lengths = 6, 3, np.array([6, 2, 4])
    x = rng.standard_normal((T, B, D))
    h0, c0 = (rng.uniform(-1, 1, (4, B, H)) for _ in range(2))
    y, final, tape = lstm.forward(x, (h0, c0), lengths=lengths, keep=True)
    layer_input = x
    for layer in range(2):
        outputs = []
        for direction in range(2):
            k = 2 * layer + direction
            cell = lstm.cells[lstm.cell_names[k]]
            y_cell = np.zeros((T, B, H))
            for b, length in enumerate(lengths):
                one = slice(b, b + 1)
                seen = layer_input[:length, one]
                if direction:
                    seen = seen[::-1]
                y_b, (h, c) = layernorm_equations(cell.params, seen, (h0[k, one], c0[k, one]))
                y_cell[:length, one] = y_b[::-1] if direction else y_b
                np.testing.assert_allclose(final[0][k, one], h, rtol=0, atol=1e-12)
                np.testing.assert_allclose(final[1][k, one], c, rtol=0, atol=1e-12)
            outputs.append(y_cell)
        layer_input = np.concatenate(outputs, axis=2)
    np.testing.assert_allclose(y, layer_input, rtol=0, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    grads = lstm.backward(tape, dy)

    def loss():
        return np.sum(lstm(x, (h0, c0), lengths=lengths)[0] * dy)

    # (the gains and shifts: contiguous arrays, which numerical_gradient perturbs in place)
    for name in ("l0.g_x", "l0_reverse.g_h", "l1_reverse.b", "l1_reverse.g_c", "l1.b_c"):
        numeric = numerical_gradient(loss, lstm.params[name])
        assert rel_error(grads[name], numeric) < 1e-6, name
    for name, array in (("stm0", h0), ("ltm0", c0)):
        assert rel_error(grads[name], numerical_gradient(loss, array)) < 1e-6, name


def test_reverse_direction_alone_matches_reversed_sequences():
    lstm = gatekit.LSTM(D, H, bidirectional=True, variant="layernorm", dtype=np.float64,
                        seed=11)
    rng = np.random.default_rng(11)
    lengths = np.array([5, 3])
    x = rng.standard_normal((5, 2, D))
    y, _ = lstm(x, lengths=lengths)
    reverse = lstm.cells["l0_reverse"]
    y_rev, _ = reverse(reverse_each(x, lengths), lengths=lengths)
    np.testing.assert_allclose(y[:, :, H:], reverse_each(y_rev, lengths), rtol=0, atol=1e-13)


def test_save_and_load_round_trip(tmp_path):
    for model in (layernorm(np.float32, seed=13),
                  gatekit.LSTM(D, H, num_layers=2, bidirectional=True, variant="layernorm",
                               seed=13)):
        path = tmp_path / "layernorm.npz"
        gatekit.save(model, path)
        loaded = gatekit.load(path)
        assert loaded.gate_names == model.gate_names
        for name in model.params:
            np.testing.assert_array_equal(loaded.params[name], model.params[name])
        x = np.random.default_rng(13).standard_normal((4, 2, D)).astype(np.float32)
        y, final = model(x)
        y_loaded, final_loaded = loaded(x)
        np.testing.assert_array_equal(y_loaded, y)
        for got, want in zip(final_loaded, final):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("gate", ["forget", "learn", "use"])
def test_check_gate_accepts_the_layernorm_gates(gate):
    # 16 steps (the shortest call the plan gives two threads), not the default 200: from its
    # default parameters this cell's trajectory is sensitive to rounding (normalising W_h STM
    # undoes a small STM's scale), and float32 rounding grows by about 3 % a step, in the
    # reference run in float32 as in the cell (test_float32_rounding_grows_in_the_reference_too).
    check_gate(plugins.registry().gates[gate]["layernorm"].cls, variant="layernorm",
               threaded_steps=16)


def test_float32_rounding_grows_in_the_reference_too():
    # What keeps check_gate's threaded run short above: over 200 steps the NumPy definition
    # itself, run in float32, leaves float64 by far more than check_gate's 1e-5, while at
    # step 0 it is within float32's rounding.
    cell = gatekit.Cell(3, 64, "layernorm", dtype=np.float32, seed=0)
    x = np.random.default_rng(0).standard_normal((200, 16, 3))
    y64, _ = reference.forward(cell, x, dtype=np.float64)
    y32, _ = reference.forward(cell, x, dtype=np.float32)
    error = np.abs(y32 - y64).max(axis=(1, 2))
    assert error[0] < 1e-6 and error[-1] > 1e-5 and error[-1] > 100 * error[0]
    y, _ = cell(x)
    assert np.abs(y - y64).max(axis=(1, 2))[0] < 1e-6


def test_use_gate_needs_the_forget_gate_that_makes_its_output_factor():
    with pytest.raises(ValueError, match="use gate 'layernorm' reads V_t"):
        gatekit.Cell(D, H, "layernorm", forget="standard")


def test_two_normalising_gates_share_the_step_but_not_its_work():
    # Both layernorm gates sync; neither uses the step's work, so they may be in one cell,
    # while a gate that does (course) still may not join another that syncs with it.
    forget = plugins.registry().gates["forget"]["layernorm"].cls
    use = plugins.registry().gates["use"]["layernorm"].cls
    assert forget.syncs and use.syncs and not forget.uses_work and not use.uses_work
    with pytest.raises(ValueError, match=r"learn gate 'mgu' and use gate 'course' both share"):
        gatekit.Cell(4, 4, "mgu", use="course")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("team", [2, 3])
def test_zoneout_and_recurrent_dropout_on_threads(team, dtype):
    cell, T, B = threaded_call(dtype, team)
    regularised = gatekit.Cell(16, 48, "layernorm", dtype=dtype, seed=8, threads=team,
                               zoneout=(0.2, 0.1), recurrent_dropout=0.3)
    for name in cell.params:
        regularised.params[name] = cell.params[name]
    rng = np.random.default_rng(30 + team)
    x = rng.standard_normal((T, B, 16)).astype(dtype)
    masks = regularised.draw_masks(T, B)
    dy = rng.standard_normal((T, B, 48)).astype(dtype)
    y, final, tape = regularised.forward(x, keep=True, masks=masks)
    y_ref, final_ref = reference.forward(regularised, x, dtype=np.float64, masks=masks)
    for what, got, want in zip(("y", "stm", "ltm"), (y, *final), (y_ref, *final_ref)):
        assert_close(dtype, got, want, what)
    grads = regularised.backward(tape, dy)
    want = reference.backward(regularised, x, dy, dtype=np.float64, masks=masks)
    for name in want:
        assert rel_error(grads[name], want[name]) < (F64_TOL if dtype == np.float64
                                                     else F32_GRAD_TOL), name
    alone = regularised.copy()
    alone.threads = 1
    y1, _, tape1 = alone.forward(x, keep=True, masks=masks)
    np.testing.assert_array_equal(y, y1)
    grads1 = alone.backward(tape1, dy)
    for name in grads1:
        np.testing.assert_array_equal(grads[name], grads1[name], err_msg=name)


def test_gradients_with_masks_against_finite_differences():
    cell = layernorm(seed=31, zoneout=(0.3, 0.2), recurrent_dropout=0.25)
    rng = np.random.default_rng(31)
    x = rng.standard_normal((7, 3, D))
    state = random_state(3, rng, np.float64)
    assert gradcheck(cell, x, state, masks=cell.draw_masks(7, 3))


# --- The declarations the preset brought: blocks without biases, rows of parameters ----------

def forget_scaled(STM_prev, E_t, W_f, g):
    """f_t = σ(g_0 ⊙ W_f [STM_{t-1}, E_t] + g_1): a bias of its own, after a gain."""
    return {"f_t": sigmoid(np.concatenate([STM_prev, E_t], axis=-1) @ W_f.T * g[0] + g[1])}


class ScaledForget(gatekit.PythonGate):
    role, name, blocks = "forget", "scaled_py", ("f",)
    block_biases = False
    params = {"g": (2, "H")}
    definition = staticmethod(forget_scaled)

    def forward(self, step):
        g = self.arrays["g"]
        step.f_t[...] = sigmoid(g[0] * step.z("f") + g[1])


def test_a_gate_without_block_biases_and_with_rows_of_parameters(register):
    register(make_plugin(gates=[ScaledForget]), name="test-scaled")
    cell = gatekit.Cell(3, 5, forget="scaled_py", dtype=np.float64, seed=0)
    assert "b_f" not in cell.params and cell.params["g"].shape == (2, 5)
    assert ScaledForget.shapes(3, 5)["g"] == (2, 5) and "b_f" not in ScaledForget.shapes(3, 5)
    cell.params["g"] = np.random.default_rng(0).uniform(-1, 1, (2, 5))
    assert_matches_reference(cell, *random_inputs(cell, 6, 2))


@pytest.mark.parametrize("dims", [(0, "H"), (True, "H"), (2.0, "H"), ("B",)])
def test_a_parameter_dimension_must_be_h_d_or_a_positive_integer(register, dims):
    class Bad(ScaledForget):
        name = "bad_dims_py"
        params = {"g": dims}

    with pytest.raises(PluginError, match="expected a tuple of 'H', 'D' and positive integers"):
        register(make_plugin(gates=[Bad]), name="test-bad-dims")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_projected_stm(dtype, threads):
    # proj_size: the gates read a P-wide STM through their recurrent blocks only, and the
    # normalisations see what they see without it (4H pre-activations, H units of LTM_t).
    cell = gatekit.Cell(16, 48, "layernorm", dtype=dtype, seed=40, proj_size=12,
                        threads=threads)
    assert cell.params["W_hf"].shape == (48, 12) and cell.params["W_hr"].shape == (12, 48)
    rng = np.random.default_rng(40)
    x = rng.standard_normal((8, 64, 16)).astype(dtype)
    dy = rng.standard_normal((8, 64, 12)).astype(dtype)
    y, final, tape = cell.forward(x, keep=True)
    y_ref, final_ref = reference.forward(cell, x, dtype=np.float64)
    for what, got, want in zip(("y", "stm", "ltm"), (y, *final), (y_ref, *final_ref)):
        assert_close(dtype, got, want, what)
    grads = cell.backward(tape, dy)
    want = reference.backward(cell, x, dy, dtype=np.float64)
    for name in want:
        assert rel_error(grads[name], want[name]) < (F64_TOL if dtype == np.float64
                                                     else F32_GRAD_TOL), name
    alone = cell.copy()
    alone.threads = 1
    np.testing.assert_array_equal(alone(x)[0], y)
