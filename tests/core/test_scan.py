"""Cells in which only the remember gate carries anything from one step to the next (minGRU,
minLSTM) run as a scan over the whole sequence (gatekit/core/_scan.pyx) instead of the time loop.

Oracles: the time loop (the same cell, forced each way), the NumPy definitions of
gatekit.reference, the equations of REFERENCE.md written out here, and finite differences.
Each kind of cell runs on its compiled gates (the presets, where this build has them) and on
gates written in Python here (which run on one thread). The threaded tests assert with
``_scan.team_size`` that the call really is split between that many threads.
"""
import numpy as np
import pytest

import gatekit
from gatekit.core import instruction_sets, reference
from gatekit.core.cell import SCAN_ROWS
from gatekit.testing import gradcheck
from support import (EventForget, MinForget, MinLearn, assert_close,
                     registered_for_the_module, sigmoid)

_scan = instruction_sets.load("_scan")


registered_gates = registered_for_the_module("tests.core.test_scan",
                                             [EventForget, MinForget, MinLearn])


PYTHON = {"mingru": {"forget": "py_event", "learn": "py_min", "use": "memory"},
          "minlstm": {"forget": "py_min", "learn": "py_min", "use": "memory"}}
KINDS = [("mingru", "python"), ("minlstm", "python"), ("mingru", "compiled"),
         ("minlstm", "compiled")]


def make(kind, gates, D, H, dtype=np.float64, seed=0, scan=True, threads=None, **options):
    if gates == "python":
        return gatekit.Cell(D, H, "standard", **PYTHON[kind], dtype=dtype, seed=seed,
                            scan=scan, threads=threads, **options)
    if kind not in gatekit.variants():
        pytest.skip(f"this build has no compiled {kind} preset")
    return gatekit.Cell(D, H, kind, dtype=dtype, seed=seed, scan=scan, threads=threads,
                        **options)


def inputs(cell, T, B, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, cell.input_size)).astype(cell.dtype)
    # One memory (use gate memory): the state is that memory twice.
    h0 = rng.uniform(-1, 1, (B, cell.hidden_size)).astype(cell.dtype)
    return x, (h0, h0.copy())


def loop_twin(cell):
    twin = cell.copy()
    twin.scan = False
    return twin


def run_both(cell, x, state, lengths=None, seed=2):
    """Forward and backward of ``cell`` as a scan and of its twin on the time loop."""
    results = []
    for each in (cell, loop_twin(cell)):
        y, final, tape = each.forward(x, state, keep=True, lengths=lengths)
        rng = np.random.default_rng(seed)
        dy = rng.standard_normal(y.shape)
        dstm, dltm = rng.standard_normal(final[0].shape), rng.standard_normal(final[1].shape)
        grads = each.backward(tape, dy, dstm, dltm)
        results.append((y, final, grads, (dy, dstm, dltm)))
    return results


def assert_same(dtype, scan, loop, what=""):
    (y, final, grads, _), (y_loop, final_loop, grads_loop, _) = scan, loop
    # The scan adds the same terms as the loop, in the same order per unit: only the input
    # product's summation order (a chunk's rows at a time) differs.
    assert_close(dtype, y, y_loop, f"y{what}")
    assert_close(dtype, final[0], final_loop[0], f"stm{what}")
    assert_close(dtype, final[1], final_loop[1], f"ltm{what}")
    for name in grads_loop:
        assert_close(dtype, grads[name], grads_loop[name], f"d{name}{what}")


# --- Which compositions run as a scan ---------------------------------------------------------

def test_only_compositions_without_a_recurrent_read_can_scan():
    assert make("minlstm", "python", 3, 4)._scan_refusal is None
    assert make("mingru", "python", 3, 4)._scan_refusal is None
    # A forget gate that reads [STM_{t-1}, E_t]
    cell = gatekit.Cell(3, 4, "standard", learn="py_min", use="memory")
    assert "read the STM" in cell._scan_refusal
    assert not cell._takes_scan(1000, 100)
    with pytest.raises(ValueError, match="cannot run as a scan.*read the STM"):
        gatekit.Cell(3, 4, "standard", learn="py_min", use="memory", scan=True)
    with pytest.raises(ValueError, match="cannot run as a scan"):
        gatekit.Cell(3, 4).scan = True
    # A use gate whose V_t reads the STM.
    assert "read the STM" in gatekit.Cell(3, 4, "standard", forget="py_min",
                                          learn="py_min")._scan_refusal
    with pytest.raises(TypeError, match="scan must be None, True or False"):
        gatekit.Cell(3, 4, scan="yes")


