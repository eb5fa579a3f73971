"""Zoneout and variational recurrent dropout, options of every cell (``zoneout=(z_c, z_h)``,
``recurrent_dropout=p``).

Oracles: gatekit.reference run with the same masks (``masks=``), the equations of zoneout
(Krueger et al. 2017) and of recurrent dropout (Gal & Ghahramani 2016) written out below for
the standard cell, centred finite differences (gatekit.testing.gradcheck, which holds the masks
fixed), every sequence of a ragged batch run alone through the reference, and the plain cell
(without regularisers) for what must equal it.
"""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.core.cell import _loop
from gatekit.testing import gradcheck

from support import BUILTIN_VARIANTS, GoingAlone, assert_close, assert_same_bits, input_size_for, \
    random_inputs, rel_error, sigmoid

DTYPES = [np.float64, np.float32]
# Options that switch on every path: both memories zoned and the STM the gates read dropped.
BOTH = dict(zoneout=(0.3, 0.2), recurrent_dropout=0.4)
# A cell with one memory (use gate memory: its STM is its LTM) is zoned once, at one rate.
ONE_MEMORY_BOTH = dict(zoneout=(0.3, 0.3), recurrent_dropout=0.4)


def both_for(variant, **gates):
    """BOTH, or ONE_MEMORY_BOTH for a composition with one memory."""
    return ONE_MEMORY_BOTH if gatekit.Cell(4, 4, variant, **gates).one_memory else BOTH
OPTIONS = [BOTH, dict(zoneout=(0.5, 0.0)), dict(zoneout=(0.0, 0.4)),
           dict(recurrent_dropout=0.5)]


def option_id(options):
    return "-".join(f"{key}={value}" for key, value in options.items())


def gradient_tolerance(dtype):
    return 1e-10 if np.dtype(dtype) == np.float64 else 2e-5


def assert_gradients_match(cell, got, want, what=""):
    for name in want:
        error = rel_error(got[name], want[name])
        assert error < gradient_tolerance(cell.dtype), f"{what} d{name}: {error:.2e}"


def sliced(masks, b, n):
    """Sequence b's masks over its first n steps (a batch of one)."""
    def part(value, steps):
        if not isinstance(value, np.ndarray):
            return value
        return value[:n, b:b + 1] if steps else value[b:b + 1]
    return {"zoneout_LTM": part(masks["zoneout_LTM"], True),
            "zoneout_STM": part(masks["zoneout_STM"], True),
            "dropout_STM": part(masks["dropout_STM"], False)}


# --- The equations, written out for the standard cell ------------------------------------------

def standard_lstm_by_hand(params, x, state, masks):
    """The standard cell with zoneout and recurrent dropout, from the equations alone: the
    gates read h = m ⊙ STM_{t-1}; the candidates c~ = f c + i g and h~ = o tanh(c~); zoneout
    keeps each unit's previous memory where its mask is 1 (or mixes in z in evaluation)."""
    W = {k: params[f"W_{k}"] for k in "fniv"}
    b = {k: params[f"b_{k}"] for k in "fniv"}
    stm, ltm = (np.array(a, np.float64) for a in state)
    m = 1.0 if masks["dropout_STM"] is None else masks["dropout_STM"]
    d_c, d_h = masks["zoneout_LTM"], masks["zoneout_STM"]
    ys = []
    for t in range(len(x)):
        read = np.concatenate([m * stm, x[t]], axis=1)
        f, i, o = (sigmoid(read @ W[k].T + b[k]) for k in "fiv")
        g = np.tanh(read @ W["n"].T + b["n"])
        c_candidate = f * ltm + i * g
        h_candidate = o * np.tanh(c_candidate)
        keep_c = d_c[t] if isinstance(d_c, np.ndarray) else d_c
        keep_h = d_h[t] if isinstance(d_h, np.ndarray) else d_h
        ltm = keep_c * ltm + (1 - keep_c) * c_candidate
        stm = keep_h * stm + (1 - keep_h) * h_candidate
        ys.append(stm)
    return np.stack(ys), (stm, ltm)


