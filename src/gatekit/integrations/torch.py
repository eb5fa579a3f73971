"""gatekit as PyTorch modules (``pip install 'gatekit[torch]'``), reached as ``gatekit.torch``:
:class:`Cell` and :class:`LSTM`, ``torch.nn.Module`` s whose forward and backward passes are
gatekit's compiled loop, run through one ``torch.autograd.Function``.

Memory. Each module runs a :class:`gatekit.Cell` or :class:`gatekit.LSTM`, its ``gatekit``
attribute, and its parameters are ``torch.nn.Parameter`` s over that model's own buffers
(``torch.from_numpy``): an optimiser's in-place step or ``load_state_dict`` changes what the loop
computes, and a call copies no parameter. Inputs reach gatekit without a copy when they are
contiguous CPU tensors (``tensor.numpy()`` shares their memory; a tape keeps its own copy of
``x``, as gatekit's always does); outputs and gradients are the arrays gatekit returns, wrapped
without a copy. A conversion that gives the parameters new tensors
(``module.double()``, ``load_state_dict(..., assign=True)``) is noticed at the next call, which
moves their values into a model of their dtype and points the parameters at it again.

Names. A :class:`Cell`'s parameters are named as ``gatekit.Cell.params`` (``W_f``, ``b_f``,
``p_f``...). An :class:`LSTM` holds one submodule per cell, named as ``gatekit.LSTM.cells``
(``l0``, ``l0_reverse``, ``l1``...), each holding that cell's parameters: the names and
state-dict keys are ``l0.W_f``, ``l1_reverse.b_v``..., the keys of ``gatekit.LSTM.params``.

PyTorch's layouts. :meth:`LSTM.torch_state_dict` gives the weights of a ``standard`` layer as
``torch.nn.LSTM``'s state dict (a ``gru`` one as ``torch.nn.GRU``'s; a :class:`Cell`'s as
``torch.nn.LSTMCell``'s or ``GRUCell``'s), and ``load_state_dict`` takes such a state dict as
well as the module's own (the conversions of :mod:`gatekit.interop`).

``torch.compile``: the call runs under ``torch.compiler.disable``, a graph break around it; the
rest of a compiled model is compiled as usual (``fullgraph=True`` refuses the break).
"""
import copy

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from gatekit.core.cell import Cell as CoreCell
from gatekit.io import interop
from gatekit.io.interop import _TORCH_CELL_KEYS, _TORCH_LAYER_KEY
from gatekit.nn.layers import LSTM as CoreLSTM

__all__ = ["Cell", "LSTM"]

_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_TORCH_DTYPES = {numpy: torch_dtype for torch_dtype, numpy in _NUMPY_DTYPES.items()}


