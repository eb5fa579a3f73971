"""The tracer and the differentiation alone: common subexpressions merged, the sigmoid found,
and every operation's gradient against centred differences of the NumPy evaluation."""
import numpy as np
import pytest

import gatekit
from gatekit import reference
from gatekit.core.equation import differentiate, trace


def _gate(body, params=("p",)):
    class Traced(gatekit.EquationGate):
        role, name, blocks = "forget", "traced", ("f",)

        @staticmethod
        def definition(STM_prev, E_t, LTM_prev, W_f, b_f, p):
            s = reference.linear(W_f, STM_prev, E_t, b_f)
            return {"f_t": body(s, LTM_prev, p)}
    Traced.params = {name: ("H",) for name in params}
    return Traced


def _ops(traced):
    graph = traced.graph
    return [graph.nodes[k][0] for k in graph.needed([traced.outputs["f_t"]])]


def test_equal_subexpressions_are_one_node():
    traced = trace(_gate(lambda s, c, p: np.exp(s * p) + np.exp(p * s) * np.tanh(c)))
    assert _ops(traced).count("exp") == 1 and _ops(traced).count("mul") == 2


def test_the_sigmoid_is_the_compiled_one():
    traced = trace(_gate(lambda s, c, p: reference.sigmoid(s) + p / (1 + np.exp(-c))))
    assert _ops(traced).count("sigmoid") == 2 and "exp" not in _ops(traced)


def test_numbers_are_folded():
    traced = trace(_gate(lambda s, c, p: s * (2 ** 3 - 7) + 0 * p + np.sqrt(4.0)))
    assert _ops(traced) == ["input", "const", "add"]


def test_reads():
    traced = trace(_gate(lambda s, c, p: s * p))
    assert set(traced.inputs) == {"z:f", "p"} and traced.elementwise_reads == set()


BODIES = {
    "arithmetic": lambda s, c, p: (s - c) * p / (2 + c ** 2) - s ** 3 + 2.0 ** s,
    "functions": lambda s, c, p: np.exp(-s ** 2) + np.log(1 + c ** 2) * np.tanh(p * s)
    + np.sqrt(2 + np.abs(c)) + reference.sigmoid(s * c),
    "selects": lambda s, c, p: np.where(s > c, s * p, c) + np.maximum(s, p) * np.minimum(c, s)
    + np.clip(s, -0.5, 0.5) + np.where(c <= 0.1, 1.0, -c),
    "sums": lambda s, c, p: (s - s.mean(axis=-1, keepdims=True)) * np.sum(c * p, axis=-1,
                                                                        keepdims=True),
}


@pytest.mark.parametrize("body", BODIES, ids=str)
def test_gradients_against_centred_differences(body):
    """The gradients of f_t · seed with respect to every input, from the graph, against
    differences of its NumPy evaluation (which agrees with the definition on arrays)."""
    gate = _gate(BODIES[body])
    traced = trace(gate)
    graph = traced.graph
    rng = np.random.default_rng(0)
    B, H = 3, 5
    values = {"z:f": rng.standard_normal((B, H)), "LTM_prev": rng.standard_normal((B, H)),
              "p": rng.standard_normal(H), "H": H}
    seed = rng.standard_normal((B, H))
    output = traced.outputs["f_t"]
    # The traced graph computes what the definition computes on arrays.
    direct = gate.definition(np.zeros((B, 2)), np.zeros((B, 1)), values["LTM_prev"],
                             np.zeros((H, 3)), values["z:f"], values["p"])["f_t"]
    np.testing.assert_allclose(graph.evaluate([output], values)[0], direct, rtol=1e-14)
    values["d:f_t"] = seed
    leaves = {traced.inputs[name] for name in ("z:f", "LTM_prev", "p") if name in traced.inputs}
    gradients = differentiate(graph, [(output, graph.input("d:f_t"))], leaves)
    for name in ("z:f", "LTM_prev", "p"):
        node = traced.inputs[name]
        analytic = np.broadcast_to(graph.evaluate([gradients[node]], values)[0], (B, H))
        if name == "p":
            analytic = analytic.sum(axis=0)
        numeric = np.zeros_like(values[name])
        for index in np.ndindex(numeric.shape):
            kept = values[name][index]
            results = []
            for step in (1e-6, -1e-6):
                values[name][index] = kept + step
                results.append(np.sum(graph.evaluate([output], values)[0] * seed))
            values[name][index] = kept
            numeric[index] = (results[0] - results[1]) / 2e-6
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=name)
