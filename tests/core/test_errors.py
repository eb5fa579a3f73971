"""What the cell does with bad (and unusual but valid) input: a clear exception that names the
argument and says what was expected and what was given, or the documented behaviour."""
import re

import numpy as np
import pytest

import gatekit

from support import (BUILTIN_GATES, BUILTIN_VARIANTS, assert_matches_reference, input_size_for,
                     random_inputs)

D, H = 3, 4


@pytest.fixture
def cell():
    return gatekit.Cell(D, H, variant="standard", dtype=np.float64, seed=0)


# --- x ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, D), (D,), (1, 2, D, 1), (2, 2, D + 1), (2, 2, 1), ()],
                         ids=["2d", "1d", "4d", "D+1", "D=1", "scalar"])
def test_x_of_wrong_rank_or_size_raises_value_error(cell, shape):
    with pytest.raises(ValueError) as info:
        cell(np.zeros(shape))
    message = str(info.value)
    assert message.startswith("x ")                         # names the argument
    assert f"(any, any, {D})" in message                    # what was expected
    assert str(shape) in message                            # what was given


def test_batch_size_zero_raises_value_error(cell):
    with pytest.raises(ValueError, match=r"^x .*batch size 0"):
        cell(np.zeros((3, 0, D)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.complex128, np.bool_, object],
                         ids=lambda d: np.dtype(d).name)
def test_non_float_x_raises_type_error(cell, dtype):
    with pytest.raises(TypeError) as info:
        cell(np.zeros((2, 1, D), dtype=dtype))
    message = str(info.value)
    assert message.startswith("x ") and "floating-point" in message
    assert np.dtype(dtype).name in message or str(np.dtype(dtype)) in message


def test_list_of_floats_is_accepted(cell):
    x = np.random.default_rng(0).standard_normal((2, 1, D))
    given_a_list = cell(x.tolist())
    assert_matches_reference(cell, x, result=given_a_list)
    np.testing.assert_array_equal(given_a_list[0], cell(x)[0])


# --- state ------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [
    np.zeros((2, 2, H)),                    # one stacked array, not a pair
    (np.zeros((2, H)),),                    # one element
    (np.zeros((2, H)),) * 3,                # three
    np.zeros((2, H)),
    5,
], ids=["stacked-array", "1-tuple", "3-tuple", "one-array", "int"])
def test_state_not_a_pair_raises_type_error(cell, state):
    with pytest.raises(TypeError, match=r"^state must be a pair \(stm, ltm\).*\(2, 4\)"):
        cell(np.zeros((3, 2, D)), state)


def test_state_as_list_is_accepted(cell):
    x, (stm0, ltm0) = random_inputs(cell, 3, 2, seed=1)
    given_a_list = cell(x, [stm0, ltm0])
    assert_matches_reference(cell, x, (stm0, ltm0), result=given_a_list)
    np.testing.assert_array_equal(given_a_list[0], cell(x, (stm0, ltm0))[0])


@pytest.mark.parametrize("which,shape", [
    (0, (2, H + 1)), (1, (2, H - 1)), (0, (H,)), (1, (2, H, 1)), (1, (H, 2)),
])
def test_state_array_of_wrong_shape_raises_value_error(cell, which, shape):
    state = [np.zeros((2, H)), np.zeros((2, H))]
    state[which] = np.zeros(shape)
    label = ["state[0] (stm)", "state[1] (ltm)"][which]
    with pytest.raises(ValueError) as info:
        cell(np.zeros((3, 2, D)), tuple(state))
    message = str(info.value)
    assert message.startswith(label)
    assert "(2, 4)" in message and str(shape) in message


def test_state_batch_mismatch_with_x_raises_value_error(cell):
    # x has B = 2, the state B = 3.
    with pytest.raises(ValueError, match=re.escape("state[0] (stm) must have shape (2, 4); "
                                                   "got (3, 4)")):
        cell(np.zeros((3, 2, D)), (np.zeros((3, H)), np.zeros((3, H))))


def test_integer_state_raises_type_error(cell):
    with pytest.raises(TypeError, match=re.escape("state[1] (ltm)")):
        cell(np.zeros((3, 2, D)), (np.zeros((2, H)), np.zeros((2, H), dtype=int)))


