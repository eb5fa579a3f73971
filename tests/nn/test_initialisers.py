"""gatekit.initialisers: the forget bias and the chrono initialisation, from their
definitions."""
import numpy as np
import pytest

import gatekit
from gatekit.nn import initialisers as init

from support import snapshot


def test_forget_bias_sets_b_f_only():
    cell = gatekit.Cell(3, 5, "standard", seed=0)
    before = snapshot(cell)
    init.forget_bias(cell, 2.5)
    np.testing.assert_array_equal(cell.params["b_f"], np.full(5, 2.5, np.float32))
    for name in cell.params:
        if name != "b_f":
            np.testing.assert_array_equal(cell.params[name], before[name])
    init.forget_bias(cell)
    np.testing.assert_array_equal(cell.params["b_f"], np.ones(5, np.float32))


@pytest.mark.parametrize("variant", ["standard", "janet"])
@pytest.mark.parametrize("T_max", [3, 50, 1000])
def test_chrono_initialisation(variant, T_max):
    cell = gatekit.Cell(3, 64, variant, seed=0)
    init.chrono(cell, T_max, seed=1)
    b_f = np.asarray(cell.params["b_f"])
    upper = np.asarray(np.log(T_max - 1), dtype=cell.dtype)   # rounding is monotonic
    assert np.all(b_f >= 0) and np.all(b_f <= upper)
    assert np.ptp(b_f) > 0                     # drawn, not a constant
    if "b_i" in cell.params:
        np.testing.assert_array_equal(cell.params["b_i"], -b_f)
    else:
        assert variant == "janet"
    # Same seed, same draw.
    other = gatekit.Cell(3, 64, variant, seed=5)
    init.chrono(other, T_max, seed=1)
    np.testing.assert_array_equal(other.params["b_f"], b_f)


@pytest.mark.parametrize("T_max", [2, 1, 0, -3])
def test_chrono_rejects_short_horizons(T_max):
    cell = gatekit.Cell(2, 3, "standard", seed=0)
    with pytest.raises(ValueError, match="T_max"):
        init.chrono(cell, T_max)


def test_initialisers_need_a_forget_bias():
    cell = gatekit.Cell(2, 3, "nfg", seed=0)
    assert "b_f" not in cell.params
    with pytest.raises(ValueError, match="b_f"):
        init.forget_bias(cell, 1.0)
    with pytest.raises(ValueError, match="b_f"):
        init.chrono(cell, 10)
