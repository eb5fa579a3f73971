# The gate interface of the compiled core, for gates written in Cython.
#
# A time step hands every gate one StepFloat or StepDouble: pointers to this step's arrays, named
# after the quantities of gatekit.reference, all (B, H) with row stride H except the
# pre-activations `z` (row stride `e.ldz`). Gates run in role order forget -> learn -> remember ->
# use, so a gate may read what the earlier ones wrote. A gate computes rows [0, B) and units
# [u0, u1) only; a gate whose maths mixes units (a matrix product over H, like the course Use
# gate) sets `mixes_units` and is always handed all units.
#
# Write the maths once as a function over the `floating` fused type taking pointers and the
# Extent, and call it from both methods (forward_float, forward_double): see gatekit/_builtin.pyx.

ctypedef struct Extent:
    Py_ssize_t t             # the time step
    Py_ssize_t B, H          # rows (sequences) and units of every (B, H) array
    Py_ssize_t u0, u1        # the units this call computes
    Py_ssize_t ldz           # row stride of z

ctypedef struct StepFloat:
    Extent e
    # Forward: the step's quantities (in backward: what the forward pass kept of the step).
    float* z                 # pre-activations W_k [STM_{t-1}, E_t] + b_k of every block k
    const float* s_t         # the forget gate's full pre-activation (in z), or NULL if none
    const float* STM_prev
    const float* LTM_prev
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
    float** dparam           # gradients of this gate's extra parameters, in declared order
    int error                # set non-zero by a gate that failed; the loop then stops

# The same fields, in double precision.
ctypedef struct StepDouble:
    Extent e
    double* z
    const double* s_t
    const double* STM_prev
    const double* LTM_prev
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
    double** dparam
    int error

ctypedef fused floating:
    float
    double


cdef class Gate:
    cdef readonly Py_ssize_t offset     # column of this gate's first block in a row of z
    cdef readonly Py_ssize_t input_size, hidden_size
    cdef void* param[8]                 # data of this gate's extra parameters, in declared order
    cdef list _bound                    # keeps the arrays behind `param` alive
    cdef object _error                  # what a failed call raised, for the cell to re-raise

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


cdef extern from "<math.h>" nogil:
    float expf(float)
    double exp(double)
    float tanhf(float)
    double tanh(double)


cdef inline floating sigmoid(floating x) noexcept nogil:
    """σ(x) = 1 / (1 + e^{-x})"""
    if floating is float:
        return 1 / (1 + expf(-x))
    else:
        return 1 / (1 + exp(-x))


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef void gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
               const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
               floating beta, floating* C, Py_ssize_t ldc) noexcept nogil
