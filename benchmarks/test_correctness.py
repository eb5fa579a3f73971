"""Correctness guards (untimed): the PyTorch and JAX versions that the suite times compute what
gatekit's variant computes with the same parameters, at a small shape in float64 to 1e-10:
outputs, final memories, and the gradients of sum(y * dy) with respect to x and every parameter.

They run with the timed suite disabled, in a few seconds:
``pytest benchmarks --benchmark-disable -k correct`` (``make bench`` runs them first).
"""
import numpy as np
import pytest

from harness.cases import Case, inputs
from harness.contenders import LOOP_VARIANTS, Unavailable, gatekit_cell
from harness.jax_contenders import import_jax, jax_callable, jax_loop
from harness.torch_contenders import (import_torch, torch_callable, torch_lstm_model,
                                      torch_loop_model)

pytestmark = pytest.mark.correctness

SMALL = Case("small", T=7, B=3, D=5, H=4, dtype="float64", mode="fwdbwd")
TOLERANCE = 1e-10


def gatekit_run(variant):
    """A float64 cell of ``variant`` with every parameter drawn anew (peepholes included), its
    inputs, and its outputs and gradients."""
    cell = gatekit_cell(SMALL, variant)
    rng = np.random.default_rng(7)
    for name, array in cell.params.items():
        array[...] = rng.uniform(-0.8, 0.8, array.shape)
    x, dy = inputs(SMALL, seed=3)
    x *= 1.5
    y, (stm, ltm), tape = cell.forward(x, keep=True)
    return cell, x, dy, (y, stm, ltm), cell.backward(tape, dy)


def expected_grads(cell, grads, blocks, extras):
    """gatekit's gradients named like the PyTorch/JAX parameters: the gate blocks stacked."""
    named = {"W": np.concatenate([grads[f"W_{k}"] for k in blocks]),
             "b": np.concatenate([grads[f"b_{k}"] for k in blocks])}
    named.update({name: grads[name] for name in extras})
    return named


def close(name, got, want):
    got = np.asarray(got)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    error = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert error <= TOLERANCE, f"{name}: differs from gatekit by {error:.3g}"


def require(loader):
    """The library ``loader`` (``import_torch`` or ``import_jax``) imports, or skip."""
    try:
        return loader()
    except Unavailable as reason:
        pytest.skip(str(reason))


TORCH_NAMES = {"gates.weight": "W", "gates.bias": "b", "use.weight": "W_u", "use.bias": "b_u",
               "p_f": "p_f", "p_i": "p_i", "p_v": "p_v"}


@pytest.mark.parametrize("variant", list(LOOP_VARIANTS))
def test_correct_torch_loop(variant):
    torch = require(import_torch)
    cell, x, dy, (y, stm, ltm), grads = gatekit_run(variant)
    model = torch_loop_model(cell)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    y_t, (h_t, c_t) = torch_callable(model, xt, dyt, "forward")()
    close("y", y_t.numpy(), y)
    close("final STM", h_t.numpy(), stm)
    close("final LTM", c_t.numpy(), ltm)

    got = torch_callable(model, xt, dyt, "fwdbwd")()
    blocks, extras = LOOP_VARIANTS[variant]
    want = expected_grads(cell, grads, blocks, extras)
    close("dx", got[0].numpy(), grads["x"])
    names = [TORCH_NAMES[name] for name, _ in model.named_parameters()]
    assert sorted(names) == sorted(want)
    for name, grad in zip(names, got[1:]):
        close(f"d{name}", grad.numpy(), want[name])


def test_correct_torch_nn_lstm():
    torch = require(import_torch)
    cell, x, dy, (y, stm, ltm), grads = gatekit_run("standard")
    model = torch_lstm_model(cell)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    y_t, (h_t, c_t) = torch_callable(model, xt, dyt, "forward")()
    close("y", y_t.numpy(), y)
    close("final STM", h_t[0].numpy(), stm)
    close("final LTM", c_t[0].numpy(), ltm)

    got = dict(zip(["x"] + [name for name, _ in model.named_parameters()],
                   torch_callable(model, xt, dyt, "fwdbwd")()))
    H = cell.hidden_size
    dW = np.concatenate([grads["W_i"], grads["W_f"], grads["W_n"], grads["W_v"]])
    db = np.concatenate([grads["b_i"], grads["b_f"], grads["b_n"], grads["b_v"]])
    close("dx", got["x"].numpy(), grads["x"])
    close("dweight_hh_l0", got["weight_hh_l0"].numpy(), dW[:, :H])
    close("dweight_ih_l0", got["weight_ih_l0"].numpy(), dW[:, H:])
    close("dbias_ih_l0", got["bias_ih_l0"].numpy(), db)
    close("dbias_hh_l0", got["bias_hh_l0"].numpy(), db)


@pytest.mark.parametrize("variant", list(LOOP_VARIANTS))
def test_correct_jax_scan(variant):
    jax = require(import_jax)
    cell, x, dy, (y, stm, ltm), grads = gatekit_run(variant)
    run, params = jax_loop(cell)
    xj, dyj = jax.numpy.asarray(x), jax.numpy.asarray(dy)
    assert xj.dtype == np.float64
    y_j, (h_j, c_j) = jax.jit(run)(params, xj)
    close("y", y_j, y)
    close("final STM", h_j, stm)
    close("final LTM", c_j, ltm)
    forward, _ = jax_callable(run, params, xj, dyj, "forward")
    close("y (compiled)", forward(), y)

    fwdbwd, _ = jax_callable(run, params, xj, dyj, "fwdbwd")
    dparams, dx = fwdbwd()
    blocks, extras = LOOP_VARIANTS[variant]
    want = expected_grads(cell, grads, blocks, extras)
    close("dx", dx, grads["x"])
    assert sorted(dparams) == sorted(want)
    for name, grad in dparams.items():
        close(f"d{name}", grad, want[name])
