"""Equation gates compiled from their definitions, held to the definitions (run by
gatekit.reference on real arrays, never traced), to REFERENCE.md's equations written here, to
centred finite differences and, for layers, to the Cython floored gate of
plugins/gatekit-floored-forget."""
import numpy as np
import pytest

import gatekit
from gatekit import reference
from gatekit.testing import check_gate, gradcheck


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


class SoftFloorForget(gatekit.EquationGate):
    """f_t = φ + (1 - φ) σ(s_t)"""
    role, name, blocks = "forget", "soft_floor", ("f",)
    params = {"phi_f": ("H",)}
    init = {"phi_f": 0.1}

    @staticmethod
    def definition(STM_prev, E_t, W_f, b_f, phi_f):
        s_t = gatekit.reference.linear(W_f, STM_prev, E_t, b_f)
        return {"f_t": phi_f + (1 - phi_f) / (1 + np.exp(-s_t))}


class HardForget(gatekit.EquationGate):
    """f_t = clip(0.2 s_t + 0.5, 0, 1) written with np.where and np.maximum, published s_t."""
    role, name, blocks = "forget", "hard_eq", ("f",)
    outputs = ("f_t", "s_t")

    @staticmethod
    def definition(STM_prev, E_t, W_f, b_f):
        s_t = reference.linear(W_f, STM_prev, E_t, b_f)
        rising = np.maximum(0.2 * s_t + 0.5, 0.0)
        return {"s_t": s_t, "f_t": np.where(rising > 1, 1.0, rising)}


class EventLearn(gatekit.EquationGate):
    """An event-only candidate block and a gate reading the forget gate's output and the
    event unit by unit: N_t = tanh(W_n E_t + b_n + E_t / 2), i_t = (1 - f_t) σ(z_i)."""
    role, name, blocks = "learn", "event_eq", ("n", "i")
    reads = {"n": "event"}

    @staticmethod
    def definition(STM_prev, E_t, f_t, W_n, b_n, W_i, b_i):
        N_t = np.tanh(reference.linear_event(W_n, E_t, b_n) + E_t / 2)
        i_t = (1 - f_t) * reference.sigmoid(reference.linear(W_i, STM_prev, E_t, b_i))
        return {"i_t": i_t, "N_t": N_t}


class ClippedRemember(gatekit.EquationGate):
    """LTM_t = min(max(f_t LTM_{t-1} + i_t N_t, -c), c) with c = 3, and a squared term."""
    role, name, blocks = "remember", "clipped_eq", ()
    params = {"c": ("H",)}
    init = {"c": 3.0}

    @staticmethod
    def definition(LTM_prev, f_t, i_t, N_t, c):
        total = f_t * LTM_prev + i_t * N_t + 0.01 * N_t ** 2
        return {"LTM_t": np.minimum(np.maximum(total, -c), c)}


class AveragedUse(gatekit.EquationGate):
    """An extra memory: a_t = (a_{t-1} + tanh(LTM_t)) / 2, U_t = a_t, V_t = σ(z_v), with a
    leaky rectifier on the STM: STM_t = where(U V > 0, U V, U V / 10); STM_prev read unit by
    unit (its square root of 1 + STM_prev², a gate of the STM's size)."""
    role, name, blocks = "use", "averaged_eq", ("v",)
    memories = {"a": 0.5}

    @staticmethod
    def definition(STM_prev, E_t, LTM_t, a_prev, W_v, b_v):
        a_t = (a_prev + np.tanh(LTM_t)) / 2
        V_t = sigmoid(reference.linear(W_v, STM_prev, E_t, b_v)) * np.sqrt(1 + STM_prev ** 2) / 2
        product = a_t * V_t
        return {"a_t": a_t, "U_t": a_t, "V_t": V_t,
                "STM_t": np.where(product > 0, product, product / 10)}


class FlooredEquation(gatekit.EquationGate):
    """The floored forget gate of plugins/gatekit-floored-forget, as an equation gate."""
    role, name, blocks = "forget", "floored_eq", ("f",)
    params = {"q_f": ("H",)}
    init = {"q_f": -2.0}

    @staticmethod
    def definition(STM_prev, E_t, W_f, b_f, q_f):
        floor = reference.sigmoid(q_f)
        return {"f_t": floor + (1 - floor) * reference.sigmoid(
            reference.linear(W_f, STM_prev, E_t, b_f))}


EVERY_ROLE = [SoftFloorForget, HardForget, EventLearn, ClippedRemember, AveragedUse]


@pytest.mark.parametrize("gate", EVERY_ROLE, ids=lambda gate: gate.name)
def test_check_gate(gate):
    """Compiled forward against the definition in float32 and float64, one thread against two
    bit for bit, backward against finite differences: gatekit.testing's check."""
    check_gate(gate, input_size=4, hidden_size=4)


