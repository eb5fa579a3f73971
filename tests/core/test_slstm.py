"""The sLSTM preset (xLSTM, Beck et al. 2024, stabilised form), compiled, held to its NumPy
definitions in ``gatekit.reference`` and to the equations of REFERENCE.md written out here:
the stabilised form, and the unstabilised one where it does not overflow (the outputs must
agree: h does not depend on the stabiliser m); finite differences for every gradient, the
initial n and m included; 1, 2 and 3 threads; ragged batches; layers; save and load; the
trace; pre-activations around 100, where the unstabilised form overflows."""
import json

import numpy as np
import pytest

import gatekit
from gatekit.core import plugins, reference
from gatekit.io.saving import LoadError
from gatekit.testing import check_gate, gradcheck
from support import (assert_close, dtype_id, numerical_gradient, rel_error, reverse_each, sigmoid,
                     steps_for_a_team)

DTYPES = [np.float64, np.float32]
D, H = 3, 4
# float64 core against the float64 reference: the same formulas in another order.
F64_TOL = 1e-9
# float32 core against the float64 reference, per gradient, relative in norm: float32 rounding
# carried through a few steps of exponentials and a division.
F32_GRAD_TOL = 1e-3


def final_gradients(B, rng, dtype):
    """Gradients of the final (stm, ltm) and memories. The outputs alone would leave some
    gradients zero: h is the same for all i' scaled alike (c and n are both linear in them), so
    the gradient of b_i through y is zero up to rounding, which no relative bound can judge.
    The final LTM and memories depend on that scale."""
    dstm, dltm, dm, dn = (rng.standard_normal((B, H)).astype(dtype) for _ in range(4))
    return dstm, dltm, {"m": dm, "n": dn}


def assert_gradients_match(got, want, dtype):
    assert set(got) == set(want)
    for name in want:
        assert rel_error(got[name], want[name]) < (F64_TOL if dtype == np.float64
                                                   else F32_GRAD_TOL), name


def slstm_equations(params, x, state=None, stabilised=True):
    """REFERENCE.md's sLSTM, in float64: ĩ, f̃, z̃, õ = W_k [h, x] + b_k; stabilised,
    m_t = max(f̃ + m_{t-1}, ĩ), i' = exp(ĩ - m_t), f' = exp(f̃ + m_{t-1} - m_t); unstabilised,
    i' = exp(ĩ), f' = exp(f̃) (m unused); c_t = f' c_{t-1} + i' tanh(z̃), n_t = f' n_{t-1} + i',
    h_t = σ(õ) c_t / n_t. Returns y and the final (h, c, n, m)."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)
    B = x.shape[1]
    h, c, n, m = (np.zeros((B, H)) for _ in range(4)) if state is None else (
        np.array(value, np.float64) for value in state)
    ys = []
    with np.errstate(over="ignore", invalid="ignore"):
        for E in x:
            hx = np.concatenate([h, E], axis=1)
            i_pre, f_pre = hx @ p["W_i"].T + p["b_i"], hx @ p["W_f"].T + p["b_f"]
            z_pre, o_pre = hx @ p["W_n"].T + p["b_n"], hx @ p["W_v"].T + p["b_v"]
            if stabilised:
                m_new = np.maximum(f_pre + m, i_pre)
                i, f = np.exp(i_pre - m_new), np.exp(f_pre + m - m_new)
                m = m_new
            else:
                i, f = np.exp(i_pre), np.exp(f_pre)
            c = f * c + i * np.tanh(z_pre)
            n = f * n + i
            h = sigmoid(o_pre) * c / n
            ys.append(h)
    return np.array(ys), (h, c, n, m)


def slstm(dtype=np.float64, seed=0, **kwargs):
    return gatekit.Cell(D, H, "slstm", dtype=dtype, seed=seed, **kwargs)


def random_state(B, rng, dtype):
    """A consistent state: n > 0 (it is a sum of exponentials) and c of n's order."""
    n = rng.uniform(0.5, 2.0, (B, H))
    h, c, m = (rng.uniform(-1, 1, (B, H)) for _ in range(3))
    return tuple(value.astype(dtype) for value in (h, n * c, n, m))