def _numpy_dtype(dtype):
    """``dtype``, a NumPy or torch float32/float64, as a NumPy dtype (gatekit checks the rest)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _NUMPY_DTYPES:
            raise TypeError(f"dtype must be float32 or float64; got {dtype}")
        return _NUMPY_DTYPES[dtype]
    return dtype


def _check_tensor(name, value, dtype):
    """Refuse ``value`` unless it is a dense CPU tensor of ``dtype`` (the module's)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.device.type != "cpu":
        raise ValueError(f"{name} is on device {value.device}; gatekit.torch computes on the "
                         f"CPU only: pass a CPU tensor ({name}.cpu())")
    if value.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor; got layout {value.layout}")
    if value.dtype != dtype:
        if value.dtype in _NUMPY_DTYPES:
            raise TypeError(f"{name} is {value.dtype} but this module computes in {dtype}: pass "
                            f"{name}.to({dtype}), or convert the module (module.to({value.dtype}))")
        raise TypeError(f"{name} must be float32 or float64, the module's dtype ({dtype}); got "
                        f"{value.dtype}")


def _lengths(lengths):
    """``lengths`` as a NumPy array (gatekit checks its values), refusing a float tensor that
    requires a gradient: lengths are counts, not something to differentiate."""
    if isinstance(lengths, torch.Tensor):
        if lengths.requires_grad:
            raise TypeError("lengths must be integers (one length per sequence), not a tensor "
                            f"that requires grad; got a {lengths.dtype} tensor with "
                            "requires_grad=True")
        if lengths.device.type == "meta":
            raise ValueError("lengths is on device meta, which holds no values; pass the lengths "
                             "as a CPU tensor or a list")
        return lengths.cpu().numpy()
    return lengths


def _array(tensor):
    """A CPU tensor as a NumPy array over its memory (resolving a lazy negation, which NumPy
    cannot express)."""
    return tensor.detach().resolve_neg().numpy()


class _Run:
    """One call of a module: what the autograd function needs besides tensors."""

    __slots__ = ("module", "model", "keep", "lengths", "states")

    def __init__(self, module, model, keep, lengths, states):
        self.module, self.model, self.keep = module, model, keep
        self.lengths, self.states = lengths, states


class _Loop(torch.autograd.Function):
    """gatekit's forward pass (keeping its tape when a gradient may be asked for) and its
    backward pass over that tape. Inputs: ``x``, the initial state's tensors (none for the
    zero state), then the parameters, which the model reads from its own memory."""

    @staticmethod
    def forward(ctx, run, x, *tensors):
        states = tuple(_array(t) for t in tensors[:run.states])
        result = run.model.forward(_array(x), states or None, keep=run.keep,
                                   lengths=run.lengths)
        ctx.set_materialize_grads(False)
        ctx.run, ctx.tape = run, (result[2] if run.keep else None)
        ctx.y_shape = result[0].shape
        return (torch.from_numpy(result[0]), *(torch.from_numpy(s) for s in result[1]))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *dfinal):
        run, tape = ctx.run, ctx.tape
        if tape is None:
            raise RuntimeError("gatekit.torch: this call kept no tape (it ran without gradients "
                               "enabled, or with no input requiring one)")
        dy = np.zeros(ctx.y_shape, run.model.dtype) if dy is None else _array(dy)
        dfinal = tuple(None if d is None else _array(d) for d in dfinal)
        grads = run.module._backward(run.model, tape, dy, dfinal)
        names = ["x", *run.module._state_gradient_names(run.model)[:run.states],
                 *run.module._keys]
        wanted = ctx.needs_input_grad[1:]
        return (None, *(torch.from_numpy(grads[name]) if want else None
                        for name, want in zip(names, wanted)))


