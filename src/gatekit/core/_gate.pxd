# The gate interface of the compiled core, for gates written in Cython.
#
# A time step hands every gate one StepFloat or StepDouble: pointers to this step's arrays, named
# after the quantities of gatekit.reference, all (B, H) with row stride H except the
# pre-activations `z` (row stride `e.ldz`). Gates run in role order forget -> learn -> remember ->
# use, so a gate may read what the earlier ones wrote. A gate computes rows [0, B) and units
# [u0, u1) only, and writes nothing outside them (parameter gradients included): the loop may
# call it from several threads at once, each with its own units. A gate whose maths mixes units
# (a matrix product over H) either sets `mixes_units`, and is then handed all units by one
# thread while the others wait, or sets `syncs` = n and calls sync(s.barrier) exactly n times in
# each forward and each backward step: every thread then writes its own units, and after a
# sync may read what all threads wrote before it (the course Use gate: LTM_{t-1} ⊙ f_t of its
# own units, sync, then its units of W_u (LTM_{t-1} ⊙ f_t)). A gate whose product is its own
# (H, H) weight after another gate declares it in Gate.products: the loop packs it once per call
# and the step's post_product computes a thread's units of it (see post_gate_product below).
# A reduction over units, such as a
# layer normalisation, takes the same shape without scratch: sync once what it reduces is
# complete (the step's products, in z; LTM_t; in backward a gradient left in the gate's own
# output gradients), then each thread computes every row's statistics over all units, in one
# order, and writes its own units (the layernorm gates of gatekit/core/_builtin.pyx). Such a
# gate sets `uses_work` False; several of them may be in a cell, beside at most one that
# shares `work`. The gates of a step run on each thread in role order with no barrier between
# them, so a gate that reads other threads' units syncs first, even for the products of z.
#
# A gate's extra memories (Gate.memories, in gatekit/core/_gate.pyx) come in the step's mem_*
# fields, at the end of the structs; the gate that declares a memory writes all its units of
# mem_t at every step, and in backward finds its d/d mem_t complete, as dLTM_t is.
#
# Write the maths once as a function over the `floating` fused type taking pointers and the
# Extent, and call it from both methods (forward_float, forward_double): see gatekit/core/_builtin.pyx.
# Copy the Extent's fields into locals before the loops: Python extensions build with
# -fno-strict-aliasing, so read through the pointer they could change with every store, and
# the compiler would not vectorise the loop.

ctypedef struct Extent:
    Py_ssize_t t             # the time step
    Py_ssize_t B, H          # rows (sequences) and units of every (B, H) array
    Py_ssize_t D             # the event's width: E_t is (B, D), row stride D
    Py_ssize_t u0, u1        # the units this call computes
    Py_ssize_t ldz           # row stride of z

# The loop's post-gate product (see StepFloat.post_product).
ctypedef int (*ProductFloat)(const void* product, bint transposed, const float* A, float* C,
                             const Extent* e) noexcept nogil
ctypedef int (*ProductDouble)(const void* product, bint transposed, const double* A, double* C,
                              const Extent* e) noexcept nogil

