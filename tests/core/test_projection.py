"""A cell with a projected STM (``proj_size=P``, LSTM with projection, Sak et al. 2014): the
compiled loop against the NumPy reference, against the equations written here, and against
finite differences; float32 and float64, 1, 2 and 3 threads, ragged batches, layers stacked
and bidirectional; and the compositions it refuses."""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.testing import gradcheck

from support import F32_ATOL, F32_RTOL, F64_ATOL, make_plugin, run_in_threads


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def projected_lstm(params, x, stm0, ltm0, lengths=None):
    """LSTM with projection, written from its equations (REFERENCE.md): with h_{t-1} the P-wide
    STM, f = σ(W_f [h, x] + b_f), i = σ(W_i [h, x] + b_i), g = tanh(W_n [h, x] + b_n),
    o = σ(W_v [h, x] + b_v), c_t = f c_{t-1} + i g, h_t = W_hr (o tanh(c_t)); a ragged sequence
    keeps its memories after its length. Returns y (padded steps zero), h_T, c_T."""
    h, c = stm0.copy(), ltm0.copy()
    T, B, _ = x.shape
    ys = np.zeros((T, B, stm0.shape[1]))
    for t in range(T):
        hx = np.concatenate([h, x[t]], axis=1)
        f = sigmoid(hx @ params["W_f"].T + params["b_f"])
        i = sigmoid(hx @ params["W_i"].T + params["b_i"])
        g = np.tanh(hx @ params["W_n"].T + params["b_n"])
        o = sigmoid(hx @ params["W_v"].T + params["b_v"])
        c_new = f * c + i * g
        h_new = (o * np.tanh(c_new)) @ params["W_hr"].T
        live = np.ones(B, bool) if lengths is None else t < np.asarray(lengths)
        h = np.where(live[:, None], h_new, h)
        c = np.where(live[:, None], c_new, c)
        ys[t] = np.where(live[:, None], h, 0)
    return ys, h, c


def inputs(cell, T, B, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, cell.input_size))
    state = (rng.standard_normal((B, cell.proj_size)) * 0.5,
             rng.standard_normal((B, cell.hidden_size)) * 0.5)
    return x, state


