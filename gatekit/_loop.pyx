"""The memory cell's time loop: one compiled loop for every composition of gates.

The wrapper in ``gatekit.cell`` has checked shapes, dtypes and contiguity and allocated every
buffer before it calls :func:`forward`; nothing here touches a Python object between the first
and the last step unless a gate is written in Python (it takes the GIL back for itself).
"""
from gatekit._gate cimport Gate, Extent, StepFloat, StepDouble, floating, gemm_nt


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
    int error


def _check_layout():
    if not (sizeof(StepAny) == sizeof(StepFloat) == sizeof(StepDouble)):
        raise ImportError("gatekit._loop: step structs disagree in layout")


_check_layout()


cdef inline bint run_gate(Gate gate, StepAny* s, bint single) noexcept nogil:
    """Let ``gate`` compute its part of the step; False if it failed."""
    if single:
        gate.forward_float(<StepFloat*> s)
    else:
        gate.forward_double(<StepDouble*> s)
    return s.error == 0


def forward(tuple gates, floating[:, ::1] W, floating[::1] bias, floating[:, :, ::1] x,
            floating[:, ::1] stm0, floating[:, ::1] ltm0, floating[:, :, ::1] z,
            floating[:, :, :, ::1] acts, floating[:, :, ::1] ltm, floating[:, :, ::1] y,
            floating[:, ::1] work, Py_ssize_t forget_preactivation):
    """Run the cell over every step of ``x``. Returns -1, or the step at which a gate failed.

    Shapes (checked by the caller): W (K*H, H + D) with the STM columns first, bias (K*H,),
    x (T, B, D), stm0 and ltm0 (B, H), z (T, B, K*H) receives the pre-activations, acts (S, 5,
    B, H) receives f_t, i_t, N_t, U_t, V_t, ltm (S, B, H) receives LTM_t, y (T, B, H) receives
    STM_t, work (B, H); S is T to keep every step or 2 to keep only the last.
    ``forget_preactivation`` is the column of s_t in z, or -1 if the forget gate has none.
    """
    cdef Gate forget = gates[0], learn = gates[1], remember = gates[2], use = gates[3]
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = stm0.shape[1], KH = W.shape[0], S = acts.shape[0]
    cdef Py_ssize_t t, r, j, k, failed = -1
    cdef bint single = floating is float
    cdef StepAny s
    cdef floating* zt
    s.e.B, s.e.H, s.e.u0, s.e.u1, s.e.ldz = B, H, 0, H, KH
    s.error = 0
    s.work = &work[0, 0]
    if T == 0:
        return -1
    with nogil:
        if KH > 0:
            # z[t, b] = W[:, H:] @ x[t, b] + bias for all steps at once: the input projection.
            zt = &z[0, 0, 0]
            for r in range(T * B):
                for j in range(KH):
                    zt[r * KH + j] = bias[j]
            gemm_nt(T * B, KH, D, &x[0, 0, 0], D, &W[0, H], H + D, 1, &z[0, 0, 0], KH)
        for t in range(T):
            k = t % S
            s.e.t = t
            s.STM_prev = &stm0[0, 0] if t == 0 else &y[t - 1, 0, 0]
            s.LTM_prev = &ltm0[0, 0] if t == 0 else &ltm[(t - 1) % S, 0, 0]
            s.f_t, s.i_t, s.N_t = &acts[k, 0, 0, 0], &acts[k, 1, 0, 0], &acts[k, 2, 0, 0]
            s.U_t, s.V_t = &acts[k, 3, 0, 0], &acts[k, 4, 0, 0]
            s.LTM_t, s.STM_t = &ltm[k, 0, 0], &y[t, 0, 0]
            if KH > 0:
                zt = &z[t, 0, 0]
                s.z = zt
                s.s_t = NULL if forget_preactivation < 0 else zt + forget_preactivation
                # z[t] += STM_{t-1} @ W[:, :H].T: every gate's recurrent product at once.
                gemm_nt(B, KH, H, <const floating*> s.STM_prev, H, &W[0, 0], H + D, 1, zt, KH)
            else:
                s.z, s.s_t = NULL, NULL
            if not (run_gate(forget, &s, single) and run_gate(learn, &s, single)
                    and run_gate(remember, &s, single) and run_gate(use, &s, single)):
                failed = t
                break
    return failed
