"""Parameters: their names and shapes per variant, the [STM, E] column order of every W_k,
writing them, and their initialisation."""
import numpy as np
import pytest

import gatekit

from support import assert_matches_reference, random_inputs, sigmoid

D, H = 3, 5     # D != H, so a swapped (H, D) or (H + D) layout cannot pass by accident


def _block_params(*blocks):
    return {name for k in blocks for name in (f"W_{k}", f"b_{k}")}


EXPECTED_NAMES = {
    "standard": _block_params("f", "n", "i", "v"),
    "course": _block_params("f", "n", "i", "v") | {"W_u", "b_u"},
    "literal": _block_params("f", "n", "i", "u", "v"),
    "peephole": _block_params("f", "n", "i", "v") | {"p_f", "p_i", "p_v"},
    "nig": _block_params("f", "n", "v") | {"p_f", "p_v"},
    "nfg": _block_params("n", "i", "v") | {"p_i", "p_v"},
    "nog": _block_params("f", "n", "i") | {"p_f", "p_i"},
    "niaf": _block_params("f", "n", "i", "v") | {"p_f", "p_i", "p_v"},
    "noaf": _block_params("f", "n", "i", "v") | {"p_f", "p_i", "p_v"},
    "cifg": _block_params("f", "n", "v") | {"p_f", "p_v"},
    "janet": _block_params("f", "n"),
}

EXPECTED_SHAPES = {"W_u": {"course": (H, H), "literal": (H, H + D)}}


def _expected_shape(variant, name):
    if name in EXPECTED_SHAPES:
        return EXPECTED_SHAPES[name][variant]
    if name.startswith("W_"):
        return (H, H + D)
    return (H,)             # b_k and the peepholes p_k, and course's b_u


@pytest.mark.parametrize("variant", sorted(EXPECTED_NAMES))
def test_parameter_names_and_shapes(variant):
    cell = gatekit.Cell(D, H, variant=variant, seed=0)
    assert set(cell.params) == EXPECTED_NAMES[variant]
    assert len(cell.params) == len(EXPECTED_NAMES[variant])
    for name, array in cell.params.items():
        assert array.shape == _expected_shape(variant, name), name
        assert array.dtype == cell.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_parameter_dtype_follows_cell(dtype):
    cell = gatekit.Cell(D, H, variant="peephole", dtype=dtype, seed=0)
    assert all(array.dtype == dtype for array in cell.params.values())


# --- The column order of W_k: STM columns first, then the event ---------------------------------

def _one_standard_step_by_hand(params, E, stm0, ltm0):
    """One step of the standard LSTM written out unit by unit, without matrix products or the
    reference module, so the layout of W is checked against plain arithmetic."""
    def pre(k):
        W, b = params[f"W_{k}"], params[f"b_{k}"]
        out = np.empty((E.shape[0], H))
        for r in range(E.shape[0]):
            for j in range(H):
                acc = b[j]
                for c in range(H):
                    acc += W[j, c] * stm0[r, c]          # columns 0 .. H-1 read the STM
                for c in range(D):
                    acc += W[j, H + c] * E[r, c]         # columns H .. H+D-1 read the event
                out[r, j] = acc
        return out

    f, n, i, v = sigmoid(pre("f")), np.tanh(pre("n")), sigmoid(pre("i")), sigmoid(pre("v"))
    ltm = ltm0 * f + n * i
    return v * np.tanh(ltm), ltm


@pytest.mark.parametrize("block", ["f", "n", "i", "v"])
@pytest.mark.parametrize("column", [("stm", 0), ("stm", H - 1), ("event", 0), ("event", D - 1)],
                         ids=lambda c: f"{c[0]}{c[1]}")
