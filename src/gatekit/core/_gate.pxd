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


# gatekit/core/_fastmath.h (installed with gatekit, beside _tiles.h: a Cython gate plugin adds
# gatekit.get_include() to its include_dirs), also included by generated equation gates.
cdef extern from "_fastmath.h" nogil:
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