ctypedef struct StepFloat:
    Extent e
    # Forward: the step's quantities (in backward: what the forward pass kept of the step).
    float* z                 # pre-activations of every block k: W_k [STM_{t-1}, E_t] + b_k, or
                             # W_k E_t + b_k, or W_k STM_{t-1} + b_k, by what k reads;
                             # block k of a gate starts at column self.column[k]
    const float* s_t         # the forget gate's full pre-activation (in z), or NULL if none
    const float* STM_prev
    const float* LTM_prev
    const float* E_t         # the event, (B, D) with row stride D
    float* f_t               # forget factor
    float* i_t               # ignore factor
    float* N_t               # combined new information
    float* LTM_t
    float* U_t
    float* V_t
    float* STM_t
    float* work              # scratch, (B, H)
    # Backward: gradients of the loss. Gates add (+=) into them; each starts the step at zero,
    # except dLTM_t (holding what step t + 1 sent back) and dSTM_t (complete, read-only).
    # Once it has read the gradient of its own output, a gate may leave there what its finish
    # needs (course: dU_t, the gradient of U_t's pre-activation; mgu, mut1: dN_t likewise and,
    # in di_t, the gated STM_{t-1} their product read, since finish has no STM_prev).
    float* dz                # d/dz, the layout of z
    float* ds_t              # the forget gate's block of dz, or NULL
    const float* dSTM_t
    float* df_t
    float* di_t
    float* dN_t
    float* dU_t
    float* dV_t
    float* dLTM_t
    float* dLTM_prev
    float* dSTM_prev         # the gates' share of d/dSTM_{t-1} that does not pass through z
                             # (an elementwise use of STM_{t-1}; a product of it that waits
                             # for a gate); the loop adds W^T dz itself
    float* dE_t              # likewise d/dE_t, (B, D): the loop adds W^T dz after the last step
    float** dparam           # gradients of this gate's extra parameters, in declared order
    void* barrier            # the threads of the call, for sync() (gates that set `syncs`)
    int error                # set non-zero by a gate that failed; the loop then stops
    # Extra memories (Gate.memories), carried from step to step like the LTM; NULL in a cell
    # that has none. Each points at all of the cell's memories at once, (M, B, H): the gate's
    # k-th memory starts at self.memory[k] * B * H (see Gate.memory). In finish: NULL.
    const float* mem_prev    # their values at t - 1
    float* mem_t             # their new values, written by the gate that declares each
    float* dmem_t            # d/d mem_t: what step t + 1 sent back, plus what later gates of
                             # this step added; complete when the declaring gate's backward runs
    float* dmem_prev         # d/d mem_{t-1}: zero at the start of the step, gates add into it
    # The post-gate product (Gate.products), at the end so that plugins built before it keep
    # their fields' offsets: `product` is the loop's handle on the declared (H, H) weight W, packed
    # once per call, and post_product(s.product, transposed, A, C, &s.e) adds to units
    # [e.u0, e.u1) of C (B rows, row stride H) those units of A @ W.T (forward), or with
    # `transposed` of A @ W (backward: the gradient sent back through the product), A (B, H)
    # with row stride H holding every unit. Call it after a sync(s.barrier) that follows
    # writing A. It returns 0, or -1 having added nothing when asked for the product the pass
    # did not pack (forward packs for A @ W.T, backward for A @ W). Both NULL where the loop
    # packed none (a gate without `products`, finish). post_gate_product (below) falls back to
    # gemm in either case.
    const void* product
    ProductFloat post_product

# The same fields, in double precision.
ctypedef struct StepDouble:
    Extent e
    double* z
    const double* s_t
    const double* STM_prev
    const double* LTM_prev
    const double* E_t
    double* f_t
    double* i_t
    double* N_t
    double* LTM_t
    double* U_t
    double* V_t
    double* STM_t
    double* work
    double* dz
    double* ds_t
    const double* dSTM_t
    double* df_t
    double* di_t
    double* dN_t
    double* dU_t
    double* dV_t
    double* dLTM_t
    double* dLTM_prev
    double* dSTM_prev
    double* dE_t
    double** dparam
    void* barrier
    int error
    const double* mem_prev
    double* mem_t
    double* dmem_t
    double* dmem_prev
    const void* product
    ProductDouble post_product

ctypedef fused floating:
    float
    double


cdef class Gate:
    cdef readonly Py_ssize_t offset     # column of this gate's first block in a row of z
    cdef Py_ssize_t column[8]           # column of each of its blocks, in declared order: the
                                        # blocks of a gate that all read the same lie side by
                                        # side (column[k] = offset + k * H), others need not
    cdef readonly Py_ssize_t input_size, hidden_size
    cdef void* param[8]                 # data of this gate's extra parameters, in declared order
    cdef list _bound                    # keeps the arrays behind `param` alive
    cdef object _error                  # what a failed call raised, for the cell to re-raise
    cdef Py_ssize_t memory[4]           # slot of each of its extra memories among the cell's
                                        # (Gate.memories, declared order): the k-th starts at
                                        # s.mem_t + memory[k] * B * H
    cdef readonly tuple cell_memories   # the names of all of the cell's memories, by slot

    cdef void forward_float(self, StepFloat* s) noexcept nogil
    cdef void forward_double(self, StepDouble* s) noexcept nogil
    # Backward, one step, called in reverse role order (use, remember, learn, forget).
    cdef void backward_float(self, StepFloat* s) noexcept nogil
    cdef void backward_double(self, StepDouble* s) noexcept nogil
    # Once after the last backward step, with every array spanning all T * B rows (e.B = T * B,
    # e.t = -1, STM_prev = NULL, work of T * B rows): the place for a weight gradient that is
    # one large matrix product over the whole sequence. Optional.
    cdef void finish_float(self, StepFloat* s) noexcept nogil
    cdef void finish_double(self, StepDouble* s) noexcept nogil


