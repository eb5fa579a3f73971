"""Correctness guard (untimed) of the ``gatekit.torch.LSTM`` contenders: at a small shape in
float64, the module's outputs, final memories and gradients of sum(y * dy) with respect to x and
every parameter are gatekit's to 1e-10 (``pytest benchmarks --benchmark-disable -k correct``)."""
import pytest

from harness.torch_contenders import import_torch, torch_callable
from harness.torch_module_contenders import MODULE_VARIANTS, gatekit_torch_model
from test_correctness import close, close_layer_forward, gatekit_run, require

pytestmark = pytest.mark.correctness


@pytest.mark.parametrize("variant", MODULE_VARIANTS)
def test_correct_gatekit_torch_module(variant):
    torch = require(import_torch)
    cell, x, dy, (y, stm, ltm), grads = gatekit_run(variant)
    model = gatekit_torch_model(cell)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    close_layer_forward(model, xt, dyt, y, stm, ltm)
    got = torch_callable(model, xt, dyt, "fwdbwd")()
    close("dx", got[0].numpy(), grads["x"])
    names = [name for name, _ in model.named_parameters()]
    assert sorted(names) == sorted(f"l0.{symbol}" for symbol in cell.params)
    for name, grad in zip(names, got[1:]):
        close(f"d{name}", grad.numpy(), grads[name.removeprefix("l0.")])
