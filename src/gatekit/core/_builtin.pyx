"""The built-in gates, compiled. ``gatekit.core.builtin_variants`` registers them through the
same hook a third-party plugin uses; each names its NumPy definition in ``gatekit.reference``,
which the tests hold it to.

Most are built from that definition (``gatekit.core.derived``): their kernels are generated
when gatekit is built and compiled into this module, and their classes made at its end from
the declarations stated there. The gates written here by hand are those the generator cannot
yet build, each with a comment saying why. Their kernels work row by row on units [u0, u1), in
plain loops over contiguous memory that the compiler can vectorise. A gate's two methods of
each kind (float, double) call the same fused kernel; backward kernels take derivatives from
the forward outputs (σ' = σ(1 - σ), tanh' = 1 - tanh²), so the pre-activations need not be
kept.
"""
from gatekit.core._gate cimport (Gate, Extent, StepFloat, StepDouble, floating, sigmoid,
                                 tanh_, gemm, out_of_memory, post_gate_product, sync)
from gatekit.core._generated cimport GeneratedGate, gk_generated_kernel
from gatekit.core import codegen, derived, reference
from gatekit.core.building import VECTOR_BUILDS
from gatekit.core.compiler import Kernels
from libc.math cimport sqrt
import json

__all__ = ["BUILTIN_GATES", "matmul"]

cdef double LN_EPSILON = reference.LN_EPSILON


# --- Kernels ----------------------------------------------------------------------------------
# Each kernel first copies the extent it needs into locals: Python extensions are compiled with
# -fno-strict-aliasing, so read through `e`, every store into an array could change the extent
# and the compiler would not vectorise the loop.

cdef inline void sigmoid_rows(floating* out, floating* z, const floating* peephole,
                              const floating* memory, Extent* e) noexcept nogil:
    """out = σ(z + peephole ⊙ memory); the sum is left in z, the gate's full pre-activation.
    `peephole` may be NULL (no peephole)."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1, ldz = e.ldz
    cdef Py_ssize_t b, j
    cdef floating* zb
    for b in range(B):
        zb = z + b * ldz
        if peephole != NULL:
            for j in range(u0, u1):
                zb[j] += peephole[j] * memory[b * H + j]
        for j in range(u0, u1):
            out[b * H + j] = sigmoid(zb[j])


cdef inline void tanh_rows(floating* out, const floating* z, Py_ssize_t ldz,
                           Extent* e) noexcept nogil:
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j
    for b in range(B):
        for j in range(u0, u1):
            out[b * H + j] = tanh_(z[b * ldz + j])


cdef inline void product_rows(floating* out, const floating* a, const floating* c,
                              Extent* e) noexcept nogil:
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j
    for b in range(B):
        for j in range(u0, u1):
            out[b * H + j] = a[b * H + j] * c[b * H + j]


cdef inline int course_use(floating* U_t, floating* V_t, floating* STM_t, floating* z_v,
                           const floating* LTM_prev, const floating* f_t,
                           const floating* W_u, const floating* b_u, floating* work,
                           void* barrier, const void* product, void* post_product,
                           Extent* e) noexcept nogil:
    """U_t = tanh(W_u (LTM_{t-1} ⊙ f_t) + b_u), V_t = σ(z_v), STM_t = U_t ⊙ V_t. Each thread
    forms its units of LTM_{t-1} ⊙ f_t, then (after sync) its units of the product, from all
    of them, over the loop's packed W_u. -1 if out of memory."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j
    product_rows(work, LTM_prev, f_t, e)
    sync(barrier)
    for b in range(B):
        for j in range(u0, u1):
            U_t[b * H + j] = b_u[j]
    # U_t[:, u0:u1] += work @ W_u[u0:u1].T
    if post_gate_product(product, post_product, False, work, U_t, W_u, e) < 0:
        return -1
    tanh_rows(U_t, U_t, H, e)
    sigmoid_rows(V_t, z_v, <const floating*> NULL, <const floating*> NULL, e)
    product_rows(STM_t, U_t, V_t, e)
    return 0


# --- Kernels of the candidates with a second recurrent product (MGU, MUT1) ----------------------
# N_t = tanh(W (g ⊙ STM_{t-1}) + c) with g a gate (MGU: i_t; MUT1: the reset gate σ(z_r)) and c
# what does not wait for it. Each thread forms its units of g ⊙ STM_{t-1} in work, then (after
# sync) its units of the product, from all of them; as course_use does.