class _Module(torch.nn.Module):
    """What :class:`Cell` and :class:`LSTM` share: the parameters over the model's memory, the
    call through :class:`_Loop`, the conversions to and from PyTorch's layouts."""

    def _bind(self, model, owners):
        """Register ``model``'s parameters: ``owners`` maps each key of ``model.params`` to the
        (module, attribute name) that holds it."""
        self.gatekit = model
        self._keys = list(model.params)
        self._owners = [owners[key] for key in self._keys]
        for key, (owner, name) in zip(self._keys, self._owners):
            owner.register_parameter(name, torch.nn.Parameter(torch.from_numpy(model.params[key])))
        self._remember_binding()
        self._register_load_state_dict_pre_hook(self._load_torch_layout, with_module=False)

    def _remember_binding(self):
        self._bound = [(owner._parameters[name], owner._parameters[name].data_ptr())
                       for owner, name in self._owners]

    def _parameters_in_order(self):
        return [owner._parameters[name] for owner, name in self._owners]

    def _bound_model(self):
        """The model, with every parameter over its memory: if a conversion replaced a
        parameter or its tensor, the values move into a model of the parameters' dtype."""
        for (owner, name), (param, pointer) in zip(self._owners, self._bound):
            if owner._parameters[name] is not param or param.data_ptr() != pointer:
                return self._rebind()
        return self.gatekit

    def _rebind(self):
        params = self._parameters_in_order()
        for key, param in zip(self._keys, params):
            if param.device.type != "cpu":
                raise ValueError(f"parameter {key!r} is on device {param.device}; gatekit.torch "
                                 "computes on the CPU only (module.cpu())")
        dtype = params[0].dtype
        if dtype not in _NUMPY_DTYPES:
            raise TypeError(f"parameter {self._keys[0]!r} is {dtype}; gatekit.torch computes in "
                            "float32 or float64 (module.float() or module.double())")
        model = self.gatekit
        if model.dtype != _NUMPY_DTYPES[dtype]:
            model = model.copy(_NUMPY_DTYPES[dtype])
        with torch.no_grad():
            for key, param in zip(self._keys, params):
                model.params[key] = param.detach().to(dtype).numpy()
                param.data = torch.from_numpy(model.params[key])
        self.gatekit = model
        self._remember_binding()
        return model

    def __deepcopy__(self, memo):
        """A copy over a copy of the model: the compiled gates of a gatekit model cannot be
        deep-copied, the model copies itself (``copy()``)."""
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        for key, value in self.__dict__.items():
            if key != "gatekit":
                twin.__dict__[key] = copy.deepcopy(value, memo)
        twin.gatekit = self._bound_model().copy()
        twin._rebind()
        return twin

    @property
    def dtype(self):
        """The torch dtype the module computes in (its parameters')."""
        return _TORCH_DTYPES[self._bound_model().dtype]

    @torch.compiler.disable
    def forward(self, x, state=None, lengths=None):
        """``y`` and the final state, as the class says."""
        y, final = self._call(x, state, lengths)
        return y, self._final_state(self.gatekit, final)

    def _call(self, x, state, lengths):
        """Run the model: ``y`` and the final state as the model's forward returns them."""
        model = self._bound_model()
        model.training = self.training
        dtype = _TORCH_DTYPES[model.dtype]
        _check_tensor("x", x, dtype)
        states = self._state_tensors(model, state)
        for k, tensor in enumerate(states):
            _check_tensor(f"state[{k}]", tensor, dtype)
        params = self._parameters_in_order()
        keep = torch.is_grad_enabled() and (
            x.requires_grad or any(t.requires_grad for t in (*states, *params)))
        run = _Run(self, model, keep, _lengths(lengths), len(states))
        y, *final = _Loop.apply(run, x, *states, *params)
        return y, tuple(final)

    def _final_state(self, model, final):
        """The final state as PyTorch returns it: ``h_n`` alone for a cell with one memory
        (``torch.nn.GRU``), else ``(h_n, c_n)`` and the extra memories."""
        return final[0] if self._cell(model).one_memory else final

    def _state_tensors(self, model, state):
        """The initial state as the model's inputs: ``()`` (zeros), or (stm, ltm, ...); a
        cell with one memory takes it alone, as ``torch.nn.GRU`` does, or as a pair."""
        if state is None:
            return ()
        one_memory = self._cell(model).one_memory
        if one_memory and isinstance(state, torch.Tensor):
            return (state, state)
        if isinstance(state, torch.Tensor) or not isinstance(state, (tuple, list)):
            what = "h_0 (or a pair (h_0, h_0))" if one_memory else "a tuple (h_0, c_0)"
            raise TypeError(f"state must be {what} of tensors; got {type(state).__name__}")
        return tuple(state)

    def _state_gradient_names(self, model):
        return ["stm0", "ltm0", *(f"{name}0" for name in self._cell(model).memories)]

    def extra_repr(self):
        return repr(self.gatekit)

    # --- PyTorch's layouts ---------------------------------------------------------------------

    def torch_state_dict(self):
        """The weights as the state dict of the equivalent PyTorch module (``torch.nn.LSTM`` or
        ``GRU`` for an :class:`LSTM`, ``LSTMCell`` or ``GRUCell`` for a :class:`Cell`), for a
        ``standard`` or ``gru`` model: ``torch_module.load_state_dict(m.torch_state_dict())``."""
        return {key: torch.from_numpy(value)
                for key, value in interop.to_torch(self._bound_model()).items()}

    def _load_torch_layout(self, state_dict, prefix, *args):
        """A load_state_dict pre-hook: keys in PyTorch's LSTM or GRU layout under ``prefix``
        are converted to this module's parameters (``interop.from_torch``)."""
        layout = {key[len(prefix):]: key for key in state_dict if key.startswith(prefix) and (
            _TORCH_LAYER_KEY.fullmatch(key[len(prefix):])
            or key[len(prefix):] in _TORCH_CELL_KEYS)}
        if not layout:
            return
        model = self._bound_model()
        source = interop.from_torch({short: state_dict.pop(key) for short, key in layout.items()},
                                    dtype=model.dtype)
        if type(source) is not type(model) or source.gate_names != model.gate_names:
            raise ValueError(f"the state dict holds the weights of a {source!r}; this module "
                             f"runs a {model!r}")
        for key, array in source.params.items():
            if key not in model.params or model.params[key].shape != array.shape:
                raise ValueError(f"the state dict holds the weights of a {source!r}; this "
                                 f"module runs a {model!r}")
            state_dict[prefix + key] = torch.from_numpy(np.array(array))


