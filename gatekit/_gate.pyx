"""The gate interface: the base class every gate derives from, and the adapter that runs a gate
written in Python/NumPy inside the compiled time loop.

A gate class declares, as class attributes:

``role``
    ``"forget"``, ``"learn"``, ``"remember"`` or ``"use"``.
``name``
    Its name within the role (``gatekit.Cell(..., forget="peephole")``).
``blocks``
    The blocks of the shared pre-activation it owns, for example ``("f",)``. Each block ``k``
    gives the cell the parameters ``W_k`` of shape ``(H, H + D)`` (acting on
    ``[STM_{t-1}, E_t]``, STM columns first) and ``b_k`` of shape ``(H,)``; the time loop computes
    ``z_k = W_k [STM_{t-1}, E_t] + b_k`` for every block in one matrix product per step.
``params``
    Its other parameters, ``{name: shape}`` with shapes written in ``"H"`` and ``"D"``, for
    example ``{"p_f": ("H",)}``. They reach a Cython gate as ``self.param[k]`` (declared order)
    and a Python gate as ``self.params[name]``.
``definition``
    The gate's NumPy definition after the equations: a function whose arguments are named after
    the quantities it reads (``STM_prev``, ``LTM_prev``, ``E_t``, outputs of earlier gates such as
    ``f_t``, and parameters such as ``W_f``), returning a dict of what it produces.
    ``gatekit.reference`` runs it, one step at a time; the tests hold the fast path to it.
``outputs``
    The quantities it produces; by default those of its role (``f_t``; ``i_t``, ``N_t``;
    ``LTM_t``; ``U_t``, ``V_t``, ``STM_t``). A forget gate that also provides its pre-activation
    to later gates lists ``"s_t"`` and leaves the full pre-activation in its block of ``z``.
``mixes_units``
    True when unit ``j`` of its output depends on other units (a matrix product over ``H``).
"""
import numpy as np
cimport numpy as cnp

from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv
from gatekit._blas_int cimport blas_int

cnp.import_array()

cdef extern from *:
    """
    #ifndef GATEKIT_DEBUG
    #define GATEKIT_DEBUG 0
    #endif
    """
    int GATEKIT_DEBUG

#: True when the core was built with GATEKIT_DEBUG=1 (bounds checks on).
DEBUG_BUILD = bool(GATEKIT_DEBUG)

ROLES = ("forget", "learn", "remember", "use")
ROLE_OUTPUTS = {
    "forget": ("f_t",),
    "learn": ("i_t", "N_t"),
    "remember": ("LTM_t",),
    "use": ("U_t", "V_t", "STM_t"),
}
MAX_PARAMS = 8


cdef class Gate:
    """Base class of every gate. Cython gates override ``forward_float`` and ``forward_double``
    (``noexcept nogil``); Python gates derive from :class:`PythonGate` instead."""
    role = None
    name = None
    blocks = ()
    params = {}
    definition = None
    outputs = None
    mixes_units = False

    def __init__(self, Py_ssize_t input_size, Py_ssize_t hidden_size, Py_ssize_t offset=0):
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.offset = offset
        self._bound = []

    @classmethod
    def provides(cls):
        """The quantities this gate produces."""
        return tuple(cls.outputs) if cls.outputs is not None else ROLE_OUTPUTS[cls.role]

    def bind(self, arrays):
        """Point the gate at its extra parameters (``arrays[name]`` for each name of ``params``,
        C-contiguous, of the cell's dtype). The cell calls this once, when it is built."""
        names = list(type(self).params)
        if len(names) > MAX_PARAMS:
            raise ValueError(f"gate {type(self).name!r} declares {len(names)} extra parameters; "
                             f"at most {MAX_PARAMS} are supported")
        self._bound = []
        cdef cnp.ndarray array
        for k, name in enumerate(names):
            array = arrays[name]
            if not array.flags.c_contiguous:
                raise ValueError(f"parameter {name!r} must be C-contiguous")
            self.param[k] = cnp.PyArray_DATA(array)
            self._bound.append(array)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        _no_forward(self, &s.error)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        _no_forward(self, &s.error)

    def take_error(self):
        """What the gate raised during the last call, or None; and forget it."""
        error, self._error = self._error, None
        return error


cdef void _no_forward(Gate gate, int* error) noexcept nogil:
    with gil:
        gate._error = NotImplementedError(
            f"gate {type(gate).__name__} computes nothing: a Cython gate overrides "
            "forward_float and forward_double, a Python gate derives from gatekit.PythonGate")
    error[0] = 1