def test_compiled_class_is_a_compiled_gate(register_gate):
    cls = register_gate(SoftFloorForget)
    assert cls.built_from is SoftFloorForget and cls.kernels is not None
    assert not issubclass(cls, gatekit.PythonGate) and cls.differentiable
    assert cls.definition_hash and not cls.stm_by_unit and not cls.input_size_is_hidden_size
    assert register_gate(AveragedUse).stm_by_unit
    assert register_gate(EventLearn).input_size_is_hidden_size


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_soft_floor_against_its_equation(register_gate, dtype, tolerance, threads):
    """REFERENCE.md's cell with f_t = φ + (1 - φ) σ(W_f [STM_{t-1}, E_t] + b_f), written here,
    against the compiled gate, ragged sequences in a batch wide enough for threads."""
    register_gate(SoftFloorForget)
    T, B, D, H = 12, 9, 5, 48
    rng = np.random.default_rng(1)
    cell = gatekit.Cell(D, H, "standard", forget="soft_floor", dtype=dtype, seed=3,
                        threads=threads)
    cell.params["phi_f"][...] = rng.uniform(0, 0.5, H)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    y, (stm, ltm) = cell(x)
    p = {name: np.asarray(a, np.float64) for name, a in cell.params.items()}
    h, c = np.zeros((B, H)), np.zeros((B, H))
    for t in range(T):
        v = np.concatenate([h, x[t]], axis=1)
        f = p["phi_f"] + (1 - p["phi_f"]) * sigmoid(v @ p["W_f"].T + p["b_f"])
        n = np.tanh(v @ p["W_n"].T + p["b_n"])
        i = sigmoid(v @ p["W_i"].T + p["b_i"])
        c = f * c + i * n
        h = np.tanh(c) * sigmoid(v @ p["W_v"].T + p["b_v"])
        np.testing.assert_allclose(y[t], h, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(ltm, c, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("gate, variant", [(SoftFloorForget, "standard"),
                                           (HardForget, "janet"),
                                           (EventLearn, "standard"),
                                           (ClippedRemember, "peephole"),
                                           (AveragedUse, "standard")],
                         ids=lambda value: getattr(value, "name", value))
def test_gradients_in_float64(register_gate, gate, variant):
    """Every gradient (parameters, input, initial state and memories) against centred finite
    differences, on three threads; HardForget's s_t read by JANET's learn gate."""
    register_gate(gate)
    D = H = 6
    cell = gatekit.Cell(D, H, variant, **{gate.role: gate.name}, dtype=np.float64, seed=2,
                        threads=3)
    x = np.random.default_rng(4).standard_normal((5, 3, D))
    gradcheck(cell, x)


def test_compiled_matches_python_evaluation(register_gate):
    """compile=False runs the same traced expressions in NumPy, as a Python gate."""
    compiled = register_gate(AveragedUse)
    x = np.random.default_rng(0).standard_normal((7, 3, 4))
    want = gatekit.Cell(4, 5, "standard", use="averaged_eq", dtype=np.float64, seed=1)(x)
    gatekit.unregister_plugin("use:averaged_eq")
    python = register_gate(AveragedUse, compile=False)
    assert issubclass(python, gatekit.PythonGate) and python is not compiled
    cell = gatekit.Cell(4, 5, "standard", use="averaged_eq", dtype=np.float64, seed=1)
    got = cell(x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-13, atol=1e-13)
    gradcheck(cell, x)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_stacked_bidirectional_ragged_against_the_cython_gate(register_gate, dtype,
                                                               tolerance):
    """A stacked bidirectional layer of ragged sequences with the floored gate as an equation
    gate gives what the same layer gives with the plugin's hand-written Cython gate."""
    pytest.importorskip("gatekit_floored_forget")
    register_gate(FlooredEquation)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=dtype, seed=5, threads=2)
    equation = gatekit.LSTM(3, 40, forget="floored_eq", **kwargs)
    cython = gatekit.LSTM(3, 40, forget="floored", **kwargs)
    for name in equation.params:
        cython.params[name][...] = equation.params[name]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 5, 3)).astype(dtype)
    lengths = [9, 4, 7, 1, 9]
    y, state = equation(x, lengths=lengths)
    y_want, state_want = cython(x, lengths=lengths)
    np.testing.assert_allclose(y, y_want, rtol=tolerance, atol=tolerance)
    for got, want in zip(state, state_want):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = equation.backward(equation.forward(x, lengths=lengths, keep=True)[2], dy)
    want = cython.backward(cython.forward(x, lengths=lengths, keep=True)[2], dy)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=10 * tolerance,
                                   atol=10 * tolerance, err_msg=name)