def test_of_the_built_in_variants_mingru_and_minlstm_scan():
    from support import BUILTIN_VARIANTS
    scanning = {variant for variant in (*BUILTIN_VARIANTS, "gru", "mgu", "mut1", "mingru",
                                        "minlstm") if variant in gatekit.variants()
                and gatekit.Cell(4, 4, variant)._scan_refusal is None}
    assert scanning == {"mingru", "minlstm"} & set(gatekit.variants())
    assert gatekit.Cell(4, 4, "mingru").scan is None


@pytest.mark.parametrize("options", [dict(zoneout=(0.1, 0.1)), dict(recurrent_dropout=0.2)])
def test_a_regularised_cell_never_scans(options):
    """Zoneout and recurrent dropout act between steps: the time loop applies them."""
    cell = make("minlstm", "python", 3, 4, scan=True, **options)
    assert not cell._takes_scan(1000, 10)
    cell.eval()
    assert not cell._takes_scan(1000, 10)


def test_the_automatic_choice_follows_the_documented_rule():
    cell = make("minlstm", "python", 3, 4, scan=None)
    assert cell.scan is None
    assert cell._takes_scan(SCAN_ROWS, 1) and cell._takes_scan(1, SCAN_ROWS)
    assert not cell._takes_scan(SCAN_ROWS - 1, 1)
    cell.scan = True
    assert cell._takes_scan(1, 1)
    cell.scan = False
    assert not cell._takes_scan(10_000, 100)
    assert cell.copy().scan is False


def test_the_scan_really_runs_and_the_loop_does_not(monkeypatch):
    """The scan path is taken when chosen, and only then: forced each way, the other module's
    entry points fail."""
    cell = make("minlstm", "python", 3, 4)
    x, state = inputs(cell, 5, 2)

    def refuse(*args, **kwargs):
        raise AssertionError("the time loop ran")

    import gatekit.core.cell as cell_module
    monkeypatch.setattr(cell_module._loop, "forward", refuse)
    monkeypatch.setattr(cell_module._loop, "backward", refuse)
    _, _, tape = cell.forward(x, state, keep=True)
    cell.backward(tape, np.ones((5, 2, 4)))
    with pytest.raises(AssertionError, match="time loop ran"):
        loop_twin(cell)(x, state)


# --- Against the time loop, the reference and the equations -----------------------------------

# (T, B, D, H): one chunk; several chunks (chunk_steps(3) steps each) with a last partial one.
SIZES = [(5, 2, 3, 4), (250, 3, 5, 20)]


@pytest.mark.parametrize("kind, gates", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T, B, D, H", SIZES)
def test_scan_matches_the_time_loop(kind, gates, dtype, T, B, D, H):
    cell = make(kind, gates, D, H, dtype=dtype)
    x, state = inputs(cell, T, B)
    scan, loop = run_both(cell, x, state)
    assert_same(dtype, scan, loop)


@pytest.mark.parametrize("kind, gates", KINDS)
@pytest.mark.parametrize("T, B, D, H", SIZES)
def test_scan_matches_the_numpy_definitions(kind, gates, T, B, D, H):
    cell = make(kind, gates, D, H)
    x, state = inputs(cell, T, B)
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state)
    assert_close(np.float64, y, y_ref, "y")
    assert_close(np.float64, stm, stm_ref, "stm")
    assert_close(np.float64, ltm, ltm_ref, "ltm")
    rng = np.random.default_rng(3)
    dy, dstm, dltm = (rng.standard_normal(y.shape), rng.standard_normal(stm.shape),
                      rng.standard_normal(ltm.shape))
    grads = cell.backward(tape, dy, dstm, dltm)
    expected = reference.backward(cell, x, dy, state, dstm=dstm, dltm=dltm)
    for name in (*cell.params, "x", "stm0", "ltm0"):
        assert_close(np.float64, grads[name], expected[name], name)


@pytest.mark.parametrize("gates", ["python", "compiled"])
def test_mingru_is_the_equations_of_the_reference_table(gates):
    """minGRU: z = σ(W_z x + b_z), n = W_n x + b_n, h_t = (1 - z) ⊙ h + z ⊙ n; gatekit's forget
    factor f_t is 1 - z."""
    cell = make("mingru", gates, 3, 4)
    x, state = inputs(cell, 40, 2)
    p = cell.params
    h = state[1]
    outputs = []
    for t in range(40):
        z = 1 - sigmoid(x[t] @ p["W_f"].T + p["b_f"])
        n = x[t] @ p["W_n"].T + p["b_n"]
        h = (1 - z) * h + z * n
        outputs.append(h)
    y, (stm, ltm) = cell(x, state)
    assert_close(np.float64, y, np.array(outputs), "y")
    assert_close(np.float64, stm, h, "h_T")
    assert_close(np.float64, ltm, h, "h_T")