# --- Building a cell ------------------------------------------------------------------------

def test_unknown_variant_lists_known_variants():
    with pytest.raises(ValueError) as info:
        gatekit.Cell(D, H, variant="vanilla-ish")
    message = str(info.value)
    assert "'vanilla-ish'" in message
    for name in gatekit.variants():
        assert name in message


@pytest.mark.parametrize("role", sorted(BUILTIN_GATES))
def test_unknown_gate_for_role_lists_known_gates(role):
    with pytest.raises(ValueError) as info:
        gatekit.Cell(D, H, **{role: "no_such_gate"})
    message = str(info.value)
    assert role in message and "'no_such_gate'" in message
    for name in gatekit.gates()[role]:
        assert name in message


def test_gate_of_another_role_is_unknown_in_this_role():
    # "course" is a use gate, not a forget gate.
    with pytest.raises(ValueError, match="unknown forget gate 'course'"):
        gatekit.Cell(D, H, forget="course")


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex128, np.longdouble, "banana"],
                         ids=str)
def test_cell_dtype_other_than_float32_float64_raises_type_error(dtype):
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        gatekit.Cell(D, H, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, "float32", np.float64, "float64", "f8"])
def test_cell_dtype_accepts_spellings(dtype):
    assert gatekit.Cell(D, H, dtype=dtype).dtype == np.dtype(dtype)


@pytest.mark.parametrize("argument", ["input_size", "hidden_size"])
@pytest.mark.parametrize("value", [0, -1, -5, 2.0, 2.5, True, False, None, "3"], ids=repr)
def test_bad_sizes_raise_naming_the_argument(argument, value):
    sizes = {"input_size": D, "hidden_size": H, argument: value}
    # 0 and negatives are bad values (ValueError); a float/bool/None/str is the wrong kind of
    # value, for which either TypeError or ValueError is a clear answer.
    with pytest.raises((TypeError, ValueError)) as info:
        gatekit.Cell(sizes["input_size"], sizes["hidden_size"])
    if isinstance(value, int) and not isinstance(value, bool):
        assert info.type is ValueError
    message = str(info.value)
    assert message.startswith(argument) and "positive integer" in message
    assert repr(value) in message


def test_numpy_integer_sizes_are_accepted():
    cell = gatekit.Cell(np.int64(D), np.int32(H), seed=0)
    assert (cell.input_size, cell.hidden_size) == (D, H)
    assert type(cell.input_size) is int


# --- Unusual but valid input ------------------------------------------------------------------

