"""The floored forget gate, compiled: f_t = φ_f + (1 - φ_f) σ(s), s = W_f [STM_{t-1}, E_t] + b_f,
with a learnable per-unit floor φ_f = σ(q_f).

Written like gatekit's built-in gates (gatekit/core/_builtin.pyx): one fused kernel per direction,
called from the float and double methods, rows [0, B) and units [u0, u1) only.

The gate leaves s in its block of z untouched, and its backward kernel recomputes σ(s) from
there (the forward pass keeps z for every step): that is more accurate than recovering σ(s)
from f_t, which would mean (f_t - φ_f) / (1 - φ_f), a cancellation when f_t is near its floor.
It does not publish s as ``s_t``: f_t is not σ(s_t), so a gate that reads the forget gate's
pre-activation (JANET's learn gate, i_t = 1 - σ(s_t - β)) would silently lose its coupling.
"""
from gatekit.core._gate cimport Gate, Extent, StepFloat, StepDouble, floating, sigmoid

from gatekit_floored_forget import definitions


# --- Kernels ----------------------------------------------------------------------------------

cdef inline void floored_sigmoid_rows(floating* f_t, const floating* z, const floating* q,
                                      Extent* e) noexcept nogil:
    """f_t = φ + (1 - φ) σ(z), φ = σ(q)"""
    # The extent in locals, as in gatekit's kernels: read through `e`, it could change with
    # every store, and the loop would not vectorise.
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1, ldz = e.ldz
    cdef Py_ssize_t b, j
    cdef floating floor
    for b in range(B):
        for j in range(u0, u1):
            floor = sigmoid(q[j])
            f_t[b * H + j] = floor + (1 - floor) * sigmoid(z[b * ldz + j])


cdef inline void floored_sigmoid_backward_rows(floating* dz, floating* dq, const floating* z,
                                               const floating* q, const floating* df_t,
                                               Extent* e) noexcept nogil:
    """f_t = φ + (1 - φ) g, g = σ(z), φ = σ(q):
    dz += df_t ⊙ (1 - φ) g (1 - g),  dq += Σ_b df_t ⊙ (1 - g) · φ (1 - φ)"""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1, ldz = e.ldz
    cdef Py_ssize_t b, j, k
    cdef floating floor, g
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            floor = sigmoid(q[j])
            g = sigmoid(z[b * ldz + j])
            dz[b * ldz + j] += df_t[k] * (1 - floor) * g * (1 - g)
            dq[j] += df_t[k] * (1 - g) * floor * (1 - floor)


# --- Forget ---------------------------------------------------------------------------------------

cdef class ForgetFloored(Gate):
    role, name, blocks = "forget", "floored", ("f",)
    params = {"q_f": ("H",)}
    # φ_f = σ(-2) ≈ 0.12 at the start: a mild floor, which training can raise or lower.
    init = {"q_f": -2.0}
    definition = staticmethod(definitions.forget_floored)
    backward_definition = staticmethod(definitions.forget_floored_backward)
    trace = staticmethod(definitions.forget_floored_trace)
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        floored_sigmoid_rows(s.f_t, s.z + self.offset, <float*> self.param[0], &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        floored_sigmoid_rows(s.f_t, s.z + self.offset, <double*> self.param[0], &s.e)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        floored_sigmoid_backward_rows(s.dz + self.offset, s.dparam[0], s.z + self.offset,
                                      <float*> self.param[0], s.df_t, &s.e)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        floored_sigmoid_backward_rows(s.dz + self.offset, s.dparam[0], s.z + self.offset,
                                      <double*> self.param[0], s.df_t, &s.e)
