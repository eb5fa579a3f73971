"""The memory cell's time loop, forward and backward: one compiled loop for every composition
of gates.

The wrapper in ``gatekit.core.cell`` has checked the caller's arrays and allocated every buffer
before it calls in here (the entry points check the buffers' shapes once more: the loops index
them through raw pointers); nothing here touches a Python object between the first and the last
step unless a gate is written in Python (it takes the GIL back for itself).

Buffers, for T steps of B sequences, D inputs, H units and K blocks (KH = K * H columns):
W (KH, H + D) with the STM columns first, bias (KH,), x (T, B, D), z (T, B, KH) the
pre-activations. The blocks come in three runs, by what they read: STM_{t-1} only (columns
[0, first_input)), [STM_{t-1}, E_t], then E_t only (columns [recurrent_end, KH)); the loop
computes the input product E_t W[:, H:]^T for columns [first_input, KH) and the recurrent
product STM_{t-1} W[:, :H]^T for columns [0, recurrent_end) only, so the unread columns of W
(zeros) cost a block nothing in the time loop. acts (5, S, B, H) holds f_t, i_t, N_t, U_t, V_t
of step t at [:, t % S];
ltm (S + 1, B, H) holds LTM_{t-1} at [t % (S + 1)] and LTM_t at [(t + 1) % (S + 1)], with
ltm[0] = the initial LTM; y (T, B, H) receives STM_t. Steps are numbered t = 0 .. T - 1, so
STM_{-1} and LTM_{-1} are the initial state. S is T when the forward pass keeps a tape for
backward, 1 otherwise. The gates' M extra memories (``Gate.memories``), if any, are kept as the
LTM is: mem (S + 1, M, B, H), step t - 1's at [t % (S + 1)], step t's at [(t + 1) % (S + 1)]
(see point_memories); a cell without them has no mem and does no work for it. ``forward``
takes z, acts, ltm (and mem) and its scratch in one workspace (``workspace_layout`` says
where); ``backward`` takes them as the arrays of the tape.

The file reads top-down:

- the plan: which loop a call runs, and how its units are split between threads;
- the team: the threads of one call, the barrier that keeps them in step, a thread's share of
  the gates of a step, and thread 0 going on alone while the team would be slower;
- the forward pass: ``forward``, the plain loop (calls too small to be worth packing the
  weights), then a thread's part of the tiled loop;
- the backward pass: the recurrence it computes, ``backward``, a thread's part of the time loop,
  then of the weight gradients that follow it;
- the regularisers of the recurrence (zoneout, recurrent dropout), which both passes apply
  around the gates of a step when a call has them;
- helpers that both passes use: pointing the step at step t, the products over packed weights.

Each section starts with what it offers and goes on with what that calls.
"""
from gatekit.core._gate cimport Gate, Extent, StepFloat, StepDouble, floating
from gatekit.core._step cimport StepAny, step_layout
from gatekit.core._team cimport (
    MAX_TEAM, Pace, StepEnd, GO_ON, STOP, GO_ALONE, TEAM_AGAIN, end_pace, gk_barrier,
    gk_barrier_wait, gk_start, gk_wait_for_start, join_members, meet_at_end_of_step, pthread_t,
    start_members, start_pace, wait_to_be_called)
from libc.stdint cimport uint32_t
from libc.stdlib cimport malloc, free
import numpy as np

from gatekit.core._gate import PythonGate

__all__ = ["backward", "backward_scratch", "forward", "plan", "regulariser_buffers", "threads_for",
           "workspace_layout", "zoneout_hash"]


cdef extern from "_tiles.h" nogil:
    Py_ssize_t gk_claim(Py_ssize_t* counter)
    void gk_raise(int* flag)
    int gk_raised(int* flag)
    void gk_pack_float(float* panel, const float* w, Py_ssize_t column_stride,
                       Py_ssize_t l_stride, Py_ssize_t k, Py_ssize_t n)
    void gk_pack_double(double* panel, const double* w, Py_ssize_t column_stride,
                        Py_ssize_t l_stride, Py_ssize_t k, Py_ssize_t n)
    void gk_product_float(Py_ssize_t rows, const float* a1, Py_ssize_t lda1, Py_ssize_t k1,
                          const float* a2, Py_ssize_t lda2, Py_ssize_t k2, const float* panel,
                          const float* bias, float* c, Py_ssize_t ldc, Py_ssize_t n)
    void gk_product_double(Py_ssize_t rows, const double* a1, Py_ssize_t lda1, Py_ssize_t k1,
                           const double* a2, Py_ssize_t lda2, Py_ssize_t k2, const double* panel,
                           const double* bias, double* c, Py_ssize_t ldc, Py_ssize_t n)
    void gk_product_unsplit_float(Py_ssize_t rows, const float* a, Py_ssize_t lda, Py_ssize_t k,
                                  const float* panel, float* c, Py_ssize_t ldc, Py_ssize_t n)
    void gk_product_unsplit_double(Py_ssize_t rows, const double* a, Py_ssize_t lda,
                                   Py_ssize_t k, const double* panel, double* c,
                                   Py_ssize_t ldc, Py_ssize_t n)
    enum:
        GK_PANEL_FLOAT
        GK_PANEL_DOUBLE

# What the threads of a call run, in the order a backward call runs it (forward: FORWARD only).
cdef enum Phase:
    FORWARD = 0
    BACKWARD = 1
    FINISH = 2              # each gate once over the whole tape, after the last backward step
    WEIGHTS = 3             # the weight gradients and dx, after FINISH

# Thresholds of the plan and of the team.
cdef enum:
    # A call of fewer than FEW_STEPS steps of at most FEW_SEQUENCES sequences (the fixed cost of
    # a call) takes the plain loop: its products are too small to be worth packing the weights.
    FEW_SEQUENCES = 4
    FEW_STEPS = 8
    # Multiply-adds per call below which a second thread costs more (starting it, a barrier per
    # step) than it saves.
    THREADED_CALL_WORK = 4194304
    # Multiply-adds per step that each thread of a call must have: a barrier costs about a
    # microsecond when the other thread is running, and a scheduler's wake-up (tens of
    # microseconds) when the machine is busy and it is not.
    THREAD_STEP_WORK = 32768

# Sizes: rows of the whole sequence (T * B) that one product over packed weights takes at a
# time, so that they stay in cache while every panel passes over them.
cdef enum:
    INPUT_ROWS = 192                # the input projection, z = bias + E @ W[:, H:].T
    GRADIENT_ROWS = 256             # dz and [STM_{t-1}, E_t] of the weight gradients
    INPUT_GRADIENT_ROWS = 48        # dz, for dx = dz @ W[:, H:]


def _check_layout():
    """The offsets of the step's fields in the three structs (see gatekit/core/_step.pxd)."""
    return step_layout("gatekit.core._loop")


_check_layout()


# ---------------------------------------------------------------------------------------------
# The plan: which loop a call runs, on how many threads, each computing which units
# ---------------------------------------------------------------------------------------------

def plan(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, Py_ssize_t KH, int threads,
         bint single):
    """Which loop a forward call of these sizes runs: ``(threads, units)``, the threads of the
    tiled loop and the units each computes (the last may have fewer), or ``(0, H)`` for the
    plain loop. (A call with a gate written in Python runs on one thread.)"""
    cdef Plan P = make_plan(T, B, D, H, KH, threads, single)
    return P.team, P.units


def threads_for(tuple gates, int threads):
    """The threads a call of these gates may use: a gate written in Python runs on the calling
    thread only."""
    for gate in gates:
        if isinstance(gate, PythonGate):
            return 1
    return threads


cdef struct Plan:
    int team                 # threads of the tiled loop, or 0 for the plain loop
    Py_ssize_t units         # units per thread, a multiple of the panel width (but for the last)
    Py_ssize_t panels        # numbers in the packed weights of the forward pass


