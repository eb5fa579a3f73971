"""Weights from and to PyTorch, Keras and ONNX, as plain NumPy conversions.

None of these functions needs the other library: they read and return NumPy arrays (PyTorch
tensors are read with ``.detach().cpu().numpy()``; torch is imported only to build or fill a
module in :func:`to_torch`). Every conversion is exact: the blocks are moved, transposed and
(for PyTorch's two biases) summed, never refitted.

The layouts (H = hidden_size, D = input size of the layer, gatekit's ``W_k`` is (H, H + D) with
the STM/hidden columns first, then the input columns):

=========== ==================================================== ===========================
library     arrays                                               gate order (gatekit block)
=========== ==================================================== ===========================
PyTorch     ``weight_ih_l{k}`` (4H, D), ``weight_hh_l{k}`` (4H, H), i, f, g, o
            ``bias_ih_l{k}`` + ``bias_hh_l{k}`` (4H,) (summed);  (``i``, ``f``, ``n``, ``v``)
            suffix ``_reverse`` for the reverse direction;
            ``nn.LSTMCell``: the same without ``_l{k}``
Keras       ``kernel`` (D, 4H), ``recurrent_kernel`` (H, 4H),    i, f, c, o
            ``bias`` (4H,): the transposes of PyTorch's          (``i``, ``f``, ``n``, ``v``)
ONNX LSTM   ``W`` (dirs, 4H, D), ``R`` (dirs, 4H, H),            i, o, f, c
            ``B`` (dirs, 8H) = [Wb, Rb] (summed),                (``i``, ``v``, ``f``, ``n``);
            ``P`` (dirs, 3H) peepholes                           P: i, o, f (``p_i``, ``p_v``,
                                                                 ``p_f``)
=========== ==================================================== ===========================

PyTorch and Keras run only the ``standard`` cell. ONNX also has peepholes (gatekit's
``peephole`` gates: ``p_i``, ``p_f`` on the previous LTM, ``p_v`` on the new one, as ONNX has
them) and ``input_forget=1``, which couples the gates as ``f = 1 - i``. gatekit's ``cifg``
couples them the other way, ``i = 1 - f``, with the weights on the forget gate. Since
``1 - σ(a) = σ(-a)``, ONNX's input gate is gatekit's forget gate negated: ``W_i = -W_f``,
``b_i = -b_f``, ``P_i = -p_f``. :func:`to_onnx` writes gatekit's forget weights unchanged in
ONNX's forget slot as well, so the exported layer computes the same with or without the
coupling; :func:`from_onnx` reads only the input slot of a coupled layer, as ONNX does.
Every other gate composition is refused with a message that says so.

The GRU (gatekit's variant ``gru``: forget ``standard``, learn ``reset``, use ``memory``) converts
to and from ``torch.nn.GRU``/``GRUCell``, Keras ``GRU(reset_after=True)`` and ONNX ``GRU`` with
``linear_before_reset=1``: the three forms in which the reset gate multiplies the recurrent part
of the candidate, its bias included, which is what gatekit's block ``hn`` (``W_hn`` (H, H),
``b_hn``) keeps apart. The update gate ``z`` of all three weighs the old state, so it is
gatekit's forget factor ``f_t`` (block ``f``); the reset gate is block ``r``; the candidate's
input part is block ``n`` (``W_n`` (H, D), ``b_n``). The update and reset gates' two biases are
summed (exported whole in the input bias, zeros in the recurrent one); the candidate's stay
apart:

=========== ==================================================== ===========================
library     arrays                                               gate order (gatekit block)
=========== ==================================================== ===========================
PyTorch     ``weight_ih_l{k}`` (3H, D), ``weight_hh_l{k}`` (3H, H), r, z, n
            ``bias_ih_l{k}``, ``bias_hh_l{k}`` (3H,)             (``r``, ``f``, ``n``/``hn``)
Keras       ``kernel`` (D, 3H), ``recurrent_kernel`` (H, 3H),    z, r, h
            ``bias`` (2, 3H): input bias, recurrent bias         (``f``, ``r``, ``n``/``hn``)
ONNX GRU    ``W`` (dirs, 3H, D), ``R`` (dirs, 3H, H),            z, r, h
            ``B`` (dirs, 6H) = [Wb, Rb]                          (``f``, ``r``, ``n``/``hn``)
=========== ==================================================== ===========================

Keras' ``reset_after=False`` and ONNX's ``linear_before_reset=0`` (its default) reset the state
before the recurrent product, a different cell, and are refused.
"""
import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from gatekit.core.cell import _float_dtype, Cell, FLOAT_DTYPES
from gatekit.nn.layers import LSTM

TORCH_ORDER = ("i", "f", "n", "v")     # PyTorch: i, f, g, o
KERAS_ORDER = ("i", "f", "n", "v")     # Keras: i, f, c, o
ONNX_ORDER = ("i", "v", "f", "n")      # ONNX: i, o, f, c
ONNX_PEEPHOLE_ORDER = ("i", "v", "f")  # ONNX P: i, o, f

STANDARD = {"forget": "standard", "learn": "standard", "remember": "standard",
            "use": "standard"}
ONNX_GATES = {"forget": ("standard", "peephole"), "learn": ("standard", "peephole", "coupled"),
              "remember": ("standard",), "use": ("standard", "peephole")}
ONNX_ATTRIBUTES = {"hidden_size", "direction", "input_forget", "layout", "activations", "clip",
                   "activation_alpha", "activation_beta"}
ONNX_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")

GRU = {"forget": "standard", "learn": "reset", "remember": "standard", "use": "memory"}
GRU_TORCH_ORDER = ("r", "f", "n")      # PyTorch: r, z, n
GRU_KERAS_ORDER = ("f", "r", "n")      # Keras: z, r, h
GRU_ONNX_ORDER = ("f", "r", "n")       # ONNX: z, r, h
ONNX_GRU_ATTRIBUTES = {"hidden_size", "direction", "layout", "activations", "clip",
                       "activation_alpha", "activation_beta", "linear_before_reset"}
ONNX_GRU_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh")


class _Kind(NamedTuple):
    """What sets the converted cells apart, as data: one path converts both."""
    variant: str
    gates: dict
    apart: tuple             # blocks whose recurrent part has its own weight and bias (W_hn)
    torch_classes: tuple     # the torch.nn layer and cell
    torch_order: tuple
    keras_order: tuple
    keras_biases: int        # 1: one bias (G H,); 2: input and recurrent bias (2, G H)
    onnx_order: tuple
    onnx_operator: str
    onnx_inputs: tuple
    onnx_attributes: frozenset
    onnx_activations: tuple
    onnx_flags: tuple        # attributes that choose gates, held alike by every layer of a stack


