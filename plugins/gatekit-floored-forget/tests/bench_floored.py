"""Benchmarks of the floored forget gate with gatekit's pytest plugin: at S1-S5, the variant
``floored`` and ``standard`` with the floored forget gate (the same cell, asked for by its
gates), each beside the same cell in gatekit.reference, gatekit's standard and torch.nn.LSTM,
after the check against the reference. Not collected with the tests (``bench_``); run it as

    pytest plugins/gatekit-floored-forget/tests/bench_floored.py --benchmark-autosave
    pytest plugins/gatekit-floored-forget/tests/bench_floored.py --benchmark-compare

(the second after a change of the gate: each ratio to the gate is saved with its benchmark).
``--gatekit-shapes S1 --gatekit-modes forward`` for a quick run.
"""
import pytest

pytest.importorskip("gatekit_floored_forget", exc_type=ImportError,
                    reason="the example plugin is not installed: pip install "
                           "plugins/gatekit-floored-forget")


def test_bench_floored(gatekit_bench):
    gatekit_bench("floored")


@pytest.mark.gatekit_shapes("S1", (100, 8, 64, 64))
def test_bench_floored_forget_in_standard(gatekit_bench):
    gatekit_bench("standard", forget="floored")