cdef Plan make_plan(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, Py_ssize_t KH,
                    int threads, bint single) noexcept nogil:
    """How a forward call of these sizes is split (see plan)."""
    cdef Plan P
    cdef Py_ssize_t nr = panel_width(single), step_work = B * KH * (H + D)
    P.team, P.units, P.panels = 0, H, 0
    if KH == 0 or T == 0 or (B <= FEW_SEQUENCES and T < FEW_STEPS):
        return P
    P.team = max(1, min(threads, MAX_TEAM))
    if T * step_work < THREADED_CALL_WORK * P.team:
        P.team = 1
    P.team = <int> max(1, min(P.team, step_work // THREAD_STEP_WORK))
    # Whole panels per thread; fewer threads if there are not that many panels to share.
    P.units = ((panel_count(H, nr) + P.team - 1) // P.team) * nr
    P.team = <int> ((H + P.units - 1) // P.units)
    # Every thread's share of every block, over the H + D columns of W.
    P.panels = (KH // H) * (H + D) * nr * team_panels(H, &P, nr)
    return P


cdef Plan backward_plan(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, Py_ssize_t KH,
                        int threads, bint single) noexcept nogil:
    """The forward pass's plan, but tiled where forward is plain (the plain loop is for the
    fixed cost of a call; backward's products are worth packing): 0 threads (nothing to
    multiply) only without blocks or steps."""
    cdef Plan P = make_plan(T, B, D, H, KH, threads, single)
    if P.team == 0 and KH > 0 and T > 0:
        P.team, P.units = 1, H
    return P


cdef Py_ssize_t backward_panels(Py_ssize_t KH, Py_ssize_t H, Plan* P, bint single) noexcept nogil:
    """Numbers in every thread's panels of W[:, :H] (its units, over all KH rows)."""
    cdef Py_ssize_t nr = panel_width(single)
    return KH * nr * team_panels(H, P, nr)


cdef inline Py_ssize_t team_panels(Py_ssize_t H, Plan* P, Py_ssize_t nr) noexcept nogil:
    """Panels of nr units that the threads' shares of H units fill, all threads together: whole
    panels for each thread but the last, whose share is what is left (its last panel
    zero-padded). Both passes pack W in these, over their own reduction."""
    if P.team == 0:
        return 0
    return (P.team - 1) * (P.units // nr) + panel_count(H - (P.team - 1) * P.units, nr)


cdef inline Py_ssize_t panel_count(Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    """Panels of nr columns that n columns take (the last zero-padded)."""
    return (n + nr - 1) // nr


cdef inline Py_ssize_t panel_width(bint single) noexcept nogil:
    return GK_PANEL_FLOAT if single else GK_PANEL_DOUBLE


# ---------------------------------------------------------------------------------------------
# The team: the threads of one call
# ---------------------------------------------------------------------------------------------

cdef struct PostProduct:     # see set_up_product
    const void* W            # the declared (H, H) weight, or NULL: no post-gate product
    void* panels             # every thread's share of it, packed at the start of the pass
    bint transposed          # packed for A @ W (backward) rather than A @ W.T (forward)


cdef struct Team:
    int size                 # threads running the pass (1 for the plain loop)
    gk_start start           # 1 once every thread exists; -1 if one could not be started
    gk_barrier barrier
    Pace pace                # whether, and after which step, thread 0 is on its own
    Py_ssize_t failed[MAX_TEAM]     # the step at which each thread saw a gate fail, or -1
    # Forward: each thread's chunks of rows of the input projection, claimed by whichever
    # thread gets to them (see project_inputs), and whether it has packed its panels.
    Py_ssize_t next_chunk[MAX_TEAM]
    int packed[MAX_TEAM]
    void* gates[4]           # borrowed Gate objects, in role order
    bint mixes[4]            # the gate must see all units: one thread runs it, between barriers
    int syncs[4]             # barriers the gate waits at itself, per step (gates that share work)
    bint single
    Py_ssize_t T, B, D, H, KH, kept, units, forget_preactivation
    Py_ssize_t first_input   # the first column of z with an input product
    Py_ssize_t recurrent_end # the columns of z before this one have a recurrent product
    const void* W
    const void* bias
    const void* x
    const void* stm0
    void* y
    void* z
    void* acts
    void* ltm
    void* work
    void* panels
    const Py_ssize_t* lengths
    Phase phase
    const void* dy
    void* dstm
    void* dltm
    void* dz
    void* dacts
    size_t* dparams          # (4, dparams_stride): each gate's parameter gradient addresses
    Py_ssize_t dparams_stride
    void* dW
    void* dbias
    void* dx
    Py_ssize_t M             # extra memories (Gate.memories): the loop's work for them, and
    void* mem                # these buffers, exist only when M > 0 (see point_memories)
    void* dmem
    # The regularisers of the recurrence (see set_regularisers); all NULL and 0 without them.
    bint regularised         # any of the fields below in use
    const void* zone_ltm     # (T, B, H) zoneout masks of the LTM, 1 where LTM_{t-1} is kept
    const void* zone_stm     # likewise of the STM
    double rate_ltm, rate_stm    # without masks (evaluation): z_c and z_h, the expectation
    uint32_t key_ltm, key_stm    # drawn masks, computed where they apply (see zoneout_hash):
    uint32_t below_ltm, below_stm    # a unit keeps its memory where its hash is below these
    void* candidates         # (kept, B, H): LTM~_t as the gates computed it, when it is zoned
    const void* dropout      # (B, H) recurrent dropout mask, 0 or 1 / (1 - p), or NULL
    void* dropped            # (size, B, H): each thread's copy of the masked STM_{t-1}
    void* inner              # backward, (B, H): d/d(the STM_{t-1} the gates read)
    PostProduct post         # the cell's post-gate product, if a gate declares one


cdef struct Member:
    Team* team
    int index


cdef int set_up_team(Team* team, tuple gates, Plan* P, Py_ssize_t T, Py_ssize_t B,
                     Py_ssize_t D, Py_ssize_t H, Py_ssize_t KH, Py_ssize_t kept,
                     Py_ssize_t forget_preactivation, tuple reads, Py_ssize_t alone_at,
                     Py_ssize_t back_at, bint single) except -1:
    """The sizes and the gates of a call, for the team of ``P`` (one thread, this one, if P has
    none); the caller points the team at the buffers. Only a team of several threads splits
    the units, so only it reads each gate's mixes_units and syncs (Python attributes: the plain
    loop is there for the fixed cost of a call)."""
    cdef Gate gate
    cdef int g
    if len(gates) != 4:
        raise ValueError(f"gates must hold one gate per role (4); got {len(gates)}")
    if not (len(reads) == 2 and 0 <= reads[0] <= reads[1] <= KH
            and (H == 0 or (reads[0] % H == 0 and reads[1] % H == 0))):
        raise ValueError(f"reads must be (first_input, recurrent_end), whole blocks with "
                         f"0 <= first_input <= recurrent_end <= {KH}; got {reads!r}")
    team.first_input, team.recurrent_end = reads
    team.size, team.units, team.single = max(1, P.team), P.units, single
    team.T, team.B, team.D, team.H, team.KH, team.kept = T, B, D, H, KH, kept
    team.forget_preactivation = forget_preactivation
    start_pace(&team.pace, alone_at, back_at)
    team.dparams, team.dparams_stride = NULL, 0
    team.M, team.mem, team.dmem = 0, NULL, NULL
    team.regularised, team.rate_ltm, team.rate_stm = False, 0, 0
    team.key_ltm = team.key_stm = team.below_ltm = team.below_stm = 0
    team.zone_ltm = team.zone_stm = team.dropout = NULL
    team.candidates = team.dropped = team.inner = NULL
    team.post.W, team.post.panels, team.post.transposed = NULL, NULL, False
    for g in range(4):
        gate = gates[g]
        if gate is None:
            raise TypeError(f"gates[{g}] is None")
        team.gates[g] = <void*> gate
        team.mixes[g], team.syncs[g] = False, 0
        if P.team > 1:
            team.mixes[g], team.syncs[g] = gate.mixes_units, gate.syncs
    return 0


cdef Py_ssize_t run_team(Team* team) noexcept nogil:
    """Run the pass on ``team.size`` threads, this one included (on this one alone if
    the system will not start another). Returns -1, or the first step at which a gate failed.
    The weight gradients after a backward pass that ended alone run on this thread too: each
    thread's part is its own rows, so this thread runs them one after another."""
    cdef pthread_t threads[MAX_TEAM]
    cdef Member members[MAX_TEAM]
    cdef int m, size = team.size
    cdef Py_ssize_t failed = -1
    if team.phase == WEIGHTS and team.pace.alone:
        for m in range(team.size):
            run_member(team, m)
        return -1
    start_pace(&team.pace, team.pace.alone_at, team.pace.back_at)
    for m in range(team.size):
        team.failed[m], team.next_chunk[m], team.packed[m] = -1, 0, False
        members[m].team, members[m].index = team, m
    if start_members(&team.start, &team.barrier, threads, member_main, members,
                     sizeof(Member), size) < size:
        team.size, team.units = 1, team.H
    run_member(team, 0)
    end_pace(&team.pace)
    join_members(threads, team.size)
    for m in range(team.size):
        if team.failed[m] >= 0 and (failed < 0 or team.failed[m] < failed):
            failed = team.failed[m]
    return failed


cdef void* member_main(void* argument) noexcept nogil:
    cdef Member* member = <Member*> argument
    if gk_wait_for_start(&member.team.start) > 0:
        run_member(member.team, member.index)
    return NULL


cdef inline void run_member(Team* team, int index) noexcept nogil:
    if team.phase == WEIGHTS:
        if team.single:
            weights_member(team, index, <float*> NULL)
        else:
            weights_member(team, index, <double*> NULL)
    elif team.phase == BACKWARD:
        if team.single:
            backward_member(team, index, <float*> NULL)
        else:
            backward_member(team, index, <double*> NULL)
    elif team.single:
        forward_member(team, index, <float*> NULL)
    else:
        forward_member(team, index, <double*> NULL)


cdef inline StepAny member_step(Team* team, Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    """A thread's step: units u0..u1 of every row, the call's scratch and barrier (none on one
    thread), no gradients yet (backward points them at each step)."""
    cdef StepAny s
    s.e.B, s.e.H, s.e.D, s.e.u0, s.e.u1, s.e.ldz = team.B, team.H, team.D, u0, u1, team.KH
    s.error = 0
    s.barrier = &team.barrier if team.size > 1 else NULL
    s.work = team.work
    s.dz = s.ds_t = s.dSTM_t = s.df_t = s.di_t = s.dN_t = s.dU_t = s.dV_t = NULL
    s.dLTM_t = s.dLTM_prev = s.dSTM_prev = s.dE_t = NULL
    s.mem_prev = s.mem_t = s.dmem_t = s.dmem_prev = NULL
    s.product, s.post_product = NULL, NULL
    if team.post.W != NULL:
        s.product = team
        if team.single:
            s.post_product = <void*> post_product_float
        else:
            s.post_product = <void*> post_product_double
    return s


cdef inline void unit_range(Team* team, int member, Py_ssize_t* u0, Py_ssize_t* u1) noexcept nogil:
    u0[0] = member * team.units
    u1[0] = min(team.H, u0[0] + team.units)


cdef inline bint run_shared_gates(Team* team, int index, Phase phase, StepAny* s, bint failed,
                                  bint alone) noexcept nogil:
    """Thread ``index``'s part of one step of the four gates, in role order (FORWARD) or in
    reverse (BACKWARD, FINISH), on its units s.e.u0..u1; returns whether a gate has failed on
    this thread. A gate that mixes units runs on thread 0 with all of them, between two
    barriers; a thread that has failed still meets the others at every barrier they wait at.
    Thread 0 ``alone`` (all units, no barrier) runs each gate as a call on one thread would,
    and stops at the first that fails: so do the plain loop and the gates' finish."""
    cdef int k, g, m
    cdef Py_ssize_t u0 = s.e.u0, u1 = s.e.u1
    cdef size_t* dparam
    for k in range(4):
        g = k if phase == FORWARD else 3 - k
        dparam = NULL if phase == FORWARD else team.dparams + g * team.dparams_stride
        if team.mixes[g] and not alone:
            gk_barrier_wait(&team.barrier)
            if index == 0 and not failed:
                s.e.u0, s.e.u1 = 0, team.H
                failed = not run_gate(team.gates[g], phase, s, team.single, dparam)
                s.e.u0, s.e.u1 = u0, u1
            gk_barrier_wait(&team.barrier)
        elif not failed:
            failed = not run_gate(team.gates[g], phase, s, team.single, dparam)
        elif not alone:
            for m in range(team.syncs[g]):
                gk_barrier_wait(&team.barrier)
    return failed


cdef inline bint run_gate(void* gate, Phase phase, StepAny* s, bint single,
                          size_t* dparam) noexcept nogil:
    """Let ``gate`` (a Gate, borrowed: threads of the loop hold no references) do its part of
    a step (its parameter gradients at ``dparam``); False if it failed."""
    s.dparam = <void**> dparam
    if phase == FORWARD:
        if single:
            (<Gate> gate).forward_float(<StepFloat*> s)
        else:
            (<Gate> gate).forward_double(<StepDouble*> s)
    elif phase == BACKWARD:
        if single:
            (<Gate> gate).backward_float(<StepFloat*> s)
        else:
            (<Gate> gate).backward_double(<StepDouble*> s)
    else:
        if single:
            (<Gate> gate).finish_float(<StepFloat*> s)
        else:
            (<Gate> gate).finish_double(<StepDouble*> s)
    return s.error == 0


cdef StepEnd end_of_step(Team* team, int index, Py_ssize_t t, bint failed,
                         bint alone) noexcept nogil:
    """Record this thread's failure at step t and meet the others at the step's barrier (unless
    thread 0 is alone); say how the pass goes on (see gatekit/core/_team.pxd)."""
    return meet_at_end_of_step(&team.pace, &team.barrier, team.size, team.failed, index, t,
                               failed, alone, t == team.pace.alone_at)


# ---------------------------------------------------------------------------------------------
# The forward pass
# ---------------------------------------------------------------------------------------------

def workspace_layout(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, Py_ssize_t KH,
                     bint keep, int threads, bint single, Py_ssize_t memories=0):
    """The size of the workspace :func:`forward` wants, and where in it the buffers a caller
    reads afterwards lie: ``{"z": (offset, shape), "acts": ..., "ltm": ..., "mem": ...}``
    (``mem`` holds the ``memories`` extra memories as ltm holds the LTM, slot by slot:
    (kept + 1, memories, B, H))."""
    cdef Plan P = make_plan(T, B, D, H, KH, threads, single)
    cdef Layout L = layout(T, B, H, KH, keep, &P, memories)
    return L.size, {"z": (L.z, (T, B, KH)), "acts": (L.acts, (5, L.kept, B, H)),
                    "ltm": (L.ltm, (L.kept + 1, B, H)),
                    "mem": (L.mem, (L.kept + 1, memories, B, H))}


cdef struct Layout:
    Py_ssize_t kept                      # steps whose gate outputs are kept: T, or 1
    Py_ssize_t z, acts, ltm, work, panels, mem, size    # offsets in the workspace, its size


cdef Layout layout(Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t KH, bint keep,
                   Plan* P, Py_ssize_t memories) noexcept nogil:
    cdef Layout L
    L.kept = T if keep else 1
    L.z = 0
    L.acts = L.z + T * B * KH
    L.ltm = L.acts + 5 * L.kept * B * H
    L.work = L.ltm + (L.kept + 1) * B * H
    L.panels = L.work + B * H
    L.mem = L.panels + P.panels
    L.size = L.mem + (L.kept + 1) * memories * B * H
    return L


def forward(tuple gates, floating[:, ::1] W, floating[::1] bias, floating[:, :, ::1] x,
            floating[:, ::1] stm0, floating[:, :, ::1] y, floating[::1] workspace, bint keep,
            const Py_ssize_t[::1] lengths, Py_ssize_t forget_preactivation, tuple reads,
            int threads, Py_ssize_t alone_at=-1, Py_ssize_t back_at=-1, Py_ssize_t memories=0,
            tuple regularisers=None):
    """Run the cell over every step of ``x``, on up to ``threads`` threads. Returns -1, or the
    step at which a gate failed. (``alone_at``: the step after which thread 0 goes on alone
    whatever it measures, so that the tests can reach that path; ``back_at``, a later step
    after which it calls the others back whatever the time.) ``memories``: how many extra
    memories the gates keep; the caller puts their initial values in mem[0] of the workspace.
    ``regularisers``: zoneout and recurrent dropout, or None (see :func:`regulariser_buffers`).

    ``workspace`` holds, as :func:`workspace_layout` lays them out, z (T, B, KH) the
    pre-activations, acts and ltm (all steps when ``keep``, else the last), scratch rows, and
    the packed weights (tiled loop); the caller puts the initial LTM in ltm[0]. (One buffer,
    not five: each typed buffer an argument costs the call a fraction of a microsecond to
    acquire.) Sequence b lasts ``lengths[b]`` steps (T if ``lengths`` is None): from then on
    its memories stay as they were (its rows of y repeat its last STM; the caller blanks them).
    ``forget_preactivation`` is the column of s_t in z, or -1 if the forget gate has none;
    ``reads`` = (first_input, recurrent_end), the columns of z that the input and the recurrent
    products leave out (see the module docstring).
    Gates written in Python run on this thread only."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = stm0.shape[1], KH = W.shape[0]
    cdef Py_ssize_t failed
    cdef bint single = floating is float
    cdef Team team
    threads = threads_for(gates, threads)
    check_shape("W", (W.shape[0], W.shape[1]), (KH, H + D))
    check_shape("bias", (bias.shape[0],), (KH,))
    check_shape("stm0", (stm0.shape[0], stm0.shape[1]), (B, H))
    check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (T, B, H))
    if lengths is not None:
        check_shape("lengths", (lengths.shape[0],), (B,))
    cdef Plan P = make_plan(T, B, D, H, KH, threads, single)
    cdef Layout L = layout(T, B, H, KH, keep, &P, memories)
    if workspace.shape[0] < L.size:
        raise ValueError(f"workspace holds {workspace.shape[0]} numbers; this call needs {L.size}")
    cdef floating* base = &workspace[0]
    set_up_team(&team, gates, &P, T, B, D, H, KH, L.kept, forget_preactivation, reads, alone_at,
                back_at, single)
    team.phase = FORWARD
    team.W = &W[0, 0] if KH > 0 else NULL
    team.bias = &bias[0] if KH > 0 else NULL
    team.x = &x[0, 0, 0] if T * B * D > 0 else NULL
    team.stm0 = &stm0[0, 0] if B * H > 0 else NULL
    team.y = &y[0, 0, 0] if T * B * H > 0 else NULL
    team.z, team.acts, team.ltm = base + L.z, base + L.acts, base + L.ltm
    team.work, team.panels = base + L.work, base + L.panels
    team.lengths = &lengths[0] if lengths is not None else NULL
    check_memories(gates, memories)
    if memories > 0:
        team.M, team.mem = memories, base + L.mem
    if regularisers is not None:
        set_regularisers(&team, regularisers, max(1, P.team), L.kept, <floating*> NULL)
    set_up_product(&team, gates, False, <floating*> NULL)
    with nogil:
        if P.team > 0:
            failed = run_team(&team)
        else:
            failed = plain_forward(&team, <floating*> NULL)
    free(team.post.panels)
    return failed


cdef Py_ssize_t plain_forward(Team* team, floating* precision) noexcept nogil:
    """The plain loop, on this thread: every product a few dot products (add_products), every
    gate over all units. Returns -1, or the step at which a gate failed."""
    cdef Py_ssize_t T = team.T, B = team.B, D = team.D, H = team.H, KH = team.KH
    cdef Py_ssize_t first_input = team.first_input, recurrent_end = team.recurrent_end
    cdef Py_ssize_t t, r, j
    cdef const floating* W = <const floating*> team.W
    cdef const floating* bias = <const floating*> team.bias
    cdef floating* z = <floating*> team.z
    cdef floating* zt = NULL
    cdef floating* zoned_ltm
    cdef const floating* true_prev
    cdef StepAny s = member_step(team, 0, H)
    if team.post.W != NULL:
        pack_product(team, 0, <floating*> NULL)
    if KH > 0 and T > 0:
        # z[t, b] = bias + W[:, H:] @ x[t, b] for all steps at once: the input projection.
        for r in range(T * B):
            for j in range(KH):
                z[r * KH + j] = bias[j]
        add_products(z + first_input, KH, <const floating*> team.x, D,
                     W + first_input * (H + D) + H, H + D, T * B, KH - first_input, D)
    for t in range(T):
        if KH > 0:
            zt = z + t * B * KH
        point_at_step(&s, t, zt, <floating*> team.acts, team.kept, <floating*> team.ltm,
                      <floating*> team.y, <const floating*> team.stm0, <const floating*> team.x,
                      team.forget_preactivation)
        if team.M > 0:
            point_memories(&s, t, team, <floating*> NULL)
        zoned_ltm, true_prev = <floating*> s.LTM_t, <const floating*> s.STM_prev
        if team.regularised:
            regularise_reads(team, &s, 0, <floating*> NULL)
        if KH > 0:
            # z[t] += STM_{t-1} @ W[:, :H].T: the recurrent product of every gate at once.
            add_products(zt, KH, <const floating*> s.STM_prev, H, W, H + D, B, recurrent_end, H)
        if run_shared_gates(team, 0, FORWARD, &s, False, True):
            return t
        if team.regularised:
            zone(team, &s, true_prev, zoned_ltm)
        if team.lengths != NULL:
            hold_finished(&s, team.lengths, <floating*> NULL)
            if team.M > 0:
                hold_finished_memories(&s, team.M, team.lengths, <floating*> NULL)
    return -1


cdef inline void add_products(floating* out, Py_ssize_t ldo, const floating* a, Py_ssize_t lda,
                              const floating* rows, Py_ssize_t ldr, Py_ssize_t m, Py_ssize_t n,
                              Py_ssize_t k) noexcept nogil:
    """out[i, j] += Σ_l a[i, l] * rows[j, l] for i < m, j < n: a matrix product too small to be
    worth packing. Each dot product runs in 8 interleaved partial sums, which the compiler turns
    into one vector."""
    cdef Py_ssize_t i, j, l, u, whole = k - k % 8
    cdef floating partial[8]
    cdef floating total
    cdef const floating* ai
    cdef const floating* rj
    for i in range(m):
        ai = a + i * lda
        for j in range(n):
            rj = rows + j * ldr
            for u in range(8):
                partial[u] = 0
            for l in range(0, whole, 8):
                for u in range(8):
                    partial[u] += ai[l + u] * rj[l + u]
            total = 0
            for u in range(8):
                total += partial[u]
            for l in range(whole, k):
                total += ai[l] * rj[l]
            out[i * ldo + j] += total


cdef void forward_member(Team* team, int index, floating* precision) noexcept nogil:
    """Thread ``index``'s part of the tiled forward pass: units [u0, u1) of every block and
    every gate (all units of a gate that mixes them, on thread 0), one barrier per step; while
    thread 0 is alone, it runs every unit over every thread's panels, and the others wait to be
    called back."""
    cdef Py_ssize_t T = team.T, B = team.B, D = team.D, H = team.H, KH = team.KH
    cdef Py_ssize_t nr = panel_width(floating is float), kdim = H + D
    cdef Py_ssize_t u0, u1
    cdef Py_ssize_t t, k, u, blocks = KH // H
    cdef Py_ssize_t first_block = team.first_input // H, recurrent_blocks = team.recurrent_end // H
    unit_range(team, index, &u0, &u1)
    cdef const floating* W = <const floating*> team.W
    cdef const floating* x = <const floating*> team.x
    cdef floating* z = <floating*> team.z
    cdef floating* zt
    cdef floating* own = <floating*> team.panels + index * blocks * team.units * kdim
    cdef Py_ssize_t block_panels = panel_count(u1 - u0, nr) * nr     # numbers per unit of depth
    cdef floating* panel
    cdef bint failed = False, alone = False
    cdef int m
    cdef StepEnd end
    cdef floating* zoned_ltm
    cdef const floating* true_prev
    cdef StepAny s = member_step(team, u0, u1)
    # Each thread packs its own share, so it starts out in the cache that reads it: the
    # panels of W[:, H:] (input columns, D long) of the blocks that read the event, then those
    # of W[:, :H] (recurrent, H long) of the blocks that read the STM, each block in its place.
    for k in range(first_block, blocks):
        panel = own + k * block_panels * D
        for u from u0 <= u < u1 by nr:
            pack(panel, W + (k * H + u) * kdim + H, kdim, 1, D, min(nr, u1 - u))
            panel += D * nr
    for k in range(recurrent_blocks):
        panel = own + blocks * block_panels * D + k * block_panels * H
        for u from u0 <= u < u1 by nr:
            pack(panel, W + (k * H + u) * kdim, kdim, 1, H, min(nr, u1 - u))
            panel += H * nr
    if team.post.W != NULL:
        pack_product(team, index, <floating*> NULL)
    gk_raise(&team.packed[index])
    project_inputs(team, index, <floating*> NULL)
    if team.size > 1:
        gk_barrier_wait(&team.barrier)      # every column of z is there before the steps
    t = 0
    while t < T:
        zt = z + t * B * KH
        point_at_step(&s, t, zt, <floating*> team.acts, team.kept, <floating*> team.ltm,
                      <floating*> team.y, <const floating*> team.stm0, x,
                      team.forget_preactivation)
        if team.M > 0:
            point_memories(&s, t, team, <floating*> NULL)
        zoned_ltm, true_prev = <floating*> s.LTM_t, <const floating*> s.STM_prev
        if team.regularised:
            regularise_reads(team, &s, index, <floating*> NULL)
        # Alone, thread 0 also takes the other threads' columns, over the panels they packed.
        for m in range(0 if alone else index, team.size if alone else index + 1):
            add_recurrent(team, m, <const floating*> s.STM_prev, zt)
        failed = run_shared_gates(team, index, FORWARD, &s, failed, alone)
        if team.regularised and not failed:
            zone(team, &s, true_prev, zoned_ltm)
        if team.lengths != NULL:
            hold_finished(&s, team.lengths, <floating*> NULL)
            if team.M > 0:
                hold_finished_memories(&s, team.M, team.lengths, <floating*> NULL)
        end = end_of_step(team, index, t, failed, alone)
        if end == STOP:
            break
        if end == GO_ALONE and index > 0:
            t = wait_to_be_called(&team.pace, t)
            if t < 0:
                break
        elif end == GO_ALONE:
            alone = True
            s.e.u0, s.e.u1, s.barrier = 0, H, NULL
        elif end == TEAM_AGAIN:
            alone = False
            s.e.u0, s.e.u1, s.barrier = u0, u1, &team.barrier
        t += 1


cdef void project_inputs(Team* team, int index, floating* precision) noexcept nogil:
    """The input projection of every step, before the steps: z = bias + E @ W[:, H:].T, in
    chunks of INPUT_ROWS rows (per step, only the recurrent weights are read again), each
    over one thread's columns and panels. Blocks that read the STM only start from their bias.
    Thread ``index`` takes the chunks of its own columns first, then those the others have
    not claimed yet (over panels they have packed): a thread that shares its CPU with another
    process for a while (or with PyTorch's spinning threads, after its operations) slows the
    call by its share of the work, not by all of it. The same bits whoever computes a chunk."""
    cdef Py_ssize_t T = team.T, B = team.B, D = team.D, H = team.H, KH = team.KH
    cdef Py_ssize_t nr = panel_width(floating is float), kdim = H + D, blocks = KH // H
    cdef Py_ssize_t first_block = team.first_input // H
    cdef Py_ssize_t chunks = (T * B + INPUT_ROWS - 1) // INPUT_ROWS
    cdef Py_ssize_t u0, u1, chunk, r, rows, k, u, j, column, block_panels
    cdef const floating* bias = <const floating*> team.bias
    cdef const floating* x = <const floating*> team.x
    cdef floating* z = <floating*> team.z
    cdef floating* panel
    cdef int n, m
    for n in range(team.size):
        m = (index + n) % team.size
        if m != index and not gk_raised(&team.packed[m]):
            continue                        # its owner will do its chunks
        unit_range(team, m, &u0, &u1)
        block_panels = panel_count(u1 - u0, nr) * nr
        while True:
            chunk = gk_claim(&team.next_chunk[m])
            if chunk >= chunks:
                break
            r = chunk * INPUT_ROWS
            rows = min(INPUT_ROWS, T * B - r)
            for j in range(r, r + rows):
                for k in range(first_block):
                    for column in range(k * H + u0, k * H + u1):
                        z[j * KH + column] = bias[column]
            panel = <floating*> team.panels + m * blocks * team.units * kdim
            for k in range(first_block, blocks):
                for u from u0 <= u < u1 by nr:
                    column = k * H + u
                    product(rows, x + r * D, D, D, NULL, 0, 0,
                            panel + k * block_panels * D + (u - u0) * D, bias + column,
                            z + r * KH + column, KH, min(nr, u1 - u))


cdef void add_recurrent(Team* team, int member, const floating* STM_prev,
                        floating* zt) noexcept nogil:
    """zt[:, columns of thread ``member``'s units] += STM_{t-1} @ W[those rows, :H].T, over the
    recurrent panels ``member`` packed (after its input panels, see forward_member)."""
    cdef Py_ssize_t nr = panel_width(floating is float), H = team.H, D = team.D, KH = team.KH
    cdef Py_ssize_t u0, u1, u, k, blocks = KH // H
    unit_range(team, member, &u0, &u1)
    cdef floating* panel = (<floating*> team.panels + member * blocks * team.units * (H + D)
                            + blocks * panel_count(u1 - u0, nr) * nr * D)
    for k in range(team.recurrent_end // H):
        for u from u0 <= u < u1 by nr:
            product(team.B, STM_prev, H, H, NULL, 0, 0, panel, NULL, zt + k * H + u, KH,
                    min(nr, u1 - u))
            panel += H * nr


cdef inline void hold_finished(StepAny* s, const Py_ssize_t* lengths,
                               floating* precision) noexcept nogil:
    """Sequences that have ended (t >= lengths[b]) keep their memories: STM_t and LTM_t of
    units s.e.u0..u1 repeat those of the step before."""
    cdef Py_ssize_t b, j, H = s.e.H
    cdef floating* STM_t = <floating*> s.STM_t
    cdef floating* LTM_t = <floating*> s.LTM_t
    cdef const floating* STM_prev = <const floating*> s.STM_prev
    cdef const floating* LTM_prev = <const floating*> s.LTM_prev
    for b in range(s.e.B):
        if s.e.t >= lengths[b]:
            for j in range(b * H + s.e.u0, b * H + s.e.u1):
                STM_t[j] = STM_prev[j]
                LTM_t[j] = LTM_prev[j]


# Extra memories (Gate.memories): M of them, kept slot by slot as the LTM is, each slot all M
# memories at once, (M, B, H): the tape's mem (S + 1, M, B, H) holds those of step t - 1 at
# [t % (S + 1)] and of step t at [(t + 1) % (S + 1)]; backward's dmem (2, M, B, H) alternates
# as dltm does. The loop calls these only when M > 0, so a cell without extra memories pays
# nothing for them.

cdef inline void point_memories(StepAny* s, Py_ssize_t t, Team* team,
                                floating* precision) noexcept nogil:
    """Point the step's memories at step t (and, in backward, their gradients)."""
    cdef Py_ssize_t size = team.M * team.B * team.H, slots = team.kept + 1
    cdef floating* mem = <floating*> team.mem
    s.mem_prev, s.mem_t = mem + (t % slots) * size, mem + ((t + 1) % slots) * size
    if team.dmem != NULL:
        s.dmem_t = <floating*> team.dmem + ((t + 1) % 2) * size
        s.dmem_prev = <floating*> team.dmem + (t % 2) * size


cdef check_memories(tuple gates, Py_ssize_t M):
    """The gates were built for a cell of M extra memories (their slots lie within M): a gate
    with memories given none would write through NULL."""
    cdef Gate gate
    for gate in gates:
        if gate is not None and len(gate.cell_memories) != M:
            raise ValueError(f"the gates keep {len(gate.cell_memories)} extra memories "
                             f"{gate.cell_memories}; this call has {M}")


cdef inline void hold_finished_memories(StepAny* s, Py_ssize_t M, const Py_ssize_t* lengths,
                                        floating* precision) noexcept nogil:
    """Sequences that have ended keep their extra memories too (see hold_finished)."""
    cdef Py_ssize_t b, j, m, row, H = s.e.H, BH = s.e.B * s.e.H
    cdef floating* mem_t = <floating*> s.mem_t
    cdef const floating* mem_prev = <const floating*> s.mem_prev
    for b in range(s.e.B):
        if s.e.t >= lengths[b]:
            for m in range(M):
                row = m * BH + b * H
                for j in range(row + s.e.u0, row + s.e.u1):
                    mem_t[j] = mem_prev[j]


cdef inline void start_memory_gradients(StepAny* s, Py_ssize_t M, const Py_ssize_t* lengths,
                                        floating* precision) noexcept nogil:
    """At the start of a backward step, units u0..u1 of dmem_prev: zero for the gates to add
    into, or, for a sequence past its end (the step was the identity), dmem_t passed straight
    through, dmem_t then zero so its gates see none."""
    cdef Py_ssize_t b, j, m, row, H = s.e.H, BH = s.e.B * s.e.H
    cdef floating* dmem_t = <floating*> s.dmem_t
    cdef floating* dmem_prev = <floating*> s.dmem_prev
    for b in range(s.e.B):
        for m in range(M):
            row = m * BH + b * H
            if lengths == NULL or s.e.t < lengths[b]:
                for j in range(row + s.e.u0, row + s.e.u1):
                    dmem_prev[j] = 0
            else:
                for j in range(row + s.e.u0, row + s.e.u1):
                    dmem_prev[j] = dmem_t[j]
                    dmem_t[j] = 0


# ---------------------------------------------------------------------------------------------
# The backward pass: backpropagation through time
#
# Forward, step t of a sequence (t = 0 .. T-1; STM_{-1}, LTM_{-1} the initial state) computes
#     z_t = W [STM_{t-1}, E_t] + b            (the pre-activations of every gate's blocks)
# and from z_t, LTM_{t-1}, STM_{t-1} and E_t the gates compute f_t, i_t, N_t, LTM_t, U_t, V_t
# and y_t = STM_t. A gate's gradient reaches STM_{t-1} through dz_t and through what it adds
# into dSTM_prev itself. Backward runs t = T-1 down to 0, with c what step t + 1 sent back to
# STM_t (at t = T-1: dstm[0], the final STM's gradient):
#     dSTM_t = dy_t + c,   then c = 0
#     the gates, in reverse role order (use, remember, learn, forget), given dSTM_t and dLTM_t
#     (what step t + 1 sent back to LTM_t; at t = T-1 the final LTM's gradient), add into
#         dz_t, df_t, di_t, dN_t, dU_t, dV_t  (zeroed at the start of the step),
#         dLTM_t                  (the part through STM_t: a Use gate reads LTM_t),
#         dLTM_{t-1}              (zeroed first: e.g. remember's f_t ⊙ dLTM_t),
#         dSTM_{t-1} = c          (its uses of STM_{t-1} outside z_t),
#         dE_t = dx_t             (likewise, of E_t),
#         the gradients of their extra parameters (a peephole's p, summed over the steps)
#     c += W[:, :H]^T dz_t    (= dSTM_{t-1} - dy_{t-1}; needs all of dz_t: the step's barrier;
#                              the rows of the blocks that read the STM only)
# and after step 0, c and dLTM_{-1} are the gradients of the initial state (dstm[0], dltm[0]).
# Past its length, step t of sequence b is the identity in the forward pass (STM_t = STM_{t-1},
# LTM_t = LTM_{t-1}): there its dy_t is ignored, c passes through unchanged, dLTM_{t-1} =
# dLTM_t, and its gates see dSTM_t = dLTM_t = 0, so its dz_t is 0.
# Then, over all T * B rows at once: each gate's finish (the place for a gradient that is one
# product over the whole tape), and the weights phase, sums over t (and the sequences):
#     dW[:, :H] += Σ_t dz_t STM_{t-1}^T,   dW[:, H:] += Σ_t dz_t E_t^T,   db += Σ_t dz_t,
#     dx_t += W[:, H:]^T dz_t.
# ---------------------------------------------------------------------------------------------

def backward_scratch(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, Py_ssize_t KH,
                     int threads, bint single):
    """The numbers of scratch :func:`backward` wants for a call of these sizes."""
    cdef Plan P = backward_plan(T, B, D, H, KH, threads, single)
    cdef GradientScratch G = weights_scratch(D, H, KH, P.units, single)
    return backward_panels(KH, H, &P, single) + P.team * G.size


def backward(tuple gates, floating[:, ::1] W, floating[:, :, ::1] x, floating[:, ::1] stm0,
             floating[:, :, ::1] z, floating[:, :, :, ::1] acts, floating[:, :, ::1] ltm,
             floating[:, :, ::1] y, floating[:, :, ::1] dy, floating[:, :, ::1] dstm,
             floating[:, :, ::1] dltm, floating[:, :, ::1] dz, floating[:, :, :, ::1] dacts,
             floating[:, ::1] dW, floating[::1] dbias, floating[:, :, ::1] dx,
             size_t[:, ::1] dparams, floating[:, ::1] work, floating[::1] scratch,
             const Py_ssize_t[::1] lengths, Py_ssize_t forget_preactivation, tuple reads,
             int threads, Py_ssize_t alone_at=-1, Py_ssize_t back_at=-1,
             floating[:, :, :, ::1] mem=None,
             floating[:, :, :, ::1] dmem=None, tuple regularisers=None):
    """Backpropagation through time over a tape the forward pass kept (S = T), with the
    ``regularisers`` of the forward pass that kept it, or None.

    In: dy (T, B, H); dstm[0] the gradient of the final STM, dltm[T % 2] that of the final LTM.
    Out: dstm[0] and dltm[0], the gradients of the initial STM and LTM; dz (T, B, KH) and dacts
    (5, T, B, H) (any content: each step zeroes its own); dW, dbias, dx (zeroed by the caller)
    and the gates' extra parameter gradients, whose addresses ``dparams[g]`` lists for gate g
    (zeroed by the caller). work holds T * B rows; ``scratch`` at least
    :func:`backward_scratch` numbers.
    Steps after a sequence's length (``lengths`` may be None: all T) pass its gradients through
    untouched and ignore its dy.
    Runs on up to ``threads`` threads, as :func:`forward` does (``alone_at``, ``back_at``
    likewise: steps in the order this pass takes them, from the last).
    The gates' extra memories, if any: ``mem`` (T + 1, M, B, H) from the tape, and ``dmem``
    (2, M, B, H), in: dmem[T % 2] the gradients of their final values; out: dmem[0], those of
    their initial values.
    Returns -1, or the step at which a gate failed (T for a failure in finish).
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = stm0.shape[1], KH = W.shape[0]
    cdef Py_ssize_t failed
    cdef bint single = floating is float
    cdef Team team
    cdef StepAny s
    threads = threads_for(gates, threads)
    check_shape("W", (W.shape[0], W.shape[1]), (KH, H + D))
    check_shape("stm0", (stm0.shape[0], stm0.shape[1]), (B, H))
    check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (T, B, KH))
    check_shape("acts", (acts.shape[0], acts.shape[1], acts.shape[2], acts.shape[3]),
                (5, T, B, H))
    check_shape("ltm", (ltm.shape[0], ltm.shape[1], ltm.shape[2]), (T + 1, B, H))
    check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (T, B, H))
    check_shape("dy", (dy.shape[0], dy.shape[1], dy.shape[2]), (T, B, H))
    check_shape("dstm", (dstm.shape[0], dstm.shape[1], dstm.shape[2]), (2, B, H))
    check_shape("dltm", (dltm.shape[0], dltm.shape[1], dltm.shape[2]), (2, B, H))
    check_shape("dz", (dz.shape[0], dz.shape[1], dz.shape[2]), (T, B, KH))
    check_shape("dacts", (dacts.shape[0], dacts.shape[1], dacts.shape[2], dacts.shape[3]),
                (5, T, B, H))
    check_shape("dW", (dW.shape[0], dW.shape[1]), (KH, H + D))
    check_shape("dbias", (dbias.shape[0],), (KH,))
    check_shape("dx", (dx.shape[0], dx.shape[1], dx.shape[2]), (T, B, D))
    check_shape("dparams", (dparams.shape[0],), (4,))
    if work.shape[0] < max(T * B, B) or work.shape[1] != H:
        raise ValueError(f"work must have at least {max(T * B, B)} rows of {H}; got "
                         f"{(work.shape[0], work.shape[1])}")
    if lengths is not None:
        check_shape("lengths", (lengths.shape[0],), (B,))
    cdef Py_ssize_t M = 0 if mem is None else mem.shape[1]
    check_memories(gates, M)
    if M > 0:
        check_shape("mem", (mem.shape[0], mem.shape[1], mem.shape[2], mem.shape[3]),
                    (T + 1, M, B, H))
        if dmem is None:
            raise ValueError("dmem must be given with mem")
        check_shape("dmem", (dmem.shape[0], dmem.shape[1], dmem.shape[2], dmem.shape[3]),
                    (2, M, B, H))
    cdef Plan P = backward_plan(T, B, D, H, KH, threads, single)
    cdef Py_ssize_t panels = backward_panels(KH, H, &P, single)
    cdef GradientScratch G = weights_scratch(D, H, KH, P.units, single)
    cdef Py_ssize_t needed = panels + P.team * G.size
    if scratch.shape[0] < needed:
        raise ValueError(f"scratch holds {scratch.shape[0]} numbers; this call needs {needed}")
    if T == 0:
        return -1
    # Without blocks there is nothing to multiply (P has no threads): the time loop still runs
    # the gates, on this thread.
    set_up_team(&team, gates, &P, T, B, D, H, KH, acts.shape[1], forget_preactivation, reads,
                alone_at, back_at, single)
    team.phase = BACKWARD
    team.W = &W[0, 0] if KH > 0 else NULL
    team.z = &z[0, 0, 0] if KH > 0 else NULL
    team.dz = &dz[0, 0, 0] if KH > 0 else NULL
    team.dW = &dW[0, 0] if KH > 0 else NULL
    team.dbias = &dbias[0] if KH > 0 else NULL
    team.x = &x[0, 0, 0] if B * D > 0 else NULL
    team.dx = &dx[0, 0, 0] if B * D > 0 else NULL
    team.stm0, team.y = &stm0[0, 0], &y[0, 0, 0]
    team.acts, team.ltm = &acts[0, 0, 0, 0], &ltm[0, 0, 0]
    team.work = &work[0, 0]
    team.panels = &scratch[0] if panels > 0 else NULL   # then the weight gradients' scratch
    team.lengths = &lengths[0] if lengths is not None else NULL
    team.dy, team.dstm, team.dltm = &dy[0, 0, 0], &dstm[0, 0, 0], &dltm[0, 0, 0]
    team.dacts = &dacts[0, 0, 0, 0]
    team.dparams, team.dparams_stride = &dparams[0, 0], dparams.shape[1]
    if M > 0 and B * H > 0:
        team.M, team.mem, team.dmem = M, &mem[0, 0, 0, 0], &dmem[0, 0, 0, 0]
    if regularisers is not None:
        set_regularisers(&team, regularisers, max(1, P.team), T, <floating*> NULL)
    set_up_product(&team, gates, True, <floating*> NULL)
    with nogil:
        failed = run_team(&team)
        if failed < 0:
            s = sequence_step(&team, <floating*> NULL)
            if run_shared_gates(&team, 0, FINISH, &s, False, True):
                failed = T
        if failed < 0 and P.team > 0:
            team.phase, team.panels = WEIGHTS, &scratch[panels]
            run_team(&team)
    free(team.post.panels)
    return failed


cdef void backward_member(Team* team, int index, floating* precision) noexcept nogil:
    """Thread ``index``'s part of the backward time loop: units [u0, u1) of every gate (all
    units of a gate that mixes them, on thread 0) and of the carry to STM_{t-1}, one barrier
    per step (all of dz[t] must be there before the carry reads it); while thread 0 is alone,
    it runs every unit, and the others wait to be called back."""
    cdef Py_ssize_t T = team.T, B = team.B, H = team.H, KH = team.KH, BH = team.B * team.H
    cdef Py_ssize_t nr = panel_width(floating is float)
    cdef Py_ssize_t u0, u1
    cdef Py_ssize_t t, u, b, j, k
    unit_range(team, index, &u0, &u1)
    cdef const floating* W = <const floating*> team.W
    cdef const floating* dy = <const floating*> team.dy
    cdef floating* z = <floating*> team.z
    cdef floating* dz = <floating*> team.dz
    cdef floating* dacts = <floating*> team.dacts
    cdef floating* dltm = <floating*> team.dltm
    cdef floating* carry = <floating*> team.dstm             # c: what step t + 1 sent to STM_t
    cdef floating* dSTM_t = <floating*> team.dstm + BH
    cdef floating* panel
    cdef floating* dLTM_t
    cdef floating* dLTM_prev
    cdef floating* zt = NULL
    cdef floating* dzt = NULL
    cdef bint failed = False, alone = False
    cdef int m
    cdef StepEnd end
    cdef Py_ssize_t recurrent_end = team.recurrent_end
    cdef StepAny s = member_step(team, u0, u1)
    # With regularisers the gates' share of d/dSTM_{t-1} is with respect to the STM they read
    # (masked by recurrent dropout): it goes to `inner`, and reaches the carry at the step's end.
    cdef floating* inner = <floating*> team.inner if team.regularised else carry
    s.dSTM_t, s.dSTM_prev = dSTM_t, inner
    if recurrent_end > 0:
        # Panels of W[:, u:u + nr] over the rows of the blocks that read the STM: the carry to
        # this thread's units.
        panel = <floating*> team.panels + index * team.units * KH
        for u from u0 <= u < u1 by nr:
            pack(panel, W + u, 1, H + team.D, recurrent_end, min(nr, u1 - u))
            panel += recurrent_end * nr
    if team.post.W != NULL:
        pack_product(team, index, <floating*> NULL)
    t = T - 1
    while t >= 0:
        if KH > 0:
            zt, dzt = z + t * B * KH, dz + t * B * KH
        point_at_step(&s, t, zt, <floating*> team.acts, team.kept, <floating*> team.ltm,
                      <floating*> team.y, <const floating*> team.stm0, <const floating*> team.x,
                      team.forget_preactivation)
        s.dz = dzt
        s.dE_t = NULL if team.dx == NULL else <floating*> team.dx + t * B * team.D
        s.ds_t = NULL if team.forget_preactivation < 0 or dzt == NULL else (
            dzt + team.forget_preactivation)
        s.df_t, s.di_t, s.dN_t = dacts + t * BH, dacts + (T + t) * BH, dacts + (2 * T + t) * BH
        s.dU_t, s.dV_t = dacts + (3 * T + t) * BH, dacts + (4 * T + t) * BH
        s.dLTM_t, s.dLTM_prev = dltm + ((t + 1) % 2) * BH, dltm + (t % 2) * BH
        dLTM_t, dLTM_prev = <floating*> s.dLTM_t, <floating*> s.dLTM_prev
        if team.regularised:
            regularise_reads(team, &s, index, <floating*> NULL)
        # The gates add into dz and dacts: each thread zeroes its columns of step t first (the
        # caller hands over buffers it reuses, not zeros).
        for b in range(B):
            for k in range(KH // H):
                for j in range(b * KH + k * H + u0, b * KH + k * H + u1):
                    dzt[j] = 0
            for k in range(5):
                for j in range((k * T + t) * BH + b * H + u0, (k * T + t) * BH + b * H + u1):
                    dacts[j] = 0
        if team.regularised:
            zone_backward(team, &s, dy + t * BH, carry, inner)
        for b in range(B if not team.regularised else 0):
            if team.lengths == NULL or t < team.lengths[b]:
                for j in range(b * H + u0, b * H + u1):
                    dSTM_t[j] = dy[t * BH + j] + carry[j]
                    carry[j] = 0
                    dLTM_prev[j] = 0
            else:
                # Past its end the step was the identity: the carry stays for the step before,
                # dLTM goes straight to it, and the gates see zero.
                for j in range(b * H + u0, b * H + u1):
                    dSTM_t[j] = 0
                    dLTM_prev[j] = dLTM_t[j]
                    dLTM_t[j] = 0
        if team.M > 0:
            point_memories(&s, t, team, <floating*> NULL)
            start_memory_gradients(&s, team.M, team.lengths, <floating*> NULL)
        failed = run_shared_gates(team, index, BACKWARD, &s, failed, alone)
        end = end_of_step(team, index, t, failed, alone)
        if end == STOP:
            break
        if end == GO_ALONE and index > 0:
            # Called back after step t (before its carry, which every thread does on its units).
            t = wait_to_be_called(&team.pace, t)
            if t < 0:
                break
            if KH > 0:
                dzt = dz + t * B * KH
        elif end == GO_ALONE:
            alone = True
            u0, u1 = 0, H
            s.e.u0, s.e.u1, s.barrier = 0, H, NULL
        elif end == TEAM_AGAIN:
            alone = False
            unit_range(team, index, &u0, &u1)
            s.e.u0, s.e.u1, s.barrier = u0, u1, &team.barrier
        if recurrent_end > 0:
            # carry[:, u0:u1] += dz[t] @ W[:, u0:u1]; alone, thread 0 takes every thread's units
            for m in range(0 if alone else index, team.size if alone else index + 1):
                add_carry(team, m, dzt, inner)
        if team.regularised:
            unmask_carry(team, u0, u1, carry, inner)
        t -= 1


# ---------------------------------------------------------------------------------------------
# Post-gate products (Gate.products): a gate's own recurrent product of an (H, H) weight it
# owns, whose input waits for a gate of the step (course: W_u (LTM_{t-1} ⊙ f_t); MGU, MUT1:
# W (g ⊙ STM_{t-1})). Like the step's main product, its weight is packed once per pass, each
# thread packing the panels of its own units, and each thread computes its own units of it (after
# the gate's sync); thread 0 alone goes over every thread's panels. Forward packs rows of W
# (A @ W.T), backward columns (A @ W, the gradient sent back to the product's input), as the
# carry does. The weight gradient is the gate's: one product over the whole tape in its finish.
# ---------------------------------------------------------------------------------------------

cdef int set_up_product(Team* team, tuple gates, bint transposed, floating* precision) except -1:
    """Find the gate that declares a post-gate product (at most one per cell) and allocate
    the team's panels for its weight; the threads pack them."""
    cdef Gate gate
    cdef Py_ssize_t nr = panel_width(floating is float), size
    for gate in gates:
        names = tuple(type(gate).products)
        if not names:
            continue
        if team.post.W != NULL or len(names) != 1:
            raise ValueError("a cell runs one post-gate product (Gate.products); gate "
                             f"{type(gate).name!r} declares {names}")
        team.post.W = gate.param[list(type(gate).params).index(names[0])]
    if team.post.W == NULL or team.H == 0 or team.B == 0:
        team.post.W = NULL
        return 0
    size = team.size * panel_count(team.units, nr) * nr * team.H
    team.post.panels = malloc(size * sizeof(floating))
    if team.post.panels == NULL:
        raise MemoryError(f"could not allocate {size} numbers for a post-gate product's panels")
    team.post.transposed = transposed
    return 0


cdef inline Py_ssize_t product_panels(Team* team, Py_ssize_t nr) noexcept nogil:
    """Numbers in one thread's panels of the post-gate product (all of them but the last
    thread's hold team.units units; thread 0 alone on a team that could not start holds H)."""
    return panel_count(team.units, nr) * nr * team.H


cdef void pack_product(Team* team, int member, floating* precision) noexcept nogil:
    """Thread ``member`` packs its units of the post-gate product's weight: rows of W for the
    forward pass, columns for the backward."""
    cdef Py_ssize_t nr = panel_width(floating is float), H = team.H, u0, u1, u
    cdef const floating* W = <const floating*> team.post.W
    unit_range(team, member, &u0, &u1)
    cdef floating* panel = <floating*> team.post.panels + member * product_panels(team, nr)
    for u from u0 <= u < u1 by nr:
        if team.post.transposed:
            pack(panel, W + u, 1, H, H, min(nr, u1 - u))
        else:
            pack(panel, W + u * H, H, 1, H, min(nr, u1 - u))
        panel += H * nr


cdef int post_product_float(const void* handle, bint transposed, const float* A, float* C,
                            const Extent* e) noexcept nogil:
    return multiply_product(<Team*> handle, transposed, A, C, e)


cdef int post_product_double(const void* handle, bint transposed, const double* A,
                             double* C, const Extent* e) noexcept nogil:
    return multiply_product(<Team*> handle, transposed, A, C, e)


cdef inline int multiply_product(Team* team, bint transposed, const floating* A, floating* C,
                                 const Extent* e) noexcept nogil:
    """C[:, u0:u1] += A @ W.T (or A @ W) over the panels of the threads whose units make up
    [e.u0, e.u1) (a thread's own, or all of them); 0. -1, adding nothing, for the product the
    other way round than the pass packed it (the gate's post_gate_product then runs gemm)."""
    cdef Py_ssize_t nr = panel_width(floating is float), H = team.H, B = e.B
    cdef Py_ssize_t u0 = e.u0, u1 = e.u1, units = team.units, m, m0, m1, u
    cdef floating* panel
    if transposed != team.post.transposed:
        return -1
    if u1 <= u0:
        return 0
    m = u0 // units
    while m < team.size and m * units < u1:
        m0, m1 = m * units, min(H, (m + 1) * units)
        panel = <floating*> team.post.panels + m * product_panels(team, nr)
        for u from m0 <= u < m1 by nr:
            product(B, A, H, H, NULL, 0, 0, panel, NULL, C + u, H, min(nr, m1 - u))
            panel += H * nr
        m += 1
    return 0


cdef void add_carry(Team* team, int member, const floating* dzt, floating* carry) noexcept nogil:
    """carry[:, thread ``member``'s units] += dz[t] @ W[:, those units], over the panels of
    W[:, units] ``member`` packed (the rows of the blocks that read the STM)."""
    cdef Py_ssize_t nr = panel_width(floating is float), u0, u1, u, rows = team.recurrent_end
    unit_range(team, member, &u0, &u1)
    cdef floating* panel = <floating*> team.panels + member * team.units * team.KH
    for u from u0 <= u < u1 by nr:
        product(team.B, dzt, team.KH, rows, NULL, 0, 0, panel, NULL, carry + u, team.H,
                min(nr, u1 - u))
        panel += rows * nr


cdef StepAny sequence_step(Team* team, floating* precision) noexcept nogil:
    """The step the gates' finish sees: every array spans all T * B rows of the tape (e.B =
    T * B, e.t = -1, no STM_prev), all units, on this thread."""
    cdef Py_ssize_t TBH = team.T * team.B * team.H
    cdef floating* dacts = <floating*> team.dacts
    cdef StepAny s = member_step(team, 0, team.H)
    s.barrier = NULL
    point_at_step(&s, 0, <floating*> team.z, <floating*> team.acts, team.kept,
                  <floating*> team.ltm, <floating*> team.y, <const floating*> team.stm0,
                  <const floating*> team.x, team.forget_preactivation)
    s.e.t, s.e.B = -1, team.T * team.B
    if team.candidates != NULL:
        s.LTM_t = team.candidates
    s.STM_prev = s.dSTM_prev = NULL
    s.product, s.post_product = NULL, NULL
    s.dz, s.dE_t = team.dz, team.dx
    s.ds_t = NULL if team.forget_preactivation < 0 or team.dz == NULL else (
        <floating*> team.dz + team.forget_preactivation)
    s.df_t, s.di_t, s.dN_t = dacts, dacts + TBH, dacts + 2 * TBH
    s.dU_t, s.dV_t = dacts + 3 * TBH, dacts + 4 * TBH
    return s


cdef void weights_member(Team* team, int index, floating* precision) noexcept nogil:
    """Thread ``index``'s part of the weights phase, after the last backward step:
    dW and dbias for the rows of its units in every block, each a sum over all T * B rows
    (dW[c] += Σ_r dz[r, c] [STM_{r-B} | E_r], STM_{-B..-1} = stm0), and its share of the
    rows of dx = dz @ W[:, H:]. No barrier: every thread writes its own rows."""
    cdef Py_ssize_t B = team.B, D = team.D, H = team.H, KH = team.KH, kdim = team.H + team.D
    cdef Py_ssize_t TB = team.T * team.B, nr = panel_width(floating is float)
    cdef Py_ssize_t u0, u1, own
    cdef Py_ssize_t blocks = KH // H, r, rc, l, j, k, u, c, column, i, n, r0, r1
    cdef Py_ssize_t first_input = team.first_input, recurrent_end = team.recurrent_end
    unit_range(team, index, &u0, &u1)
    own = u1 - u0
    cdef const floating* dz = <const floating*> team.dz
    cdef const floating* x = <const floating*> team.x
    cdef const floating* W = <const floating*> team.W
    cdef const floating* source
    cdef floating* dW = <floating*> team.dW
    cdef floating* dbias = <floating*> team.dbias
    cdef floating* dx = <floating*> team.dx
    cdef GradientScratch G = weights_scratch(D, H, KH, team.units, floating is float)
    cdef floating* dz_t = <floating*> team.panels + index * G.size
    cdef floating* rows = dz_t + G.rows
    cdef floating* input_panels = dz_t + G.input_panels
    cdef floating* panel
    cdef floating total
    for r from 0 <= r < TB by GRADIENT_ROWS:
        rc = min(GRADIENT_ROWS, TB - r)
        # dz[r:r + rc, own columns].T, one row per column (block by block), summed into dbias
        i = 0
        for k in range(blocks):
            for u in range(u0, u1):
                c = k * H + u
                total = 0
                for l in range(rc):
                    dz_t[i * rc + l] = dz[(r + l) * KH + c]
                    total = total + dz_t[i * rc + l]
                dbias[c] += total
                i += 1
        # [STM_{t-1}, E_t] of those rows, in panels of nr columns
        for j from 0 <= j < kdim by nr:
            panel = rows + (j // nr) * nr * rc
            n = min(nr, kdim - j)
            for l in range(rc):
                if j < H:
                    source = (<const floating*> team.stm0 + (r + l) * H if r + l < B
                              else <const floating*> team.y + (r + l - B) * H)
                for column in range(nr):
                    if column >= n:
                        panel[l * nr + column] = 0
                    elif j + column < H:
                        panel[l * nr + column] = source[j + column]
                    else:
                        panel[l * nr + column] = x[(r + l) * D + j + column - H]
                if j < H and team.dropout != NULL:
                    # the gates read STM_{t-1} masked: so does the gradient of W[:, :H]
                    source = <const floating*> team.dropout + ((r + l) % B) * H
                    for column in range(min(n, H - j)):
                        panel[l * nr + column] *= source[j + column]
        for j from 0 <= j < kdim by nr:
            panel = rows + (j // nr) * nr * rc
            for k in range(blocks):
                # the columns of W a block does not read belong to no parameter
                if (k * H < first_input and j >= H) or (k * H >= recurrent_end and j + nr <= H):
                    continue
                product_unsplit(own, dz_t + k * own * rc, rc, rc, panel,
                                dW + (k * H + u0) * kdim + j, kdim, min(nr, kdim - j))
    # dx[r0:r1] = dz[r0:r1] @ W[:, H:], over panels of W[first_input:, H:] (the rows before are
    # blocks that read the STM only: zero there)
    if first_input == KH:
        return
    for j from 0 <= j < D by nr:
        pack(input_panels + (j // nr) * nr * KH, W + first_input * kdim + H + j, 1, kdim,
             KH - first_input, min(nr, D - j))
    r0 = min(TB, index * ((TB + team.size - 1) // team.size))
    r1 = min(TB, r0 + (TB + team.size - 1) // team.size)
    for r from r0 <= r < r1 by INPUT_GRADIENT_ROWS:
        rc = min(INPUT_GRADIENT_ROWS, r1 - r)
        for j from 0 <= j < D by nr:
            product_unsplit(rc, dz + r * KH + first_input, KH, KH - first_input,
                            input_panels + (j // nr) * nr * KH, dx + r * D + j, D, min(nr, D - j))


cdef struct GradientScratch:     # one thread's scratch of the weights phase, in numbers
    Py_ssize_t rows              # after dz^T of its columns: [STM_{t-1}, E_t] of GRADIENT_ROWS rows
    Py_ssize_t input_panels      # then the panels of W[:, H:], for dx
    Py_ssize_t size


cdef GradientScratch weights_scratch(Py_ssize_t D, Py_ssize_t H, Py_ssize_t KH,
                                     Py_ssize_t units, bint single) noexcept nogil:
    """Where weights_member's buffers lie in the scratch of one thread of ``units`` units."""
    cdef Py_ssize_t nr = panel_width(single)
    cdef GradientScratch G
    G.rows = (KH // H) * units * GRADIENT_ROWS
    G.input_panels = G.rows + panel_count(H + D, nr) * nr * GRADIENT_ROWS
    G.size = G.input_panels + panel_count(D, nr) * nr * KH
    return G


# ---------------------------------------------------------------------------------------------
# The regularisers of the recurrence: zoneout and recurrent dropout
#
# Zoneout (Krueger et al. 2017) runs the gates as they are, the use gate reading the candidate
# LTM~_t, then keeps each unit's previous memories with probability z_c (LTM) and z_h (STM):
#     LTM_t = d ⊙ LTM_{t-1} + (1 - d) ⊙ LTM~_t,  STM_t = d' ⊙ STM_{t-1} + (1 - d') ⊙ STM~_t,
# d, d' the step's masks (0 or 1), or z_c, z_h in evaluation (their expectation). Masks drawn
# for a call are not stored: unit j of sequence b at step t keeps its memory where
# zoneout_hash(key, t, b * H + j) < below (below = z 2^32, key drawn for the call), computed
# where it applies, on the thread of the unit, in forward and again in backward
# (gatekit.core.cell computes the same numbers in NumPy for the tape's masks). The gates'
# LTM_t is then LTM~_t (kept apart, in `candidates`, for backward); the ltm buffer and y hold
# the zoned memories, which the next step reads. Backward, with G_L and G_S the gradients of
# the zoned LTM_t and STM_t, the gates see dLTM_t = (1 - d) ⊙ G_L and dSTM_t = (1 - d') ⊙ G_S,
# and d ⊙ G_L, d' ⊙ G_S go straight to LTM_{t-1}, STM_{t-1}.
# Recurrent dropout (Gal & Ghahramani 2016) multiplies STM_{t-1} by a mask m of the sequence,
# the same at every step, wherever the gates read it (the recurrent product, a gate's own
# reads of STM_prev); the STM carried to the next step and output stays unmasked. Each thread
# keeps its own full copy of m ⊙ STM_{t-1} (a product reads every unit of it), so no barrier is
# added. The gradient the gates send to the STM they read (their dSTM_prev and W^T dz) goes to
# `inner`, and the carry to STM_{t-1} gets m ⊙ inner at the end of the step. Past a sequence's
# length the step is the identity, as without regularisers (its gates see zero gradients).
# ---------------------------------------------------------------------------------------------

cdef extern from *:
    """
    #include <stdint.h>
    /* lowbias32 (C. Wellons): a bijection of 32-bit words whose every output bit depends on
     * every input bit; two multiplies, so a loop of it vectorises. */
    static inline uint32_t gk_mix32(uint32_t x) {
        x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
        return x;
    }
    static inline uint32_t gk_step_key(uint32_t key, uint32_t t) {
        return gk_mix32(key + t * 0x9e3779b9U);
    }
    """
    uint32_t gk_mix32(uint32_t x) nogil
    uint32_t gk_step_key(uint32_t key, uint32_t t) nogil


def zoneout_hash(key, t, index):
    """The hash of unit ``index`` = b * H + j of step t under the call's ``key``
    (gk_mix32(gk_step_key(key, t) ^ index)): the compiled loop's own, for the tests."""
    return gk_mix32(gk_step_key(<uint32_t> key, <uint32_t> t) ^ <uint32_t> index)


def regulariser_buffers():
    """The order of the ``regularisers`` tuple :func:`forward` and :func:`backward` take:
    ``zone_ltm`` and ``zone_stm`` (T, B, H) zoneout masks, 1 where the memory keeps its previous
    value, or None (then ``rate_ltm``, ``rate_stm``, numbers, stand for them in evaluation, and
    ``hashed`` = (key_ltm, key_stm, below_ltm, below_stm) for masks drawn for the call: a unit
    keeps its memory where :func:`zoneout_hash` is below ``below``, 0 for none);
    ``candidates`` (S, B, H), where the gates' LTM~_t goes when the LTM is zoned (kept for
    backward), else None; ``dropout`` (B, H) the recurrent dropout mask, or None; ``dropped``
    (threads + 2, B, H) scratch: the masked STM_{t-1} of each thread, then the zoneout masks of
    a step of the LTM and of the STM (each thread its own units); ``inner`` (B, H) scratch of
    backward."""
    return ("zone_ltm", "zone_stm", "rate_ltm", "rate_stm", "candidates", "dropout", "dropped",
            "inner", "hashed")


cdef int set_regularisers(Team* team, tuple regularisers, int threads, Py_ssize_t kept,
                          floating* precision) except -1:
    """Point the team at the buffers of ``regularisers`` (see regulariser_buffers), after
    checking their shapes: the loops index them through raw pointers."""
    cdef Py_ssize_t T = team.T, B = team.B, H = team.H
    cdef floating[:, :, ::1] steps
    cdef floating[:, ::1] rows
    if len(regularisers) != 9:
        raise ValueError(f"regularisers must hold {regulariser_buffers()}; got "
                         f"{len(regularisers)} items")
    (zone_ltm, zone_stm, rate_ltm, rate_stm, candidates, dropout, dropped, inner,
     hashed) = regularisers
    team.rate_ltm, team.rate_stm = float(rate_ltm), float(rate_stm)
    if hashed is not None:
        team.key_ltm, team.key_stm, team.below_ltm, team.below_stm = hashed
    for name, masks in (("zone_ltm", zone_ltm), ("zone_stm", zone_stm)):
        if masks is not None and T * B * H > 0:
            steps = masks
            check_shape(name, (steps.shape[0], steps.shape[1], steps.shape[2]), (T, B, H))
            if name == "zone_ltm":
                team.zone_ltm = &steps[0, 0, 0]
            else:
                team.zone_stm = &steps[0, 0, 0]
    if (team.zone_ltm != NULL or team.rate_ltm != 0 or team.below_ltm != 0) and T * B * H > 0:
        if candidates is None:
            raise ValueError("a zoned LTM needs the candidates buffer")
        steps = candidates
        check_shape("candidates", (steps.shape[0], steps.shape[1], steps.shape[2]), (kept, B, H))
        team.candidates = &steps[0, 0, 0]
    if dropout is not None and B * H > 0:
        rows = dropout
        check_shape("dropout", (rows.shape[0], rows.shape[1]), (B, H))
        team.dropout = &rows[0, 0]
    if B * H > 0:
        steps = dropped
        if steps.shape[0] < threads + 2 or steps.shape[1] != B or steps.shape[2] != H:
            raise ValueError(f"dropped must have shape ({threads + 2} or more, {B}, {H}); got "
                             f"{(steps.shape[0], steps.shape[1], steps.shape[2])}")
        team.dropped = &steps[0, 0, 0]
    team.regularised = (team.candidates != NULL or stm_zoned(team) or team.dropout != NULL)
    if team.regularised and team.phase == BACKWARD:
        rows = inner
        check_shape("inner", (rows.shape[0], rows.shape[1]), (B, H))
        team.inner = &rows[0, 0]
    return 0


cdef inline void regularise_reads(Team* team, StepAny* s, int index,
                                  floating* precision) noexcept nogil:
    """Point step t at what its gates read under the regularisers: LTM~_t (zoned after the
    gates) and the masked STM_{t-1}, this thread's own copy of every unit."""
    cdef Py_ssize_t BH = s.e.B * s.e.H, j
    cdef floating* copy
    cdef const floating* previous = <const floating*> s.STM_prev
    cdef const floating* mask = <const floating*> team.dropout
    if team.candidates != NULL:
        s.LTM_t = <floating*> team.candidates + (s.e.t % team.kept) * BH
    if mask != NULL:
        copy = <floating*> team.dropped + index * BH
        for j in range(BH):
            copy[j] = previous[j] * mask[j]
        s.STM_prev = copy


cdef inline bint stm_zoned(Team* team) noexcept nogil:
    return team.zone_stm != NULL or team.rate_stm != 0 or team.below_stm != 0


cdef inline void keep_factors(floating* keep, const floating* masks, double rate, uint32_t key,
                              uint32_t below, Py_ssize_t t, Py_ssize_t B, Py_ssize_t H,
                              Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    """keep[b * H + j] for units u0..u1 of step t: the zoneout mask given (``masks``), or
    drawn (``below`` > 0: 1 where the unit's hash is below it), or the rate (evaluation)."""
    cdef Py_ssize_t b, j, at = t * B * H
    cdef uint32_t step_key = gk_step_key(key, <uint32_t> t)
    cdef floating value = <floating> rate
    for b in range(B):
        if masks != NULL:
            for j in range(b * H + u0, b * H + u1):
                keep[j] = masks[at + j]
        elif below != 0:
            for j in range(b * H + u0, b * H + u1):
                keep[j] = 1 if gk_mix32(step_key ^ <uint32_t> j) < below else 0
        else:
            for j in range(b * H + u0, b * H + u1):
                keep[j] = value


cdef inline void zone(Team* team, StepAny* s, const floating* STM_prev,
                      floating* LTM_t) noexcept nogil:
    """Zoneout of units s.e.u0..u1 after the gates: ``LTM_t`` (the ltm buffer's) from LTM~_t,
    and STM_t (y_t) in place; then point the step back at the unmasked STM_{t-1} and the zoned
    LTM_t (which hold_finished reads)."""
    cdef Py_ssize_t B = s.e.B, H = s.e.H, u0 = s.e.u0, u1 = s.e.u1, b, j
    cdef const floating* LTM_prev = <const floating*> s.LTM_prev
    cdef const floating* candidate = <const floating*> s.LTM_t
    cdef floating* STM_t = <floating*> s.STM_t
    # the step's zoneout masks, in scratch that every thread shares (each its own units)
    cdef floating* keep = <floating*> team.dropped + team.size * B * H
    if team.candidates != NULL:
        keep_factors(keep, <const floating*> team.zone_ltm, team.rate_ltm, team.key_ltm,
                     team.below_ltm, s.e.t, B, H, u0, u1)
        for b in range(B):
            for j in range(b * H + u0, b * H + u1):
                LTM_t[j] = keep[j] * LTM_prev[j] + (1 - keep[j]) * candidate[j]
    if stm_zoned(team):
        keep_factors(keep, <const floating*> team.zone_stm, team.rate_stm, team.key_stm,
                     team.below_stm, s.e.t, B, H, u0, u1)
        for b in range(B):
            for j in range(b * H + u0, b * H + u1):
                STM_t[j] = keep[j] * STM_prev[j] + (1 - keep[j]) * STM_t[j]
    s.STM_prev, s.LTM_t = STM_prev, LTM_t


cdef inline void zone_backward(Team* team, StepAny* s, const floating* dy, floating* carry,
                               floating* inner) noexcept nogil:
    """The start of backward step t under the regularisers, units s.e.u0..u1: the gradients
    the gates see (dSTM_t, dLTM_t of the candidates), what zoneout sends straight to the
    memories of step t - 1 (carry, dLTM_prev), and ``inner`` zeroed for the gates. Past a
    sequence's length, the identity."""
    cdef Py_ssize_t B = s.e.B, H = s.e.H, u0 = s.e.u0, u1 = s.e.u1, b, j
    cdef floating* dSTM_t = <floating*> s.dSTM_t
    cdef floating* dLTM_t = <floating*> s.dLTM_t
    cdef floating* dLTM_prev = <floating*> s.dLTM_prev
    cdef floating* keep_ltm = <floating*> team.dropped + team.size * B * H
    cdef floating* keep_stm = keep_ltm + B * H
    cdef floating total
    if team.candidates != NULL:
        keep_factors(keep_ltm, <const floating*> team.zone_ltm, team.rate_ltm, team.key_ltm,
                     team.below_ltm, s.e.t, B, H, u0, u1)
    else:
        keep_factors(keep_ltm, <const floating*> NULL, 0, 0, 0, s.e.t, B, H, u0, u1)
    if stm_zoned(team):
        keep_factors(keep_stm, <const floating*> team.zone_stm, team.rate_stm, team.key_stm,
                     team.below_stm, s.e.t, B, H, u0, u1)
    else:
        keep_factors(keep_stm, <const floating*> NULL, 0, 0, 0, s.e.t, B, H, u0, u1)
    for b in range(B):
        for j in range(b * H + u0, b * H + u1):
            inner[j] = 0
        if team.lengths != NULL and s.e.t >= team.lengths[b]:
            for j in range(b * H + u0, b * H + u1):
                dSTM_t[j] = 0
                dLTM_prev[j] = dLTM_t[j]
                dLTM_t[j] = 0
            continue
        for j in range(b * H + u0, b * H + u1):
            total = dy[j] + carry[j]
            dSTM_t[j] = (1 - keep_stm[j]) * total
            carry[j] = keep_stm[j] * total
            dLTM_prev[j] = keep_ltm[j] * dLTM_t[j]
            dLTM_t[j] = (1 - keep_ltm[j]) * dLTM_t[j]


cdef inline void unmask_carry(Team* team, Py_ssize_t u0, Py_ssize_t u1, floating* carry,
                              const floating* inner) noexcept nogil:
    """The end of backward step t under the regularisers, units u0..u1: the carry to
    STM_{t-1} gets what the gates sent to the STM they read, through the dropout mask."""
    cdef Py_ssize_t B = team.B, H = team.H, b, j
    cdef const floating* mask = <const floating*> team.dropout
    for b in range(B):
        if mask != NULL:
            for j in range(b * H + u0, b * H + u1):
                carry[j] += mask[j] * inner[j]
        else:
            for j in range(b * H + u0, b * H + u1):
                carry[j] += inner[j]


# ---------------------------------------------------------------------------------------------
# Helpers of both passes
# ---------------------------------------------------------------------------------------------

cdef inline void point_at_step(StepAny* s, Py_ssize_t t, floating* z, floating* acts,
                               Py_ssize_t kept, floating* ltm, floating* y, const floating* stm0,
                               const floating* x, Py_ssize_t forget_preactivation) noexcept nogil:
    """Point the step's forward fields at step t of the buffers (see the module docstring):
    acts holds 5 slots of ``kept`` steps, ltm ``kept + 1`` memories, y T steps, each B * H;
    x T steps of B * D."""
    cdef Py_ssize_t BH = s.e.B * s.e.H, k = t % kept
    s.e.t = t
    s.E_t = NULL if x == NULL else x + t * s.e.B * s.e.D
    s.z = z
    s.s_t = NULL if forget_preactivation < 0 or z == NULL else z + forget_preactivation
    s.STM_prev = stm0 if t == 0 else y + (t - 1) * BH
    s.LTM_prev, s.LTM_t = ltm + (t % (kept + 1)) * BH, ltm + ((t + 1) % (kept + 1)) * BH
    s.f_t, s.i_t, s.N_t = acts + k * BH, acts + (kept + k) * BH, acts + (2 * kept + k) * BH
    s.U_t, s.V_t = acts + (3 * kept + k) * BH, acts + (4 * kept + k) * BH
    s.STM_t = y + t * BH


cdef check_shape(str name, tuple shape, tuple expected):
    """The kernels index their buffers through raw pointers, so a buffer of the wrong size would
    be read or written out of bounds in any build: refuse it first."""
    if shape != expected:
        raise ValueError(f"{name} must have shape {expected}; got {shape}")


# The tiled loop's products (gatekit/core/_tiles.h): weights packed once per call into panels of
# panel_width() columns, each product done in register tiles.

cdef inline void pack(floating* panel, const floating* w, Py_ssize_t column_stride,
                      Py_ssize_t l_stride, Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    if floating is float:
        gk_pack_float(panel, w, column_stride, l_stride, k, n)
    else:
        gk_pack_double(panel, w, column_stride, l_stride, k, n)


cdef inline void product(Py_ssize_t rows, const floating* a1, Py_ssize_t lda1, Py_ssize_t k1,
                         const floating* a2, Py_ssize_t lda2, Py_ssize_t k2,
                         const floating* panel, const floating* bias, floating* c,
                         Py_ssize_t ldc, Py_ssize_t n) noexcept nogil:
    if floating is float:
        gk_product_float(rows, a1, lda1, k1, a2, lda2, k2, panel, bias, c, ldc, n)
    else:
        gk_product_double(rows, a1, lda1, k1, a2, lda2, k2, panel, bias, c, ldc, n)


cdef inline void product_unsplit(Py_ssize_t rows, const floating* a, Py_ssize_t lda,
                                 Py_ssize_t k, const floating* panel, floating* c,
                                 Py_ssize_t ldc, Py_ssize_t n) noexcept nogil:
    """c += a @ panel, each row summed alike whatever the number of rows (see _tiles.h): for
    products whose rows are a thread's share."""
    if floating is float:
        gk_product_unsplit_float(rows, a, lda, k, panel, c, ldc, n)
    else:
        gk_product_unsplit_double(rows, a, lda, k, panel, c, ldc, n)
