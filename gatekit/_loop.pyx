"""The memory cell's time loop, forward and backward: one compiled loop for every composition
of gates.

The wrapper in ``gatekit.cell`` has checked shapes, dtypes and contiguity and allocated every
buffer before it calls in here; nothing here touches a Python object between the first and the
last step unless a gate is written in Python (it takes the GIL back for itself).

Buffers, for T steps of B sequences, D inputs, H units and K blocks (KH = K * H columns):
W (KH, H + D) with the STM columns first, bias (KH,), x (T, B, D), z (T, B, KH) the
pre-activations; acts (5, S, B, H) holds f_t, i_t, N_t, U_t, V_t of step t at [:, t % S];
ltm (S + 1, B, H) holds LTM_{t-1} at [t % (S + 1)] and LTM_t at [(t + 1) % (S + 1)], with
ltm[0] = the initial LTM; y (T, B, H) receives STM_t. S is T when the forward pass keeps a tape
for backward, 1 otherwise. ``forward`` takes z, acts, ltm and its scratch in one workspace
(``workspace_layout`` says where); ``backward`` takes them as the arrays of the tape.
"""
from gatekit._gate cimport Gate, Extent, StepFloat, StepDouble, floating, gemm


# StepFloat and StepDouble differ only in the type their data pointers point to. The loop is
# written once over `floating`, so it fills this untyped twin and hands the gates a pointer to
# it as the struct of its own precision; _check_layout() asserts the three layouts agree.
cdef struct StepAny:
    Extent e
    void* z
    const void* s_t
    const void* STM_prev
    const void* LTM_prev
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
    void** dparam
    int error


def _check_layout():
    if not (sizeof(StepAny) == sizeof(StepFloat) == sizeof(StepDouble)):
        raise ImportError("gatekit._loop: step structs disagree in layout")


_check_layout()

DEF FORWARD = 0
DEF BACKWARD = 1
DEF FINISH = 2


cdef inline bint run_gate(Gate gate, int phase, StepAny* s, bint single,
                          size_t* dparam) noexcept nogil:
    """Let ``gate`` do its part of a step (its parameter gradients at ``dparam``); False if it
    failed."""
    s.dparam = <void**> dparam
    if phase == FORWARD:
        if single:
            gate.forward_float(<StepFloat*> s)
        else:
            gate.forward_double(<StepDouble*> s)
    elif phase == BACKWARD:
        if single:
            gate.backward_float(<StepFloat*> s)
        else:
            gate.backward_double(<StepDouble*> s)
    else:
        if single:
            gate.finish_float(<StepFloat*> s)
        else:
            gate.finish_double(<StepDouble*> s)
    return s.error == 0


# At a few sequences per batch, the recurrent product of a step is a matrix-vector product per
# sequence, too small for BLAS: OpenBLAS would wake its threads for every call and wait for
# them (and the sum of a few hundred products costs less than the call). Written as sums of
# rows of W[:, :H].T, it vectorises without reordering any addition; for a handful of steps
# that transposed copy is not worth making, and plain dot products do.
DEF FEW_SEQUENCES = 4
DEF FEW_STEPS = 8


cdef inline void add_row_combination(floating* out, Py_ssize_t n, const floating* rows,
                                     Py_ssize_t ldr, const floating* coefficients,
                                     Py_ssize_t k) noexcept nogil:
    """out[:n] += Σ_i coefficients[i] * rows[i, :n], row i starting at rows + i * ldr."""
    cdef Py_ssize_t i, j
    cdef floating c
    cdef const floating* row
    for i in range(k):
        c = coefficients[i]
        row = rows + i * ldr
        for j in range(n):
            out[j] += c * row[j]


cdef inline void add_products(floating* out, Py_ssize_t ldo, const floating* a, Py_ssize_t lda,
                              const floating* rows, Py_ssize_t ldr, Py_ssize_t m, Py_ssize_t n,
                              Py_ssize_t k) noexcept nogil:
    """out[i, j] += Σ_l a[i, l] * rows[j, l] for i < m, j < n: a matrix product too small to be
    worth a BLAS call (or the transposed copy that add_row_combination wants). Each dot product
    runs in 8 interleaved partial sums, which the compiler turns into one vector."""
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


