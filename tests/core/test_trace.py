"""Cell.trace and gatekit.study.pictures.trace_layer against the reference equations.

The oracle is ``gatekit.reference.step`` in float64, run one step at a time from the same
inputs: every quantity the reference computes must be in the trace, with the reference's
value, and nothing else (but the event ``E_t`` and what a gate's ``trace`` declares).
"""
import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.study import pictures as visual

from support import F64_ATOL, assert_close, input_size_for, random_inputs, sigmoid

T, B, D, H = 7, 3, 4, 5
# E_t is the input, checked on its own; STM_prev, LTM_prev and an extra memory's n_prev are
# the step before's STM_t, LTM_t and n_t
NOT_TRACED = ("STM_prev", "LTM_prev", "E_t")


def reference_steps(cell, x, state=None, lengths=None):
    """Every step's quantities from the reference, in float64, as {name: (T, B, ...)}; for a
    ragged batch each sequence is run alone over its own steps and the rest is NaN."""
    x = np.asarray(x, np.float64)
    steps_T, steps_B, _ = x.shape
    lengths = np.full(steps_B, steps_T) if lengths is None else np.asarray(lengths)
    out = {}
    for b in range(steps_B):
        stm = np.zeros((1, cell.hidden_size)) if state is None else state[0][b:b + 1]
        ltm = np.zeros((1, cell.hidden_size)) if state is None else state[1][b:b + 1]
        memories = reference.initial_memories(
            cell, 1, np.float64, None if state is None else [s[b:b + 1] for s in state])
        for t in range(lengths[b]):
            known = reference.step(cell, x[t, b:b + 1], np.asarray(stm, np.float64),
                                   np.asarray(ltm, np.float64), dtype=np.float64,
                                   memories=memories)
            memories = {name: known[f"{name}_t"] for name in memories}
            for name, value in known.items():
                if name in cell.params or name in NOT_TRACED or name.endswith("_prev"):
                    continue
                value = np.broadcast_to(value, (1, value.shape[-1]))
                array = out.setdefault(name, np.full((steps_T, steps_B, value.shape[-1]),
                                                     np.nan))
                array[t, b] = value[0]
            stm, ltm = known["STM_t"], known["LTM_t"]
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", gatekit.variants())
def test_trace_matches_reference_for_every_variant(variant, dtype):
    cell = gatekit.Cell(input_size_for(variant, D, H), H, variant, dtype=dtype, seed=3)
    x, state = random_inputs(cell, T, B, seed=1)
    traced = cell.trace(x, state)
    expected = reference_steps(cell, x, state)
    # Besides the reference's quantities, only what a gate declares through its `trace`
    # (e.g. the floored plugin's phi_f, checked in that plugin's tests).
    extra = set(traced) - set(expected) - {"E_t"}
    assert not extra or any(type(gate).trace is not None for gate in cell.gates), extra
    assert traced["E_t"].shape == (T, B, cell.input_size)
    np.testing.assert_array_equal(traced["E_t"], x)
    for name, value in expected.items():
        assert traced[name].shape == (T, B, H), name
        assert traced[name].dtype == cell.dtype, name
        assert_close(cell.dtype, traced[name], value, name)


