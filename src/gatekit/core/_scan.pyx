"""The memory cell as a scan over the whole sequence: the path of the compositions in which
nothing but the remember gate carries anything from one step to the next.

When no block reads the STM and no gate reads ``STM_prev`` or ``LTM_prev`` except the remember
gate, whose ``LTM_t = f_t ⊙ LTM_{t-1} + i_t ⊙ N_t`` is ``gatekit.reference.remember``, the
gates' outputs of every step depend on the events only. So instead of a time loop with the
gates in each step, a call runs, over chunks of CHUNK_ROWS rows (steps × sequences) at a time:

- the input product ``z = E W^T + b`` of the chunk's rows, one product;
- the forget and learn gates once, over all the chunk's rows (their kernels are row-wise: the
  step they see has ``e.B`` = the chunk's rows and ``e.t = -1``, ``STM_prev`` and
  ``LTM_prev`` NULL);
- the linear recurrence ``LTM_t = f_t ⊙ LTM_{t-1} + i_t ⊙ N_t``, a sequential pass over the
  chunk's steps with the B × (its units) lanes of a step side by side;
- the use gate once over the chunk's rows (``LTM_t``, ``LTM_prev`` of every row in place).

Backward runs the chunks from the last: the use gate's backward over the chunk's rows (given
``dSTM_t = dy_t``, since nothing reads the STM, plus the final STM's gradient at each
sequence's last step) leaves in ``dLTM_t`` what reaches the LTM through the output, then the
reverse recurrence ``dLTM_{t-1} = f_t ⊙ (dLTM_t + what the use gate sent)`` gives ``df_t``,
``di_t``, ``dN_t``, then the learn and forget gates' backward over the rows gives dz; then the
gates' ``finish`` over the chunk's rows (a sum over rows, as the time loop's over all T × B),
the weight gradients of the chunk's rows and its rows of dx, as products. So the gradients of
a chunk stay in scratch of a chunk's size, where the time loop keeps those of every step.

Threads split the units, each computing every phase on its own units: the gates are row-wise,
and the recurrence is independent per unit, so the forward pass meets no barrier at all. (It
is sequential in T: on a CPU the B × units lanes of a step already fill the vectors, and a
blocked scan over T would pass over the memories twice.) Backward meets three barriers a
chunk: dx and the gates' finish need all units of the chunk's dz, and the next chunk reuses
its scratch. On a busy machine, where a descheduled thread makes the others wait at those
barriers, thread 0 judges at each chunk's last barrier whether the team has become slower
than it would be alone, and if so carries on alone for a while (gatekit/core/_team.pxd);
the forward pass, which never waits for another thread until the end of the call, has
nothing to judge: a thread that loses its CPU delays its own units only, while the others go
on.

The tape is the time loop's (z (T, B, KH), acts (5, T, B, H), ltm (T + 1, B, H), y), so a tape
of either path can be read back by either.
"""
from libc.string cimport memset
from gatekit.core._gate cimport Gate, StepFloat, StepDouble, floating, gemm
from gatekit.core._step cimport StepAny, step_layout
from gatekit.core._team cimport (
    MAX_TEAM, Pace, StepEnd, GO_ALONE, TEAM_AGAIN, end_pace, gk_barrier, gk_barrier_wait,
    gk_start, gk_wait_for_start, join_members, meet_at_end_of_step, pthread_t, start_members,
    start_pace, wait_to_be_called)

from gatekit.core._gate import PythonGate

__all__ = ["backward", "chunk_steps", "forward", "team_size"]


cdef enum:
    # Rows (steps × sequences) of one chunk: its z, gate outputs and memories of one thread's
    # units stay in that thread's cache (1 MiB of L2 here) from the product to the use gate.
    CHUNK_ROWS = 256
    # Units per thread are a multiple of this (whole vectors, whole panels of the products).
    UNIT_STEP = 16
    # Multiply-adds per thread below which one more thread costs more than it saves.
    THREAD_WORK = 4194304


def _check_layout():
    """The offsets of the step's fields in the three structs (see gatekit/core/_step.pxd)."""
    return step_layout("gatekit.core._scan")


_check_layout()


cdef enum Phase:
    FORWARD = 0
    BACKWARD = 1
    FINISH = 2