cdef inline int gated_candidate(floating* N_t, const floating* W, floating* work,
                                void* barrier, const void* product, void* post_product,
                                Extent* e) noexcept nogil:
    """N_t = tanh(N_t + work @ W.T) on this thread's units, N_t holding c and work this
    thread's units of g ⊙ STM_{t-1}. -1 if out of memory."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    sync(barrier)
    # N_t[:, u0:u1] += work @ W[u0:u1].T
    if post_gate_product(product, post_product, False, work, N_t, W, e) < 0:
        return -1
    tanh_rows(N_t, N_t, H, e)
    return 0


cdef inline int mgu_learn(floating* N_t, floating* i_t, const floating* f_t,
                          const floating* z_n, const floating* STM_prev, const floating* W_hn,
                          floating* work, void* barrier, const void* product,
                          void* post_product, Extent* e) noexcept nogil:
    """MGU: i_t = 1 - f_t, N_t = tanh(W_hn (i_t ⊙ STM_{t-1}) + z_n)"""
    cdef Py_ssize_t B = e.B, H = e.H, ldz = e.ldz, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j, k
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            i_t[k] = 1 - f_t[k]
            work[k] = i_t[k] * STM_prev[k]
            N_t[k] = z_n[b * ldz + j]
    return gated_candidate(N_t, W_hn, work, barrier, product, post_product, e)


cdef inline int mut1_learn(floating* N_t, floating* i_t, const floating* f_t,
                           const floating* z_r, const floating* E_t, const floating* STM_prev,
                           const floating* W_hh, const floating* b_h, floating* work,
                           void* barrier, const void* product, void* post_product,
                           Extent* e) noexcept nogil:
    """MUT1: i_t = 1 - f_t, N_t = tanh(W_hh (σ(z_r) ⊙ STM_{t-1}) + tanh(E_t) + b_h), D = H"""
    cdef Py_ssize_t B = e.B, H = e.H, ldz = e.ldz, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j, k
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            i_t[k] = 1 - f_t[k]
            work[k] = sigmoid(z_r[b * ldz + j]) * STM_prev[k]
            N_t[k] = tanh_(E_t[k]) + b_h[j]
    return gated_candidate(N_t, W_hh, work, barrier, product, post_product, e)


# --- Backward kernels: they add (+=) into gradients, using the forward outputs ---------------

cdef inline void sigmoid_backward_rows(floating* dz, const floating* out, const floating* dout,
                                       const floating* peephole, const floating* memory,
                                       floating* dpeephole, floating* dmemory,
                                       Extent* e) noexcept nogil:
    """out = σ(z + peephole ⊙ memory): dz += dout ⊙ out(1 - out), then from the whole dz
    (other gates may have added to it) dpeephole += Σ_b dz ⊙ memory, dmemory += dz ⊙ peephole."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1, ldz = e.ldz
    cdef Py_ssize_t b, j, k
    cdef floating* dzb
    for b in range(B):
        dzb = dz + b * ldz
        for j in range(u0, u1):
            k = b * H + j
            dzb[j] += dout[k] * out[k] * (1 - out[k])
        if peephole != NULL:
            for j in range(u0, u1):
                k = b * H + j
                dpeephole[j] += dzb[j] * memory[k]
                dmemory[k] += dzb[j] * peephole[j]


cdef inline void product_backward_rows(floating* da, floating* dc, const floating* a,
                                       const floating* c, const floating* dout,
                                       Extent* e) noexcept nogil:
    """out = a ⊙ c: da += dout ⊙ c, dc += dout ⊙ a"""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j, k
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            da[k] += dout[k] * c[k]
            dc[k] += dout[k] * a[k]


cdef inline int course_use_backward(floating* dz_v, floating* dU_t, floating* dV_t,
                                    floating* dLTM_prev, floating* df_t, const floating* U_t,
                                    const floating* V_t, const floating* LTM_prev,
                                    const floating* f_t, const floating* dSTM_t,
                                    const floating* W_u, floating* work, void* barrier,
                                    const void* product, void* post_product,
                                    Extent* e) noexcept nogil:
    """Leaves in dU_t the gradient of U_t's pre-activation, for course_use_finish. Each thread
    forms its units of it, then (after sync) its units of dU_pre @ W_u, from all of them. -1 if
    out of memory."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j, k
    product_backward_rows(dU_t, dV_t, U_t, V_t, dSTM_t, e)
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            dU_t[k] *= 1 - U_t[k] * U_t[k]
            work[k] = 0
    sync(barrier)
    # work[:, u0:u1] = dU_pre @ W_u[:, u0:u1]: the gradient of LTM_{t-1} ⊙ f_t
    if post_gate_product(product, post_product, True, dU_t, work, W_u, e) < 0:
        return -1
    product_backward_rows(dLTM_prev, df_t, LTM_prev, f_t, work, e)
    sigmoid_backward_rows(dz_v, V_t, dV_t, <const floating*> NULL, LTM_prev,
                          <floating*> NULL, <floating*> NULL, e)
    return 0


cdef inline int course_use_finish(floating* dW_u, floating* db_u, const floating* dU_pre,
                                  const floating* LTM_prev, const floating* f_t,
                                  floating* work, Extent* e) noexcept nogil:
    """Over all T * B rows at once: dW_u += dU_pre.T @ (LTM_{t-1} ⊙ f_t), db_u += Σ dU_pre.
    -1 if out of memory."""
    cdef Py_ssize_t B = e.B, H = e.H
    cdef Py_ssize_t r, j
    product_rows(work, LTM_prev, f_t, e)
    if gemm(True, False, H, H, B, dU_pre, H, work, H, 1, dW_u, H) < 0:
        return -1
    for r in range(B):
        for j in range(H):
            db_u[j] += dU_pre[r * H + j]
    return 0


# The backward of a gated candidate leaves in dN_t the gradient of its pre-activation and, once
# it has used di_t, the product's input g ⊙ STM_{t-1} in di_t: the finish then forms the weight
# gradient as one product over the whole sequence (the loop hands finish no STM_{t-1}).

cdef inline int gated_candidate_backward(floating* dN_t, floating* work, const floating* N_t,
                                         const floating* W, void* barrier,
                                         const void* product, void* post_product,
                                         Extent* e) noexcept nogil:
    """dN_t becomes the gradient of N_t's pre-activation, then (after sync) work[:, u0:u1] the
    gradient of this thread's units of g ⊙ STM_{t-1}. -1 if out of memory."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j, k
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            dN_t[k] *= 1 - N_t[k] * N_t[k]
            work[k] = 0
    sync(barrier)
    # work[:, u0:u1] = dN_pre @ W[:, u0:u1]
    if post_gate_product(product, post_product, True, dN_t, work, W, e) < 0:
        return -1
    return 0


