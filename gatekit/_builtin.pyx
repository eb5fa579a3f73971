"""The built-in gates, compiled. ``gatekit.default_plugins.builtin`` registers them through the
same hook a third-party plugin uses; each names its NumPy definition in ``gatekit.reference``,
which the tests hold it to.

The kernels work row by row on units [u0, u1), in plain loops over contiguous memory that the
compiler can vectorise. A gate's two methods (float, double) call the same fused kernel.
"""
from gatekit._gate cimport (Gate, Extent, StepFloat, StepDouble, floating, sigmoid, tanh_,
                            gemm_nt)
from gatekit import reference

cdef double JANET_BETA = reference.JANET_BETA


# --- Kernels ----------------------------------------------------------------------------------

cdef inline void sigmoid_rows(floating* out, floating* z, const floating* peephole,
                              const floating* memory, Extent* e) noexcept nogil:
    """out = σ(z + peephole ⊙ memory); the sum is left in z, the gate's full pre-activation.
    `peephole` may be NULL (no peephole)."""
    cdef Py_ssize_t b, j
    cdef floating* zb
    for b in range(e.B):
        zb = z + b * e.ldz
        if peephole != NULL:
            for j in range(e.u0, e.u1):
                zb[j] += peephole[j] * memory[b * e.H + j]
        for j in range(e.u0, e.u1):
            out[b * e.H + j] = sigmoid(zb[j])


cdef inline void tanh_rows(floating* out, const floating* z, Py_ssize_t ldz,
                           Extent* e) noexcept nogil:
    cdef Py_ssize_t b, j
    for b in range(e.B):
        for j in range(e.u0, e.u1):
            out[b * e.H + j] = tanh_(z[b * ldz + j])


cdef inline void copy_rows(floating* out, const floating* a, Py_ssize_t lda,
                           Extent* e) noexcept nogil:
    cdef Py_ssize_t b, j
    for b in range(e.B):
        for j in range(e.u0, e.u1):
            out[b * e.H + j] = a[b * lda + j]


cdef inline void fill_rows(floating* out, floating value, Extent* e) noexcept nogil:
    cdef Py_ssize_t b, j
    for b in range(e.B):
        for j in range(e.u0, e.u1):
            out[b * e.H + j] = value


cdef inline void one_minus_rows(floating* out, const floating* a, Extent* e) noexcept nogil:
    cdef Py_ssize_t b, j
    for b in range(e.B):
        for j in range(e.u0, e.u1):
            out[b * e.H + j] = 1 - a[b * e.H + j]


cdef inline void janet_ignore_rows(floating* i_t, const floating* s_t, Extent* e) noexcept nogil:
    """i_t = 1 - σ(s_t - β)"""
    cdef Py_ssize_t b, j
    cdef floating beta = <floating> JANET_BETA
    for b in range(e.B):
        for j in range(e.u0, e.u1):
            i_t[b * e.H + j] = 1 - sigmoid(s_t[b * e.ldz + j] - beta)


cdef inline void product_rows(floating* out, const floating* a, const floating* c,
                              Extent* e) noexcept nogil:
    cdef Py_ssize_t b, j
    for b in range(e.B):
        for j in range(e.u0, e.u1):
            out[b * e.H + j] = a[b * e.H + j] * c[b * e.H + j]


cdef inline void remember_rows(floating* LTM_t, const floating* LTM_prev, const floating* f_t,
                               const floating* N_t, const floating* i_t, Extent* e) noexcept nogil:
    """LTM_t = LTM_{t-1} ⊙ f_t + N_t ⊙ i_t"""
    cdef Py_ssize_t b, j, k
    for b in range(e.B):
        for j in range(e.u0, e.u1):
            k = b * e.H + j
            LTM_t[k] = LTM_prev[k] * f_t[k] + N_t[k] * i_t[k]


cdef inline void course_use(floating* U_t, floating* V_t, floating* STM_t, floating* z_v,
                            const floating* LTM_prev, const floating* f_t,
                            const floating* W_u, const floating* b_u, floating* work,
                            Extent* e) noexcept nogil:
    """U_t = tanh(W_u (LTM_{t-1} ⊙ f_t) + b_u), V_t = σ(z_v), STM_t = U_t ⊙ V_t; all units."""
    cdef Py_ssize_t b, j, H = e.H
    product_rows(work, LTM_prev, f_t, e)
    for b in range(e.B):
        for j in range(H):
            U_t[b * H + j] = b_u[j]
    # U_t += work @ W_u.T
    gemm_nt(e.B, H, H, work, H, W_u, H, 1, U_t, H)
    tanh_rows(U_t, U_t, H, e)
    sigmoid_rows(V_t, z_v, <const floating*> NULL, <const floating*> NULL, e)
    product_rows(STM_t, U_t, V_t, e)


