"""PyTorch's contenders: ``torch.nn.LSTM`` (the fused kernel) with the parameters of gatekit's
``standard``, and ``course``, ``peephole`` and ``cifg`` written as a PyTorch user writes a custom
cell, with the parameters of gatekit's cell of that variant. PyTorch is imported when a contender
is built: without it, each is :class:`~harness.contenders.Unavailable`."""
import numpy as np

from harness.cases import inputs
from harness.contenders import (LOOP_VARIANTS, Contender, Prepared, Unavailable, gatekit_cell,
                                stacked_parameters)

__all__ = ["TORCH_BASELINE", "import_torch", "torch_callable", "torch_cells", "torch_contenders",
           "torch_lstm_model", "torch_loop_model"]

#: ``torch.nn.LSTM``: the second column of ratios in the report.
TORCH_BASELINE = "torch-nn-LSTM"


def import_torch():
    """The ``torch`` module, or :class:`~harness.contenders.Unavailable` saying how to get it."""
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed (pip install torch)") from None
    return torch


_TORCH_CELLS = {}


def torch_cells():
    """The custom cells, written as a PyTorch user writes them: an ``nn.Module`` with one
    ``Linear`` on ``cat([h, x_t])`` for every gate block, stepped in a Python loop."""
    if _TORCH_CELLS:
        return _TORCH_CELLS
    torch = import_torch()
    nn = torch.nn

    class LoopLSTM(nn.Module):
        blocks = 4

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__()
            self.hidden_size = hidden_size
            self.gates = nn.Linear(hidden_size + input_size, self.blocks * hidden_size,
                                   dtype=dtype)

        def forward(self, x, state=None):
            T, B, _ = x.shape
            if state is None:
                h = x.new_zeros(B, self.hidden_size)
                c = x.new_zeros(B, self.hidden_size)
            else:
                h, c = state
            ys = []
            for t in range(T):
                h, c = self.step(x[t], h, c)
                ys.append(h)
            return torch.stack(ys), (h, c)

    class CourseLSTM(LoopLSTM):
        """f, i, v = σ(..), N = tanh(..), U = tanh(W_u (c ⊙ f) + b_u), h = U ⊙ v."""

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__(input_size, hidden_size, dtype)
            self.use = nn.Linear(hidden_size, hidden_size, dtype=dtype)

        def step(self, x_t, h, c):
            z_f, z_n, z_i, z_v = self.gates(torch.cat([h, x_t], dim=1)).chunk(4, dim=1)
            f = torch.sigmoid(z_f)
            kept = c * f
            c = kept + torch.tanh(z_n) * torch.sigmoid(z_i)
            h = torch.tanh(self.use(kept)) * torch.sigmoid(z_v)
            return h, c

    class PeepholeLSTM(LoopLSTM):
        """Standard with peepholes p_f ⊙ c_{t-1} in f, p_i ⊙ c_{t-1} in i, p_v ⊙ c_t in v."""

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__(input_size, hidden_size, dtype)
            self.p_f = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))
            self.p_i = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))
            self.p_v = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))

        def step(self, x_t, h, c):
            z_f, z_n, z_i, z_v = self.gates(torch.cat([h, x_t], dim=1)).chunk(4, dim=1)
            f = torch.sigmoid(z_f + self.p_f * c)
            i = torch.sigmoid(z_i + self.p_i * c)
            c = c * f + torch.tanh(z_n) * i
            h = torch.tanh(c) * torch.sigmoid(z_v + self.p_v * c)
            return h, c

    class CIFGLSTM(LoopLSTM):
        """Peephole with the input gate coupled to the forget gate: i = 1 - f."""
        blocks = 3

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__(input_size, hidden_size, dtype)
            self.p_f = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))
            self.p_v = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))

        def step(self, x_t, h, c):
            z_f, z_n, z_v = self.gates(torch.cat([h, x_t], dim=1)).chunk(3, dim=1)
            f = torch.sigmoid(z_f + self.p_f * c)
            c = c * f + torch.tanh(z_n) * (1 - f)
            h = torch.tanh(c) * torch.sigmoid(z_v + self.p_v * c)
            return h, c

    _TORCH_CELLS.update(course=CourseLSTM, peephole=PeepholeLSTM, cifg=CIFGLSTM)
    return _TORCH_CELLS