def test_preset_gates_and_memories():
    cell = slstm()
    assert cell.gate_names == {"forget": "slstm", "learn": "slstm", "remember": "standard",
                               "use": "slstm"}
    assert cell.memories == ("m", "n")          # forget's stabiliser, then use's normaliser
    assert {name: cell.params[name].shape for name in cell.params} == {
        **{f"W_{k}": (H, H + D) for k in "fivn"}, **{f"b_{k}": (H,) for k in "fivn"}}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_forward_matches_reference_and_equations(dtype):
    cell = slstm(dtype, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 3, D)).astype(dtype)
    # the cell's state order is (stm, ltm, m, n); the equations take (h, c, n, m)
    h0, c0, n0, m0 = random_state(3, rng, dtype)
    for state in (None, (h0, c0, m0, n0)):
        y, final = cell(x, state)
        assert [v.shape for v in final] == [(3, H)] * 4 and all(v.dtype == dtype for v in final)
        y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
        y_eq, (h, c, n, m) = slstm_equations(cell.params, x,
                                             None if state is None else (h0, c0, n0, m0))
        for what, got, ref, eq in zip(("y", "stm", "ltm", "m", "n"), (y, *final),
                                      (y_ref, *final_ref), (y_eq, h, c, m, n)):
            assert_close(dtype, got, ref, what)
            assert_close(dtype, got, eq, what)


def test_unstabilised_form_gives_the_same_outputs():
    cell = slstm(seed=2)
    x = np.random.default_rng(2).standard_normal((12, 3, D))
    y, (stm, ltm, m, n) = cell(x)
    y_plain, (h, c, n_plain, _) = slstm_equations(cell.params, x, stabilised=False)
    assert np.all(np.isfinite(y_plain))
    np.testing.assert_allclose(y, y_plain, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stm, h, rtol=1e-12, atol=1e-14)
    # c and n are the unstabilised ones scaled by exp(-m)
    np.testing.assert_allclose(ltm * np.exp(m), c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(n * np.exp(m), n_plain, rtol=1e-12)


def test_outputs_do_not_depend_on_the_stabiliser():
    cell = slstm(seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 2, D))
    # step 0 from m_0 = 0: the first output of both forms, whatever the max picks
    y0, _ = cell(x[:1])
    y_plain, _ = slstm_equations(cell.params, x[:1], stabilised=False)
    np.testing.assert_allclose(y0, y_plain, rtol=1e-13, atol=1e-15)
    # shifting m_0 by δ and scaling c_0, n_0 by exp(-δ) describes the same state
    h0, c0, n0, m0 = random_state(2, rng, np.float64)
    y, final = cell(x, (h0, c0, m0, n0))
    for shift in (-3.0, 0.7, 5.0):
        scale = np.exp(-shift)
        y_shifted, shifted = cell(x, (h0, c0 * scale, m0 + shift, n0 * scale))
        np.testing.assert_allclose(y_shifted, y, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(shifted[1] * np.exp(shifted[2]), final[1] * np.exp(final[2]),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_stays_finite_where_the_unstabilised_form_overflows(dtype):
    cell = slstm(dtype, seed=4)
    rng = np.random.default_rng(4)
    for k in "fi":     # pre-activations around 100: e^100 overflows float32, e^800 float64
        cell.params[f"b_{k}"] = 100 + rng.uniform(-5, 5, H)
    x = rng.standard_normal((10, 3, D)).astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        plain_y, _ = slstm_equations({k: v.astype(dtype) for k, v in cell.params.items()},
                                     x.astype(dtype), stabilised=False)
        plain64_y, _ = slstm_equations(cell.params, x, stabilised=False)
    assert not np.all(np.isfinite(plain64_y))                # overflows even in float64
    y, final = cell(x)
    assert np.all(np.isfinite(y)) and all(np.all(np.isfinite(v)) for v in final)
    y_eq, (h, c, n, m) = slstm_equations(cell.params, x)
    assert np.all(m > 100)
    for what, got, want in zip(("y", "stm", "ltm", "m", "n"), (y, *final), (y_eq, h, c, m, n)):
        assert_close(dtype, got, want, what)
    _, _, tape = cell.forward(x, keep=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dstm, dltm, dmemories = final_gradients(3, rng, dtype)
    grads = cell.backward(tape, dy, dstm, dltm, dmemories)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    want = reference.backward(cell, x, dy, None, dstm, dltm, np.float64, dmemories)
    assert_gradients_match(grads, want, dtype)


def test_gradients_against_finite_differences():
    cell = slstm(seed=5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2, D))
    h0, c0, n0, m0 = random_state(2, rng, np.float64)
    result = gradcheck(cell, x, (h0, c0, m0, n0))
    assert {"m0", "n0", "stm0", "ltm0", "x", "W_f", "W_i", "W_n", "W_v"} <= set(result.errors)
    assert gradcheck(cell, x)                         # from the default state: m = n = 0


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_backward_matches_reference(dtype):
    cell = slstm(dtype, seed=6)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 3, D)).astype(dtype)
    h0, c0, n0, m0 = random_state(3, rng, dtype)
    state = (h0, c0, m0, n0)
    dy = rng.standard_normal((7, 3, H)).astype(dtype)
    dfinal = [rng.standard_normal((3, H)).astype(dtype) for _ in range(4)]
    _, _, tape = cell.forward(x, state, keep=True)
    got = cell.backward(tape, dy, dfinal[0], dfinal[1], {"m": dfinal[2], "n": dfinal[3]})
    want = reference.backward(cell, x, dy, state, dfinal[0], dfinal[1], dtype=np.float64,
                              dmemories={"m": dfinal[2], "n": dfinal[3]})
    assert set(got) == set(want) == set(cell.params) | {"x", "stm0", "ltm0", "m0", "n0"}
    for name in want:
        assert rel_error(got[name], want[name]) < (F64_TOL if dtype == np.float64
                                                   else F32_GRAD_TOL), name


