"""Correctness guards (untimed): the PyTorch and JAX versions that the suite times compute what
gatekit's variant computes with the same parameters, at a small shape in float64 to 1e-10:
outputs, final memories, and the gradients of sum(y * dy) with respect to x and every parameter.
Issue 13's cells (gru, mgu, mut1, mingru, minlstm, slstm, layernorm) likewise, as PyTorch
Python loops and JAX scans, their final memories included (slstm's m and n), and gru as
torch.nn.GRU.

They run with the timed suite disabled, in a few seconds:
``pytest benchmarks --benchmark-disable -k correct`` (``make bench`` runs them first).
"""
import numpy as np
import pytest

from harness.cases import Case, inputs
from harness.contenders import (LOOP_VARIANTS, NEEDS_D_EQUALS_H, NEW_CELLS, Unavailable,
                                carried_memories, gatekit_cell)
from harness.jax_contenders import import_jax, jax_callable, jax_loop
from harness.torch_contenders import (import_torch, new_cell_parameters, torch_callable,
                                      torch_gru_model, torch_lstm_model, torch_loop_model)

pytestmark = pytest.mark.correctness

SMALL = Case("small", T=7, B=3, D=5, H=4, dtype="float64", mode="fwdbwd")
SMALL_SQUARE = Case("small", T=7, B=3, D=4, H=4, dtype="float64", mode="fwdbwd")   # D = H
TOLERANCE = 1e-10


def gatekit_run(variant):
    """A float64 cell of ``variant`` with every parameter drawn anew (peepholes included), its
    inputs, and its outputs and gradients."""
    case = SMALL_SQUARE if variant in NEEDS_D_EQUALS_H else SMALL
    cell = require(lambda: gatekit_cell(case, variant))
    rng = np.random.default_rng(7)
    for name, array in cell.params.items():
        array[...] = rng.uniform(-0.8, 0.8, array.shape)
    x, dy = inputs(case, seed=3)
    x *= 1.5
    y, state, tape = cell.forward(x, keep=True)
    return cell, x, dy, (y, *state), cell.backward(tape, dy)


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


def close_layer_forward(model, xt, dyt, y, stm, ltm):
    """The outputs and final memories of a one-layer model shaped as ``torch.nn.LSTM``
    (``(h_n, c_n)`` with a layer axis) against gatekit's."""
    y_t, (h_t, c_t) = torch_callable(model, xt, dyt, "forward")()
    close("y", y_t.numpy(), y)
    close("final STM", h_t[0].numpy(), stm)
    close("final LTM", c_t[0].numpy(), ltm)


def require(loader):
    """What ``loader`` gives (``import_torch``, ``import_jax``, a cell of a variant), or skip
    with the reason it is unavailable."""
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
    close_layer_forward(model, xt, dyt, y, stm, ltm)

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


def close_memories(cell, got, state):
    """The final memories of a peer (``got``) against gatekit's final ``state`` (STM, LTM, extra
    memories): the STM alone where the cell's STM is its LTM (checked), else every one."""
    names = ("STM", "LTM", *cell.memories)
    assert len(state) == len(names)
    if carried_memories(cell) == 1:
        np.testing.assert_array_equal(state[0], state[1])
    assert len(got) == carried_memories(cell), f"{len(got)} memories, expected {names}"
    for name, array, want in zip(names, got, state):
        close(f"final {name}", np.asarray(array), want)


@pytest.mark.parametrize("variant", NEW_CELLS)
def test_correct_torch_loop_of_issue_13s_cells(variant):
    torch = require(import_torch)
    cell, x, dy, (y, *state), grads = gatekit_run(variant)
    model = torch_loop_model(cell)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    y_t, state_t = torch_callable(model, xt, dyt, "forward")()
    close("y", y_t.numpy(), y)
    close_memories(cell, [tensor.numpy() for tensor in state_t], state)

    got = torch_callable(model, xt, dyt, "fwdbwd")()
    want = new_cell_parameters(grads, model)
    close("dx", got[0].numpy(), grads["x"])
    names = [name for name, _ in model.named_parameters()]
    assert sorted(names) == sorted(want)
    assert sorted(s for symbols in model.copies.values() for s in symbols) == sorted(cell.params)
    for name, grad in zip(names, got[1:]):
        close(f"d{name}", grad.numpy(), want[name])


def test_correct_torch_nn_gru():
    torch = require(import_torch)
    cell, x, dy, (y, stm, ltm), grads = gatekit_run("gru")
    model = torch_gru_model(cell)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    y_t, h_t = torch_callable(model, xt, dyt, "forward")()
    close("y", y_t.numpy(), y)
    close("final STM", h_t[0].numpy(), stm)

    got = dict(zip(["x"] + [name for name, _ in model.named_parameters()],
                   torch_callable(model, xt, dyt, "fwdbwd")()))
    H = cell.hidden_size
    close("dx", got["x"].numpy(), grads["x"])
    # Rows r, z, n: gatekit's r, f, then n (input) and hn (recurrent).
    close("dweight_ih_l0", got["weight_ih_l0"].numpy(),
          np.concatenate([grads["W_r"][:, H:], grads["W_f"][:, H:], grads["W_n"]]))
    close("dweight_hh_l0", got["weight_hh_l0"].numpy(),
          np.concatenate([grads["W_r"][:, :H], grads["W_f"][:, :H], grads["W_hn"]]))
    close("dbias_ih_l0", got["bias_ih_l0"].numpy(),
          np.concatenate([grads["b_r"], grads["b_f"], grads["b_n"]]))
    close("dbias_hh_l0", got["bias_hh_l0"].numpy(),
          np.concatenate([grads["b_r"], grads["b_f"], grads["b_hn"]]))


@pytest.mark.parametrize("variant", NEW_CELLS)
def test_correct_jax_scan_of_issue_13s_cells(variant):
    jax = require(import_jax)
    cell, x, dy, (y, *state), grads = gatekit_run(variant)
    run, params = jax_loop(cell)
    xj, dyj = jax.numpy.asarray(x), jax.numpy.asarray(dy)
    y_j, state_j = jax.jit(run)(params, xj)
    close("y", y_j, y)
    close_memories(cell, state_j, state)
    forward, _ = jax_callable(run, params, xj, dyj, "forward")
    close("y (compiled)", forward(), y)
    fwdbwd, _ = jax_callable(run, params, xj, dyj, "fwdbwd")
    dparams, dx = fwdbwd()
    close("dx", dx, grads["x"])
    assert sorted(dparams) == sorted(cell.params)
    for name, grad in dparams.items():
        close(f"d{name}", grad, grads[name])