def params64(cell):
    return {name: np.asarray(value, np.float64) for name, value in cell.params.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("sizes", [(3, 5, 2), (4, 6, 9), (7, 32, 12)])
def test_forward_matches_the_equations_and_the_reference(dtype, threads, sizes):
    D, H, P = sizes
    cell = gatekit.Cell(D, H, proj_size=P, dtype=dtype, seed=1, threads=threads)
    x, state = inputs(cell, 9, 3, seed=2)
    y, (stm, ltm) = cell(x, state)
    assert y.shape == (9, 3, P) and stm.shape == (3, P) and ltm.shape == (3, H)
    assert y.dtype == dtype
    expected_y, expected_h, expected_c = projected_lstm(params64(cell), x, *state)
    ref_y, (ref_h, ref_c) = reference.forward(cell, x, state, dtype=np.float64)
    tol = dict(atol=F64_ATOL, rtol=0) if dtype == np.float64 else dict(atol=F32_ATOL,
                                                                        rtol=F32_RTOL)
    for got, equations, ref in ((y, expected_y, ref_y), (stm, expected_h, ref_h),
                                (ltm, expected_c, ref_c)):
        np.testing.assert_allclose(ref, equations, atol=1e-12, rtol=0)
        np.testing.assert_allclose(got, equations, **tol)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_ragged_batch_matches_the_equations(threads):
    cell = gatekit.Cell(3, 6, proj_size=4, dtype=np.float64, seed=3, threads=threads)
    x, state = inputs(cell, 8, 4, seed=4)
    lengths = [8, 3, 1, 5]
    y, (stm, ltm) = cell(x, state, lengths=lengths)
    expected_y, expected_h, expected_c = projected_lstm(params64(cell), x, *state, lengths)
    np.testing.assert_allclose(y, expected_y, atol=F64_ATOL, rtol=0)
    np.testing.assert_allclose(stm, expected_h, atol=F64_ATOL, rtol=0)
    np.testing.assert_allclose(ltm, expected_c, atol=F64_ATOL, rtol=0)


def test_trace_gives_the_projected_stm_and_u_times_v():
    cell = gatekit.Cell(3, 5, proj_size=2, dtype=np.float64, seed=5)
    x, state = inputs(cell, 4, 2, seed=6)
    trace = cell.trace(x, state)
    y, _ = cell(x, state)
    np.testing.assert_array_equal(trace["STM_t"], y)
    np.testing.assert_allclose(trace["UV_t"], trace["U_t"] * trace["V_t"], atol=1e-15, rtol=0)
    np.testing.assert_allclose(trace["STM_t"], trace["UV_t"] @ cell.params["W_hr"].T,
                               atol=1e-14, rtol=0)


def equation_gradients(params, x, stm0, ltm0, dy, dstm, dltm):
    """Backpropagation through the equations of projected_lstm, written out here."""
    T, B, _ = x.shape
    P = stm0.shape[1]
    hs, cs, steps = [stm0], [ltm0], []
    for t in range(T):
        hx = np.concatenate([hs[-1], x[t]], axis=1)
        f = sigmoid(hx @ params["W_f"].T + params["b_f"])
        i = sigmoid(hx @ params["W_i"].T + params["b_i"])
        g = np.tanh(hx @ params["W_n"].T + params["b_n"])
        o = sigmoid(hx @ params["W_v"].T + params["b_v"])
        c = f * cs[-1] + i * g
        m = o * np.tanh(c)
        steps.append((hx, f, i, g, o, c, m))
        cs.append(c)
        hs.append(m @ params["W_hr"].T)
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    grads["x"] = np.zeros_like(x)
    dh_next, dc_next = dstm.copy(), dltm.copy()
    for t in reversed(range(T)):
        hx, f, i, g, o, c, m = steps[t]
        dh = dy[t] + dh_next
        grads["W_hr"] += dh.T @ m
        dm = dh @ params["W_hr"]
        do = dm * np.tanh(c)
        dc = dc_next + dm * o * (1 - np.tanh(c) ** 2)
        dz = {"f": dc * cs[t] * f * (1 - f), "i": dc * g * i * (1 - i),
              "n": dc * i * (1 - g ** 2), "v": do * o * (1 - o)}
        dhx = np.zeros_like(hx)
        for block, d in dz.items():
            grads[f"W_{block}"] += d.T @ hx
            grads[f"b_{block}"] += d.sum(axis=0)
            dhx += d @ params[f"W_{block}"]
        dh_next, dc_next = dhx[:, :P], dc * f
        grads["x"][t] = dhx[:, P:]
    grads["stm0"], grads["ltm0"] = dh_next, dc_next
    return grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_backward_matches_the_equations_and_the_reference(dtype, threads):
    cell = gatekit.Cell(4, 7, proj_size=3, dtype=dtype, seed=7, threads=threads)
    x, state = inputs(cell, 6, 3, seed=8)
    rng = np.random.default_rng(9)
    dy, dstm, dltm = (rng.standard_normal((6, 3, 3)), rng.standard_normal((3, 3)),
                      rng.standard_normal((3, 7)))
    _, _, tape = cell.forward(x, state, keep=True)
    grads = cell.backward(tape, dy, dstm, dltm)
    expected = equation_gradients(params64(cell), x, *state, dy, dstm, dltm)
    ref = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64)
    assert set(grads) == set(cell.params) | {"x", "stm0", "ltm0"}
    assert grads["W_hr"].shape == (3, 7) and grads["W_f"].shape == (7, 3 + 4)
    tol = dict(atol=F64_ATOL, rtol=0) if dtype == np.float64 else dict(atol=F32_ATOL,
                                                                        rtol=F32_RTOL)
    for name in grads:
        np.testing.assert_allclose(ref[name], expected[name], atol=1e-12, rtol=0, err_msg=name)
        np.testing.assert_allclose(grads[name], expected[name], **tol, err_msg=name)