@pytest.mark.parametrize("gates", ["python", "compiled"])
def test_minlstm_is_the_equations_of_the_reference_table(gates):
    cell = make("minlstm", gates, 3, 4)
    x, state = inputs(cell, 40, 2)
    p = cell.params
    h = state[1]
    outputs = []
    for t in range(40):
        f = sigmoid(x[t] @ p["W_f"].T + p["b_f"])
        i = sigmoid(x[t] @ p["W_i"].T + p["b_i"])
        n = x[t] @ p["W_n"].T + p["b_n"]
        h = f / (f + i) * h + i / (f + i) * n
        outputs.append(h)
    y, (stm, ltm) = cell(x, state)
    assert_close(np.float64, y, np.array(outputs), "y")
    assert_close(np.float64, ltm, h, "h_T")


@pytest.mark.parametrize("kind, gates", KINDS)
def test_every_gradient_agrees_with_finite_differences(kind, gates):
    cell = make(kind, gates, 3, 4, seed=3)
    x, state = inputs(cell, 7, 2, seed=4)
    assert gradcheck(cell, x, state)
    # Over several chunks too.
    x, state = inputs(cell, 3 * _scan.chunk_steps(2) + 5, 2, seed=5)
    assert gradcheck(cell, x, state, max_entries=12)


# --- Threads, ragged batches, state, layers, trace ----------------------------------------------

# Large enough for the scan to split 48 units between 3 threads of 16.
THREADED = (128, 16, 64, 48)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_give_the_results_of_the_loop_and_the_reference(kind, dtype, threads):
    T, B, D, H = THREADED
    cell = make(kind, "compiled", D, H, dtype=dtype, threads=threads)
    KH = cell._weights.shape[0]
    assert _scan.team_size(cell.gates, T, B, D, H, KH, threads)[0] == threads
    x, state = inputs(cell, T, B)
    lengths = np.random.default_rng(7).integers(1, T + 1, B)
    scan, loop = run_both(cell, x, state, lengths=lengths)
    assert_same(dtype, scan, loop)
    y, (stm, ltm), grads, (dy, dstm, dltm) = scan
    y_ref, _ = reference.forward(cell, x[:, :4], (state[0][:4], state[1][:4]), dtype=np.float64)
    for b in range(4):
        assert_close(dtype, y[:lengths[b], b], y_ref[:lengths[b], b], f"y of sequence {b}")
    expected = reference.backward(cell, x[:, :1], dy[:, :1], (state[0][:1], state[1][:1]),
                                  dtype=np.float64)
    if lengths[0] == T:
        assert_close(dtype, grads["x"][:, 0], expected["x"][:, 0], "dx of sequence 0")


@pytest.mark.parametrize("kind, gates", KINDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_ragged_batches_hold_each_sequence_at_its_end(kind, gates, threads):
    T = 2 * _scan.chunk_steps(4) + 3
    cell = make(kind, gates, 5, 32, threads=threads)
    x, state = inputs(cell, T, 4)
    lengths = np.array([T, 5, _scan.chunk_steps(4) + 1, 1])
    scan, loop = run_both(cell, x, state, lengths=lengths)
    assert_same(np.float64, scan, loop)
    y, (stm, ltm), grads, (dy, dstm, dltm) = scan
    for b, length in enumerate(lengths):
        one = (state[0][b:b + 1], state[1][b:b + 1])
        y_b, (stm_b, ltm_b) = reference.forward(cell, x[:length, b:b + 1], one)
        assert_close(np.float64, y[:length, b], y_b[:, 0], f"y of sequence {b}")
        assert np.all(y[length:, b] == 0)
        assert_close(np.float64, stm[b], stm_b[0], f"stm of sequence {b}")
        assert_close(np.float64, ltm[b], ltm_b[0], f"ltm of sequence {b}")
        expected = reference.backward(cell, x[:length, b:b + 1], dy[:length, b:b + 1], one,
                                      dstm=dstm[b:b + 1], dltm=dltm[b:b + 1])
        assert_close(np.float64, grads["x"][:length, b], expected["x"][:, 0], f"dx of {b}")
        assert np.all(grads["x"][length:, b] == 0)
        assert_close(np.float64, grads["ltm0"][b], expected["ltm0"][0], f"dltm0 of {b}")
        assert_close(np.float64, grads["stm0"][b], expected["stm0"][0], f"dstm0 of {b}")


@pytest.mark.parametrize("kind, gates", KINDS)
def test_a_call_without_tape_gives_the_results_of_one_with(kind, gates):
    """Without a tape the scan keeps one chunk at a time: the same numbers."""
    cell = make(kind, gates, 5, 20)
    x, state = inputs(cell, 3 * _scan.chunk_steps(3) + 2, 3)
    lengths = np.array([x.shape[0], 7, _scan.chunk_steps(3) + 4])
    y, final = cell(x, state, lengths=lengths)
    y_kept, final_kept, _ = cell.forward(x, state, keep=True, lengths=lengths)
    np.testing.assert_array_equal(y, y_kept)
    np.testing.assert_array_equal(final[0], final_kept[0])
    np.testing.assert_array_equal(final[1], final_kept[1])


@pytest.mark.parametrize("kind, gates", KINDS)
def test_zero_initial_state_and_a_single_step(kind, gates):
    cell = make(kind, gates, 3, 4)
    x, _ = inputs(cell, 1, 3)
    y, (stm, ltm) = cell(x)
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x)
    assert_close(np.float64, y, y_ref, "y")
    assert_close(np.float64, ltm, ltm_ref, "ltm")