# The C below is copied into every module that cimports this file (a Cython gate plugin
# needs no extra include path).
cdef extern from * nogil:
    """
    /* Branch-free exp, sigmoid and tanh that compilers vectorise when they are inlined into a loop
     * (a call to the C library's expf or tanhf stops vectorisation, and costs more than the
     * matrix products of a small LSTM step).
     *
     * exp: e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2]
     * (Cody-Waite reduction, two-part ln 2), then the minimax polynomial (float) or rational
     * (double) approximations of Cephes (S. L. Moshier) for e^r; 2^n is built in the exponent bits.
     * tanh: the Cephes odd approximations below |x| = 0.625, 1 - 2 / (e^{2|x|} + 1) above.
     * Accuracy against extended-precision NumPy over [-200, 200] (tests/test_fastmath.py): at most
     * 2.4 units in the last place (float32 sigmoid; float64 sigmoid 2.0, tanh 1.1 and 1.3). Below
     * the smallest normal number e^x is 0 (so σ is 0 for x below about -87 in float32, -708 in
     * float64, where the C library returns subnormal numbers); NaN and ±inf give what NumPy gives.
     */

    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    static inline float gk_pow2f(float n) {           /* 2^n for integral n in [-126, 127] */
        int32_t bits = ((int32_t) n + 127) << 23;
        float result;
        memcpy(&result, &bits, sizeof result);
        return result;
    }

    static inline double gk_pow2(double n) {          /* 2^n for integral n in [-1022, 1023] */
        int64_t bits = (int64_t) ((int32_t) n + 1023) << 52;   /* via int32: vectorises */
        double result;
        memcpy(&result, &bits, sizeof result);
        return result;
    }

    static inline float gk_expf(float x) {
        /* Clamped so 2^n stays a normal number, then overflow and underflow restored as NumPy
         * has them (inf, 0); comparisons with NaN are false, so NaN passes through. */
        float overflow = x > 88.7228391f ? INFINITY : 0.0f;
        int underflow = x < -87.3365447504f;
        x = x > 88.3762626647949f ? 88.3762626647949f : x;
        x = x < -87.3365447504f ? -87.3365447504f : x;
        /* round(x / ln 2) by adding and subtracting 1.5 * 2^23 (no rounding instruction needed) */
        float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        float r = x - n * 0.693359375f + n * 2.12194440e-4f;
        float r2 = r * r;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r2 + r + 1.0f;
        p = p * gk_pow2f(n);
        p = overflow != 0.0f ? overflow : p;
        return underflow ? 0.0f : p;
    }

    static inline double gk_exp(double x) {
        double overflow = x > 709.782712893384 ? INFINITY : 0.0;
        int underflow = x < -708.0;
        x = x > 709.0 ? 709.0 : x;
        x = x < -708.0 ? -708.0 : x;
        double n = (x * 1.4426950408889634073599 + 6755399441055744.0) - 6755399441055744.0;
        double r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6;
        double r2 = r * r;
        double p = ((1.26177193074810590878e-4 * r2 + 3.02994407707441961300e-2) * r2
                    + 9.99999999999999999910e-1) * r;
        double q = ((3.00198505138664455042e-6 * r2 + 2.52448340349684104192e-3) * r2
                    + 2.27265548208155028766e-1) * r2 + 2.00000000000000000009e0;
        p = (1.0 + 2.0 * p / (q - p)) * gk_pow2(n);
        p = overflow != 0.0 ? overflow : p;
        return underflow ? 0.0 : p;
    }

    static inline float gk_sigmoidf(float x) { return 1.0f / (1.0f + gk_expf(-x)); }
    static inline double gk_sigmoid(double x) { return 1.0 / (1.0 + gk_exp(-x)); }

    static inline float gk_tanhf(float x) {
        float a = x < 0 ? -x : x;
        float z = x * x;
        float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                        + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
        float large = 1.0f - 2.0f / (gk_expf(2.0f * a) + 1.0f);
        large = x < 0 ? -large : large;
        return a < 0.625f ? small : large;
    }

    static inline double gk_tanh(double x) {
        double a = x < 0 ? -x : x;
        double z = x * x;
        double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                   - 1.61468768441708447952e3;
        double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                   + 4.84406305325125486048e3;
        double small = x + x * z * p / q;
        double large = 1.0 - 2.0 / (gk_exp(2.0 * a) + 1.0);
        large = x < 0 ? -large : large;
        return a < 0.625 ? small : large;
    }
    """
    float gk_expf(float)
    double gk_exp(double)
    float gk_sigmoidf(float)
    double gk_sigmoid(double)
    float gk_tanhf(float)
    double gk_tanh(double)