@pytest.mark.parametrize("threads", [1, 3])
def test_ragged_backward_matches_the_reference_on_each_sequence(threads):
    # The reference has no lengths: each sequence alone, cut to its length, is the oracle.
    cell = gatekit.Cell(3, 5, proj_size=2, dtype=np.float64, seed=10, threads=threads)
    x, state = inputs(cell, 7, 3, seed=11)
    lengths = [7, 2, 4]
    rng = np.random.default_rng(12)
    dy, dstm, dltm = (rng.standard_normal((7, 3, 2)), rng.standard_normal((3, 2)),
                      rng.standard_normal((3, 5)))
    _, _, tape = cell.forward(x, state, keep=True, lengths=lengths)
    grads = cell.backward(tape, dy, dstm, dltm)
    total = {name: np.zeros_like(value) for name, value in grads.items() if name in cell.params}
    for b, n in enumerate(lengths):
        one = reference.backward(cell, x[:n, b:b + 1], dy[:n, b:b + 1],
                                 (state[0][b:b + 1], state[1][b:b + 1]), dstm[b:b + 1],
                                 dltm[b:b + 1], dtype=np.float64)
        for name in total:
            total[name] += one[name]
        np.testing.assert_allclose(grads["x"][:n, b], one["x"][:, 0], atol=F64_ATOL, rtol=0)
        np.testing.assert_array_equal(grads["x"][n:, b], 0)
        np.testing.assert_allclose(grads["stm0"][b], one["stm0"][0], atol=F64_ATOL, rtol=0)
        np.testing.assert_allclose(grads["ltm0"][b], one["ltm0"][0], atol=F64_ATOL, rtol=0)
    for name, value in total.items():
        np.testing.assert_allclose(grads[name], value, atol=F64_ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_match_finite_differences(dtype):
    cell = gatekit.Cell(3, 5, proj_size=2, dtype=dtype, seed=13)
    x, state = inputs(cell, 5, 2, seed=14)
    gradcheck(cell, x, state)


def test_gradients_of_a_composition_with_its_own_products_match_finite_differences():
    # course: a use gate with a product of its own (W_u (LTM_{t-1} ⊙ f_t)); peephole gates
    # read the LTM unit by unit, never the STM: both compose with a projection.
    for variant in ("course", "peephole", "cifg"):
        cell = gatekit.Cell(3, 4, variant, proj_size=3, dtype=np.float64, seed=15)
        x, state = inputs(cell, 4, 2, seed=16)
        gradcheck(cell, x, state)
        y, (stm, ltm) = cell(x, state)
        ref_y, (ref_stm, ref_ltm) = reference.forward(cell, x, state)
        np.testing.assert_allclose(y, ref_y, atol=F64_ATOL, rtol=0)


def test_a_block_that_reads_the_stm_only_reads_p_columns():
    # The GRU's blocks read the STM, but its use gate makes the STM the LTM: refused. A
    # composition of the standard cell with learn gate 'reset' keeps W_hn (H, P).
    cell = gatekit.Cell(3, 5, "standard", learn="reset", proj_size=2, dtype=np.float64, seed=17)
    assert cell.params["W_hn"].shape == (5, 2)
    assert cell.params["W_r"].shape == (5, 2 + 3)
    x, state = inputs(cell, 5, 2, seed=18)
    y, (stm, ltm) = cell(x, state)
    ref_y, (ref_stm, ref_ltm) = reference.forward(cell, x, state)
    np.testing.assert_allclose(y, ref_y, atol=F64_ATOL, rtol=0)
    gradcheck(cell, x, state)


@pytest.mark.parametrize("options, named", [
    (dict(variant="mgu"), "learn gate 'mgu'"),
    (dict(variant="mut1"), "learn gate 'mut1'"),
    (dict(variant="gru"), "use gate 'memory'"),
    (dict(variant="standard", learn="mgu"), "learn gate 'mgu'"),
])
def test_gates_that_read_the_stm_unit_by_unit_are_refused(options, named):
    D = 5
    with pytest.raises(ValueError, match="proj_size") as error:
        gatekit.Cell(D, 5, proj_size=2, **options)
    assert named in str(error.value)


def test_regularisers_and_extra_memories_are_refused_with_a_projection():
    with pytest.raises(ValueError, match="zoneout"):
        gatekit.Cell(3, 5, proj_size=2, zoneout=(0.1, 0.1))
    with pytest.raises(ValueError, match="recurrent_dropout"):
        gatekit.Cell(3, 5, proj_size=2, recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="extra memories"):
        gatekit.Cell(3, 5, "slstm", proj_size=2)
    for bad in (0, -1, 2.5, "2"):
        with pytest.raises((TypeError, ValueError), match="proj_size"):
            gatekit.Cell(3, 5, proj_size=bad)


def test_a_state_of_the_wrong_width_is_refused_naming_it():
    cell = gatekit.Cell(3, 5, proj_size=2)
    x = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"state\[0\] \(stm\).*\(2, 2\)"):
        cell(x, (np.zeros((2, 5)), np.zeros((2, 5))))
    _, _, tape = cell.forward(x, keep=True)
    with pytest.raises(ValueError, match=r"dy.*\(4, 2, 2\)"):
        cell.backward(tape, np.zeros((4, 2, 5)))