_KINDS = {
    "lstm": _Kind("standard", STANDARD, (), ("LSTM", "LSTMCell"), TORCH_ORDER, KERAS_ORDER, 1,
                  ONNX_ORDER, "LSTM", ("W", "R", "B", "P"), frozenset(ONNX_ATTRIBUTES),
                  ONNX_DEFAULT_ACTIVATIONS, ("input_forget",)),
    "gru": _Kind("gru", GRU, ("n",), ("GRU", "GRUCell"), GRU_TORCH_ORDER, GRU_KERAS_ORDER, 2,
                 GRU_ONNX_ORDER, "GRU", ("W", "R", "B"), frozenset(ONNX_GRU_ATTRIBUTES),
                 ONNX_GRU_DEFAULT_ACTIVATIONS, ()),
}

_TORCH_LAYER_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?")
_TORCH_CELL_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# --- shared helpers ------------------------------------------------------------------------------

def _to_numpy(value, name):
    """A tensor, array or nested list as a NumPy array of floats."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):        # a torch tensor
        tensor = value.detach().cpu()
        try:
            value = tensor.numpy()
        except TypeError:                                          # bfloat16 has no NumPy type
            value = tensor.float().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):   # keras/tf variables
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point numbers; got dtype {array.dtype}")
    return array


def _result_dtype(arrays, dtype, where):
    if dtype is not None:
        return _float_dtype(dtype)
    found = np.result_type(*arrays)
    if found not in FLOAT_DTYPES:
        raise TypeError(f"{where} hold {found} numbers; pass dtype=np.float32 or np.float64 to "
                        "convert them")
    return found


def _check_shape(name, array, shape, explanation=""):
    if array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape}; expected {tuple(shape)}"
                         + (f" ({explanation})" if explanation else ""))


def _cells(model):
    """``[(name, cell)]`` of a Cell or LSTM, in the LSTM's state order."""
    if isinstance(model, LSTM):
        return list(model.cells.items())
    if isinstance(model, Cell):
        return [("", model)]
    raise TypeError(f"expected a gatekit.Cell or gatekit.LSTM; got {type(model).__name__}")


def _kind(model, library):
    """``"lstm"`` for a model of standard gates, ``"gru"`` for one of the GRU's; refuses any
    other composition."""
    names = model.gate_names
    if getattr(model, "proj_size", None) is not None and library != "PyTorch":
        raise ValueError(f"{library} has no LSTM with a projected STM; this model has "
                         f"proj_size={model.proj_size}. Only PyTorch's (torch.nn.LSTM("
                         "proj_size=P)) converts")
    for kind, form in _KINDS.items():
        if names == form.gates:
            return kind
    odd = ", ".join(f"{role}={name!r}" for role, name in names.items() if name != "standard")
    raise ValueError(f"{library} runs only the standard LSTM cell and the GRU; this model has "
                     f"{odd} (variant {model.variant!r}). Only variant='standard' with standard "
                     f"gates or variant='gru' with the GRU's gates ({GRU}) converts")


def _split(W_in, W_rec, b_in, b_rec, order):
    """Stacked arrays, blocks in ``order`` ((G H, D), (G H, H or P), (G H,), (G H,)), as
    ``{block: (W_rec, W_in, b_in, b_rec)}``."""
    H = W_in.shape[0] // len(order)
    return {block: tuple(a[k * H:(k + 1) * H] for a in (W_rec, W_in, b_in, b_rec))
            for k, block in enumerate(order)}


def _params(blocks, kind):
    """``{block: (W_rec, W_in, b_in, b_rec)}`` as gatekit's parameters: ``W_k`` = [W_rec, W_in]
    and ``b_k`` the two biases summed, except in a block the cell keeps apart (the GRU's
    candidate, whose recurrent part the reset gate multiplies, bias included): ``W_k``,
    ``b_k`` the input part, ``W_hk``, ``b_hk`` the recurrent part."""
    params = {}
    for block, (W_rec, W_in, b_in, b_rec) in blocks.items():
        if block in _KINDS[kind].apart:
            params.update({f"W_{block}": W_in, f"b_{block}": b_in, f"W_h{block}": W_rec,
                           f"b_h{block}": b_rec})
        else:
            params[f"W_{block}"] = np.concatenate([W_rec, W_in], axis=1)
            params[f"b_{block}"] = _summed(b_in, b_rec)
    return params


def _blocks(cell, kind):
    """A cell's parameters as ``{block: (W_rec, W_in, b_in, b_rec)}`` (the inverse of
    :func:`_params`): the whole bias in ``b_in`` and zeros in ``b_rec``, except in a block kept
    apart. With a projected STM of P features, ``W_rec`` is (H, P)."""
    H = cell.hidden_size
    width = H if cell.proj_size is None else cell.proj_size
    p = {name: np.asarray(array) for name, array in cell.params.items()}
    zero = np.zeros(H, cell.dtype)
    blocks = {}
    for block in _KINDS[kind].onnx_order:
        if block in _KINDS[kind].apart:
            blocks[block] = (p[f"W_h{block}"], p[f"W_{block}"], p[f"b_{block}"], p[f"b_h{block}"])
        elif f"W_{block}" in p:       # a coupled cell has no W_i
            blocks[block] = (p[f"W_{block}"][:, :width], p[f"W_{block}"][:, width:],
                             p[f"b_{block}"], zero)
    return blocks


def _stack(blocks, order):
    """``{block: (W_rec, W_in, b_in, b_rec)}`` stacked in ``order``: W_in (G H, D), W_rec
    (G H, H or P), b_in (G H,), b_rec (G H,)."""
    W_rec, W_in, b_in, b_rec = (np.concatenate([blocks[block][j] for block in order])
                                for j in range(4))
    return W_in, W_rec, b_in, b_rec


def _fill(cell, params):
    """Write ``params`` into the cell (cast to the cell's dtype)."""
    for name, value in params.items():
        cell.params[name] = value


def _summed(*biases):
    """Biases added in float64 (then cast by the cell), so a float64 sum is exact to rounding."""
    return sum(np.asarray(b, dtype=np.float64) for b in biases)


# --- PyTorch -------------------------------------------------------------------------------------

