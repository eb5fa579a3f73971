"""The compiled gates' sigmoid and tanh against the C library (through NumPy, in extended
precision where it helps): a few units in the last place, NaN and ±inf like NumPy."""
import numpy as np
import pytest

from gatekit.core._gate import elementwise


def sigmoid_exact(x):
    x = x.astype(np.longdouble)
    return 1 / (1 + np.exp(-x))


def tanh_exact(x):
    return np.tanh(x.astype(np.longdouble))


EXACT = {"sigmoid": sigmoid_exact, "tanh": tanh_exact}


def ulps(got, want, dtype):
    """|got - want| in units of the last place of ``want`` (of ``dtype``)."""
    want_rounded = want.astype(dtype)
    spacing = np.spacing(np.abs(want_rounded)).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - want) / spacing


def grid(dtype):
    dense = np.linspace(-20, 20, 200_001)
    tiny = np.geomspace(1e-30, 1e-2, 2_000)
    wide = np.linspace(-200, 200, 4_001)
    return np.concatenate([dense, tiny, -tiny, wide, [0.0, -0.0, 0.625, -0.625]]).astype(dtype)


@pytest.mark.parametrize("function", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype, max_ulps", [(np.float32, 4), (np.float64, 4)])
def test_within_a_few_ulps(function, dtype, max_ulps):
    x = grid(dtype)
    got = elementwise(function, x)
    assert got.dtype == dtype
    want = EXACT[function](x)
    # Below the smallest normal number ulps lose meaning; compare those absolutely.
    normal = np.abs(want) >= np.finfo(dtype).tiny
    assert ulps(got[normal], want[normal], dtype).max() <= max_ulps
    assert np.abs(got[~normal] - want[~normal]).max(initial=0) <= np.finfo(dtype).tiny


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_specials_like_numpy(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30], dtype)
    sig = elementwise("sigmoid", x)
    tanh = elementwise("tanh", x)
    assert np.isnan(sig[0]) and np.isnan(tanh[0])
    np.testing.assert_array_equal(tanh[1:], [1, -1, 1, -1])
    np.testing.assert_array_equal(sig[1:], [1, 0, 1, 0])


def test_tanh_is_odd_and_sigmoid_symmetric():
    x = np.linspace(-30, 30, 10_001)
    np.testing.assert_array_equal(elementwise("tanh", -x), -elementwise("tanh", x))
    np.testing.assert_allclose(elementwise("sigmoid", x) + elementwise("sigmoid", -x), 1,
                               rtol=0, atol=4e-16)


def test_unknown_function():
    with pytest.raises(ValueError, match="sigmoid"):
        elementwise("relu", np.zeros(3))
