"""The tiled forward loop (``forward_member`` / ``run_team`` in gatekit/core/_loop.pyx): weights
packed once per call into register-tile panels (gatekit/core/_tiles.h), units split between up to
``threads`` POSIX threads of one call, one barrier per step, a gate that mixes units run by
thread 0 alone between two barriers.

The oracle is ``gatekit.reference`` (NumPy, float64), with the tolerances of the other forward
tests (support.py). The one comparison of the compiled loop with itself is the check
that the number of threads changes not a single bit (see test_threads_change_no_bit).

Every test asserts with ``_loop.plan`` that its call takes the tiled loop on the number of
threads it means to test, so that none silently runs the plain loop. The shapes are chosen
from the documented rules of the plan (see test_plan_keeps_the_documented_rules): the tiled
loop when B > 4 or T >= 8 (the plain loop is for the fixed cost of a call of a few steps of a
few sequences); more than one thread only when T * B * KH * (H + D) >= 4194304 * threads;
whole panels of units per thread. The panel width depends on the build this CPU runs (16
float32 / 8 float64 units for the baseline and AVX2 builds, 32 / 16 for AVX-512): it is read
from the plan of the loaded build, and the shapes below are chosen from it, so the tests take
the same paths whichever build ``GATEKIT_KERNELS`` selects.
"""
import itertools
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.core.cell import _loop

from support import (BUILTIN_VARIANTS, THREAD_TIMEOUT, assert_close, assert_matches_reference,
                     assert_same_bits, child_env, dtype_id, input_size_for, make_plugin, needs,
                     random_inputs, run_in_threads)

DTYPES = [np.float64, np.float32]
FEW_STEPS = 8                    # from T = 8 on, a batch of <= 4 sequences is tiled
THREADED_CALL_WORK = 4194304     # T * B * KH * (H + D) per thread from which a call is threaded
THREAD_STEP_WORK = 32768         # B * KH * (H + D) per thread and step from which a call is threaded
MAX_TEAM = 16
# Units per panel in the loaded build: a tiled call of one unit on one thread computes one
# (zero-padded) panel.
PANEL = {np.dtype(dtype): _loop.plan(1, 5, 1, 1, 4, 1, dtype == np.float32)[1]
         for dtype in (np.float32, np.float64)}


def KH(cell):
    return cell._weights.shape[0]


def plan_for(cell, T, B, threads=None):
    threads = cell.threads if threads is None else threads
    return _loop.plan(T, B, cell.input_size, cell.hidden_size, KH(cell), threads,
                      cell.dtype == np.float32)


def assert_tiled(cell, T, B, team, threads=None):
    """The call of ``cell`` on T steps of B sequences runs the tiled loop on ``team`` threads,
    whole panels per thread but for the last."""
    got_team, units = plan_for(cell, T, B, threads)
    H, nr = cell.hidden_size, PANEL[cell.dtype]
    assert got_team == team, (f"{cell!r}, T={T}, B={B}: plan {(got_team, units)}, wanted the tiled "
                              f"loop on {team} thread(s)")
    assert units % nr == 0 and (team - 1) * units < H <= team * units, (got_team, units)


def steps_for(cell, B, threads):
    """The fewest steps with which a call of B sequences qualifies for ``threads`` threads."""
    return max(1, math.ceil(THREADED_CALL_WORK * threads
                            / (B * KH(cell) * (cell.hidden_size + cell.input_size))))


def run_with_timeout(job):
    """job() in a Python thread, which must finish within THREAD_TIMEOUT (a hung call fails);
    returns what it returned or raises what it raised."""
    [result] = run_in_threads([job])
    return result


# --- The plan: which loop, how many threads (the rules the shapes below rely on) -------------

def test_panel_width_of_the_build():
    assert PANEL[np.dtype(np.float64)] in (4, 8, 16)      # portable, AVX2, AVX-512
    assert PANEL[np.dtype(np.float32)] == 2 * PANEL[np.dtype(np.float64)]   # same bytes