cdef inline int mgu_learn_backward(floating* dz_n, floating* dN_t, floating* di_t,
                                   floating* df_t, floating* dSTM_prev, const floating* N_t,
                                   const floating* i_t, const floating* STM_prev,
                                   const floating* W_hn, floating* work, void* barrier,
                                   const void* product, void* post_product,
                                   Extent* e) noexcept nogil:
    cdef Py_ssize_t B = e.B, H = e.H, ldz = e.ldz, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j, k
    if gated_candidate_backward(dN_t, work, N_t, W_hn, barrier, product, post_product, e) < 0:
        return -1
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            dz_n[b * ldz + j] += dN_t[k]
            dSTM_prev[k] += work[k] * i_t[k]
            # i_t = 1 - f_t, read both by W_hn's input and by the remember gate
            df_t[k] -= di_t[k] + work[k] * STM_prev[k]
            di_t[k] = i_t[k] * STM_prev[k]
    return 0


cdef inline int mut1_learn_backward(floating* dz_r, floating* dN_t, floating* di_t,
                                    floating* df_t, floating* dSTM_prev, floating* dE_t,
                                    const floating* z_r, const floating* N_t,
                                    const floating* E_t, const floating* STM_prev,
                                    const floating* W_hh, floating* work, void* barrier,
                                    const void* product, void* post_product,
                                    Extent* e) noexcept nogil:
    cdef Py_ssize_t B = e.B, H = e.H, ldz = e.ldz, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j, k
    cdef floating r, event
    if gated_candidate_backward(dN_t, work, N_t, W_hh, barrier, product, post_product, e) < 0:
        return -1
    for b in range(B):
        for j in range(u0, u1):
            k = b * H + j
            r = sigmoid(z_r[b * ldz + j])
            event = tanh_(E_t[k])
            dz_r[b * ldz + j] += work[k] * STM_prev[k] * r * (1 - r)
            dSTM_prev[k] += work[k] * r
            dE_t[k] += dN_t[k] * (1 - event * event)
            df_t[k] -= di_t[k]
            di_t[k] = r * STM_prev[k]
    return 0


cdef inline int gated_candidate_finish(floating* dW, floating* db, const floating* dN_pre,
                                       const floating* inputs, Extent* e) noexcept nogil:
    """Over all T * B rows at once: dW += dN_pre.T @ (g ⊙ STM_{t-1}) and, if db is not NULL,
    db += Σ dN_pre. -1 if out of memory."""
    cdef Py_ssize_t B = e.B, H = e.H
    cdef Py_ssize_t r, j
    if gemm(True, False, H, H, B, dN_pre, H, inputs, H, 1, dW, H) < 0:
        return -1
    if db != NULL:
        for r in range(B):
            for j in range(H):
                db[j] += dN_pre[r * H + j]
    return 0


# --- Kernels of the LayerNorm LSTM ---------------------------------------------------------------
# Its normalisations mix units: each thread waits (sync) until every thread has written what a
# row's statistics read (the products; LTM_t; the gradients of the gates' outputs), then
# computes every row's statistics over all units itself, in one fixed order, and uses them for
# its own units. Every thread thus finds the same statistics, whatever the number of threads,
# and no scratch is shared; the reductions cost O(B K H) per thread, against O(B K H (H + D))
# for the products.

cdef inline floating row_sum(const floating* v, Py_ssize_t n) noexcept nogil:
    """Σ_j v[j], in 8 interleaved partial sums (vectorised)."""
    cdef Py_ssize_t j, u, whole = n - n % 8
    cdef floating partial[8]
    cdef floating total = 0
    for u in range(8):
        partial[u] = 0
    for j in range(0, whole, 8):
        for u in range(8):
            partial[u] += v[j + u]
    for j in range(whole, n):
        total += v[j]
    for u in range(8):
        total += partial[u]
    return total


cdef inline void row_statistics(const floating* v, Py_ssize_t n, floating* mean,
                                floating* rstd) noexcept nogil:
    """The mean of v[0:n] and 1 / sqrt(var + ε), var the biased variance (two passes: the
    centred squares keep float32 accurate where the mean is large against the spread)."""
    cdef Py_ssize_t j, u, whole = n - n % 8
    cdef floating m = row_sum(v, n) / n
    cdef floating partial[8]
    cdef floating squares = 0, centred
    for u in range(8):
        partial[u] = 0
    for j in range(0, whole, 8):
        for u in range(8):
            centred = v[j + u] - m
            partial[u] += centred * centred
    for j in range(whole, n):
        centred = v[j] - m
        squares += centred * centred
    for u in range(8):
        squares += partial[u]
    mean[0] = m
    rstd[0] = <floating> (1.0 / sqrt(squares / n + LN_EPSILON))


