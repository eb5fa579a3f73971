"""Layers of cells: ``gatekit.LSTM``, stacked and bidirectional, shaped like ``torch.nn.LSTM``.

Each layer and direction is a :class:`gatekit.Cell`; every time loop, forward and backward,
runs in the compiled core. This module only routes arrays between the cells: it reverses each
sequence within its own length for the reverse direction, concatenates the two directions and
applies dropout between layers.

Names: the cell of layer ``l`` is ``"l{l}"`` and the cell of its reverse direction is
``"l{l}_reverse"`` (PyTorch's suffixes); ``lstm.params`` holds every parameter under
``"{cell}.{symbol}"``, such as ``"l0.W_f"`` or ``"l1_reverse.b_v"``.
"""
import numbers
import warnings

import numpy as np

from gatekit.core.cell import (Cell, Parameters, _float_dtype, _size, as_float_array,
                               check_lengths, check_recurrent_dropout, check_zoneout,
                               refuse_changed_parameters)

__all__ = ["cell_names", "LayerTape", "LSTM", "reversal_index"]


def cell_names(num_layers, bidirectional):
    """The names of a layer's cells in PyTorch's order (``"l0"``, ``"l0_reverse"``, ``"l1"``...):
    the order of the first axis of the states."""
    return [f"l{layer}{suffix}" for layer in range(num_layers)
            for suffix in (("", "_reverse") if bidirectional else ("",))]


def reversal_index(lengths, T, B):
    """The (T, B) time index that reverses each sequence within its own length and leaves its
    padding where it is: ``x[index, arange(B)]`` reverses, and applied twice gives ``x`` back."""
    t = np.arange(T)[:, None]
    if lengths is None:
        return np.broadcast_to(T - 1 - t, (T, B))
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


class LayerTape:
    """What :meth:`LSTM.forward` kept for :meth:`LSTM.backward`: one cell tape per layer and
    direction, the dropout masks that were applied and the ragged-batch bookkeeping."""

    def __init__(self, lstm, tapes, masks, lengths, index, T, B):
        self.lstm, self.tapes, self.masks = lstm, tapes, masks
        self.lengths, self.index, self.T, self.B = lengths, index, T, B

    def __repr__(self):
        return f"LayerTape(T={self.T}, B={self.B}, lstm={self.lstm!r})"