@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_the_standard_cell_computes_the_equations_of_zoneout_and_recurrent_dropout(dtype):
    cell = gatekit.Cell(3, 5, dtype=dtype, seed=0, **BOTH)
    x, state = random_inputs(cell, 15, 4, seed=1)
    for mode in ("train", "eval"):
        getattr(cell, mode)()
        y, final, tape = cell.forward(x, state, keep=True)
        y_hand, final_hand = standard_lstm_by_hand(cell.params, x, state, tape.masks)
        assert_close(dtype, y, y_hand, f"{mode}: y")
        assert_close(dtype, final[0], final_hand[0], f"{mode}: stm")
        assert_close(dtype, final[1], final_hand[1], f"{mode}: ltm")
    # In training the masks are drawn: 0 or 1 for zoneout, 0 or 1 / (1 - p) for dropout.
    masks = cell.train().draw_masks(15, 4)
    assert set(np.unique(masks["zoneout_LTM"])) <= {0.0, 1.0}
    assert set(np.unique(masks["dropout_STM"])) <= {0.0, np.dtype(dtype).type(1 / 0.6)}


# --- Against the reference under the same masks -----------------------------------------------

@pytest.mark.parametrize("variant", BUILTIN_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_every_variant_matches_the_reference_under_the_same_masks(variant, dtype):
    cell = gatekit.Cell(input_size_for(variant, 3, 5), 5, variant, dtype=dtype, seed=2,
                        **both_for(variant))
    x, state = random_inputs(cell, 12, 3, seed=3)
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state, dtype=np.float64,
                                                  masks=tape.masks)
    for name, got, want in (("y", y, y_ref), ("stm", stm, stm_ref), ("ltm", ltm, ltm_ref)):
        assert_close(dtype, got, want, f"{variant}: {name}")
    rng = np.random.default_rng(4)
    dy, dstm, dltm = (rng.standard_normal(shape) for shape in (y.shape, stm.shape, ltm.shape))
    got = cell.backward(tape, dy, dstm, dltm)
    want = reference.backward(cell, x, dy, state, dstm, dltm, dtype=np.float64, masks=tape.masks)
    assert_gradients_match(cell, got, want, variant)


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_each_regulariser_alone_matches_the_reference(options, dtype):
    cell = gatekit.Cell(4, 6, "peephole", dtype=dtype, seed=5, **options)
    x, state = random_inputs(cell, 10, 3, seed=6)
    for mode in ("train", "eval"):
        getattr(cell, mode)()
        y, (stm, ltm), tape = cell.forward(x, state, keep=True)
        y_ref, (_, ltm_ref) = reference.forward(cell, x, state, dtype=np.float64,
                                                masks=tape.masks)
        assert_close(dtype, y, y_ref, f"{mode}: y")
        assert_close(dtype, ltm, ltm_ref, f"{mode}: ltm")
        dy = np.random.default_rng(7).standard_normal(y.shape)
        got = cell.backward(tape, dy, None, np.ones_like(ltm))
        want = reference.backward(cell, x, dy, state, None, np.ones(ltm.shape),
                                  dtype=np.float64, masks=tape.masks)
        assert_gradients_match(cell, got, want, mode)


# --- Finite differences, with the masks held fixed ----------------------------------------------

