"""PyTorch's contenders: ``torch.nn.LSTM`` (the fused kernel) with the parameters of gatekit's
``standard`` and ``torch.nn.GRU`` with those of gatekit's ``gru``; ``course``, ``peephole`` and
``cifg``, and issue 13's cells (``gru``, ``mgu``, ``mut1``, ``mingru``, ``minlstm``, ``slstm``,
``layernorm``), written as a PyTorch user writes a custom cell, with the parameters of
gatekit's cell of that variant. PyTorch is imported when a contender is built: without it, each
is :class:`~harness.contenders.Unavailable`."""
import numpy as np

from gatekit.benchmarking import import_torch, torch_callable, torch_dtype, torch_lstm_model

from harness.cases import COMMON_SHAPES, inputs
from harness.contenders import (LOOP_VARIANTS, NEW_CELLS, Contender, Prepared, Unavailable,
                                gatekit_cell, stacked_parameters, variant_applies)

__all__ = ["TORCH_BASELINE", "TORCH_GRU", "import_torch", "new_cell_parameters",
           "torch_callable", "torch_cells", "torch_contenders", "torch_gru_model",
           "torch_lstm_model", "torch_loop_model", "torch_new_cells"]

#: ``torch.nn.LSTM``: the second column of ratios in the report.
TORCH_BASELINE = "torch-nn-LSTM"
#: ``torch.nn.GRU``: the peer of gatekit's ``gru``.
TORCH_GRU = "torch-nn-GRU"


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


_NEW_CELLS = {}


