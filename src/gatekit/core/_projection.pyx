"""The time loop of a cell with a projected STM (LSTM with projection, Sak et al. 2014), forward
and backward.

The gates compute the step as in any cell, at width H: their STM_t is U_t ⊙ V_t, which this
loop keeps in ``uv`` (S, B, H). The STM carried to the next step and output is its projection
STM_t = (U_t ⊙ V_t) W_hr^T, P wide, so the blocks' weights W (KH, P + D) read [STM_{t-1}, E_t]
with P STM columns first. The gates must read STM_{t-1} only through their blocks (the cell
refuses those that read it unit by unit, ``Gate.stm_by_unit``): the step hands them no
``STM_prev``. A cell without projection never comes here (gatekit.core._loop is its loop).

Buffers, for T steps of B sequences, D inputs, H units, P projected units, K blocks (KH = K*H):
z (T, B, KH) the pre-activations, acts (5, S, B, H), ltm (S + 1, B, H), uv (S, B, H) as in
gatekit.core._loop (S = T with a tape, else 1), y (T, B, P) the projected STM of every step,
stm0 (B, P). ``reads`` = (first_input, recurrent_end) as in _loop: the input product fills
columns [first_input, KH) of z, the recurrent product columns [0, recurrent_end).

The products run in gatekit's register tiles (_tiles.h). A call large enough for it (see
plan_crew) splits between threads: each computes its share of the H units of every block and
of the gates, and its share of the P columns of the projection and of the carry, with two
barriers per step; gates that mix units or wait at barriers of their own run the call on one
thread. At each step's last barrier thread 0 judges whether the crew has become slower than
one thread would be (a busy machine: gatekit/core/_team.pxd), and if so carries on alone
over every unit and column for a while, the others waiting to be called back.

Backward, with g_t = d/dSTM_t (P wide: dy_t plus what step t + 1 sent back), the gates see
dSTM_t = g_t W_hr (the gradient of U_t ⊙ V_t), step t - 1 gets g_{t-1} += dz_t W[:, :P] (the
rows of the blocks that read the STM), and after the last step, on the calling thread, the
gates' finish and the weight gradients, each one product over all T * B rows:
dW_hr = Σ_t g_t^T (U_t ⊙ V_t), dW[:, :P] = Σ_t dz_t^T STM_{t-1}, dW[:, P:] = Σ_t dz_t^T E_t,
db = Σ_t dz_t, dx_t += dz_t W[:, P:].
"""
from gatekit.core._gate cimport Gate, StepFloat, StepDouble, floating, gemm
from gatekit.core._step cimport StepAny, step_layout
from gatekit.core._team cimport (
    MAX_TEAM, Pace, StepEnd, GO_ALONE, STOP, TEAM_AGAIN, end_pace, gk_barrier, gk_barrier_wait,
    gk_start, gk_wait_for_start, join_members, meet_at_end_of_step, pthread_t, start_members,
    start_pace, wait_to_be_called)

from gatekit.core._gate import PythonGate

__all__ = ["backward", "crew_size", "forward"]


def _check_layout():
    """The offsets of the step's fields in the three structs (see gatekit/core/_step.pxd)."""
    return step_layout("gatekit.core._projection")


_check_layout()


cdef enum:
    OUT_OF_MEMORY = -2      # what the loops return when a product could not allocate its panel
    # As in gatekit.core._loop's plan: multiply-adds per call below which a second thread
    # costs more than it saves, and per step that each thread must have (a barrier costs about
    # a microsecond, a scheduler's wake-up tens of them).
    THREADED_CALL_WORK = 4194304
    THREAD_STEP_WORK = 32768

def crew_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, Py_ssize_t P,
              Py_ssize_t KH, int threads, tuple gates):
    """The threads a call of these sizes runs on (see plan_crew)."""
    return plan_crew(T, B, D, H, P, KH, threads, gates_share(gates))


cdef bint gates_share(tuple gates):
    """Whether the gates can run on a share of the units each: none mixes them, none waits
    at barriers of its own (those run the call on one thread)."""
    return all(not gate.mixes_units and gate.syncs == 0 for gate in gates)


cdef int plan_crew(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, Py_ssize_t P,
                   Py_ssize_t KH, int threads, bint share) noexcept nogil:
    """Threads for a call: each shares the units of every block and of the projection, with
    two barriers per step, where the call and each thread's share of a step are large
    enough (the thresholds of gatekit.core._loop)."""
    cdef Py_ssize_t step_work = B * KH * (P + D) + B * P * H
    cdef Py_ssize_t crew = max(1, min(threads, MAX_TEAM))
    if not share:
        return 1
    while crew > 1 and (T * step_work < THREADED_CALL_WORK * crew
                        or step_work < THREAD_STEP_WORK * crew or crew > min(H, P)):
        crew -= 1
    return <int> crew


