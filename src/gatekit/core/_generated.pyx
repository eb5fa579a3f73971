"""The compiled gate that runs kernels generated from a gate's NumPy definition.

``gatekit.core.equation`` traces an ``EquationGate``'s definition, ``gatekit.core.codegen``
writes C for its forward and backward steps (float and double) and ``gatekit.core.compiler``
builds it into a shared library in the build cache. The class it registers derives from
:class:`GeneratedGate`, whose ``kernels`` (a :class:`gatekit.core.compiler.Kernels`) name that
library, its four functions and, for each direction, the arrays the kernel takes in order:
``(kind, key)`` pairs of the step's fields (``SLOT_KINDS``), the key naming a block, a memory
or a parameter. Each call fills a small argument struct (``_generated.h``: the rows, the units
and the pointers with their row strides) from the step and calls the kernel through a pointer
found with ``dlsym``, without the GIL, on every thread of the call. The library stays open as
long as a gate uses it. The built-in gates built from their definitions are this gate too,
with their kernels linked into their module instead (``_builtin.pyx``'s ``DerivedGate``, through
``_generated.pxd``).
"""
import os

from gatekit.core._gate cimport Gate, StepFloat, StepDouble, sync

__all__ = ["GeneratedGate", "SLOT_KINDS"]

cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* path, int flags)
    void* dlsym(void* handle, const char* symbol)
    int dlclose(void* handle)
    char* dlerror()
    int RTLD_NOW
    int RTLD_LOCAL

#: The step fields a generated kernel may take, in the order of their codes. ``z`` and ``dz``
#: are keyed by a block of the gate; the ``mem_`` kinds by a memory's name; ``param`` and
#: ``dparam`` by one of the gate's parameters.
SLOT_KINDS = ("z", "dz", "s_t", "ds_t", "STM_prev", "LTM_prev", "E_t", "f_t", "i_t", "N_t",
              "LTM_t", "U_t", "V_t", "STM_t", "df_t", "di_t", "dN_t", "dLTM_t", "dU_t", "dV_t",
              "dSTM_t", "dLTM_prev", "dSTM_prev", "dE_t", "mem_prev", "mem_t", "dmem_t",
              "dmem_prev", "param", "dparam")
MAX_ARRAYS = GK_GENERATED_MAX_ARRAYS

ctypedef fused step_t:
    StepFloat
    StepDouble


cdef class GeneratedGate(Gate):
    """Base class of the gates compiled from an ``EquationGate``: set ``kernels`` on a subclass
    (``gatekit.core.equation`` does)."""
    differentiable = True
    kernels = None

    def __init__(self, Py_ssize_t input_size, Py_ssize_t hidden_size, Py_ssize_t offset=0,
                 columns=None, memories=None):
        Gate.__init__(self, input_size, hidden_size, offset, columns, memories)
        cls = type(self)
        kernels = cls.kernels
        if kernels is None:
            raise TypeError(f"{cls.__qualname__} has no compiled kernels: register it "
                            "(gatekit.register_gate) to compile it")
        self._open(kernels.library, kernels.symbols)
        self.syncs_first = cls.syncs == 1
        blocks, params = tuple(cls.blocks), list(cls.params)
        for direction, slots in enumerate((kernels.forward_slots, kernels.backward_slots)):
            if len(slots) > MAX_ARRAYS:
                raise ValueError(f"gate {cls.name!r}: its kernel takes {len(slots)} arrays; at "
                                 f"most {MAX_ARRAYS} are supported")
            self.count[direction] = len(slots)
            for k, (kind, key) in enumerate(slots):
                self.kind[direction][k] = SLOT_KINDS.index(kind)
                if kind in ("z", "dz"):
                    self.key[direction][k] = self.column[blocks.index(key)]
                elif kind.startswith(("mem_", "dmem_")):
                    self.key[direction][k] = self.cell_memories.index(key)
                elif kind in ("param", "dparam"):
                    self.key[direction][k] = params.index(key)
                else:
                    self.key[direction][k] = 0

    def _open(self, library, symbols):
        """Find the kernels ``symbols`` in ``library``, keeping it open (a subclass whose
        kernels are linked in finds them there instead)."""
        handle = dlopen(os.fsencode(library), RTLD_NOW | RTLD_LOCAL)
        if handle == NULL:
            raise ImportError(f"cannot load the generated gate {library}: "
                              f"{dlerror().decode(errors='replace')}")
        self.handle = handle
        for k, symbol in enumerate(symbols):
            address = dlsym(handle, symbol.encode())
            if address == NULL:
                raise ImportError(f"{library} has no function {symbol}")
            self.run[k] = <gk_generated_kernel> address

    def __dealloc__(self):
        if self.handle != NULL:
            dlclose(self.handle)

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        call(self, s, 0)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        call(self, s, 0)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        call(self, s, 1)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        call(self, s, 1)


