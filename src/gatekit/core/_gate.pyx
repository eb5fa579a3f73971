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
``reads``
    What some of its blocks read instead, ``{block: "event" | "STM"}``: a block that reads the
    event only has ``W_k`` of shape ``(H, D)`` and ``z_k = W_k E_t + b_k``, computed for every
    step before the time loop starts (minGRU, minLSTM, MUT1's update gate); one that reads the
    STM only has ``W_k`` of shape ``(H, H)`` and ``z_k = W_k STM_{t-1} + b_k`` (with its own bias:
    GRU's ``b_hn``). Two blocks of one gate, one of each, keep the input and recurrent parts of
    a pre-activation apart (GRU's candidate, whose reset gate multiplies the recurrent part
    only). The per-step product covers only the blocks that read the STM, and the weights a
    block does not read are neither stored in its parameter nor trained. A Cython gate finds
    block ``k`` at column ``self.column[k]`` of ``z``: blocks that read alike lie side by side
    from ``self.offset``, so a gate whose blocks all read alike may use ``offset + k * H``.
``block_biases``
    False for a gate whose blocks have no bias ``b_k``: the loop's ``z_k`` is then the product
    alone (the bias stays zero and is no parameter). For a gate that normalises its blocks'
    pre-activations across units, where a bias before the normalisation would be undone by it
    or mixed into the statistics, and that adds its own bias after (``layernorm``).
``params``
    Its other parameters, ``{name: shape}`` with shapes written in ``"H"``, ``"D"`` and positive
    integers, for example ``{"p_f": ("H",)}`` or one row per block, ``{"g_x": (4, "H")}``.
    They reach a Cython gate as ``self.param[k]`` (declared order, C-contiguous) and a Python
    gate as ``self.arrays[name]``.
``memories``
    Extra memories it keeps, besides the LTM, each (B, H) and carried from step to step like the
    LTM (sLSTM's normaliser ``n`` and stabiliser ``m``): a tuple of names, ``("n", "m")``, or a
    dict giving each its initial value, ``{"n": 0.0}`` (zeros otherwise). At most
    ``MAX_MEMORIES`` per cell; their names share the namespace of ``STM``, ``LTM`` and the
    parameters. A memory ``n`` has a previous value ``n_prev`` and a new one ``n_t`` at each
    step: the gate that declares it writes ``n_t`` (every unit of its units, every step), any
    gate may read ``n_prev``, and the gates after it ``n_t``. In backward, ``dn_t`` is complete
    when the declaring gate runs (it holds what step t + 1 sent back and what later gates
    added), and gates add into ``dn_prev``. A Cython gate finds its k-th memory at
    ``s.mem_prev + self.memory[k] * B * H`` (likewise ``mem_t``, ``dmem_t``, ``dmem_prev``); a
    Python gate as ``step.n_prev``, ``step.n_t``, ``step.dn_t``, ``step.dn_prev``; a NumPy
    definition as the arguments and outputs ``n_prev`` and ``n_t``, its backward definition
    ``dn_t`` and ``dn_prev``. They travel in ``state=`` after the STM and the LTM
    (``y, (stm, ltm, n, m) = cell(x)``; a pair ``(stm, ltm)`` leaves them at their initial
    values), in the tape, in ``Cell.trace`` (``n_t``), in layers, in ``gatekit.save``. A cell
    without extra memories does no work for them.
``init``
    Initial values of some of its parameters, ``{name: number}``; the others are drawn from
    U(-1/sqrt(H), 1/sqrt(H)).
``definition``
    The gate's NumPy definition after the equations: a function whose arguments are named after
    the quantities it reads (``STM_prev``, ``LTM_prev``, ``E_t``, outputs of earlier gates such as
    ``f_t``, and parameters such as ``W_f``), returning a dict of what it produces.
    ``gatekit.reference`` runs it, one step at a time; the tests hold the fast path to it.
    What it reads is a promise: in a cell whose blocks all read the event only, a gate whose
    definition reads neither ``STM_prev`` nor ``LTM_prev`` may be called once for the rows of
    many steps (``e.B`` = steps × sequences, ``e.t = -1``, ``STM_prev`` and ``LTM_prev`` not
    for it to read; the scan of docs/cells-and-gates.md), so its kernel must treat rows alike;
    its ``finish`` then runs once per such chunk of rows, so it must add a sum over rows.
``backward_definition``
    Optional: the NumPy gradients of ``definition`` (see ``gatekit.reference``), for
    ``gatekit.reference.backward``.
``trace``
    Optional: what else the gate wants shown when a cell is traced, as a function whose
    arguments name traced quantities (``f_t``, ``LTM_t``... each (T, B, H)) or parameters,
    returning ``{name: array}`` broadcastable to (T, B, H). ``Cell.trace`` calls it.
``differentiable``
    True for a Cython gate that implements ``backward_float`` and ``backward_double``. (A
    Python gate is differentiable when it overrides ``backward``.)
``outputs``
    The quantities it produces; by default those of its role (``f_t``; ``i_t``, ``N_t``;
    ``LTM_t``; ``U_t``, ``V_t``, ``STM_t``). A forget gate that also provides its pre-activation
    to later gates lists ``"s_t"`` and leaves the full pre-activation in its block of ``z``.
``mixes_units``
    True when unit ``j`` of its output depends on other units (a matrix product over ``H``):
    one thread runs it, with all units, while the others wait.
``syncs``
    Instead of ``mixes_units``, for a Cython gate that mixes units but can share the work: how
    many times each of its forward and backward steps calls ``sync(s.barrier)``
    (gatekit/core/_gate.pxd). After a sync a thread may read what every thread wrote before
    it. Two patterns: a product over units (course, mgu, mut1: each thread writes its units of
    the product's input to ``work``, syncs, then computes its units of the product), and a
    reduction over units, such as a normalisation over several gates' pre-activations or over
    ``LTM_t`` (layernorm: sync once the quantity is complete, then every thread computes each
    row's statistics over all units itself, in one order, and applies them to its own units;
    in backward the gradient of the normalised quantity is left, own units, in a gradient the
    gate has read, sync, and the same). The second needs no scratch and gives the same bits on
    any number of threads; it costs O(B H) per thread against the products' O(B H (H + D)).
``uses_work``
    For a gate with ``syncs``: whether it shares the step's ``work`` between the threads
    (True unless it says otherwise). A cell has at most one gate with ``syncs`` that uses
    ``work``; gates with ``syncs`` that do not may be several in a cell.
``products``
    For a gate with ``syncs`` whose product over ``H`` is its own recurrent product after
    another gate (course's ``W_u (LTM_{t-1} ⊙ f_t)``, MGU's ``W_hn (i_t ⊙ STM_{t-1})``, MUT1's
    ``W_hh (σ(z_r) ⊙ STM_{t-1})``): the name of that ``(H, H)`` parameter among its ``params``,
    ``("W_u",)``. The loop then packs the weight once per call, each thread its own units (rows
    of W forward, columns backward), and the step offers the product on them:
    ``post_gate_product(s.product, <void*> s.post_product, transposed, A, C, W, &s.e)`` adds to
    the thread's units of ``C`` those of ``A @ W.T``, or with ``transposed`` (in backward, the
    gradient sent back to the product's input) of ``A @ W``, ``A`` and ``C`` (B, H). The rule:
    write your units of ``A``, ``sync(s.barrier)``, then call it, then use your units of ``C``
    (one of the gate's ``syncs``). Where the step has no packed product (``s.product`` NULL: a
    gate without ``products``, or a gate driven by other code) the same call runs ``gemm``. The
    weight's gradient is the gate's, one product over the whole sequence in ``finish``. At most
    one gate of a cell declares a product, and that one product only.
``input_size_is_hidden_size``
    True for a gate that adds the event to the memory unit by unit (MUT1's ``tanh(E_t)``): a
    cell with it refuses an ``input_size`` other than its ``hidden_size``.
``stm_is_ltm``
    True for a Use gate whose STM is the LTM (``memory``): the cell then has one memory, and
    refuses an initial state whose two halves differ.
``stm_by_unit``
    True for a gate that reads ``STM_prev`` itself, unit by unit against its own H-wide
    quantities (MGU's ``f_t ⊙ STM_{t-1}``, MUT1's ``r ⊙ STM_{t-1}``), rather than only through
    its blocks' products: a cell with a projected STM (``proj_size=``, where STM_{t-1} is P
    wide and the gates are handed no ``STM_prev``) refuses it.

A gate needs nothing to run under the regularisers of the recurrence (``zoneout=``,
``recurrent_dropout=``, options of every cell): with recurrent dropout the step's ``STM_prev``
is the STM the gates read, ``m ⊙ STM_{t-1}``, in the recurrent product and in a gate's own
reads alike, and ``dSTM_prev`` is the gradient with respect to it; with zoneout the gates
compute the candidates (``LTM_t`` is LTM~_t, also in ``finish``, and the use gate's ``STM_t``
is STM~_t) and ``dLTM_t``, ``dSTM_t`` are their gradients, while ``LTM_prev`` is the zoned
memory of the step before. The loop zones and masks around the gates. The one thing a gate
must not do is read ``STM_t`` in its backward step: under zoneout it holds the zoned STM.
"""
import numpy as np
cimport numpy as cnp

cnp.import_array()

from gatekit.core import declared
from gatekit.core.declared import ROLE_OUTPUTS

cdef extern from *:
    """
    #ifndef GATEKIT_DEBUG
    #define GATEKIT_DEBUG 0
    #endif
    """
    int GATEKIT_DEBUG

__all__ = ["BLOCK_READS", "DEBUG_BUILD", "elementwise", "Gate", "has_avx2_fma", "has_avx512",
           "MAX_BLOCKS", "MAX_MEMORIES", "MAX_PARAMS",
           "no_backward_message", "PythonGate", "ROLE_OUTPUTS", "ROLES", "StepArrays"]

#: True when the core was built with GATEKIT_DEBUG=1 (bounds checks on).
DEBUG_BUILD = bool(GATEKIT_DEBUG)

cdef extern from *:
    """
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int gk_has_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    static int gk_has_avx512(void) {
        __builtin_cpu_init();
        return gk_has_avx2_fma() && __builtin_cpu_supports("avx512f")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
               && __builtin_cpu_supports("avx512bw");
    }
    #else
    static int gk_has_avx2_fma(void) { return 0; }
    static int gk_has_avx512(void) { return 0; }
    #endif
    """
    int gk_has_avx2_fma()
    int gk_has_avx512()


def has_avx2_fma():
    """Whether this CPU runs AVX2 and FMA instructions."""
    return bool(gk_has_avx2_fma())


def has_avx512():
    """Whether this CPU runs the AVX-512 instructions of gatekit's AVX-512 build (F, VL, DQ,
    BW), as well as AVX2 and FMA."""
    return bool(gk_has_avx512())

ROLES = ("forget", "learn", "remember", "use")
MAX_PARAMS = 8
MAX_BLOCKS = 8
MAX_MEMORIES = 4
#: What a block may read besides [STM_{t-1}, E_t] (see ``Gate.reads``).
BLOCK_READS = ("event", "STM")


cdef class Gate:
    """Base class of every gate. Cython gates override ``forward_float`` and ``forward_double``
    (``noexcept nogil``); Python gates derive from :class:`PythonGate` instead."""
    role = None
    name = None
    blocks = ()
    params = {}
    memories = ()
    init = {}
    reads = {}
    definition = None
    backward_definition = None
    trace = None
    outputs = None
    mixes_units = False
    syncs = 0
    products = ()
    uses_work = True
    block_biases = True
    stm_is_ltm = False
    stm_by_unit = False
    input_size_is_hidden_size = False
    differentiable = False

    def __init__(self, Py_ssize_t input_size, Py_ssize_t hidden_size, Py_ssize_t offset=0,
                 columns=None, memories=None):
        """``memories``: the names of all the extra memories of the cell the gate is part of,
        in the order of their slots (by default its own, in declared order)."""
        cdef Py_ssize_t k
        own = tuple(type(self).memory_defaults())
        memories = own if memories is None else tuple(memories)
        if len(memories) > MAX_MEMORIES or any(name not in memories for name in own):
            raise ValueError(f"gate {type(self).name!r}: the cell's memories {memories} must "
                             f"number at most {MAX_MEMORIES} and hold its own, {own}")
        self.cell_memories = memories
        for k in range(len(own)):
            self.memory[k] = memories.index(own[k])
        blocks = tuple(type(self).blocks)
        if columns is None:
            columns = [offset + k * hidden_size for k in range(len(blocks))]
        if len(columns) != len(blocks) or len(blocks) > MAX_BLOCKS:
            raise ValueError(f"gate {type(self).name!r}: one column per block (at most "
                             f"{MAX_BLOCKS}) expected; got {len(columns)} for blocks {blocks}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.offset = columns[0] if blocks else offset
        for k in range(len(blocks)):
            self.column[k] = columns[k]
        self._bound = []

    @property
    def columns(self):
        """The column of each of its blocks in a row of the pre-activations ``z``."""
        cdef Py_ssize_t k
        return tuple([self.column[k] for k in range(len(type(self).blocks))])

    @property
    def memory_slots(self):
        """The slot of each of its own memories among the cell's (``self.memory[k]``)."""
        cdef Py_ssize_t k
        return tuple([self.memory[k] for k in range(len(type(self).memory_defaults()))])

    # What the declarations mean (gatekit.core.declared: readable before anything is built).
    memory_defaults = classmethod(declared.memory_defaults)
    block_reads = classmethod(declared.block_reads)

    @classmethod
    def shapes(cls, input_size, hidden_size):
        """The shape of each of its parameters, by name, for a cell of these sizes: ``W_k`` and
        ``b_k`` of every block (by what it reads), then its ``params``."""
        D, H = input_size, hidden_size
        columns = {"both": H + D, "event": D, "STM": H}
        shapes = {}
        for block in cls.blocks:
            shapes[f"W_{block}"] = (H, columns[cls.block_reads(block)])
            if cls.block_biases:
                shapes[f"b_{block}"] = (H,)
        for name, dims in dict(cls.params).items():
            shapes[name] = tuple(H if dim == "H" else D if dim == "D" else int(dim)
                                 for dim in dims)
        return shapes

    provides = classmethod(declared.provides)

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

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        _no_backward(self, &s.error)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        _no_backward(self, &s.error)

    cdef void finish_float(self, StepFloat* s) noexcept nogil:
        pass

    cdef void finish_double(self, StepDouble* s) noexcept nogil:
        pass

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


cdef void _no_backward(Gate gate, int* error) noexcept nogil:
    with gil:
        gate._error = NotImplementedError(no_backward_message(type(gate)))
    error[0] = 1


def no_backward_message(cls):
    return (f"{cls.role} gate {cls.name!r} ({cls.__qualname__}) defines no backward pass, so "
            "this cell cannot compute gradients; give the gate a backward (see gatekit.Gate)")


cdef class PythonGate(Gate):
    """Base class of a gate written in Python/NumPy. Override :meth:`forward`.

    It runs inside the compiled time loop, which takes the GIL back for each call, so it is
    slower than a Cython gate but sees the same step. ``self.arrays`` maps the names of its
    extra parameters (those declared in ``params``) to NumPy arrays.
    """
    cdef dict params_arrays
    # The arrays behind the buffers of the calls running this gate: every step array a call
    # hands to the gate keeps them alive, so a gate that keeps one past its call (to log
    # activations, say) holds memory, not a dangling pointer.
    cdef list _buffer_owners

    def __cinit__(self, *args, **kwargs):
        self._buffer_owners = []

    def _hold_buffers(self, owner):
        """Make the step arrays of the call that is starting keep ``owner`` alive."""
        self._buffer_owners.append(owner)

    def _release_buffers(self, owner):
        """The call that held ``owner`` is over (its step arrays still hold it)."""
        for k, held in enumerate(self._buffer_owners):
            if held is owner:
                del self._buffer_owners[k]
                return

    def bind(self, arrays):
        self.params_arrays = {name: arrays[name] for name in type(self).params}

    @property
    def arrays(self):
        """The arrays of this gate's extra parameters, by name (write them in place only)."""
        return self.params_arrays

    def forward(self, step):
        """Compute this gate's outputs for one step, in place: ``step.f_t[...] = ...``.

        ``step`` has ``t``, ``z(block)`` (a block's pre-activation, ``W [STM_{t-1}, E_t] + b``,
        or what the block ``reads``), ``s_t`` (the forget gate's pre-activation, or None),
        ``STM_prev``, ``LTM_prev`` and ``E_t`` (read-only, ``E_t`` (B, D)), and the arrays
        ``f_t``, ``i_t``, ``N_t``, ``LTM_t``, ``U_t``, ``V_t``,
        ``STM_t`` of this step, all of shape ``(B, H)``; for each extra memory ``n`` of the
        cell (see ``memories``), ``n_prev`` (read-only) and ``n_t``.

        The arrays are views on the loop's buffers, and keep those buffers alive: one kept
        after the call is safe to read and write, but a later call of the cell may reuse the
        memory. To log activations, keep a copy.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, step):
        """Add this gate's share of the gradients for one step, in place (``+=``).

        Besides the forward arrays of the step, ``step`` has ``dz(block)``, ``ds_t``, ``dSTM_t``
        (read it, don't write it), ``df_t``, ``di_t``, ``dN_t``, ``dU_t``, ``dV_t``, ``dLTM_t``,
        ``dLTM_prev``, ``dSTM_prev`` and ``dE_t`` (for a use of ``STM_prev`` or ``E_t`` outside
        ``z``; the loop adds what passes through ``z``), ``dn_t`` and ``dn_prev`` for each extra
        memory ``n``, and ``dparams[name]``. A gate that does
        not override this cannot be
        trained: asking for gradients raises NotImplementedError before any work is done.
        """
        raise NotImplementedError(no_backward_message(type(self)))

    def finish(self, step):
        """Optional: called once after the last backward step, with every array spanning all
        T * B rows. The place for a weight gradient that is one matrix product over the
        whole sequence."""

    @classmethod
    def is_differentiable(cls):
        return cls.backward is not PythonGate.backward

    cdef void forward_float(self, StepFloat* s) noexcept nogil:
        with gil:
            self._call(self.forward, _step_arrays(s, self), &s.error)

    cdef void forward_double(self, StepDouble* s) noexcept nogil:
        with gil:
            self._call(self.forward, _step_arrays(s, self), &s.error)

    cdef void backward_float(self, StepFloat* s) noexcept nogil:
        with gil:
            self._call(self.backward, _step_arrays(s, self), &s.error)

    cdef void backward_double(self, StepDouble* s) noexcept nogil:
        with gil:
            self._call(self.backward, _step_arrays(s, self), &s.error)

    cdef void finish_float(self, StepFloat* s) noexcept nogil:
        with gil:
            self._call(self.finish, _step_arrays(s, self), &s.error)

    cdef void finish_double(self, StepDouble* s) noexcept nogil:
        with gil:
            self._call(self.finish, _step_arrays(s, self), &s.error)

    cdef void _call(self, method, step, int* error):
        try:
            method(step)
        except BaseException as exception:    # re-raised by the cell once the loop has stopped
            self._error = exception
            error[0] = 1


class StepArrays:
    """One time step as NumPy arrays, for :class:`PythonGate`: views on the loop's buffers,
    named like the fields of the compiled step (gradients are None outside backward)."""

    def __init__(self, t, hidden_size, columns, blocks, z, dz, dparams, **arrays):
        self.t = t
        self._hidden_size, self._columns, self._blocks = hidden_size, columns, blocks
        self._z, self._dz = z, dz
        self.dparams = dparams
        self.__dict__.update(arrays)

    def _block(self, buffer, block):
        try:
            k = self._blocks.index(block)
        except ValueError:
            raise KeyError(f"this gate has no block {block!r}; its blocks are {self._blocks}") from None
        start = self._columns[k]
        return buffer[:, start:start + self._hidden_size]

    def z(self, block):
        """The pre-activation ``W_block [STM_{t-1}, E_t] + b_block`` of one of the gate's blocks."""
        return self._block(self._z, block)

    def dz(self, block):
        """The gradient of the loss with respect to :meth:`z` (backward only; add into it)."""
        return self._block(self._dz, block)


cdef _view(const floating* data, Py_ssize_t rows, Py_ssize_t cols, object owner,
           bint writeable=True):
    if data == NULL:
        return None
    cdef cnp.npy_intp dims[2]
    dims[0], dims[1] = rows, cols
    cdef int typenum = cnp.NPY_FLOAT if floating is float else cnp.NPY_DOUBLE
    cdef cnp.ndarray array = cnp.PyArray_SimpleNewFromData(2, dims, typenum, <void*> data)
    # The array's base is what owns the memory, so the array cannot outlive it.
    cnp.set_array_base(array, owner)
    if not writeable:
        array.flags.writeable = False
    return array


ctypedef fused step_t:
    StepFloat
    StepDouble


cdef _step_arrays(step_t* s, PythonGate gate):
    cdef Py_ssize_t B = s.e.B, H = s.e.H, ldz = s.e.ldz, k = 0
    owner = tuple(gate._buffer_owners)
    dparams = None
    if s.dparam != NULL:
        dparams = {}
        for name, array in gate.params_arrays.items():
            dparams[name] = _view(s.dparam[k], 1, <Py_ssize_t> array.size, owner).reshape(
                array.shape)
            k += 1
    step = StepArrays(
        s.e.t, H, gate.columns, tuple(type(gate).blocks),
        _view(s.z, B, ldz, owner), _view(s.dz, B, ldz, owner), dparams,
        s_t=None if s.s_t == NULL else _view(s.s_t, B, ldz, owner, False)[:, :H],
        ds_t=None if s.ds_t == NULL else _view(s.ds_t, B, ldz, owner)[:, :H],
        STM_prev=_view(s.STM_prev, B, H, owner, False),
        LTM_prev=_view(s.LTM_prev, B, H, owner, False),
        E_t=_view(s.E_t, B, s.e.D, owner, False),
        f_t=_view(s.f_t, B, H, owner), i_t=_view(s.i_t, B, H, owner),
        N_t=_view(s.N_t, B, H, owner), U_t=_view(s.U_t, B, H, owner),
        V_t=_view(s.V_t, B, H, owner), LTM_t=_view(s.LTM_t, B, H, owner),
        STM_t=_view(s.STM_t, B, H, owner), dSTM_t=_view(s.dSTM_t, B, H, owner, False),
        df_t=_view(s.df_t, B, H, owner), di_t=_view(s.di_t, B, H, owner),
        dN_t=_view(s.dN_t, B, H, owner), dU_t=_view(s.dU_t, B, H, owner),
        dV_t=_view(s.dV_t, B, H, owner), dLTM_t=_view(s.dLTM_t, B, H, owner),
        dLTM_prev=_view(s.dLTM_prev, B, H, owner), dSTM_prev=_view(s.dSTM_prev, B, H, owner),
        dE_t=_view(s.dE_t, B, s.e.D, owner))
    if gate.cell_memories:
        _add_memories(step, s, gate.cell_memories, owner)
    return step


cdef _add_memories(step, step_t* s, tuple names, owner):
    """``n_prev``, ``n_t``, ``dn_t``, ``dn_prev`` of every memory ``n`` of the cell (None where
    the loop has none: gradients outside backward, every memory in finish)."""
    cdef Py_ssize_t B = s.e.B, H = s.e.H, k
    for k, name in enumerate(names):
        setattr(step, f"{name}_prev", None if s.mem_prev == NULL else
                _view(s.mem_prev + k * B * H, B, H, owner, False))
        setattr(step, f"{name}_t", None if s.mem_t == NULL else
                _view(s.mem_t + k * B * H, B, H, owner))
        setattr(step, f"d{name}_t", None if s.dmem_t == NULL else
                _view(s.dmem_t + k * B * H, B, H, owner))
        setattr(step, f"d{name}_prev", None if s.dmem_prev == NULL else
                _view(s.dmem_prev + k * B * H, B, H, owner))


cdef void out_of_memory(Gate gate, int* error) noexcept nogil:
    """Make the step fail with a MemoryError (a gemm could not allocate its copy)."""
    with gil:
        gate._error = MemoryError(f"{gate.role} gate {gate.name!r}: out of memory in a matrix "
                                  "product")
    error[0] = 1


def elementwise(str function, floating[::1] x):
    """``sigmoid`` or ``tanh`` of every entry of a 1-D array, by the compiled gates' own
    approximations (for testing their accuracy)."""
    out = np.empty(x.shape[0], np.float32 if floating is float else np.float64)
    cdef floating[::1] result = out
    cdef Py_ssize_t j
    cdef bint is_sigmoid = function == "sigmoid"
    if not is_sigmoid and function != "tanh":
        raise ValueError(f"function must be 'sigmoid' or 'tanh'; got {function!r}")
    for j in range(x.shape[0]):
        result[j] = sigmoid(x[j]) if is_sigmoid else tanh_(x[j])
    return out
