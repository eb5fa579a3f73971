"""Cells in several threads: concurrent runs give the results of runs alone, two cells' loops
really are in progress at the same time, and a compiled loop lets other Python threads run.
Nothing here measures time; the waits have generous timeouts only so a broken build fails
instead of hanging."""
import sys
import threading

import numpy as np

import gatekit
from gatekit.core import reference

from support import (THREAD_TIMEOUT, assert_matches_reference, make_plugin, random_inputs,
                     run_in_threads)


def test_concurrent_runs_of_different_cells_equal_runs_alone():
    cell_a = gatekit.Cell(6, 16, variant="course", dtype=np.float64, seed=1)
    cell_b = gatekit.Cell(3, 8, variant="peephole", dtype=np.float32, seed=2)
    x_a, state_a = random_inputs(cell_a, 3000, 4, seed=3)
    x_b, state_b = random_inputs(cell_b, 4000, 3, seed=4)
    alone_a, alone_b = cell_a(x_a, state_a), cell_b(x_b, state_b)
    for _ in range(3):
        together_a, together_b = run_in_threads([lambda: cell_a(x_a, state_a),
                                                 lambda: cell_b(x_b, state_b)])
        for alone, together in ((alone_a, together_a), (alone_b, together_b)):
            np.testing.assert_array_equal(together[0], alone[0])
            np.testing.assert_array_equal(together[1][0], alone[1][0])
            np.testing.assert_array_equal(together[1][1], alone[1][1])
    # And the runs alone are right (a short prefix, for speed).
    assert_matches_reference(cell_a, x_a[:20], state_a)
    assert_matches_reference(cell_b, x_b[:20], state_b)


def test_same_cell_in_two_threads_on_different_inputs():
    # One cell object, two concurrent calls: nothing shared between calls but the parameters.
    cell = gatekit.Cell(4, 8, variant="janet", dtype=np.float64, seed=5)
    x1, s1 = random_inputs(cell, 2000, 2, seed=6)
    x2, s2 = random_inputs(cell, 2000, 5, seed=7)
    alone1, alone2 = cell(x1, s1), cell(x2, s2)
    together1, together2 = run_in_threads([lambda: cell(x1, s1), lambda: cell(x2, s2)])
    np.testing.assert_array_equal(together1[0], alone1[0])
    np.testing.assert_array_equal(together2[0], alone2[0])


# --- Two loops in progress at once, shown without timing: they advance in lock step -------------

def use_lockstep(STM_prev, E_t, LTM_t, W_v, b_v):
    return reference.use(STM_prev, E_t, LTM_t, W_v, b_v)


class LockstepUse(gatekit.PythonGate):
    """The standard Use gate, which (when ``barrier`` is set) waits at every step for the other
    cell's loop to reach the same step, and logs the steps it ran."""
    role, name, blocks, params = "use", "lockstep", ("v",), {}
    definition = staticmethod(use_lockstep)
    barrier = None
    log = []

    def forward(self, step):
        if LockstepUse.barrier is not None:
            LockstepUse.log.append((self.hidden_size, step.t))
            LockstepUse.barrier.wait(THREAD_TIMEOUT)
        step.U_t[...] = np.tanh(step.LTM_t)
        step.V_t[...] = reference.sigmoid(step.z("v"))
        step.STM_t[...] = step.U_t * step.V_t


def test_two_cells_progress_concurrently_in_lock_step(register):
    register(make_plugin(gates=[LockstepUse]), name="test-lockstep")
    # Different cells (sizes, gates, dtypes); hidden_size tells them apart in the log.
    cell_a = gatekit.Cell(3, 4, variant="standard", use="lockstep", dtype=np.float64, seed=1)
    cell_b = gatekit.Cell(5, 6, variant="peephole", use="lockstep", dtype=np.float32, seed=2)
    T = 300
    x_a, state_a = random_inputs(cell_a, T, 2, seed=3)
    x_b, state_b = random_inputs(cell_b, T, 3, seed=4)
    alone_a, alone_b = cell_a(x_a, state_a), cell_b(x_b, state_b)

    LockstepUse.barrier, LockstepUse.log = threading.Barrier(2), []
    try:
        # If the two calls could not be in their loops at the same time, the first step's
        # barrier would never fill and the gate would raise BrokenBarrierError.
        together_a, together_b = run_in_threads([lambda: cell_a(x_a, state_a),
                                                 lambda: cell_b(x_b, state_b)])
    finally:
        LockstepUse.barrier = None
    # Both loops ran every step, and step t of each came before step t + 1 of either.
    log = LockstepUse.log
    assert sorted(log) == sorted([(4, t) for t in range(T)] + [(6, t) for t in range(T)])
    assert [t for _, t in log] == sorted(t for _, t in log)
    for alone, together in ((alone_a, together_a), (alone_b, together_b)):
        np.testing.assert_array_equal(together[0], alone[0])
        np.testing.assert_array_equal(together[1][1], alone[1][1])


# --- The compiled loop releases the GIL ---------------------------------------------------------

def test_compiled_loop_lets_other_python_threads_run():
    """With a huge switch interval, a thread holding the GIL keeps it until it blocks or
    releases it. The worker signals, then calls the cell: if the loop releases the GIL, the main
    thread wakes while the worker is still inside the call (it cannot return without the GIL,
    which the main thread now keeps), so the main thread finishes its whole count before the
    worker's call returns. Were the GIL held throughout, the main thread could only run once the
    worker had finished (count 0). Deterministic but for OS scheduling, covered by retrying with
    longer sequences."""
    cell = gatekit.Cell(8, 32, variant="standard", dtype=np.float32, seed=0)
    x0 = np.random.default_rng(1).standard_normal((1, 2, 8)).astype(np.float32)
    expected = None
    observed = []
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        for T in (4000, 16000, 40000):
            x = np.ascontiguousarray(np.repeat(x0, T, axis=0))     # no copy inside the call
            started, done, result = threading.Event(), threading.Event(), {}

            def worker():
                started.set()
                result["y"] = cell(x)
                done.set()

            thread = threading.Thread(target=worker)
            thread.start()
            started.wait(THREAD_TIMEOUT)
            count = 0
            while count < 100_000 and not done.is_set():
                count += 1
            observed.append((T, count, done.is_set()))
            thread.join(THREAD_TIMEOUT)
            assert not thread.is_alive()
            if count == 100_000:
                expected = (T, result["y"])
                break
    finally:
        sys.setswitchinterval(previous)
    assert expected is not None, f"main thread never ran during the loop: {observed}"
    T, (y, (stm, ltm)) = expected
    # The run with the main thread busy is the same as a quiet one.
    y_alone, _ = cell(np.repeat(x0, T, axis=0))
    np.testing.assert_array_equal(y, y_alone)
