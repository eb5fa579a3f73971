"""A threaded call whose thread 0 goes on alone part-way (what it does when the machine is
busy and the team's barrier waits say one thread would be faster), and calls the others back
later (once it has been alone for a while).

Both switches depend on timing, so these tests make them happen at chosen steps through the
compiled loops' ``alone_at`` and ``back_at`` arguments, and check that the pass, run in part by
thread 0 over every thread's share, gives the same bits as one thread from the start, and the
reference's result to rounding: the time loop, the projected loop (forward and backward) and
the scan (backward: its forward pass has no barrier to wait at, so nothing to judge).
"""
import functools
import json
import resource
import subprocess
import sys

import numpy as np
import pytest

import gatekit
from gatekit.core import cell as cell_module
from gatekit.core import reference

from support import assert_close, assert_same_bits, child_env, make_plugin

UseStandard = type(gatekit.Cell(1, 1, "standard").gates[3])


class MixingUse(UseStandard):
    """The standard Use gate declared as mixing units: on a team, thread 0 runs it over all
    units between two barriers; alone, it runs as on one thread."""
    name = "alone_mixing_use"
    mixes_units = True


class LoopGoingAlone:
    """``gatekit.core.cell``'s view of a compiled loop, with each pass named in ``steps`` told
    the steps at which to go alone and to call the others back: ``{"forward": {"alone_at": 3,
    "back_at": 9}, ...}``."""

    def __init__(self, loop, steps):
        self._loop = loop
        for name, options in steps.items():
            setattr(self, name, functools.partial(getattr(loop, name), **options))

    def __getattr__(self, name):
        return getattr(self._loop, name)


D, H, B, T = 24, 96, 24, 40         # 3 panels of float32 on AVX-512, more elsewhere; 3 threads


def run(cell, x, state, dy, lengths=None):
    y, final, tape = cell.forward(x, state, keep=True, lengths=lengths)
    grads = cell.backward(tape, dy)
    return y, final, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("at", [0, 17, T - 1], ids=lambda at: f"at{at}")
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("variant, use", [("standard", None), ("course", None),
                                          ("peephole", None), ("standard", "alone_mixing_use")],
                         ids=["standard", "course-syncs", "peephole", "mixing-use"])
def test_going_alone_changes_no_bit(monkeypatch, register, variant, use, threads, at, dtype):
    register(make_plugin(gates=[MixingUse]), name="test-alone-mixing")
    overrides = {"use": use} if use else {}
    team = gatekit.Cell(D, H, variant, dtype=dtype, seed=3, threads=threads, **overrides)
    solo = gatekit.Cell(D, H, variant, dtype=dtype, seed=3, threads=1, **overrides)
    assert cell_module._loop.plan(T, B, D, H, team._weights.shape[0], threads,
                                  dtype == np.float32)[0] >= 2
    rng = np.random.default_rng(at + threads)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    assert_going_alone_changes_no_bit(monkeypatch, "_loop", alone_after(at), team, solo, x,
                                      state, dy, rng)


def alone_after(at, passes=("forward", "backward")):
    return {name: {"alone_at": at} for name in passes}


def alone_between(first, last, steps, passes=("forward", "backward")):
    """Alone from after step ``first`` to after step ``first + steps`` of the forward pass, and
    of the backward pass (which runs from the last step) from ``last`` to ``last - steps``."""
    between = {"forward": {"alone_at": first, "back_at": first + steps},
               "backward": {"alone_at": last, "back_at": last - steps}}
    return {name: between[name] for name in passes}


