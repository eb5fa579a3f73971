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

Each step's products are whole matrix products on the calling thread (gatekit's register
tiles, _tiles.h): a projected cell runs on one thread. Backward, with g_t = d/dSTM_t (P wide:
dy_t plus what step t + 1 sent back), the gates see dSTM_t = g_t W_hr (the gradient of
U_t ⊙ V_t), step t - 1 gets g_{t-1} += dz_t W[:, :P] (the rows of the blocks that read the
STM), and after the last step the weight gradients are each one product over all T * B rows:
dW_hr = Σ_t g_t^T (U_t ⊙ V_t), dW[:, :P] = Σ_t dz_t^T STM_{t-1}, dW[:, P:] = Σ_t dz_t^T E_t,
db = Σ_t dz_t, dx_t += dz_t W[:, P:].
"""
from gatekit.core._gate cimport Gate, Extent, StepFloat, StepDouble, floating, gemm

from gatekit.core._gate import PythonGate

__all__ = ["backward", "forward"]


# The gates' step, untyped: StepFloat and StepDouble differ only in the type their data
# pointers point to (as in gatekit.core._loop; _check_layout() asserts the layouts agree).
cdef struct StepAny:
    Extent e
    void* z
    const void* s_t
    const void* STM_prev
    const void* LTM_prev
    const void* E_t
    void* f_t
    void* i_t
    void* N_t
    void* LTM_t
    void* U_t
    void* V_t
    void* STM_t
    void* work
    void* dz
    void* ds_t
    const void* dSTM_t
    void* df_t
    void* di_t
    void* dN_t
    void* dU_t
    void* dV_t
    void* dLTM_t
    void* dLTM_prev
    void* dSTM_prev
    void* dE_t
    void** dparam
    void* barrier
    int error
    const void* mem_prev
    void* mem_t
    void* dmem_t
    void* dmem_prev


def _check_layout():
    if not (sizeof(StepAny) == sizeof(StepFloat) == sizeof(StepDouble)):
        raise ImportError("gatekit.core._projection: step structs disagree in layout")


_check_layout()

cdef enum:
    OUT_OF_MEMORY = -2      # what the loops return when a product could not allocate its panel


def forward(tuple gates, floating[:, ::1] W, floating[::1] bias, floating[:, ::1] W_hr,
            floating[:, :, ::1] x, floating[:, ::1] stm0, floating[:, :, ::1] y,
            floating[:, :, ::1] z, floating[:, :, :, ::1] acts, floating[:, :, ::1] ltm,
            floating[:, :, ::1] uv, floating[:, ::1] work, const Py_ssize_t[::1] lengths,
            Py_ssize_t forget_preactivation, tuple reads):
    """Run the projected cell over every step of ``x``; the caller puts the initial LTM in
    ltm[0]. Sequence b lasts ``lengths[b]`` steps (None: all T): from then on its memories
    stay as they were. Returns -1, the step at which a gate failed, or -2 if a product could
    not allocate its scratch."""
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
    cdef Py_ssize_t failed
    with nogil:
        failed = forward_loop(gate_list, &W[0, 0], &bias[0], &W_hr[0, 0], &x[0, 0, 0],
                              &stm0[0, 0], &y[0, 0, 0], &z[0, 0, 0], &acts[0, 0, 0, 0],
                              &ltm[0, 0, 0], &uv[0, 0, 0], &work[0, 0], ends, T, B, D, H, P,
                              KH, S, first_input, recurrent_end, forget_preactivation)
    return failed


cdef Py_ssize_t forward_loop(void** gates, const floating* W, const floating* bias,
                             const floating* W_hr, const floating* x, const floating* stm0,
                             floating* y, floating* z, floating* acts, floating* ltm,
                             floating* uv, floating* work, const Py_ssize_t* lengths,
                             Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H,
                             Py_ssize_t P, Py_ssize_t KH, Py_ssize_t S, Py_ssize_t first_input,
                             Py_ssize_t recurrent_end,
                             Py_ssize_t forget_preactivation) noexcept nogil:
    cdef Py_ssize_t t, r, j, b, BH = B * H, BP = B * P, kdim = P + D
    cdef floating* zt
    cdef const floating* STM_prev
    cdef floating* STM_t
    cdef StepAny s = blank_step(B, H, D, KH, work)
    # The input product of every step at once: z = bias + E W[:, P:]^T (its own columns).
    for r in range(T * B):
        for j in range(KH):
            z[r * KH + j] = bias[j]
    if KH > first_input and D > 0:
        if gemm(False, True, T * B, KH - first_input, D, x, D, W + first_input * kdim + P, kdim,
                <floating> 1, z + first_input, KH) < 0:
            return OUT_OF_MEMORY
    for t in range(T):
        zt = z + t * B * KH
        STM_prev = stm0 if t == 0 else y + (t - 1) * BP
        STM_t = y + t * BP
        if recurrent_end > 0:
            if gemm(False, True, B, recurrent_end, P, STM_prev, P, W, kdim, <floating> 1, zt,
                    KH) < 0:
                return OUT_OF_MEMORY
        point_at_step(&s, t, zt, acts, S, ltm, uv, x, forget_preactivation)
        if not run_gates(gates, &s, NULL, floating is float):
            return t
        # The projection: STM_t = (U_t ⊙ V_t) W_hr^T.
        if gemm(False, True, B, P, H, <floating*> s.STM_t, H, W_hr, H, <floating> 0, STM_t,
                P) < 0:
            return OUT_OF_MEMORY
        if lengths != NULL:
            for b in range(B):
                if t >= lengths[b]:
                    for j in range(P):
                        STM_t[b * P + j] = STM_prev[b * P + j]
                    for j in range(b * H, (b + 1) * H):
                        (<floating*> s.LTM_t)[j] = (<const floating*> s.LTM_prev)[j]
    return -1


def backward(tuple gates, floating[:, ::1] W, floating[:, ::1] W_hr, floating[:, :, ::1] x,
             floating[:, ::1] stm0, floating[:, :, ::1] z, floating[:, :, :, ::1] acts,
             floating[:, :, ::1] ltm, floating[:, :, ::1] uv, floating[:, :, ::1] y,
             floating[:, :, ::1] dy, floating[:, ::1] dstm, floating[:, :, ::1] dltm,
             floating[:, :, ::1] dz, floating[:, :, :, ::1] dacts, floating[:, ::1] dW,
             floating[::1] dbias, floating[:, ::1] dW_hr, floating[:, :, ::1] dx,
             size_t[:, ::1] dparams, floating[:, ::1] work, floating[:, :, ::1] dprojected,
             floating[:, :, ::1] scratch, const Py_ssize_t[::1] lengths,
             Py_ssize_t forget_preactivation, tuple reads):
    """Backpropagation through time over a tape the forward pass kept (S = T).

    In: dy (T, B, P); dstm (B, P) the gradient of the final STM, dltm[T % 2] that of the final
    LTM. Out: dstm and dltm[0], the gradients of the initial STM and LTM; dW, dbias, dW_hr, dx
    and the gates' extra parameter gradients (at the addresses ``dparams[g]`` lists for gate
    g), all added into (the caller zeroes them). dz (T, B, KH), dacts (5, T, B, H), work
    (T * B, H), dprojected (T, B, P) (g_t of every step) and scratch (2, B, H): any content.
    Returns -1, the step at which a gate failed (T for a failure in finish), or -2 if a
    product could not allocate its scratch."""
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
    cdef Py_ssize_t failed
    with nogil:
        failed = backward_loop(gate_list, &W[0, 0], &W_hr[0, 0],
                               &x[0, 0, 0] if D > 0 else NULL, &stm0[0, 0], &z[0, 0, 0],
                               &acts[0, 0, 0, 0], &ltm[0, 0, 0], &uv[0, 0, 0], &y[0, 0, 0],
                               &dy[0, 0, 0], &dstm[0, 0], &dltm[0, 0, 0], &dz[0, 0, 0],
                               &dacts[0, 0, 0, 0], &dW[0, 0], &dbias[0], &dW_hr[0, 0],
                               &dx[0, 0, 0] if D > 0 else NULL, &dparams[0, 0],
                               dparams.shape[1], &work[0, 0], &dprojected[0, 0, 0],
                               &scratch[0, 0, 0], ends, T, B, D, H, P, KH, first_input,
                               recurrent_end, forget_preactivation)
    return failed


cdef Py_ssize_t backward_loop(void** gates, const floating* W, const floating* W_hr,
                              const floating* x, const floating* stm0, floating* z,
                              floating* acts, floating* ltm, floating* uv, const floating* y,
                              const floating* dy, floating* carry, floating* dltm, floating* dz,
                              floating* dacts, floating* dW, floating* dbias, floating* dW_hr,
                              floating* dx, size_t* dparams, Py_ssize_t dparams_stride,
                              floating* work, floating* dprojected, floating* scratch,
                              const Py_ssize_t* lengths, Py_ssize_t T, Py_ssize_t B,
                              Py_ssize_t D, Py_ssize_t H, Py_ssize_t P, Py_ssize_t KH,
                              Py_ssize_t first_input, Py_ssize_t recurrent_end,
                              Py_ssize_t forget_preactivation) noexcept nogil:
    cdef Py_ssize_t t, b, j, k, r, BH = B * H, BP = B * P, kdim = P + D, TB = T * B
    cdef floating* zt
    cdef floating* dzt
    cdef floating* g_t
    cdef floating* dSTM_t = scratch               # g_t W_hr: d/d(U_t ⊙ V_t)
    cdef floating* unread = scratch + BH          # what a gate adds into dSTM_prev: none may
    cdef floating* dLTM_t
    cdef floating* dLTM_prev
    cdef StepAny s = blank_step(B, H, D, KH, work)
    s.dSTM_t, s.dSTM_prev = dSTM_t, unread
    for t in range(T - 1, -1, -1):
        zt, dzt, g_t = z + t * B * KH, dz + t * B * KH, dprojected + t * BP
        point_at_step(&s, t, zt, acts, T, ltm, uv, x, forget_preactivation)
        s.dz = dzt
        s.ds_t = NULL if forget_preactivation < 0 else dzt + forget_preactivation
        s.dE_t = NULL if dx == NULL else dx + t * B * D
        s.df_t, s.di_t, s.dN_t = dacts + t * BH, dacts + (T + t) * BH, dacts + (2 * T + t) * BH
        s.dU_t, s.dV_t = dacts + (3 * T + t) * BH, dacts + (4 * T + t) * BH
        s.dLTM_t, s.dLTM_prev = dltm + ((t + 1) % 2) * BH, dltm + (t % 2) * BH
        dLTM_t, dLTM_prev = <floating*> s.dLTM_t, <floating*> s.dLTM_prev
        for j in range(B * KH):
            dzt[j] = 0
        for k in range(5):
            for j in range((k * T + t) * BH, (k * T + t + 1) * BH):
                dacts[j] = 0
        for j in range(BH):
            unread[j] = 0
        for b in range(B):
            if lengths == NULL or t < lengths[b]:
                for j in range(b * P, (b + 1) * P):
                    g_t[j] = dy[t * BP + j] + carry[j]
                    carry[j] = 0
                for j in range(b * H, (b + 1) * H):
                    dLTM_prev[j] = 0
            else:
                # Past its end the step was the identity: the carry stays for the step before,
                # dLTM goes straight to it, and the gates see zero.
                for j in range(b * P, (b + 1) * P):
                    g_t[j] = 0
                for j in range(b * H, (b + 1) * H):
                    dLTM_prev[j] = dLTM_t[j]
                    dLTM_t[j] = 0
        if gemm(False, False, B, H, P, <const floating*> g_t, P, W_hr, H, <floating> 0, dSTM_t,
                H) < 0:
            return OUT_OF_MEMORY
        if not run_gates(gates, &s, dparams, floating is float, dparams_stride, True):
            return t
        if recurrent_end > 0:
            if gemm(False, False, B, P, recurrent_end, <const floating*> dzt, KH, W, kdim,
                    <floating> 1, carry, P) < 0:
                return OUT_OF_MEMORY
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