cdef inline int point_at_step(StepAny* s, Py_ssize_t t, floating* z, floating* acts,
                              Py_ssize_t kept, floating* ltm, floating[:, :, ::1] y,
                              floating[:, ::1] stm0, Py_ssize_t forget_preactivation) except -1 nogil:
    """Point the step's forward fields at step t of the buffers (see the module docstring):
    acts holds 5 slots of ``kept`` steps, ltm ``kept + 1`` memories, each B * H.
    (``except -1``: in a bounds-checked build an index error on y reaches the caller.)"""
    cdef Py_ssize_t BH = s.e.B * s.e.H, k = t % kept
    s.e.t = t
    s.z = z
    s.s_t = NULL if forget_preactivation < 0 or z == NULL else z + forget_preactivation
    s.STM_prev = &stm0[0, 0] if t == 0 else &y[t - 1, 0, 0]
    s.LTM_prev, s.LTM_t = ltm + (t % (kept + 1)) * BH, ltm + ((t + 1) % (kept + 1)) * BH
    s.f_t, s.i_t, s.N_t = acts + k * BH, acts + (kept + k) * BH, acts + (2 * kept + k) * BH
    s.U_t, s.V_t = acts + (3 * kept + k) * BH, acts + (4 * kept + k) * BH
    s.STM_t = &y[t, 0, 0]
    return 0


cdef struct Layout:
    Py_ssize_t kept                      # steps whose gate outputs are kept: T, or 1
    Py_ssize_t z, acts, ltm, work, recurrent_t, size    # offsets in the workspace, its size


cdef Layout layout(Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t KH, bint keep) noexcept nogil:
    cdef Layout L
    L.kept = T if keep else 1
    L.z = 0
    L.acts = L.z + T * B * KH
    L.ltm = L.acts + 5 * L.kept * B * H
    L.work = L.ltm + (L.kept + 1) * B * H
    L.recurrent_t = L.work + B * H
    L.size = L.recurrent_t + (H * KH if B <= FEW_SEQUENCES and T >= FEW_STEPS else 0)
    return L


def workspace_layout(Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t KH, bint keep):
    """The size of the workspace :func:`forward` wants, and where in it the buffers a caller
    reads afterwards lie: ``{"z": (offset, shape), "acts": ..., "ltm": ...}``."""
    cdef Layout L = layout(T, B, H, KH, keep)
    return L.size, {"z": (L.z, (T, B, KH)), "acts": (L.acts, (5, L.kept, B, H)),
                    "ltm": (L.ltm, (L.kept + 1, B, H))}