def from_torch(source, *, dtype=None, num_layers=None, bidirectional=None, batch_first=None,
               dropout=None):
    """A gatekit model with the weights of a PyTorch LSTM or GRU.

    ``source`` is a ``torch.nn.LSTM`` or ``torch.nn.GRU`` (gives a :class:`gatekit.LSTM`, of
    variant ``"gru"`` for a GRU, with its ``num_layers``, ``bidirectional``, ``batch_first`` and
    ``dropout``), a ``torch.nn.LSTMCell`` or ``torch.nn.GRUCell`` (gives a :class:`gatekit.Cell`),
    or the ``state_dict()`` of any of them, as tensors or NumPy arrays (an LSTM's and a GRU's are
    told apart by ``weight_hh``: (4H, H) or (3H, H)). From a state dict, the layers and
    directions are read off the keys; ``num_layers=`` and ``bidirectional=`` if given must agree
    with them, and ``batch_first=``/``dropout=`` set the layer's. PyTorch's two biases are
    summed, except the GRU candidate's: ``bias_hh``'s n block is ``b_hn``. ``dtype`` is the
    parameters' (float32 or float64; by default the tensors'). An LSTM with ``proj_size=P``
    (``weight_hr_l{k}`` (P, H), ``weight_hh_l{k}`` (4H, P)) gives a layer with ``proj_size=P``,
    whose cells' ``W_hr`` is ``weight_hr``.
    """
    config = {}
    if hasattr(source, "state_dict") and callable(source.state_dict):
        import torch    # a module was passed, so torch is there
        if isinstance(source, (torch.nn.LSTM, torch.nn.GRU)):
            config = {"num_layers": source.num_layers, "bidirectional": source.bidirectional,
                      "batch_first": source.batch_first, "dropout": source.dropout}
            for name, value in (("num_layers", num_layers), ("bidirectional", bidirectional)):
                if value is not None and value != config[name]:
                    raise ValueError(f"{name}={value!r} disagrees with the module's "
                                     f"{name}={config[name]!r}")
            config.update({name: value for name, value in
                           (("batch_first", batch_first), ("dropout", dropout))
                           if value is not None})
        elif isinstance(source, (torch.nn.LSTMCell, torch.nn.GRUCell)):
            if any(v is not None for v in (num_layers, bidirectional, batch_first, dropout)):
                kind = type(source).__name__
                raise ValueError(f"num_layers, bidirectional, batch_first and dropout describe a "
                                 f"torch.nn.{kind[:-4]}; a torch.nn.{kind} converts to a "
                                 "gatekit.Cell")
        else:
            raise TypeError(f"from_torch converts torch.nn.LSTM, torch.nn.LSTMCell, "
                            f"torch.nn.GRU and torch.nn.GRUCell (or their state dicts); got "
                            f"{type(source).__name__}")
        state = source.state_dict()
    elif isinstance(source, Mapping):
        state = source
        config = {"num_layers": num_layers, "bidirectional": bidirectional,
                  "batch_first": batch_first, "dropout": dropout}
    else:
        raise TypeError(f"from_torch takes a torch.nn.LSTM, LSTMCell, GRU or GRUCell, or a state "
                        f"dict; got {type(source).__name__}")
    arrays = {str(key): value for key, value in state.items()}
    if any(_TORCH_LAYER_KEY.fullmatch(key) for key in arrays):
        return _layers_from_torch(arrays, dtype, **config)
    if any(key in _TORCH_CELL_KEYS for key in arrays):
        if any(config.get(name) is not None for name in ("num_layers", "bidirectional",
                                                          "batch_first", "dropout")):
            raise ValueError("the state dict is a torch.nn.LSTMCell's or GRUCell's (weight_ih, "
                             "weight_hh, ...), which converts to a gatekit.Cell; num_layers, "
                             "bidirectional, batch_first and dropout apply to torch.nn.LSTM "
                             "and GRU state dicts")
        return _cell_from_torch(arrays, dtype)
    raise ValueError("the state dict has none of the keys of torch.nn.LSTM or GRU (weight_ih_l0, "
                     "weight_hh_l0, ...) or torch.nn.LSTMCell or GRUCell (weight_ih, weight_hh, "
                     f"...); its keys are {', '.join(arrays) or 'none'}")


def _check_keys(arrays, expected, what):
    missing = [key for key in expected if key not in arrays]
    if missing:
        raise ValueError(f"the {what} state dict lacks {', '.join(map(repr, missing))}")
    extra = [key for key in arrays if key not in expected]
    if extra:
        raise ValueError(f"the {what} state dict has unexpected keys "
                         f"{', '.join(map(repr, extra))}")


def _torch_blocks(arrays, suffix, D, H, where, kind, P=None):
    """Check one cell's PyTorch arrays and return its gatekit parameters and the arrays read
    (``P``: the projection's size, or None)."""
    G = len(_KINDS[kind].torch_order)
    W_ih = _to_numpy(arrays[f"weight_ih{suffix}"], f"weight_ih{suffix}")
    W_hh = _to_numpy(arrays[f"weight_hh{suffix}"], f"weight_hh{suffix}")
    _check_shape(f"weight_ih{suffix}", W_ih, (G * H, D), f"{G} * hidden_size, {where}")
    if P is None:
        _check_shape(f"weight_hh{suffix}", W_hh, (G * H, H), f"{G} * hidden_size, hidden_size")
    else:
        _check_shape(f"weight_hh{suffix}", W_hh, (G * H, P), f"{G} * hidden_size, proj_size")
        W_hr = _to_numpy(arrays[f"weight_hr{suffix}"], f"weight_hr{suffix}")
        _check_shape(f"weight_hr{suffix}", W_hr, (P, H), "proj_size, hidden_size")
    if f"bias_ih{suffix}" in arrays:
        biases = [_to_numpy(arrays[f"bias_{part}{suffix}"], f"bias_{part}{suffix}")
                  for part in ("ih", "hh")]
        for part, b in zip(("ih", "hh"), biases):
            _check_shape(f"bias_{part}{suffix}", b, (G * H,), f"{G} * hidden_size")
    else:
        biases = []
    b_ih, b_hh = biases or (np.zeros(G * H), np.zeros(G * H))
    params = _params(_split(W_ih, W_hh, b_ih, b_hh, _KINDS[kind].torch_order), kind)
    if P is not None:
        params["W_hr"] = W_hr
        return params, [W_ih, W_hh, W_hr, *biases]
    return params, [W_ih, W_hh, *biases]


def _sizes(arrays, suffix=""):
    """The kind (``"lstm"`` or ``"gru"``), hidden size and input size of a state dict, read off
    ``weight_hh`` (4H or 3H rows of H) and ``weight_ih`` (as many rows)."""
    hh, ih = f"weight_hh{suffix}", f"weight_ih{suffix}"
    W_hh, W_ih = _to_numpy(arrays[hh], hh), _to_numpy(arrays[ih], ih)
    if W_ih.ndim != 2 or W_ih.shape[1] == 0:
        raise ValueError(f"{ih} has shape {W_ih.shape}; expected (4 * hidden_size, input_size) "
                         "for an LSTM or (3 * hidden_size, input_size) for a GRU")
    if W_hh.ndim == 2 and W_hh.shape[1] > 0 and W_hh.shape[0] == W_ih.shape[0]:
        for kind, form in _KINDS.items():
            if W_hh.shape[0] == len(form.torch_order) * W_hh.shape[1]:
                return kind, W_hh.shape[1], W_ih.shape[1]
    raise ValueError(f"{hh} has shape {W_hh.shape}; expected (4 * hidden_size, hidden_size) for "
                     "an LSTM or (3 * hidden_size, hidden_size) for a GRU, with as many rows as "
                     f"{ih} {W_ih.shape}")


