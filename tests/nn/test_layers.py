"""gatekit.LSTM: stacked and bidirectional layers of cells, ragged batches and dropout.

Oracles: the NumPy reference equations (gatekit.reference) composed layer by layer with a
per-sequence Python reversal; every sequence of a ragged batch run alone; centred finite
differences (Richardson-extrapolated, as gatekit.testing.gradcheck does). PyTorch's nn.LSTM is
the oracle in tests/io/test_interop.py.
"""
import warnings

import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.nn import optimisers as optim

from support import F64_ATOL, centred_difference, frozen, rel_error, reverse_each

VARIANTS = ["standard", "course", "literal", "peephole", "cifg", "janet", "nig"]


def reference_lstm(lstm, x, state=None):
    """The layer from the NumPy reference equations: every layer and direction, full-length
    sequences, (T, B, D) input. Returns y and the final (stm, ltm) in PyTorch's layout."""
    D = lstm.directions
    stm, ltm = [], []
    inputs = x
    for layer in range(lstm.num_layers):
        outputs = []
        for direction in range(D):
            k = layer * D + direction
            cell = lstm.cell(layer, reverse=bool(direction))
            s = None if state is None else (state[0][k], state[1][k])
            seen = inputs if direction == 0 else inputs[::-1]
            y, (h, c) = reference.forward(cell, seen, s, dtype=np.float64)
            outputs.append(y if direction == 0 else y[::-1])
            stm.append(h)
            ltm.append(c)
        inputs = np.concatenate(outputs, axis=2)
    return inputs, (np.stack(stm), np.stack(ltm))


def draw_state(rng, lstm, B):
    shape = (lstm.directions * lstm.num_layers, B, lstm.hidden_size)
    stm, ltm = rng.standard_normal(shape), rng.standard_normal(shape)
    if lstm.cell(0).one_memory:         # its STM is its LTM: one memory, given twice
        ltm = stm.copy()
    return stm, ltm


# --- shapes and parameters -----------------------------------------------------------------------

@pytest.mark.parametrize("num_layers, bidirectional, batch_first",
                         [(1, False, False), (2, True, False), (3, False, True), (2, True, True)])
def test_shapes_are_pytorchs(num_layers, bidirectional, batch_first):
    T, B, D, H = 5, 3, 4, 6
    lstm = gatekit.LSTM(D, H, num_layers, bidirectional=bidirectional, batch_first=batch_first,
                        seed=0)
    x = np.zeros((B, T, D) if batch_first else (T, B, D), np.float32)
    y, (stm, ltm) = lstm(x)
    dirs = 2 if bidirectional else 1
    assert y.shape == ((B, T, dirs * H) if batch_first else (T, B, dirs * H))
    assert stm.shape == ltm.shape == (dirs * num_layers, B, H)
    assert y.dtype == stm.dtype == np.float32
    assert lstm.cell_names == [f"l{k}{s}" for k in range(num_layers)
                               for s in (("", "_reverse") if bidirectional else ("",))]
    for k in range(num_layers):
        assert lstm.cell(k).input_size == (D if k == 0 else dirs * H)


def test_params_are_named_views_on_the_cells():
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, variant="peephole", seed=0)
    assert set(lstm.params) == {f"{name}.{symbol}" for name in ("l0", "l0_reverse", "l1",
                                                                "l1_reverse")
                                for symbol in lstm.cell(0).params}
    assert lstm.params["l1_reverse.W_f"].shape == (4, 4 + 8)
    lstm.params["l1_reverse.b_f"][...] = 7.0
    assert np.all(lstm.cell(1, reverse=True).params["b_f"] == 7.0)
    lstm.params["l0.p_i"] = np.arange(4.0)
    assert np.array_equal(lstm.cell(0).params["p_i"], np.arange(4.0))
    # Each cell draws its own parameters: no two directions or layers start equal.
    assert not np.array_equal(lstm.params["l0.W_f"], lstm.params["l0_reverse.W_f"])
    # The same seed draws the same layer.
    again = gatekit.LSTM(3, 4, 2, bidirectional=True, variant="peephole", seed=0)
    assert np.array_equal(again.params["l0_reverse.W_n"], lstm.params["l0_reverse.W_n"])


