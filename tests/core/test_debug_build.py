"""The bounds-checked build (``GATEKIT_DEBUG=1``; ``make test`` runs the suite on it a second
time with ``GATEKIT_EXPECT_DEBUG=1``).

The raw kernel ``gatekit.core._loop.forward`` works through raw pointers; it checks the shape of
every buffer it is handed before the first step, in every build, so that a wrong one is refused
rather than read or written out of bounds."""
import os

import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.core.cell import THREADS, _loop          # the build of the loop the cell runs
from gatekit.core._gate import DEBUG_BUILD

from support import F64_ATOL, random_inputs

T, B, D, H = 5, 2, 3, 4


@pytest.mark.skipif(os.environ.get("GATEKIT_EXPECT_DEBUG") != "1",
                    reason="GATEKIT_EXPECT_DEBUG=1 not set (not the debug run of make test)")
def test_debug_build_is_the_one_imported():
    assert DEBUG_BUILD is True


def _buffers(cell, x, **undersized):
    """The buffers Cell.forward hands the kernel (see the docstring of gatekit/core/_loop.pyx), with
    some replaced by smaller ones."""
    T, B, D = x.shape
    H, KH = cell.hidden_size, cell._weights.shape[0]
    size, layout = _loop.workspace_layout(T, B, D, H, KH, False, THREADS,
                                          cell.dtype == np.float32)
    workspace = np.empty(size, cell.dtype)
    offset, _ = layout["ltm"]
    workspace[offset:offset + B * H] = 0          # the initial LTM
    buffers = dict(W=cell._weights, bias=cell._bias, x=x, stm0=np.zeros((B, H), cell.dtype),
                   y=np.empty((T, B, H), cell.dtype), workspace=workspace)
    buffers.update(undersized)
    return buffers


def _call_kernel(cell, b):
    return _loop.forward(cell.gates, b["W"], b["bias"], b["x"], b["stm0"], b["y"],
                         b["workspace"], False, np.full(b["x"].shape[1], b["x"].shape[0], np.intp),
                         cell._forget_preactivation, cell._reads, THREADS)


def test_kernel_refuses_a_small_workspace(cell):
    # Checked in every build, before any step: the kernel computes the pointers into it itself.
    x, _ = random_inputs(cell, T, B, state=False)
    buffers = _buffers(cell, x)
    buffers["workspace"] = buffers["workspace"][:-1]
    with pytest.raises(ValueError, match="workspace"):
        _call_kernel(cell, buffers)


@pytest.fixture
def cell():
    return gatekit.Cell(D, H, variant="peephole", dtype=np.float64, seed=0)


def test_kernel_with_right_buffers_matches_cell(cell):
    # Checks the harness the undersized calls use (safe in any build): what the cell computes,
    # which is what the reference computes.
    x, _ = random_inputs(cell, T, B, state=False)
    buffers = _buffers(cell, x)
    assert _call_kernel(cell, buffers) == -1
    np.testing.assert_array_equal(buffers["y"], cell(x)[0])
    y_ref, _ = reference.forward(cell, x, dtype=np.float64)
    np.testing.assert_allclose(buffers["y"], y_ref, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("name, shape", [("bias", (4 * H - 1,)), ("y", (T - 1, B, H)),
                                         ("stm0", (B + 1, H)), ("W", (4 * H, H + D - 1))])
def test_kernel_refuses_a_buffer_of_the_wrong_shape(cell, name, shape):
    # In every build: the loop reads and writes through raw pointers, so it checks the shape
    # of each buffer before the first step, and names the one that is wrong.
    x, _ = random_inputs(cell, T, B, state=False)
    buffers = _buffers(cell, x, **{name: np.zeros(shape)})
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        _call_kernel(cell, buffers)


@pytest.mark.parametrize("rows", [1, 3])
def test_backward_refuses_a_tape_whose_initial_stm_has_other_rows(cell, rows):
    # A tampered (or hand-built) tape: the kernel would read past the end of stm0.
    x, state = random_inputs(cell, T, B)
    y, _, tape = cell.forward(x, state, keep=True)
    tape.stm0 = np.zeros((rows, H), cell.dtype)
    with pytest.raises(ValueError, match=r"stm0 must have shape \(2, 4\)"):
        cell.backward(tape, np.ones_like(y))