def _projected_sizes(arrays):
    """``("lstm", H, D, P)`` of the state dict of a torch.nn.LSTM with proj_size = P: read off
    ``weight_hr_l0`` (P, H) and ``weight_ih_l0`` (4H, D)."""
    W_hr = _to_numpy(arrays["weight_hr_l0"], "weight_hr_l0")
    W_ih = _to_numpy(arrays["weight_ih_l0"], "weight_ih_l0")
    if W_hr.ndim != 2 or 0 in W_hr.shape or W_ih.ndim != 2 or W_ih.shape[1] == 0:
        raise ValueError(f"weight_hr_l0 {W_hr.shape} and weight_ih_l0 {W_ih.shape} must be "
                         "(proj_size, hidden_size) and (4 * hidden_size, input_size): a "
                         "torch.nn.LSTM with proj_size")
    P, H = W_hr.shape
    return "lstm", H, W_ih.shape[1], P


def _cell_from_torch(arrays, dtype):
    expected = ["weight_ih", "weight_hh"]
    if "bias_ih" in arrays or "bias_hh" in arrays:
        expected += ["bias_ih", "bias_hh"]
    if "weight_hh" not in arrays or "weight_ih" not in arrays:
        _check_keys(arrays, expected, "torch.nn.LSTMCell or GRUCell")
    kind, H, D = _sizes(arrays)
    _check_keys(arrays, expected, f"torch.nn.{_KINDS[kind].torch_classes[1]}")
    params, read = _torch_blocks(arrays, "", D, H, "input_size", kind)
    cell = Cell(D, H, _KINDS[kind].variant, dtype=_result_dtype(read, dtype, "the tensors"))
    _fill(cell, params)
    return cell


def _layers_from_torch(arrays, dtype, num_layers=None, bidirectional=None, batch_first=None,
                       dropout=None):
    layers, reverse, bias, projection = set(), False, False, []
    for key in arrays:
        match = _TORCH_LAYER_KEY.fullmatch(key)
        if match is None:
            continue
        part, layer, suffix = match.groups()
        layers.add(int(layer))
        reverse |= suffix is not None
        bias |= part.startswith("bias")
        if part == "weight_hr":
            projection.append(key)
    found = max(layers) + 1
    gaps = [layer for layer in range(found) if layer not in layers]
    if gaps:
        raise ValueError(f"the state dict has keys of layer l{found - 1} but none of layer "
                         f"{', '.join(f'l{layer}' for layer in gaps)} (no weight_ih_l{gaps[0]}, "
                         f"weight_hh_l{gaps[0]}, ...); PyTorch numbers its layers from l0")
    if num_layers is not None and num_layers != found:
        raise ValueError(f"num_layers={num_layers!r}, but the state dict holds layers up to "
                         f"l{found - 1} ({found} layer{'s' if found > 1 else ''})")
    if bidirectional is not None and bool(bidirectional) != reverse:
        raise ValueError(f"bidirectional={bidirectional!r}, but the state dict "
                         f"{'has' if reverse else 'has no'} _reverse keys")
    suffixes = [f"_l{layer}{rev}" for layer in range(found)
                for rev in (("", "_reverse") if reverse else ("",))]
    parts = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())
    parts += ("weight_hr",) if projection else ()
    expected = [f"{part}{suffix}" for suffix in suffixes for part in parts]
    if "weight_hh_l0" not in arrays or "weight_ih_l0" not in arrays:
        _check_keys(arrays, expected, "torch.nn.LSTM or GRU")
    if projection:
        kind, H, D, P = _projected_sizes(arrays)
    else:
        (kind, H, D), P = _sizes(arrays, "_l0"), None
    _check_keys(arrays, expected, f"torch.nn.{_KINDS[kind].torch_classes[0]}")
    directions = 2 if reverse else 1
    width, named = (H, "hidden_size") if P is None else (P, "proj_size")
    converted, read = {}, []
    for suffix in suffixes:
        first = suffix.startswith("_l0")
        size, where = (D, "input_size") if first else (
            directions * width, f"{'2 * ' if reverse else ''}{named}, the previous layer's output")
        converted[suffix], arrays_read = _torch_blocks(arrays, suffix, size, H, where, kind, P)
        read += arrays_read
    lstm = LSTM(D, H, found, bidirectional=reverse, batch_first=bool(batch_first),
                variant=_KINDS[kind].variant, dtype=_result_dtype(read, dtype, "the tensors"),
                proj_size=P)
    lstm.dropout = 0.0 if dropout is None else float(dropout)
    for name, cell in lstm.cells.items():
        _fill(cell, converted[f"_{name}"])
    return lstm