cdef inline void gated_output(floating* U_t, floating* V_t, floating* STM_t, floating* z_v,
                              const floating* LTM_t, const floating* p_v, bint squash,
                              Extent* e) noexcept nogil:
    """U_t = tanh(LTM_t) (or LTM_t), V_t = σ(z_v + p_v ⊙ LTM_t), STM_t = U_t ⊙ V_t"""
    if squash:
        tanh_rows(U_t, LTM_t, e.H, e)
    else:
        copy_rows(U_t, LTM_t, e.H, e)
    sigmoid_rows(V_t, z_v, p_v, LTM_t, e)
    product_rows(STM_t, U_t, V_t, e)


# --- Forget -----------------------------------------------------------------------------------

cdef class ForgetStandard(Gate):
    role, name, blocks = "forget", "standard", ("f",)
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        sigmoid_rows(s.f_t, s.z + self.offset, <float*> NULL, s.LTM_prev, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        sigmoid_rows(s.f_t, s.z + self.offset, <double*> NULL, s.LTM_prev, &s.e)


cdef class ForgetPeephole(Gate):
    role, name, blocks = "forget", "peephole", ("f",)
    params = {"p_f": ("H",)}
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget_peephole)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        sigmoid_rows(s.f_t, s.z + self.offset, <float*> self.param[0], s.LTM_prev, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        sigmoid_rows(s.f_t, s.z + self.offset, <double*> self.param[0], s.LTM_prev, &s.e)


cdef class ForgetNone(Gate):
    role, name = "forget", "none"
    definition = staticmethod(reference.forget_none)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        fill_rows(s.f_t, 1, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        fill_rows(s.f_t, 1, &s.e)


# --- Learn (blocks: n combines, i ignores) ----------------------------------------------------

cdef class LearnStandard(Gate):
    role, name, blocks = "learn", "standard", ("n", "i")
    definition = staticmethod(reference.learn)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <float*> NULL, s.LTM_prev, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <double*> NULL, s.LTM_prev, &s.e)


cdef class LearnPeephole(Gate):
    role, name, blocks = "learn", "peephole", ("n", "i")
    params = {"p_i": ("H",)}
    definition = staticmethod(reference.learn_peephole)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <float*> self.param[0], s.LTM_prev, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <double*> self.param[0], s.LTM_prev, &s.e)


cdef class LearnNoIgnore(Gate):
    role, name, blocks = "learn", "no_ignore", ("n",)
    definition = staticmethod(reference.learn_no_ignore)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        fill_rows(s.i_t, 1, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        fill_rows(s.i_t, 1, &s.e)


cdef class LearnLinear(Gate):
    role, name, blocks = "learn", "linear", ("n", "i")
    definition = staticmethod(reference.learn_linear)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        copy_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <float*> NULL, s.LTM_prev, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        copy_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <double*> NULL, s.LTM_prev, &s.e)


cdef class LearnLinearPeephole(Gate):
    role, name, blocks = "learn", "linear_peephole", ("n", "i")
    params = {"p_i": ("H",)}
    definition = staticmethod(reference.learn_linear_peephole)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        copy_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <float*> self.param[0], s.LTM_prev, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        copy_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.i_t, s.z + self.offset + s.e.H, <double*> self.param[0], s.LTM_prev, &s.e)