class Cell(_Module):
    """A :class:`gatekit.Cell` as a ``torch.nn.Module``: the same arguments (``dtype`` a NumPy
    or torch float32/float64), parameters named as ``gatekit.Cell.params``.

    ``y, state = cell(x, state=None, lengths=None)``: ``x`` (T, B, input_size), ``y``
    (T, B, hidden_size); ``state`` (and the final one) ``(h, c)``, each (B, hidden_size), a
    single ``h`` for a cell with one memory (``gru``, ``janet``...), ``(h, c, n, m)`` with extra
    memories (``slstm``). ``lengths`` (B integers) makes a ragged batch as in gatekit.
    """

    def __init__(self, input_size, hidden_size, variant="standard", *, dtype=torch.float32,
                 **options):
        super().__init__()
        model = CoreCell(input_size, hidden_size, variant, dtype=_numpy_dtype(dtype), **options)
        self._bind(model, {key: (self, key) for key in model.params})

    @staticmethod
    def _cell(model):
        return model

    @staticmethod
    def _backward(model, tape, dy, dfinal):
        dstm, dltm, *dmemories = dfinal
        return model.backward(tape, dy, dstm, dltm, dmemories or None)


class _CellParameters(torch.nn.Module):
    """The parameters of one cell of an :class:`LSTM` (the submodule ``l0``, ``l0_reverse``...)."""


class LSTM(_Module):
    """A :class:`gatekit.LSTM` as a ``torch.nn.Module``, shaped like ``torch.nn.LSTM``: the same
    arguments (``dtype`` a NumPy or torch float32/float64), ``x`` (T, B, input_size) or batch
    first, ``y, (h_n, c_n) = lstm(x, (h_0, c_0), lengths=None)`` with states
    (D * num_layers, B, hidden_size); ``y, h_n`` for a cell with one memory (``gru``, as
    ``torch.nn.GRU``); ``(h_n, c_n, n_n, m_n)`` with extra memories. Parameters ``l0.W_f``...:
    one submodule per cell.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, dtype=torch.float32, **options):
        super().__init__()
        model = CoreLSTM(input_size, hidden_size, num_layers, dtype=_numpy_dtype(dtype),
                         **options)
        owners = {}
        for name, cell in model.cells.items():
            holder = _CellParameters()
            self.add_module(name, holder)
            owners.update({f"{name}.{symbol}": (holder, symbol) for symbol in cell.params})
        self._bind(model, owners)

    @property
    def batch_first(self):
        return self.gatekit.batch_first

    @staticmethod
    def _cell(model):
        """The first cell, whose memories every cell of the layer has."""
        return model.cells["l0"]

    @staticmethod
    def _backward(model, tape, dy, dfinal):
        return model.backward(tape, dy, dfinal)