def to_torch(model, module=None):
    """PyTorch weights of a gatekit ``standard`` or ``gru`` model.

    Returns the state dict of the equivalent ``torch.nn.LSTM``/``torch.nn.GRU`` (for a
    :class:`gatekit.LSTM`) or ``torch.nn.LSTMCell``/``torch.nn.GRUCell`` (for a
    :class:`gatekit.Cell`) as NumPy arrays, with the whole bias in ``bias_ih*`` and zeros in
    ``bias_hh*``, except a GRU's ``b_hn`` in the n block of ``bias_hh*``; load it with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})``.

    With ``module=`` a module of that kind and of the same sizes, copies the weights into it and
    returns it; with ``module=True``, builds that module (same sizes, ``batch_first``,
    ``dropout``, dtype) and returns it.
    """
    kind = _kind(model, "PyTorch")
    layer_name, cell_name = _KINDS[kind].torch_classes
    state = {}
    for name, cell in _cells(model):
        suffix = f"_{name}" if name else ""
        W_in, W_rec, b_in, b_rec = _stack(_blocks(cell, kind), _KINDS[kind].torch_order)
        state[f"weight_ih{suffix}"] = W_in
        state[f"weight_hh{suffix}"] = W_rec
        state[f"bias_ih{suffix}"] = b_in
        state[f"bias_hh{suffix}"] = b_rec
        if cell.proj_size is not None:
            state[f"weight_hr{suffix}"] = np.array(cell.params["W_hr"])
    if module is None or module is False:
        return state
    import torch
    torch_dtype = {np.dtype(np.float32): torch.float32,
                   np.dtype(np.float64): torch.float64}[model.dtype]
    layer_class, cell_class = getattr(torch.nn, layer_name), getattr(torch.nn, cell_name)
    if module is True:
        if isinstance(model, LSTM):
            projection = {} if model.proj_size is None else {"proj_size": model.proj_size}
            module = layer_class(model.input_size, model.hidden_size, model.num_layers,
                                 batch_first=model.batch_first, dropout=model.dropout,
                                 bidirectional=model.bidirectional, dtype=torch_dtype,
                                 **projection)
        elif model.proj_size is not None:
            raise ValueError(f"torch.nn.{cell_name} has no projection; a gatekit.Cell with "
                             f"proj_size={model.proj_size} converts to a state dict only "
                             "(module=None), or as a layer (gatekit.LSTM) into torch.nn.LSTM")
        else:
            module = cell_class(model.input_size, model.hidden_size, dtype=torch_dtype)
    elif isinstance(model, LSTM):
        if type(module) is not layer_class:
            raise TypeError(f"a gatekit.LSTM of variant {model.variant!r} converts into a "
                            f"torch.nn.{layer_name}; got {type(module).__name__}")
        if (getattr(module, "proj_size", 0) or None) != model.proj_size:
            raise ValueError(f"module has proj_size={module.proj_size}; the gatekit LSTM has "
                             f"proj_size={model.proj_size or 0}")
        for name in ("input_size", "hidden_size", "num_layers", "bidirectional"):
            if getattr(module, name) != getattr(model, name):
                raise ValueError(f"module has {name}={getattr(module, name)!r}; the gatekit "
                                 f"LSTM has {name}={getattr(model, name)!r}")
    else:
        if type(module) is not cell_class:
            raise TypeError(f"a gatekit.Cell of variant {model.variant!r} converts into a "
                            f"torch.nn.{cell_name}; got {type(module).__name__}")
        for name in ("input_size", "hidden_size"):
            if getattr(module, name) != getattr(model, name):
                raise ValueError(f"module has {name}={getattr(module, name)!r}; the gatekit "
                                 f"cell has {name}={getattr(model, name)!r}")
    parameters = dict(module.named_parameters())
    missing = [key for key in state if key not in parameters]
    if missing:
        raise ValueError(f"module has no {', '.join(missing)} (built with bias=False?); a "
                         "gatekit cell always has biases")
    extra = [key for key in parameters if key not in state]
    if extra:
        raise ValueError(f"module has parameters gatekit cannot fill: {', '.join(extra)}")
    with torch.no_grad():
        for key, value in state.items():
            parameters[key].copy_(torch.from_numpy(value))
    return module


# --- Keras ---------------------------------------------------------------------------------------

_KERAS_KINDS = {"LSTM": ("lstm", "layer"), "LSTMCell": ("lstm", "cell"),
                "GRU": ("gru", "layer"), "GRUCell": ("gru", "cell")}


def _activation_name(function):
    name = getattr(function, "__name__", None) or getattr(function, "name", None)
    return str(name).lower() if name is not None else repr(function)


def _keras_layer_weights(layer, where, kind):
    """The weight list of one Keras ``LSTM``/``LSTMCell``/``GRU``/``GRUCell``, after checking it
    computes gatekit's standard cell or GRU; and whether it runs backwards."""
    cell = getattr(layer, "cell", layer)
    name = "standard cell" if kind == "lstm" else "GRU"
    for attribute, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        got = _activation_name(getattr(cell, attribute, None))
        if got != want:
            raise ValueError(f"{where} has {attribute}={got!r}; gatekit's {name} uses {want!r}")
    if kind == "gru" and not getattr(cell, "reset_after", False):
        raise ValueError(f"{where} has reset_after=False: its reset gate multiplies the state "
                         "before the recurrent product, a cell gatekit's GRU is not (it resets "
                         "the product, as reset_after=True, PyTorch and cuDNN do)")
    weights = [_to_numpy(w, f"{where} weight {k}") for k, w in enumerate(layer.get_weights())]
    if not weights:
        raise ValueError(f"{where} has no weights yet: build it (or call it once) first")
    return weights, bool(getattr(layer, "go_backwards", False))


def _keras_weights_kind(weights, where):
    """``"lstm"`` or ``"gru"``, read off a weight list's recurrent_kernel: (H, 4H) or (H, 3H)."""
    recurrent = weights[1] if len(weights) > 1 else np.zeros(0)
    if recurrent.ndim == 2 and recurrent.shape[0] > 0:
        for kind, form in _KINDS.items():
            if recurrent.shape[1] == len(form.keras_order) * recurrent.shape[0]:
                return kind
    raise ValueError(f"{where} recurrent_kernel has shape {recurrent.shape}; expected (units, "
                     "4 * units) for an LSTM or (units, 3 * units) for a GRU")


def _keras_source(source, where):
    """One Keras layer (``LSTM``, ``LSTMCell``, ``GRU``, ``GRUCell`` or ``Bidirectional`` of a
    layer) or its weight list, as ``([weights of each direction], kind, form)``: kind ``"lstm"``
    or ``"gru"``, form ``"cell"`` or ``"layer"``."""
    if hasattr(source, "get_weights"):
        name = type(source).__name__
        if name == "Bidirectional":
            merge = getattr(source, "merge_mode", "concat")
            if merge != "concat":
                raise ValueError(f"{where} has merge_mode={merge!r}; a bidirectional "
                                 "gatekit.LSTM concatenates the two directions (merge_mode="
                                 "'concat')")
            inner = type(source.forward_layer).__name__
            if _KERAS_KINDS.get(inner, (None, "cell"))[1] != "layer":
                raise TypeError(f"{where} is a Bidirectional({inner}); from_keras converts "
                                "Bidirectional(LSTM) and Bidirectional(GRU)")
            kind = _KERAS_KINDS[inner][0]
            forward, backwards = _keras_layer_weights(source.forward_layer, f"{where} forward",
                                                      kind)
            backward, went_back = _keras_layer_weights(source.backward_layer,
                                                       f"{where} backward", kind)
            if backwards or not went_back:
                raise ValueError(f"{where}: its forward layer must run forwards and its backward "
                                 "layer backwards")
            return [forward, backward], kind, "layer"
        if name in _KERAS_KINDS:
            kind, form = _KERAS_KINDS[name]
            weights, backwards = _keras_layer_weights(source, where, kind)
            if backwards:
                raise ValueError(f"{where} has go_backwards=True; gatekit runs a reverse "
                                 "direction only inside a bidirectional layer")
            return [weights], kind, form
        raise TypeError(f"{where} is a Keras {name}; from_keras converts LSTM, LSTMCell, GRU, "
                        "GRUCell and Bidirectional(LSTM or GRU) layers")
    weights = [_to_numpy(w, f"{where} weight {k}") for k, w in enumerate(source)]
    if len(weights) in (2, 3):
        return [weights], _keras_weights_kind(weights, where), "cell"
    if len(weights) in (4, 6):
        half = len(weights) // 2
        kind = _keras_weights_kind(weights[:half], where)
        return [weights[:half], weights[half:]], kind, "layer"
    raise ValueError(f"{where} has {len(weights)} arrays; expected [kernel, recurrent_kernel, "
                     "bias] (3, or 2 without bias), or 6 (4) for a Bidirectional layer: the "
                     "forward layer's then the backward layer's")