@pytest.mark.parametrize("kind, gates", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layers_stacked_and_bidirectional_match_the_loop(kind, gates, bidirectional):
    if gates == "python":
        composition = dict(variant="standard", **PYTHON[kind])
    elif kind in gatekit.variants():
        composition = dict(variant=kind)
    else:
        pytest.skip(f"this build has no compiled {kind} preset")
    lstm = gatekit.LSTM(6, 20, num_layers=2, bidirectional=bidirectional, **composition,
                        dtype=np.float64, seed=0)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((70, 3, 6))
    lengths = np.array([70, 33, 12])
    results = []
    for scan in (True, False):
        for cell in lstm.cells.values():
            cell.scan = scan
        y, (stm, ltm), tape = lstm.forward(x, lengths=lengths, keep=True)
        grads = lstm.backward(tape, np.cos(y))
        results.append((y, stm, ltm, grads))
    (y, stm, ltm, grads), (y_loop, stm_loop, ltm_loop, grads_loop) = results
    assert_close(np.float64, y, y_loop, "y")
    assert_close(np.float64, stm, stm_loop, "stm")
    assert_close(np.float64, ltm, ltm_loop, "ltm")
    assert grads.keys() == grads_loop.keys()
    for name in grads_loop:
        assert_close(np.float64, grads[name], grads_loop[name], name)
    # The layer's first cell, on the first sequence, against the reference.
    first = lstm.cells[next(iter(lstm.cells))]
    y_ref, _ = reference.forward(first, x[:, :1])
    first.scan = True
    assert_close(np.float64, first(x[:, :1])[0], y_ref, "the first cell's output")


@pytest.mark.parametrize("kind, gates", KINDS)
def test_trace_is_the_loops(kind, gates):
    cell = make(kind, gates, 3, 8)
    x, state = inputs(cell, 60, 2)
    lengths = np.array([60, 21])
    traced = cell.trace(x, state, lengths=lengths)
    expected = loop_twin(cell).trace(x, state, lengths=lengths)
    assert traced.keys() == expected.keys()
    for name in expected:
        assert_close(np.float64, np.nan_to_num(traced[name], nan=7.0),
                     np.nan_to_num(expected[name], nan=7.0), name)
        assert np.array_equal(np.isnan(traced[name]), np.isnan(expected[name])), name


def test_a_failing_gate_raises_through_the_scan():
    class Failing(MinLearn):
        name = "sc_failing"

        def forward(self, step):
            raise ArithmeticError("no")

    class Plugin:
        @gatekit.hookimpl
        def register_gates(self, register):
            register(Failing)

    name = gatekit.register_plugin(Plugin(), name="tests.core.test_scan.failing")
    try:
        cell = gatekit.Cell(3, 4, "standard", forget="py_min", learn="sc_failing",
                            use="memory", scan=True)
        with pytest.raises(ArithmeticError, match="no"):
            cell(np.zeros((5, 2, 3), np.float32))
    finally:
        gatekit.unregister_plugin(name)


@pytest.mark.parametrize("kind, gates", KINDS)
def test_a_tape_of_either_path_is_read_back_by_either(kind, gates):
    cell = make(kind, gates, 3, 8)
    x, state = inputs(cell, 2 * _scan.chunk_steps(2) + 1, 2)
    dy = np.random.default_rng(9).standard_normal((x.shape[0], 2, 8))
    gradients = {}
    for recorded in (True, False):
        cell.scan = recorded
        _, _, tape = cell.forward(x, state, keep=True, lengths=np.array([x.shape[0], 9]))
        for read in (True, False):
            cell.scan = read
            gradients[recorded, read] = cell.backward(tape, dy)
    expected = gradients[False, False]
    for paths, grads in gradients.items():
        for name in expected:
            assert_close(np.float64, grads[name], expected[name], f"d{name} {paths}")


def test_python_gates_run_the_scan_on_one_thread():
    cell = make("minlstm", "python", 64, 48, threads=3)
    assert _scan.team_size(cell.gates, *THREADED[:2], 64, 48, 144, 3) == (1, 48)