def forward(tuple gates, floating[:, ::1] W, floating[::1] bias, floating[:, :, ::1] x,
            floating[:, ::1] stm0, floating[:, :, ::1] y, floating[::1] workspace, bint keep,
            const Py_ssize_t[::1] lengths, Py_ssize_t forget_preactivation):
    """Run the cell over every step of ``x``. Returns -1, or the step at which a gate failed.

    ``workspace`` holds, as :func:`workspace_layout` lays them out, z (T, B, KH) the
    pre-activations, acts and ltm (all steps when ``keep``, else the last), scratch rows, and
    W[:, :H].T when B <= FEW_SEQUENCES and T >= FEW_STEPS; the caller puts the initial LTM in
    ltm[0]. (One buffer, not five: each typed buffer an argument costs the call a fraction of a
    microsecond to acquire.) Sequence b lasts ``lengths[b]`` steps (T if ``lengths`` is None):
    from then on its memories stay as they were (its rows of y repeat its last STM; the caller
    blanks them). ``forget_preactivation`` is the column of s_t in z, or -1 if the forget gate
    has none."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = stm0.shape[1], KH = W.shape[0]
    cdef Py_ssize_t t, r, j, b, failed = -1
    cdef bint single = floating is float
    cdef StepAny s
    cdef Layout L = layout(T, B, H, KH, keep)
    if workspace.shape[0] < L.size:
        raise ValueError(f"workspace holds {workspace.shape[0]} numbers; this call needs {L.size}")
    cdef floating* base = &workspace[0]
    cdef floating* z = base + L.z
    cdef floating* acts = base + L.acts
    cdef floating* ltm = base + L.ltm
    cdef floating* recurrent_t = base + L.recurrent_t
    cdef floating* zt = NULL
    s.e.B, s.e.H, s.e.u0, s.e.u1, s.e.ldz = B, H, 0, H, KH
    s.error = 0
    s.work = base + L.work
    s.dz = s.ds_t = s.dSTM_t = s.df_t = s.di_t = s.dN_t = s.dU_t = s.dV_t = NULL
    s.dLTM_t = s.dLTM_prev = NULL
    cdef Gate forget = gates[0], learn = gates[1], remember = gates[2], use = gates[3]
    cdef bint few = B <= FEW_SEQUENCES, packed = few and T >= FEW_STEPS
    cdef bint ragged = lengths is not None
    with nogil:
        if KH > 0 and T > 0:
            # z[t, b] = W[:, H:] @ x[t, b] + bias for all steps at once: the input projection.
            zt = z
            for r in range(T * B):
                for j in range(KH):
                    zt[r * KH + j] = bias[j]
            if T * B <= FEW_STEPS:
                add_products(zt, KH, &x[0, 0, 0], D, &W[0, H], H + D, T * B, KH, D)
            else:
                gemm(False, True, T * B, KH, D, &x[0, 0, 0], D, &W[0, H], H + D, 1, zt, KH)
        if KH > 0 and packed:
            for r in range(KH):
                for j in range(H):
                    recurrent_t[j * KH + r] = W[r, j]
        for t in range(T):
            if KH > 0:
                zt = z + t * B * KH
            point_at_step(&s, t, zt, acts, L.kept, ltm, y, stm0, forget_preactivation)
            if KH > 0:
                # z[t] += STM_{t-1} @ W[:, :H].T: the recurrent product of every gate at once.
                if packed:
                    for b in range(B):
                        add_row_combination(zt + b * KH, KH, recurrent_t, KH,
                                            <const floating*> s.STM_prev + b * H, H)
                elif few:
                    add_products(zt, KH, <const floating*> s.STM_prev, H, &W[0, 0], H + D, B, KH, H)
                else:
                    gemm(False, True, B, KH, H, <const floating*> s.STM_prev, H, &W[0, 0], H + D,
                         1, zt, KH)
            if not (run_gate(forget, FORWARD, &s, single, NULL)
                    and run_gate(learn, FORWARD, &s, single, NULL)
                    and run_gate(remember, FORWARD, &s, single, NULL)
                    and run_gate(use, FORWARD, &s, single, NULL)):
                failed = t
                break
            # Sequences that have ended keep their memories.
            for b in range(B if ragged else 0):
                if t >= lengths[b]:
                    for j in range(H):
                        (<floating*> s.STM_t)[b * H + j] = (<const floating*> s.STM_prev)[b * H + j]
                        (<floating*> s.LTM_t)[b * H + j] = (<const floating*> s.LTM_prev)[b * H + j]
    return failed


def backward(tuple gates, floating[:, ::1] W, floating[:, :, ::1] x, floating[:, ::1] stm0,
             floating[:, :, ::1] z, floating[:, :, :, ::1] acts, floating[:, :, ::1] ltm,
             floating[:, :, ::1] y, floating[:, :, ::1] dy, floating[:, :, ::1] dstm,
             floating[:, :, ::1] dltm, floating[:, :, ::1] dz, floating[:, :, :, ::1] dacts,
             floating[:, ::1] dW, floating[::1] dbias, floating[:, :, ::1] dx,
             size_t[:, ::1] dparams, floating[:, ::1] work, const Py_ssize_t[::1] lengths,
             Py_ssize_t forget_preactivation):
    """Backpropagation through time over a tape the forward pass kept (S = T).

    In: dy (T, B, H); dstm[0] = dL/dSTM_T; dltm[T % 2] = dL/dLTM_T. Out: dstm[0] = dL/dSTM_0,
    dltm[0] = dL/dLTM_0, dz (T, B, KH) and dacts (5, T, B, H) (zeroed by the caller), dW, dbias,
    dx (zeroed by the caller) and the gates' extra parameter gradients, whose addresses
    ``dparams[g]`` lists for gate g (zeroed by the caller). work holds T * B rows.
    Steps after a sequence's length (``lengths`` may be None: all T) pass its gradients through
    untouched and ignore its dy.
    Returns -1, or the step at which a gate failed (T for a failure in finish).
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = stm0.shape[1], KH = W.shape[0]
    cdef Py_ssize_t t, r, j, b, k, failed = -1
    cdef floating* dLTM_t
    cdef floating* dLTM_prev
    cdef bint ragged = lengths is not None
    cdef bint single = floating is float
    cdef StepAny s
    cdef floating* zt = NULL
    cdef floating* dzt = NULL
    cdef floating* dyt
    cdef floating* carry = &dstm[0, 0, 0]          # dL/dSTM_t sent back from step t + 1
    cdef floating* dSTM_t = &dstm[1, 0, 0]
    cdef Gate forget = gates[0], learn = gates[1], remember = gates[2], use = gates[3]
    s.e.B, s.e.H, s.e.u0, s.e.u1, s.e.ldz = B, H, 0, H, KH
    s.error = 0
    s.work = &work[0, 0]
    s.dSTM_t = dSTM_t
    with nogil:
        for t in range(T - 1, -1, -1):
            if KH > 0:
                zt, dzt = &z[t, 0, 0], &dz[t, 0, 0]
            point_at_step(&s, t, zt, &acts[0, 0, 0, 0], acts.shape[1], &ltm[0, 0, 0], y, stm0,
                          forget_preactivation)
            s.dz = dzt
            s.ds_t = NULL if forget_preactivation < 0 or dzt == NULL else dzt + forget_preactivation
            s.df_t, s.di_t, s.dN_t = &dacts[0, t, 0, 0], &dacts[1, t, 0, 0], &dacts[2, t, 0, 0]
            s.dU_t, s.dV_t = &dacts[3, t, 0, 0], &dacts[4, t, 0, 0]
            s.dLTM_t, s.dLTM_prev = &dltm[(t + 1) % 2, 0, 0], &dltm[t % 2, 0, 0]
            dyt, dLTM_t, dLTM_prev = &dy[t, 0, 0], <floating*> s.dLTM_t, <floating*> s.dLTM_prev
            for b in range(B):
                if not ragged or t < lengths[b]:
                    for j in range(H):
                        k = b * H + j
                        dSTM_t[k] = dyt[k] + carry[k]
                        carry[k] = 0
                        dLTM_prev[k] = 0
                else:
                    # Past its end, a sequence's gradients skip the step: carry stays as it is,
                    # dLTM goes straight to the step before, and its gates see zero.
                    for j in range(H):
                        k = b * H + j
                        dSTM_t[k] = 0
                        dLTM_prev[k] = dLTM_t[k]
                        dLTM_t[k] = 0
            if not (run_gate(use, BACKWARD, &s, single, &dparams[3, 0])
                    and run_gate(remember, BACKWARD, &s, single, &dparams[2, 0])
                    and run_gate(learn, BACKWARD, &s, single, &dparams[1, 0])
                    and run_gate(forget, BACKWARD, &s, single, &dparams[0, 0])):
                failed = t
                break
            # dL/dSTM_{t-1} = dz[t] @ W[:, :H] (+ the carry of finished sequences, whose dz is 0)
            if KH > 0 and B <= FEW_SEQUENCES:
                for b in range(B):
                    add_row_combination(carry + b * H, H, &W[0, 0], H + D, dzt + b * KH, KH)
            elif KH > 0:
                gemm(False, False, B, H, KH, dzt, KH, &W[0, 0], H + D, 1, carry, H)
        if failed < 0 and T > 0:
            point_at_sequence(&s, z, acts, ltm, y, stm0, dz, dacts, forget_preactivation)
            if not (run_gate(use, FINISH, &s, single, &dparams[3, 0])
                    and run_gate(remember, FINISH, &s, single, &dparams[2, 0])
                    and run_gate(learn, FINISH, &s, single, &dparams[1, 0])
                    and run_gate(forget, FINISH, &s, single, &dparams[0, 0])):
                failed = T
        if failed < 0 and KH > 0 and T > 0:
            # The weight gradients, each one product over all T * B rows.
            # dW[:, :H] = Σ_t dz[t].T @ STM_{t-1}
            gemm(True, False, KH, H, B, &dz[0, 0, 0], KH, &stm0[0, 0], H, 1, &dW[0, 0], H + D)
            if T > 1:
                gemm(True, False, KH, H, (T - 1) * B, &dz[1, 0, 0], KH, &y[0, 0, 0], H, 1,
                     &dW[0, 0], H + D)
            # dW[:, H:] = Σ_t dz[t].T @ x[t];  dx = dz @ W[:, H:];  dbias = Σ dz
            gemm(True, False, KH, D, T * B, &dz[0, 0, 0], KH, &x[0, 0, 0], D, 1, &dW[0, H], H + D)
            gemm(False, False, T * B, D, KH, &dz[0, 0, 0], KH, &W[0, H], H + D, 0, &dx[0, 0, 0], D)
            dzt = &dz[0, 0, 0]
            for r in range(T * B):
                for j in range(KH):
                    dbias[j] += dzt[r * KH + j]
    return failed