def _keras_blocks(weights, D, H, where, kind):
    """One direction's Keras weights as gatekit parameters."""
    form = _KINDS[kind]
    G = len(form.keras_order)
    kernel, recurrent = weights[0], weights[1]
    _check_shape(f"{where} kernel", kernel, (D, G * H), f"input size, {G} * units")
    _check_shape(f"{where} recurrent_kernel", recurrent, (H, G * H), f"units, {G} * units")
    if len(weights) == 3:
        bias = weights[2]
        if form.keras_biases == 1:
            _check_shape(f"{where} bias", bias, (G * H,), f"{G} * units")
        else:
            if bias.shape == (G * H,):
                raise ValueError(f"{where} bias has shape {bias.shape}, a GRU with "
                                 "reset_after=False, which gatekit's GRU is not (it resets the "
                                 "recurrent product: reset_after=True, whose bias is "
                                 f"(2, {G} * units))")
            _check_shape(f"{where} bias", bias, (2, G * H),
                         f"2, {G} * units: input, recurrent bias")
    else:
        bias = np.zeros((2, G * H))
    b_in, b_rec = (bias, np.zeros(G * H)) if bias.ndim == 1 else bias     # one bias: all input
    return _params(_split(kernel.T, recurrent.T, b_in, b_rec, form.keras_order), kind)


def from_keras(source, *, dtype=None, batch_first=True):
    """A gatekit model with the weights of Keras LSTM or GRU layers.

    ``source`` is one of:

    - a Keras ``LSTMCell`` or ``GRUCell``, or its weights ``[kernel, recurrent_kernel, bias]``
      (``bias`` optional): gives a :class:`gatekit.Cell`;
    - a Keras ``LSTM`` or ``GRU`` layer or ``Bidirectional`` of one (or the 6 arrays of the
      latter's ``get_weights()``: the forward layer's, then the backward layer's): gives a
      one-layer :class:`gatekit.LSTM`;
    - a list of those, one per layer of a stack: gives a :class:`gatekit.LSTM` with that many
      layers.

    GRU weights (told from an LSTM's by ``recurrent_kernel``: (H, 3H) rather than (H, 4H)) give
    the variant ``gru``; the GRU must be ``reset_after=True`` (Keras' default), with its bias
    (2, 3H). Keras layers must use ``activation='tanh'`` and ``recurrent_activation='sigmoid'``
    (the defaults). Keras is batch-major, so the layer is ``batch_first=True`` unless asked
    otherwise. ``dtype`` is the parameters' (by default the weights').
    """
    single = hasattr(source, "get_weights") or (
        isinstance(source, (list, tuple)) and len(source) > 0
        and all(not isinstance(w, (list, tuple)) and not hasattr(w, "get_weights")
                for w in source))
    if single:
        directions, kind, form = _keras_source(source, "the Keras layer")
        stack = [directions]
    else:
        if not isinstance(source, (list, tuple)) or not source:
            raise TypeError("from_keras takes a Keras LSTM, LSTMCell, GRU, GRUCell or "
                            "Bidirectional layer, its get_weights() list, or a non-empty list of "
                            f"those (one per layer); got {type(source).__name__}")
        stack, form, kinds = [], "layer", []
        for k, layer in enumerate(source):
            directions, layer_kind, _ = _keras_source(layer, f"layer {k}")
            stack.append(directions)
            kinds.append(layer_kind)
        if len(set(kinds)) != 1:
            raise ValueError(f"every layer of the stack must be of one kind; got {kinds}")
        kind = kinds[0]
    bidirectional = len(stack[0]) == 2
    if any(len(directions) != len(stack[0]) for directions in stack):
        raise ValueError("every layer of the stack must be bidirectional, or none")
    G = len(_KINDS[kind].keras_order)
    H = stack[0][0][1].shape[0] if stack[0][0][1].ndim == 2 else 0
    if H == 0 or stack[0][0][1].shape != (H, G * H):
        raise ValueError(f"layer 0 recurrent_kernel has shape {stack[0][0][1].shape}; expected "
                         f"(units, {G} * units)")
    D = stack[0][0][0].shape[0] if stack[0][0][0].ndim == 2 else 0
    converted = []
    for k, directions in enumerate(stack):
        size = D if k == 0 else len(directions) * H
        for d, weights in enumerate(directions):
            where = "the Keras layer" if single else f"layer {k}"
            if d:
                where += " (backward)"
            converted.append(_keras_blocks(weights, size, H, where, kind))
    dtype = _result_dtype([w for directions in stack for weights in directions for w in weights],
                          dtype, "the Keras weights")
    if form == "cell":
        model = Cell(D, H, _KINDS[kind].variant, dtype=dtype)
    else:
        model = LSTM(D, H, len(stack), bidirectional=bidirectional, batch_first=batch_first,
                     variant=_KINDS[kind].variant, dtype=dtype)
    for (_, cell), params in zip(_cells(model), converted):
        _fill(cell, params)
    return model


def to_keras(model):
    """Keras weights of a gatekit ``standard`` or ``gru`` model, as ``layer.set_weights`` takes
    them.

    A :class:`gatekit.Cell` gives ``[kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,)]``
    (for a Keras ``LSTM(H)`` or ``LSTMCell(H)``); a ``gru`` cell ``[kernel (D, 3H),
    recurrent_kernel (H, 3H), bias (2, 3H)]`` (for ``GRU(H)``/``GRUCell(H)`` with
    ``reset_after=True``; the update and reset gates' whole bias in the input row, ``b_hn`` in
    the recurrent row). A :class:`gatekit.LSTM` gives one such list per layer, with the forward
    direction's three arrays followed by the backward direction's for a bidirectional layer (for
    ``Bidirectional(LSTM(H, return_sequences=True))`` or of a ``GRU``).
    """
    kind = _kind(model, "Keras")

    def weights(cell):
        W_in, W_rec, b_in, b_rec = _stack(_blocks(cell, kind), _KINDS[kind].keras_order)
        bias = b_in if _KINDS[kind].keras_biases == 1 else np.stack([b_in, b_rec])
        return [np.ascontiguousarray(W_in.T), np.ascontiguousarray(W_rec.T), bias]

    if isinstance(model, Cell):
        return weights(model)
    cells = _cells(model)
    D = model.directions
    return [[w for _, cell in cells[k * D:(k + 1) * D] for w in weights(cell)]
            for k in range(model.num_layers)]


# --- ONNX ----------------------------------------------------------------------------------------