cdef inline void normalised_sums(const floating* d, const floating* g, const floating* v,
                                 floating mean, floating rstd, Py_ssize_t n,
                                 floating* sums) noexcept nogil:
    """sums[0] += Σ_j g[j] d[j] and sums[1] += Σ_j g[j] d[j] v̂[j], v̂ = (v - mean) rstd, over
    j < n, in 8 interleaved partial sums (vectorised; a single running sum would not be)."""
    cdef Py_ssize_t j, u, whole = n - n % 8
    cdef floating plain[8]
    cdef floating weighted[8]
    cdef floating gd, total = 0, total_weighted = 0
    for u in range(8):
        plain[u] = 0
        weighted[u] = 0
    for j in range(0, whole, 8):
        for u in range(8):
            gd = g[j + u] * d[j + u]
            plain[u] += gd
            weighted[u] += gd * ((v[j + u] - mean) * rstd)
    for j in range(whole, n):
        gd = g[j] * d[j]
        total += gd
        total_weighted += gd * ((v[j] - mean) * rstd)
    for u in range(8):
        total += plain[u]
        total_weighted += weighted[u]
    sums[0] += total
    sums[1] += total_weighted


cdef inline void layernorm_forget(floating* f_t, floating* i_t, floating* N_t, floating* V_t,
                                  const floating* z_x, const floating* z_h,
                                  const floating* g_x, const floating* g_h,
                                  const floating* bias, void* barrier, Extent* e) noexcept nogil:
    """a = g_x ⊙ LN(z_x) + g_h ⊙ LN(z_h) + b over the 4H columns of each product (blocks f, i,
    n, v side by side); f_t, i_t, V_t = σ(a_f, a_i, a_v), N_t = tanh(a_n)."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1, ldz = e.ldz
    cdef Py_ssize_t b, j, k, c
    cdef floating mx, rx, mh, rh
    cdef const floating* zx
    cdef const floating* zh
    cdef floating* outs[4]
    cdef floating* out
    outs[0], outs[1], outs[2], outs[3] = f_t, i_t, N_t, V_t
    sync(barrier)                       # every thread's share of the products is in z
    for b in range(B):
        zx, zh = z_x + b * ldz, z_h + b * ldz
        row_statistics(zx, 4 * H, &mx, &rx)
        row_statistics(zh, 4 * H, &mh, &rh)
        for k in range(4):
            out = outs[k] + b * H
            for j in range(u0, u1):
                c = k * H + j
                out[j] = (g_x[c] * ((zx[c] - mx) * rx) + g_h[c] * ((zh[c] - mh) * rh)
                          + bias[c])
            if k == 2:
                for j in range(u0, u1):
                    out[j] = tanh_(out[j])
            else:
                for j in range(u0, u1):
                    out[j] = sigmoid(out[j])


cdef inline void layernorm_forget_backward(floating* dz_x, floating* dz_h, floating* df_t,
                                           floating* di_t, floating* dN_t, floating* dV_t,
                                           floating* dg_x, floating* dg_h, floating* dbias,
                                           const floating* f_t, const floating* i_t,
                                           const floating* N_t, const floating* V_t,
                                           const floating* z_x, const floating* z_h,
                                           const floating* g_x, const floating* g_h,
                                           void* barrier, Extent* e) noexcept nogil:
    """The gradients of the four pre-activations a (left in df_t, di_t, dN_t, dV_t, which
    every thread then reads whole), of g_x, g_h, b, and of the two products before their
    normalisation: dz = rstd (d - mean(d) - ẑ mean(d ⊙ ẑ)), d = g ⊙ da, over 4H columns.
    Each loop writes one array (see the sLSTM kernels); block k's columns start at k H."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1, ldz = e.ldz
    cdef Py_ssize_t b, j, k
    cdef floating mx, rx, mh, rh, sx, sxx, sh, shh, n = 4 * H
    cdef floating sums_x[2]
    cdef floating sums_h[2]
    cdef const floating* zx
    cdef const floating* zh
    cdef const floating* out
    cdef floating* da
    cdef floating* dzx
    cdef floating* dzh
    cdef floating* das[4]
    cdef const floating* outs[4]
    das[0], das[1], das[2], das[3] = df_t, di_t, dN_t, dV_t
    outs[0], outs[1], outs[2], outs[3] = f_t, i_t, N_t, V_t
    for b in range(B):
        row_statistics(z_x + b * ldz, 4 * H, &mx, &rx)
        row_statistics(z_h + b * ldz, 4 * H, &mh, &rh)
        for k in range(4):
            da, out = das[k] + b * H, outs[k] + b * H
            zx, zh = z_x + b * ldz + k * H, z_h + b * ldz + k * H
            if k == 2:
                for j in range(u0, u1):
                    da[j] = da[j] * (1 - out[j] * out[j])
            else:
                for j in range(u0, u1):
                    da[j] = da[j] * out[j] * (1 - out[j])
            for j in range(u0, u1):
                dg_x[k * H + j] += da[j] * ((zx[j] - mx) * rx)
            for j in range(u0, u1):
                dg_h[k * H + j] += da[j] * ((zh[j] - mh) * rh)
            for j in range(u0, u1):
                dbias[k * H + j] += da[j]
    sync(barrier)                       # every thread's da is in place
    for b in range(B):
        row_statistics(z_x + b * ldz, 4 * H, &mx, &rx)
        row_statistics(z_h + b * ldz, 4 * H, &mh, &rh)
        sums_x[0] = sums_x[1] = sums_h[0] = sums_h[1] = 0
        for k in range(4):
            da = das[k] + b * H
            zx, zh = z_x + b * ldz + k * H, z_h + b * ldz + k * H
            normalised_sums(da, g_x + k * H, zx, mx, rx, H, sums_x)
            normalised_sums(da, g_h + k * H, zh, mh, rh, H, sums_h)
        sx, sxx, sh, shh = sums_x[0] / n, sums_x[1] / n, sums_h[0] / n, sums_h[1] / n
        for k in range(4):
            da = das[k] + b * H
            zx, zh = z_x + b * ldz + k * H, z_h + b * ldz + k * H
            dzx, dzh = dz_x + b * ldz + k * H, dz_h + b * ldz + k * H
            for j in range(u0, u1):
                dzx[j] += rx * (g_x[k * H + j] * da[j] - sx - ((zx[j] - mx) * rx) * sxx)
            for j in range(u0, u1):
                dzh[j] += rh * (g_h[k * H + j] * da[j] - sh - ((zh[j] - mh) * rh) * shh)