def test_gradient_of_the_max_at_a_tie():
    # W_f = W_i and b_f = b_i with m_0 = 0: f̃ + m_0 = ĩ in every unit at step 0, a tie. The
    # core sends m_t's gradient to the forget side there, as the reference does; the outputs
    # do not depend on m, so their loss is smooth at the tie and finite differences hold it.
    cell = slstm(seed=7)
    cell.params["W_i"] = cell.params["W_f"]
    cell.params["b_i"] = cell.params["b_f"]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 2, D))
    dy = rng.standard_normal((5, 2, H))
    _, _, tape = cell.forward(x, keep=True)
    assert np.all(tape.mem[1, 0] == tape.z[0, :, 0:H])     # m_1 = f̃_0 = ĩ_0 exactly
    dstm, dltm, dmemories = final_gradients(2, rng, np.float64)
    got = cell.backward(tape, dy, dstm, dltm, dmemories)
    assert_gradients_match(got, reference.backward(cell, x, dy, None, dstm, dltm,
                                                   dmemories=dmemories), np.float64)

    def loss():
        return np.sum(cell(x)[0] * dy)

    got = cell.backward(tape, dy)
    for name in ("W_f", "W_i", "b_f"):
        numeric = numerical_gradient(loss, cell.params[name])
        assert rel_error(got[name], numeric) < 1e-6, name
    # b_i shifts every ĩ alike, which y does not see (final_gradients): zero, to the rounding
    # of the differences (1e-16 |loss| / 1e-6)
    np.testing.assert_allclose(got["b_i"], 0, atol=1e-14)
    np.testing.assert_allclose(numerical_gradient(loss, cell.params["b_i"]), 0, atol=1e-8)


# --- Threads ---------------------------------------------------------------------------------

def threaded_call(dtype, team):
    """A cell and a call of it that the plan gives ``team`` threads (3: 48 units are 3 panels
    of 16 in float32, 6 of 8 in float64)."""
    cell = gatekit.Cell(16, 48, "slstm", dtype=dtype, seed=8, threads=team)
    B = 24
    return cell, steps_for_a_team(cell, B, team), B


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("team", [1, 2, 3])
def test_threads(team, dtype):
    cell, T, B = threaded_call(dtype, team)
    rng = np.random.default_rng(team)
    x = (0.5 * rng.standard_normal((T, B, 16))).astype(dtype)
    n0 = rng.uniform(0.5, 2.0, (B, 48))
    state = tuple(value.astype(dtype) for value in (
        rng.uniform(-1, 1, (B, 48)), n0 * rng.uniform(-1, 1, (B, 48)), rng.uniform(-1, 1, (B, 48)),
        n0))
    dy = rng.standard_normal((T, B, 48)).astype(dtype)
    dfinal = [rng.standard_normal((B, 48)).astype(dtype) for _ in range(4)]
    dmemories = {"m": dfinal[2], "n": dfinal[3]}
    y, final, tape = cell.forward(x, state, keep=True)
    y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
    for what, got, want in zip(("y", "stm", "ltm", "m", "n"), (y, *final), (y_ref, *final_ref)):
        assert_close(dtype, got, want, what)
    grads = cell.backward(tape, dy, dfinal[0], dfinal[1], dmemories)
    want = reference.backward(cell, x, dy, state, dfinal[0], dfinal[1], np.float64, dmemories)
    assert_gradients_match(grads, want, dtype)
    # a team gives one thread's bits
    alone = cell.copy()
    alone.threads = 1
    y1, final1, tape1 = alone.forward(x, state, keep=True)
    np.testing.assert_array_equal(y, y1)
    for got, want in zip(final, final1):
        np.testing.assert_array_equal(got, want)
    grads1 = alone.backward(tape1, dy, dfinal[0], dfinal[1], dmemories)
    for name in grads1:
        np.testing.assert_array_equal(grads[name], grads1[name], err_msg=name)