@pytest.mark.parametrize("variant", ["standard", "course", "janet"])
def test_trace_agrees_with_forward(variant):
    cell = gatekit.Cell(D, H, variant, dtype=np.float64, seed=0)
    x, state = random_inputs(cell, T, B, seed=2)
    y, (stm, ltm) = cell(x, state)
    traced = cell.trace(x, state)
    np.testing.assert_allclose(traced["STM_t"], y, rtol=0, atol=1e-15)
    np.testing.assert_allclose(traced["STM_t"][-1], stm, rtol=0, atol=1e-15)
    np.testing.assert_allclose(traced["LTM_t"][-1], ltm, rtol=0, atol=1e-15)
    # The Remember gate's equation holds between the traced quantities themselves.
    ltm_prev = np.concatenate([state[1][None], traced["LTM_t"][:-1]])
    np.testing.assert_allclose(traced["LTM_t"], ltm_prev * traced["f_t"]
                               + traced["N_t"] * traced["i_t"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(traced["STM_t"], traced["U_t"] * traced["V_t"], rtol=0,
                               atol=1e-15)


def test_trace_of_a_ragged_batch_is_nan_after_each_sequence_ends():
    cell = gatekit.Cell(D, H, "peephole", dtype=np.float64, seed=0)
    x, _ = random_inputs(cell, T, B, seed=4, state=False)
    lengths = np.array([T, 2, 5])
    traced = cell.trace(x, lengths=lengths)
    expected = reference_steps(cell, x, lengths=lengths)
    for name, value in expected.items():
        padded = np.isnan(value)
        assert np.array_equal(np.isnan(traced[name]), padded), name
        np.testing.assert_allclose(traced[name][~padded], value[~padded], rtol=0,
                                   atol=F64_ATOL, err_msg=name)


def test_trace_does_not_change_what_the_cell_computes():
    cell = gatekit.Cell(D, H, "course", seed=0)
    x, state = random_inputs(cell, T, B, seed=5)
    before = cell(x, state)[0].copy()
    cell.trace(x, state)
    np.testing.assert_array_equal(cell(x, state)[0], before)


# --- A plugin gate that declares what it exposes -------------------------------------------------

CALLS = []


def floored_trace(floor_f, f_t, LTM_t):
    """What the floored forget gate shows: its floor, and how much of f_t the floor gives."""
    CALLS.append(1)
    return {"phi_f": floor_f, "share_f": floor_f / f_t}


class TracedFloor(gatekit.PythonGate):
    """f_t = φ + (1 - φ) σ(W_f [STM_{t-1}, E_t] + b_f); declares φ and φ / f_t for traces."""
    role, name, blocks = "forget", "traced_floor", ("f",)
    params = {"floor_f": ("H",)}
    init = {"floor_f": 0.3}
    trace = staticmethod(floored_trace)

    @staticmethod
    def definition(STM_prev, E_t, W_f, b_f, floor_f):
        s_t = reference.linear(W_f, STM_prev, E_t, b_f)
        return {"f_t": floor_f + (1 - floor_f) * sigmoid(s_t)}

    def forward(self, step):
        floor = self.arrays["floor_f"]
        step.f_t[...] = floor + (1 - floor) * sigmoid(step.z("f"))

    def backward(self, step):
        floor = self.arrays["floor_f"]
        sig = sigmoid(step.z("f"))
        step.dz("f")[...] += step.df_t * (1 - floor) * sig * (1 - sig)
        step.dparams["floor_f"][...] += (step.df_t * (1 - sig)).sum(axis=0)


class TracedFloorPlugin:
    @gatekit.hookimpl
    def register_gates(self, register):
        register(TracedFloor)


@pytest.fixture
def traced_floor(register):
    register(TracedFloorPlugin(), name="test-traced-floor")
    CALLS.clear()
    yield


def test_a_gate_adds_what_it_declares(traced_floor):
    cell = gatekit.Cell(D, H, "standard", forget="traced_floor", dtype=np.float64, seed=0)
    floor = np.linspace(0.1, 0.5, H)
    cell.params["floor_f"] = floor
    x, state = random_inputs(cell, T, B, seed=6)
    traced = cell.trace(x, state)
    expected = reference_steps(cell, x, state)
    assert set(traced) == {"E_t", "phi_f", "share_f"} | set(expected)
    assert traced["phi_f"].shape == traced["share_f"].shape == (T, B, H)
    np.testing.assert_array_equal(traced["phi_f"], np.broadcast_to(floor, (T, B, H)))
    np.testing.assert_allclose(traced["share_f"], floor / expected["f_t"], rtol=1e-12)
    for name, value in expected.items():
        np.testing.assert_allclose(traced[name], value, rtol=0, atol=F64_ATOL, err_msg=name)


def test_a_gates_trace_costs_nothing_unless_asked_for(traced_floor):
    cell = gatekit.Cell(D, H, "standard", forget="traced_floor", dtype=np.float64, seed=0)
    x, state = random_inputs(cell, T, B, seed=7)
    y, _, tape = cell.forward(x, state, keep=True)
    cell(x, state)
    cell.backward(tape, np.ones_like(y))
    assert CALLS == []
    cell.trace(x, state)
    assert len(CALLS) == 1


def test_trace_of_a_plugin_gate_pads_its_quantities_too(traced_floor):
    cell = gatekit.Cell(D, H, "standard", forget="traced_floor", dtype=np.float64, seed=0)
    x, _ = random_inputs(cell, T, B, seed=8, state=False)
    traced = cell.trace(x, lengths=np.array([3, T, 1]))
    assert np.isnan(traced["phi_f"][3:, 0]).all()
    assert not np.isnan(traced["phi_f"][:3, 0]).any()
    assert not np.isnan(traced["phi_f"][:, 1]).any()


# --- Layers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
def test_trace_layer_matches_the_layer_and_the_reference(batch_first):
    layer = gatekit.LSTM(D, H, 2, bidirectional=True, variant="course", dtype=np.float64,
                         batch_first=batch_first, dropout=0.5, seed=0).eval()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([T, 4, 1])
    given = x.transpose(1, 0, 2) if batch_first else x
    y, _ = layer(given, lengths=lengths)
    y = y.transpose(1, 0, 2) if batch_first else y
    traces = visual.trace_layer(layer, given, lengths=lengths)
    assert list(traces) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    # The top layer's traced outputs are the layer's outputs (zero, there NaN, when padded).
    top = np.concatenate([traces["l1"]["STM_t"], traces["l1_reverse"]["STM_t"]], axis=2)
    padded = np.arange(T)[:, None] >= lengths[None, :]
    assert np.isnan(top[padded]).all()
    np.testing.assert_allclose(top[~padded], y[~padded], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(y[padded], 0)
    # The first layer's reverse cell, in forward time: the reference run over each sequence
    # reversed, then put back in order.
    cell = layer.cell(0, reverse=True)
    for b in range(B):
        n = lengths[b]
        expected = reference_steps(cell, x[n - 1::-1, b:b + 1])
        for name, value in expected.items():
            np.testing.assert_allclose(traces["l0_reverse"][name][:n, b], value[::-1, 0],
                                       rtol=0, atol=F64_ATOL, err_msg=name)
    # The second layer reads the first layer's outputs.
    below = np.concatenate([traces["l0"]["STM_t"], traces["l0_reverse"]["STM_t"]], axis=2)
    np.testing.assert_allclose(traces["l1"]["E_t"][~padded], below[~padded], rtol=0, atol=0)
