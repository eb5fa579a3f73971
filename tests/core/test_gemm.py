"""The matrix product gates call (``gemm`` of gatekit/core/_gate.pxd, the register tiles
of gatekit/core/_tiles.h), in every build of the gates this CPU runs, against NumPy in float64.

Shapes cover whole and partial tiles of rows (6 or 12), whole and partial panels of columns
(16 or 32 floats, 8 or 16 doubles), the dot-product path (A·Bᵀ with fewer rows than a tile)
and reductions with and without a vector remainder. The tolerance is the classical bound on a
sum of k products, γ_k Σ_l |a_il b_lj| with γ_k = k u / (1 - k u), u the unit roundoff."""
import importlib

import numpy as np
import pytest

from gatekit.core import instruction_sets as kernels

BUILDS = [f"gatekit.core._builtin_{build}" for build in kernels.builds()] + ["gatekit.core._builtin"]


def available(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


MODULES = [(name, module) for name in BUILDS if (module := available(name)) is not None]


def op(x, transposed):
    return x.T if transposed else x


@pytest.mark.parametrize("name, module", MODULES, ids=[name for name, _ in MODULES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False),
                                              (True, True)])
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 40, 64), (2, 17, 7), (5, 33, 65),
                                     (6, 16, 31), (7, 32, 128), (12, 64, 9), (13, 40, 100),
                                     (30, 9, 257)])
def test_gemm_matches_numpy(name, module, dtype, trans_a, trans_b, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    A = np.ascontiguousarray(op(rng.standard_normal((m, k)), trans_a), dtype)
    B = np.ascontiguousarray(op(rng.standard_normal((k, n)), trans_b), dtype)
    for beta in (0.0, 1.0, 0.5):
        C = rng.standard_normal((m, n)).astype(dtype)
        if beta == 0.0:
            C[0, 0] = np.nan              # beta = 0 overwrites C, NaN included (as BLAS does)
        C0 = C.astype(np.float64)
        module.matmul(trans_a, trans_b, A, B, dtype(beta), C)
        a, b = op(A, trans_a).astype(np.float64), op(B, trans_b).astype(np.float64)
        want = a @ b + (beta * C0 if beta else 0)
        u = np.finfo(dtype).eps / 2
        gamma = (k + 2) * u / (1 - (k + 2) * u)       # k products, the sum with beta C
        bound = gamma * (np.abs(a) @ np.abs(b) + np.abs(beta * C0 if beta else 0))
        assert np.all(np.abs(C - want) <= bound), (name, beta, np.abs(C - want).max())


@pytest.mark.parametrize("name, module", MODULES, ids=[name for name, _ in MODULES])
def test_gemm_refuses_mismatched_shapes(name, module):
    with pytest.raises(ValueError, match="op\\(A\\) must be"):
        module.matmul(False, False, np.zeros((2, 3)), np.zeros((4, 5)), 0.0, np.zeros((2, 5)))
