"""The plugin's equation gate, installed through its entry point: compiled at registration
and held to its definition, to the equation written out here and to finite differences."""
import numpy as np
import pytest

import gatekit
from gatekit.testing import check_gate, gradcheck

pytest.importorskip(
    "gatekit_equation_gates", exc_type=ImportError,
    reason="the example plugin is not installed: pip install plugins/gatekit-equation-gates")
from gatekit_equation_gates import UseLecunTanh  # noqa: E402


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_registered_through_its_entry_point_as_a_compiled_gate():
    entry = gatekit.core.plugins.registry().gates["use"]["lecun_tanh"]
    assert entry.plugin == "equation_gates" and entry.cls.built_from is UseLecunTanh
    assert entry.cls.kernels is not None and not issubclass(entry.cls, gatekit.PythonGate)
    assert "lecun_tanh" in gatekit.variants()
    # No backward written: the reference's is derived from the traced definition.
    assert UseLecunTanh.backward_definition is None and entry.cls.backward_definition


def test_check_gate():
    check_gate(UseLecunTanh)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_against_the_equation(dtype, tolerance):
    T, B, D, H = 8, 5, 3, 40
    cell = gatekit.Cell(D, H, "lecun_tanh", dtype=dtype, seed=1, threads=2)
    x = np.random.default_rng(2).standard_normal((T, B, D)).astype(dtype)
    y, _ = cell(x)
    p = {name: np.asarray(a, np.float64) for name, a in cell.params.items()}
    h, c = np.zeros((B, H)), np.zeros((B, H))
    for t in range(T):
        v = np.concatenate([h, x[t]], axis=1)
        c = (sigmoid(v @ p["W_f"].T + p["b_f"]) * c
             + sigmoid(v @ p["W_i"].T + p["b_i"]) * np.tanh(v @ p["W_n"].T + p["b_n"]))
        h = 1.7159 * np.tanh(2 / 3 * c) * sigmoid(v @ p["W_v"].T + p["b_v"])
        np.testing.assert_allclose(y[t], h, rtol=tolerance, atol=tolerance)


def test_gradients():
    cell = gatekit.Cell(3, 5, "lecun_tanh", dtype=np.float64, seed=3, threads=2)
    gradcheck(cell, np.random.default_rng(4).standard_normal((6, 3, 3)))


def test_in_a_compare_process_pool(tmp_path, monkeypatch):
    """Spawned workers load the plugin through its entry point, build the gate into the cache
    or find it there, and train with it."""
    import json
    from gatekit.study.compare import compare
    cache = tmp_path / "cache"
    monkeypatch.setenv("GATEKIT_CACHE_DIR", str(cache))
    compare(["lecun_tanh"], tasks=("adding",), seeds=2, workers=2, steps=3, hidden_size=4,
            batch_size=2, eval_size=4, eval_every=3, plots=False, progress=False,
            out=str(tmp_path / "out"))
    records = [json.loads(line)
               for line in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    assert [record["status"] for record in records] == ["ok", "ok"], records
    assert len(list(cache.glob("use-lecun_tanh-*.so"))) == 1