def test_reference_runs_the_definition_itself(register_gate):
    """The reference calls the definition on arrays: the compiled gate is held to NumPy, not to
    the tracer's reading of it."""
    register_gate(ClippedRemember)
    cell = gatekit.Cell(3, 4, "standard", remember="clipped_eq", dtype=np.float64, seed=0)
    cell.params["c"][...] = 0.05                 # the clip binds
    x = np.random.default_rng(0).standard_normal((6, 2, 3)) * 3
    y_ref, (_, ltm_ref) = reference.forward(cell, x)
    y, (_, ltm) = cell(x)
    assert np.abs(ltm_ref).max() == pytest.approx(0.05)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-13)
    np.testing.assert_allclose(ltm, ltm_ref, rtol=0, atol=1e-13)


class MinLearn(gatekit.EquationGate):
    """minGRU's candidate as an equation: an event-only block, N_t = W_n E_t + b_n + 0.1 tanh(N)
    and i_t = 1 - f_t; it reads neither STM_prev nor LTM_prev, so its cell may scan."""
    role, name, blocks = "learn", "min_eq", ("n",)
    reads = {"n": "event"}

    @staticmethod
    def definition(E_t, f_t, W_n, b_n):
        n = reference.linear_event(W_n, E_t, b_n)
        return {"i_t": 1.0 - f_t, "N_t": n + 0.1 * np.tanh(n)}


@pytest.mark.parametrize("scan", [True, False])
def test_a_scanning_cell(register_gate, scan):
    """In a cell that scans, the gate is called once for the rows of many steps."""
    register_gate(MinLearn)
    cell = gatekit.Cell(4, 6, "mingru", learn="min_eq", dtype=np.float64, seed=0, scan=scan,
                        threads=2)
    assert cell.scan is scan
    x = np.random.default_rng(1).standard_normal((30, 3, 4))
    np.testing.assert_allclose(cell(x)[0], reference.forward(cell, x)[0], rtol=0, atol=1e-12)
    gradcheck(cell, x[:6])


@pytest.mark.parametrize("gate", [SoftFloorForget, AveragedUse], ids=lambda gate: gate.name)
def test_zoneout_and_recurrent_dropout(register_gate, gate):
    register_gate(gate)
    cell = gatekit.Cell(4, 4, "standard", **{gate.role: gate.name}, dtype=np.float64, seed=0,
                        zoneout=(0.2, 0.1), recurrent_dropout=0.3, threads=2)
    x = np.random.default_rng(2).standard_normal((6, 3, 4))
    masks = cell.draw_masks(6, 3)
    np.testing.assert_allclose(cell(x, masks=masks)[0],
                               reference.forward(cell, x, masks=masks)[0], rtol=0, atol=1e-12)
    gradcheck(cell, x, masks=masks)


class NormalisedForget(gatekit.EquationGate):
    """Sums over units: f_t = σ(g ⊙ (s - mean(s)) / sqrt(var(s) + ε) + Σ_j s_j / 100), the
    variance itself a mean of (s - mean(s))², so the sums are nested two deep."""
    role, name, blocks = "forget", "normalised_eq", ("f",)
    params = {"g_f": ("H",)}
    init = {"g_f": 1.0}

    @staticmethod
    def definition(STM_prev, E_t, W_f, b_f, g_f):
        s = reference.linear(W_f, STM_prev, E_t, b_f)
        centred = s - s.mean(axis=-1, keepdims=True)
        variance = np.mean(centred ** 2, axis=-1, keepdims=True)
        return {"f_t": reference.sigmoid(g_f * centred / np.sqrt(variance + 1e-5)
                                         + np.sum(s, axis=-1, keepdims=True) / 100)}


def test_sums_over_units(register_gate):
    """A gate that sums over units syncs once each way and sums every unit on every thread:
    one thread's bits on two, the definition, finite differences."""
    cls = register_gate(NormalisedForget)
    assert cls.syncs == 1 and not cls.uses_work
    check_gate(NormalisedForget, hidden_size=5)
    cell = gatekit.Cell(3, 7, "standard", forget="normalised_eq", dtype=np.float64, seed=1,
                        threads=3)
    cell.params["g_f"][...] = np.linspace(0.5, 2, 7)
    x = np.random.default_rng(3).standard_normal((5, 4, 3))
    y, _ = cell(x)
    p = {name: np.asarray(a) for name, a in cell.params.items()}
    h, c = np.zeros((4, 7)), np.zeros((4, 7))
    for t in range(5):
        v = np.concatenate([h, x[t]], axis=1)
        s = v @ p["W_f"].T + p["b_f"]
        mu = s.sum(axis=1, keepdims=True) / 7
        sd = np.sqrt(((s - mu) ** 2).sum(axis=1, keepdims=True) / 7 + 1e-5)
        f = sigmoid(p["g_f"] * (s - mu) / sd + 7 * mu / 100)
        c = f * c + sigmoid(v @ p["W_i"].T + p["b_i"]) * np.tanh(v @ p["W_n"].T + p["b_n"])
        h = np.tanh(c) * sigmoid(v @ p["W_v"].T + p["b_v"])
        np.testing.assert_allclose(y[t], h, rtol=0, atol=1e-12)
    gradcheck(cell, x)