def test_cells_without_projection_are_unchanged():
    cell = gatekit.Cell(3, 5, seed=19)
    assert cell.proj_size is None and "W_hr" not in cell.params
    assert cell.params["W_f"].shape == (5, 8)
    assert "proj_size" not in repr(cell)
    assert "proj_size=2" in repr(gatekit.Cell(3, 5, proj_size=2))


def test_copy_keeps_the_projection():
    cell = gatekit.Cell(3, 5, proj_size=2, seed=20)
    other = cell.copy(np.float64)
    assert other.proj_size == 2
    np.testing.assert_array_equal(other.params["W_hr"], cell.params["W_hr"])


def test_backward_refuses_a_changed_projection():
    cell = gatekit.Cell(3, 5, proj_size=2, dtype=np.float64, seed=21)
    x, state = inputs(cell, 3, 2, seed=22)
    _, _, tape = cell.forward(x, state, keep=True)
    cell.params["W_hr"][0, 0] += 1
    with pytest.raises(ValueError, match="W_hr"):
        cell.backward(tape, np.zeros((3, 2, 2)))


# --- Layers -------------------------------------------------------------------------------------

def layer_oracle(lstm, x, state, lengths=None):
    """The layer from the equations: each cell's projected_lstm, the reverse direction over
    each sequence reversed within its length, layers fed the concatenated outputs."""
    T, B, _ = x.shape
    P = lstm.proj_size
    stm0, ltm0 = state
    layer_input, k = x, 0
    finals_h, finals_c = [], []
    lengths_ = [T] * B if lengths is None else list(lengths)
    for _ in range(lstm.num_layers):
        outputs = []
        for direction in range(lstm.directions):
            params = params64(lstm.cells[lstm.cell_names[k]])
            if direction == 0:
                y, h, c = projected_lstm(params, layer_input, stm0[k], ltm0[k], lengths)
            else:
                y = np.zeros((T, B, P))
                h, c = np.empty((B, P)), np.empty((B, lstm.hidden_size))
                for b, n in enumerate(lengths_):
                    one, h[b], c[b] = projected_lstm(params, layer_input[:n, b:b + 1][::-1],
                                                     stm0[k][b:b + 1], ltm0[k][b:b + 1])
                    y[:n, b] = one[::-1, 0]
            outputs.append(y)
            finals_h.append(h)
            finals_c.append(c)
            k += 1
        layer_input = np.concatenate(outputs, axis=2)
    return layer_input, np.stack(finals_h), np.stack(finals_c)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_layers_match_the_equations(bidirectional, threads):
    lstm = gatekit.LSTM(3, 6, 2, bidirectional=bidirectional, proj_size=4, dtype=np.float64,
                        seed=23, threads=threads)
    D = lstm.directions
    assert lstm.cells["l1"].input_size == D * 4
    rng = np.random.default_rng(24)
    x = rng.standard_normal((7, 3, 3))
    state = (rng.standard_normal((2 * D, 3, 4)) * 0.5, rng.standard_normal((2 * D, 3, 6)) * 0.5)
    for lengths in (None, [7, 2, 5]):
        y, (stm, ltm) = lstm(x, state, lengths=lengths)
        assert y.shape == (7, 3, D * 4) and stm.shape == (2 * D, 3, 4)
        expected = layer_oracle(lstm, x, state, lengths)
        for got, want in zip((y, stm, ltm), expected):
            np.testing.assert_allclose(got, want, atol=F64_ATOL, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_gradients_match_finite_differences(bidirectional):
    lstm = gatekit.LSTM(2, 4, 2, bidirectional=bidirectional, proj_size=3, dtype=np.float64,
                        seed=25)
    D = lstm.directions
    rng = np.random.default_rng(26)
    x = rng.standard_normal((4, 2, 2))
    state = (rng.standard_normal((2 * D, 2, 3)) * 0.5, rng.standard_normal((2 * D, 2, 4)) * 0.5)
    lengths = [4, 2]
    dy = rng.standard_normal((4, 2, D * 3))
    dstm, dltm = rng.standard_normal((2 * D, 2, 3)), rng.standard_normal((2 * D, 2, 4))

    def loss():
        y, (stm, ltm) = lstm(x, state, lengths=lengths)
        return np.sum(y * dy) + np.sum(stm * dstm) + np.sum(ltm * dltm)

    _, _, tape = lstm.forward(x, state, lengths=lengths, keep=True)
    grads = lstm.backward(tape, dy, (dstm, dltm))
    assert grads["stm0"].shape == (2 * D, 2, 3) and grads["ltm0"].shape == (2 * D, 2, 4)
    checked = {**lstm.params, "x": x, "stm0": state[0], "ltm0": state[1]}
    for name, array in checked.items():
        for index in rng.choice(array.size, size=min(6, array.size), replace=False):
            position = np.unravel_index(index, array.shape)
            kept = array[position]
            array[position] = kept + 1e-6
            plus = loss()
            array[position] = kept - 1e-6
            minus = loss()
            array[position] = kept
            numeric = (plus - minus) / 2e-6
            assert abs(grads[name][position] - numeric) <= 1e-6 * max(1, abs(numeric)), (
                name, position, grads[name][position], numeric)


# --- Threads: a call large enough splits its units and its projection between threads --------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_crew_of_threads_matches_the_equations_forward_and_backward(dtype, threads):
    from gatekit.core import _projection
    T, B, D, H, P = 60, 16, 16, 64, 30          # P not a multiple of the threads
    cell = gatekit.Cell(D, H, proj_size=P, dtype=dtype, seed=27, threads=threads)
    assert _projection.crew_size(T, B, D, H, P, 4 * H, threads, cell.gates) == threads
    x, state = inputs(cell, T, B, seed=28)
    lengths = np.random.default_rng(29).integers(1, T + 1, B)
    rng = np.random.default_rng(30)
    dy, dstm, dltm = (rng.standard_normal((T, B, P)), rng.standard_normal((B, P)),
                      rng.standard_normal((B, H)))
    y, (stm, ltm), tape = cell.forward(x, state, keep=True, lengths=lengths)
    grads = cell.backward(tape, dy, dstm, dltm)
    expected_y, expected_h, expected_c = projected_lstm(params64(cell), x, *state, lengths)
    tol = dict(atol=F64_ATOL, rtol=0) if dtype == np.float64 else dict(atol=1e-4, rtol=1e-3)
    for got, want in ((y, expected_y), (stm, expected_h), (ltm, expected_c)):
        np.testing.assert_allclose(got, want, **tol)
    # the ragged batch's gradients: each sequence alone, cut to its length, by the equations
    total = {name: np.zeros_like(value) for name, value in params64(cell).items()}
    for b, n in enumerate(lengths):
        one = equation_gradients(params64(cell), x[:n, b:b + 1], state[0][b:b + 1],
                                 state[1][b:b + 1], dy[:n, b:b + 1], dstm[b:b + 1],
                                 dltm[b:b + 1])
        for name in total:
            total[name] += one[name]
        np.testing.assert_allclose(grads["x"][:n, b], one["x"][:, 0], **tol)
        np.testing.assert_allclose(grads["stm0"][b], one["stm0"][0], **tol)
        np.testing.assert_allclose(grads["ltm0"][b], one["ltm0"][0], **tol)
    for name, value in total.items():
        scale = max(1.0, np.abs(value).max())
        np.testing.assert_allclose(grads[name] / scale, value / scale, **tol, err_msg=name)


def test_a_crew_gives_the_bits_of_one_thread():
    x, state = None, None
    results = []
    for threads in (1, 2, 3):
        cell = gatekit.Cell(16, 64, proj_size=30, dtype=np.float64, seed=31, threads=threads)
        if x is None:
            x, state = inputs(cell, 60, 16, seed=32)
        y, final, tape = cell.forward(x, state, keep=True)
        grads = cell.backward(tape, np.ones_like(y))
        results.append((y, final, grads))
    for y, final, grads in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(final[1], results[0][1][1])
        for name, value in grads.items():
            np.testing.assert_array_equal(value, results[0][2][name], err_msg=name)


def test_gates_with_barriers_of_their_own_run_the_call_on_one_thread():
    from gatekit.core import _projection
    cell = gatekit.Cell(16, 64, "course", proj_size=30, dtype=np.float64, seed=33, threads=3)
    assert _projection.crew_size(60, 16, 16, 64, 30, 4 * 64, 3, cell.gates) == 1
    x, state = inputs(cell, 60, 4, seed=34)
    y, _ = cell(x, state)
    ref_y, _ = reference.forward(cell, x, state)
    np.testing.assert_allclose(y, ref_y, atol=F64_ATOL, rtol=0)


class HollowForget(gatekit.Gate):
    """A compiled gate (a Python subclass of Gate, not PythonGate) with no forward: every
    thread of the crew finds it fails at the first step."""
    role, name, blocks = "forget", "projection_hollow_forget", ("f",)
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget)