def _onnx_kind(model):
    """``"lstm"`` or ``"gru"``: the ONNX operator that computes ``model``; refuses the gate
    compositions neither can express."""
    if model.proj_size is not None:
        raise ValueError(f"ONNX has no LSTM with a projected STM; this model has "
                         f"proj_size={model.proj_size}. Only PyTorch's (torch.nn.LSTM("
                         "proj_size=P)) converts")
    names = model.gate_names
    if names == GRU:
        return "gru"
    for role, allowed in ONNX_GATES.items():
        if names[role] not in allowed:
            raise ValueError(
                f"ONNX's LSTM operator cannot express {role} gate {names[role]!r} (variant "
                f"{model.variant!r}): it runs the standard cell, with peepholes (P) and with "
                "input_forget=1; the variants that convert are 'standard', 'peephole' and 'cifg' "
                f"(allowed gates: {ONNX_GATES})")
    return "lstm"


def _onnx_cell(cell, kind):
    """One direction's W (G H, D), R (G H, H), B (2 G H,) and P (3H,) or None."""
    names = cell.gate_names
    blocks = _blocks(cell, kind)
    if names["learn"] == "coupled":
        # i_onnx = 1 - f_gatekit = σ(-(forget pre-activation)): the forget weights negated.
        W_rec, W_in, b_in, b_rec = blocks["f"]
        blocks["i"] = (-W_rec, -W_in, -b_in, b_rec)
    W, R, b_in, b_rec = _stack(blocks, _KINDS[kind].onnx_order)
    B = np.concatenate([b_in, b_rec])
    if "peephole" not in (names["forget"], names["learn"], names["use"]):
        return W, R, B, None
    p = cell.params
    zero = np.zeros(cell.hidden_size, cell.dtype)
    peep = {"f": np.asarray(p["p_f"]) if "p_f" in p else zero,
            "v": np.asarray(p["p_v"]) if "p_v" in p else zero}
    if names["learn"] == "coupled":
        peep["i"] = -peep["f"]
    else:
        peep["i"] = np.asarray(p["p_i"]) if "p_i" in p else zero
    return W, R, B, np.concatenate([peep[k] for k in ONNX_PEEPHOLE_ORDER])


def to_onnx(model):
    """The inputs and attributes of ONNX ``LSTM`` operators computing what ``model`` computes,
    or of ``GRU`` operators for a ``gru`` model.

    A :class:`gatekit.Cell` gives one dict: ``W`` (1, 4H, D), ``R`` (1, 4H, H), ``B`` (1, 8H)
    (the bias in the ``Wb`` half, zeros in ``Rb``), ``P`` (1, 3H) if a gate has peepholes, and
    the attributes ``hidden_size``, ``direction`` ("forward"), ``input_forget`` and ``layout``
    (0). A :class:`gatekit.LSTM` gives one such dict per layer (an ONNX LSTM node is one
    layer), with ``direction="bidirectional"`` (first axis: forward, reverse) if it is, and
    ``layout=1`` if it is ``batch_first``. The gates must be ONNX's: standard, peephole
    (missing peepholes are zeros) or coupled input and forget (``input_forget=1``).

    A ``gru`` model gives the same with ``W`` (dirs, 3H, D), ``R`` (dirs, 3H, H), ``B``
    (dirs, 6H) (the update and reset gates' whole bias in ``Wb``, ``b_hn`` in ``Rb``'s h block),
    no ``P`` nor ``input_forget``, and ``linear_before_reset=1``: the inputs of ONNX ``GRU``
    nodes.
    """
    kind = _onnx_kind(model)
    if kind == "gru":
        attributes = {"linear_before_reset": 1}
    else:
        attributes = {"input_forget": int(model.gate_names["learn"] == "coupled")}
    cells = [cell for _, cell in _cells(model)]
    directions = model.directions if isinstance(model, LSTM) else 1
    layers = []
    for k in range(len(cells) // directions):
        parts = [_onnx_cell(cell, kind) for cell in cells[k * directions:(k + 1) * directions]]
        layer = {"W": np.stack([part[0] for part in parts]),
                 "R": np.stack([part[1] for part in parts]),
                 "B": np.stack([part[2] for part in parts])}
        if parts[0][3] is not None:
            layer["P"] = np.stack([part[3] for part in parts])
        layer.update(hidden_size=model.hidden_size,
                     direction="bidirectional" if directions == 2 else "forward",
                     **attributes, layout=int(isinstance(model, LSTM) and model.batch_first))
        layers.append(layer)
    return layers[0] if isinstance(model, Cell) else layers


def _check_onnx_layer(layer, where, kind):
    """Refuse what gatekit's cell of ``kind`` does not compute; return the number of
    directions, the flags (``input_forget``) and whether the layout is batch-major."""
    form = _KINDS[kind]
    unknown = [key for key in layer if key not in {*form.onnx_inputs, *form.onnx_attributes}]
    if unknown:
        inputs = form.onnx_inputs
        raise ValueError(f"{where} has unknown keys {', '.join(map(repr, unknown))}; expected "
                         f"{', '.join(inputs[:2])}, optional {' and '.join(inputs[2:])}, and the "
                         f"{form.onnx_operator} attributes {sorted(form.onnx_attributes)}")
    for key in ("W", "R"):
        if key not in layer:
            raise ValueError(f"{where} lacks {key!r}")
    if kind == "gru":
        reset = layer.get("linear_before_reset", 0)
        if reset != 1:
            raise ValueError(f"{where} has linear_before_reset={reset!r}"
                             f"{'' if 'linear_before_reset' in layer else ' (ONNX default)'}: "
                             "its reset gate multiplies the state before the recurrent product, "
                             "a cell gatekit's GRU is not; gatekit converts "
                             "linear_before_reset=1 (the form of PyTorch and cuDNN)")
    direction = layer.get("direction", "forward")
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where} has direction={direction!r}; gatekit runs 'forward' and "
                         f"'bidirectional' {form.onnx_operator}s (a lone reverse direction has "
                         "no gatekit equivalent)")
    directions = 2 if direction == "bidirectional" else 1
    activations = layer.get("activations")
    if activations is not None:
        got = tuple(a.decode() if isinstance(a, bytes) else str(a) for a in activations)
        if tuple(a.lower() for a in got) != form.onnx_activations * directions:
            defaults = ", ".join(a.capitalize() for a in form.onnx_activations)
            raise ValueError(f"{where} has activations={list(got)}; gatekit's "
                             f"{form.onnx_operator} uses ONNX's defaults {defaults} (per "
                             "direction)")
    if layer.get("clip") is not None:
        raise ValueError(f"{where} has clip={layer['clip']!r}; gatekit does not clip the "
                         "pre-activations")
    flags = []
    for name in form.onnx_flags:
        flags.append(layer.get(name, 0))
        if flags[-1] not in (0, 1):
            raise ValueError(f"{where} has {name}={flags[-1]!r}; expected 0 or 1")
    layout = layer.get("layout", 0)
    if layout not in (0, 1):
        raise ValueError(f"{where} has layout={layout!r}; expected 0 or 1")
    return directions, tuple(map(bool, flags)), bool(layout)