cdef class LearnCoupled(Gate):
    role, name, blocks = "learn", "coupled", ("n",)
    definition = staticmethod(reference.learn_coupled)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        one_minus_rows(s.i_t, s.f_t, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        one_minus_rows(s.i_t, s.f_t, &s.e)


cdef class LearnJanet(Gate):
    role, name, blocks = "learn", "janet", ("n",)
    definition = staticmethod(reference.learn_janet)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        janet_ignore_rows(s.i_t, s.s_t, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        tanh_rows(s.N_t, s.z + self.offset, s.e.ldz, &s.e)
        janet_ignore_rows(s.i_t, s.s_t, &s.e)


# --- Remember ---------------------------------------------------------------------------------

cdef class RememberStandard(Gate):
    role, name = "remember", "standard"
    definition = staticmethod(reference.remember)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        remember_rows(s.LTM_t, s.LTM_prev, s.f_t, s.N_t, s.i_t, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        remember_rows(s.LTM_t, s.LTM_prev, s.f_t, s.N_t, s.i_t, &s.e)


# --- Use (block v: the sigmoid factor V_t) ----------------------------------------------------

cdef class UseStandard(Gate):
    role, name, blocks = "use", "standard", ("v",)
    definition = staticmethod(reference.use)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t, NULL, True, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t, NULL, True, &s.e)


cdef class UsePeephole(Gate):
    role, name, blocks = "use", "peephole", ("v",)
    params = {"p_v": ("H",)}
    definition = staticmethod(reference.use_peephole)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t,
                     <float*> self.param[0], True, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t,
                     <double*> self.param[0], True, &s.e)


cdef class UseLinear(Gate):
    role, name, blocks = "use", "linear", ("v",)
    definition = staticmethod(reference.use_linear)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t, NULL, False, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t, NULL, False, &s.e)


cdef class UseLinearPeephole(Gate):
    role, name, blocks = "use", "linear_peephole", ("v",)
    params = {"p_v": ("H",)}
    definition = staticmethod(reference.use_linear_peephole)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t,
                     <float*> self.param[0], False, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        gated_output(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_t,
                     <double*> self.param[0], False, &s.e)


cdef class UseNoOutputGate(Gate):
    role, name = "use", "no_output_gate"
    definition = staticmethod(reference.use_no_output_gate)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        tanh_rows(s.U_t, s.LTM_t, s.e.H, &s.e)
        fill_rows(s.V_t, 1, &s.e)
        copy_rows(s.STM_t, s.U_t, s.e.H, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        tanh_rows(s.U_t, s.LTM_t, s.e.H, &s.e)
        fill_rows(s.V_t, 1, &s.e)
        copy_rows(s.STM_t, s.U_t, s.e.H, &s.e)


cdef class UseMemory(Gate):
    role, name = "use", "memory"
    definition = staticmethod(reference.use_memory)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        copy_rows(s.U_t, s.LTM_t, s.e.H, &s.e)
        fill_rows(s.V_t, 1, &s.e)
        copy_rows(s.STM_t, s.LTM_t, s.e.H, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        copy_rows(s.U_t, s.LTM_t, s.e.H, &s.e)
        fill_rows(s.V_t, 1, &s.e)
        copy_rows(s.STM_t, s.LTM_t, s.e.H, &s.e)


cdef class UseLiteral(Gate):
    role, name, blocks = "use", "literal", ("u", "v")
    definition = staticmethod(reference.use_literal)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        tanh_rows(s.U_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.V_t, s.z + self.offset + s.e.H, <float*> NULL, s.LTM_t, &s.e)
        product_rows(s.STM_t, s.U_t, s.V_t, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        tanh_rows(s.U_t, s.z + self.offset, s.e.ldz, &s.e)
        sigmoid_rows(s.V_t, s.z + self.offset + s.e.H, <double*> NULL, s.LTM_t, &s.e)
        product_rows(s.STM_t, s.U_t, s.V_t, &s.e)


cdef class UseCourse(Gate):
    role, name, blocks = "use", "course", ("v",)
    params = {"W_u": ("H", "H"), "b_u": ("H",)}
    definition = staticmethod(reference.use_course)
    mixes_units = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        course_use(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_prev, s.f_t,
                   <float*> self.param[0], <float*> self.param[1], s.work, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        course_use(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_prev, s.f_t,
                   <double*> self.param[0], <double*> self.param[1], s.work, &s.e)


BUILTIN_GATES = (
    ForgetStandard, ForgetPeephole, ForgetNone,
    LearnStandard, LearnPeephole, LearnNoIgnore, LearnLinear, LearnLinearPeephole, LearnCoupled,
    LearnJanet,
    RememberStandard,
    UseStandard, UsePeephole, UseLinear, UseLinearPeephole, UseNoOutputGate, UseMemory,
    UseLiteral, UseCourse,
)