@pytest.mark.parametrize("make_view", [
    lambda base: base.transpose(1, 0, 2),            # (B, T, D) stored, viewed as (T, B, D)
    lambda base: base[::2],                          # every other step
    lambda base: base[:, :, ::-1],                   # negative stride on D
    lambda base: np.asfortranarray(base.transpose(1, 0, 2)),
], ids=["transposed", "strided", "reversed", "fortran"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_non_contiguous_x_gives_same_result_as_contiguous_copy(make_view, dtype):
    cell = gatekit.Cell(D, H, variant="course", dtype=dtype, seed=1)
    base = np.random.default_rng(2).standard_normal((6, 6, D)).astype(dtype)
    x = make_view(base)
    assert not x.flags.c_contiguous
    y, (stm, ltm) = cell(x)
    y_c, (stm_c, ltm_c) = cell(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y_c)
    np.testing.assert_array_equal(ltm, ltm_c)
    assert_matches_reference(cell, x)


def test_non_contiguous_state_is_accepted(cell):
    x, (stm0, ltm0) = random_inputs(cell, 4, 3, seed=3)
    stm_view = np.ascontiguousarray(stm0.T).T          # same values, Fortran order
    ltm_view = np.repeat(ltm0, 2, axis=0)[::2]          # same values, strided
    assert not stm_view.flags.c_contiguous and not ltm_view.flags.c_contiguous
    y, final = cell(x, (stm_view, ltm_view))
    assert_matches_reference(cell, x, (stm0, ltm0), result=(y, final))
    np.testing.assert_array_equal(y, cell(x, (stm0, ltm0))[0])


def test_float64_input_into_float32_cell_is_cast():
    cell = gatekit.Cell(D, H, variant="peephole", dtype=np.float32, seed=4)
    x = np.random.default_rng(5).standard_normal((5, 2, D))          # float64
    state = (np.full((2, H), 0.25), np.full((2, H), -0.5))             # float64 too
    y, (stm, ltm) = cell(x, state)
    assert y.dtype == stm.dtype == ltm.dtype == np.float32
    # Same as casting first.
    y32, _ = cell(x.astype(np.float32), tuple(a.astype(np.float32) for a in state))
    np.testing.assert_array_equal(y, y32)
    assert_matches_reference(cell, x.astype(np.float32), state)


def test_float32_input_into_float64_cell_is_cast():
    cell = gatekit.Cell(D, H, dtype=np.float64, seed=4)
    x = np.random.default_rng(5).standard_normal((5, 2, D)).astype(np.float32)
    y, _ = cell(x)
    assert y.dtype == np.float64
    assert_matches_reference(cell, x)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_empty_sequence_returns_empty_y_and_initial_state(with_state, dtype):
    cell = gatekit.Cell(D, H, variant="standard", dtype=dtype, seed=0)
    stm0 = np.full((2, H), 0.5, dtype)
    ltm0 = np.full((2, H), -1.5, dtype)
    y, (stm, ltm) = cell(np.zeros((0, 2, D), dtype), (stm0, ltm0) if with_state else None)
    assert y.shape == (0, 2, H) and y.dtype == dtype
    expected = (stm0, ltm0) if with_state else (np.zeros((2, H)), np.zeros((2, H)))
    np.testing.assert_array_equal(stm, expected[0])
    np.testing.assert_array_equal(ltm, expected[1])
    assert stm.dtype == ltm.dtype == dtype


@pytest.mark.parametrize("variant", BUILTIN_VARIANTS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_input_propagates_like_reference(variant, bad):
    cell = gatekit.Cell(input_size_for(variant, D, H), H, variant=variant, dtype=np.float64,
                        seed=6)
    x, state = random_inputs(cell, 6, 3, seed=7)
    x[2, 1, 0] = bad            # sequence 1, step 2; sequences 0 and 2 stay finite
    y, (stm, ltm) = cell(x, state)
    with np.errstate(all="ignore"):
        y_ref, (stm_ref, ltm_ref) = gatekit.reference.forward(cell, x, state, dtype=np.float64)
    for actual, expected in ((y, y_ref), (stm, stm_ref), (ltm, ltm_ref)):
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=1e-10)
    # The other sequences are untouched by sequence 1's bad value.
    clean = x.copy()
    clean[2, 1, 0] = 0.0
    y_clean, _ = cell(clean, state)
    np.testing.assert_array_equal(y[:, [0, 2]], y_clean[:, [0, 2]])
    if np.isnan(bad):
        # A NaN input makes that sequence's output NaN from that step on.
        assert np.isnan(y[2:, 1]).all() and not np.isnan(y[:2]).any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_fully_saturated_forget_gate_forgets_an_infinite_memory_like_numpy(dtype):
    # Minimal case, finite input: only the forget gate reads the event, with weight 1, so
    # s_t = -1000 and NumPy's f_t = σ(-1000) is exactly 0; the infinite initial LTM times 0 is
    # NaN, which then reaches every output. (A σ that stops at the smallest normal number, as
    # the compiled one did before cc5d5b4, gives inf here, and LTM_t = 1.2e-8 instead of 0 for
    # an initial LTM of 1e300.)
    cell = gatekit.Cell(1, 1, variant="standard", dtype=dtype, seed=0)
    for name in cell.params:
        cell.params[name][...] = 0.0
    cell.params["W_f"][0, 1] = 1.0                    # column 1 = the event (H = 1 STM column)
    x = np.full((1, 1, 1), -1000.0, dtype)
    state = (np.zeros((1, 1), dtype), np.full((1, 1), np.inf, dtype))
    y, (stm, ltm) = cell(x, state)
    with np.errstate(all="ignore"):
        y_ref, (stm_ref, ltm_ref) = gatekit.reference.forward(cell, x, state, dtype=np.float64)
    assert np.isnan(ltm_ref).all() and np.isnan(y_ref).all()      # the oracle's answer
    np.testing.assert_array_equal(np.isnan(ltm), np.isnan(ltm_ref))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