# --- Ragged batches, layers, trace, save and load --------------------------------------------

def test_ragged_batch():
    cell = slstm(seed=9)
    rng = np.random.default_rng(9)
    T, lengths = 7, np.array([3, 7, 1, 5])
    x = rng.standard_normal((T, 4, D))
    h0, c0, n0, m0 = random_state(4, rng, np.float64)
    state = (h0, c0, m0, n0)
    dy = rng.standard_normal((T, 4, H))
    dfinal = [rng.standard_normal((4, H)) for _ in range(4)]
    y, final, tape = cell.forward(x, state, keep=True, lengths=lengths)
    grads = cell.backward(tape, dy, dfinal[0], dfinal[1], dfinal[2:])
    total = {name: np.zeros_like(value) for name, value in cell.params.items()}
    for b, length in enumerate(lengths):
        one = slice(b, b + 1)
        alone = tuple(value[one] for value in state)
        y_b, final_b, tape_b = cell.forward(x[:length, one], alone, keep=True)
        y_eq, (h, c, n, m) = slstm_equations(cell.params, x[:length, one], (h0[one], c0[one],
                                                                             n0[one], m0[one]))
        np.testing.assert_allclose(y[:length, one], y_eq, rtol=0, atol=1e-12)
        assert np.all(y[length:, b] == 0)
        for got, want in zip(final, (h, c, m, n)):
            np.testing.assert_allclose(got[one], want, rtol=0, atol=1e-12)
        grads_b = cell.backward(tape_b, dy[:length, one], dfinal[0][one], dfinal[1][one],
                                [d[one] for d in dfinal[2:]])
        for name in ("stm0", "ltm0", "m0", "n0"):
            np.testing.assert_allclose(grads[name][one], grads_b[name], rtol=1e-10, atol=1e-13,
                                       err_msg=name)
        np.testing.assert_allclose(grads["x"][:length, one], grads_b["x"], rtol=1e-10,
                                   atol=1e-13)
        for name in total:
            total[name] += grads_b[name]
    for name in total:
        assert rel_error(grads[name], total[name]) < F64_TOL, name


def test_stacked_bidirectional_layer_composes_its_cells():
    lstm = gatekit.LSTM(D, H, num_layers=2, bidirectional=True, variant="slstm",
                        dtype=np.float64, seed=10)
    assert lstm.memories == ("m", "n")
    rng = np.random.default_rng(10)
    T, B, lengths = 6, 3, np.array([6, 2, 4])
    x = rng.standard_normal((T, B, D))
    states = [random_state(B, rng, np.float64) for _ in range(4)]
    h0, c0, n0, m0 = (np.stack([s[k] for s in states]) for k in range(4))
    y, final, tape = lstm.forward(x, (h0, c0, m0, n0), lengths=lengths, keep=True)
    assert len(final) == 4 and all(v.shape == (4, B, H) for v in final)
    # layer by layer from the equations, the reverse direction on each sequence reversed
    layer_input = x
    for layer in range(2):
        outputs = []
        for direction in range(2):
            k = 2 * layer + direction
            cell = lstm.cells[lstm.cell_names[k]]
            for b, length in enumerate(lengths):
                one = slice(b, b + 1)
                seen = layer_input[:length, one]
                if direction:
                    seen = seen[::-1]
                y_eq, (h, c, n, m) = slstm_equations(cell.params, seen,
                                                     (h0[k, one], c0[k, one], n0[k, one],
                                                      m0[k, one]))
                for got, want in zip((v[k, one] for v in final), (h, c, m, n)):
                    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
            y_cell = np.zeros((T, B, H))
            for b, length in enumerate(lengths):
                one = slice(b, b + 1)
                seen = layer_input[:length, one][::-1] if direction else layer_input[:length, one]
                y_b, _ = slstm_equations(cell.params, seen, (h0[k, one], c0[k, one], n0[k, one],
                                                             m0[k, one]))
                y_cell[:length, one] = y_b[::-1] if direction else y_b
            outputs.append(y_cell)
        layer_input = np.concatenate(outputs, axis=2)
    np.testing.assert_allclose(y, layer_input, rtol=0, atol=1e-12)
    # gradients, initial memories included, against finite differences of the layer
    dy = rng.standard_normal(y.shape)
    dm = rng.standard_normal((4, B, H))
    grads = lstm.backward(tape, dy, (None, None, dm, None))
    assert grads["m0"].shape == grads["n0"].shape == (4, B, H)

    def loss():
        y_now, (_, _, m_now, _) = lstm(x, (h0, c0, m0, n0), lengths=lengths)
        return np.sum(y_now * dy) + np.sum(m_now * dm)

    for name, array in (("n0", n0), ("m0", m0), ("l1_reverse.W_f", lstm.params["l1_reverse.W_f"])):
        numeric = numerical_gradient(loss, array)
        assert rel_error(grads[name], numeric) < 1e-6, name
    # a pair leaves the memories at their initial values, zeros
    y_pair, final_pair = lstm(x, (h0, c0), lengths=lengths)
    y_zero, final_zero = lstm(x, (h0, c0, np.zeros_like(m0), np.zeros_like(n0)), lengths=lengths)
    np.testing.assert_array_equal(y_pair, y_zero)
    for got, want in zip(final_pair, final_zero):
        np.testing.assert_array_equal(got, want)