cdef inline void layernorm_use(floating* U_t, floating* STM_t, const floating* V_t,
                               const floating* LTM_t, const floating* g_c, const floating* b_c,
                               void* barrier, Extent* e) noexcept nogil:
    """U_t = tanh(g_c ⊙ LN(LTM_t) + b_c) over the H units, STM_t = U_t ⊙ V_t."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j
    cdef floating mean, rstd
    sync(barrier)                       # every thread's units of LTM_t are in place
    for b in range(B):
        row_statistics(LTM_t + b * H, H, &mean, &rstd)
        for j in range(u0, u1):
            U_t[b * H + j] = tanh_(g_c[j] * ((LTM_t[b * H + j] - mean) * rstd) + b_c[j])
        for j in range(u0, u1):
            STM_t[b * H + j] = U_t[b * H + j] * V_t[b * H + j]


cdef inline void layernorm_use_backward(floating* dLTM_t, floating* dU_t, floating* dV_t,
                                        floating* dg_c, floating* db_c, const floating* dSTM_t,
                                        const floating* U_t, const floating* V_t,
                                        const floating* LTM_t, const floating* g_c,
                                        void* barrier, Extent* e) noexcept nogil:
    """dV_t, g_c's and b_c's gradients, and dLTM_t through LN: the gradient of U_t's
    pre-activation is left in dU_t, which every thread then reads whole (d LN(LTM_t) is g_c
    times it). Each loop writes one array (see the sLSTM kernels)."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    cdef Py_ssize_t b, j
    cdef floating mean, rstd, s1, s2
    cdef floating sums[2]
    cdef const floating* ltm
    cdef floating* du
    for b in range(B):
        ltm, du = LTM_t + b * H, dU_t + b * H
        row_statistics(ltm, H, &mean, &rstd)
        for j in range(u0, u1):
            dV_t[b * H + j] += dSTM_t[b * H + j] * U_t[b * H + j]
        for j in range(u0, u1):
            du[j] = dSTM_t[b * H + j] * V_t[b * H + j] * (1 - U_t[b * H + j] * U_t[b * H + j])
        for j in range(u0, u1):
            dg_c[j] += du[j] * ((ltm[j] - mean) * rstd)
        for j in range(u0, u1):
            db_c[j] += du[j]
    sync(barrier)                       # every thread's units of dU_t are in place
    for b in range(B):
        ltm, du = LTM_t + b * H, dU_t + b * H
        row_statistics(ltm, H, &mean, &rstd)
        sums[0] = sums[1] = 0
        normalised_sums(du, g_c, ltm, mean, rstd, H, sums)
        s1, s2 = sums[0] / H, sums[1] / H
        for j in range(u0, u1):
            dLTM_t[b * H + j] += rstd * (g_c[j] * du[j] - s1 - ((ltm[j] - mean) * rstd) * s2)


# --- Hand-written: what the generator cannot yet build --------------------------------------------
# Every other built-in gate is built from its definition (gatekit.core.derived, below).

