"""Equation gates on Dask workers (a LocalCluster of processes on loopback, as a sweep runs):
each worker registers the gate itself and finds it in the build cache the client filled, or,
on an empty cache, the workers build it at once and both end with a working library."""
import os
import sys

import numpy as np
import pytest

import gatekit
from gatekit.core import compiler, plugins, reference

from support import needs

CACHE_ENV = compiler.CACHE_ENV


class CappedUse(gatekit.EquationGate):
    """U_t = min(tanh(LTM_t), c), V_t = σ(z_v): a gate no other test builds, so its build
    cache entries are this file's alone."""
    role, name, blocks = "use", "dask_capped_eq", ("v",)
    params = {"c_v": ("H",)}
    init = {"c_v": 0.5}

    @staticmethod
    def definition(STM_prev, E_t, LTM_t, W_v, b_v, c_v):
        U_t = np.minimum(np.tanh(LTM_t), c_v)
        V_t = reference.sigmoid(reference.linear(W_v, STM_prev, E_t, b_v))
        return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


class CappedUseAgain(CappedUse):
    """CappedUse under another name: a class no worker has built yet (a class is built once
    in a process, and a worker keeps the classes it has unpickled)."""
    name = "dask_capped_again_eq"


def run_on_worker(gate, cache):
    """On a worker: register ``gate`` with the build cache ``cache``, run a cell with it and
    unregister it. Returns the process id, the library the gate loaded and the cell's output."""
    os.environ[CACHE_ENV] = cache
    name = gatekit.register_gate(gate, name=gate.name)
    try:
        library = plugins.registry().gates["use"][gate.name].cls.kernels.library
        cell = gatekit.Cell(3, 5, "standard", use=gate.name, dtype=np.float64, seed=0)
        y, _ = cell(np.linspace(-2, 2, 4 * 2 * 3).reshape(4, 2, 3))
    finally:
        gatekit.unregister_plugin(name)
    return os.getpid(), library, y


def libraries(folder, gate):
    """The libraries of ``gate`` in the cache ``folder`` (registering rebuilds the registry,
    which builds the installed plugins' equation gates there too), with their times."""
    return {path.name: path.stat().st_mtime_ns
            for path in folder.glob(f"use-{gate.name}-*.so")}


@pytest.fixture(scope="module")
def client():
    distributed = needs("dask.distributed")
    cloudpickle = pytest.importorskip("cloudpickle")
    # The workers cannot import this test module: the gate and the task travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            yield client
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def on_each_worker(client, gate, cache):
    workers = list(client.scheduler_info()["workers"])
    futures = [client.submit(run_on_worker, gate, str(cache), workers=[worker], pure=False)
               for worker in workers]
    return client.gather(futures)


def test_workers_load_the_gate_the_client_built(client, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    _, library, want = run_on_worker(CappedUse, str(cache))
    built = libraries(cache, CappedUse)
    assert list(built) == [os.path.basename(library)]
    results = on_each_worker(client, CappedUse, cache)
    assert len({pid for pid, _, _ in results} | {os.getpid()}) == 3
    assert libraries(cache, CappedUse) == built                # found in the cache, not built again
    for _, worker_library, y in results:
        assert worker_library == library
        np.testing.assert_array_equal(y, want)


def test_workers_building_at_once_both_end_with_a_library(client, tmp_path):
    cache = tmp_path / "empty-cache"
    results = on_each_worker(client, CappedUseAgain, cache)
    assert len(libraries(cache, CappedUseAgain)) == 1
    assert not [path for path in cache.iterdir() if path.name.endswith(".tmp")]
    (_, first, y_first), (_, second, y_second) = results
    assert first == second
    np.testing.assert_array_equal(y_first, y_second)