def torch_new_cells():
    """Issue 13's cells as a PyTorch user writes them: an ``nn.Module`` stepped in a Python loop,
    one ``Linear`` for the gate blocks that read ``cat([h, x_t])``, one for those that read
    ``x_t`` only and one for a recurrent product of its own (layernorm: one for ``x_t``, one for
    ``h``, each with its ``LayerNorm``). Each module's ``copies`` maps its parameters to the
    gatekit parameters stacked into them (rows, in order, then shaped as the parameter). Its
    state is every memory it carries, in gatekit's order: ``(h,)`` for the one-memory cells,
    ``(h, c)`` for layernorm, ``(h, c, m, n)`` for slstm."""
    if _NEW_CELLS:
        return _NEW_CELLS
    torch = import_torch()
    nn = torch.nn

    class StateLoop(nn.Module):
        copies = {}
        memories = 1            # how many (B, H) memories the state carries, h first

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__()
            self.hidden_size = hidden_size
            self.build(input_size, hidden_size, dtype)

        def forward(self, x, state=None):
            if state is None:
                state = tuple(x.new_zeros(x.shape[1], self.hidden_size)
                              for _ in range(self.memories))
            ys = []
            for t in range(x.shape[0]):
                state = self.step(x[t], *state)
                ys.append(state[0])
            return torch.stack(ys), state

    class GRU(StateLoop):
        """r, f = σ(..) on [h, x]; n = tanh(W_n x + b_n + r ⊙ (W_hn h + b_hn));
        h = f ⊙ h + (1 - f) ⊙ n (f is torch.nn.GRU's z)."""
        copies = {"gates.weight": ("W_r", "W_f"), "gates.bias": ("b_r", "b_f"),
                  "event.weight": ("W_n",), "event.bias": ("b_n",),
                  "recurrent.weight": ("W_hn",), "recurrent.bias": ("b_hn",)}

        def build(self, D, H, dtype):
            self.gates = nn.Linear(H + D, 2 * H, dtype=dtype)
            self.event = nn.Linear(D, H, dtype=dtype)
            self.recurrent = nn.Linear(H, H, dtype=dtype)

        def step(self, x_t, h):
            r, f = torch.sigmoid(self.gates(torch.cat([h, x_t], dim=1))).chunk(2, dim=1)
            n = torch.tanh(self.event(x_t) + r * self.recurrent(h))
            return (f * h + (1 - f) * n,)

    class MGU(StateLoop):
        """f = σ(W_f [h, x] + b_f), i = 1 - f (MGU's gate);
        n = tanh(W_hn (i ⊙ h) + W_n x + b_n); h = f ⊙ h + i ⊙ n."""
        copies = {"gate.weight": ("W_f",), "gate.bias": ("b_f",), "event.weight": ("W_n",),
                  "event.bias": ("b_n",), "recurrent.weight": ("W_hn",)}

        def build(self, D, H, dtype):
            self.gate = nn.Linear(H + D, H, dtype=dtype)
            self.event = nn.Linear(D, H, dtype=dtype)
            self.recurrent = nn.Linear(H, H, bias=False, dtype=dtype)

        def step(self, x_t, h):
            f = torch.sigmoid(self.gate(torch.cat([h, x_t], dim=1)))
            i = 1 - f
            return (f * h + i * torch.tanh(self.recurrent(i * h) + self.event(x_t)),)

    class MUT1(StateLoop):
        """f = σ(W_f x + b_f) (1 - MUT1's z), r = σ(W_r [h, x] + b_r);
        n = tanh(W_hh (r ⊙ h) + tanh(x) + b_h); h = f ⊙ h + (1 - f) ⊙ n. D = H."""
        copies = {"event.weight": ("W_f",), "event.bias": ("b_f",), "gate.weight": ("W_r",),
                  "gate.bias": ("b_r",), "recurrent.weight": ("W_hh",),
                  "recurrent.bias": ("b_h",)}

        def build(self, D, H, dtype):
            self.event = nn.Linear(D, H, dtype=dtype)
            self.gate = nn.Linear(H + D, H, dtype=dtype)
            self.recurrent = nn.Linear(H, H, dtype=dtype)

        def step(self, x_t, h):
            f = torch.sigmoid(self.event(x_t))
            r = torch.sigmoid(self.gate(torch.cat([h, x_t], dim=1)))
            n = torch.tanh(self.recurrent(r * h) + torch.tanh(x_t))
            return (f * h + (1 - f) * n,)

    class MinGRU(StateLoop):
        """f = σ(W_f x + b_f), n = W_n x + b_n; h = f ⊙ h + (1 - f) ⊙ n."""
        copies = {"event.weight": ("W_f", "W_n"), "event.bias": ("b_f", "b_n")}

        def build(self, D, H, dtype):
            self.event = nn.Linear(D, 2 * H, dtype=dtype)

        def step(self, x_t, h):
            z_f, n = self.event(x_t).chunk(2, dim=1)
            f = torch.sigmoid(z_f)
            return (f * h + (1 - f) * n,)

    class MinLSTM(StateLoop):
        """f, i = σ(W_f x + b_f), σ(W_i x + b_i), n = W_n x + b_n;
        h = f / (f + i) ⊙ h + i / (f + i) ⊙ n."""
        copies = {"event.weight": ("W_f", "W_i", "W_n"), "event.bias": ("b_f", "b_i", "b_n")}

        def build(self, D, H, dtype):
            self.event = nn.Linear(D, 3 * H, dtype=dtype)

        def step(self, x_t, h):
            z_f, z_i, n = self.event(x_t).chunk(3, dim=1)
            f, i = torch.sigmoid(z_f), torch.sigmoid(z_i)
            return ((f * h + i * n) / (f + i),)

    class SLSTM(StateLoop):
        """xLSTM's sLSTM, stabilised: f̃, ĩ, z̃, õ on [h, x]; m = max(f̃ + m, ĩ),
        f = exp(f̃ + m_prev - m), i = exp(ĩ - m); c = f ⊙ c + i ⊙ tanh(z̃), n = f ⊙ n + i,
        h = σ(õ) ⊙ c / n."""
        copies = {"gates.weight": ("W_f", "W_i", "W_n", "W_v"),
                  "gates.bias": ("b_f", "b_i", "b_n", "b_v")}
        memories = 4

        def build(self, D, H, dtype):
            self.gates = nn.Linear(H + D, 4 * H, dtype=dtype)

        def step(self, x_t, h, c, m, n):
            z_f, z_i, z_n, z_v = self.gates(torch.cat([h, x_t], dim=1)).chunk(4, dim=1)
            log_f = z_f + m
            m = torch.maximum(log_f, z_i)
            f, i = torch.exp(log_f - m), torch.exp(z_i - m)
            c = f * c + i * torch.tanh(z_n)
            n = f * n + i
            return torch.sigmoid(z_v) * c / n, c, m, n

    class LayerNormLSTM(StateLoop):
        """haste's LayerNormLSTM: a = LN(W_x x) + LN(W_h h) + b over the 4H pre-activations of
        f, i, n, v (each LN with a gain and no shift); c = σ(a_f) ⊙ c + σ(a_i) ⊙ tanh(a_n),
        h = σ(a_v) ⊙ tanh(LN(c)), LN(c) with a gain and a shift."""
        copies = {"event.weight": ("W_xf", "W_xi", "W_xn", "W_xv"),
                  "recurrent.weight": ("W_hf", "W_hi", "W_hn", "W_hv"),
                  "event_norm.weight": ("g_x",), "recurrent_norm.weight": ("g_h",), "bias": ("b",),
                  "memory_norm.weight": ("g_c",), "memory_norm.bias": ("b_c",)}
        memories = 2

        def build(self, D, H, dtype):
            self.event = nn.Linear(D, 4 * H, bias=False, dtype=dtype)
            self.recurrent = nn.Linear(H, 4 * H, bias=False, dtype=dtype)
            self.event_norm = nn.LayerNorm(4 * H, bias=False, dtype=dtype)
            self.recurrent_norm = nn.LayerNorm(4 * H, bias=False, dtype=dtype)
            self.bias = nn.Parameter(torch.zeros(4 * H, dtype=dtype))
            self.memory_norm = nn.LayerNorm(H, dtype=dtype)

        def step(self, x_t, h, c):
            a = (self.event_norm(self.event(x_t)) + self.recurrent_norm(self.recurrent(h))
                 + self.bias)
            a_f, a_i, a_n, a_v = a.chunk(4, dim=1)
            c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_n)
            return torch.sigmoid(a_v) * torch.tanh(self.memory_norm(c)), c

    _NEW_CELLS.update(gru=GRU, mgu=MGU, mut1=MUT1, mingru=MinGRU, minlstm=MinLSTM, slstm=SLSTM,
                      layernorm=LayerNormLSTM)
    return _NEW_CELLS


