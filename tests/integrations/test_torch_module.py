"""gatekit.torch: the PyTorch modules against three oracles that are not gatekit's compiled
core: torch.autograd.gradcheck (finite differences), the NumPy reference, and torch.nn.LSTM /
torch.nn.GRU with the same weights. Skipped without torch."""
import copy
import subprocess
import sys
import threading

import numpy as np
import pytest

import gatekit
from gatekit import reference

from support import REPO

torch = pytest.importorskip("torch")
gk = gatekit.torch

T, B, D, H = 5, 3, 4, 4          # D = H: mgu and mut1 add the event to the memory unit by unit
F64_ATOL = 1e-10


def _inputs(dtype=torch.float64, seed=0, shape=(T, B, D)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


def _state(module, batch=B, seed=1):
    """An initial state for ``module`` (a Cell), as it takes it, requiring grad."""
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, H, generator=generator, dtype=torch.float64) * 0.5
    if module.gatekit.one_memory:
        return h.requires_grad_()
    c = torch.randn(batch, H, generator=generator, dtype=torch.float64) * 0.5
    return (h.requires_grad_(), c.requires_grad_())


def _flat(result):
    y, state = result
    return (y, state) if isinstance(state, torch.Tensor) else (y, *state)


# --- gradients: finite differences ---------------------------------------------------------------