cdef int point_at_sequence(StepAny* s, floating[:, :, ::1] z, floating[:, :, :, ::1] acts,
                           floating[:, :, ::1] ltm, floating[:, :, ::1] y, floating[:, ::1] stm0,
                           floating[:, :, ::1] dz, floating[:, :, :, ::1] dacts,
                           Py_ssize_t forget_preactivation) except -1 nogil:
    """Point the step at all T * B rows of the tape at once, for the gates' finish."""
    cdef bint has_blocks = z.shape[2] > 0
    point_at_step(s, 0, &z[0, 0, 0] if has_blocks else NULL, &acts[0, 0, 0, 0], acts.shape[1],
                  &ltm[0, 0, 0], y, stm0,
                  forget_preactivation)
    s.e.t, s.e.B = -1, y.shape[0] * y.shape[1]
    s.STM_prev = NULL
    s.dz = &dz[0, 0, 0] if has_blocks else NULL
    s.ds_t = NULL if forget_preactivation < 0 or not has_blocks else (
        <floating*> s.dz + forget_preactivation)
    s.dSTM_t = s.dLTM_t = s.dLTM_prev = NULL
    s.df_t, s.di_t, s.dN_t = &dacts[0, 0, 0, 0], &dacts[1, 0, 0, 0], &dacts[2, 0, 0, 0]
    s.dU_t, s.dV_t = &dacts[3, 0, 0, 0], &dacts[4, 0, 0, 0]
    return 0