@pytest.mark.parametrize("variant", ["standard", "peephole", "course", "janet", "cifg",
                                     "literal", "noaf"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_gradient_agrees_with_finite_differences(variant, mode):
    cell = gatekit.Cell(3, 4, variant, dtype=np.float64, seed=8, **both_for(variant))
    getattr(cell, mode)()
    x, state = random_inputs(cell, 9, 3, seed=9)
    gradcheck(cell, x, state)


def test_finite_differences_with_explicit_masks_on_a_plain_cell():
    # Masks given to forward apply whatever the cell's options.
    cell = gatekit.Cell(3, 4, "standard", dtype=np.float64, seed=10)
    masks = gatekit.Cell(3, 4, seed=11, **BOTH).copy(np.float64).draw_masks(7, 2)
    x, state = random_inputs(cell, 7, 2, seed=12)
    gradcheck(cell, x, state, masks=masks)
    y, _ = cell(x, state, masks=masks)
    y_ref, _ = reference.forward(cell, x, state, masks=masks)
    assert_close(np.float64, y, y_ref, "y")


# --- Gates that read STM_{t-1} themselves: they read it masked ---------------------------------

class MaskedReadLearn(gatekit.PythonGate):
    """MGU's learn gate, which reads STM_{t-1} outside the product: N_t = tanh(W_hn (i_t ⊙
    STM_{t-1}) + z_n), i_t = 1 - f_t."""
    role, name, blocks = "learn", "rg_mgu", ("n",)
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


class _MaskedRead:
    @gatekit.hookimpl
    def register_gates(self, register):
        register(MaskedReadLearn)


def test_a_python_gate_reading_stm_prev_reads_it_masked(register):
    register(_MaskedRead(), name="tests.core.test_regularisers")
    cell = gatekit.Cell(4, 5, "standard", learn="rg_mgu", use="memory", dtype=np.float64,
                        seed=13, **ONE_MEMORY_BOTH)
    x, state = random_inputs(cell, 8, 3, seed=14)
    y, _, tape = cell.forward(x, state, keep=True)
    y_ref, _ = reference.forward(cell, x, state, masks=tape.masks)
    assert_close(np.float64, y, y_ref, "y")
    dy = np.random.default_rng(15).standard_normal(y.shape)
    assert_gradients_match(cell, cell.backward(tape, dy),
                           reference.backward(cell, x, dy, state, masks=tape.masks))
    gradcheck(cell, x, state)


# --- Threads and ragged batches ----------------------------------------------------------------

@pytest.mark.parametrize("variant", ["standard", "course"])
@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_one_two_and_three_threads_give_the_same_bits_and_the_reference(variant, dtype):
    D, H, T, B = 16, 64, 60, 16
    base = gatekit.Cell(D, H, variant, dtype=dtype, seed=16, **BOTH)
    x, state = random_inputs(base, T, B, seed=17)
    masks = base.draw_masks(T, B)
    dy = np.random.default_rng(18).standard_normal((T, B, H)).astype(dtype)
    results = {}
    for threads in (1, 2, 3):
        cell = base.copy()
        cell.threads = threads
        single = dtype == np.float32
        team = _loop.plan(T, B, D, H, cell._weights.shape[0], threads, single)[0]
        # Whole panels of units per thread (the panel width is the loaded build's).
        panel = _loop.plan(1, 5, 1, 1, 4, 1, single)[1]
        units = -(-(-(-H // panel)) // threads) * panel
        assert team == -(-H // units) and (threads == 1) == (team == 1), (threads, team)
        y, final, tape = cell.forward(x, state, keep=True, masks=masks)
        results[threads] = (y, final, cell.backward(tape, dy))
    y, final, grads = results[1]
    for threads in (2, 3):
        assert_same_bits(results[threads][0], y, f"{threads} threads: y")
        assert_same_bits(results[threads][1][1], final[1], f"{threads} threads: ltm")
        for name in grads:
            assert_same_bits(results[threads][2][name], grads[name], f"{threads}: d{name}")
    # And one thread is right (a prefix of the steps, for speed).
    short = {name: value[:12] if isinstance(value, np.ndarray) and value.ndim == 3 else value
             for name, value in masks.items()}
    y_ref, _ = reference.forward(base, x[:12], state, dtype=np.float64, masks=short)
    assert_close(dtype, y[:12], y_ref, "y")


@pytest.mark.parametrize("back", [None, 1, 9], ids=["alone", "back-after-1", "back-after-9"])
@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_thread_zero_going_on_alone_changes_no_bit(monkeypatch, dtype, back):
    from gatekit.core import cell as cell_module
    D, H, T, B = 24, 96, 40, 24
    team = gatekit.Cell(D, H, "course", dtype=dtype, seed=37, threads=3, **BOTH)
    solo = team.copy()
    solo.threads = 1
    assert _loop.plan(T, B, D, H, team._weights.shape[0], 3, dtype == np.float32)[0] >= 2
    x, state = random_inputs(team, T, B, seed=38)
    dy = np.random.default_rng(39).standard_normal((T, B, H)).astype(dtype)
    lengths = np.random.default_rng(40).integers(T // 2, T + 1, B)
    masks = team.draw_masks(T, B)
    y1, final1, tape = solo.forward(x, state, keep=True, lengths=lengths, masks=masks)
    grads1 = solo.backward(tape, dy)
    monkeypatch.setattr(cell_module, "_loop", GoingAlone(cell_module._loop, 17, back))
    y, final, tape = team.forward(x, state, keep=True, lengths=lengths, masks=masks)
    grads = team.backward(tape, dy)
    assert_same_bits(y, y1, "y")
    assert_same_bits(final[1], final1[1], "ltm")
    for name in grads:
        assert_same_bits(grads[name], grads1[name], f"d{name}")
    # Masks drawn for the call (computed in the loop): twins of one seed draw the same.
    twin = gatekit.Cell(D, H, "course", dtype=dtype, seed=37, threads=1, **BOTH)
    monkeypatch.undo()
    y1, _, tape1 = twin.forward(x, state, keep=True, lengths=lengths)
    grads1 = twin.backward(tape1, dy)
    drawing = gatekit.Cell(D, H, "course", dtype=dtype, seed=37, threads=3, **BOTH)
    monkeypatch.setattr(cell_module, "_loop", GoingAlone(cell_module._loop, 17, back))
    y, _, tape = drawing.forward(x, state, keep=True, lengths=lengths)
    grads = drawing.backward(tape, dy)
    assert_same_bits(y, y1, "y (drawn masks)")
    for name in grads:
        assert_same_bits(grads[name], grads1[name], f"d{name} (drawn masks)")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_ragged_batches_match_each_sequence_run_alone(dtype, threads):
    D, H, T, B = 16, 32, 40, 12
    cell = gatekit.Cell(D, H, "peephole", dtype=dtype, seed=19, threads=threads, **BOTH)
    x, state = random_inputs(cell, T, B, seed=20)
    lengths = np.random.default_rng(21).integers(1, T + 1, B)
    lengths[0] = T
    y, (stm, ltm), tape = cell.forward(x, state, keep=True, lengths=lengths)
    rng = np.random.default_rng(22)
    dy, dstm, dltm = (rng.standard_normal(shape) for shape in (y.shape, stm.shape, ltm.shape))
    grads = cell.backward(tape, dy, dstm, dltm)
    summed = {name: np.zeros(array.shape) for name, array in cell.params.items()}
    for b in range(B):
        n = lengths[b]
        one = (x[:n, b:b + 1], (state[0][b:b + 1], state[1][b:b + 1]))
        masks = sliced(tape.masks, b, n)
        y_ref, (stm_ref, ltm_ref) = reference.forward(cell, *one, dtype=np.float64, masks=masks)
        assert_close(dtype, y[:n, b], y_ref[:, 0], f"sequence {b}: y")
        assert np.all(y[n:, b] == 0)
        assert_close(dtype, stm[b], stm_ref[0], f"sequence {b}: stm")
        assert_close(dtype, ltm[b], ltm_ref[0], f"sequence {b}: ltm")
        want = reference.backward(cell, one[0], dy[:n, b:b + 1], one[1], dstm=dstm[b:b + 1],
                                  dltm=dltm[b:b + 1], dtype=np.float64, masks=masks)
        for name, key in (("x", "x"), ("stm0", "stm0"), ("ltm0", "ltm0")):
            got = grads[key][:n, b] if name == "x" else grads[key][b]
            expected = want[key][:, 0] if name == "x" else want[key][0]
            assert rel_error(got, expected) < gradient_tolerance(dtype), (b, name)
        assert np.all(grads["x"][n:, b] == 0)
        for name in summed:
            summed[name] += want[name]
    for name in summed:
        assert rel_error(grads[name], summed[name]) < gradient_tolerance(dtype), name


# --- Evaluation, seeds and the tape ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_evaluation_is_the_expectation(dtype):
    z_c, z_h = 0.3, 0.2
    cell = gatekit.Cell(3, 5, "peephole", dtype=dtype, seed=23, zoneout=(z_c, z_h),
                        recurrent_dropout=0.4).eval()
    x, state = random_inputs(cell, 10, 3, seed=24)
    state_before = cell.mask_rng.bit_generator.state
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    assert cell.mask_rng.bit_generator.state == state_before      # nothing drawn
    assert tape.masks == {"zoneout_LTM": z_c, "zoneout_STM": z_h, "dropout_STM": None}
    # The expectation, step by step: dropout's is the identity; zoneout's mixes in z.
    plain = gatekit.Cell(3, 5, "peephole", dtype=np.float64, seed=23)
    stm_t, ltm_t = (a.astype(np.float64) for a in state)
    for t in range(10):
        q = reference.step(plain, x[t].astype(np.float64), stm_t, ltm_t)
        ltm_t = z_c * ltm_t + (1 - z_c) * q["LTM_t"]
        stm_t = z_h * stm_t + (1 - z_h) * q["STM_t"]
        assert_close(dtype, y[t], stm_t, f"step {t}")
    assert_close(dtype, ltm, ltm_t, "ltm")


@pytest.mark.parametrize("dtype", DTYPES, ids=np.dtype)
def test_without_zoneout_evaluation_equals_the_plain_cell(dtype):
    plain = gatekit.Cell(4, 6, "course", dtype=dtype, seed=25)
    dropped = gatekit.Cell(4, 6, "course", dtype=dtype, seed=25, recurrent_dropout=0.5)
    x, state = random_inputs(plain, 9, 2, seed=26)
    assert_same_bits(dropped.eval()(x, state)[0], plain(x, state)[0], "eval, p = 0.5")
    none = gatekit.Cell(4, 6, "course", dtype=dtype, seed=25, zoneout=(0, 0),
                        recurrent_dropout=0)
    assert not none.regularised
    assert_same_bits(none(x, state)[0], plain(x, state)[0], "train, z = p = 0")
    # Masks that keep nothing and drop nothing give the plain cell's bits too.
    masks = {"zoneout_LTM": np.zeros((9, 2, 6)), "zoneout_STM": np.zeros((9, 2, 6)),
             "dropout_STM": np.ones((2, 6))}
    assert_same_bits(plain(x, state, masks=masks)[0], plain(x, state)[0], "neutral masks")


def test_the_same_seed_draws_the_same_masks_and_each_call_new_ones():
    a = gatekit.Cell(3, 8, seed=27, **BOTH)
    b = gatekit.Cell(3, 8, seed=27, **BOTH)
    x, state = random_inputs(a, 20, 4, seed=28)
    first_a, first_b = a.forward(x, state, keep=True)[2], b.forward(x, state, keep=True)[2]
    for name in first_a.masks:
        assert_same_bits(first_a.masks[name], first_b.masks[name], name)
    assert_same_bits(a(x, state)[0], b(x, state)[0], "y of the second call")
    second = a.forward(x, state, keep=True)[2]
    for name in second.masks:
        assert not np.array_equal(second.masks[name], first_a.masks[name]), name
    # Another seed, other masks; the parameters of a seed do not depend on the options.
    other = gatekit.Cell(3, 8, seed=29, **BOTH).draw_masks(20, 4)
    assert not np.array_equal(other["zoneout_LTM"], a.draw_masks(20, 4)["zoneout_LTM"])
    for name, value in gatekit.Cell(3, 8, seed=27).params.items():
        assert_same_bits(value, a.params[name], name)
    # A copy (in another precision, too) goes on drawing what the original would draw.
    copy = a.copy(np.float64)
    np.testing.assert_array_equal(copy.draw_masks(5, 2)["zoneout_STM"],
                                  a.draw_masks(5, 2)["zoneout_STM"])
    # A cell seeded with a generator of another kind copies alike.
    mersenne = gatekit.Cell(3, 8, seed=np.random.Generator(np.random.MT19937(1)), **BOTH)
    np.testing.assert_array_equal(mersenne.copy().draw_masks(5, 2)["dropout_STM"],
                                  mersenne.draw_masks(5, 2)["dropout_STM"])


def test_a_call_applies_the_masks_draw_masks_gives():
    # A call in training computes its zoneout masks inside the compiled loop, from keys drawn
    # for it; draw_masks computes the masks of the same keys in NumPy. Two cells of one seed
    # draw the same keys: the one's call and the other's masks must agree to the bit.
    for dtype in DTYPES:
        drawing = gatekit.Cell(6, 40, "peephole", dtype=dtype, seed=35, **BOTH)
        given = gatekit.Cell(6, 40, "peephole", dtype=dtype, seed=35, **BOTH)
        x, state = random_inputs(drawing, 30, 5, seed=36)
        for _ in range(2):
            y, final, tape = drawing.forward(x, state, keep=True)
            masks = given.draw_masks(30, 5)
            assert_same_bits(y, given(x, state, masks=masks)[0], "y")
            for name in masks:
                assert_same_bits(tape.masks[name], masks[name], name)
            dy = np.ones_like(y)
            _, _, given_tape = given.forward(x, state, keep=True, masks=masks)
            got, want = drawing.backward(tape, dy), given.backward(given_tape, dy)
            for name in want:
                assert_same_bits(got[name], want[name], f"d{name}")


def test_the_loop_and_numpy_hash_alike():
    from gatekit.core.cell import _mix32
    for key, t, index in [(0, 0, 0), (2 ** 32 - 1, 7, 12345), (123456789, 2 ** 20, 2 ** 31)]:
        step_key = _mix32(np.array([key], np.uint32)
                          + np.array([t], np.uint32) * np.uint32(0x9E3779B9))
        assert _loop.zoneout_hash(key, t, index) == int(_mix32(step_key ^ np.uint32(index))[0])


def test_masks_have_the_rates_asked_for():
    cell = gatekit.Cell(2, 200, seed=30, zoneout=(0.3, 0.1), recurrent_dropout=0.25)
    masks = cell.draw_masks(50, 40)
    # 400,000 draws each: the standard error of a rate is below 1e-3.
    assert abs(masks["zoneout_LTM"].mean() - 0.3) < 5e-3
    assert abs(masks["zoneout_STM"].mean() - 0.1) < 5e-3
    dropout = masks["dropout_STM"]
    assert dropout.shape == (40, 200) and abs(np.mean(dropout == 0) - 0.25) < 2e-2
    # Zoneout masks of the two memories and of different steps are drawn apart.
    assert not np.array_equal(masks["zoneout_LTM"][0], masks["zoneout_LTM"][1])


def test_backward_uses_the_masks_of_its_tape():
    cell = gatekit.Cell(3, 5, dtype=np.float64, seed=31, **BOTH)
    x, state = random_inputs(cell, 8, 2, seed=32)
    _, _, tape = cell.forward(x, state, keep=True)
    for _ in range(2):                   # calls in between draw other masks
        cell.forward(x, state, keep=True)
    dy = np.ones((8, 2, 5))
    want = reference.backward(cell, x, dy, state, masks=tape.masks)
    assert_gradients_match(cell, cell.backward(tape, dy), want)


def test_trace_shows_the_masks_and_the_zoned_memories():
    cell = gatekit.Cell(3, 5, dtype=np.float64, seed=33, **BOTH)
    x, state = random_inputs(cell, 6, 2, seed=34)
    trace = cell.trace(x, state)
    d_c, d_h, m = trace["zoneout_LTM"], trace["zoneout_STM"], trace["dropout_STM"]
    assert d_c.shape == d_h.shape == m.shape == (6, 2, 5)
    ltm_prev = np.concatenate([state[1][None], trace["LTM_t"][:-1]])
    np.testing.assert_allclose(trace["LTM_t"],
                               d_c * ltm_prev + (1 - d_c) * trace["LTM_candidate"], atol=1e-15)
    stm_prev = np.concatenate([state[0][None], trace["STM_t"][:-1]])
    np.testing.assert_allclose(trace["STM_t"],
                               d_h * stm_prev + (1 - d_h) * trace["U_t"] * trace["V_t"],
                               atol=1e-15)
    # The use gate read the candidate: U_t = tanh(LTM~_t).
    np.testing.assert_allclose(trace["U_t"], np.tanh(trace["LTM_candidate"]), atol=1e-15)
    assert "zoneout_LTM" not in gatekit.Cell(3, 5, seed=0).trace(x)


# --- Options checked -------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(zoneout=(1.0, 0.0)), r"zoneout\[0\] \(z_c, of the LTM\) must be a probability in "
                               r"\[0, 1\); got 1.0"),
    (dict(zoneout=(0.1, -0.2)), r"zoneout\[1\] \(z_h, of the STM\) must be .* got -0.2"),
    (dict(zoneout=0.5), r"zoneout must be a pair \(z_c, z_h\) .* got 0.5"),
    (dict(zoneout=(0.1, "a")), r"zoneout\[1\] .* got 'a'"),
    (dict(recurrent_dropout=1), r"recurrent_dropout must be a probability in \[0, 1\); got 1"),
    (dict(recurrent_dropout=True), r"recurrent_dropout .* got True"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        gatekit.Cell(3, 4, **options)
    with pytest.raises(ValueError, match=message):
        gatekit.LSTM(3, 4, **options)


def test_repr_shows_the_options_of_a_regularised_cell():
    assert repr(gatekit.Cell(3, 4, seed=0, **BOTH)).endswith(
        "dtype=float32, zoneout=(0.3, 0.2), recurrent_dropout=0.4)")
    assert "zoneout" not in repr(gatekit.Cell(3, 4, seed=0))


def test_bad_masks_are_refused_by_name():
    cell = gatekit.Cell(3, 4, seed=0, **BOTH)
    x = np.zeros((5, 2, 3), np.float32)
    masks = cell.draw_masks(5, 2)
    with pytest.raises(ValueError, match=r"masks\['zoneout_LTM'\] must have shape \(5, 2, 4\)"):
        cell(x, masks={**masks, "zoneout_LTM": np.zeros((5, 3, 4), np.float32)})
    with pytest.raises(ValueError, match=r"masks must be a dict with the keys zoneout_LTM, "):
        cell(x, masks={"zoneout_LTM": 0.0})
    with pytest.raises(ValueError, match=r"masks\['zoneout_STM'\] must be a probability"):
        cell(x, masks={**masks, "zoneout_STM": 2.0})


@pytest.mark.parametrize("variant", ["gru", "janet", "mingru"])
def test_one_memory_cell_is_zoned_with_one_mask(variant):
    """A cell whose STM is its LTM keeps them equal under zoneout (one memory, one mask), so its
    final state can be given back as its next state; two different rates are refused."""
    cell = gatekit.Cell(3, 4, variant, zoneout=(0.4, 0.4), seed=2)
    x = np.random.default_rng(5).standard_normal((12, 3, 3)).astype(np.float32)
    masks = cell.draw_masks(12, 3)
    assert np.array_equal(masks["zoneout_LTM"], masks["zoneout_STM"])
    assert 0 < masks["zoneout_LTM"].mean() < 1
    y, (stm, ltm) = cell(x)
    assert np.array_equal(stm, ltm)
    cell(x, state=(stm, ltm))
    with pytest.raises(ValueError, match=r"zoneout must be \(z, z\)"):
        gatekit.Cell(3, 4, variant, zoneout=(0.4, 0.2))