cdef inline floating exp_(floating x) noexcept nogil:
    """e^x, branch-free so loops calling it vectorise."""
    if floating is float:
        return gk_expf(x)
    else:
        return gk_exp(x)


cdef inline floating sigmoid(floating x) noexcept nogil:
    """σ(x) = 1 / (1 + e^{-x}), branch-free so loops calling it vectorise."""
    if floating is float:
        return gk_sigmoidf(x)
    else:
        return gk_sigmoid(x)


cdef inline floating tanh_(floating x) noexcept nogil:
    """tanh(x), branch-free so loops calling it vectorise."""
    if floating is float:
        return gk_tanhf(x)
    else:
        return gk_tanh(x)


# The matrix products of gatekit's time loop (gatekit/core/_tiles.h), compiled into each module that
# cimports this file, with that module's instruction set. (A Cython gate plugin adds
# gatekit.get_include() to its include_dirs.)
cdef extern from "_tiles.h" nogil:
    int gk_gemm_float(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb,
                      float beta, float* C, Py_ssize_t ldc)
    int gk_gemm_double(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const double* A, Py_ssize_t lda, const double* B, Py_ssize_t ldb,
                       double beta, double* C, Py_ssize_t ldc)


cdef extern from "_tiles.h" nogil:
    ctypedef struct gk_barrier:
        pass
    void gk_barrier_wait(gk_barrier* barrier)


cdef inline void sync(void* barrier) noexcept nogil:
    """Wait until every thread of the call has reached this point (see `syncs` above); on one
    thread (barrier NULL) nothing to wait for."""
    if barrier != NULL:
        gk_barrier_wait(<gk_barrier*> barrier)


cdef inline int gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                     const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                     floating beta, floating* C, Py_ssize_t ldc) noexcept nogil:
    """C = op(A) @ op(B) + beta * C, all row-major: op(A) (m, k), op(B) (k, n), C (m, n);
    op(X) is X.T where trans_x is set; beta = 0 overwrites C. On the calling thread only, in
    register tiles (no BLAS: its threads would go on spinning after the call and slow the
    loop's). Returns -1 if it could not allocate a panel's copy (see gatekit/core/_tiles.h), else 0:
    a gate then reports it with ``out_of_memory``."""
    if floating is float:
        return gk_gemm_float(trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc)
    else:
        return gk_gemm_double(trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc)


cdef inline int post_gate_product(const void* product, void* post_product, bint transposed,
                                  const floating* A, floating* C, const floating* W,
                                  const Extent* e) noexcept nogil:
    """C[:, u0:u1] += A @ W.T, or with `transposed` A @ W, on this thread's units: through the
    step's post_product (the weights the loop packed for its gate's `products`: pass
    s.product and <void*> s.post_product) where the step has one packed this way round, else
    through gemm. -1 if gemm could not allocate (see gemm)."""
    cdef Py_ssize_t B = e.B, H = e.H, u0 = e.u0, u1 = e.u1
    if product != NULL:
        if floating is float:
            if (<ProductFloat> post_product)(product, transposed, A, C, e) == 0:
                return 0
        elif (<ProductDouble> post_product)(product, transposed, A, C, e) == 0:
            return 0
    if transposed:
        return gemm(False, False, B, u1 - u0, H, A, H, W + u0, H, 1, C + u0, H)
    return gemm(False, True, B, u1 - u0, H, A, H, W + u0 * H, H, 1, C + u0, H)


cdef void out_of_memory(Gate gate, int* error) noexcept nogil