@pytest.mark.parametrize("variant", gatekit.variants())
def test_cell_passes_gradcheck_for_every_preset(variant):
    cell = gk.Cell(D, H, variant, dtype=torch.float64, seed=0, threads=1)
    x = _inputs().requires_grad_()
    state = _state(cell)
    states = (state,) if isinstance(state, torch.Tensor) else state
    params = list(cell.parameters())

    def run(x, *inputs):
        given = inputs[0] if len(states) == 1 else inputs[:len(states)]
        return _flat(cell(x, given))

    # gradcheck moves each input, the parameters included (they are the model's memory), by
    # eps in place and reruns the cell.
    assert torch.autograd.gradcheck(run, (x, *states, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_layer_passes_gradcheck_bidirectional_two_layers_ragged():
    lstm = gk.LSTM(D, H, 2, bidirectional=True, variant="peephole", dtype=torch.float64, seed=0,
                   threads=1)
    x = _inputs().requires_grad_()
    h0 = (torch.randn(4, B, H, dtype=torch.float64) * 0.5).requires_grad_()
    c0 = (torch.randn(4, B, H, dtype=torch.float64) * 0.5).requires_grad_()
    lengths = torch.tensor([5, 2, 4])

    def run(x, h0, c0, *params):
        y, (h, c) = lstm(x, (h0, c0), lengths=lengths)
        return y, h, c

    assert torch.autograd.gradcheck(run, (x, h0, c0, *lstm.parameters()), eps=1e-6, atol=1e-6,
                                     rtol=1e-4)


# --- values and gradients: the NumPy reference ---------------------------------------------------

@pytest.mark.parametrize("variant", ["standard", "peephole", "gru", "slstm", "layernorm",
                                     "minlstm"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_cell_matches_the_reference(variant, dtype, tol):
    cell = gk.Cell(D, H, variant, dtype=dtype, seed=2)
    x = _inputs(dtype).requires_grad_()
    y, state = cell(x)
    states = (state,) if isinstance(state, torch.Tensor) else state
    dy = torch.randn_like(y)
    dfinal = [torch.randn_like(s) for s in states]
    torch.autograd.backward([y, *states], [dy, *dfinal])

    model = cell.gatekit
    x64 = x.detach().double().numpy()
    y_ref, final_ref = reference.forward(model, x64, dtype=np.float64)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, atol=tol, rtol=tol)
    np.testing.assert_allclose(states[0].detach().numpy(), final_ref[0], atol=tol, rtol=tol)
    dstm = dfinal[0].double().numpy()
    # One memory: the returned h is the STM and the LTM at once; its gradient is the STM's.
    dltm = None if model.one_memory else dfinal[1].double().numpy()
    dmemories = {name: d.double().numpy() for name, d in zip(model.memories, dfinal[2:])}
    grads = reference.backward(model, x64, dy.double().numpy(), dstm=dstm, dltm=dltm,
                               dtype=np.float64, dmemories=dmemories or None)
    np.testing.assert_allclose(x.grad.numpy(), grads["x"], atol=tol, rtol=tol)
    for name, param in cell.named_parameters():
        np.testing.assert_allclose(param.grad.numpy(), grads[name], atol=tol, rtol=tol,
                                   err_msg=name)


# --- torch.nn.LSTM and torch.nn.GRU, with the same weights ---------------------------------------

@pytest.mark.parametrize("variant, torch_class, options", [
    ("standard", "LSTM", {}), ("gru", "GRU", {}), ("standard", "LSTM", {"proj_size": 3})])
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_matches_torch_with_copied_weights(variant, torch_class, options, batch_first):
    ours = gk.LSTM(D, H, 2, bidirectional=True, variant=variant, batch_first=batch_first,
                   dtype=torch.float64, seed=3, **options)
    theirs = getattr(torch.nn, torch_class)(D, H, 2, bidirectional=True, batch_first=batch_first,
                                            dtype=torch.float64, **options)
    theirs.load_state_dict(ours.torch_state_dict())
    x = _inputs(shape=(B, T, D) if batch_first else (T, B, D))
    h0 = torch.randn(4, B, options.get("proj_size", H), dtype=torch.float64)
    c0 = torch.randn(4, B, H, dtype=torch.float64)
    results = []
    for module in (ours, theirs):
        xs = x.clone().requires_grad_()
        states = [s.clone().requires_grad_() for s in ((h0,) if variant == "gru" else (h0, c0))]
        y, final = module(xs, states[0] if variant == "gru" else tuple(states))
        finals = (final,) if variant == "gru" else final
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + sum(
            (f ** 2).sum() for f in finals)
        loss.backward()
        results.append((y.detach(), [f.detach() for f in finals], xs.grad,
                        [s.grad for s in states]))
    (y, finals, dx, dstates), (y_t, finals_t, dx_t, dstates_t) = results
    torch.testing.assert_close(y, y_t, atol=F64_ATOL, rtol=0)
    for ours_, theirs_ in zip(finals + [dx] + dstates, finals_t + [dx_t] + dstates_t):
        torch.testing.assert_close(ours_, theirs_, atol=F64_ATOL, rtol=0)
    # The parameters' gradients, through the same conversion as the weights.
    converted = gatekit.interop.from_torch({name: p.grad for name, p in
                                            theirs.named_parameters()}, dtype=np.float64)
    for name, param in ours.named_parameters():
        expected = converted.params[name]
        if name.endswith(("b_f", "b_r", "b_i", "b_n", "b_v")) and variant == "standard":
            expected = expected / 2          # from_torch sums bias_ih and bias_hh: both got it
        if variant == "gru" and name.split(".")[1] in ("b_f", "b_r"):
            expected = expected / 2
        torch.testing.assert_close(param.grad, torch.from_numpy(np.asarray(expected)),
                                   atol=F64_ATOL, rtol=0, msg=name)


def test_state_dict_loads_into_torch_and_back():
    ours = gk.LSTM(D, H, 2, dtype=torch.float32, seed=4)
    theirs = torch.nn.LSTM(D, H, 2)
    theirs.load_state_dict(ours.torch_state_dict())
    other = gk.LSTM(D, H, 2, seed=5)
    other.load_state_dict(theirs.state_dict())           # PyTorch's keys, converted
    x = _inputs(torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(other(x)[0], theirs(x)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(other(x)[0], ours(x)[0], atol=1e-6, rtol=0)
    assert set(ours.state_dict()) == set(ours.gatekit.params)
    gru = gk.Cell(D, H, "gru", seed=6)
    cell = torch.nn.GRUCell(D, H)
    cell.load_state_dict(gru.torch_state_dict())
    with torch.no_grad():
        h = gru(x)[1]
        h_t = torch.zeros(B, H)
        for t in range(T):
            h_t = cell(x[t], h_t)
    torch.testing.assert_close(h, h_t, atol=1e-5, rtol=0)


def test_a_state_dict_of_another_cell_is_refused():
    ours = gk.LSTM(D, H, variant="peephole", seed=0)
    with pytest.raises(ValueError, match="weights of"):
        ours.load_state_dict(torch.nn.LSTM(D, H).state_dict())


# --- training, modes, conversions ----------------------------------------------------------------

class _Model(torch.nn.Module):
    def __init__(self, variant):
        super().__init__()
        self.rnn = gk.LSTM(2, 16, variant=variant, batch_first=True, seed=0)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def _adding_batch(rng, batch=32, length=12):
    x, target = gatekit.tasks.AddingProblem(length).sample(batch, rng)
    return (torch.from_numpy(x.transpose(1, 0, 2).astype(np.float32)),
            torch.from_numpy(target.astype(np.float32)))


def test_training_with_adam_decreases_the_loss():
    torch.manual_seed(0)
    model = _Model("peephole")
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    rng = np.random.default_rng(0)
    x_eval, target_eval = _adding_batch(np.random.default_rng(99), batch=256)

    def evaluate():
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(x_eval), target_eval))

    before = evaluate()
    for _ in range(150):
        x, target = _adding_batch(rng)
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        optimiser.step()
    assert evaluate() < 0.5 * before


def test_no_grad_keeps_no_tape(monkeypatch):
    cell = gk.Cell(D, H, seed=0)
    kept = []
    forward = type(cell.gatekit).forward

    def spy(self, *args, keep=False, **kwargs):
        kept.append(keep)
        return forward(self, *args, keep=keep, **kwargs)

    monkeypatch.setattr(type(cell.gatekit), "forward", spy)
    x = _inputs(torch.float32)
    with torch.no_grad():
        y, _ = cell(x)
    assert not y.requires_grad and kept == [False]
    y, _ = cell(x)                          # the parameters require grad: a tape
    assert y.requires_grad and kept == [False, True]
    for param in cell.parameters():
        param.requires_grad_(False)
    y, _ = cell(x)                          # nothing requires grad
    assert not y.requires_grad and kept == [False, True, False]


def test_parameters_are_the_models_memory_and_conversions_rebind():
    cell = gk.Cell(D, H, seed=0)
    with torch.no_grad():
        cell.W_f.fill_(0.25)
    assert np.all(cell.gatekit.params["W_f"] == 0.25)        # no copy between them
    x = _inputs(torch.float32)
    y32, _ = cell(x)
    cell.double()                           # new float64 tensors for every parameter
    assert cell.dtype == torch.float64
    y64, _ = cell(x.double())
    assert cell.gatekit.dtype == np.float64
    torch.testing.assert_close(y64.float(), y32, atol=1e-5, rtol=0)
    with torch.no_grad():
        cell.W_f.fill_(0.5)
    assert np.all(cell.gatekit.params["W_f"] == 0.5)
    twin = copy.deepcopy(cell)
    with torch.no_grad():
        twin.W_f.fill_(1.0)
    torch.testing.assert_close(twin(x.double())[0], twin(x.double())[0])
    assert np.all(cell.gatekit.params["W_f"] == 0.5) and np.all(twin.gatekit.params["W_f"] == 1)


def test_lengths_and_batch_first_match_separate_runs():
    lstm = gk.LSTM(D, H, bidirectional=True, batch_first=True, dtype=torch.float64, seed=0)
    x = _inputs(shape=(B, T, D))
    lengths = [5, 2, 3]
    y, (h, c) = lstm(x, lengths=torch.tensor(lengths))
    assert y.shape == (B, T, 2 * H) and h.shape == c.shape == (2, B, H)
    for b, length in enumerate(lengths):
        y_b, (h_b, c_b) = lstm(x[b:b + 1, :length])
        torch.testing.assert_close(y[b:b + 1, :length], y_b, atol=F64_ATOL, rtol=0)
        assert torch.all(y[b, length:] == 0)
        torch.testing.assert_close(h[:, b:b + 1], h_b, atol=F64_ATOL, rtol=0)


def test_torch_compile_runs_and_matches_eager():
    model = _Model("standard")
    compiled = torch.compile(model)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 6, 2)).astype(np.float32))
    eager = model(x)
    eager.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=name)