@pytest.mark.parametrize("threads", [2, 3])
def test_a_gate_failing_in_a_crew_raises_and_does_not_hang(register, threads):
    from gatekit.core import _projection
    register(make_plugin(gates=[HollowForget]), name="test-projection-hollow")
    T, B, D, H, P = 60, 16, 16, 64, 30
    cell = gatekit.Cell(D, H, proj_size=P, forget=HollowForget.name, seed=33, threads=threads)
    assert _projection.crew_size(T, B, D, H, P, 4 * H, threads, cell.gates) == threads
    x, state = inputs(cell, T, B, seed=34)
    for keep in (False, True):                       # twice: the error is not left behind
        with pytest.raises(NotImplementedError, match="computes nothing") as info:
            run_in_threads([lambda: cell.forward(x, state, keep=keep)])
        assert any("forget gate" in note and "at time step 0" in note
                   for note in getattr(info.value, "__notes__", [])), info.value
    # The crew still runs a good cell afterwards, on threads.
    good = gatekit.Cell(D, H, proj_size=P, seed=33, threads=threads)
    y, (stm, ltm) = run_in_threads([lambda: good(x, state)])[0]
    expected_y, expected_h, expected_c = projected_lstm(params64(good), x, *state)
    for got, want in ((y, expected_y), (stm, expected_h), (ltm, expected_c)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)