cdef inline void* at(const void* base, Py_ssize_t offset, Py_ssize_t size) noexcept nogil:
    """``base`` moved on by ``offset`` entries of ``size`` bytes; NULL stays NULL."""
    if base == NULL:
        return NULL
    return <void*> (<const char*> base + offset * size)


cdef void call(GeneratedGate gate, step_t* s, int direction) noexcept nogil:
    cdef gk_generated_args a
    cdef Py_ssize_t k, key, B = s.e.B, H = s.e.H, stride
    cdef Py_ssize_t size = sizeof(float) if step_t is StepFloat else sizeof(double)
    cdef int kind
    cdef void* p
    if gate.syncs_first:
        # A kernel that sums over units reads every unit of what it reads: other threads' units
        # of z, of the earlier gates' outputs and, in backward, of the later gates' gradients.
        # (Its one sync comes first, so a thread that fails below has synced as the others.)
        sync(s.barrier)
    a.B, a.H, a.u0, a.u1 = B, H, s.e.u0, s.e.u1
    for k in range(gate.count[direction]):
        kind, key, stride = gate.kind[direction][k], gate.key[direction][k], H
        if kind == 0:
            p, stride = at(s.z, key, size), s.e.ldz
        elif kind == 1:
            p, stride = at(s.dz, key, size), s.e.ldz
        elif kind == 2:
            p, stride = <void*> s.s_t, s.e.ldz
        elif kind == 3:
            p, stride = <void*> s.ds_t, s.e.ldz
        elif kind == 4:
            p = <void*> s.STM_prev
        elif kind == 5:
            p = <void*> s.LTM_prev
        elif kind == 6:
            p, stride = <void*> s.E_t, s.e.D
        elif kind == 7:
            p = s.f_t
        elif kind == 8:
            p = s.i_t
        elif kind == 9:
            p = s.N_t
        elif kind == 10:
            p = s.LTM_t
        elif kind == 11:
            p = s.U_t
        elif kind == 12:
            p = s.V_t
        elif kind == 13:
            p = s.STM_t
        elif kind == 14:
            p = s.df_t
        elif kind == 15:
            p = s.di_t
        elif kind == 16:
            p = s.dN_t
        elif kind == 17:
            p = s.dLTM_t
        elif kind == 18:
            p = s.dU_t
        elif kind == 19:
            p = s.dV_t
        elif kind == 20:
            p = <void*> s.dSTM_t
        elif kind == 21:
            p = s.dLTM_prev
        elif kind == 22:
            p = s.dSTM_prev
        elif kind == 23:
            p, stride = s.dE_t, s.e.D
        elif kind == 24:
            p = at(s.mem_prev, key * B * H, size)
        elif kind == 25:
            p = at(s.mem_t, key * B * H, size)
        elif kind == 26:
            p = at(s.dmem_t, key * B * H, size)
        elif kind == 27:
            p = at(s.dmem_prev, key * B * H, size)
        elif kind == 28:
            p, stride = gate.param[key], 0
        else:
            p, stride = (NULL if s.dparam == NULL else s.dparam[key]), 0
        if p == NULL:
            missing(gate, kind, &s.error)
            return
        a.array[k], a.stride[k] = p, stride
    gate.run[2 * direction + (0 if step_t is StepFloat else 1)](&a)


cdef void missing(GeneratedGate gate, int kind, int* error) noexcept nogil:
    with gil:
        gate._error = RuntimeError(
            f"{gate.role} gate {gate.name!r} reads {SLOT_KINDS[kind]}, which this step does "
            "not have (a cell whose gates are handed no such array cannot run this gate)")
    error[0] = 1
