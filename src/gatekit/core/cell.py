"""The memory cell: four gates composed, parameters named after the equations, and the checks
that stand between a caller and the compiled time loop."""
import copy
import inspect
import math
import numbers
import os
import weakref
from collections.abc import Mapping

import numpy as np

from gatekit.core import _projection, instruction_sets, plugins, reference
from gatekit.core._gate import MAX_MEMORIES, MAX_PARAMS, no_backward_message, PythonGate, ROLES

__all__ = ["as_float_array", "Cell", "check_lengths", "check_recurrent_dropout", "check_zoneout",
           "FLOAT_DTYPES", "INPUTS", "MASKS", "Parameters", "refuse_changed_parameters", "Tape",
           "THREADS", "writable"]

INPUTS = ("E_t", "STM_prev", "LTM_prev")
# The runs of packed blocks, in order, and the columns of W each reads ([STM_{t-1}, E_t]).
_RUNS = ("STM", "both", "event")
_COLUMNS = {"both": lambda H: slice(None), "event": lambda H: slice(H, None),
            "STM": lambda H: slice(0, H)}
_loop = instruction_sets.load("_loop")
_scan = instruction_sets.load("_scan")
# A composition that runs as a scan does so, when ``Cell.scan`` is None, from this many rows
# (steps × sequences) on: below it the time loop's fixed cost per call is the smaller (see
# docs/cells-and-gates.md, "The scan").
SCAN_ROWS = 256
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _default_threads():
    """GATEKIT_NUM_THREADS if set, else the CPUs this process may run on."""
    value = os.environ.get("GATEKIT_NUM_THREADS", "")
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"GATEKIT_NUM_THREADS must be a whole number of threads, at least "
                             f"1; got {value!r}") from None
        return _threads("GATEKIT_NUM_THREADS", threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # no affinity masks (macOS)
        return os.cpu_count() or 1


def _threads(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of threads, at least 1; got {value!r}")
    return int(value)


# Read once, at import: a call must not pay for a system call to find it.
THREADS = _default_threads()


class Parameters(Mapping):
    """The cell's parameters by symbol (``W_f``, ``b_f``, ``p_f``, ...), as NumPy arrays.

    The arrays are views on the buffers the compiled core reads, so writing into them
    (``params["W_f"][...] = value``, or ``params["W_f"] = value``, which copies) changes what the
    cell computes. Shapes and dtypes are fixed.
    """

    def __init__(self, arrays):
        self._arrays = arrays

    def __getitem__(self, name):
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"this cell has no parameter {name!r}; its parameters are "
                           f"{', '.join(self._arrays)}") from None

    def __setitem__(self, name, value):
        target = self[name]
        value = np.asarray(value)
        # Complex values would lose their imaginary part, strings would fail inside NumPy
        # without naming the parameter: only real numbers are taken.
        if value.dtype.kind not in "fiu":
            raise TypeError(f"parameter {name!r} takes real numbers ({target.dtype}); got an "
                            f"array of dtype {value.dtype}")
        if value.shape != target.shape:
            raise ValueError(f"parameter {name!r} has shape {target.shape}; got {value.shape}")
        target[...] = value

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        shapes = ", ".join(f"{name}: {array.shape}" for name, array in self._arrays.items())
        return f"Parameters({shapes})"


def _size(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _float_dtype(dtype):
    if dtype is None:        # np.dtype(None) would quietly mean float64
        raise TypeError("dtype must be float32 or float64; got None")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64; got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64; got {dtype}")
    return dtype


def as_float_array(name, value, dtype, shape):
    """``value`` as a C-contiguous array of ``dtype``, checked against ``shape`` (None = any)."""
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point numbers; got dtype {array.dtype}")
    if array.ndim != len(shape) or any(want is not None and got != want
                                       for got, want in zip(array.shape, shape)):
        expected = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"
        raise ValueError(f"{name} must have shape {expected}; got {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def writable(array):
    """``array``, or a copy of it if it is read-only: the compiled loop takes its inputs as
    writable buffers (a memory-mapped file opened read-only, a frozen array)."""
    return array if array.flags.writeable else array.copy()


def refuse_changed_parameters(names):
    """Refuse a backward pass over a tape whose parameters ``names`` changed since it was
    recorded: its activations belong to the old values, so the gradients would match neither."""
    raise ValueError(f"the parameters {', '.join(map(repr, names))} changed after the forward "
                     "pass that recorded this tape (an optimiser step in between?); its "
                     "activations belong to the old values, so the gradients would match "
                     "neither: run forward(..., keep=True) again")


def check_lengths(lengths, T, B):
    """``lengths`` as B integers in [1, T], in any order, or None (every sequence T steps)."""
    if lengths is None:
        return None
    array = np.asarray(lengths)
    if array.dtype.kind not in "iu" or array.dtype == np.bool_:
        raise TypeError(f"lengths must be integers, one per sequence; got dtype {array.dtype}")
    if array.shape != (B,):
        raise ValueError(f"lengths must hold one length per sequence of x, shape ({B},); got "
                         f"shape {array.shape}")
    for bad, what in ((np.flatnonzero(array < 1), "below 1"),
                      (np.flatnonzero(array > T), f"longer than the T = {T} steps of x")):
        if bad.size:
            b = int(bad[0])
            raise ValueError(f"lengths[{b}] = {int(array[b])} is {what}; every length must lie "
                             f"in [1, {T}]")
    return np.ascontiguousarray(array, dtype=np.intp)


def _scan_refusal(classes, blocks):
    """Why a composition of these gate classes cannot run as a scan, or None if it can: the
    scan needs every block to read the event only, and the remember gate's
    LTM_t = f_t ⊙ LTM_{t-1} + i_t ⊙ N_t to be the only reader of the previous memories."""
    stm_blocks = [block for cls, block in blocks if cls.block_reads(block) != "event"]
    if stm_blocks:
        return f"its blocks {', '.join(map(repr, stm_blocks))} read the STM"
    for cls in classes:
        if cls.role == "remember":
            if cls.definition is not reference.remember:
                return (f"its remember gate {cls.name!r} is not the standard "
                        "LTM_t = f_t ⊙ LTM_{t-1} + i_t ⊙ N_t")
            continue
        previous = [name for name in ("STM_prev", "LTM_prev")
                    if name in inspect.signature(cls.definition).parameters]
        if previous:
            return f"its {cls.role} gate {cls.name!r} reads {' and '.join(previous)}"
    return None


# The masks of one call of a cell with regularisers (see Cell.draw_masks), by name.
MASKS = ("zoneout_LTM", "zoneout_STM", "dropout_STM")
# The cell's mask generator is a stream of its seed apart from the parameters' own.
_MASK_STREAM = 0x6d61736b


def _probability(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1); got {value!r}")
    return float(value)


def check_zoneout(zoneout):
    """``zoneout`` as a pair of floats (z_c, z_h), each a probability in [0, 1)."""
    if not (isinstance(zoneout, (tuple, list)) and len(zoneout) == 2):
        raise ValueError(f"zoneout must be a pair (z_c, z_h) of probabilities in [0, 1), for "
                         f"the LTM and the STM; got {zoneout!r}")
    return (_probability("zoneout[0] (z_c, of the LTM)", zoneout[0]),
            _probability("zoneout[1] (z_h, of the STM)", zoneout[1]))


def check_recurrent_dropout(p):
    """``p`` as a float, a probability in [0, 1)."""
    return _probability("recurrent_dropout", p)


def _mask_generator(seed):
    """The generator of a cell's masks: a stream of ``seed`` that the parameters' draws do not
    touch, so the same seed gives the same parameters with or without regularisers."""
    if isinstance(seed, (np.random.Generator, np.random.BitGenerator)):
        return np.random.default_rng(seed).spawn(1)[0]
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return np.random.default_rng(np.random.SeedSequence(
        sequence.entropy, spawn_key=(*sequence.spawn_key, _MASK_STREAM),
        pool_size=sequence.pool_size))


def _mix32(x):
    """lowbias32 on uint32 arrays, wrapping as C does: the compiled loop's gk_mix32."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _below(rate):
    """The hashes below which a unit is picked with probability ``rate`` (in [0, 1))."""
    return int(rate * 2 ** 32)


class _DrawnMasks:
    """The masks of one call in training, as the keys they come from: the compiled loop
    computes each zoneout mask where it applies it, forward and backward, so that no (T, B, H)
    mask is drawn or stored; unit j of sequence b at step t keeps its memory where
    mix32(mix32(key + t * 0x9e3779b9) ^ (b * H + j)) < z 2^32. :meth:`arrays` computes the same
    masks in NumPy (for the tape, the trace and the reference). The recurrent dropout mask,
    (B, H), is computed here: 0 where mix32(mix32(key) ^ (b * H + j)) < p 2^32."""

    def __init__(self, cell, T, B):
        H = cell.hidden_size
        if B * H >= 2 ** 32:
            raise ValueError(f"masks are drawn for at most 2**32 units of a step; got B * H = "
                             f"{B * H}")
        # One key per mask and call: the LTM's and the STM's zoneout, the dropout.
        self.keys = tuple(int(key) for key in cell.mask_rng.integers(0, 2 ** 32, 3, np.uint64))
        if cell.one_memory:
            # One memory, one mask: the STM, which is the LTM, is zoned where the LTM is.
            self.keys = (self.keys[0], self.keys[0], self.keys[2])
        self.below = tuple(_below(z) for z in cell.zoneout)
        self.shape, self.dtype = (T, B, H), cell.dtype
        self.dropout = None
        p = cell.recurrent_dropout
        if p > 0:
            hashes = _mix32(_mix32(np.array([self.keys[2]], np.uint32))
                            ^ np.arange(B * H, dtype=np.uint32))
            keep = (hashes >= np.uint32(_below(p))).reshape(B, H)
            self.dropout = keep.astype(self.dtype) / self.dtype.type(1 - p)
        self._arrays = None

    def loop_keys(self):
        return (self.keys[0], self.keys[1], self.below[0], self.below[1])

    def _zoneout(self, stream, rate):
        if self.below[stream] == 0:
            return rate
        T, B, H = self.shape
        steps = np.arange(T, dtype=np.uint32) * np.uint32(0x9E3779B9)
        step_keys = _mix32(np.array([self.keys[stream]], np.uint32) + steps)
        hashes = _mix32(step_keys[:, None] ^ np.arange(B * H, dtype=np.uint32)[None, :])
        return (hashes < np.uint32(self.below[stream])).astype(self.dtype).reshape(T, B, H)

    def arrays(self, zoneout):
        """The masks as :meth:`Cell.draw_masks` returns them (computed once)."""
        if self._arrays is None:
            self._arrays = {"zoneout_LTM": self._zoneout(0, zoneout[0]),
                            "zoneout_STM": self._zoneout(1, zoneout[1]),
                            "dropout_STM": self.dropout}
        return self._arrays


def _differentiable(cls):
    if issubclass(cls, PythonGate):
        return cls.is_differentiable()
    return bool(cls.differentiable)


def _add_parameter(arrays, sources, name, array, source, registry):
    """Add parameter ``name`` of ``source`` = (gate class, what of it declares the name); the
    names of every gate of a cell share one namespace, so a clash names both gates."""
    if name in arrays:
        def describe(cls, what):
            entry = registry.gates[cls.role].get(cls.name)
            plugin = f" of plugin {entry.plugin!r}" if entry is not None else ""
            return f"{cls.role} gate {cls.name!r}{plugin} ({what})"
        raise ValueError(f"parameter {name!r} is declared twice in this cell: by "
                         f"{describe(*sources[name])} and by {describe(*source)}; the blocks "
                         "and parameters of a cell's four gates share one namespace, so one of "
                         "the gates must rename its block or parameter")
    arrays[name] = array
    sources[name] = source


class _Spares:
    """Scratch arrays a cell reuses from one call to the next. Freeing megabytes after each call
    and asking for them again at the next costs a page fault per 4 KiB (the C library hands large
    blocks back to the system): at T = 1000, B = 1, H = 64 that took six times as long as the
    computation, and at T = 200, B = 32, H = 256 the faults of a fresh tape made a two-thread
    forward pass as slow as one thread (the threads queue for the process's page table and wait
    for each other at every step). A call takes a buffer out and puts it back when done, so two
    threads calling one cell at once never share one (the second allocates its own)."""

    LIMIT = 256 << 20       # bytes; larger ones are not kept: their faults are a small share

    def __init__(self):
        self._free = {}

    def take(self, name, size, dtype):
        buffer = self._free.pop(name, None)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            buffer = np.empty(max(size, 1), dtype)
        return buffer

    def give(self, name, buffer):
        if buffer.nbytes <= self.LIMIT:
            self._free[name] = buffer

    def lend(self, name, size, dtype):
        """A buffer taken as ``take`` does that comes back when the last array viewing it is
        gone: a tape's, which its caller keeps as long as they like (a training step drops it
        after backward, so the next step's tape reuses its pages)."""
        buffer = self.take(name, size, dtype)
        # Views of an array over a memoryview keep that memoryview alive, not the buffer: its
        # end is when no view of the loan remains.
        loan = np.frombuffer(memoryview(buffer), dtype)
        weakref.finalize(loan.base, self.give, name, buffer).atexit = False
        return loan


class Tape:
    """What a forward pass kept for the backward pass: the input, the initial STM and every
    step's pre-activations, gate outputs and memories. Tied to the cell that recorded it; the
    backward pass reads it and does not change it, so it can be used more than once."""

    def __init__(self, cell, x, stm0, z, acts, ltm, y, lengths, mem=None, masks=None,
                 candidates=None):
        self.cell, self.x, self.stm0, self.lengths = cell, x, stm0, lengths
        self.z, self.acts, self.ltm = z, acts, ltm
        # The gates' extra memories, (T + 1, M, B, H) as ltm, or None without any.
        self.mem = mem
        # A projected cell's U_t ⊙ V_t of every step, (T, B, H) (y holds the projected STM_t).
        self.uv = None
        # The regularisers' masks of the call (see Cell.draw_masks), or the keys of the masks
        # drawn for it, and, when the LTM is zoned, the LTM~_t the gates computed.
        self._masks, self.candidates = masks, candidates
        # The caller may change the y it was given; the tape keeps its own.
        self.y = y.copy()
        # The activations hold for these parameters only: backward checks they are unchanged.
        self.params = cell._parameter_snapshot()

    @property
    def masks(self):
        """The zoneout and recurrent dropout masks of the call, as ``Cell.draw_masks`` returns
        them; None for a cell without regularisers."""
        if isinstance(self._masks, _DrawnMasks):
            return self._masks.arrays(self.cell.zoneout)
        return self._masks

    def __repr__(self):
        T, B, _ = self.x.shape
        return f"Tape(T={T}, B={B}, cell={self.cell!r})"


class Cell:
    """An LSTM memory cell made of four gates: learn, forget, remember and use.

    ``variant`` names a variant (``gatekit.variants()``); ``forget=``, ``learn=``, ``remember=``
    and ``use=`` swap the variant's gate of that role for another registered gate
    (``gatekit.gates()``). Parameters are drawn uniformly from ±1/sqrt(hidden_size), as PyTorch
    does, from ``numpy.random.default_rng(seed)``.

    Calling the cell runs it over a sequence: ``y, (stm, ltm) = cell(x, state=None)`` with
    ``x`` of shape (T, B, input_size); ``y`` (T, B, hidden_size) holds the short-term memory of
    every step and ``(stm, ltm)`` the final short- and long-term memories. A cell whose gates
    keep extra memories (``memories``, e.g. sLSTM's ``("n", "m")``) returns them after these:
    ``(stm, ltm, n, m)``.

    ``threads`` caps the threads one call may use (default: the ``GATEKIT_NUM_THREADS``
    environment variable at import, else the CPUs the process may run on). A call splits the
    units between threads only when its steps are large enough to gain from it.

    ``zoneout=(z_c, z_h)`` and ``recurrent_dropout=p`` regularise the recurrence in training
    mode (:meth:`train`, the default; :meth:`eval` turns them into their expectation): see
    :meth:`draw_masks` and the training page of the documentation.

    ``proj_size=P`` projects the STM (LSTM with projection, Sak et al. 2014, as
    ``torch.nn.LSTM(proj_size=P)``): the gates compute U_t ⊙ V_t at width H, and the STM carried
    on and output is STM_t = W_hr (U_t ⊙ V_t), P wide, with the parameter ``W_hr`` (P, H); the
    blocks read [STM_{t-1}, E_t] through ``W_k`` (H, P + D). The LTM stays H wide. Only gates
    that read STM_{t-1} through their blocks alone compose with it; a projected cell has no
    zoneout or recurrent dropout.
    ``scan``: a composition in which only the remember gate carries anything from one step to
    the next (minGRU, minLSTM) can run as a scan over the whole sequence instead of the time
    loop (docs/cells-and-gates.md, "The scan"): ``None`` (default) where that is faster,
    ``True`` always, ``False`` never. An attribute, which may be changed later. A cell with
    zoneout or recurrent dropout never scans.
    """

    def __init__(self, input_size, hidden_size, variant="standard", *, forget=None, learn=None,
                 remember=None, use=None, dtype=np.float32, seed=None, threads=None,
                 zoneout=(0.0, 0.0), recurrent_dropout=0.0, proj_size=None, scan=None):
        self.input_size = D = _size("input_size", input_size)
        self.zoneout = check_zoneout(zoneout)
        self.recurrent_dropout = check_recurrent_dropout(recurrent_dropout)
        self.training = True
        self.mask_rng = _mask_generator(seed)
        self.hidden_size = H = _size("hidden_size", hidden_size)
        self.dtype = _float_dtype(dtype)
        self.threads = None if threads is None else _threads("threads", threads)
        self._spares = _Spares()
        self.variant = variant
        registry = plugins.registry()
        classes = registry.compose(variant, {"forget": forget, "learn": learn,
                                             "remember": remember, "use": use})
        self._check_composition(classes)
        for cls in classes:
            if cls.input_size_is_hidden_size and D != H:
                raise ValueError(f"{cls.role} gate {cls.name!r} adds the event to the memory unit "
                                 f"by unit, so input_size must equal hidden_size; got input_size "
                                 f"({D}) and hidden_size ({H})")
        self._classes = classes
        self.proj_size = None if proj_size is None else _size("proj_size", proj_size)
        if self.proj_size is not None:
            self._check_projection(classes)
        # The width of the STM the blocks read: P when projected.
        R = H if self.proj_size is None else self.proj_size
        if self.one_memory and self.zoneout[0] != self.zoneout[1]:
            raise ValueError(f"zoneout must be (z, z) for this cell: its STM is its LTM (use gate "
                             f"{classes[3].name!r}), one memory, zoned once; got {zoneout!r}")

        # The packed blocks, in three runs by what they read (STM only, both, event only), each
        # in role and declared order: the loop's products then skip whole runs of columns. The
        # columns a block does not read stay zero and belong to no parameter.
        blocks = sorted(((cls, block) for cls in classes for block in cls.blocks),
                        key=lambda entry: _RUNS.index(entry[0].block_reads(entry[1])))
        self._weights = np.zeros((len(blocks) * H, R + D), self.dtype)
        self._bias = np.zeros(len(blocks) * H, self.dtype)
        self._blocks = {}                       # block name: (first row, columns of W it reads)
        arrays, sources = {}, {}
        for k, (cls, block) in enumerate(blocks):
            read = _COLUMNS[cls.block_reads(block)](R)
            self._blocks[block] = (k * H, read)
            rows = slice(k * H, (k + 1) * H)
            _add_parameter(arrays, sources, f"W_{block}", self._weights[rows, read],
                           (cls, f"block {block!r}"), registry)
            if cls.block_biases:
                _add_parameter(arrays, sources, f"b_{block}", self._bias[rows],
                               (cls, f"block {block!r}"), registry)
        runs = [cls.block_reads(block) for cls, block in blocks]
        self._reads = (runs.count("STM") * H, (len(runs) - runs.count("event")) * H)
        for cls in classes:
            shapes = cls.shapes(D, H)
            for name in cls.params:
                _add_parameter(arrays, sources, name, np.zeros(shapes[name], self.dtype),
                               (cls, f"parameter {name!r}"), registry)
        self._projection = None
        if self.proj_size is not None:
            if "W_hr" in arrays:
                raise ValueError(f"parameter 'W_hr' of {sources['W_hr'][0].role} gate "
                                 f"{sources['W_hr'][0].name!r} is the projection's name: this "
                                 "gate cannot take part in a cell with proj_size")
            self._projection = arrays["W_hr"] = np.zeros((self.proj_size, H), self.dtype)
        self.params = Parameters(arrays)
        self.reset_parameters(seed)

        self._memory_defaults = self._collect_memories(classes, arrays)
        self.gates = tuple(cls(D, H, 0, [self._blocks[block][0] for block in cls.blocks],
                               self.memories) for cls in classes)
        for gate in self.gates:
            gate.bind(arrays)
        forget_gate = self.gates[0]
        self._forget_preactivation = forget_gate.offset if (
            "s_t" in forget_gate.provides() and forget_gate.blocks) else -1
        self._scan_refusal = _scan_refusal(classes, blocks) or (
            "its gates carry extra memories" if self.memories else None)
        self.scan = scan

    @property
    def scan(self):
        """Whether calls run as a scan over the whole sequence: None where it is faster (a
        composition that can, from SCAN_ROWS steps × sequences), True always, False never."""
        return self._scan

    @scan.setter
    def scan(self, value):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"scan must be None, True or False; got {value!r}")
        if value and self._scan_refusal is not None:
            raise ValueError(f"scan=True: this composition cannot run as a scan, since "
                             f"{self._scan_refusal}")
        self._scan = value

    def _takes_scan(self, T, B):
        """Whether a call of T steps of B sequences runs as a scan. (Anything that carries a
        step's STM or LTM to the next other than the remember gate rules it out here.)"""
        if (self._scan is False or self._scan_refusal is not None or T == 0
                or self.regularised):
            return False
        return self._scan is True or T * B >= SCAN_ROWS

    @property
    def memories(self):
        """The names of the gates' extra memories, in the order they take in ``state``
        (after the STM and the LTM); ``()`` for a cell without any."""
        return tuple(self._memory_defaults)

    @staticmethod
    def _collect_memories(classes, params):
        """The extra memories of the gates, in role and declared order: ``{name: initial}``."""
        memories, owners = {}, {}
        reserved = {"STM", "LTM", "E", "f", "i", "N", "U", "V", "s"}
        for cls in classes:
            for name, value in cls.memory_defaults().items():
                if name in memories or name in reserved or name in params:
                    first = owners.get(name, "the cell")
                    raise ValueError(f"memory {name!r} of {cls.role} gate {cls.name!r} is "
                                     f"declared already (by {first}); the memories of a cell's "
                                     "gates share one namespace with its quantities and "
                                     "parameters")
                memories[name], owners[name] = value, f"{cls.role} gate {cls.name!r}"
        if len(memories) > MAX_MEMORIES:
            raise ValueError(f"the gates of this cell declare {len(memories)} extra memories "
                             f"({', '.join(memories)}); at most {MAX_MEMORIES} are supported")
        return memories

    @staticmethod
    def _check_composition(classes):
        known = set(INPUTS)
        for cls in classes:
            known |= {f"{name}_prev" for name in cls.memory_defaults()}
        for cls in classes:
            known |= {f"{kind}_{block}" for block in cls.blocks for kind in "Wb"}
            known |= set(cls.params)
        for cls in classes:
            reads = inspect.signature(cls.definition).parameters
            missing = [name for name in reads if name not in known]
            if missing:
                raise ValueError(f"{cls.role} gate {cls.name!r} reads {', '.join(missing)}, which "
                                 "no earlier gate of this composition provides")
            known |= set(cls.provides())
        sharing = [f"{cls.role} gate {cls.name!r}" for cls in classes
                   if cls.syncs and cls.uses_work]
        if len(sharing) > 1:
            raise ValueError(f"{' and '.join(sharing)} both share the step's work between "
                             "threads (syncs); a cell may have one such gate")

    def _check_projection(self, classes):
        """A projected STM is P wide and the gates are handed no STM_{t-1}: refuse the gates
        that read it unit by unit, and what the projected loop does not carry."""
        wide = [f"{cls.role} gate {cls.name!r}" for cls in classes
                if issubclass(cls, PythonGate) or cls.stm_by_unit or cls.stm_is_ltm]
        if wide:
            raise ValueError(f"proj_size needs gates that read STM_{{t-1}} through their "
                             f"blocks only; {' and '.join(wide)} read it unit by unit at width "
                             "hidden_size (or are written in Python, or make the STM the LTM)")
        keeping = [f"{cls.role} gate {cls.name!r}" for cls in classes if cls.memory_defaults()]
        if keeping:
            raise ValueError(f"proj_size is not supported with extra memories; "
                             f"{' and '.join(keeping)} keep some")
        if self.regularised:
            raise ValueError(f"proj_size is not supported with zoneout or recurrent dropout; "
                             f"got zoneout={self.zoneout!r}, "
                             f"recurrent_dropout={self.recurrent_dropout!r}")

    def reset_parameters(self, seed=None):
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)), in the order of ``params``,
        except those a gate gives an initial value (its ``init``)."""
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.hidden_size)
        fixed = {name: value for cls in self._classes for name, value in cls.init.items()}
        for name, array in self.params.items():
            array[...] = rng.uniform(-bound, bound, array.shape)
            if name in fixed:
                array[...] = fixed[name]

    def copy(self, dtype=None):
        """A new cell with the same gates, options, mode and a copy of the parameters, in
        ``dtype`` (by default this cell's); its mask generator starts from a copy of this
        cell's."""
        other = Cell(self.input_size, self.hidden_size, self.variant, **self.gate_names,
                     dtype=self.dtype if dtype is None else dtype, threads=self.threads,
                     zoneout=self.zoneout, recurrent_dropout=self.recurrent_dropout,
                     proj_size=self.proj_size, scan=self.scan)
        for name, array in self.params.items():
            other.params[name] = array
        other.training = self.training
        # a generator of the same kind in the same state: the copy draws the masks this cell
        # would draw next
        other.mask_rng = copy.deepcopy(self.mask_rng)
        return other

    def train(self, mode=True):
        """Training mode (the default): each call draws new zoneout and recurrent dropout masks.
        Returns the cell."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: zoneout and recurrent dropout give way to their expectation (the
        memories mix with their previous values in the proportions z_c, z_h; no dropout).
        Returns the cell."""
        return self.train(False)

    @property
    def regularised(self):
        """Whether the cell has zoneout or recurrent dropout."""
        return self.zoneout != (0.0, 0.0) or self.recurrent_dropout > 0

    def draw_masks(self, T, B):
        """The masks a call over T steps of B sequences applies, in the cell's mode, as a dict
        (``gatekit.reference.forward`` takes the same):

        - ``"zoneout_LTM"``, ``"zoneout_STM"``: in training, (T, B, H) arrays of 0 and 1 (1 where
          the unit keeps its previous memory, with probability z_c, z_h); in evaluation, and
          in training without zoneout, the number z_c, z_h (their expectation);
        - ``"dropout_STM"``: in training with recurrent dropout, a (B, H) array, 0 with
          probability p and 1 / (1 - p) elsewhere, one per sequence for every step; else None.

        In training each call draws new masks from :attr:`mask_rng` (seeded from ``seed``): the
        masks a call of the cell would draw next, whatever the cell's dtype.
        """
        T, B = int(T), _size("B", B)
        if not self.training:
            z_c, z_h = self.zoneout
            return {"zoneout_LTM": z_c, "zoneout_STM": z_h, "dropout_STM": None}
        return _DrawnMasks(self, T, B).arrays(self.zoneout)

    @property
    def one_memory(self):
        """True when the cell's STM is its LTM (Use gate ``memory``: GRU, minGRU, JANET...): a
        state given to it is one memory twice, and the gradient of that memory is
        ``grads["stm0"] + grads["ltm0"]``."""
        return bool(self._classes[3].stm_is_ltm)

    @property
    def gate_names(self):
        """The name of the gate in each role."""
        return {role: type(gate).name for role, gate in zip(ROLES, self.gates)}

    def __repr__(self):
        gates = ", ".join(f"{role}={name!r}" for role, name in self.gate_names.items())
        regularisers = (f", zoneout={self.zoneout}, recurrent_dropout={self.recurrent_dropout}"
                        if self.regularised else "")
        if self.proj_size is not None:
            regularisers += f", proj_size={self.proj_size}"
        return (f"Cell(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"variant={self.variant!r}, {gates}, dtype={self.dtype.name}{regularisers})")

    def __call__(self, x, state=None, lengths=None, masks=None):
        """``cell.forward(x, state, lengths=lengths)`` without a tape: ``y, (stm, ltm)``."""
        y, state = self.forward(x, state, lengths=lengths, masks=masks)
        return y, state

    def forward(self, x, state=None, keep=False, lengths=None, masks=None):
        """Run the cell over ``x`` (T, B, input_size) from ``state`` = (STM, LTM), each (B, H),
        or zeros; a cell with extra memories (:attr:`memories`) takes them after these, or
        starts them at their gates' initial values. Returns ``y`` (T, B, H) and the final
        ``(STM, LTM)`` (then the extra memories); with ``keep=True`` also the :class:`Tape` that
        :meth:`backward` needs.

        ``lengths`` (B integers in [1, T], in any order) makes a ragged batch: sequence b ends
        after ``lengths[b]`` steps; its later outputs are zeros, its final state is the one of
        its last step, and its padded steps take no part in the gradients.

        ``masks`` (as :meth:`draw_masks` returns them) fixes the zoneout and recurrent dropout
        masks of the call, whatever the cell's options and mode; by default a cell with
        regularisers draws them (in training) or applies their expectation (in evaluation).
        The tape keeps them for the backward pass.
        """
        x = as_float_array("x", x, self.dtype, (None, None, self.input_size))
        T, B, _ = x.shape
        if B == 0:
            raise ValueError("x must hold at least one sequence; got batch size 0")
        stm0, ltm0 = self._initial_state(state, B)
        lengths = check_lengths(lengths, T, B)
        if masks is not None:
            masks = self._check_masks(masks, T, B)
        elif self.regularised:
            masks = _DrawnMasks(self, T, B) if self.training else self.draw_masks(T, B)
        if keep:
            # The tape must not share memory with arrays the caller may change before backward.
            x = x.copy()
            stm0 = stm0.copy() if state is not None else stm0
        else:
            x, stm0 = writable(x), writable(stm0)
        H, KH = self.hidden_size, self._weights.shape[0]
        if self.proj_size is not None:
            return self._forward_projected(x, stm0, ltm0, keep, lengths)
        memories0 = self._initial_memories(state, B)
        M = len(memories0)
        y = np.empty((T, B, H), self.dtype)
        if T == 0 and not keep:
            return y, (stm0.copy(), ltm0.copy(), *(m.copy() for m in memories0))
        if self._takes_scan(T, B):
            return self._scan_forward(x, stm0, ltm0, y, keep, lengths)
        threads = self._call_threads()
        single = self.dtype == np.float32
        size, layout = _loop.workspace_layout(T, B, self.input_size, H, KH, keep, threads, single,
                                              M)
        # Without a tape the workspace is scratch, reused; a tape keeps its own until it is gone.
        workspace = self._spares.lend("tape", size, self.dtype) if keep else self._spares.take(
            "workspace", size, self.dtype)

        def buffer(name):
            offset, shape = layout[name]
            return workspace[offset:offset + math.prod(shape)].reshape(shape)

        ltm = buffer("ltm")
        ltm[0] = ltm0
        mem = buffer("mem") if M else None
        if M:
            mem[0] = memories0
        regularisers = candidates = None
        if masks is not None:
            regularisers, scratch = self._regularisers(masks, T, B, len(ltm) - 1, threads, keep)
            candidates = regularisers[4]
        buffers = (workspace, x, stm0, y)
        self._hold_buffers(buffers)
        try:
            failed = _loop.forward(self.gates, self._weights, self._bias, x, stm0, y, workspace,
                                   keep, lengths, self._forget_preactivation, self._reads,
                                   threads, memories=M, regularisers=regularisers)
            if failed >= 0:
                self._raise_gate_error(failed)
            final = (y[-1].copy() if T else stm0.copy(), ltm[T % len(ltm)].copy())
            if M:
                final += tuple(mem[T % len(mem)].copy())
        finally:
            self._release_buffers(buffers)
            if not keep:
                self._spares.give("workspace", workspace)
            if regularisers is not None:
                for name, spare in scratch.items():
                    self._spares.give(name, spare)
        tape = Tape(self, x, stm0, buffer("z"), buffer("acts"), ltm, y, lengths, mem, masks,
                    candidates) if keep else None
        if lengths is not None:
            y[np.arange(T)[:, None] >= lengths[None, :]] = 0
        return (y, final) if not keep else (y, final, tape)

    def _forward_projected(self, x, stm0, ltm0, keep, lengths):
        """forward() of a cell with a projected STM (gatekit.core._projection)."""
        T, B, _ = x.shape
        H, P, KH = self.hidden_size, self.proj_size, self._weights.shape[0]
        kept = T if keep else 1
        y = np.empty((T, B, P), self.dtype)
        shapes = ((T, B, KH), (5, kept, B, H), (kept + 1, B, H), (kept, B, H), (B, H))
        sizes = [math.prod(shape) for shape in shapes]
        workspace = self._spares.lend("tape", sum(sizes), self.dtype) if keep else (
            self._spares.take("workspace", sum(sizes), self.dtype))
        starts = np.cumsum([0] + sizes)
        z, acts, ltm, uv, work = (workspace[start:start + size].reshape(shape)
                                  for start, size, shape in zip(starts, sizes, shapes))
        ltm[0] = ltm0
        try:
            failed = _projection.forward(self.gates, self._weights, self._bias, self._projection,
                                         x, stm0, y, z, acts, ltm, uv, work, lengths,
                                         self._forget_preactivation, self._reads,
                                         self._call_threads())
            if failed == -2:
                raise MemoryError("the projected loop could not allocate a product's scratch")
            if failed >= 0:
                self._raise_gate_error(failed)
            final = (y[-1].copy() if T else stm0.copy(), ltm[T % len(ltm)].copy())
        finally:
            if not keep:
                self._spares.give("workspace", workspace)
        tape = None
        if keep:
            tape = Tape(self, x, stm0, z, acts, ltm, y, lengths)
            tape.uv = uv
        if lengths is not None:
            y[np.arange(T)[:, None] >= lengths[None, :]] = 0
        return (y, final) if not keep else (y, final, tape)

    def _scan_forward(self, x, stm0, ltm0, y, keep, lengths):
        """forward() as a scan: the same results and the same tape as the time loop's."""
        T, B, _ = x.shape
        H, KH = self.hidden_size, self._weights.shape[0]
        S = T if keep else min(T, _scan.chunk_steps(B))
        chunk = min(T, _scan.chunk_steps(B))
        sizes = (S * B * KH, 5 * S * B * H, (S + 1) * B * H, chunk * B * H)
        workspace = self._spares.lend("tape", sum(sizes), self.dtype) if keep else (
            self._spares.take("workspace", sum(sizes), self.dtype))
        ends = np.cumsum(sizes)
        buffers = {"z": workspace[:ends[0]].reshape(S, B, KH),
                   "acts": workspace[ends[0]:ends[1]].reshape(5, S, B, H),
                   "ltm": workspace[ends[1]:ends[2]].reshape(S + 1, B, H),
                   "work": workspace[ends[2]:ends[3]].reshape(chunk * B, H)}
        ltm = buffers["ltm"]
        ltm[0] = ltm0
        held = (workspace, x, stm0, y)
        self._hold_buffers(held)
        try:
            failed = _scan.forward(self.gates, self._weights, self._bias, x, y, buffers["z"],
                                   buffers["acts"], ltm, buffers["work"], lengths,
                                   self._forget_preactivation, self._call_threads())
            if failed >= 0:
                self._raise_gate_error(failed)
            final = (y[-1].copy(), ltm[(T - 1) % S + 1].copy())
        finally:
            self._release_buffers(held)
            if not keep:
                self._spares.give("workspace", workspace)
        tape = Tape(self, x, stm0, buffers["z"], buffers["acts"], ltm, y, lengths) if keep else None
        if lengths is not None:
            y[np.arange(T)[:, None] >= lengths[None, :]] = 0
        return (y, final) if not keep else (y, final, tape)

    def _backward_projected(self, tape, dy, dstm, dltm):
        """backward() of a cell with a projected STM (gatekit.core._projection)."""
        T, B, D = tape.x.shape
        H, P, KH = self.hidden_size, self.proj_size, self._weights.shape[0]
        dy = writable(as_float_array("dy", dy, self.dtype, (T, B, P)))
        dstm_carry = (np.zeros((B, P), self.dtype) if dstm is None else
                      as_float_array("dstm", dstm, self.dtype, (B, P)).copy())
        dltm_carry = np.empty((2, B, H), self.dtype)
        dltm_carry[T % 2] = 0 if dltm is None else as_float_array("dltm", dltm, self.dtype, (B, H))
        dweights = np.zeros_like(self._weights)
        dbias = np.zeros_like(self._bias)
        grads = self._gradient_views(dweights, dbias)
        dparams = np.zeros((4, MAX_PARAMS), np.uintp)
        for g, gate in enumerate(self.gates):
            for k, name in enumerate(type(gate).params):
                dparams[g, k] = grads[name].ctypes.data
        dx = np.zeros((T, B, D), self.dtype)
        failed = _projection.backward(
            self.gates, self._weights, self._projection, tape.x, tape.stm0, tape.z, tape.acts,
            tape.ltm, tape.uv, tape.y, dy, dstm_carry, dltm_carry,
            np.empty((T, B, KH), self.dtype), np.empty((5, T, B, H), self.dtype), dweights,
            dbias, grads["W_hr"], dx, dparams, np.empty((T * B, H), self.dtype),
            np.empty((T, B, P), self.dtype), np.empty((2, B, H), self.dtype), tape.lengths,
            self._forget_preactivation, self._reads, self._call_threads())
        if failed == -2:
            raise MemoryError("the projected loop could not allocate a product's scratch")
        if failed >= 0:
            self._raise_gate_error(failed)
        grads.update(x=dx, stm0=dstm_carry, ltm0=dltm_carry[0])
        return grads

    def trace(self, x, state=None, lengths=None):
        """Every quantity the gates compute at every step, by the symbols of the equations:
        ``E_t``, ``f_t``, ``i_t``, ``N_t``, ``LTM_t``, ``U_t``, ``V_t``, ``STM_t``, ``s_t`` when
        the forget gate provides it, ``n_t`` for each extra memory ``n``, and what each gate's
        ``trace`` adds; each (T, B, ...).
        With zoneout or recurrent dropout also the call's masks (``zoneout_LTM``,
        ``zoneout_STM``, ``dropout_STM``, numbers in evaluation broadcast) and, when the LTM is
        zoned, ``LTM_candidate`` (LTM~_t, before zoneout; ``LTM_t`` and ``STM_t`` are zoned).
        The values are those of :meth:`forward` (the same compiled run). Padded steps of a
        ragged batch are NaN."""
        y, _, tape = self.forward(x, state, keep=True, lengths=lengths)
        T, B, _ = tape.x.shape
        quantities = {"E_t": tape.x, "f_t": tape.acts[0], "i_t": tape.acts[1],
                      "N_t": tape.acts[2], "LTM_t": tape.ltm[1:], "U_t": tape.acts[3],
                      "V_t": tape.acts[4], "STM_t": tape.y}
        if self.proj_size is not None:
            quantities["UV_t"] = tape.uv
        if self._forget_preactivation >= 0:
            start = self._forget_preactivation
            quantities["s_t"] = tape.z[:, :, start:start + self.hidden_size]
        for k, name in enumerate(self.memories):
            quantities[f"{name}_t"] = tape.mem[1:, k]
        if tape.masks is not None:
            quantities.update(self._traced_masks(tape, T, B))
        known = {**self.params, **quantities}
        for gate in self.gates:
            extra = type(gate).trace
            if extra is not None:
                arguments = inspect.signature(extra).parameters
                for name, value in extra(**{a: known[a] for a in arguments}).items():
                    quantities[name] = np.broadcast_to(value, (T, B, self.hidden_size))
        traced = {}
        for name, value in quantities.items():
            value = np.array(value, dtype=self.dtype)
            if tape.lengths is not None:
                value[np.arange(T)[:, None] >= tape.lengths[None, :]] = np.nan
            traced[name] = value
        return traced

    def backward(self, tape, dy, dstm=None, dltm=None, dmemories=None):
        """Backpropagation through time over a :class:`Tape` from ``forward(..., keep=True)``.

        ``dy`` (T, B, H) is the gradient of the loss with respect to the outputs ``y``; ``dstm``
        and ``dltm`` (B, H), with respect to the final STM and LTM (zero if None);
        ``dmemories``, with respect to the final extra memories (``{name: (B, H)}``, or one per
        name of ``memories`` in order; a missing or None one is zero). Returns a dict with one
        gradient per name of ``params``, plus ``"x"``, ``"stm0"`` and ``"ltm0"`` and, for each
        extra memory ``n``, ``"n0"``, each of the shape and dtype of what it is the gradient of.
        """
        if not isinstance(tape, Tape):
            raise TypeError(f"tape must be the Tape from cell.forward(x, keep=True); got "
                            f"{type(tape).__name__}")
        if tape.cell is not self:
            raise ValueError(f"tape was recorded by another cell ({tape.cell!r}); pass the tape "
                             "this cell's forward(..., keep=True) returned")
        for gate in self.gates:
            if not _differentiable(type(gate)):
                raise NotImplementedError(no_backward_message(type(gate)))
        changed = self._changed_since(tape.params)
        if changed:
            refuse_changed_parameters(changed)
        if self.proj_size is not None:       # no extra memories: dmemories has none to give
            return self._backward_projected(tape, dy, dstm, dltm)
        T, B, D = tape.x.shape
        H, KH = self.hidden_size, self._weights.shape[0]
        dy = writable(as_float_array("dy", dy, self.dtype, (T, B, H)))
        dstm_carry = np.empty((2, B, H), self.dtype)
        dstm_carry[0] = 0 if dstm is None else as_float_array("dstm", dstm, self.dtype, (B, H))
        dltm_carry = np.empty((2, B, H), self.dtype)
        dltm_carry[T % 2] = 0 if dltm is None else as_float_array("dltm", dltm, self.dtype, (B, H))
        dmem = self._final_memory_gradients(dmemories, T, B) if self.memories else None

        dweights = np.zeros_like(self._weights)
        dbias = np.zeros_like(self._bias)
        grads = self._gradient_views(dweights, dbias)
        dparams = np.zeros((4, MAX_PARAMS), np.uintp)
        for g, gate in enumerate(self.gates):
            for k, name in enumerate(type(gate).params):
                dparams[g, k] = grads[name].ctypes.data
        dx = np.zeros((T, B, D), self.dtype)
        threads = self._call_threads()
        if self._takes_scan(T, B):
            return self._scan_backward(tape, dy, dstm_carry[0], dltm_carry[T % 2], dweights,
                                       dbias, grads, dparams, dx, threads)
        sizes = {"dz": T * B * KH, "dacts": 5 * T * B * H, "work": max(T * B, B) * H,
                 "scratch": _loop.backward_scratch(T, B, D, H, KH, threads,
                                                   self.dtype == np.float32)}
        if tape._masks is not None:
            plan_threads = max(1, _loop.plan(T, B, D, H, KH, threads, self.dtype == np.float32)[0])
            sizes.update(inner=B * H, dropped=(plan_threads + 2) * B * H)
        spares = {name: self._spares.take(name, size, self.dtype) for name, size in sizes.items()}
        regularisers = None
        if tape._masks is not None:
            regularisers = self._loop_masks(tape._masks, tape.candidates,
                                            spares["dropped"][:sizes["dropped"]].reshape(-1, B, H),
                                            spares["inner"][:B * H].reshape(B, H))
        buffers = (tape, dy, dstm_carry, dltm_carry, dweights, dbias, dx, grads, spares, dmem)
        self._hold_buffers(buffers)
        try:
            dz = spares["dz"][:sizes["dz"]].reshape(T, B, KH)
            dacts = spares["dacts"][:sizes["dacts"]].reshape(5, T, B, H)
            failed = _loop.backward(
                self.gates, self._weights, tape.x, tape.stm0, tape.z, tape.acts, tape.ltm,
                tape.y, dy, dstm_carry, dltm_carry, dz, dacts, dweights, dbias, dx, dparams,
                spares["work"][:sizes["work"]].reshape(-1, H), spares["scratch"], tape.lengths,
                self._forget_preactivation, self._reads, threads, mem=tape.mem, dmem=dmem,
                regularisers=regularisers)
        finally:
            self._release_buffers(buffers)
            for name, buffer in spares.items():
                self._spares.give(name, buffer)
        if failed >= 0:
            self._raise_gate_error(failed)
        grads.update(x=dx, stm0=dstm_carry[0], ltm0=dltm_carry[0])
        for k, name in enumerate(self.memories):
            grads[f"{name}0"] = dmem[0, k].copy()
        return grads

    def _scan_backward(self, tape, dy, dstm, dltm, dweights, dbias, grads, dparams, dx, threads):
        """backward() of a cell that runs as a scan, over a tape of either path."""
        T, B, _ = tape.x.shape
        H, KH = self.hidden_size, self._weights.shape[0]
        C = min(T, _scan.chunk_steps(B))
        sizes = {"dz": C * B * KH, "dacts": 5 * C * B * H, "work": C * B * H,
                 "drows": 2 * C * B * H}
        spares = {name: self._spares.take(name, size, self.dtype) for name, size in sizes.items()}
        dltm = dltm.copy()
        buffers = (tape, dy, dstm, dltm, dweights, dbias, dx, grads, spares)
        self._hold_buffers(buffers)
        try:
            failed = _scan.backward(
                self.gates, self._weights, tape.x, tape.z, tape.acts, tape.ltm, tape.y, dy,
                dstm, dltm, spares["dz"][:sizes["dz"]].reshape(C, B, KH),
                spares["dacts"][:sizes["dacts"]].reshape(5, C, B, H),
                spares["drows"][:sizes["drows"]].reshape(2, C, B, H), dweights, dbias, dx,
                dparams, spares["work"][:sizes["work"]].reshape(C * B, H), tape.lengths,
                self._forget_preactivation, threads)
        finally:
            self._release_buffers(buffers)
            for name, buffer in spares.items():
                self._spares.give(name, buffer)
        if failed >= 0:
            self._raise_gate_error(failed)
        # Nothing reads the initial STM.
        grads.update(x=dx, stm0=np.zeros((B, H), self.dtype), ltm0=dltm)
        return grads

    def _final_memory_gradients(self, dmemories, T, B):
        """The (2, M, B, H) buffer backward alternates in, with the gradients of the final
        extra memories at [T % 2]."""
        names = self.memories
        dmem = np.empty((2, len(names), B, self.hidden_size), self.dtype)
        dmem[T % 2] = 0
        if dmemories is None:
            return dmem
        if isinstance(dmemories, Mapping):
            unknown = [name for name in dmemories if name not in names]
            if unknown:
                raise ValueError(f"dmemories names {', '.join(map(repr, unknown))}; this cell's "
                                 f"extra memories are {names}")
            given = [dmemories.get(name) for name in names]
        else:
            given = list(dmemories)
            if len(given) != len(names):
                raise ValueError(f"dmemories must hold one gradient per extra memory {names}; "
                                 f"got {len(given)}")
        for k, (name, value) in enumerate(zip(names, given)):
            if value is not None:
                dmem[T % 2, k] = as_float_array(f"dmemories[{name!r}]", value, self.dtype,
                                                (B, self.hidden_size))
        return dmem
    def _check_masks(self, masks, T, B):
        """Masks given to forward, checked and in the cell's dtype (see draw_masks)."""
        H = self.hidden_size
        if not isinstance(masks, Mapping) or set(masks) != set(MASKS):
            raise ValueError(f"masks must be a dict with the keys {', '.join(MASKS)} (as "
                             f"cell.draw_masks(T, B) returns it); got {masks!r:.200}")
        checked = {}
        for name, shape in (("zoneout_LTM", (T, B, H)), ("zoneout_STM", (T, B, H)),
                            ("dropout_STM", (B, H))):
            value = masks[name]
            if value is None and name == "dropout_STM":
                checked[name] = None
            elif isinstance(value, numbers.Real) and not isinstance(value, bool) and (
                    name != "dropout_STM"):
                checked[name] = _probability(f"masks[{name!r}]", value)
            else:
                checked[name] = as_float_array(f"masks[{name!r}]", value, self.dtype, shape)
        return checked

    def _loop_masks(self, masks, candidates, dropped, inner):
        """The regularisers tuple of the compiled loop (_loop.regulariser_buffers), for masks
        given (a dict) or drawn for the call (their keys)."""
        if isinstance(masks, _DrawnMasks):
            return (None, None, 0.0, 0.0, candidates, masks.dropout, dropped, inner,
                    masks.loop_keys())
        rates = {name: 0.0 if isinstance(value, np.ndarray) else value
                 for name, value in masks.items() if name != "dropout_STM"}
        arrays = {name: value if isinstance(value, np.ndarray) else None
                  for name, value in masks.items()}
        return (arrays["zoneout_LTM"], arrays["zoneout_STM"], rates["zoneout_LTM"],
                rates["zoneout_STM"], candidates, arrays["dropout_STM"], dropped, inner, None)

    def _regularisers(self, masks, T, B, kept, threads, keep):
        """The loop's regularisers for a forward call, with its buffers: LTM~_t of every kept
        step when the LTM is zoned (the tape's own when ``keep``), the threads' scratch."""
        H = self.hidden_size
        candidates = None
        team = max(1, _loop.plan(T, B, self.input_size, H, self._weights.shape[0], threads,
                                 self.dtype == np.float32)[0])
        scratch = {"dropped": self._spares.take("dropped", (team + 2) * B * H, self.dtype)}
        if isinstance(masks, _DrawnMasks):
            zoned = masks.below[0] != 0
        else:
            zoned = isinstance(masks["zoneout_LTM"], np.ndarray) or masks["zoneout_LTM"] != 0
        if zoned:
            size = kept * B * H
            if keep:
                candidates = np.empty((kept, B, H), self.dtype)
            else:
                scratch["candidates"] = self._spares.take("candidates", size, self.dtype)
                candidates = scratch["candidates"][:size].reshape(kept, B, H)
        dropped = scratch["dropped"][:(team + 2) * B * H].reshape(team + 2, B, H)
        return self._loop_masks(masks, candidates, dropped, None), scratch

    def _traced_masks(self, tape, T, B):
        """What the regularisers add to a trace: the masks of the call (numbers in
        evaluation) and the LTM~_t the gates computed before zoneout."""
        traced = {}
        for name, value in tape.masks.items():
            if value is not None:
                traced[name] = np.broadcast_to(value, (T, B, self.hidden_size))
        if tape.candidates is not None:
            traced["LTM_candidate"] = tape.candidates
        return traced

    def _hold_buffers(self, buffers):
        for gate in self.gates:
            if isinstance(gate, PythonGate):
                gate._hold_buffers(buffers)

    def _release_buffers(self, buffers):
        for gate in self.gates:
            if isinstance(gate, PythonGate):
                gate._release_buffers(buffers)

    def _parameter_snapshot(self):
        """A copy of every parameter, for :meth:`_changed_since`: the packed block weights and
        biases as two arrays (one comparison each), the gates' other parameters by name."""
        others = [name for cls in self._classes for name in cls.params]
        if self.proj_size is not None:
            others.append("W_hr")
        return {"packed": (self._weights.copy(), self._bias.copy()),
                "others": {name: self.params[name].copy() for name in others}}

    def _changed_since(self, snapshot):
        """The names of the parameters whose bits differ from ``snapshot``'s (NaN included)."""
        bits = np.uint32 if self.dtype == np.float32 else np.uint64

        def same(a, b):
            return np.array_equal(a.view(bits), b.view(bits))

        weights, bias = snapshot["packed"]
        if same(weights, self._weights) and same(bias, self._bias):
            changed = set()
        else:
            then = self._gradient_views(weights, bias)
            changed = {name for name in then if name not in snapshot["others"]
                       and not same(then[name], self.params[name])}
        changed |= {name for name, value in snapshot["others"].items()
                    if not same(value, self.params[name])}
        return [name for name in self.params if name in changed]

    def _call_threads(self):
        return _loop.threads_for(self.gates, THREADS if self.threads is None else self.threads)

    def _gradient_views(self, dweights, dbias):
        """Gradient arrays named like ``params``: block gradients are views on the packed
        ``dweights`` and ``dbias``, the others fresh zeros."""
        H = self.hidden_size
        grads = {}
        for block, (row, read) in self._blocks.items():
            grads[f"W_{block}"] = dweights[row:row + H, read]
            grads[f"b_{block}"] = dbias[row:row + H]
        for name, array in self.params.items():
            grads.setdefault(name, np.zeros_like(array))
        return {name: grads[name] for name in self.params}

    def _initial_state(self, state, B):
        shape = (B, self.hidden_size)
        stm_shape = shape if self.proj_size is None else (B, self.proj_size)
        if state is None:
            return np.zeros(stm_shape, self.dtype), np.zeros(shape, self.dtype)
        sizes = (2, 2 + len(self.memories)) if self.memories else (2,)
        if not (isinstance(state, (tuple, list)) and len(state) in sizes):
            what = ("a pair (stm, ltm)" if not self.memories else
                    f"(stm, ltm) or (stm, ltm, {', '.join(self.memories)})")
            raise TypeError(f"state must be {what} of arrays of shape (B, hidden_size) = "
                            f"{shape}; got {type(state).__name__}"
                            + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
        stm = as_float_array("state[0] (stm)", state[0], self.dtype, stm_shape)
        ltm = as_float_array("state[1] (ltm)", state[1], self.dtype, shape)
        if self.one_memory and not np.array_equal(stm, ltm):
            raise ValueError(f"state[0] (stm) must equal state[1] (ltm): this cell's STM is its "
                             f"LTM (use gate {self.gate_names['use']!r}), one memory; they "
                             f"differ by up to {np.nanmax(np.abs(stm - ltm)):.3g}")
        return stm, ltm

    def _initial_memories(self, state, B):
        """The extra memories' initial values, (M, B, H): from ``state`` after the STM and the
        LTM, else the gates' declared initial values."""
        shape = (B, self.hidden_size)
        given = state[2:] if state is not None else ()
        memories = np.empty((len(self.memories), *shape), self.dtype)
        for k, (name, initial) in enumerate(self._memory_defaults.items()):
            memories[k] = (as_float_array(f"state[{2 + k}] ({name})", given[k], self.dtype, shape)
                           if given else initial)
        return memories

    def _raise_gate_error(self, step):
        for role, gate in zip(ROLES, self.gates):
            error = gate.take_error()
            if error is not None:
                error.add_note(f"raised by {role} gate {type(gate).name!r} at time step {step}")
                raise error
        raise RuntimeError(f"a compiled gate failed at time step {step} without saying why")