# One step alone is the narrowest window: a thread left behind may not yet have read that it
# is, when thread 0 calls it back. Repeated, so that a race there has many chances to show.
SPANS = [pytest.param(1, 20, id="1-step"), pytest.param(11, 1, id="11-steps")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("steps, repeats", SPANS)
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("variant, use", [("standard", None), ("course", None),
                                          ("standard", "alone_mixing_use")],
                         ids=["standard", "course-syncs", "mixing-use"])
def test_going_alone_and_back_changes_no_bit(monkeypatch, register, variant, use, threads,
                                             steps, repeats, dtype):
    register(make_plugin(gates=[MixingUse]), name="test-alone-mixing")
    overrides = {"use": use} if use else {}
    team = gatekit.Cell(D, H, variant, dtype=dtype, seed=4, threads=threads, **overrides)
    solo = gatekit.Cell(D, H, variant, dtype=dtype, seed=4, threads=1, **overrides)
    rng = np.random.default_rng(steps + threads)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    assert_going_alone_changes_no_bit(monkeypatch, "_loop", alone_between(6, T - 7, steps),
                                      team, solo, x, state, dy, rng, repeats)


# The projected loop: 60 steps of 16 sequences, H = 64 units and P = 30 projected (not a
# multiple of the threads), split between 2 or 3 threads.
PT, PB, PD, PH, PP = 60, 16, 16, 64, 30


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("at", [0, 23, PT - 1], ids=lambda at: f"at{at}")
@pytest.mark.parametrize("threads", [2, 3])
def test_the_projected_loop_going_alone_changes_no_bit(monkeypatch, threads, at, dtype):
    team = gatekit.Cell(PD, PH, proj_size=PP, dtype=dtype, seed=5, threads=threads)
    solo = gatekit.Cell(PD, PH, proj_size=PP, dtype=dtype, seed=5, threads=1)
    assert cell_module._projection.crew_size(PT, PB, PD, PH, PP, team._weights.shape[0],
                                             threads, team.gates) == threads
    rng = np.random.default_rng(at + threads)
    x = rng.standard_normal((PT, PB, PD)).astype(dtype)
    state = (rng.standard_normal((PB, PP)).astype(dtype),
             rng.standard_normal((PB, PH)).astype(dtype))
    dy = rng.standard_normal((PT, PB, PP)).astype(dtype)
    assert_going_alone_changes_no_bit(monkeypatch, "_projection", alone_after(at), team, solo,
                                      x, state, dy, rng)


@pytest.mark.parametrize("steps, repeats", SPANS)
@pytest.mark.parametrize("threads", [2, 3])
def test_the_projected_loop_going_alone_and_back_changes_no_bit(monkeypatch, threads, steps,
                                                                repeats):
    team = gatekit.Cell(PD, PH, proj_size=PP, dtype=np.float32, seed=6, threads=threads)
    solo = gatekit.Cell(PD, PH, proj_size=PP, dtype=np.float32, seed=6, threads=1)
    rng = np.random.default_rng(steps + threads)
    x = rng.standard_normal((PT, PB, PD)).astype(np.float32)
    state = (rng.standard_normal((PB, PP)).astype(np.float32),
             rng.standard_normal((PB, PH)).astype(np.float32))
    dy = rng.standard_normal((PT, PB, PP)).astype(np.float32)
    assert_going_alone_changes_no_bit(monkeypatch, "_projection",
                                      alone_between(9, PT - 10, steps), team, solo, x, state, dy,
                                      rng, repeats)


# The scan: 128 steps of 16 sequences in chunks of 16 steps, 48 units on 3 threads of 16.
ST, SB, SD, SH = 128, 16, 64, 48


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("at", [0, 70, ST - 1], ids=lambda at: f"at{at}")
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("variant", ["minlstm", "mingru"])
def test_the_scan_going_alone_changes_no_bit(monkeypatch, variant, threads, at, dtype):
    team = gatekit.Cell(SD, SH, variant, dtype=dtype, seed=7, threads=threads, scan=True)
    assert cell_module._scan.team_size(team.gates, ST, SB, SD, SH, team._weights.shape[0],
                                       threads)[0] == threads
    assert cell_module._scan.chunk_steps(SB) < ST // 4       # several chunks on either side
    rng = np.random.default_rng(at + threads)
    x = rng.standard_normal((ST, SB, SD)).astype(dtype)
    h0 = rng.uniform(-1, 1, (SB, SH)).astype(dtype)
    state = (h0, h0.copy())                 # one memory: the STM is the LTM
    dy = rng.standard_normal((ST, SB, SH)).astype(dtype)
    # The scan's weight gradients are products over each thread's units, which round
    # differently from one product over all: thread 0 alone does each thread's in turn, so
    # going alone gives the bits of the team that does not, rather than those of one thread.
    assert_going_alone_changes_no_bit(monkeypatch, "_scan", alone_after(at, ("backward",)),
                                      team, team, x, state, dy, rng)


@pytest.mark.parametrize("chunks, repeats", [pytest.param(1, 20, id="1-chunk"),
                                             pytest.param(3, 1, id="3-chunks")])
@pytest.mark.parametrize("threads", [2, 3])
def test_the_scan_going_alone_and_back_changes_no_bit(monkeypatch, threads, chunks, repeats):
    team = gatekit.Cell(SD, SH, "minlstm", dtype=np.float32, seed=8, threads=threads, scan=True)
    rng = np.random.default_rng(chunks + threads)
    x = rng.standard_normal((ST, SB, SD)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (SB, SH)).astype(np.float32)
    dy = rng.standard_normal((ST, SB, SH)).astype(np.float32)
    C = cell_module._scan.chunk_steps(SB)
    # Alone after the chunk of step T - 1 - C (the second from the end), back after the
    # chunk ``chunks`` further on (the scan's judge meets at each chunk's last barrier).
    steps = alone_between(0, ST - 1 - C, chunks * C, passes=("backward",))
    assert_going_alone_changes_no_bit(monkeypatch, "_scan", steps, team, team, x,
                                      (h0, h0.copy()), dy, rng, repeats)


# A team whose threads the system will not start: thread 0 runs the pass from the start, with
# every unit. A child process is denied them: glibc gives a thread a stack of the stack limit,
# here 4 GiB, and the child leaves itself 1 GiB of address space. Each loop's call of three
# threads (at the sizes the tests above split between threads) must then give one thread's bits.
UNSTARTED = [("standard", dict(), (T, B, D, H)),
             ("standard", dict(proj_size=PP), (PT, PB, PD, PH)),
             ("minlstm", dict(scan=True), (ST, SB, SD, SH))]

WITHOUT_THREADS = """
import json, resource, sys, threading
import numpy as np
import gatekit

with open("/proc/self/status") as status:
    used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS,
                   (used + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    threading.Thread(target=lambda: None).start()
except RuntimeError:
    pass
else:
    sys.exit(3)                     # threads start here after all: nothing to test
folder = sys.argv[1]
for k, (variant, options, _) in enumerate(json.loads(sys.argv[2])):
    given = np.load(f"{folder}/inputs{k}.npz")
    cell = gatekit.Cell(given["x"].shape[2], given["ltm0"].shape[1], variant, seed=5, threads=3,
                        **options)
    y, final, tape = cell.forward(given["x"], (given["stm0"], given["ltm0"]), keep=True)
    grads = cell.backward(tape, given["dy"])
    np.savez(f"{folder}/outputs{k}.npz", y=y, stm=final[0], ltm=final[1],
             **{f"d{name}": grad for name, grad in grads.items()})
"""


def test_a_team_the_system_will_not_start_runs_on_one_thread(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the child reads its address space from /proc")
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if hard != resource.RLIM_INFINITY and hard < 4 << 30:
        pytest.skip(f"the stack limit cannot be raised to 4 GiB (hard limit {hard})")
    solos = []
    for k, (variant, options, (T_, B_, D_, H_)) in enumerate(UNSTARTED):
        solo = gatekit.Cell(D_, H_, variant, seed=5, threads=1, **options)
        rng = np.random.default_rng(k)
        P_ = options.get("proj_size", H_)
        given = dict(x=rng.standard_normal((T_, B_, D_)), stm0=rng.uniform(-1, 1, (B_, P_)),
                     ltm0=rng.uniform(-1, 1, (B_, H_)), dy=rng.standard_normal((T_, B_, P_)))
        if variant == "minlstm":
            given["stm0"] = given["ltm0"].copy()        # one memory: the STM is the LTM
        np.savez(tmp_path / f"inputs{k}.npz", **given)
        solos.append((solo, given))

    def four_gib_stacks():
        resource.setrlimit(resource.RLIMIT_STACK, (4 << 30, hard))

    child = subprocess.run([sys.executable, "-c", WITHOUT_THREADS, str(tmp_path),
                            json.dumps(UNSTARTED)], env=child_env(), preexec_fn=four_gib_stacks,
                           capture_output=True, text=True, timeout=300)
    if child.returncode == 3:
        pytest.skip("this system starts threads with stacks larger than the address space left")
    assert child.returncode == 0, child.stderr
    for k, (solo, given) in enumerate(solos):
        x, state, dy = given["x"], (given["stm0"], given["ltm0"]), given["dy"]
        y, (stm, ltm), grads = run(solo, x, state, dy)
        with np.load(tmp_path / f"outputs{k}.npz") as team:
            assert set(team.files) == {"y", "stm", "ltm", *(f"d{name}" for name in grads)}
            assert_same_run((team["y"], (team["stm"], team["ltm"]),
                             {name: team[f"d{name}"] for name in grads}), (y, (stm, ltm), grads))
        assert_run_matches_the_reference(solo, x, state, dy, solo.dtype)


def assert_going_alone_changes_no_bit(monkeypatch, loop, steps, team, baseline, x, state, dy,
                                      rng, repeats=1):
    """``team``'s runs, with the passes of its compiled ``loop`` going alone (and back) at
    ``steps`` (see LoopGoingAlone), give the bits of ``baseline``'s, on whole and ragged
    batches, ``repeats`` times; and the equations."""
    T, B = x.shape[:2]
    lengths = rng.integers(T // 2, T + 1, size=B)
    lengths[0] = T
    want = [run(baseline, x, state, dy), run(baseline, x, state, dy, lengths)]
    monkeypatch.setattr(cell_module, loop, LoopGoingAlone(getattr(cell_module, loop), steps))
    for _ in range(repeats):
        for ragged, expected in enumerate(want):
            assert_same_run(run(team, x, state, dy, lengths if ragged else None), expected)
    assert_run_matches_the_reference(team, x, state, dy, x.dtype)


def assert_same_run(actual, expected):
    (y, final, grads), (y1, final1, grads1) = actual, expected
    assert_same_bits(y, y1, "y")
    assert_same_bits(final[0], final1[0], "stm")
    assert_same_bits(final[1], final1[1], "ltm")
    assert set(grads) == set(grads1)
    for name in grads:
        assert_same_bits(grads[name], grads1[name], f"d{name}")


def assert_run_matches_the_reference(cell, x, state, dy, dtype):
    """The equations: a run of one thread from the start is no oracle by itself."""
    y_ref, _ = reference.forward(cell, x, state, dtype=np.float64)
    grads_ref = reference.backward(cell, x, dy, state, dtype=np.float64)
    y, _, grads = run(cell, x, state, dy)
    assert_close(dtype, y, y_ref, "y")
    # A gradient sums T * B terms: bounded relative to its largest entry (observed in the time
    # loop: 2e-6 in float32, 4e-15 in float64).
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    for name, want_grad in grads_ref.items():
        scale = max(1.0, np.abs(want_grad).max())
        np.testing.assert_allclose(grads[name], want_grad, rtol=0, atol=tolerance * scale,
                                   err_msg=name)