def _is_onnx_gru(layer):
    """Whether ``layer`` holds an ONNX GRU's inputs: ``R`` of 3H rows (an LSTM's has 4H), or
    the GRU's own attribute."""
    if "linear_before_reset" in layer:
        return True
    R = np.shape(layer.get("R", ()))
    return len(R) == 3 and R[2] > 0 and R[1] == 3 * R[2]


def _onnx_array(layer, key, shape, explanation, where):
    array = _to_numpy(layer[key], f"{where} {key}")
    _check_shape(f"{where} {key}", array, shape, explanation)
    return array


def from_onnx(source, *, dtype=None):
    """A gatekit model from the inputs and attributes of ONNX ``LSTM`` or ``GRU`` operators.

    ``source`` is a dict with ``W`` (dirs, 4H, D), ``R`` (dirs, 4H, H), optional ``B``
    (dirs, 8H) and ``P`` (dirs, 3H), and optional attributes ``hidden_size``, ``direction``
    ("forward" or "bidirectional"), ``input_forget``, ``layout``, ``activations`` (only the
    defaults), ``clip`` (only None); or a list of such dicts, one per layer of a stack. One
    forward dict of layout 0 gives a :class:`gatekit.Cell`; anything else a
    :class:`gatekit.LSTM` (``batch_first`` if ``layout=1``).

    The gates follow the inputs: standard without ``P``, peephole gates with it, and with
    ``input_forget=1`` gatekit's coupled learn gate, whose forget gate is ONNX's input gate
    negated (variant ``cifg`` with ``P``).

    A GRU's inputs (``R`` of 3H rows: ``W`` (dirs, 3H, D), ``R`` (dirs, 3H, H), optional ``B``
    (dirs, 6H); attributes as above, without ``input_forget``, and ``linear_before_reset``,
    which must be 1) give the variant ``gru``.
    """
    layers = [source] if isinstance(source, Mapping) else source
    if not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError("from_onnx takes a dict of ONNX LSTM or GRU inputs and attributes, or a "
                        f"non-empty list of them; got {type(source).__name__}")
    for k, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            raise TypeError(f"layer {k} must be a dict of ONNX LSTM or GRU inputs and "
                            f"attributes; got {type(layer).__name__}")
    grus = [_is_onnx_gru(layer) for layer in layers]
    if any(grus) and not all(grus):
        raise ValueError("every layer must be a GRU or none: layers "
                         f"{[k for k, gru in enumerate(grus) if not gru]} are LSTMs")
    kind = "gru" if grus[0] else "lstm"
    form = _KINDS[kind]
    G = len(form.onnx_order)
    where = (lambda k: f"the ONNX {form.onnx_operator}") if isinstance(source, Mapping) else (
        lambda k: f"layer {k}")
    checked = [_check_onnx_layer(layer, where(k), kind) for k, layer in enumerate(layers)]
    if len(set(checked)) != 1:
        raise ValueError("every layer must have the same "
                         f"{', '.join(('direction',) + form.onnx_flags)} and layout")
    directions, flags, batch_major = checked[0]
    coupled = "input_forget" in form.onnx_flags and flags[0]
    peepholes = ["P" in layer and layer["P"] is not None for layer in layers]
    if len(set(peepholes)) != 1:
        raise ValueError("either every layer has peepholes P or none")
    R0 = _to_numpy(layers[0]["R"], f"{where(0)} R")
    if R0.ndim != 3 or R0.shape[1] != G * R0.shape[2] or R0.shape[2] == 0:
        raise ValueError(f"{where(0)} R has shape {R0.shape}; expected (num_directions, "
                         f"{G} * hidden_size, hidden_size)")
    H = R0.shape[2]
    W0 = _to_numpy(layers[0]["W"], f"{where(0)} W")
    if W0.ndim != 3 or W0.shape[2] == 0:
        raise ValueError(f"{where(0)} W has shape {W0.shape}; expected (num_directions, "
                         f"{G} * hidden_size, input_size)")
    D = W0.shape[2]
    converted, read = [], []
    for k, layer in enumerate(layers):
        if layer.get("hidden_size", H) != H:
            raise ValueError(f"{where(k)} has hidden_size={layer['hidden_size']!r}, but R has "
                             f"hidden size {H}")
        size = D if k == 0 else directions * H
        W = _onnx_array(layer, "W", (directions, G * H, size),
                        f"num_directions, {G} * hidden_size, input size", where(k))
        R = _onnx_array(layer, "R", (directions, G * H, H),
                        f"num_directions, {G} * hidden_size, hidden_size", where(k))
        read += [W, R]
        if layer.get("B") is not None:
            B = _onnx_array(layer, "B", (directions, 2 * G * H),
                            f"num_directions, {2 * G} * hidden_size", where(k))
            read.append(B)
        else:
            B = np.zeros((directions, 2 * G * H))
        P = None
        if peepholes[0]:
            P = _onnx_array(layer, "P", (directions, 3 * H), "num_directions, 3 * hidden_size",
                            where(k))
            read.append(P)
        for d in range(directions):
            blocks = _split(W[d], R[d], B[d, :G * H], B[d, G * H:], form.onnx_order)
            peep = {} if P is None else {f"p_{block}": P[d, j * H:(j + 1) * H]
                                         for j, block in enumerate(ONNX_PEEPHOLE_ORDER)}
            if coupled:
                # f_gatekit = 1 - i_onnx = σ(-(input pre-activation)); ONNX ignores its f slot.
                blocks["f"] = tuple(-np.asarray(a) for a in blocks.pop("i"))
                if P is not None:
                    peep["p_f"] = -peep.pop("p_i")
            converted.append({**_params(blocks, kind), **peep})
    dtype = _result_dtype(read, dtype, "the ONNX arrays")
    gates = {}
    if peepholes[0]:
        variant = "cifg" if coupled else "peephole"
    else:
        variant = form.variant
        if coupled:
            gates["learn"] = "coupled"
    if isinstance(source, Mapping) and directions == 1 and not batch_major:
        model = Cell(D, H, variant, **gates, dtype=dtype)
    else:
        model = LSTM(D, H, len(layers), bidirectional=directions == 2, variant=variant, **gates,
                     batch_first=batch_major, dtype=dtype)
    for (_, cell), params in zip(_cells(model), converted):
        _fill(cell, params)
    return model


__all__ = ["from_keras", "from_onnx", "from_torch", "to_keras", "to_onnx", "to_torch"]