def forward(tuple gates, floating[:, ::1] W, floating[::1] bias, floating[:, ::1] W_hr,
            floating[:, :, ::1] x, floating[:, ::1] stm0, floating[:, :, ::1] y,
            floating[:, :, ::1] z, floating[:, :, :, ::1] acts, floating[:, :, ::1] ltm,
            floating[:, :, ::1] uv, floating[:, ::1] work, const Py_ssize_t[::1] lengths,
            Py_ssize_t forget_preactivation, tuple reads, int threads=1, Py_ssize_t alone_at=-1,
            Py_ssize_t back_at=-1):
    """Run the projected cell over every step of ``x``; the caller puts the initial LTM in
    ltm[0]. Sequence b lasts ``lengths[b]`` steps (None: all T): from then on its memories
    stay as they were. Returns -1, the step at which a gate failed, or -2 if a product could
    not allocate its scratch. (``alone_at``: the step after which thread 0 goes on alone
    whatever it measures, for the tests; ``back_at``, a later step after which it calls the
    others back whatever the time.)"""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t P = stm0.shape[1], H = W_hr.shape[1], KH = W.shape[0], S = acts.shape[1]
    cdef Py_ssize_t first_input, recurrent_end
    first_input, recurrent_end = check_reads(reads, KH, H)
    check_shape("W", (W.shape[0], W.shape[1]), (KH, P + D))
    check_shape("bias", (bias.shape[0],), (KH,))
    check_shape("W_hr", (W_hr.shape[0], W_hr.shape[1]), (P, H))
    check_shape("stm0", (stm0.shape[0], stm0.shape[1]), (B, P))
    check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (T, B, P))
    check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (T, B, KH))
    if S not in (1, T) or S == 0:
        raise ValueError(f"acts must keep 1 or T = {T} steps; got {S}")
    check_shape("acts", (acts.shape[0], acts.shape[1], acts.shape[2], acts.shape[3]),
                (5, S, B, H))
    check_shape("ltm", (ltm.shape[0], ltm.shape[1], ltm.shape[2]), (S + 1, B, H))
    check_shape("uv", (uv.shape[0], uv.shape[1], uv.shape[2]), (S, B, H))
    check_shape("work", (work.shape[0], work.shape[1]), (B, H))
    if lengths is not None:
        check_shape("lengths", (lengths.shape[0],), (B,))
    check_gates(gates)
    if T == 0 or B == 0:
        return -1
    cdef const Py_ssize_t* ends = &lengths[0] if lengths is not None else NULL
    cdef void* gate_list[4]
    cdef int g
    for g in range(4):
        gate_list[g] = <void*> gates[g]
    cdef Crew crew
    set_up_crew(&crew, gate_list, T, B, D, H, P, KH, S, first_input, recurrent_end,
                forget_preactivation, ends, floating is float,
                plan_crew(T, B, D, H, P, KH, threads, gates_share(gates)))
    start_pace(&crew.pace, alone_at, back_at)
    crew.W, crew.bias, crew.W_hr, crew.x = &W[0, 0], &bias[0], &W_hr[0, 0], &x[0, 0, 0]
    crew.stm0, crew.y, crew.z, crew.acts = &stm0[0, 0], &y[0, 0, 0], &z[0, 0, 0], &acts[0, 0, 0, 0]
    crew.ltm, crew.uv, crew.work = &ltm[0, 0, 0], &uv[0, 0, 0], &work[0, 0]
    cdef Py_ssize_t failed
    with nogil:
        failed = run_crew(&crew)
    return failed


cdef void set_up_crew(Crew* crew, void** gates, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D,
                      Py_ssize_t H, Py_ssize_t P, Py_ssize_t KH, Py_ssize_t S,
                      Py_ssize_t first_input, Py_ssize_t recurrent_end,
                      Py_ssize_t forget_preactivation, const Py_ssize_t* lengths, bint single,
                      int size) noexcept:
    cdef int g
    for g in range(4):
        crew.gates[g] = gates[g]
    crew.size, crew.single, crew.backward, crew.lengths = size, single, False, lengths
    crew.T, crew.B, crew.D, crew.H, crew.P, crew.KH, crew.S = T, B, D, H, P, KH, S
    crew.first_input, crew.recurrent_end = first_input, recurrent_end
    crew.forget_preactivation = forget_preactivation
    crew.x = crew.dy = crew.carry = crew.dltm = crew.dz = crew.dacts = crew.dx = NULL
    crew.dparams, crew.dparams_stride, crew.dprojected, crew.scratch = NULL, 0, NULL, NULL


# The crew: the threads of one call. Thread m computes units [u0, u1) of every block and of
# the gates (split of H), and columns [p0, p1) of the projection and of the carry (split of
# P); two barriers per step keep them in step (all of U_t ⊙ V_t before the projection, all of
# STM_t before the next step's recurrent product; backward, all of g_t before dSTM_t, all of
# dz_t before the carry).

