# The compiled gate that runs generated kernels (see _generated.pyx), declared for the modules
# whose gates are such gates with their kernels linked in (the built-in gates built from their
# definitions, _builtin.pyx).
from gatekit.core._gate cimport Gate

cdef extern from "_generated.h" nogil:
    enum: GK_GENERATED_MAX_ARRAYS
    ctypedef struct gk_generated_args:
        Py_ssize_t B, H, u0, u1
        void* array[GK_GENERATED_MAX_ARRAYS]
        Py_ssize_t stride[GK_GENERATED_MAX_ARRAYS]
    ctypedef void (*gk_generated_kernel)(const gk_generated_args* args) noexcept nogil


cdef class GeneratedGate(Gate):
    cdef void* handle
    cdef gk_generated_kernel run[4]          # forward float, forward double, backward float, double
    cdef int count[2]                        # arrays of the forward and backward kernels
    cdef bint syncs_first                    # a gate that sums over units: see `call`
    cdef int kind[2][GK_GENERATED_MAX_ARRAYS]
    cdef Py_ssize_t key[2][GK_GENERATED_MAX_ARRAYS]