@pytest.mark.parametrize("single", [True, False], ids=["float32", "float64"])
def test_plan_of_hand_picked_calls(single):
    nr = PANEL[np.dtype(np.float32 if single else np.float64)]
    # A few steps of a few sequences: the plain loop; more than 4 sequences or 8 steps: tiled,
    # on one thread while the call is small, with all H units in whole panels.
    assert _loop.plan(7, 4, 3, 8, 32, 2, single) == (0, 8)
    assert _loop.plan(1, 1, 128, 128, 256, 2, single) == (0, 128)
    assert _loop.plan(8, 4, 3, 8, 32, 2, single) == (1, -(-8 // nr) * nr)
    assert _loop.plan(100, 1, 3, 8, 32, 2, single) == (1, -(-8 // nr) * nr)
    assert _loop.plan(1, 5, 3, 8, 32, 2, single) == (1, -(-8 // nr) * nr)
    # Threads: from T * B * KH * (H + D) = 4194304 * threads on.
    H, D = 4 * nr, 256 - 4 * nr
    assert 32 * 8 * 128 * (H + D) == 2 * THREADED_CALL_WORK
    assert _loop.plan(32, 8, D, H, 128, 2, single) == (2, 2 * nr)
    assert _loop.plan(31, 8, D, H, 128, 2, single) == (1, 4 * nr)
    # Never more threads than panels, nor than MAX_TEAM; nothing to tile without steps or blocks.
    assert _loop.plan(10_000, 8, 32, nr, 4 * nr, 8, single) == (1, nr)
    assert _loop.plan(10_000, 64, 32, 2 * nr, 8 * nr, 3, single) == (2, nr)
    # Nor more threads than steps of THREAD_STEP_WORK: S1 (B = 1, D = 32, H = 64) has one.
    assert 1 * 256 * (64 + 32) < THREAD_STEP_WORK
    assert _loop.plan(1000, 1, 32, 64, 256, 2, single) == (1, math.ceil(64 / nr) * nr)
    assert _loop.plan(1000, 1, 64, 64, 256, 8, single)[0] == 1         # one step's work
    assert _loop.plan(1000, 2, 64, 64, 256, 8, single)[0] == 2         # two
    assert _loop.plan(10_000, 8, 32, 64 * nr, 256 * nr, 1000, single) == (MAX_TEAM, 4 * nr)
    assert _loop.plan(0, 8, 3, 8, 32, 2, single) == (0, 8)
    assert _loop.plan(10, 8, 3, 8, 0, 2, single) == (0, 8)


@pytest.mark.parametrize("single", [True, False], ids=["float32", "float64"])
def test_plan_keeps_the_documented_rules(single):
    # Over a grid of sizes around every threshold, the properties every plan must have (not
    # the formula that makes them): the plain loop exactly for the calls it is documented for;
    # otherwise every unit computed by exactly one thread, in whole panels; a second thread
    # only for a call with the documented work for each; and the units shared as evenly as
    # whole panels allow among the threads the call may use.
    nr = PANEL[np.dtype(np.float32 if single else np.float64)]
    sizes = ((1, 1), (3, nr - 1), (24, 40), (1, 131), (64, 64), (61, 5 * nr + 3))
    for T, B, (D, H), k, threads in itertools.product(
            (0, 1, 2, 7, 8, 63, 64, 65, 1000, 20_000), (1, 2, 4, 5, 13, 64), sizes,
            (0, 1, 2, 4, 5), (1, 2, 3, 7, 16, 17)):
        KH = k * H
        case = dict(T=T, B=B, D=D, H=H, KH=KH, threads=threads)
        team, units = _loop.plan(T, B, D, H, KH, threads, single)
        if KH == 0 or T == 0 or (B <= 4 and T < FEW_STEPS):
            assert (team, units) == (0, H), case
            continue
        assert 1 <= team <= min(threads, MAX_TEAM), (case, team)
        # Thread j computes units [j * units, min((j + 1) * units, H)): all H units, each once,
        # every thread some, all but the last in whole panels.
        assert units % nr == 0 and units > 0, (case, units)
        shares = [range(j * units, min((j + 1) * units, H)) for j in range(team)]
        assert sorted(u for share in shares for u in share) == list(range(H)), (case, units)
        assert all(len(share) > 0 for share in shares), (case, team, units)
        step_work = B * KH * (H + D)
        allowed = min(threads, MAX_TEAM)
        if T * step_work < THREADED_CALL_WORK * allowed:
            allowed = 1                               # below the work threshold: one thread
        allowed = max(1, min(allowed, step_work // THREAD_STEP_WORK))
        assert team <= allowed, (case, team)
        # As even as whole panels allow: one panel less per thread would not cover H.
        assert units * allowed >= H and (units == nr or (units - nr) * allowed < H), (
            case, team, units)


# --- Every built-in variant, float32 and float64, 1, 2 and 3 threads --------------------------

# D = 24, H = 40: two panels or more in every build (AVX2: 5 panels of 8 in float64, 24 + 16
# units on 2 threads; 3 panels of 16 in float32, the last 8 wide, 32 + 8 units). B = 29 rows:
# tiles of 6 (or 12, AVX-512) rows and 5 more.
VARIANT_SHAPE = dict(D=24, H=40, B=29)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", BUILTIN_VARIANTS)
def test_variant_one_thread(variant, dtype):
    D, H, B = VARIANT_SHAPE["D"], VARIANT_SHAPE["H"], VARIANT_SHAPE["B"]
    D = input_size_for(variant, D, H)
    T = 30                           # T * B = 870 rows: 4 * 192 + 102 in the input product
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=11, threads=1)
    assert_tiled(cell, T, B, team=1)
    x, state = random_inputs(cell, T, B, seed=1)
    assert_matches_reference(cell, x, state)
    assert_matches_reference(cell, x)              # from zeros


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", BUILTIN_VARIANTS)
def test_variant_two_threads(variant, dtype):
    D, H, B = VARIANT_SHAPE["D"], VARIANT_SHAPE["H"], VARIANT_SHAPE["B"]
    D = input_size_for(variant, D, H)
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=12, threads=2)
    T = steps_for(cell, B, 2)
    assert_tiled(cell, T, B, team=2)
    x, state = random_inputs(cell, T, B, seed=2)
    y, final = assert_matches_reference(cell, x, state)
    # One thread on the same call gives the same bits (see test_threads_change_no_bit).
    alone = gatekit.Cell(D, H, variant, dtype=dtype, seed=12, threads=1)
    assert_tiled(alone, T, B, team=1)
    y1, final1 = alone(x, state)
    assert_same_bits(y, y1, "y")
    assert_same_bits(final[1], final1[1], "ltm")


# float32: 3 panels, one per thread (H = 48 with panels of 16); float64: 5 panels as 2 + 2 + 1
# (H = 40 with panels of 8). B = 73 rows: the one-row path after full tiles of 6 (or 12).
THREE_THREAD_SHAPES = {
    np.dtype(np.float32): dict(D=16, H=3 * PANEL[np.dtype(np.float32)], B=73,
                               units=PANEL[np.dtype(np.float32)]),
    np.dtype(np.float64): dict(D=24, H=5 * PANEL[np.dtype(np.float64)], B=73,
                               units=2 * PANEL[np.dtype(np.float64)]),
}


def three_thread_call(variant, dtype, seed):
    """A cell of THREE_THREAD_SHAPES, and the steps T and sequences B of a call of it that runs
    on three threads."""
    shape = THREE_THREAD_SHAPES[np.dtype(dtype)]
    cell = gatekit.Cell(input_size_for(variant, shape["D"], shape["H"]), shape["H"], variant,
                        dtype=dtype, seed=seed, threads=3)
    B = shape["B"]
    T = steps_for(cell, B, 3)
    assert_tiled(cell, T, B, team=3)
    assert plan_for(cell, T, B) == (3, shape["units"])
    return cell, T, B


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", BUILTIN_VARIANTS)
def test_variant_three_threads(variant, dtype):
    cell, T, B = three_thread_call(variant, dtype, seed=13)
    x, state = random_inputs(cell, T, B, seed=3)
    assert_matches_reference(cell, x, state)


def test_more_threads_than_a_team_holds():
    # threads=40 is capped at 16 threads; 16 panels, one per thread, the last 5 units short
    # (H = 125 with panels of 8). (On a machine with fewer CPUs the barrier yields to the
    # threads that are behind; this only takes longer.)
    nr = PANEL[np.dtype(np.float64)]
    cell = gatekit.Cell(3, 16 * nr - 3, "standard", dtype=np.float64, seed=14, threads=40)
    B = 151
    T = steps_for(cell, B, MAX_TEAM)
    assert plan_for(cell, T, B) == (MAX_TEAM, nr)
    x, state = random_inputs(cell, T, B, seed=4)
    assert_matches_reference(cell, x, state)


# --- Tile remainders: B rows 6 at a time (1 or 2 rows apart), H not a multiple of the panel ----

# (B, H) with D = 1: B <= 4 is tiled from T = 8 on (T = 9 below).
# Rows: 1 and 2 take their own path; 5, 7, 13, 14, 25 leave 5, 1, 1, 2, 1 rows after tiles of 6
# (and 5, 7, 1, 2, 1 after tiles of 12). Units: 21 and 37 are no multiple of any panel width
# (4 to 32).
REMAINDER_SHAPES = [(1, 131), (2, 93), (4, 67)] + [(B, H) for B in (5, 6, 7, 8, 13, 14, 25)
                                                   for H in (21, 37)]
THREADED_REMAINDER_SHAPES = [(1, 131), (2, 93), (7, 37), (13, 21), (25, 37)]


def check_remainders(B, H, dtype, threads):
    # Few inputs, but enough for each thread's THREAD_STEP_WORK in the threaded shapes.
    D = 1 if threads == 1 else 48
    cell = gatekit.Cell(D, H, "peephole", dtype=dtype, seed=B * 100 + H, threads=threads)
    # On 2 threads when the units make 2 panels or more.
    team = threads if -(-H // PANEL[cell.dtype]) >= threads else 1
    T = steps_for(cell, B, threads) if threads > 1 else 9
    assert_tiled(cell, T, B, team=team)
    assert H % PANEL[cell.dtype] != 0
    x, state = random_inputs(cell, T, B, seed=5)
    assert_matches_reference(cell, x, state)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("B, H", REMAINDER_SHAPES, ids=lambda v: str(v))
def test_batch_and_unit_remainders_one_thread(B, H, dtype):
    check_remainders(B, H, dtype, threads=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("B, H", THREADED_REMAINDER_SHAPES, ids=lambda v: str(v))
def test_batch_and_unit_remainders_two_threads(B, H, dtype):
    check_remainders(B, H, dtype, threads=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", ["standard", "course"])
@pytest.mark.parametrize("H", [1, 5, 16])
def test_one_panel_is_one_thread(H, variant, dtype):
    # Units that make one panel: one thread even with threads=2 and a large call.
    D, B = 61, 203
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=H, threads=2)
    T = steps_for(cell, B, 2)
    assert_tiled(cell, T, B, team=1 if H <= PANEL[cell.dtype] else 2)
    x, state = random_inputs(cell, T, B, seed=6)
    assert_matches_reference(cell, x, state)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("T", [1, 2])
def test_few_steps_of_many_sequences_on_two_threads(T, dtype):
    # One or two steps, threaded because B is large; T * B = 275 or 550 rows of input product
    # in pieces of 192, 275 = 45 * 6 + 5 (22 * 12 + 11) rows per step.
    D, H, B = 68, 60, 275
    cell = gatekit.Cell(D, H, "standard", dtype=dtype, seed=T, threads=2)
    assert steps_for(cell, B, 2) <= T
    assert_tiled(cell, T, B, team=2)
    x, state = random_inputs(cell, T, B, seed=7)
    assert_matches_reference(cell, x, state)
    assert_tape_matches_reference(cell, x, state)


def test_long_sequence_on_two_threads():
    # Many barriers in a row, a course cell: three per step.
    cell = gatekit.Cell(8, 40, "course", dtype=np.float64, seed=15, threads=2)
    T, B = 400, 9
    assert_tiled(cell, T, B, team=2)
    x, state = random_inputs(cell, T, B, seed=8)
    assert_matches_reference(cell, x, state)


# --- What the tape keeps (keep=True): pre-activations, gate outputs and memories ---------------

# The forget gate with a peephole passes on s_t, its full pre-activation, in its block of z:
# the product plus p_f ⊙ LTM_{t-1}. Every other block of z holds the loop's product (the
# peepholes of the learn and use gates, built from their definitions, leave it as it is).
# (role, gate, block): (parameter, memory).
PEEPHOLE_TERMS = {
    ("forget", "peephole", "f"): ("p_f", "LTM_prev"),
}
ACTS = ("f_t", "i_t", "N_t", "U_t", "V_t")


def reference_tape(cell, x, state):
    """z (T, B, KH), acts (5, T, B, H), ltm (T + 1, B, H) and y (T, B, H) from the reference,
    in float64."""
    T, B, _ = x.shape
    H = cell.hidden_size
    params = {name: np.asarray(value, np.float64) for name, value in cell.params.items()}
    stm, ltm = (np.asarray(s, np.float64) for s in state)
    z = np.empty((T, B, KH(cell)))
    acts = np.empty((5, T, B, H))
    ltms = np.empty((T + 1, B, H))
    ltms[0] = ltm
    y = np.empty((T, B, H))
    for t in range(T):
        E_t = np.asarray(x[t], np.float64)
        known = reference.step(cell, E_t, stm, ltm, dtype=np.float64)
        for gate in cell.gates:
            cls = type(gate)
            for block, column in zip(cls.blocks, gate.columns):
                W, b = params[f"W_{block}"], params[f"b_{block}"]
                zk = {"both": lambda: reference.linear(W, stm, E_t, b),
                      "event": lambda: reference.linear_event(W, E_t, b),
                      "STM": lambda: reference.linear_stm(W, stm, b)}[cls.block_reads(block)]()
                term = PEEPHOLE_TERMS.get((cls.role, cls.name, block))
                if term is not None:
                    zk = zk + params[term[0]] * known[term[1]]
                if cls.role == "forget" and "s_t" in known:
                    np.testing.assert_allclose(zk, known["s_t"], rtol=0, atol=1e-12)
                z[t, :, column:column + H] = zk
        for slot, name in enumerate(ACTS):
            acts[slot, t] = np.broadcast_to(known[name], (B, H))
        stm, ltm = known["STM_t"], known["LTM_t"]
        ltms[t + 1] = ltm
        y[t] = stm
    return z, acts, ltms, y


def assert_tape_matches_reference(cell, x, state):
    y, (stm, ltm), tape = cell.forward(x, state, keep=True)
    dtype = cell.dtype
    z_ref, acts_ref, ltm_ref, y_ref = reference_tape(cell, x, state)
    assert tape.z.shape == z_ref.shape and tape.acts.shape == acts_ref.shape
    assert tape.ltm.shape == ltm_ref.shape
    assert_close(dtype, tape.z, z_ref, "z")
    for slot, name in enumerate(ACTS):
        assert_close(dtype, tape.acts[slot], acts_ref[slot], name)
    assert_close(dtype, tape.ltm, ltm_ref, "ltm")
    assert_close(dtype, y, y_ref, "y")
    assert_close(dtype, ltm, ltm_ref[-1], "final ltm")
    # The tape's own y (what the backward pass reads), not the caller's.
    assert not np.shares_memory(tape.y, y)
    assert_close(dtype, tape.y, y_ref, "tape.y")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", BUILTIN_VARIANTS)
def test_tape_matches_reference(variant, dtype, threads):
    D, H, B = 24, 40, 37                           # B = 6 * 6 + 1 = 3 * 12 + 1
    D = input_size_for(variant, D, H)
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=16, threads=threads)
    T = steps_for(cell, B, 2)
    assert_tiled(cell, T, B, team=threads)
    x, state = random_inputs(cell, T, B, seed=9)
    assert_tape_matches_reference(cell, x, state)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", ["course", "peephole", "janet"])
def test_trace_matches_reference_on_three_threads(variant, dtype):
    cell, T, B = three_thread_call(variant, dtype, seed=17)
    H = cell.hidden_size
    x, state = random_inputs(cell, T, B, seed=10)
    traced = cell.trace(x, state)
    stm, ltm = (np.asarray(s, np.float64) for s in state)
    for t in range(T):
        known = reference.step(cell, np.asarray(x[t], np.float64), stm, ltm, dtype=np.float64)
        for name in ACTS + ("LTM_t", "STM_t", "s_t"):
            if name in known:
                assert_close(dtype, traced[name][t], np.broadcast_to(known[name], (B, H)),
                             f"{name} at step {t}")
        stm, ltm = known["STM_t"], known["LTM_t"]


# --- Ragged batches: every sequence against the reference run on it alone ----------------------

def assert_ragged_matches_reference(cell, x, state, lengths, result):
    y, (stm, ltm) = result
    T, B, _ = x.shape
    for b, L in enumerate(lengths):
        one = slice(b, b + 1)
        y_ref, (stm_ref, ltm_ref) = reference.forward(
            cell, x[:L, one], (state[0][one], state[1][one]), dtype=np.float64)
        assert_close(cell.dtype, y[:L, b], y_ref[:, 0], f"y of sequence {b} (length {L})")
        assert np.all(y[L:, b] == 0), f"padded outputs of sequence {b} must be zeros"
        assert_close(cell.dtype, stm[b], stm_ref[0], f"stm of sequence {b}")
        assert_close(cell.dtype, ltm[b], ltm_ref[0], f"ltm of sequence {b}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("variant", ["standard", "course", "peephole", "janet"])
def test_ragged_batch_matches_each_sequence_alone(variant, threads, dtype):
    D, H = 24, 40
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=18, threads=threads)
    B = 13
    T = max(steps_for(cell, B, threads), 20)
    # Unsorted, repeats, 1, T, and sequences ending at every part of the call.
    lengths = np.array([T, 1, 5, T - 1, 17, T, 2, 9, T, T // 2, 3, T // 3, 11])
    assert_tiled(cell, T, B, team=threads)
    x, state = random_inputs(cell, T, B, seed=11)
    result = cell.forward(x, state, lengths=lengths)
    assert_ragged_matches_reference(cell, x, state, lengths, result)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_ragged_batch_all_shorter_than_x_on_two_threads(dtype):
    # No sequence lasts all T steps: the last steps change nobody's memories.
    cell = gatekit.Cell(24, 40, "course", dtype=dtype, seed=19, threads=2)
    B = 7
    T = steps_for(cell, B, 2)
    lengths = np.array([T - 1, 1, T // 2, T - 5, 2, T - 1, 7])
    assert_tiled(cell, T, B, team=2)
    x, state = random_inputs(cell, T, B, seed=12)
    y, final, tape = cell.forward(x, state, lengths=lengths, keep=True)
    assert_ragged_matches_reference(cell, x, state, lengths, (y, final))


# --- The number of threads changes no bit ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", ["standard", "course", "literal", "peephole", "janet"])
def test_threads_change_no_bit(variant, dtype):
    # The compiled loop compared with itself, on purpose: splitting the units between threads
    # changes only which thread computes a column. Each column is still computed from the same
    # panel (panels are aligned to whole multiples of the panel width whatever the split), with
    # the same sums in the same order, and a gate that mixes units runs on thread 0 over all of
    # them either way; so 1, 2 and 3 threads must agree to the last bit, tape included. A
    # difference would mean a race or a column computed from the wrong share of the weights.
    shape = THREE_THREAD_SHAPES[np.dtype(dtype)]
    D, H, B = shape["D"], shape["H"], shape["B"]
    cells = {n: gatekit.Cell(D, H, variant, dtype=dtype, seed=20, threads=n) for n in (1, 2, 3)}
    T = steps_for(cells[3], B, 3)
    lengths = np.minimum(np.resize([T, 3, T - 2, 1, T, 8, T // 2, T, 5, T - 1, 2, T, 13], B), T)
    x, state = random_inputs(cells[1], T, B, seed=13)
    runs = {}
    for n, cell in cells.items():
        assert_tiled(cell, T, B, team=n)
        for ragged in (None, lengths):
            runs[n, ragged is None] = cell.forward(x, state, keep=True, lengths=ragged)
            if n > 1:                              # and again: the same bits every time
                again = cell.forward(x, state, keep=True, lengths=ragged)
                assert_same_bits(again[0], runs[n, ragged is None][0], f"{n} threads, rerun")
    for n in (2, 3):
        for full in (True, False):
            (y1, (stm1, ltm1), tape1), (y, (stm, ltm), tape) = runs[1, full], runs[n, full]
            what = f"{n} threads, {'full' if full else 'ragged'} batch"
            for name, a, b in (("y", y, y1), ("stm", stm, stm1), ("ltm", ltm, ltm1),
                               ("tape.z", tape.z, tape1.z), ("tape.acts", tape.acts, tape1.acts),
                               ("tape.ltm", tape.ltm, tape1.ltm)):
                assert_same_bits(a, b, f"{what}: {name}")
    assert_matches_reference(cells[3], x, state, runs[3, True][:2])


# --- Example plugins through the tiled loop ----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_floored_plugin_compiled_gate(threads, dtype):
    needs("gatekit_floored_forget")
    if "floored" not in gatekit.variants():
        pytest.skip("the floored plugin is installed but blocked (GATEKIT_BLOCK_PLUGINS)")
    D, H, B = 24, 40, 11
    cell = gatekit.Cell(D, H, "floored", dtype=dtype, seed=21, threads=threads)
    cell.params["q_f"] = np.random.default_rng(21).uniform(-3, 3, H)   # a floor per unit
    T = steps_for(cell, B, threads) if threads > 1 else 30
    assert_tiled(cell, T, B, team=threads)
    x, state = random_inputs(cell, T, B, seed=14)
    assert_matches_reference(cell, x, state)
    lengths = np.arange(T, T - B, -1) // (np.arange(B) + 1)
    assert_ragged_matches_reference(cell, x, state, lengths,
                                    cell.forward(x, state, lengths=lengths))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", ["softsign", "hard_softsign"])
def test_numpy_plugin_python_gates(variant, dtype):
    needs("gatekit_numpy_gates")
    if variant not in gatekit.variants():
        pytest.skip("the numpy-gates plugin is installed but blocked (GATEKIT_BLOCK_PLUGINS)")
    D, H, B = 24, 40, 11
    for threads in (1, 2):
        # With threads=2 the call qualifies for 2 threads, but a Python gate makes it one.
        cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=22, threads=threads)
        T = steps_for(cell, B, 2)
        assert_tiled(cell, T, B, team=threads)
        x, state = random_inputs(cell, T, B, seed=15)
        assert_matches_reference(cell, x, state)


def use_logged(STM_prev, E_t, LTM_t, W_v, b_v):
    return reference.use(STM_prev, E_t, LTM_t, W_v, b_v)


class ThreadLoggingUse(gatekit.PythonGate):
    """The standard Use gate in NumPy, logging the thread of every call."""
    role, name, blocks, params = "use", "tiled_thread_logging", ("v",), {}
    definition = staticmethod(use_logged)
    threads = []

    def forward(self, step):
        ThreadLoggingUse.threads.append(threading.get_ident())
        step.U_t[...] = np.tanh(step.LTM_t)
        step.V_t[...] = reference.sigmoid(step.z("v"))
        step.STM_t[...] = step.U_t * step.V_t


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_python_gate_forces_one_thread(register, dtype):
    register(make_plugin(gates=[ThreadLoggingUse]), name="test-tiled-thread-logging")
    cell = gatekit.Cell(24, 40, "standard", use="tiled_thread_logging", dtype=dtype, seed=23,
                        threads=2)
    B = 11
    T = steps_for(cell, B, 2)
    assert_tiled(cell, T, B, team=2)              # what a compiled cell of this shape would use
    x, state = random_inputs(cell, T, B, seed=16)
    ThreadLoggingUse.threads = []
    assert_matches_reference(cell, x, state)
    # Every step ran the gate once, on the calling thread: the loop's own threads never did.
    assert ThreadLoggingUse.threads == [threading.get_ident()] * T


# --- A gate that fails inside a threaded call ---------------------------------------------------

class HollowForget(gatekit.Gate):
    """A Python subclass of the compiled Gate (not PythonGate) that implements no compiled
    forward: the loop's threads each find it fails, with the GIL released by the caller."""
    role, name, blocks = "forget", "tiled_hollow_forget", ("f",)
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget)


class HollowMixingUse(gatekit.Gate):
    """The same, as a Use gate that mixes units: run by thread 0 alone, between barriers."""
    role, name, blocks = "use", "tiled_hollow_mixing_use", ("v",)
    mixes_units = True
    definition = staticmethod(reference.use)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("role, gate", [("forget", HollowForget), ("use", HollowMixingUse)],
                         ids=["forget-every-thread", "use-mixing-thread0"])
def test_failing_gate_in_threaded_call_raises_and_does_not_hang(register, role, gate, dtype,
                                                                threads):
    register(make_plugin(gates=[gate]), name="test-tiled-hollow")
    shape = THREE_THREAD_SHAPES[np.dtype(dtype)]
    D, H, B = shape["D"], shape["H"], shape["B"]
    cell = gatekit.Cell(D, H, "standard", **{role: gate.name}, dtype=dtype, seed=24,
                        threads=threads)
    T = steps_for(cell, B, threads)
    assert_tiled(cell, T, B, team=threads)
    x, state = random_inputs(cell, T, B, seed=17)
    for keep in (False, True):                       # twice: the error is not left behind
        with pytest.raises(NotImplementedError, match="computes nothing") as info:
            run_with_timeout(lambda: cell.forward(x, state, keep=keep))
        assert any(f"{role} gate {gate.name!r} at time step 0" in note
                   for note in getattr(info.value, "__notes__", [])), info.value
        assert all(g.take_error() is None for g in cell.gates)
    # The loop still runs good cells afterwards, on threads.
    good = gatekit.Cell(D, H, "course", dtype=dtype, seed=24, threads=threads)
    assert_tiled(good, T, B, team=threads)
    result = run_with_timeout(lambda: good(x, state))
    assert_matches_reference(good, x, state, result)


# --- Two Python threads, each with its own threaded call ----------------------------------------

def test_two_python_threads_each_running_a_threaded_cell():
    cell_a = gatekit.Cell(24, 40, "course", dtype=np.float64, seed=25, threads=2)
    cell_b = gatekit.Cell(16, 48, "peephole", dtype=np.float32, seed=26, threads=2)
    B_a, B_b = 7, 13
    T_a, T_b = 2 * steps_for(cell_a, B_a, 2), 2 * steps_for(cell_b, B_b, 2)
    assert_tiled(cell_a, T_a, B_a, team=2)
    assert_tiled(cell_b, T_b, B_b, team=2)
    x_a, state_a = random_inputs(cell_a, T_a, B_a, seed=18)
    x_b, state_b = random_inputs(cell_b, T_b, B_b, seed=19)
    lengths_b = np.random.default_rng(20).integers(1, T_b + 1, B_b)
    alone_a = cell_a(x_a, state_a)
    alone_b = cell_b.forward(x_b, state_b, lengths=lengths_b)
    assert_matches_reference(cell_a, x_a, state_a, alone_a)
    assert_ragged_matches_reference(cell_b, x_b, state_b, lengths_b, alone_b)

    jobs = [lambda: cell_a(x_a, state_a), lambda: cell_b.forward(x_b, state_b, lengths=lengths_b)]
    for _ in range(3):
        for alone, together in zip((alone_a, alone_b), run_in_threads(jobs)):
            assert_same_bits(together[0], alone[0], "y")
            assert_same_bits(together[1][0], alone[1][0], "stm")
            assert_same_bits(together[1][1], alone[1][1], "ltm")


# --- The threads argument and GATEKIT_NUM_THREADS ------------------------------------------------

@pytest.mark.parametrize("threads", [0, -1, True, False, 1.5, 2.0, "2", np.float64(2)])
def test_threads_argument_is_checked(threads):
    with pytest.raises(ValueError, match=r"threads must be a whole number of threads, at "
                                         r"least 1; got"):
        gatekit.Cell(3, 4, threads=threads)


def test_threads_argument_accepted():
    assert gatekit.Cell(3, 4).threads is None
    assert gatekit.Cell(3, 4, threads=np.int64(3)).threads == 3
    cell = gatekit.Cell(3, 4, threads=2)
    assert cell.threads == 2 and type(cell.threads) is int
    assert cell.copy().threads == 2 and cell.copy(np.float64).threads == 2


def run_python(code, tmp_path, threads):
    """``code`` in a fresh interpreter importing this gatekit, with GATEKIT_NUM_THREADS set to
    ``threads``, run from ``tmp_path``."""
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          env=child_env(GATEKIT_NUM_THREADS=threads), capture_output=True,
                          text=True, timeout=THREAD_TIMEOUT)


@pytest.mark.parametrize("value", ["abc", "0", "1.5"])
def test_bad_num_threads_environment_variable_fails_import(tmp_path, value):
    run = run_python("import gatekit", tmp_path, value)
    assert run.returncode != 0
    assert "ValueError" in run.stderr and "GATEKIT_NUM_THREADS" in run.stderr, run.stderr
    assert f"got {value.strip()}" in run.stderr or f"got {value!r}" in run.stderr, run.stderr


def test_num_threads_environment_variable(tmp_path):
    code = ("import os, gatekit.core.cell; print(gatekit.core.cell.THREADS); "
            "print(len(os.sched_getaffinity(0)))")
    for value, expected in (("1", 1), ("3", 3), ("", None)):
        run = run_python(code, tmp_path, value)
        assert run.returncode == 0, run.stderr
        threads, cpus = run.stdout.split()
        assert int(threads) == (int(cpus) if expected is None else expected)


def test_layer_passes_threads_to_its_cells():
    layer = gatekit.LSTM(3, 40, num_layers=2, bidirectional=True, threads=1, seed=0)
    assert {cell.threads for cell in layer.cells.values()} == {1}
    assert {cell.threads for cell in layer.copy().cells.values()} == {1}
    with pytest.raises(ValueError, match="threads"):
        gatekit.LSTM(3, 4, threads=0)