# --- forward against the NumPy reference -------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_reference_equations(variant):
    T, B, D, H = 6, 2, 3, 4
    lstm = gatekit.LSTM(D, H, 2, bidirectional=True, variant=variant, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, D))
    state = draw_state(rng, lstm, B)
    y, (stm, ltm) = lstm(x, state)
    y_ref, (stm_ref, ltm_ref) = reference_lstm(lstm, x, state)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stm, stm_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ltm, ltm_ref, rtol=0, atol=1e-12)


def test_float32_forward_matches_float64_reference():
    lstm = gatekit.LSTM(3, 5, 2, bidirectional=True, dtype=np.float32, seed=3)
    x = np.random.default_rng(3).standard_normal((30, 4, 3)).astype(np.float32)
    y, _ = lstm(x)
    y_ref, _ = reference_lstm(lstm, x)
    assert rel_error(y, y_ref) < 1e-5


def test_batch_first_is_a_transpose():
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, dtype=np.float64, seed=4)
    x = np.random.default_rng(4).standard_normal((7, 3, 3))
    y, (stm, ltm) = lstm(x)
    y_ref, _ = reference_lstm(lstm, x)
    lstm.batch_first = True
    y_bf, (stm_bf, ltm_bf) = lstm(x.transpose(1, 0, 2))
    np.testing.assert_allclose(y_bf, y_ref.transpose(1, 0, 2), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(stm_bf, stm)
    np.testing.assert_array_equal(ltm_bf, ltm)


# --- ragged batches: every sequence run alone --------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("variant", ["standard", "peephole", "course"])
def test_ragged_batch_equals_each_sequence_alone(variant, dtype, tol):
    T, D, H = 7, 3, 4
    lengths = np.array([4, 7, 1, 5, 7, 2])         # unsorted, with repeats and a 1
    B = len(lengths)
    lstm = gatekit.LSTM(D, H, 2, bidirectional=True, variant=variant, dtype=dtype, seed=5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = tuple(s.astype(dtype) for s in draw_state(rng, lstm, B))
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    dstate = tuple(s.astype(dtype) for s in draw_state(rng, lstm, B))

    y, (stm, ltm), tape = lstm.forward(x, state, lengths=lengths, keep=True)
    grads = lstm.backward(tape, dy, dstate)

    summed = {name: np.zeros(p.shape) for name, p in lstm.params.items()}
    for b, L in enumerate(lengths):
        one = slice(b, b + 1)
        y1, (stm1, ltm1), tape1 = lstm.forward(
            x[:L, one], (state[0][:, one], state[1][:, one]), keep=True)
        g1 = lstm.backward(tape1, dy[:L, one], (dstate[0][:, one], dstate[1][:, one]))
        assert rel_error(y[:L, b], y1[:, 0]) <= tol
        assert np.all(y[L:, b] == 0), "padded outputs must be zeros"
        assert rel_error(stm[:, b], stm1[:, 0]) <= tol
        assert rel_error(ltm[:, b], ltm1[:, 0]) <= tol
        assert rel_error(grads["x"][:L, b], g1["x"][:, 0]) <= tol
        assert np.all(grads["x"][L:, b] == 0), "padded inputs must get no gradient"
        assert rel_error(grads["stm0"][:, b], g1["stm0"][:, 0]) <= tol
        assert rel_error(grads["ltm0"][:, b], g1["ltm0"][:, 0]) <= tol
        for name in summed:
            summed[name] += g1[name]
    bad = {name: rel_error(grads[name], summed[name]) for name in summed
           if not rel_error(grads[name], summed[name]) <= tol}
    assert not bad, bad


def test_padding_content_changes_nothing():
    lstm = gatekit.LSTM(2, 3, 2, bidirectional=True, dtype=np.float64, seed=6)
    rng = np.random.default_rng(6)
    lengths = np.array([3, 6, 2])
    x = rng.standard_normal((6, 3, 2))
    noisy = x.copy()
    for b, L in enumerate(lengths):
        noisy[L:, b] = 1e3 * rng.standard_normal((6 - L, 2))
    dy = rng.standard_normal((6, 3, 6))
    y, state, tape = lstm.forward(x, lengths=lengths, keep=True)
    y2, state2, tape2 = lstm.forward(noisy, lengths=lengths, keep=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(state[0], state2[0])
    g, g2 = lstm.backward(tape, dy), lstm.backward(tape2, dy)
    for name in lstm.params:
        np.testing.assert_array_equal(g[name], g2[name])


def test_reverse_direction_starts_at_each_sequences_last_step():
    # The reverse cell of a bidirectional layer, run by hand on each sequence reversed within
    # its own length, gives the second half of the outputs and the reverse final state.
    lstm = gatekit.LSTM(2, 3, bidirectional=True, dtype=np.float64, seed=7)
    rng = np.random.default_rng(7)
    lengths = np.array([2, 5, 3])
    x = rng.standard_normal((5, 3, 2))
    y, (stm, ltm) = lstm(x, lengths=lengths)
    cell = lstm.cell(0, reverse=True)
    for b, L in enumerate(lengths):
        y_rev, (h, c) = reference.forward(cell, x[:L, b:b + 1][::-1], dtype=np.float64)
        np.testing.assert_allclose(y[:L, b, 3:], y_rev[::-1, 0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(stm[1, b], h[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ltm[1, b], c[0], rtol=0, atol=1e-12)
    # and the forward direction's final state is that of each sequence's last step
    y_fwd, _ = reference.forward(lstm.cell(0), x, dtype=np.float64)
    np.testing.assert_allclose(stm[0], y_fwd[lengths - 1, np.arange(3)], rtol=0, atol=1e-12)


def test_reverse_each_helper_matches_the_layer_bookkeeping():
    # The tests' own reversal (the layer oracles of tests/io/test_interop.py run on it) against its
    # definition, so that those oracles are sound.
    x = np.arange(12).reshape(4, 3, 1)
    out = reverse_each(x, [4, 1, 2])
    assert out[:, 0, 0].tolist() == [9, 6, 3, 0]
    assert out[:, 1, 0].tolist() == [1, 4, 7, 10]
    assert out[:, 2, 0].tolist() == [5, 2, 8, 11]


# --- gradients against finite differences --------------------------------------------------------

def layer_gradcheck(lstm, x, state, lengths, seed, entries=5, eps=1e-4):
    """Relative error of each gradient of ``lstm.backward`` against Richardson-extrapolated
    centred differences of a random projection of y and of the final state. With dropout, the
    generator is re-seeded before every forward pass so every pass draws the same masks."""
    rng = np.random.default_rng(seed)
    y, (stm, ltm) = lstm.forward(x, state, lengths=lengths)
    dy, dstm, dltm = (rng.standard_normal(a.shape) for a in (y, stm, ltm))

    def run(keep=False):
        lstm.dropout_rng = np.random.default_rng(seed)
        return lstm.forward(x, state, lengths=lengths, keep=keep)

    def loss():
        y, (stm, ltm) = run()
        return np.sum(y * dy) + np.sum(stm * dstm) + np.sum(ltm * dltm)

    _, _, tape = run(keep=True)
    analytic = lstm.backward(tape, dy, (dstm, dltm))
    inputs = {**lstm.params, "x": x, "stm0": state[0], "ltm0": state[1]}
    errors = {}
    for name, array in inputs.items():
        flat = array.reshape(-1)
        picked = rng.choice(flat.size, size=min(entries, flat.size), replace=False)
        numeric = np.array([(4 * centred_difference(loss, flat, i, eps / 2)
                             - centred_difference(loss, flat, i, eps)) / 3 for i in picked])
        got = analytic[name].reshape(-1)[picked]
        scale = max(np.abs(numeric).max(), np.abs(got).max(), 1e-7)
        errors[name] = float(np.abs(got - numeric).max() / scale)
    return errors


@pytest.mark.parametrize("variant, batch_first, dropout", [
    ("standard", False, 0.0), ("peephole", True, 0.0), ("course", False, 0.4),
    ("cifg", True, 0.3)])
def test_gradients_match_finite_differences(variant, batch_first, dropout):
    T, B, D, H = 5, 3, 2, 3
    lstm = gatekit.LSTM(D, H, 2, bidirectional=True, variant=variant, dropout=dropout,
                        batch_first=batch_first, dtype=np.float64, seed=8)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D))
    state = draw_state(rng, lstm, B)
    errors = layer_gradcheck(lstm, x, state, np.array([3, 5, 1]), seed=9)
    bad = {name: e for name, e in errors.items() if not e < 1e-6}
    assert not bad, bad


# --- dropout -------------------------------------------------------------------------------------

def test_dropout_only_in_training_and_only_between_layers():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 4, 3))
    lstm = gatekit.LSTM(3, 5, 3, bidirectional=True, dropout=0.5, dtype=np.float64, seed=10)
    plain = lstm.copy()
    plain.dropout = 0.0
    y_plain, _ = plain(x)
    y_eval, _ = lstm.eval()(x)
    np.testing.assert_array_equal(y_eval, y_plain)
    assert not lstm.training
    y_train, _ = lstm.train()(x)
    assert lstm.training
    assert not np.allclose(y_train, y_plain)
    # training twice draws new masks; the same seed draws the same ones
    y_again, _ = lstm(x)
    assert not np.array_equal(y_train, y_again)
    twin = gatekit.LSTM(3, 5, 3, bidirectional=True, dropout=0.5, dtype=np.float64, seed=10)
    np.testing.assert_array_equal(twin(x)[0], y_train)


def test_dropout_masks_scale_kept_values_and_compose_like_pytorch():
    # PyTorch applies dropout to the outputs of every layer but the last: the second layer
    # reads the first layer's output times a mask of 0 and 1 / (1 - p).
    p = 0.25
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, dropout=p, dtype=np.float64, seed=11)
    x = np.random.default_rng(11).standard_normal((50, 8, 3))
    y, (stm, ltm), tape = lstm.forward(x, keep=True)
    assert tape.masks[0] is None
    mask = tape.masks[1]
    assert mask.shape == (50, 8, 8)
    assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
    assert abs(np.mean(mask == 0) - p) < 0.05          # 3200 draws: sd of the rate 0.008
    first, _ = reference_lstm(_first_layer(lstm), x)
    second, _ = reference_lstm(_second_layer(lstm), first * mask)
    np.testing.assert_allclose(y, second, rtol=0, atol=1e-12)


def _first_layer(lstm):
    one = gatekit.LSTM(lstm.input_size, lstm.hidden_size, bidirectional=True, dtype=lstm.dtype)
    for name in ("l0", "l0_reverse"):
        for symbol, value in lstm.cells[name].params.items():
            one.params[f"{name}.{symbol}"] = value
    return one


def _second_layer(lstm):
    one = gatekit.LSTM(2 * lstm.hidden_size, lstm.hidden_size, bidirectional=True,
                       dtype=lstm.dtype)
    for name in ("l0", "l0_reverse"):
        for symbol, value in lstm.cells[name.replace("0", "1")].params.items():
            one.params[f"{name}.{symbol}"] = value
    return one


def test_dropout_of_one_cuts_the_upper_layers_off():
    lstm = gatekit.LSTM(2, 3, 2, dropout=1.0, dtype=np.float64, seed=12)
    x = np.random.default_rng(12).standard_normal((4, 2, 2))
    y, _, tape = lstm.forward(x, keep=True)
    upper = _second_layer_of_unidirectional(lstm)
    np.testing.assert_allclose(y, upper(np.zeros((4, 2, 3)))[0], rtol=0, atol=0)
    grads = lstm.backward(tape, np.ones_like(y))
    assert np.all(grads["x"] == 0) and np.all(grads["l0.W_f"] == 0)


def _second_layer_of_unidirectional(lstm):
    cell = lstm.cell(1)
    one = gatekit.Cell(cell.input_size, cell.hidden_size, dtype=lstm.dtype)
    for symbol, value in cell.params.items():
        one.params[symbol] = value
    return one


def test_dropout_on_a_single_layer_warns():
    with pytest.warns(UserWarning, match="num_layers=1"):
        gatekit.LSTM(2, 3, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gatekit.LSTM(2, 3, 2, dropout=0.5)


# --- read-only inputs, and parameters changed between forward and backward ----------------------

@pytest.mark.parametrize("bidirectional", [False, True])
def test_read_only_inputs_of_an_lstm_just_work(bidirectional):
    lstm = gatekit.LSTM(3, 4, bidirectional=bidirectional, dtype=np.float64, seed=2)
    rng = np.random.default_rng(6)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((5, 2, 3))
    state = tuple(rng.standard_normal((D, 2, 4)) for _ in range(2))
    dstate = tuple(rng.standard_normal((D, 2, 4)) for _ in range(2))
    dy = rng.standard_normal((5, 2, D * 4))
    read_only_state = (frozen(state[0]), frozen(state[1]))
    y, _ = lstm(frozen(x), read_only_state, lengths=frozen(np.array([5, 5])))
    _, _, tape = lstm.forward(frozen(x), read_only_state, keep=True)
    grads = lstm.backward(tape, frozen(dy), (frozen(dstate[0]), frozen(dstate[1])))

    # The oracle: each direction's cell run by the reference, the reverse one on reversed time.
    dx_want = np.zeros_like(x)
    for k, order in enumerate([slice(None), slice(None, None, -1)][:D]):
        cell = lstm.cell(0, reverse=k == 1)
        own = (state[0][k], state[1][k])
        y_ref, _ = reference.forward(cell, x[order], own)
        np.testing.assert_allclose(y[:, :, 4 * k:4 * k + 4], y_ref[order], rtol=0,
                                   atol=F64_ATOL)
        want = reference.backward(cell, x[order], dy[order][:, :, 4 * k:4 * k + 4], own,
                                  dstate[0][k], dstate[1][k])
        dx_want += want["x"][order]
    np.testing.assert_allclose(grads["x"], dx_want, rtol=1e-9, atol=1e-12)


def test_lstm_backward_refuses_a_tape_whose_parameters_changed_and_names_the_cell():
    lstm = gatekit.LSTM(3, 4, 2, dtype=np.float64, seed=1)
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    y, _, tape = lstm.forward(x, keep=True)
    lstm.params["l1.W_i"][...] *= 2
    with pytest.raises(ValueError, match=r"'l1\.W_i'.*changed after the forward pass"):
        lstm.backward(tape, np.ones_like(y))


# --- training through the layer -------------------------------------------------------------------

def test_params_train_with_gatekit_optimizers():
    # The parameter views work with gatekit.optimisers: Adam on a tiny regression lowers the loss.
    rng = np.random.default_rng(13)
    lstm = gatekit.LSTM(2, 4, 2, bidirectional=True, dtype=np.float64, seed=13)
    x = rng.standard_normal((8, 4, 2))
    target = np.tanh(np.cumsum(x, axis=0)).repeat(4, axis=2)
    adam = optim.Adam(lstm.params, lr=0.02)
    losses = []
    for _ in range(40):
        y, _, tape = lstm.forward(x, keep=True)
        losses.append(float(np.mean((y - target) ** 2)))
        grads = lstm.backward(tape, 2 * (y - target) / y.size)
        adam.step({name: grads[name] for name in lstm.params})
    assert losses[-1] < 0.5 * losses[0]


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, message", [
    ([3, 6, 2], r"lengths\[1\] = 6 is longer than the T = 5"),
    ([3, 0, 2], r"lengths\[1\] = 0 is below 1"),
    ([3, -1, 2], r"lengths\[1\] = -1 is below 1"),
    ([3, 2], r"one length per sequence of x, shape \(3,\); got shape \(2,\)"),
    ([[3, 2, 1]], r"shape \(3,\)"),
])
def test_bad_lengths_are_refused_by_name(lengths, message):
    lstm = gatekit.LSTM(2, 3, bidirectional=True)
    with pytest.raises(ValueError, match=message):
        lstm(np.zeros((5, 3, 2), np.float32), lengths=lengths)