def _torch_dtype(torch, dtype):
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]


def torch_loop_model(cell):
    """The custom PyTorch cell of ``cell.variant`` (course, peephole or cifg) with ``cell``'s
    parameters copied in (:func:`~harness.contenders.stacked_parameters`): ``gates`` takes ``W``
    and ``b``, then ``use`` takes W_u and b_u (``course``), or the peepholes theirs."""
    torch = import_torch()
    model = torch_cells()[cell.variant](cell.input_size, cell.hidden_size,
                                        dtype=_torch_dtype(torch, cell.dtype))
    stacked = {name: torch.from_numpy(array) for name, array in stacked_parameters(cell).items()}
    with torch.no_grad():
        model.gates.weight.copy_(stacked.pop("W"))
        model.gates.bias.copy_(stacked.pop("b"))
        if cell.variant == "course":
            model.use.weight.copy_(stacked.pop("W_u"))
            model.use.bias.copy_(stacked.pop("b_u"))
        for name, tensor in stacked.items():
            getattr(model, name).copy_(tensor)
    return model


def torch_lstm_model(cell):
    """``torch.nn.LSTM`` with the parameters of a gatekit ``standard`` cell: PyTorch's blocks
    i, f, g, o are gatekit's i, f, n, v; ``weight_hh_l0`` takes the STM columns, ``weight_ih_l0``
    the input columns, ``bias_ih_l0`` the biases and ``bias_hh_l0`` zeros."""
    torch = import_torch()
    if cell.gate_names != {"forget": "standard", "learn": "standard", "remember": "standard",
                           "use": "standard"}:
        raise ValueError(f"torch.nn.LSTM runs the standard cell; got {cell!r}")
    H, p = cell.hidden_size, cell.params
    W = np.concatenate([p["W_i"], p["W_f"], p["W_n"], p["W_v"]])
    b = np.concatenate([p["b_i"], p["b_f"], p["b_n"], p["b_v"]])
    model = torch.nn.LSTM(cell.input_size, H, dtype=_torch_dtype(torch, cell.dtype))
    with torch.no_grad():
        model.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(W[:, :H])))
        model.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(W[:, H:])))
        model.bias_ih_l0.copy_(torch.from_numpy(b))
        model.bias_hh_l0.zero_()
    return model


def torch_callable(model, x, dy, mode):
    """Forward under ``torch.no_grad()``; or forward, the loss ``sum(y * dy)`` and
    ``torch.autograd.grad`` of it with respect to ``x`` and every parameter."""
    torch = import_torch()
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return model(x)
        return forward
    x = x.detach().requires_grad_(True)
    wrt = [x, *model.parameters()]

    def forward_backward():
        y, _ = model(x)
        return torch.autograd.grad((y * dy).sum(), wrt)
    return forward_backward


def _torch_prepare(case, model_of):
    torch = import_torch()
    cell_variant, model = model_of(case)
    x, dy = inputs(case)
    fn = torch_callable(model, torch.from_numpy(x), torch.from_numpy(dy), case.mode)
    return Prepared(fn, {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                         "params_from": cell_variant})


def _torch_lstm_builder(case, settings):
    return _torch_prepare(case, lambda case: ("standard", torch_lstm_model(gatekit_cell(case))))


def _torch_loop_builder(variant):
    return lambda case, settings: _torch_prepare(
        case, lambda case: (variant, torch_loop_model(gatekit_cell(case, variant))))


def torch_contenders():
    """The ``torch`` family, in the report's order."""
    found = [Contender(TORCH_BASELINE, "torch.nn.LSTM", "torch", _torch_lstm_builder,
                       lambda case: True)]
    for variant in LOOP_VARIANTS:
        found.append(Contender(f"torch-loop-{variant}", f"torch loop {variant}", "torch",
                               _torch_loop_builder(variant)))
    return found