def new_cell_parameters(cell, model):
    """The parameters of ``model``, a module of :func:`torch_new_cells`, from a gatekit ``cell``
    of that variant (or its gradients, a mapping of the same names): each module parameter the
    gatekit arrays its ``copies`` names stacked by rows, shaped as the parameter (layernorm's
    gains, (4, H) in gatekit, are one LayerNorm's (4H,)), as NumPy arrays."""
    arrays = getattr(cell, "params", cell)
    shapes = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    return {name: np.concatenate([np.asarray(arrays[symbol]) for symbol in symbols])
            .reshape(shapes[name]) for name, symbols in model.copies.items()}


def torch_loop_model(cell):
    """The custom PyTorch cell of ``cell.variant`` (course, peephole or cifg) with ``cell``'s
    parameters copied in (:func:`~harness.contenders.stacked_parameters`): ``gates`` takes ``W``
    and ``b``, then ``use`` takes W_u and b_u (``course``), or the peepholes theirs. Issue 13's
    cells (:func:`torch_new_cells`) take theirs by their ``copies``."""
    torch = import_torch()
    if cell.variant in NEW_CELLS:
        model = torch_new_cells()[cell.variant](cell.input_size, cell.hidden_size,
                                                dtype=torch_dtype(torch, cell.dtype))
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, array in new_cell_parameters(cell, model).items():
                parameters[name].copy_(torch.from_numpy(array))
        return model
    model = torch_cells()[cell.variant](cell.input_size, cell.hidden_size,
                                        dtype=torch_dtype(torch, cell.dtype))
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


def torch_gru_model(cell):
    """``torch.nn.GRU`` with the parameters of a gatekit ``gru`` cell: PyTorch's blocks r, z, n
    are gatekit's r, f and n (input rows) with hn (recurrent rows); ``weight_hh_l0`` takes the
    STM columns of W_r and W_f, then W_hn; ``bias_ih_l0`` the biases b_r, b_f, b_n, and
    ``bias_hh_l0`` zeros, zeros and b_hn (the reset gate multiplies W_hn h + b_hn)."""
    torch = import_torch()
    if cell.variant != "gru":
        raise ValueError(f"torch.nn.GRU runs the gru cell; got {cell!r}")
    H, p = cell.hidden_size, {name: np.asarray(a) for name, a in cell.params.items()}
    weight_ih = np.concatenate([p["W_r"][:, H:], p["W_f"][:, H:], p["W_n"]])
    weight_hh = np.concatenate([p["W_r"][:, :H], p["W_f"][:, :H], p["W_hn"]])
    bias_ih = np.concatenate([p["b_r"], p["b_f"], p["b_n"]])
    bias_hh = np.concatenate([np.zeros(2 * H, cell.dtype), p["b_hn"]])
    model = torch.nn.GRU(cell.input_size, H, dtype=torch_dtype(torch, cell.dtype))
    with torch.no_grad():
        for name, array in (("weight_ih_l0", weight_ih), ("weight_hh_l0", weight_hh),
                            ("bias_ih_l0", bias_ih), ("bias_hh_l0", bias_hh)):
            getattr(model, name).copy_(torch.from_numpy(np.ascontiguousarray(array)))
    return model


def _torch_prepare(case, model_of):
    torch = import_torch()
    cell_variant, model = model_of(case)
    x, dy = inputs(case)
    fn = torch_callable(model, torch.from_numpy(x), torch.from_numpy(dy), case.mode)
    return Prepared(fn, {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                         "params_from": cell_variant})


def _torch_lstm_builder(case, settings):
    return _torch_prepare(case, lambda case: ("standard", torch_lstm_model(gatekit_cell(case))))


def _torch_gru_builder(case, settings):
    return _torch_prepare(case, lambda case: ("gru", torch_gru_model(gatekit_cell(case, "gru"))))


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
    found.append(Contender(TORCH_GRU, "torch.nn.GRU", "torch", _torch_gru_builder,
                           lambda case: case.shape in COMMON_SHAPES))
    for variant in NEW_CELLS:
        # Where gatekit's cell runs, but S6: a Python loop at T = 1000, B = 32 times PyTorch's
        # per-step overhead, which S1 shows already.
        applies = variant_applies(variant)
        found.append(Contender(f"torch-loop-{variant}", f"torch loop {variant}", "torch",
                               _torch_loop_builder(variant),
                               lambda case, applies=applies: case.shape != "S6" and applies(case)))
    return found