def test_reverse_direction_alone_matches_reversed_sequences():
    lstm = gatekit.LSTM(D, H, bidirectional=True, variant="slstm", dtype=np.float64, seed=11)
    rng = np.random.default_rng(11)
    lengths = np.array([5, 3])
    x = rng.standard_normal((5, 2, D))
    y, (_, _, m, n) = lstm(x, lengths=lengths)
    reverse = lstm.cells["l0_reverse"]
    y_rev, (_, _, m_rev, n_rev) = reverse(reverse_each(x, lengths), lengths=lengths)
    np.testing.assert_allclose(y[:, :, H:], reverse_each(y_rev, lengths), rtol=0, atol=1e-13)
    np.testing.assert_array_equal(m[1], m_rev)
    np.testing.assert_array_equal(n[1], n_rev)


def test_trace_gives_the_memories():
    cell = slstm(seed=12)
    x = np.random.default_rng(12).standard_normal((5, 2, D))
    traced = cell.trace(x)
    state = (np.zeros((2, H)),) * 2
    memories = {"m": np.zeros((2, H)), "n": np.zeros((2, H))}
    for t in range(5):
        quantities = reference.step(cell, x[t], *state, memories=memories)
        for name in ("f_t", "i_t", "N_t", "LTM_t", "U_t", "V_t", "STM_t", "m_t", "n_t"):
            np.testing.assert_allclose(traced[name][t], quantities[name], rtol=0, atol=1e-12,
                                       err_msg=name)
        state = (quantities["STM_t"], quantities["LTM_t"])
        memories = {"m": quantities["m_t"], "n": quantities["n_t"]}


def test_save_and_load_round_trip(tmp_path):
    for model in (slstm(np.float32, seed=13),
                  gatekit.LSTM(D, H, num_layers=2, bidirectional=True, variant="slstm", seed=13)):
        path = tmp_path / "slstm.npz"
        gatekit.save(model, path)
        loaded = gatekit.load(path)
        assert loaded.memories == ("m", "n") and loaded.gate_names == model.gate_names
        x = np.random.default_rng(13).standard_normal((4, 2, D)).astype(np.float32)
        y, final = model(x)
        y_loaded, final_loaded = loaded(x)
        np.testing.assert_array_equal(y_loaded, y)
        assert len(final_loaded) == 4
        for got, want in zip(final_loaded, final):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("gate", ["forget", "learn", "use"])
def test_check_gate_accepts_the_slstm_gates(gate):
    check_gate(plugins.registry().gates[gate]["slstm"].cls, variant="slstm")


def test_learn_gate_needs_the_forget_gate_that_makes_its_input_factor():
    with pytest.raises(ValueError, match="learn gate 'slstm' reads i_t"):
        gatekit.Cell(D, H, "slstm", forget="standard")


def test_load_refuses_a_file_whose_memories_the_gates_no_longer_keep(tmp_path):
    path = tmp_path / "slstm.npz"
    gatekit.save(slstm(seed=14), path)
    with np.load(path) as stored:
        entries = {name: stored[name] for name in stored.files}
    meta = json.loads(str(entries["meta"]))
    assert meta["memories"] == ["m", "n"]
    meta["memories"] = ["n"]
    entries["meta"] = np.array(json.dumps(meta))
    np.savez(path, **entries)
    with pytest.raises(LoadError, match=r"extra memories \('n',\).*keep \('m', 'n'\)"):
        gatekit.load(path)
