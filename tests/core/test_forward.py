"""The compiled forward pass against the NumPy reference equations, for every variant, many
shapes, compositions of gates no variant has, and random cases drawn by Hypothesis."""
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gatekit
from gatekit.core import plugins

from support import (BUILTIN_GATES, BUILTIN_VARIANTS, FORGET_WITH_S_T, assert_matches_reference,
                     input_size_for, random_inputs)

DTYPES = [np.float64, np.float32]

# (T, B, D, H): single step, single sequence, D != H both ways, H = 1, D = 1, all ones.
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 4, 2),
    (5, 1, 3, 7),
    (4, 2, 1, 5),
    (6, 3, 5, 1),
    (7, 4, 6, 3),
    (3, 2, 8, 8),
]


def test_builtin_variants_are_registered():
    # The loops below iterate over gatekit.variants(); make sure the shipped ones are there.
    assert set(BUILTIN_VARIANTS) <= set(gatekit.variants())
    for role, names in BUILTIN_GATES.items():
        assert set(names) <= set(gatekit.gates()[role])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-D{}-H{}".format(*s))
@pytest.mark.parametrize("variant", gatekit.variants())
def test_variant_matches_reference(variant, shape, dtype):
    T, B, D, H = shape
    cell = gatekit.Cell(input_size_for(variant, D, H), H, variant=variant, dtype=dtype,
                        seed=hash(shape) % 1000)
    # From zeros, and from a nonzero initial state (which exercises every path from the state).
    x, state = random_inputs(cell, T, B, seed=1)
    assert_matches_reference(cell, x)
    assert_matches_reference(cell, x, state)


@pytest.mark.parametrize("variant", gatekit.variants())
def test_variant_float32_tracks_float64_reference_over_longer_sequence(variant):
    # T = 12, the longest the float32 tolerance is argued for in support.py.
    cell = gatekit.Cell(input_size_for(variant, 4, 6), 6, variant=variant, dtype=np.float32,
                        seed=3)
    x, state = random_inputs(cell, 12, 3, seed=4)
    assert_matches_reference(cell, x, state)


@pytest.mark.parametrize("overrides", [
    dict(variant="standard", forget="peephole"),
    dict(variant="course", learn="coupled"),
    dict(variant="janet", use="course"),
    dict(variant="literal", forget="none", learn="no_ignore"),
    dict(variant="janet", forget="peephole"),          # s_t then includes the peephole term
    dict(variant="nfg", learn="coupled"),              # f = 1, so i = 1 - f = 0: LTM frozen
    dict(variant="cifg", use="literal"),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_named_compositions_match_reference(overrides, dtype):
    cell = gatekit.Cell(3, 5, dtype=dtype, seed=7, **overrides)
    # The overrides took effect: the cell runs the gates asked for.
    for role in ("forget", "learn", "remember", "use"):
        if role in overrides:
            assert cell.gate_names[role] == overrides[role]
    x, state = random_inputs(cell, 6, 2, seed=8)
    assert_matches_reference(cell, x, state)


def _class(role, gate):
    return plugins.registry().gates[role][gate].cls


def _names(role, gate):
    cls = _class(role, gate)
    return {f"{kind}_{block}" for block in cls.blocks for kind in "Wb"} | set(cls.params)


def _valid(forget, learn, remember, use):
    """JANET's learn gate reads s_t; the gates of a cell share one namespace of parameters; one
    gate at most shares the step's work between threads (syncs)."""
    gates = tuple(zip(BUILTIN_GATES, (forget, learn, remember, use)))
    names = [_names(role, gate) for role, gate in gates]
    disjoint = sum(len(n) for n in names) == len(set().union(*names))
    sharing = sum(1 for role, gate in gates if _class(role, gate).syncs)
    return (learn != "janet" or forget in FORGET_WITH_S_T) and disjoint and sharing <= 1


def _input_size(learn, D, H):
    """MUT1's learn gate adds the event to the memory unit by unit: D = H."""
    return H if learn == "mut1" else D


ALL_COMBINATIONS = list(itertools.product(*BUILTIN_GATES.values()))
VALID_COMBINATIONS = [c for c in ALL_COMBINATIONS if _valid(*c)]


def test_every_valid_combination_of_builtin_gates_matches_reference():
    # Every valid composition of the built-in gates in float64 (cheap at this size), each
    # from a nonzero state; collected failures are reported together.
    failures = []
    for k, (forget, learn, remember, use) in enumerate(VALID_COMBINATIONS):
        cell = gatekit.Cell(_input_size(learn, 3, 4), 4, forget=forget, learn=learn,
                            remember=remember, use=use, dtype=np.float64, seed=k)
        x, state = random_inputs(cell, 5, 2, seed=1000 + k)
        try:
            assert_matches_reference(cell, x, state)
        except AssertionError as error:
            failures.append(f"{forget}/{learn}/{remember}/{use}: {error}")
    assert not failures, "\n".join(failures)


def test_random_sample_of_combinations_in_float32_matches_reference():
    rng = np.random.default_rng(2024)
    picks = rng.choice(len(VALID_COMBINATIONS), size=30, replace=False)
    for k in picks:
        forget, learn, remember, use = VALID_COMBINATIONS[k]
        D, H = rng.integers(1, 7, size=2)
        cell = gatekit.Cell(_input_size(learn, int(D), int(H)), int(H), forget=forget,
                            learn=learn, remember=remember, use=use, dtype=np.float32,
                            seed=int(k))
        x, state = random_inputs(cell, int(rng.integers(1, 10)), int(rng.integers(1, 4)),
                                 seed=int(k))
        assert_matches_reference(cell, x, state)


@pytest.mark.parametrize("variant", ["standard", "course", "literal", "janet"])
@pytest.mark.parametrize("use", [None, "memory"])
def test_janet_learn_gate_without_forget_preactivation_is_rejected(variant, use):
    # learn="janet" reads s_t, the forget gate's pre-activation; forget="none" has none.
    with pytest.raises(ValueError, match=r"janet.*s_t"):
        gatekit.Cell(3, 4, variant=variant, forget="none", learn="janet", use=use)


def test_invalid_combinations_are_exactly_janet_without_s_t_and_shared_names():
    invalid = [c for c in ALL_COMBINATIONS if not _valid(*c)]
    # forget none or min with learn janet; forget min (block i) with a learn gate of block i;
    # learn mgu or mut1 (syncs) with use course (syncs), whatever the forget gate
    assert len(invalid) == (2 + 4) * len(BUILTIN_GATES["use"]) + 2 * len(BUILTIN_GATES["forget"])
    for forget, learn, remember, use in invalid:
        with pytest.raises(ValueError):
            gatekit.Cell(2, 2, forget=forget, learn=learn, remember=remember, use=use)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 12), B=st.integers(1, 5), D=st.integers(1, 9), H=st.integers(1, 9),
       variant=st.sampled_from(gatekit.variants()), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1), with_state=st.booleans())