@pytest.mark.parametrize("lengths", [[3.0, 2.0, 1.0], [True, True, True]])
def test_lengths_must_be_integers(lengths):
    lstm = gatekit.LSTM(2, 3)
    with pytest.raises(TypeError, match="lengths must be integers"):
        lstm(np.zeros((5, 3, 2), np.float32), lengths=lengths)


def test_other_bad_input_is_refused_clearly():
    lstm = gatekit.LSTM(2, 3, 2, bidirectional=True)
    x = np.zeros((5, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"x must have shape \(any, any, 2\)"):
        lstm(np.zeros((5, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"state\[0\] \(stm\) must have shape \(4, 3, 3\)"):
        lstm(x, (np.zeros((2, 3, 3)), np.zeros((4, 3, 3))))
    with pytest.raises(TypeError, match="state must be a pair"):
        lstm(x, np.zeros((4, 3, 3)))
    _, _, tape = lstm.forward(x, keep=True)
    with pytest.raises(ValueError, match=r"dy must have shape \(5, 3, 6\)"):
        lstm.backward(tape, np.zeros((5, 3, 3)))
    with pytest.raises(ValueError, match=r"dstate\[1\] must have shape"):
        lstm.backward(tape, np.zeros((5, 3, 6)), (None, np.zeros((2, 3, 3))))
    other = gatekit.LSTM(2, 3, 2, bidirectional=True)
    with pytest.raises(ValueError, match="another layer"):
        other.backward(tape, np.zeros((5, 3, 6)))
    with pytest.raises(ValueError, match="dropout must be a probability"):
        gatekit.LSTM(2, 3, 2, dropout=1.5)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        gatekit.LSTM(2, 3, 0)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        gatekit.LSTM(2, 3, bidirectional="yes")
    with pytest.raises(ValueError, match="unknown variant"):
        gatekit.LSTM(2, 3, variant="nope")
    with pytest.raises(KeyError, match="no cell 'l2'"):
        lstm.cell(2)


def test_empty_sequences_pass_the_state_through():
    lstm = gatekit.LSTM(2, 3, 2, bidirectional=True, dtype=np.float64, seed=14)
    rng = np.random.default_rng(14)
    state = draw_state(rng, lstm, 2)
    y, (stm, ltm), tape = lstm.forward(np.zeros((0, 2, 2)), state, keep=True)
    assert y.shape == (0, 2, 6)
    np.testing.assert_array_equal(stm, state[0])
    np.testing.assert_array_equal(ltm, state[1])
    dstate = draw_state(rng, lstm, 2)
    grads = lstm.backward(tape, np.zeros((0, 2, 6)), dstate)
    assert grads["x"].shape == (0, 2, 2)
    np.testing.assert_array_equal(grads["stm0"], dstate[0])
    np.testing.assert_array_equal(grads["ltm0"], dstate[1])
    assert all(np.all(grads[name] == 0) for name in lstm.params)