cdef struct Scan:
    int size                 # threads
    gk_start start           # 1 once every thread exists; -1 if one could not be started
    gk_barrier barrier       # backward: the threads meet after each chunk's gates (see below)
    Py_ssize_t units         # units per thread (the last may have fewer)
    Phase phase
    Pace pace                # backward: whether, and after which chunk, thread 0 is on its own
    bint single
    void* gates[4]           # borrowed Gate objects, in role order
    Py_ssize_t T, B, D, H, KH, chunk, kept, forget_preactivation
    Py_ssize_t failed[MAX_TEAM]      # the first step of the chunk at which a gate failed, or -1
    bint out_of_memory       # a product could not allocate its copy of a panel
    bint finish_failed       # a gate's finish failed (backward)
    const Py_ssize_t* lengths
    const void* W
    const void* bias
    const void* x
    void* y
    void* z
    void* acts
    void* ltm
    void* work
    # backward
    const void* dy
    const void* dstm         # the final STM's gradient
    void* dltm               # in: the final LTM's gradient; out: the initial LTM's
    void* dz                 # (chunk, B, KH): d/dz of a chunk's rows
    void* dacts              # (5, chunk, B, H): d/df_t ... d/dV_t of a chunk's rows
    void* dstm_rows          # (chunk, B, H): dSTM_t of a chunk's rows
    void* dltm_rows          # (chunk, B, H): what the use gate sends to LTM_t
    size_t* dparams
    Py_ssize_t dparams_stride
    void* dW
    void* dbias
    void* dx