cdef class ForgetPeephole(Gate):
    # Hand-written: it passes on s_t = z_f + p_f ⊙ LTM_{t-1}, left in its block of z, and the
    # tracer takes an s_t only as the block's pre-activation itself (the loop's, untouched).
    role, name, blocks = "forget", "peephole", ("f",)
    params = {"p_f": ("H",)}
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget_peephole)
    backward_definition = staticmethod(reference.forget_peephole_backward)
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        sigmoid_rows(s.f_t, s.z + self.offset, <float*> self.param[0], s.LTM_prev, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        sigmoid_rows(s.f_t, s.z + self.offset, <double*> self.param[0], s.LTM_prev, &s.e)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        sigmoid_backward_rows(s.dz + self.offset, s.f_t, s.df_t, <float*> self.param[0], s.LTM_prev,
                              s.dparam[0], s.dLTM_prev, &s.e)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        sigmoid_backward_rows(s.dz + self.offset, s.f_t, s.df_t, <double*> self.param[0], s.LTM_prev,
                              s.dparam[0], s.dLTM_prev, &s.e)


# --- Learn (blocks: n combines, i ignores) --------------------------------------------------------

cdef class LearnMgu(Gate):
    # Hand-written: its own product over units, W_hn of shape (H, H), which the tracer refuses
    # (the generated kernels are elementwise, with sums over units at most).
    """MGU's candidate: i_t = 1 - f_t (MGU's one gate), N_t = tanh(W_hn (i_t ⊙ STM_{t-1}) + z_n)
    with z_n reading the event only: a second recurrent product that waits for the gate."""
    role, name, blocks = "learn", "mgu", ("n",)
    reads = {"n": "event"}
    params = {"W_hn": ("H", "H")}
    products = ("W_hn",)
    definition = staticmethod(reference.learn_mgu)
    backward_definition = staticmethod(reference.learn_mgu_backward)
    syncs = 1
    stm_by_unit = True
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        if mgu_learn(s.N_t, s.i_t, s.f_t, s.z + self.offset, s.STM_prev, <float*> self.param[0],
                     s.work, s.barrier, s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        if mgu_learn(s.N_t, s.i_t, s.f_t, s.z + self.offset, s.STM_prev, <double*> self.param[0],
                     s.work, s.barrier, s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        if mgu_learn_backward(s.dz + self.offset, s.dN_t, s.di_t, s.df_t, s.dSTM_prev, s.N_t,
                              s.i_t, s.STM_prev, <float*> self.param[0], s.work, s.barrier,
                              s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        if mgu_learn_backward(s.dz + self.offset, s.dN_t, s.di_t, s.df_t, s.dSTM_prev, s.N_t,
                              s.i_t, s.STM_prev, <double*> self.param[0], s.work, s.barrier,
                              s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void finish_float(self, StepFloat* s) noexcept nogil:
        if gated_candidate_finish(s.dparam[0], <float*> NULL, s.dN_t, s.di_t, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void finish_double(self, StepDouble* s) noexcept nogil:
        if gated_candidate_finish(s.dparam[0], <double*> NULL, s.dN_t, s.di_t, &s.e) < 0:
            out_of_memory(self, &s.error)


cdef class LearnMut1(Gate):
    # Hand-written: its own product over units, W_hh of shape (H, H) (as LearnMgu).
    """MUT1's candidate: N_t = tanh(W_hh (σ(z_r) ⊙ STM_{t-1}) + tanh(E_t) + b_h), i_t = 1 - f_t;
    tanh(E_t) joins the memory unit by unit, so the event has as many entries as the memory."""
    role, name, blocks = "learn", "mut1", ("r",)
    params = {"W_hh": ("H", "H"), "b_h": ("H",)}
    products = ("W_hh",)
    definition = staticmethod(reference.learn_mut1)
    backward_definition = staticmethod(reference.learn_mut1_backward)
    input_size_is_hidden_size = True
    syncs = 1
    stm_by_unit = True
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        if mut1_learn(s.N_t, s.i_t, s.f_t, s.z + self.offset, s.E_t, s.STM_prev,
                      <float*> self.param[0], <float*> self.param[1], s.work, s.barrier,
                      s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        if mut1_learn(s.N_t, s.i_t, s.f_t, s.z + self.offset, s.E_t, s.STM_prev,
                      <double*> self.param[0], <double*> self.param[1], s.work, s.barrier,
                      s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        if mut1_learn_backward(s.dz + self.offset, s.dN_t, s.di_t, s.df_t, s.dSTM_prev, s.dE_t,
                               s.z + self.offset, s.N_t, s.E_t, s.STM_prev,
                               <float*> self.param[0], s.work, s.barrier, s.product,
                               <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        if mut1_learn_backward(s.dz + self.offset, s.dN_t, s.di_t, s.df_t, s.dSTM_prev, s.dE_t,
                               s.z + self.offset, s.N_t, s.E_t, s.STM_prev,
                               <double*> self.param[0], s.work, s.barrier, s.product,
                               <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void finish_float(self, StepFloat* s) noexcept nogil:
        if gated_candidate_finish(s.dparam[0], s.dparam[1], s.dN_t, s.di_t, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void finish_double(self, StepDouble* s) noexcept nogil:
        if gated_candidate_finish(s.dparam[0], s.dparam[1], s.dN_t, s.di_t, &s.e) < 0:
            out_of_memory(self, &s.error)


# --- Use (block v: the sigmoid factor V_t) --------------------------------------------------------

cdef class UseCourse(Gate):
    # Hand-written: its own product over units, W_u of shape (H, H) (as LearnMgu).
    role, name, blocks = "use", "course", ("v",)
    params = {"W_u": ("H", "H"), "b_u": ("H",)}
    products = ("W_u",)
    definition = staticmethod(reference.use_course)
    backward_definition = staticmethod(reference.use_course_backward)
    syncs = 1
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        if course_use(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_prev, s.f_t,
                      <float*> self.param[0], <float*> self.param[1], s.work, s.barrier,
                      s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        if course_use(s.U_t, s.V_t, s.STM_t, s.z + self.offset, s.LTM_prev, s.f_t,
                      <double*> self.param[0], <double*> self.param[1], s.work, s.barrier,
                      s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        if course_use_backward(s.dz + self.offset, s.dU_t, s.dV_t, s.dLTM_prev, s.df_t, s.U_t,
                               s.V_t, s.LTM_prev, s.f_t, s.dSTM_t, <float*> self.param[0],
                               s.work, s.barrier, s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        if course_use_backward(s.dz + self.offset, s.dU_t, s.dV_t, s.dLTM_prev, s.df_t, s.U_t,
                               s.V_t, s.LTM_prev, s.f_t, s.dSTM_t, <double*> self.param[0],
                               s.work, s.barrier, s.product, <void*> s.post_product, &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void finish_float(self, StepFloat* s) noexcept nogil:
        if course_use_finish(s.dparam[0], s.dparam[1], s.dU_t, s.LTM_prev, s.f_t, s.work,
                             &s.e) < 0:
            out_of_memory(self, &s.error)

    cdef void finish_double(self, StepDouble* s) noexcept nogil:
        if course_use_finish(s.dparam[0], s.dparam[1], s.dU_t, s.LTM_prev, s.f_t, s.work,
                             &s.e) < 0:
            out_of_memory(self, &s.error)


cdef class ForgetLayernorm(Gate):
    # Hand-written, as the learn and use gates of the LayerNorm LSTM: its parameters of one
    # row per block, (4, H), are not traced, and its definition computes the other gates'
    # outputs (i_t, N_t, V_t), which the tracer takes only from the gate of their role.
    """The LayerNorm LSTM's four pre-activations, normalised jointly, product by product: its
    blocks are the input (x·) and recurrent (h·) parts of f, i, n and v, without biases; it
    writes f_t, i_t, N_t and V_t (the learn and use gates take theirs from it)."""
    role, name = "forget", "layernorm"
    blocks = ("xf", "xi", "xn", "xv", "hf", "hi", "hn", "hv")
    reads = {"xf": "event", "xi": "event", "xn": "event", "xv": "event",
             "hf": "STM", "hi": "STM", "hn": "STM", "hv": "STM"}
    block_biases = False
    params = {"g_x": (4, "H"), "g_h": (4, "H"), "b": (4, "H")}
    init = {"g_x": 1.0, "g_h": 1.0, "b": 0.0}
    outputs = ("f_t", "i_t", "N_t", "V_t")
    definition = staticmethod(reference.forget_layernorm)
    backward_definition = staticmethod(reference.forget_layernorm_backward)
    syncs = 1
    uses_work = False
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        layernorm_forget(s.f_t, s.i_t, s.N_t, s.V_t, s.z + self.column[0], s.z + self.column[4],
                         <float*> self.param[0], <float*> self.param[1], <float*> self.param[2],
                         s.barrier, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        layernorm_forget(s.f_t, s.i_t, s.N_t, s.V_t, s.z + self.column[0], s.z + self.column[4],
                         <double*> self.param[0], <double*> self.param[1],
                         <double*> self.param[2], s.barrier, &s.e)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        layernorm_forget_backward(s.dz + self.column[0], s.dz + self.column[4], s.df_t, s.di_t,
                                  s.dN_t, s.dV_t, s.dparam[0], s.dparam[1], s.dparam[2],
                                  s.f_t, s.i_t, s.N_t, s.V_t, s.z + self.column[0],
                                  s.z + self.column[4], <float*> self.param[0],
                                  <float*> self.param[1], s.barrier, &s.e)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        layernorm_forget_backward(s.dz + self.column[0], s.dz + self.column[4], s.df_t, s.di_t,
                                  s.dN_t, s.dV_t, s.dparam[0], s.dparam[1], s.dparam[2],
                                  s.f_t, s.i_t, s.N_t, s.V_t, s.z + self.column[0],
                                  s.z + self.column[4], <double*> self.param[0],
                                  <double*> self.param[1], s.barrier, &s.e)


cdef class LearnLayernorm(Gate):
    """Nothing to compute: the layernorm forget gate wrote i_t and N_t."""
    role, name = "learn", "layernorm"
    definition = staticmethod(reference.learn_layernorm)
    backward_definition = staticmethod(reference.learn_layernorm_backward)
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        pass

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        pass

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        pass

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        pass


cdef class UseLayernorm(Gate):
    """U_t = tanh(g_c ⊙ LN(LTM_t) + b_c) over the H units; V_t is the layernorm forget gate's."""
    role, name = "use", "layernorm"
    params = {"g_c": ("H",), "b_c": ("H",)}
    init = {"g_c": 1.0, "b_c": 0.0}
    definition = staticmethod(reference.use_layernorm)
    backward_definition = staticmethod(reference.use_layernorm_backward)
    syncs = 1
    uses_work = False
    differentiable = True

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        layernorm_use(s.U_t, s.STM_t, s.V_t, s.LTM_t, <float*> self.param[0],
                      <float*> self.param[1], s.barrier, &s.e)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        layernorm_use(s.U_t, s.STM_t, s.V_t, s.LTM_t, <double*> self.param[0],
                      <double*> self.param[1], s.barrier, &s.e)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        layernorm_use_backward(s.dLTM_t, s.dU_t, s.dV_t, s.dparam[0], s.dparam[1], s.dSTM_t,
                               s.U_t, s.V_t, s.LTM_t, <float*> self.param[0], s.barrier, &s.e)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        layernorm_use_backward(s.dLTM_t, s.dU_t, s.dV_t, s.dparam[0], s.dparam[1], s.dSTM_t,
                               s.U_t, s.V_t, s.LTM_t, <double*> self.param[0], s.barrier, &s.e)


# --- Built from their definitions (gatekit.core.derived) ----------------------------------------
# These gates' kernels are generated from their NumPy definitions when gatekit is built, into
# the header this includes; their classes are made here from gatekit.core.derived's
# declarations. The gates above stay hand-written, each for the reason its comment gives.

cdef extern from "_derived.h" nogil:
    ctypedef struct gk_derived_kernel:
        const char* symbol
        gk_generated_kernel kernel
    const gk_derived_kernel* GK_DERIVED_KERNELS
    const char* GK_DERIVED_SLOTS
    const char* GK_DERIVED_FINGERPRINT

_DERIVED_SLOTS = json.loads(GK_DERIVED_SLOTS.decode())
#: What gatekit.core.derived generated for this build (derived.fingerprint() of its header).
DERIVED_FINGERPRINT = GK_DERIVED_FINGERPRINT.decode()


def _derived_kernels():
    cdef Py_ssize_t n = 0
    found = {}
    while GK_DERIVED_KERNELS[n].symbol != NULL:
        found[GK_DERIVED_KERNELS[n].symbol.decode()] = n
        n += 1
    return found


_DERIVED_KERNELS = _derived_kernels()
# This module's instruction set: it is compiled once for each (gatekit.core.instruction_sets).
_BUILD = next((build for build in VECTOR_BUILDS if __name__.endswith(f"_{build}")), "baseline")


cdef class DerivedGate(GeneratedGate):
    """A built-in gate whose kernels, generated from its definition, are linked into this
    module: the compiled gate of the equation gates, finding them here rather than in a
    shared library."""

    def _open(self, library, symbols):
        for k, symbol in enumerate(symbols):
            if symbol not in _DERIVED_KERNELS:
                raise ImportError(f"{library} has no function {symbol}")
            self.run[k] = GK_DERIVED_KERNELS[<Py_ssize_t> _DERIVED_KERNELS[symbol]].kernel


def _derived(class_name):
    slots = _DERIVED_SLOTS[class_name]
    kernels = Kernels(__name__, codegen.symbols(derived.prefix(class_name)),
                      tuple(map(tuple, slots["forward"])), tuple(map(tuple, slots["backward"])),
                      _BUILD)
    return type(class_name, (DerivedGate,),
                {**derived.declarations(class_name), "kernels": kernels, "__module__": __name__})


# As module attributes, like the hand-written gates.
globals().update({class_name: _derived(class_name) for class_name in derived.GATES})


BUILTIN_GATES = tuple(globals()[class_name] for class_name in (
    "ForgetStandard", "ForgetPeephole", "ForgetNone", "ForgetEvent", "ForgetMin",
    "LearnStandard", "LearnPeephole", "LearnNoIgnore", "LearnLinear", "LearnLinearPeephole",
    "LearnCoupled", "LearnJanet", "LearnMin", "LearnReset", "LearnMgu", "LearnMut1",
    "RememberStandard",
    "UseStandard", "UsePeephole", "UseLinear", "UseLinearPeephole", "UseNoOutputGate", "UseMemory",
    "UseLiteral", "UseCourse",
    "ForgetSlstm", "LearnSlstm", "UseSlstm",
    "ForgetLayernorm", "LearnLayernorm", "UseLayernorm",
))


def matmul(bint trans_a, bint trans_b, floating[:, ::1] A, floating[:, ::1] B, floating beta,
           floating[:, ::1] C):
    """C = op(A) @ op(B) + beta * C through ``gemm``, as this build of the gates compiles it
    (for testing it against NumPy; op(X) is X.T where trans_x is set)."""
    cdef Py_ssize_t m = C.shape[0], n = C.shape[1]
    cdef Py_ssize_t k = A.shape[0] if trans_a else A.shape[1]
    cdef int failed = 0
    if ((A.shape[1] if trans_a else A.shape[0]) != m or (B.shape[1] if trans_b else B.shape[0]) != k
            or (B.shape[0] if trans_b else B.shape[1]) != n):
        raise ValueError(f"op(A) must be ({m}, k) and op(B) (k, {n}); got A "
                         f"{(A.shape[0], A.shape[1])}, B {(B.shape[0], B.shape[1])} with "
                         f"trans_a={trans_a}, trans_b={trans_b}")
    if m == 0 or n == 0:
        return
    cdef const floating* a = &A[0, 0] if A.shape[0] * A.shape[1] else NULL
    cdef const floating* b = &B[0, 0] if B.shape[0] * B.shape[1] else NULL
    with nogil:
        failed = gemm(trans_a, trans_b, m, n, k, a, max(A.shape[1], 1), b, max(B.shape[1], 1),
                      beta, &C[0, 0], C.shape[1])
    if failed:
        raise MemoryError("gemm could not allocate a panel's copy")