def test_random_cells_match_reference(T, B, D, H, variant, dtype, seed, with_state):
    cell = gatekit.Cell(input_size_for(variant, D, H), H, variant=variant, dtype=dtype, seed=seed)
    x, state = random_inputs(cell, T, B, seed=seed, state=with_state)
    assert_matches_reference(cell, x, state)


def test_output_is_the_stm_of_every_step_and_state_chains():
    # y[t] is STM_t, and running [0, T) in two halves, passing the state on, is the same run.
    cell = gatekit.Cell(3, 4, variant="course", dtype=np.float64, seed=5)
    x, state = random_inputs(cell, 8, 2, seed=6)
    y, (stm, ltm) = cell(x, state)
    np.testing.assert_array_equal(y[-1], stm)
    y1, state1 = cell(x[:3], state)
    y2, (stm2, ltm2) = cell(x[3:], state1)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ltm2, ltm, rtol=0, atol=1e-12)


def test_batch_rows_are_independent():
    # Each sequence in the batch is its own run: a batch equals its rows run one at a time.
    cell = gatekit.Cell(3, 5, variant="peephole", dtype=np.float64, seed=9)
    x, (stm0, ltm0) = random_inputs(cell, 6, 4, seed=10)
    y, (stm, ltm) = cell(x, (stm0, ltm0))
    for b in range(4):
        yb, (stmb, ltmb) = cell(x[:, b:b + 1], (stm0[b:b + 1], ltm0[b:b + 1]))
        np.testing.assert_allclose(yb[:, 0], y[:, b], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ltmb[0], ltm[b], rtol=0, atol=1e-12)


# --- The literal variant's Use gate never reads the long-term memory -----------------------------

def _two_ltm_runs(variant, dtype=np.float64):
    cell = gatekit.Cell(3, 4, variant=variant, dtype=dtype, seed=11)
    x, (stm0, _) = random_inputs(cell, 6, 2, seed=12)
    ltm_a = np.full((2, 4), -5.0, dtype)
    ltm_b = np.random.default_rng(13).uniform(3, 9, (2, 4)).astype(dtype)
    return cell(x, (stm0, ltm_a)), cell(x, (stm0, ltm_b))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_literal_outputs_ignore_initial_ltm_bitwise(dtype):
    (y_a, (stm_a, ltm_a)), (y_b, (stm_b, ltm_b)) = _two_ltm_runs("literal", dtype)
    np.testing.assert_array_equal(y_a, y_b)
    np.testing.assert_array_equal(stm_a, stm_b)
    # ... while the memory itself still carries the initial LTM forward.
    assert np.abs(ltm_a - ltm_b).min() > 1e-3


@pytest.mark.parametrize("variant", ["course", "standard"])
def test_course_and_standard_outputs_depend_on_initial_ltm(variant):
    (y_a, _), (y_b, _) = _two_ltm_runs(variant)
    # Every step's output is changed by the initial LTM (it flows through the memory).
    assert (np.abs(y_a - y_b).reshape(6, -1).max(axis=1) > 1e-6).all()