def chunk_steps(Py_ssize_t B):
    """The steps of one chunk of a call of B sequences (the kept steps of a call without tape)."""
    return max(1, CHUNK_ROWS // B)


def team_size(tuple gates, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H,
              Py_ssize_t KH, int threads):
    """The threads a call of these sizes runs on, and the units of each: ``(threads, units)``."""
    cdef Py_ssize_t units
    cdef int size = plan(gates, T, B, D, H, KH, threads, &units)
    return size, units


cdef int plan(tuple gates, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H,
              Py_ssize_t KH, int threads, Py_ssize_t* units) except -1:
    cdef Gate gate
    cdef Py_ssize_t size = max(1, min(threads, MAX_TEAM))
    for gate in gates:
        # A Python gate runs on the calling thread; a gate that mixes units would need the
        # others' units of the same rows, which the threads here reach at different times.
        if isinstance(gate, PythonGate) or gate.mixes_units or gate.syncs:
            size = 1
    size = max(1, min(size, (T * B * max(KH, 1) * (D + 2)) // THREAD_WORK))
    units[0] = ((H + size - 1) // size + UNIT_STEP - 1) // UNIT_STEP * UNIT_STEP
    return <int> ((H + units[0] - 1) // units[0])


cdef void set_up(Scan* sc, tuple gates, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H,
                 Py_ssize_t KH, Py_ssize_t kept, Py_ssize_t forget_preactivation, int threads,
                 bint single) except *:
    cdef int g
    if len(gates) != 4:
        raise ValueError(f"gates must hold one gate per role (4); got {len(gates)}")
    for g in range(4):
        if gates[g] is None:
            raise TypeError(f"gates[{g}] is None")
        sc.gates[g] = <void*> gates[g]
    sc.size = plan(gates, T, B, D, H, KH, threads, &sc.units)
    sc.single = single
    sc.T, sc.B, sc.D, sc.H, sc.KH, sc.kept = T, B, D, H, KH, kept
    sc.chunk = min(T, max(1, CHUNK_ROWS // B))      # the steps of a chunk's scratch
    sc.forget_preactivation = forget_preactivation
    sc.dparams, sc.dparams_stride = NULL, 0
    sc.out_of_memory = sc.finish_failed = False
    start_pace(&sc.pace, -1, -1)


cdef check_shape(str name, tuple shape, tuple expected):
    """The kernels index their buffers through raw pointers: refuse a buffer of the wrong size."""
    if shape != expected:
        raise ValueError(f"{name} must have shape {expected}; got {shape}")


# ---------------------------------------------------------------------------------------------
# The team
# ---------------------------------------------------------------------------------------------

cdef struct Member:
    Scan* scan
    int index


cdef Py_ssize_t run_team(Scan* sc) noexcept nogil:
    """Run the phase on ``sc.size`` threads, this one included (on this one alone, with every
    unit, if the system will not start another). Returns -1, or the first step of the chunk
    at which a gate failed."""
    cdef pthread_t threads[MAX_TEAM]
    cdef Member members[MAX_TEAM]
    cdef int m, size = sc.size
    cdef Py_ssize_t failed = -1
    for m in range(sc.size):
        sc.failed[m] = -1
        members[m].scan, members[m].index = sc, m
    if start_members(&sc.start, &sc.barrier, threads, member_main, members, sizeof(Member),
                     size) < size:
        sc.size, sc.units = 1, sc.H
    run_member(sc, 0)
    end_pace(&sc.pace)
    join_members(threads, sc.size)
    for m in range(sc.size):
        if sc.failed[m] >= 0 and (failed < 0 or sc.failed[m] < failed):
            failed = sc.failed[m]
    return failed


cdef void* member_main(void* argument) noexcept nogil:
    cdef Member* member = <Member*> argument
    if gk_wait_for_start(&member.scan.start) > 0:
        run_member(member.scan, member.index)
    return NULL


cdef void run_member(Scan* sc, int index) noexcept nogil:
    if sc.phase == FORWARD:
        if sc.single:
            forward_member(sc, index, <float*> NULL)
        else:
            forward_member(sc, index, <double*> NULL)
    elif sc.single:
        backward_member(sc, index, <float*> NULL)
    else:
        backward_member(sc, index, <double*> NULL)


cdef inline void unit_range(Scan* sc, int index, Py_ssize_t* u0, Py_ssize_t* u1) noexcept nogil:
    u0[0] = min(sc.H, index * sc.units)
    u1[0] = min(sc.H, u0[0] + sc.units)


cdef StepAny chunk_step(Scan* sc, Py_ssize_t t0, Py_ssize_t steps, Py_ssize_t slot,
                        Py_ssize_t u0, Py_ssize_t u1, floating* precision) noexcept nogil:
    """The step the gates see for steps t0 .. t0 + steps - 1 as one: e.B their rows, e.t = -1,
    the outputs of those steps (kept at ``slot`` of acts and ltm), units u0..u1; no STM_prev,
    LTM_prev or gradients (the caller adds what its phase has)."""
    cdef StepAny s
    cdef Py_ssize_t BH = sc.B * sc.H, rows = steps * sc.B, kept = sc.kept
    cdef floating* acts = <floating*> sc.acts
    cdef floating* z = NULL
    memset(&s, 0, sizeof(s))
    s.e.t, s.e.B, s.e.H, s.e.D, s.e.u0, s.e.u1, s.e.ldz = -1, rows, sc.H, sc.D, u0, u1, sc.KH
    if sc.KH > 0:
        z = <floating*> sc.z + slot * sc.B * sc.KH
    s.z = z
    s.s_t = NULL if sc.forget_preactivation < 0 or z == NULL else z + sc.forget_preactivation
    s.E_t = <const floating*> sc.x + t0 * sc.B * sc.D
    s.f_t, s.i_t, s.N_t = acts + slot * BH, acts + (kept + slot) * BH, acts + (2 * kept + slot) * BH
    s.U_t, s.V_t = acts + (3 * kept + slot) * BH, acts + (4 * kept + slot) * BH
    s.LTM_t = <floating*> sc.ltm + (slot + 1) * BH
    s.STM_t = <floating*> sc.y + t0 * BH
    # Scratch of the call's first rows: each chunk's gates are done with it before the next.
    s.work = sc.work
    return s


cdef inline bint run_gate(Scan* sc, int g, Phase phase, StepAny* s) noexcept nogil:
    """Gate g (a Gate, borrowed: the threads hold no references) on the rows of ``s``; False
    if it failed."""
    cdef void* gate = sc.gates[g]
    s.dparam = NULL if phase == FORWARD else <void**> (sc.dparams + g * sc.dparams_stride)
    if phase == FORWARD:
        if sc.single:
            (<Gate> gate).forward_float(<StepFloat*> s)
        else:
            (<Gate> gate).forward_double(<StepDouble*> s)
    elif phase == BACKWARD:
        if sc.single:
            (<Gate> gate).backward_float(<StepFloat*> s)
        else:
            (<Gate> gate).backward_double(<StepDouble*> s)
    else:
        if sc.single:
            (<Gate> gate).finish_float(<StepFloat*> s)
        else:
            (<Gate> gate).finish_double(<StepDouble*> s)
    return s.error == 0


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------

def forward(tuple gates, floating[:, ::1] W, floating[::1] bias, floating[:, :, ::1] x,
            floating[:, :, ::1] y, floating[:, :, ::1] z, floating[:, :, :, ::1] acts,
            floating[:, :, ::1] ltm, floating[:, ::1] work, const Py_ssize_t[::1] lengths,
            Py_ssize_t forget_preactivation, int threads):
    """Run the cell over every step of ``x`` (T, B, D) as a scan. ``z`` (S, B, KH), ``acts``
    (5, S, B, H) and ``ltm`` (S + 1, B, H) keep S = T steps (a tape) or S = chunk_steps(B)
    (scratch; then ltm ends with the last chunk's, at ``(T - 1) % S + 1``); the caller puts
    the initial LTM in ltm[0]. ``work`` has the rows of a chunk, chunk_steps(B) * B (or T * B
    if fewer). ``W`` (KH, H + D): every block reads
    the event only. Sequence b lasts ``lengths[b]`` steps (None: T), after which its memories
    stay as they were. Returns -1, or the first step of the chunk at which a gate failed."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = y.shape[2], KH = W.shape[0], S = acts.shape[1]
    cdef Scan sc
    cdef Py_ssize_t failed
    check_shape("W", (W.shape[0], W.shape[1]), (KH, H + D))
    check_shape("bias", (bias.shape[0],), (KH,))
    check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (T, B, H))
    if S != T and S != min(T, max(1, CHUNK_ROWS // B)):
        raise ValueError(f"acts must keep T = {T} steps or chunk_steps({B}); got {S}")
    check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (S, B, KH))
    check_shape("acts", (acts.shape[0], acts.shape[1], acts.shape[2], acts.shape[3]),
                (5, S, B, H))
    check_shape("ltm", (ltm.shape[0], ltm.shape[1], ltm.shape[2]), (S + 1, B, H))
    check_shape("work", (work.shape[0], work.shape[1]), (min(T, max(1, CHUNK_ROWS // B)) * B, H))
    if lengths is not None:
        check_shape("lengths", (lengths.shape[0],), (B,))
    if T == 0:
        return -1
    set_up(&sc, gates, T, B, D, H, KH, S, forget_preactivation, threads, floating is float)
    sc.phase = FORWARD
    sc.W = &W[0, 0] if KH > 0 else NULL
    sc.bias = &bias[0] if KH > 0 else NULL
    sc.x, sc.y = &x[0, 0, 0], &y[0, 0, 0]
    sc.z = &z[0, 0, 0] if KH > 0 else NULL
    sc.acts, sc.ltm, sc.work = &acts[0, 0, 0, 0], &ltm[0, 0, 0], &work[0, 0]
    sc.lengths = &lengths[0] if lengths is not None else NULL
    with nogil:
        failed = run_team(&sc)
    if sc.out_of_memory:
        raise MemoryError("out of memory in the scan's input product")
    return failed


cdef void forward_member(Scan* sc, int index, floating* precision) noexcept nogil:
    """Thread ``index``'s units of every chunk: the input product, forget and learn gates,
    the recurrence, the use gate, then what the steps past a sequence's end hold."""
    cdef Py_ssize_t T = sc.T, B = sc.B, D = sc.D, H = sc.H, KH = sc.KH, kept = sc.kept
    cdef Py_ssize_t BH = B * H, kdim = H + D, blocks = KH // H if H > 0 else 0
    cdef Py_ssize_t u0, u1, t0, t, steps, rows, slot, k, r, b, j, last = 0
    cdef const floating* W = <const floating*> sc.W
    cdef const floating* bias = <const floating*> sc.bias
    cdef const floating* x = <const floating*> sc.x
    cdef const Py_ssize_t* lengths = sc.lengths
    cdef floating* ltm = <floating*> sc.ltm
    cdef floating* acts = <floating*> sc.acts
    cdef floating* y = <floating*> sc.y
    cdef floating* z
    cdef floating* f
    cdef floating* i
    cdef floating* n
    cdef floating* prev
    cdef floating* now
    cdef StepAny s
    cdef int g
    unit_range(sc, index, &u0, &u1)
    if u0 >= u1:
        return
    for t0 from 0 <= t0 < T by sc.chunk:
        steps = min(sc.chunk, T - t0)
        rows = steps * B
        slot = t0 if kept == T else 0
        if slot == 0 and t0 > 0:
            # Scratch: the last chunk's final LTM becomes this chunk's LTM_{t0-1}.
            for j in range(u0, u1):
                for b in range(B):
                    ltm[b * H + j] = ltm[last * BH + b * H + j]
        s = chunk_step(sc, t0, steps, slot, u0, u1, precision)
        if KH > 0:
            z = <floating*> s.z
            for r in range(rows):
                for k in range(blocks):
                    for j in range(k * H + u0, k * H + u1):
                        z[r * KH + j] = bias[j]
            for k in range(blocks):
                if gemm(False, True, rows, u1 - u0, D, x + t0 * B * D, D,
                        W + (k * H + u0) * kdim + H, kdim, 1, z + k * H + u0, KH) != 0:
                    sc.failed[index], sc.out_of_memory = t0, True
                    return
        for g in range(2):
            if not run_gate(sc, g, FORWARD, &s):
                sc.failed[index] = t0
                return
        for t in range(steps):
            f, i, n = acts + (slot + t) * BH, acts + (kept + slot + t) * BH, acts + (2 * kept + slot + t) * BH
            prev, now = ltm + (slot + t) * BH, ltm + (slot + t + 1) * BH
            for b in range(B):
                if lengths == NULL or t0 + t < lengths[b]:
                    for j in range(b * H + u0, b * H + u1):
                        now[j] = f[j] * prev[j] + i[j] * n[j]
                else:
                    for j in range(b * H + u0, b * H + u1):
                        now[j] = prev[j]
        s.LTM_prev = ltm + slot * BH
        if not run_gate(sc, 3, FORWARD, &s):
            sc.failed[index] = t0
            return
        if lengths != NULL:
            for t in range(max(t0, 1), t0 + steps):
                for b in range(B):
                    if t >= lengths[b]:
                        for j in range(b * H + u0, b * H + u1):
                            y[t * BH + j] = y[(t - 1) * BH + j]
        last = steps


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------

def backward(tuple gates, floating[:, ::1] W, floating[:, :, ::1] x, floating[:, :, ::1] z,
             floating[:, :, :, ::1] acts, floating[:, :, ::1] ltm, floating[:, :, ::1] y,
             floating[:, :, ::1] dy, floating[:, ::1] dstm, floating[:, ::1] dltm,
             floating[:, :, ::1] dz, floating[:, :, :, ::1] dacts, floating[:, :, :, ::1] drows,
             floating[:, ::1] dW, floating[::1] dbias, floating[:, :, ::1] dx,
             size_t[:, ::1] dparams, floating[:, ::1] work, const Py_ssize_t[::1] lengths,
             Py_ssize_t forget_preactivation, int threads, Py_ssize_t alone_at=-1,
             Py_ssize_t back_at=-1):
    """The gradients of a scan (or of a time loop of the same cell) over its tape: z
    (T, B, KH), acts (5, T, B, H), ltm (T + 1, B, H), y (T, B, H).

    In: dy (T, B, H); dstm and dltm (B, H) the gradients of the final STM and LTM. Out: dltm
    the gradient of the initial LTM (the initial STM's is zero: nothing reads it), dW, dbias,
    dx (zeroed by the caller) and the gates' extra parameter gradients at ``dparams[g]``.
    Scratch of one chunk's rows, C = min(T, chunk_steps(B)): dz (C, B, KH), dacts
    (5, C, B, H), drows (2, C, B, H) and work (C * B, H). Returns -1, or the first step of the
    chunk at which a gate failed (T for a failure in finish). (``alone_at``: a step after whose
    chunk thread 0 goes on alone whatever it measures, for the tests; ``back_at``, a step of a
    later chunk, after which it calls the others back whatever the time.)"""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = y.shape[2], KH = W.shape[0], C = min(T, max(1, CHUNK_ROWS // B))
    cdef Py_ssize_t failed
    cdef Scan sc
    check_shape("W", (W.shape[0], W.shape[1]), (KH, H + D))
    check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (T, B, KH))
    check_shape("acts", (acts.shape[0], acts.shape[1], acts.shape[2], acts.shape[3]),
                (5, T, B, H))
    check_shape("ltm", (ltm.shape[0], ltm.shape[1], ltm.shape[2]), (T + 1, B, H))
    check_shape("y", (y.shape[0], y.shape[1], y.shape[2]), (T, B, H))
    check_shape("dy", (dy.shape[0], dy.shape[1], dy.shape[2]), (T, B, H))
    check_shape("dstm", (dstm.shape[0], dstm.shape[1]), (B, H))
    check_shape("dltm", (dltm.shape[0], dltm.shape[1]), (B, H))
    check_shape("dz", (dz.shape[0], dz.shape[1], dz.shape[2]), (C, B, KH))
    check_shape("dacts", (dacts.shape[0], dacts.shape[1], dacts.shape[2], dacts.shape[3]),
                (5, C, B, H))
    check_shape("drows", (drows.shape[0], drows.shape[1], drows.shape[2], drows.shape[3]),
                (2, C, B, H))
    check_shape("dW", (dW.shape[0], dW.shape[1]), (KH, H + D))
    check_shape("dbias", (dbias.shape[0],), (KH,))
    check_shape("dx", (dx.shape[0], dx.shape[1], dx.shape[2]), (T, B, D))
    check_shape("dparams", (dparams.shape[0],), (4,))
    check_shape("work", (work.shape[0], work.shape[1]), (C * B, H))
    if lengths is not None:
        check_shape("lengths", (lengths.shape[0],), (B,))
    if T == 0:
        return -1
    set_up(&sc, gates, T, B, D, H, KH, T, forget_preactivation, threads, floating is float)
    sc.phase = BACKWARD
    sc.pace.alone_at = alone_at
    sc.pace.back_at = -1 if back_at < 0 else back_at - back_at % C    # its chunk's first step
    sc.W = &W[0, 0] if KH > 0 else NULL
    sc.x, sc.y = &x[0, 0, 0], &y[0, 0, 0]
    sc.z = &z[0, 0, 0] if KH > 0 else NULL
    sc.dz = &dz[0, 0, 0] if KH > 0 else NULL
    sc.dW = &dW[0, 0] if KH > 0 else NULL
    sc.dbias = &dbias[0] if KH > 0 else NULL
    sc.acts, sc.ltm, sc.work = &acts[0, 0, 0, 0], &ltm[0, 0, 0], &work[0, 0]
    sc.dy, sc.dstm, sc.dltm = &dy[0, 0, 0], &dstm[0, 0], &dltm[0, 0]
    sc.dacts, sc.dx = &dacts[0, 0, 0, 0], &dx[0, 0, 0]
    sc.dstm_rows, sc.dltm_rows = &drows[0, 0, 0, 0], &drows[1, 0, 0, 0]
    sc.dparams, sc.dparams_stride = &dparams[0, 0], dparams.shape[1]
    sc.lengths = &lengths[0] if lengths is not None else NULL
    with nogil:
        failed = run_team(&sc)
    if sc.out_of_memory:
        raise MemoryError("out of memory in the scan's weight gradients")
    return T if failed < 0 and sc.finish_failed else failed


cdef StepAny backward_step(Scan* sc, Py_ssize_t t0, Py_ssize_t steps, Py_ssize_t u0,
                           Py_ssize_t u1, floating* precision) noexcept nogil:
    """The step of a chunk's rows in backward: the tape's steps t0 .. t0 + steps - 1, the
    gradients in the chunk's scratch."""
    cdef Py_ssize_t CBH = sc.chunk * sc.B * sc.H
    cdef floating* dacts = <floating*> sc.dacts
    cdef StepAny s = chunk_step(sc, t0, steps, t0, u0, u1, precision)
    s.LTM_prev = <floating*> sc.ltm + t0 * sc.B * sc.H
    s.dz = sc.dz
    s.ds_t = NULL if sc.forget_preactivation < 0 or s.dz == NULL else (
        <floating*> s.dz + sc.forget_preactivation)
    s.dE_t = <floating*> sc.dx + t0 * sc.B * sc.D
    s.df_t, s.di_t, s.dN_t = dacts, dacts + CBH, dacts + 2 * CBH
    s.dU_t, s.dV_t = dacts + 3 * CBH, dacts + 4 * CBH
    s.dSTM_t, s.dLTM_t = sc.dstm_rows, sc.dltm_rows
    return s


cdef bint meet(Scan* sc, bint alone) noexcept nogil:
    """Wait for the other threads (unless thread 0 is alone); whether a gate has failed on any."""
    cdef int m
    if sc.size > 1 and not alone:
        gk_barrier_wait(&sc.barrier)
    for m in range(sc.size):
        if sc.failed[m] >= 0:
            return True
    return False


cdef void backward_member(Scan* sc, int index, floating* precision) noexcept nogil:
    """Thread ``index``'s part of every chunk, from the last: on its units, dSTM_t, the use
    gate's backward, the reverse recurrence (df_t, di_t, dN_t), the learn and forget gates'
    backward; then, once every thread has its units of the chunk's dz (a barrier), the gates'
    finish over the chunk's rows on thread 0 (a barrier), the weight gradients of its units'
    rows of W and its share of the chunk's rows of dx (a barrier before the next chunk reuses
    the scratch, where thread 0 may decide to go on alone, doing every thread's part in turn
    while the others wait to be called back). A thread whose gate failed still meets the
    others; they all stop at the chunk's first barrier."""
    cdef Py_ssize_t T = sc.T, B = sc.B, D = sc.D, H = sc.H, KH = sc.KH, BH = B * H
    cdef Py_ssize_t CBH = sc.chunk * BH, kdim = H + D
    cdef Py_ssize_t blocks = KH // H if H > 0 else 0, chunk = sc.chunk
    cdef Py_ssize_t u0, u1, t0, t, steps, rows, k, r, b, j, c, end, length, share, r0, r1
    cdef const Py_ssize_t* lengths = sc.lengths
    cdef const floating* dy = <const floating*> sc.dy
    cdef const floating* dstm = <const floating*> sc.dstm
    cdef const floating* ltm = <const floating*> sc.ltm
    cdef const floating* acts = <const floating*> sc.acts
    cdef const floating* x = <const floating*> sc.x
    cdef const floating* W = <const floating*> sc.W
    cdef floating* carry = <floating*> sc.dltm
    cdef floating* dacts = <floating*> sc.dacts
    cdef floating* dS = <floating*> sc.dstm_rows
    cdef floating* dL = <floating*> sc.dltm_rows
    cdef floating* dz = <floating*> sc.dz
    cdef floating* dW = <floating*> sc.dW
    cdef floating* dbias = <floating*> sc.dbias
    cdef floating* dx = <floating*> sc.dx
    cdef floating* df
    cdef floating* di
    cdef floating* dn
    cdef const floating* f
    cdef const floating* i
    cdef const floating* n
    cdef const floating* prev
    cdef floating* lane
    cdef StepAny s
    cdef int g, m
    cdef bint failed = False, alone = False
    cdef StepEnd after
    end = T
    while end > 0:
        t0 = ((end - 1) // chunk) * chunk
        steps = end - t0
        rows = steps * B
        # Alone, thread 0 takes every thread's units, as each would have: the same bits.
        for m in range(0 if alone else index, sc.size if alone else index + 1):
            unit_range(sc, m, &u0, &u1)
            if u0 < u1 and not failed:
                s = backward_step(sc, t0, steps, u0, u1, precision)
                # The gates add into dz, dacts and dLTM_t: zero the thread's units of the chunk.
                for r in range(rows):
                    for k in range(blocks):
                        for j in range(r * KH + k * H + u0, r * KH + k * H + u1):
                            dz[j] = 0
                    for k in range(5):
                        lane = dacts + k * CBH + r * H
                        for j in range(u0, u1):
                            lane[j] = 0
                    for j in range(r * H + u0, r * H + u1):
                        dL[j] = 0
                # dSTM_t: nothing reads the STM, so only dy_t and, at a sequence's last step, the
                # final STM's gradient; past its end, nothing.
                for t in range(steps):
                    for b in range(B):
                        length = T if lengths == NULL else lengths[b]
                        lane = dS + t * BH + b * H
                        if t0 + t < length:
                            for j in range(u0, u1):
                                lane[j] = dy[(t0 + t) * BH + b * H + j]
                            if t0 + t == length - 1:
                                for j in range(u0, u1):
                                    lane[j] += dstm[b * H + j]
                        else:
                            for j in range(u0, u1):
                                lane[j] = 0
                failed = not run_gate(sc, 3, BACKWARD, &s)
                if not failed:
                    # The remember gate, step by step from the chunk's last: carry is dLTM_t.
                    for t in range(steps - 1, -1, -1):
                        f = acts + (t0 + t) * BH
                        i, n = f + T * BH, f + 2 * T * BH
                        df = dacts + t * BH
                        di, dn = df + CBH, df + 2 * CBH
                        prev = ltm + (t0 + t) * BH
                        for b in range(B):
                            if lengths == NULL or t0 + t < lengths[b]:
                                lane = dL + t * BH
                                for j in range(b * H + u0, b * H + u1):
                                    carry[j] += lane[j]
                                    df[j] += carry[j] * prev[j]
                                    di[j] += carry[j] * n[j]
                                    dn[j] += carry[j] * i[j]
                                    carry[j] = carry[j] * f[j]
                    for g in range(1, -1, -1):
                        if not failed:
                            failed = not run_gate(sc, g, BACKWARD, &s)
            if failed:
                sc.failed[index] = t0
        if meet(sc, alone):
            return
        if index == 0:
            # Each gate's finish over the chunk's rows, all units: the place for a gradient
            # that is one product over many rows (a sum over rows, so chunk by chunk).
            s = backward_step(sc, t0, steps, 0, H, precision)
            for g in range(3, -1, -1):
                if not run_gate(sc, g, FINISH, &s):
                    # Not in sc.failed: the others may still be reading that after the barrier.
                    sc.finish_failed = True
                    break
        if sc.size > 1 and not alone:
            gk_barrier_wait(&sc.barrier)
        if sc.finish_failed:
            return
        for m in range(0 if alone else index, sc.size if alone else index + 1):
            unit_range(sc, m, &u0, &u1)
            if KH > 0:
                # dW[:, H:] += dz^T E and db += Σ dz over the chunk's rows, for this thread's
                # units of every block
                for k in range(blocks):
                    c = k * H + u0
                    if u0 < u1 and gemm(True, False, u1 - u0, D, rows, dz + c, KH,
                                        x + t0 * B * D, D, 1, dW + c * kdim + H, kdim) != 0:
                        sc.out_of_memory = True
                    for r in range(rows):
                        for j in range(c, k * H + u1):
                            dbias[j] += dz[r * KH + j]
                # dx += dz W[:, H:] for this thread's share of the chunk's rows
                share = (rows + sc.size - 1) // sc.size
                r0 = min(rows, m * share)
                r1 = min(rows, r0 + share)
                if r1 > r0 and gemm(False, False, r1 - r0, D, KH, dz + r0 * KH, KH, W + H, kdim,
                                    1, dx + (t0 * B + r0) * D, D) != 0:
                    sc.out_of_memory = True
        # Before the next chunk's gates reuse the scratch; the barrier where thread 0 judges.
        if sc.size > 1:
            after = meet_at_end_of_step(&sc.pace, &sc.barrier, sc.size, sc.failed, index, t0,
                                        False, alone, t0 <= sc.pace.alone_at < end)
            if after == GO_ALONE and index > 0:
                # Called back: this thread resumes after the chunk that starts at t0.
                t0 = wait_to_be_called(&sc.pace, t0)
                if t0 < 0:
                    return
            elif after == GO_ALONE:
                alone = True
            elif after == TEAM_AGAIN:
                alone = False
        end = t0