# --- errors --------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_by_name():
    cell = gk.Cell(D, H, seed=0)
    x = _inputs(torch.float32)
    with pytest.raises(TypeError, match=r"x must be float32 or float64.*float16"):
        cell(x.half())
    with pytest.raises(TypeError, match=r"x is torch.float64 but this module computes in "
                                        r"torch.float32"):
        cell(x.double())
    with pytest.raises(ValueError, match="x is on device meta"):
        cell(x.to("meta"))
    with pytest.raises(TypeError, match="x must be a torch.Tensor; got ndarray"):
        cell(x.numpy())
    with pytest.raises(TypeError, match="lengths must be integers.*requires_grad"):
        cell(x, lengths=torch.tensor([1.0, 2.0, 3.0], requires_grad=True))
    with pytest.raises(ValueError, match=r"state\[1\] is on device meta"):
        cell(x, (torch.zeros(B, H), torch.zeros(B, H, device="meta")))
    with pytest.raises(ValueError, match="x must have shape"):
        cell(x[0])
    meta = gk.Cell(D, H, seed=0).to("meta")
    with pytest.raises(ValueError, match="parameter 'W_f' is on device meta"):
        meta(x)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        gk.Cell(D, H, dtype=torch.float16)


def test_second_derivatives_are_refused_rather_than_wrong():
    cell = gk.Cell(D, H, seed=0)
    x = _inputs(torch.float32).requires_grad_()
    y, _ = cell(x)
    (dx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)   # dy = 2 y: in the graph
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


# --- the GIL -------------------------------------------------------------------------------------

def test_a_long_call_lets_other_python_threads_run():
    """As the core's test (tests/core/test_threads.py): with a huge switch interval, the main
    thread can count while the worker is inside the call only if the call releases the GIL."""
    lstm = gk.LSTM(8, 32, seed=0, threads=1)
    observed = []
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        for steps in (4000, 16000, 40000):
            x = torch.randn(steps, 2, 8, requires_grad=True)
            started, done = threading.Event(), threading.Event()

            def worker():
                started.set()
                y, _ = lstm(x)
                y.sum().backward()
                done.set()

            thread = threading.Thread(target=worker)
            thread.start()
            started.wait(60)
            count = 0
            while count < 100_000 and not done.is_set():
                count += 1
            observed.append((steps, count, done.is_set()))
            thread.join(120)
            assert not thread.is_alive()
            if count == 100_000:
                break
    finally:
        sys.setswitchinterval(previous)
    assert observed[-1][1] == 100_000, f"the main thread never ran during the call: {observed}"


# --- the example ---------------------------------------------------------------------------------

def test_the_example_trains(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "torch_model.py"),
                           "--steps", "30"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "loss" in done.stdout