def test_weight_columns_read_stm_first_then_event(block, column):
    cell = gatekit.Cell(D, H, variant="standard", dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for name in cell.params:
        cell.params[name][...] = 0.0
    for k in "fniv":
        cell.params[f"b_{k}"][...] = rng.uniform(-0.5, 0.5, H)
    # Only one column of one block is nonzero.
    part, c = column
    col = c if part == "stm" else H + c
    cell.params[f"W_{block}"][:, col] = rng.uniform(0.5, 2.0, H) * rng.choice([-1, 1], H)

    # STM and event values far apart, so reading the wrong one gives a visibly different answer.
    stm0 = rng.uniform(-1, 1, (2, H)) + np.array([[2.0], [-2.0]])
    ltm0 = rng.uniform(-1, 1, (2, H))
    E = rng.uniform(-0.3, 0.3, (1, 2, D))
    y, (stm, ltm) = cell(E, (stm0, ltm0))
    stm_hand, ltm_hand = _one_standard_step_by_hand(cell.params, E[0], stm0, ltm0)
    np.testing.assert_allclose(ltm, ltm_hand, rtol=0, atol=1e-13)
    np.testing.assert_allclose(stm, stm_hand, rtol=0, atol=1e-13)
    np.testing.assert_allclose(y[0], stm_hand, rtol=0, atol=1e-13)


def test_literal_w_u_reads_stm_and_event_course_w_u_reads_memory():
    # literal: U_t = tanh(W_u [STM, E] + b_u). With only STM column 0 of W_u set and
    # W_v = 0, b_v = 0 (so V = 1/2): STM_1 = tanh(W_u[:, 0] * stm0[:, 0] + b_u) / 2.
    cell = gatekit.Cell(D, H, variant="literal", dtype=np.float64, seed=3)
    for name in cell.params:
        cell.params[name][...] = 0.0
    w = np.linspace(-1, 1, H)
    cell.params["W_u"][:, 0] = w
    cell.params["b_u"][...] = 0.1
    stm0 = np.array([[0.7] * H])
    _, (stm, _) = cell(np.ones((1, 1, D)), (stm0, np.full((1, H), 9.0)))
    np.testing.assert_allclose(stm[0], np.tanh(w * 0.7 + 0.1) / 2, rtol=0, atol=1e-14)

    # course: U_t = tanh(W_u (LTM_{t-1} ⊙ f_t) + b_u) with W_u (H, H) over units of the memory.
    cell = gatekit.Cell(D, H, variant="course", dtype=np.float64, seed=3)
    for name in cell.params:
        cell.params[name][...] = 0.0          # so f = 1/2, V = 1/2
    cell.params["W_u"][:, 1] = w               # only memory unit 1 feeds U
    ltm0 = np.zeros((1, H))
    ltm0[0, 1] = 1.6
    _, (stm, _) = cell(np.ones((1, 1, D)), (np.zeros((1, H)), ltm0))
    np.testing.assert_allclose(stm[0], np.tanh(w * 1.6 * 0.5) / 2, rtol=0, atol=1e-14)


# --- Writing parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["W_f", "b_i", "W_v", "p_f", "p_v"])
@pytest.mark.parametrize("how", ["inplace", "assign"])
def test_writing_a_parameter_changes_output_as_reference_predicts(name, how):
    cell = gatekit.Cell(D, H, variant="peephole", dtype=np.float64, seed=4)
    x, state = random_inputs(cell, 5, 2, seed=5)
    y_before, _ = cell(x, state)
    value = np.random.default_rng(6).uniform(-2, 2, cell.params[name].shape)
    if how == "inplace":
        cell.params[name][...] = value
    else:
        cell.params[name] = value
    np.testing.assert_array_equal(cell.params[name], value)
    y_after, _ = assert_matches_reference(cell, x, state)
    assert np.abs(y_after - y_before).max() > 1e-3


@pytest.mark.parametrize("how", ["inplace", "assign"])
def test_writing_course_w_u_changes_output(how):
    # W_u of the course gate is a separate (H, H) array, not part of the packed block weights.
    cell = gatekit.Cell(D, H, variant="course", dtype=np.float32, seed=4)
    x, state = random_inputs(cell, 5, 2, seed=5)
    y_before, _ = cell(x, state)
    value = np.random.default_rng(6).uniform(-2, 2, (H, H))
    if how == "inplace":
        cell.params["W_u"][...] = value
    else:
        cell.params["W_u"] = value
    y_after, _ = assert_matches_reference(cell, x, state)
    assert np.abs(y_after - y_before).max() > 1e-3


def test_assignment_copies_the_value():
    # params[name] = v copies: changing v afterwards does not change the cell.
    cell = gatekit.Cell(D, H, dtype=np.float64, seed=0)
    value = np.ones((H, H + D))
    cell.params["W_f"] = value
    value[...] = 5.0
    np.testing.assert_array_equal(cell.params["W_f"], 1.0)


@pytest.mark.parametrize("name,bad_shape", [("W_f", (H + D, H)), ("W_f", (H, H)),
                                            ("b_f", (H, 1)), ("b_f", ()), ("p_i", (D,))])
def test_wrong_shape_assignment_raises_value_error_naming_parameter(name, bad_shape):
    cell = gatekit.Cell(D, H, variant="peephole", seed=0)
    before = cell.params[name].copy()
    with pytest.raises(ValueError, match=rf"'{name}'.*{H}") as info:
        cell.params[name] = np.zeros(bad_shape)
    assert str(bad_shape) in str(info.value)
    np.testing.assert_array_equal(cell.params[name], before)     # left unchanged


def test_unknown_parameter_raises_key_error_listing_known():
    cell = gatekit.Cell(D, H, variant="standard", seed=0)
    for access in (lambda: cell.params["W_g"], lambda: cell.params.__setitem__("W_g", 0)):
        with pytest.raises(KeyError) as info:
            access()
        message = str(info.value)
        assert "W_g" in message
        for known in ("W_f", "b_f", "W_n", "b_n", "W_i", "b_i", "W_v", "b_v"):
            assert known in message
    assert "W_g" not in cell.params


# --- Initialisation ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["standard", "course", "literal", "peephole", "janet"])
@pytest.mark.parametrize("hidden", [1, 4, 64])
def test_init_uniform_within_bound(variant, hidden):
    cell = gatekit.Cell(7, hidden, variant=variant, dtype=np.float64, seed=0)
    bound = 1 / np.sqrt(hidden)
    values = np.concatenate([a.ravel() for a in cell.params.values()])
    assert np.all(np.abs(values) <= bound)
    if values.size > 1000:
        # Spread over the whole interval, not clustered: a uniform sample's extremes are near
        # ±bound and its mean near 0 (sd of mean = bound / sqrt(3 n)).
        assert values.max() > 0.99 * bound and values.min() < -0.99 * bound
        assert abs(values.mean()) < 5 * bound / np.sqrt(3 * values.size)
        assert len(np.unique(values)) == values.size


def test_same_seed_same_params_different_seed_different_params():
    def params(seed, dtype=np.float64):
        return gatekit.Cell(D, H, variant="peephole", dtype=dtype, seed=seed).params

    a, b, c = params(123), params(123), params(124)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name]), name
    # Without a seed, two cells differ.
    assert not np.array_equal(params(None)["W_f"], params(None)["W_f"])


def test_reset_parameters_with_seed_reproduces_construction():
    cell = gatekit.Cell(D, H, variant="course", seed=42)
    first = {name: array.copy() for name, array in cell.params.items()}
    cell.reset_parameters(7)
    assert not np.array_equal(cell.params["W_f"], first["W_f"])
    cell.reset_parameters(42)
    for name in first:
        np.testing.assert_array_equal(cell.params[name], first[name])