cdef class PythonGate(Gate):
    """Base class of a gate written in Python/NumPy. Override :meth:`forward`.

    It runs inside the compiled time loop, which takes the GIL back for each call, so it is
    slower than a Cython gate but sees the same step. ``self.params`` maps the names of its
    extra parameters to NumPy arrays (write them in place only).
    """
    cdef dict params_arrays

    def bind(self, arrays):
        self.params_arrays = {name: arrays[name] for name in type(self).params}

    @property
    def params(self):
        return self.params_arrays

    def forward(self, step):
        """Compute this gate's outputs for one step, in place: ``step.f_t[...] = ...``.

        ``step`` has ``t``, ``z(block)`` (a block's pre-activation, ``W [STM_{t-1}, E_t] + b``),
        ``s_t`` (the forget gate's pre-activation, or None), ``STM_prev`` and ``LTM_prev``
        (read-only), and the arrays ``f_t``, ``i_t``, ``N_t``, ``LTM_t``, ``U_t``, ``V_t``,
        ``STM_t`` of this step, all of shape ``(B, H)``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        with gil:
            self._call(_step_arrays(s, self))
            if self._error is not None:
                s.error = 1

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        with gil:
            self._call(_step_arrays(s, self))
            if self._error is not None:
                s.error = 1

    cdef _call(self, step):
        try:
            self.forward(step)
        except BaseException as error:    # re-raised by the cell once the loop has stopped
            self._error = error


class StepArrays:
    """One time step as NumPy arrays, for :class:`PythonGate` (views on the loop's buffers)."""

    def __init__(self, t, z, offset, hidden_size, blocks, s_t, STM_prev, LTM_prev, f_t, i_t,
                 N_t, U_t, V_t, LTM_t, STM_t):
        self.t = t
        self._z, self._offset, self._hidden_size, self._blocks = z, offset, hidden_size, blocks
        self.s_t = s_t
        self.STM_prev, self.LTM_prev = STM_prev, LTM_prev
        self.f_t, self.i_t, self.N_t = f_t, i_t, N_t
        self.U_t, self.V_t, self.LTM_t, self.STM_t = U_t, V_t, LTM_t, STM_t

    def z(self, block):
        """The pre-activation ``W_block [STM_{t-1}, E_t] + b_block`` of one of the gate's blocks."""
        try:
            k = self._blocks.index(block)
        except ValueError:
            raise KeyError(f"this gate has no block {block!r}; its blocks are {self._blocks}") from None
        start = self._offset + k * self._hidden_size
        return self._z[:, start:start + self._hidden_size]


cdef _view(const floating* data, Py_ssize_t rows, Py_ssize_t cols, bint writeable=True):
    if data == NULL:
        return None
    cdef floating[:, ::1] view
    view = <floating[:rows, :cols]> <floating*> data
    array = np.asarray(view)
    array.flags.writeable = writeable
    return array


ctypedef fused step_t:
    StepFloat
    StepDouble


cdef _step_arrays(step_t* s, Gate gate):
    cdef Py_ssize_t B = s.e.B, H = s.e.H, ldz = s.e.ldz
    return StepArrays(
        s.e.t, _view(s.z, B, ldz), gate.offset, H, tuple(type(gate).blocks),
        None if s.s_t == NULL else _view(s.s_t, B, ldz, False)[:, :H],
        _view(s.STM_prev, B, H, False), _view(s.LTM_prev, B, H, False),
        _view(s.f_t, B, H), _view(s.i_t, B, H), _view(s.N_t, B, H),
        _view(s.U_t, B, H), _view(s.V_t, B, H), _view(s.LTM_t, B, H), _view(s.STM_t, B, H))


cdef void gemm_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                  const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                  floating beta, floating* C, Py_ssize_t ldc) noexcept nogil:
    """C = A @ B.T + beta * C, all row-major: A (m, k), B (n, k), C (m, n).

    BLAS is column-major, where a row-major matrix reads as its transpose, so this asks for
    C.T = B @ A.T: op(B as stored) = 'T', op(A as stored) = 'N'.
    """
    cdef char transa = b'T', transb = b'N'
    cdef blas_int M = n, N = m, K = k, LDA = ldb, LDB = lda, LDC = ldc, one = 1
    cdef floating alpha = 1
    if m == 0 or n == 0:
        return
    if m == 1:
        # One row: C.T (n) = B @ a is a matrix-vector product, much cheaper than a GEMM with N = 1.
        if floating is float:
            sgemv(&transa, &K, &M, &alpha, <float*> B, &LDA, <float*> A, &one, &beta, C, &one)
        else:
            dgemv(&transa, &K, &M, &alpha, <double*> B, &LDA, <double*> A, &one, &beta, C, &one)
        return
    if floating is float:
        sgemm(&transa, &transb, &M, &N, &K, &alpha, <float*> B, &LDA, <float*> A, &LDB,
              &beta, C, &LDC)
    else:
        dgemm(&transa, &transb, &M, &N, &K, &alpha, <double*> B, &LDA, <double*> A, &LDB,
              &beta, C, &LDC)