cdef struct Crew:
    int size
    gk_start start           # 1 once every thread exists; -1 if one could not be started
    gk_barrier barrier
    Pace pace                # whether, and after which step, thread 0 is on its own
    Py_ssize_t failed[MAX_TEAM]     # the step at which each thread saw a gate fail, or -1
    bint out_of_memory[MAX_TEAM]
    Py_ssize_t stop_tag[MAX_TEAM]   # the barrier before which each thread saw either, or -1
    void* gates[4]
    Py_ssize_t T, B, D, H, P, KH, S, first_input, recurrent_end, forget_preactivation
    const void* W
    const void* bias
    const void* W_hr
    const void* x
    const void* stm0
    void* y
    void* z
    void* acts
    void* ltm
    void* uv
    void* work
    const Py_ssize_t* lengths
    bint single
    bint backward
    const void* dy
    void* carry
    void* dltm
    void* dz
    void* dacts
    void* dx
    size_t* dparams
    Py_ssize_t dparams_stride
    void* dprojected
    void* scratch


cdef struct CrewMember:
    Crew* crew
    int index


cdef inline void share(Py_ssize_t n, int size, int index, Py_ssize_t* start,
                       Py_ssize_t* end) noexcept nogil:
    """Thread ``index``'s share of n things among ``size`` threads."""
    cdef Py_ssize_t each = (n + size - 1) // size
    start[0] = min(n, index * each)
    end[0] = min(n, start[0] + each)


cdef Py_ssize_t run_crew(Crew* crew) noexcept nogil:
    """Run the pass on crew.size threads, this one included (on this one alone if the system
    will not start another). Returns -1, -2 (out of memory) or the first failed step."""
    cdef pthread_t threads[MAX_TEAM]
    cdef CrewMember members[MAX_TEAM]
    cdef int m, size = crew.size
    cdef Py_ssize_t failed = -1
    for m in range(MAX_TEAM):
        crew.failed[m], crew.out_of_memory[m], crew.stop_tag[m] = -1, False, -1
        members[m].crew, members[m].index = crew, m
    # each share is fixed by the crew's size: if not all start, this thread runs alone
    if start_members(&crew.start, &crew.barrier, threads, crew_main, members,
                     sizeof(CrewMember), size) < size:
        crew.size = 1
    crew_member(crew, 0)
    end_pace(&crew.pace)
    join_members(threads, crew.size)
    for m in range(crew.size):
        if crew.out_of_memory[m]:
            return OUT_OF_MEMORY
        if crew.failed[m] >= 0 and (failed < 0 or crew.failed[m] < failed):
            failed = crew.failed[m]
    return failed


cdef void* crew_main(void* argument) noexcept nogil:
    cdef CrewMember* member = <CrewMember*> argument
    if gk_wait_for_start(&member.crew.start) > 0:
        crew_member(member.crew, member.index)
    return NULL


cdef inline void crew_member(Crew* crew, int index) noexcept nogil:
    if crew.backward:
        if crew.single:
            backward_member(crew, index, <float*> NULL)
        else:
            backward_member(crew, index, <double*> NULL)
    elif crew.single:
        forward_member(crew, index, <float*> NULL)
    else:
        forward_member(crew, index, <double*> NULL)


cdef inline bint meet(Crew* crew, int index, Py_ssize_t t, bint failed, bint alone) noexcept nogil:
    """Record this thread's failure at step t, wait for the others (unless thread 0 is alone);
    whether any has failed (every thread then stops at this step)."""
    if failed and crew.failed[index] < 0:
        crew.failed[index] = t
    note_stop(crew, index, 2 * t, failed)
    if crew.size > 1 and not alone:
        gk_barrier_wait(&crew.barrier)
    return stops_at(crew, 2 * t)


cdef inline StepEnd end_of_step(Crew* crew, int index, Py_ssize_t t, bint failed,
                                bint alone) noexcept nogil:
    """meet() at the step's last barrier, where thread 0 may decide to go on alone, or alone
    to call the others back (gatekit/core/_team.pxd)."""
    note_stop(crew, index, 2 * t + 1, failed)
    cdef StepEnd end = meet_at_end_of_step(&crew.pace, &crew.barrier, crew.size, crew.failed,
                                           index, t, failed, alone or crew.size == 1,
                                           t == crew.pace.alone_at)
    return STOP if stops_at(crew, 2 * t + 1) else end


# A step has two barriers, tagged 2t (its first) and 2t + 1 (its last). Each thread tags the
# barrier it reaches after a gate failed or a product ran out of memory, and every thread,
# past a barrier, stops only for that barrier's tag: a thread already past it may have tagged
# the next one, where the others must still meet it.

cdef inline void note_stop(Crew* crew, int index, Py_ssize_t tag, bint failed) noexcept nogil:
    if (failed or crew.out_of_memory[index]) and crew.stop_tag[index] < 0:
        crew.stop_tag[index] = tag