class LSTM:
    """A stack of LSTM layers, optionally bidirectional, built from gatekit cells; the
    counterpart of ``torch.nn.LSTM``.

    ``variant`` and ``forget=``, ``learn=``, ``remember=``, ``use=`` choose the gates of every
    cell, as for :class:`gatekit.Cell`. Layer 0 reads ``input_size`` features; layer ``l > 0``
    reads the ``D * hidden_size`` outputs of layer ``l - 1`` (D = 2 if bidirectional else 1).

    Shapes, as PyTorch has them: ``x`` (T, B, input_size), or (B, T, input_size) with
    ``batch_first=True``; outputs ``y`` (T, B, D * hidden_size) (or batch first), the forward
    direction in the first ``hidden_size`` features; states ``(stm, ltm)`` each
    (D * num_layers, B, hidden_size) in the order of :attr:`cell_names`, whatever
    ``batch_first``, followed by the cells' extra memories (:attr:`memories`) if their gates
    keep any: ``(stm, ltm, n, m)`` for ``variant="slstm"``.

    ``dropout`` zeroes each output of every layer but the last with that probability (scaling
    the others by 1 / (1 - dropout)), in training mode only (:meth:`train`, the default, and
    :meth:`eval`). The masks come from :attr:`dropout_rng`, a ``numpy.random.Generator`` seeded
    from ``seed``; the backward pass applies the masks the forward pass drew.

    ``threads`` caps the threads of each cell's calls (see :class:`gatekit.Cell`).

    ``proj_size=P`` projects every cell's STM to P features (see :class:`gatekit.Cell`), as
    ``torch.nn.LSTM(proj_size=P)``: ``y`` is then (T, B, D * P), ``stm`` (D * num_layers, B, P)
    (``ltm`` stays H wide), and layer ``l > 0`` reads ``D * P`` features.

    ``zoneout=(z_c, z_h)`` and ``recurrent_dropout=p`` are options of every cell (see
    :class:`gatekit.Cell`): each cell draws its own masks, from its own stream of ``seed``, in
    training mode; :meth:`eval` puts every cell in evaluation mode with the layer.

    ``seed`` also draws every cell's parameters (each its own stream). ``params`` maps
    ``"l0.W_f"``, ``"l0_reverse.W_f"``, ... to views on the cells' parameters (writing into
    them changes the layer); ``cells`` maps ``"l0"``, ``"l0_reverse"``, ... to the cells.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bidirectional=False,
                 variant="standard", forget=None, learn=None, remember=None, use=None,
                 dropout=0.0, batch_first=False, dtype=np.float32, seed=None, threads=None,
                 zoneout=(0.0, 0.0), recurrent_dropout=0.0, proj_size=None):
        self.input_size = _size("input_size", input_size)
        self.hidden_size = H = _size("hidden_size", hidden_size)
        self.num_layers = _size("num_layers", num_layers)
        for name, value in (("bidirectional", bidirectional), ("batch_first", batch_first)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {value!r}")
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError(f"dropout must be a probability in [0, 1]; got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout acts between layers, so with num_layers=1 it does nothing "
                          f"(dropout={self.dropout}, num_layers=1)", UserWarning, stacklevel=2)
        self.dtype = _float_dtype(dtype)
        self.variant = variant
        self.zoneout = check_zoneout(zoneout)
        self.recurrent_dropout = check_recurrent_dropout(recurrent_dropout)
        self.proj_size = None if proj_size is None else _size("proj_size", proj_size)
        self.cells = {}
        self.training = True
        directions = 2 if self.bidirectional else 1
        streams = np.random.SeedSequence(seed).spawn(self.num_layers * directions + 1)
        gates = {"forget": forget, "learn": learn, "remember": remember, "use": use}
        for k, name in enumerate(cell_names(self.num_layers, self.bidirectional)):
            layer = k // directions
            size = self.input_size if layer == 0 else directions * self.output_size
            self.cells[name] = Cell(size, H, variant, **gates, dtype=self.dtype,
                                    seed=streams[k], threads=threads, zoneout=self.zoneout,
                                    recurrent_dropout=self.recurrent_dropout,
                                    proj_size=self.proj_size)
        self.dropout_rng = np.random.default_rng(streams[-1])
        self.params = Parameters({f"{name}.{symbol}": array
                                  for name, cell in self.cells.items()
                                  for symbol, array in cell.params.items()})

    # --- description ---------------------------------------------------------------------------

    @property
    def training(self):
        """Training mode (dropout, zoneout and recurrent dropout on); setting it sets every
        cell's mode too."""
        return self._training

    @training.setter
    def training(self, mode):
        self._training = bool(mode)
        for cell in self.cells.values():
            cell.training = self._training

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """The features of each direction's output and STM: ``proj_size`` if set, else
        ``hidden_size``."""
        return self.hidden_size if self.proj_size is None else self.proj_size

    @property
    def memories(self):
        """The names of the cells' extra memories, in the order they take in the state after
        the STM and the LTM (see :attr:`gatekit.Cell.memories`)."""
        return self.cells["l0"].memories

    @property
    def cell_names(self):
        """The cells' names in the order of the states' first axis."""
        return list(self.cells)

    @property
    def gate_names(self):
        """The name of the gate in each role (the same in every cell)."""
        return self.cells["l0"].gate_names

    def cell(self, layer, reverse=False):
        """The cell of ``layer`` (and of its reverse direction if ``reverse``)."""
        name = f"l{layer}{'_reverse' if reverse else ''}"
        if name not in self.cells:
            raise KeyError(f"this LSTM has no cell {name!r}; its cells are "
                           f"{', '.join(self.cells)}")
        return self.cells[name]

    def __repr__(self):
        gates = ", ".join(f"{role}={name!r}" for role, name in self.gate_names.items())
        regularisers = ""
        if self.zoneout != (0.0, 0.0) or self.recurrent_dropout > 0:
            regularisers = (f", zoneout={self.zoneout}, "
                            f"recurrent_dropout={self.recurrent_dropout}")
        if self.proj_size is not None:
            regularisers += f", proj_size={self.proj_size}"
        return (f"LSTM(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"variant={self.variant!r}, {gates}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}, dtype={self.dtype.name}{regularisers})")

    def train(self, mode=True):
        """Training mode (dropout, zoneout and recurrent dropout on, if any); returns the
        layer."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode (no dropout; zoneout and recurrent dropout give way to their
        expectation); returns the layer."""
        return self.train(False)

    def copy(self, dtype=None):
        """A new layer with the same configuration, mode and a copy of the parameters, in
        ``dtype`` (by default this layer's). Its dropout generator starts from a copy of this
        layer's generator state, and each cell's mask generator from its cell's."""
        other = LSTM(self.input_size, self.hidden_size, self.num_layers,
                     bidirectional=self.bidirectional, variant=self.variant, **self.gate_names,
                     dropout=0.0, batch_first=self.batch_first,
                     dtype=self.dtype if dtype is None else dtype,
                     threads=self.cells[next(iter(self.cells))].threads, zoneout=self.zoneout,
                     recurrent_dropout=self.recurrent_dropout, proj_size=self.proj_size)
        other.dropout = self.dropout
        other.training = self.training
        for name, array in self.params.items():
            other.params[name] = array
        other.dropout_rng.bit_generator.state = self.dropout_rng.bit_generator.state
        for name, cell in self.cells.items():
            other.cells[name].mask_rng.bit_generator.state = cell.mask_rng.bit_generator.state
        return other

    # --- running -------------------------------------------------------------------------------

    def __call__(self, x, state=None, lengths=None):
        y, state = self.forward(x, state, lengths=lengths)
        return y, state

    def _initial_state(self, state, B):
        """The initial state as a tuple: (stm, ltm), then the extra memories if ``state``
        gives them (else each cell starts them at their declared values)."""
        shape = (self.directions * self.num_layers, B, self.hidden_size)
        shapes = self._state_shapes(B)
        if state is None:
            return tuple(np.zeros(each, self.dtype) for each in shapes)
        names = ("stm", "ltm") + self.memories
        if not (isinstance(state, (tuple, list)) and len(state) in {2, len(names)}):
            what = "a pair (stm, ltm)" + (f" or ({', '.join(names)})" if self.memories else "")
            raise TypeError(f"state must be {what} of arrays of shape "
                            f"(D * num_layers, B, hidden_size) = {shape}; got "
                            f"{type(state).__name__}")
        return tuple(as_float_array(f"state[{k}] ({name})", value, self.dtype, shapes[min(k, 1)])
                     for k, (name, value) in enumerate(zip(names, state)))

    def _state_shapes(self, B):
        """The shapes of the STM and of the LTM (and of every extra memory)."""
        cells = self.directions * self.num_layers
        return (cells, B, self.output_size), (cells, B, self.hidden_size)

    def _final_gradient(self, dstate, B):
        shape = (self.directions * self.num_layers, B, self.hidden_size)
        shapes = self._state_shapes(B)
        names = ("stm", "ltm") + self.memories
        if dstate is None:
            return (None,) * len(names)
        if not (isinstance(dstate, (tuple, list)) and len(dstate) in {2, len(names)}):
            what = "a pair (dstm, dltm)" + (
                f" or ({', '.join(f'd{name}' for name in names)})" if self.memories else "")
            raise TypeError(f"dstate must be {what} of arrays of shape "
                            f"(D * num_layers, B, hidden_size) = {shape}, or None; got "
                            f"{type(dstate).__name__}")
        dstate = tuple(dstate) + (None,) * (len(names) - len(dstate))
        return tuple(None if d is None else as_float_array(f"dstate[{k}]", d, self.dtype,
                                                           shapes[min(k, 1)])
                     for k, d in enumerate(dstate))

    def _initial_memories(self, B):
        """Each extra memory's declared initial value in every cell, (D * num_layers, B, H)."""
        values = [cell._initial_memories(None, B) for cell in self.cells.values()]
        return tuple(np.stack([value[m] for value in values]) for m in range(len(self.memories)))

    def _dropout_mask(self, shape):
        if self.dropout >= 1:
            return np.zeros(shape, self.dtype)
        keep = self.dropout_rng.random(shape) >= self.dropout
        return keep.astype(self.dtype) / self.dtype.type(1 - self.dropout)

    def _inputs(self, x, state, lengths):
        """``x`` checked and time-major (T, B, input_size), the lengths, the initial state."""
        x = as_float_array("x", x, self.dtype, (None, None, self.input_size))
        if self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        T, B, _ = x.shape
        if B == 0:
            raise ValueError("x must hold at least one sequence; got batch size 0")
        return x, check_lengths(lengths, T, B), self._initial_state(state, B)

    def trace(self, x, state=None, lengths=None):
        """:meth:`gatekit.Cell.trace` for every cell of the layer: a dict from cell
        name (``"l0"``, ``"l0_reverse"``, ``"l1"``, ... as in ``self.cells``) to that cell's trace.

        Every trace is in the time order of ``x`` and (T, B, ...) whatever ``batch_first``: the
        reverse direction's quantities are put back in forward time, so step t of every trace is
        step t of ``x``. ``E_t`` of a layer above the first is what that cell reads: the layer
        below's outputs. Dropout between layers is not applied; the cells' zoneout and recurrent
        dropout follow the layer's mode, as in :meth:`forward` (in training, new masks, which
        the traces show). ``state`` and ``lengths`` are as for ``forward``;
        padded steps of a ragged batch are NaN.
        """
        x, lengths, state0 = self._inputs(x, state, lengths)
        T, B, _ = x.shape
        index = reversal_index(lengths, T, B)
        columns = np.arange(B)[None, :]
        traces = {}
        layer_input = x
        k = 0
        for _ in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                name = self.cell_names[k]
                seen = layer_input if direction == 0 else layer_input[index, columns]
                trace = self.cells[name].trace(seen, tuple(s[k] for s in state0),
                                               lengths=lengths)
                if direction == 1:
                    trace = {key: value[index, columns] for key, value in trace.items()}
                traces[name] = trace
                # The next layer reads the outputs, zero (not NaN) on padded steps.
                outputs.append(np.nan_to_num(trace["STM_t"], nan=0.0))
                k += 1
            layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=2)
            layer_input = np.ascontiguousarray(layer_input, dtype=self.dtype)
        return traces

    def forward(self, x, state=None, lengths=None, keep=False):
        """Run every layer and direction over ``x``.

        ``state`` = (stm, ltm), each (D * num_layers, B, hidden_size), or zeros. ``lengths``
        (B integers in [1, T], in any order) makes a ragged batch, as a packed sequence does in
        PyTorch: sequence b ends after ``lengths[b]`` steps; its later outputs are zeros, the
        forward direction's final state is that of its last step, and the reverse direction
        starts at its last step. Returns ``y`` and the final ``(stm, ltm)`` (and extra memories,
        as the state); with ``keep=True`` also the :class:`LayerTape` that :meth:`backward`
        needs. The extra memories of a ragged sequence are those of its last step, as its LTM.
        """
        x, lengths, state0 = self._inputs(x, state, lengths)
        T, B, _ = x.shape
        if T == 0:          # no step: the state passes through unchanged
            y = np.zeros((B, 0, self.directions * self.output_size) if self.batch_first else
                         (0, B, self.directions * self.output_size), self.dtype)
            final = tuple(s.copy() for s in state0)
            if len(final) == 2:
                final += self._initial_memories(B)
            if not keep:
                return y, final
            return y, final, LayerTape(self, [], [None] * self.num_layers, None, None, T, B)
        index = reversal_index(lengths, T, B)
        columns = np.arange(B)[None, :]
        final = (np.empty_like(state0[0]),) + tuple(
            np.empty_like(state0[1]) for _ in range(1 + len(self.memories)))
        tapes, masks = [], []
        layer_input = x
        k = 0
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                mask = self._dropout_mask(layer_input.shape)
                layer_input = layer_input * mask
                masks.append(mask)
            else:
                masks.append(None)
            outputs = []
            for direction in range(self.directions):
                cell = self.cells[self.cell_names[k]]
                seen = layer_input if direction == 0 else layer_input[index, columns]
                result = cell.forward(seen, tuple(s[k] for s in state0), keep=keep,
                                      lengths=lengths)
                y = result[0]
                for whole, value in zip(final, result[1]):
                    whole[k] = value
                if keep:
                    tapes.append(result[2])
                outputs.append(y if direction == 0 else y[index, columns])
                k += 1
            layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=2)
        y = layer_input
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        if not keep:
            return y, final
        return y, final, LayerTape(self, tapes, masks, lengths, index, T, B)

    def backward(self, tape, dy, dstate=None):
        """Backpropagation through every layer and direction over a :class:`LayerTape` from
        ``forward(..., keep=True)``.

        ``dy`` is the gradient with respect to ``y`` (shaped like ``y``); ``dstate`` =
        (dstm, dltm), each (D * num_layers, B, hidden_size), the gradient with respect to the
        final state (zero if None; either may be None), followed by those of the extra memories
        if any. Returns a dict with the gradient of every name of ``params`` plus ``"x"``
        (shaped like ``x``), ``"stm0"`` and ``"ltm0"`` and ``"n0"`` for each extra memory ``n``
        (shaped like the state).
        """
        if not isinstance(tape, LayerTape):
            raise TypeError(f"tape must be the LayerTape from lstm.forward(x, keep=True); got "
                            f"{type(tape).__name__}")
        if tape.lstm is not self:
            raise ValueError(f"tape was recorded by another layer ({tape.lstm!r}); pass the "
                             "tape this layer's forward(..., keep=True) returned")
        changed = [f"{name}.{symbol}" for name, cell_tape in zip(self.cell_names, tape.tapes)
                   for symbol in self.cells[name]._changed_since(cell_tape.params)]
        if changed:
            refuse_changed_parameters(changed)
        T, B, H, D = tape.T, tape.B, self.hidden_size, self.directions
        R = self.output_size
        shape = (B, T, D * R) if self.batch_first else (T, B, D * R)
        dy = as_float_array("dy", dy, self.dtype, shape)
        if self.batch_first:
            dy = dy.transpose(1, 0, 2)
        dstm, dltm, *dmemories = self._final_gradient(dstate, B)
        memory_keys = [f"{name}0" for name in self.memories]
        if T == 0:
            grads = {name: np.zeros_like(array) for name, array in self.params.items()}
            x_shape = (B, 0, self.input_size) if self.batch_first else (0, B, self.input_size)
            zeros = np.zeros((D * self.num_layers, B, H), self.dtype)
            grads.update(x=np.zeros(x_shape, self.dtype),
                         stm0=np.zeros((D * self.num_layers, B, R), self.dtype) if dstm is None
                         else dstm.copy(),
                         ltm0=zeros.copy() if dltm is None else dltm.copy())
            grads.update({key: zeros.copy() if d is None else d.copy()
                          for key, d in zip(memory_keys, dmemories)})
            return grads
        columns = np.arange(B)[None, :]
        grads = {}
        dstm0 = np.empty((D * self.num_layers, B, R), self.dtype)
        dltm0 = np.empty((D * self.num_layers, B, H), self.dtype)
        dmemories0 = {key: np.empty_like(dltm0) for key in memory_keys}
        d_output = dy
        for layer in reversed(range(self.num_layers)):
            d_input = None
            for direction in range(D):
                k = layer * D + direction
                name = self.cell_names[k]
                cell = self.cells[name]
                d_y = d_output[:, :, direction * R:(direction + 1) * R]
                if direction == 1:
                    d_y = d_y[tape.index, columns]
                cell_grads = cell.backward(tape.tapes[k], d_y,
                                           None if dstm is None else dstm[k],
                                           None if dltm is None else dltm[k],
                                           [None if d is None else d[k] for d in dmemories])
                dx = cell_grads.pop("x")
                if direction == 1:
                    dx = dx[tape.index, columns]
                d_input = dx if d_input is None else d_input + dx
                dstm0[k], dltm0[k] = cell_grads.pop("stm0"), cell_grads.pop("ltm0")
                for key, whole in dmemories0.items():
                    whole[k] = cell_grads.pop(key)
                grads.update({f"{name}.{symbol}": g for symbol, g in cell_grads.items()})
            if tape.masks[layer] is not None:
                d_input = d_input * tape.masks[layer]
            d_output = d_input
        grads = {name: grads[name] for name in self.params}
        dx = d_output
        if self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        grads.update(x=np.ascontiguousarray(dx), stm0=dstm0, ltm0=dltm0, **dmemories0)
        return grads