cdef inline bint stops_at(Crew* crew, Py_ssize_t tag) noexcept nogil:
    """Whether a thread tagged barrier ``tag``: every thread stops after it."""
    cdef int m
    for m in range(crew.size):
        if crew.stop_tag[m] == tag:
            return True
    return False


cdef void forward_member(Crew* crew, int index, floating* precision) noexcept nogil:
    """Thread ``index``'s part of the forward pass."""
    cdef Py_ssize_t T = crew.T, B = crew.B, D = crew.D, H = crew.H, P = crew.P, KH = crew.KH
    cdef Py_ssize_t S = crew.S, first_input = crew.first_input
    cdef Py_ssize_t t, r, j, b, k, u0, u1, p0, p1, BH = B * H, BP = B * P, kdim = P + D
    cdef const floating* W = <const floating*> crew.W
    cdef const floating* bias = <const floating*> crew.bias
    cdef const floating* W_hr = <const floating*> crew.W_hr
    cdef const floating* x = <const floating*> crew.x
    cdef const floating* stm0 = <const floating*> crew.stm0
    cdef floating* y = <floating*> crew.y
    cdef floating* z = <floating*> crew.z
    cdef floating* zt
    cdef const floating* STM_prev
    cdef floating* STM_t
    cdef bint failed = False, alone = False
    cdef StepEnd end
    cdef int ok = 0
    share(H, crew.size, index, &u0, &u1)
    share(P, crew.size, index, &p0, &p1)
    cdef StepAny s = blank_step(B, H, D, KH, crew.work)
    s.e.u0, s.e.u1 = u0, u1
    if u1 > u0:
        # The input product of every step at once, this thread's columns of each block that
        # reads the event: z = bias + E W[:, P:]^T.
        for r in range(T * B):
            for k in range(KH // H):
                for j in range(k * H + u0, k * H + u1):
                    z[r * KH + j] = bias[j]
        if D > 0:
            for k in range(first_input // H, KH // H):
                ok |= gemm(False, True, T * B, u1 - u0, D, x, D, W + (k * H + u0) * kdim + P,
                           kdim, <floating> 1, z + k * H + u0, KH)
    crew.out_of_memory[index] = ok < 0
    t = 0
    while t < T:
        zt = z + t * B * KH
        STM_prev = stm0 if t == 0 else y + (t - 1) * BP
        STM_t = y + t * BP
        if u1 > u0:
            for k in range(crew.recurrent_end // H):
                ok |= gemm(False, True, B, u1 - u0, P, STM_prev, P, W + (k * H + u0) * kdim,
                           kdim, <floating> 1, zt + k * H + u0, KH)
            point_at_step(&s, t, zt, <floating*> crew.acts, S, <floating*> crew.ltm,
                          <floating*> crew.uv, x, crew.forget_preactivation)
            failed = not run_gates(crew.gates, &s, NULL, floating is float)
            if crew.lengths != NULL and not failed:
                for b in range(B):
                    if t >= crew.lengths[b]:
                        for j in range(b * H + u0, b * H + u1):
                            (<floating*> s.LTM_t)[j] = (<const floating*> s.LTM_prev)[j]
        if ok < 0:
            crew.out_of_memory[index] = True
        if meet(crew, index, t, failed, alone):
            return
        # The projection, this thread's columns: STM_t = (U_t ⊙ V_t) W_hr^T.
        if p1 > p0:
            ok |= gemm(False, True, B, p1 - p0, H, <floating*> crew.uv + (t % S) * BH, H,
                       W_hr + p0 * H, H, <floating> 0, STM_t + p0, P)
            if crew.lengths != NULL:
                for b in range(B):
                    if t >= crew.lengths[b]:
                        for j in range(b * P + p0, b * P + p1):
                            STM_t[j] = STM_prev[j]
        if ok < 0:
            crew.out_of_memory[index] = True
        end = end_of_step(crew, index, t, False, alone)
        if end == STOP:
            return
        if end == GO_ALONE and index > 0:
            t = wait_to_be_called(&crew.pace, t)
            if t < 0:
                return
        elif end == GO_ALONE:
            # From here thread 0 computes every unit and every column, as one thread would.
            alone = True
            u0, u1, p0, p1 = 0, H, 0, P
            s.e.u0, s.e.u1 = u0, u1
        elif end == TEAM_AGAIN:
            alone = False
            share(H, crew.size, index, &u0, &u1)
            share(P, crew.size, index, &p0, &p1)
            s.e.u0, s.e.u1 = u0, u1
        t += 1


cdef void backward_member(Crew* crew, int index, floating* precision) noexcept nogil:
    """Thread ``index``'s part of the backward time loop (the gates' finish and the weight
    gradients follow on the calling thread)."""
    cdef Py_ssize_t T = crew.T, B = crew.B, D = crew.D, H = crew.H, P = crew.P, KH = crew.KH
    cdef Py_ssize_t t, b, j, k, u0, u1, p0, p1, BH = B * H, BP = B * P, kdim = P + D
    cdef const floating* W = <const floating*> crew.W
    cdef const floating* W_hr = <const floating*> crew.W_hr
    cdef const floating* dy = <const floating*> crew.dy
    cdef floating* carry = <floating*> crew.carry
    cdef floating* dltm = <floating*> crew.dltm
    cdef floating* dz = <floating*> crew.dz
    cdef floating* dacts = <floating*> crew.dacts
    cdef floating* dx = <floating*> crew.dx
    cdef floating* dSTM_t = <floating*> crew.scratch          # g_t W_hr: d/d(U_t ⊙ V_t)
    cdef floating* unread = <floating*> crew.scratch + BH     # what a gate adds to dSTM_prev
    cdef floating* zt
    cdef floating* dzt
    cdef floating* g_t
    cdef floating* dLTM_t
    cdef floating* dLTM_prev
    cdef bint failed = False, alone = False
    cdef StepEnd end
    cdef int ok = 0
    share(H, crew.size, index, &u0, &u1)
    share(P, crew.size, index, &p0, &p1)
    cdef StepAny s = blank_step(B, H, D, KH, crew.work)
    s.e.u0, s.e.u1 = u0, u1
    s.dSTM_t, s.dSTM_prev = dSTM_t, unread
    t = T - 1
    while t >= 0:
        zt, dzt = <floating*> crew.z + t * B * KH, dz + t * B * KH
        g_t = <floating*> crew.dprojected + t * BP
        point_at_step(&s, t, zt, <floating*> crew.acts, T, <floating*> crew.ltm,
                      <floating*> crew.uv, <const floating*> crew.x, crew.forget_preactivation)
        s.dz = dzt
        s.ds_t = NULL if crew.forget_preactivation < 0 else dzt + crew.forget_preactivation
        s.dE_t = NULL if dx == NULL else dx + t * B * D
        s.df_t, s.di_t, s.dN_t = dacts + t * BH, dacts + (T + t) * BH, dacts + (2 * T + t) * BH
        s.dU_t, s.dV_t = dacts + (3 * T + t) * BH, dacts + (4 * T + t) * BH
        s.dLTM_t, s.dLTM_prev = dltm + ((t + 1) % 2) * BH, dltm + (t % 2) * BH
        dLTM_t, dLTM_prev = <floating*> s.dLTM_t, <floating*> s.dLTM_prev
        # The gates add into dz, dacts and dSTM_prev: each thread zeroes its units first.
        for b in range(B):
            for k in range(KH // H):
                for j in range(b * KH + k * H + u0, b * KH + k * H + u1):
                    dzt[j] = 0
            for k in range(5):
                for j in range((k * T + t) * BH + b * H + u0, (k * T + t) * BH + b * H + u1):
                    dacts[j] = 0
            for j in range(b * H + u0, b * H + u1):
                unread[j] = 0
            if crew.lengths == NULL or t < crew.lengths[b]:
                for j in range(b * P + p0, b * P + p1):
                    g_t[j] = dy[t * BP + j] + carry[j]
                    carry[j] = 0
                for j in range(b * H + u0, b * H + u1):
                    dLTM_prev[j] = 0
            else:
                # Past its end the step was the identity: the carry stays for the step before,
                # dLTM goes straight to it, and the gates see zero.
                for j in range(b * P + p0, b * P + p1):
                    g_t[j] = 0
                for j in range(b * H + u0, b * H + u1):
                    dLTM_prev[j] = dLTM_t[j]
                    dLTM_t[j] = 0
        if meet(crew, index, t, False, alone):
            return
        if u1 > u0:
            ok |= gemm(False, False, B, u1 - u0, P, <const floating*> g_t, P, W_hr + u0, H,
                       <floating> 0, dSTM_t + u0, H)
            failed = not run_gates(crew.gates, &s, crew.dparams, floating is float,
                                   crew.dparams_stride, True)
        if ok < 0:
            crew.out_of_memory[index] = True
        end = end_of_step(crew, index, t, failed, alone)
        if end == STOP:
            return
        if end == GO_ALONE and index > 0:
            # Called back after step t, before its carry (every thread does its columns).
            t = wait_to_be_called(&crew.pace, t)
            if t < 0:
                return
            dzt = dz + t * B * KH
        elif end == GO_ALONE:
            alone = True
            u0, u1, p0, p1 = 0, H, 0, P
            s.e.u0, s.e.u1 = u0, u1
        elif end == TEAM_AGAIN:
            alone = False
            share(H, crew.size, index, &u0, &u1)
            share(P, crew.size, index, &p0, &p1)
            s.e.u0, s.e.u1 = u0, u1
        if crew.recurrent_end > 0 and p1 > p0:
            ok |= gemm(False, False, B, p1 - p0, crew.recurrent_end, <const floating*> dzt, KH,
                       W + p0, kdim, <floating> 1, carry + p0, P)
            if ok < 0:
                crew.out_of_memory[index] = True
        t -= 1


def backward(tuple gates, floating[:, ::1] W, floating[:, ::1] W_hr, floating[:, :, ::1] x,
             floating[:, ::1] stm0, floating[:, :, ::1] z, floating[:, :, :, ::1] acts,
             floating[:, :, ::1] ltm, floating[:, :, ::1] uv, floating[:, :, ::1] y,
             floating[:, :, ::1] dy, floating[:, ::1] dstm, floating[:, :, ::1] dltm,
             floating[:, :, ::1] dz, floating[:, :, :, ::1] dacts, floating[:, ::1] dW,
             floating[::1] dbias, floating[:, ::1] dW_hr, floating[:, :, ::1] dx,
             size_t[:, ::1] dparams, floating[:, ::1] work, floating[:, :, ::1] dprojected,
             floating[:, :, ::1] scratch, const Py_ssize_t[::1] lengths,
             Py_ssize_t forget_preactivation, tuple reads, int threads=1,
             Py_ssize_t alone_at=-1, Py_ssize_t back_at=-1):
    """Backpropagation through time over a tape the forward pass kept (S = T).

    In: dy (T, B, P); dstm (B, P) the gradient of the final STM, dltm[T % 2] that of the final
    LTM. Out: dstm and dltm[0], the gradients of the initial STM and LTM; dW, dbias, dW_hr, dx
    and the gates' extra parameter gradients (at the addresses ``dparams[g]`` lists for gate
    g), all added into (the caller zeroes them). dz (T, B, KH), dacts (5, T, B, H), work
    (T * B, H), dprojected (T, B, P) (g_t of every step) and scratch (2, B, H): any content.
    Returns -1, the step at which a gate failed (T for a failure in finish), or -2 if a
    product could not allocate its scratch. (``alone_at``, ``back_at`` as in forward, in this
    pass's order of steps, from the last.)"""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t P = stm0.shape[1], H = W_hr.shape[1], KH = W.shape[0]
    cdef Py_ssize_t first_input, recurrent_end
    first_input, recurrent_end = check_reads(reads, KH, H)
    check_shape("W", (W.shape[0], W.shape[1]), (KH, P + D))
    check_shape("W_hr", (W_hr.shape[0], W_hr.shape[1]), (P, H))
    check_shape("stm0", (stm0.shape[0], stm0.shape[1]), (B, P))
    check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (T, B, KH))
    check_shape("acts", (acts.shape[0], acts.shape[1], acts.shape[2], acts.shape[3]),
                (5, T, B, H))
    check_shape("ltm", (ltm.shape[0], ltm.shape[1], ltm.shape[2]), (T + 1, B, H))
    check_shape("uv", (uv.shape[0], uv.shape[1], uv.shape[2]), (T, B, H))
    check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (T, B, P))
    check_shape("dy", (dy.shape[0], dy.shape[1], dy.shape[2]), (T, B, P))
    check_shape("dstm", (dstm.shape[0], dstm.shape[1]), (B, P))
    check_shape("dltm", (dltm.shape[0], dltm.shape[1], dltm.shape[2]), (2, B, H))
    check_shape("dz", (dz.shape[0], dz.shape[1], dz.shape[2]), (T, B, KH))
    check_shape("dacts", (dacts.shape[0], dacts.shape[1], dacts.shape[2], dacts.shape[3]),
                (5, T, B, H))
    check_shape("dW", (dW.shape[0], dW.shape[1]), (KH, P + D))
    check_shape("dbias", (dbias.shape[0],), (KH,))
    check_shape("dW_hr", (dW_hr.shape[0], dW_hr.shape[1]), (P, H))
    check_shape("dx", (dx.shape[0], dx.shape[1], dx.shape[2]), (T, B, D))
    check_shape("dparams", (dparams.shape[0],), (4,))
    check_shape("work", (work.shape[0], work.shape[1]), (T * B, H))
    check_shape("dprojected", (dprojected.shape[0], dprojected.shape[1], dprojected.shape[2]),
                (T, B, P))
    check_shape("scratch", (scratch.shape[0], scratch.shape[1], scratch.shape[2]),
                (2, B, H))
    if lengths is not None:
        check_shape("lengths", (lengths.shape[0],), (B,))
    check_gates(gates)
    if T == 0 or B == 0:
        return -1
    cdef const Py_ssize_t* ends = &lengths[0] if lengths is not None else NULL
    cdef void* gate_list[4]
    cdef int g
    for g in range(4):
        gate_list[g] = <void*> gates[g]
    cdef Crew crew
    set_up_crew(&crew, gate_list, T, B, D, H, P, KH, T, first_input, recurrent_end,
                forget_preactivation, ends, floating is float,
                plan_crew(T, B, D, H, P, KH, threads, gates_share(gates)))
    start_pace(&crew.pace, alone_at, back_at)
    crew.backward = True
    crew.W, crew.W_hr, crew.x = &W[0, 0], &W_hr[0, 0], &x[0, 0, 0] if D > 0 else NULL
    crew.stm0, crew.y, crew.z, crew.acts = &stm0[0, 0], &y[0, 0, 0], &z[0, 0, 0], &acts[0, 0, 0, 0]
    crew.ltm, crew.uv, crew.work = &ltm[0, 0, 0], &uv[0, 0, 0], &work[0, 0]
    crew.dy, crew.carry, crew.dltm, crew.dz = &dy[0, 0, 0], &dstm[0, 0], &dltm[0, 0, 0], &dz[0, 0, 0]
    crew.dacts, crew.dx = &dacts[0, 0, 0, 0], &dx[0, 0, 0] if D > 0 else NULL
    crew.dparams, crew.dparams_stride = &dparams[0, 0], dparams.shape[1]
    crew.dprojected, crew.scratch = &dprojected[0, 0, 0], &scratch[0, 0, 0]
    cdef Py_ssize_t failed
    with nogil:
        failed = run_crew(&crew)
        if failed == -1:
            failed = finish_and_weights(gate_list, &W[0, 0], &x[0, 0, 0] if D > 0 else NULL,
                                        &stm0[0, 0], &z[0, 0, 0], &acts[0, 0, 0, 0],
                                        &ltm[0, 0, 0], &uv[0, 0, 0], &y[0, 0, 0], &dz[0, 0, 0],
                                        &dacts[0, 0, 0, 0], &dW[0, 0], &dbias[0],
                                        &dW_hr[0, 0], &dx[0, 0, 0] if D > 0 else NULL,
                                        &dparams[0, 0], dparams.shape[1], &work[0, 0],
                                        &dprojected[0, 0, 0], T, B, D, H, P, KH, first_input,
                                        recurrent_end, forget_preactivation)
    return failed


cdef Py_ssize_t finish_and_weights(void** gates, const floating* W, const floating* x,
                                   const floating* stm0, floating* z, floating* acts,
                                   floating* ltm, floating* uv, const floating* y,
                                   floating* dz, floating* dacts, floating* dW, floating* dbias,
                                   floating* dW_hr, floating* dx, size_t* dparams,
                                   Py_ssize_t dparams_stride, floating* work,
                                   floating* dprojected, Py_ssize_t T, Py_ssize_t B,
                                   Py_ssize_t D, Py_ssize_t H, Py_ssize_t P, Py_ssize_t KH,
                                   Py_ssize_t first_input, Py_ssize_t recurrent_end,
                                   Py_ssize_t forget_preactivation) noexcept nogil:
    """After the last backward step, on this thread: the gates' finish, then the weight
    gradients, each one product over all T * B rows."""
    cdef Py_ssize_t r, j, BH = B * H, kdim = P + D, TB = T * B
    cdef StepAny s = blank_step(B, H, D, KH, work)
    # The gates' finish, over the whole tape.
    point_at_step(&s, 0, z, acts, T, ltm, uv, x, forget_preactivation)
    s.e.t, s.e.B = -1, TB
    s.STM_prev = s.dSTM_prev = NULL
    s.dz, s.dE_t = dz, dx
    s.ds_t = NULL if forget_preactivation < 0 else dz + forget_preactivation
    s.df_t, s.di_t, s.dN_t = dacts, dacts + T * BH, dacts + 2 * T * BH
    s.dU_t, s.dV_t = dacts + 3 * T * BH, dacts + 4 * T * BH
    s.dSTM_t = NULL
    if not run_gates(gates, &s, dparams, floating is float, dparams_stride, True, True):
        return T
    # The weight gradients, each one product over all T * B rows.
    for r in range(TB):
        for j in range(KH):
            dbias[j] += dz[r * KH + j]
    if gemm(True, False, P, H, TB, <const floating*> dprojected, P, uv, H, <floating> 1, dW_hr,
            H) < 0:
        return OUT_OF_MEMORY
    if recurrent_end > 0:
        if gemm(True, False, recurrent_end, P, B, <const floating*> dz, KH, stm0, P,
                <floating> 1, dW, kdim) < 0:
            return OUT_OF_MEMORY
        if T > 1 and gemm(True, False, recurrent_end, P, TB - B, <const floating*> dz + B * KH,
                          KH, y, P, <floating> 1, dW, kdim) < 0:
            return OUT_OF_MEMORY
    if KH > first_input and D > 0:
        if gemm(True, False, KH - first_input, D, TB, <const floating*> dz + first_input, KH, x,
                D, <floating> 1, dW + first_input * kdim + P, kdim) < 0:
            return OUT_OF_MEMORY
        if gemm(False, False, TB, D, KH - first_input, <const floating*> dz + first_input, KH,
                W + first_input * kdim + P, kdim, <floating> 1, dx, D) < 0:
            return OUT_OF_MEMORY
    return -1


cdef inline StepAny blank_step(Py_ssize_t B, Py_ssize_t H, Py_ssize_t D, Py_ssize_t KH,
                               void* work) noexcept nogil:
    """The step of one thread over all units, without gradients, memories or barrier."""
    cdef StepAny s
    s.e.B, s.e.H, s.e.D, s.e.u0, s.e.u1, s.e.ldz, s.e.t = B, H, D, 0, H, KH, 0
    s.error = 0
    s.barrier = NULL
    s.work = work
    s.STM_prev = NULL
    s.dz = s.ds_t = s.dSTM_t = s.df_t = s.di_t = s.dN_t = s.dU_t = s.dV_t = NULL
    s.dLTM_t = s.dLTM_prev = s.dSTM_prev = s.dE_t = NULL
    s.dparam = NULL
    s.mem_prev = s.mem_t = s.dmem_t = s.dmem_prev = NULL
    # no packed post-gate product here: a gate's post_gate_product runs gemm
    s.product = s.post_product = NULL
    return s


cdef inline void point_at_step(StepAny* s, Py_ssize_t t, floating* z, floating* acts,
                               Py_ssize_t kept, floating* ltm, floating* uv, const floating* x,
                               Py_ssize_t forget_preactivation) noexcept nogil:
    """Point the step's forward fields at step t; the gates' STM_t is U_t ⊙ V_t, in uv."""
    cdef Py_ssize_t BH = s.e.B * s.e.H, k = t % kept
    s.e.t = t
    s.E_t = NULL if x == NULL else x + t * s.e.B * s.e.D
    s.z = z
    s.s_t = NULL if forget_preactivation < 0 else z + forget_preactivation
    s.LTM_prev, s.LTM_t = ltm + (t % (kept + 1)) * BH, ltm + ((t + 1) % (kept + 1)) * BH
    s.f_t, s.i_t, s.N_t = acts + k * BH, acts + (kept + k) * BH, acts + (2 * kept + k) * BH
    s.U_t, s.V_t = acts + (3 * kept + k) * BH, acts + (4 * kept + k) * BH
    s.STM_t = uv + k * BH


cdef inline bint run_gates(void** gates, StepAny* s, size_t* dparams, bint single,
                           Py_ssize_t stride=0, bint backward=False,
                           bint finish=False) noexcept nogil:
    """The four gates of one step, in role order (forward) or in reverse (backward, finish);
    False at the first that fails."""
    cdef int k, g
    for k in range(4):
        g = 3 - k if backward else k
        s.dparam = NULL if dparams == NULL else <void**> (dparams + g * stride)
        if finish:
            if single:
                (<Gate> gates[g]).finish_float(<StepFloat*> s)
            else:
                (<Gate> gates[g]).finish_double(<StepDouble*> s)
        elif backward:
            if single:
                (<Gate> gates[g]).backward_float(<StepFloat*> s)
            else:
                (<Gate> gates[g]).backward_double(<StepDouble*> s)
        elif single:
            (<Gate> gates[g]).forward_float(<StepFloat*> s)
        else:
            (<Gate> gates[g]).forward_double(<StepDouble*> s)
        if s.error != 0:
            return False
    return True


cdef check_gates(tuple gates):
    """One Cython gate per role, none reading STM_{t-1} unit by unit, none with extra
    memories: the loop hands them a step without STM_prev and without memories (a gate
    written in Python reads STM_prev whatever it declares)."""
    cdef Gate gate
    if len(gates) != 4:
        raise ValueError(f"gates must hold one gate per role (4); got {len(gates)}")
    for g, gate in enumerate(gates):
        if gate is None:
            raise TypeError(f"gates[{g}] is None")
        if (isinstance(gate, PythonGate) or type(gate).stm_by_unit or type(gate).stm_is_ltm
                or gate.cell_memories):
            raise ValueError(f"gates[{g}] ({type(gate).name!r}) cannot run with a projected STM")


cdef tuple check_reads(tuple reads, Py_ssize_t KH, Py_ssize_t H):
    if not (len(reads) == 2 and 0 <= reads[0] <= reads[1] <= KH
            and (H == 0 or (reads[0] % H == 0 and reads[1] % H == 0))):
        raise ValueError(f"reads must be (first_input, recurrent_end), whole blocks with "
                         f"0 <= first_input <= recurrent_end <= {KH}; got {reads!r}")
    return reads


cdef check_shape(str name, tuple shape, tuple expected):
    """The loops index their buffers through raw pointers: refuse a buffer of the wrong size."""
    if shape != expected:
        raise ValueError(f"{name} must have shape {expected}; got {shape}")
