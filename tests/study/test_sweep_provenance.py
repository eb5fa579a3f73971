"""A run's key holds what its result depends on beyond its spec: gatekit's version, and for each
gate and the task the plugin, its distribution and version, and the code. Change any of them
and a sweep into the same results file runs again instead of handing back the old numbers."""
import importlib.metadata
import shutil
import sys

import numpy as np
import pytest

import gatekit
from gatekit.core import plugins
from gatekit.core import reference
from gatekit.study import sweep

from support import ORDER_TASK, PythonForget, make_plugin, sigmoid

SHORT_RUN = dict(steps=4, hidden_size=4, batch_size=4, eval_every=2, eval_size=8)


def halved_forget_definition(STM_prev, E_t, W_f, b_f):
    return {"f_t": 0.5 * sigmoid(reference.linear(W_f, STM_prev, E_t, b_f))}


class EditedForget(gatekit.PythonGate):
    """PythonForget after an edit of its code: it halves f_t."""
    role, name, blocks, params = "forget", PythonForget.name, ("f",), {}
    definition = staticmethod(halved_forget_definition)

    def forward(self, step):
        step.f_t[...] = 0.5 * sigmoid(step.z("f"))

    def backward(self, step):
        f = step.f_t                     # f = σ/2, so df/dz = σ (1 - σ) / 2 = f (1 - 2f)
        step.dz("f")[...] += step.df_t * f * (1 - 2 * f)


def sweep_once(spec, path):
    return sweep.run_sweep([spec], path, workers=0, progress=False)


def test_an_edited_python_gate_runs_again(register, tmp_path):
    path = tmp_path / "runs.jsonl"
    register(make_plugin(gates=[PythonForget]), name="edited-gates")
    spec = sweep.make_spec(f"standard+forget={PythonForget.name}", ORDER_TASK, 0, **SHORT_RUN)
    [before] = sweep_once(spec, path)
    assert before["provenance"]["gates"]["forget"]["name"] == PythonForget.name
    assert before["provenance"]["gates"]["forget"]["plugin"] == "edited-gates"
    # Registered at run time: no distribution, no version; only its code tells versions apart.
    assert before["provenance"]["gates"]["forget"]["distribution"] is None
    assert before["provenance"]["gates"]["forget"]["version"] is None

    gatekit.unregister_plugin("edited-gates")
    register(make_plugin(gates=[EditedForget]), name="edited-gates")
    after = sweep_once(spec, path)
    assert (after.ran, after.skipped) == (1, 0)
    assert after[0]["final_loss"] != before["final_loss"]      # the edit changes the numbers
    again = sweep_once(spec, path)
    assert (again.ran, again.skipped) == (0, 1)
    assert again[0]["final_loss"] == after[0]["final_loss"]


def test_a_new_gatekit_version_runs_again(tmp_path, monkeypatch):
    path = tmp_path / "runs.jsonl"
    spec = sweep.make_spec("standard", ORDER_TASK, 0, **SHORT_RUN)
    [first] = sweep_once(spec, path)
    assert first["provenance"]["gatekit"] == gatekit.__version__
    for role in ("forget", "learn", "remember", "use"):
        assert first["provenance"]["gates"][role]["distribution"] == "gatekit"
        assert first["provenance"]["gates"][role]["version"] == gatekit.__version__
    assert (sweep_once(spec, path).ran) == 0
    monkeypatch.setattr(sweep, "__version__", gatekit.__version__ + ".post1")
    upgraded = sweep_once(spec, path)
    assert upgraded.ran == 1 and upgraded[0]["provenance"]["gatekit"].endswith(".post1")


def test_a_new_plugin_version_runs_again_and_is_recorded(tmp_path, monkeypatch):
    if "softsign" not in gatekit.gates()["use"]:
        pytest.skip("the gatekit-numpy-gates example plugin is not installed")
    path = tmp_path / "runs.jsonl"
    spec = sweep.make_spec("standard+use=softsign", ORDER_TASK, 0, **SHORT_RUN)
    [first] = sweep_once(spec, path)
    use = first["provenance"]["gates"]["use"]
    assert use["distribution"] == "gatekit-numpy-gates"
    assert use["version"] == importlib.metadata.version("gatekit-numpy-gates")
    monkeypatch.setitem(plugins.registry().plugin_versions, use["plugin"], "99.0")
    upgraded = sweep_once(spec, path)
    assert upgraded.ran == 1 and upgraded[0]["provenance"]["gates"]["use"]["version"] == "99.0"


def test_a_compiled_gate_is_known_by_its_module_file(tmp_path, monkeypatch):
    cls = plugins.registry().gates["forget"]["standard"].cls
    module = sys.modules[cls.__module__]
    digest = sweep.code_digest(cls)
    copy = tmp_path / "copy.so"
    shutil.copyfile(module.__file__, copy)
    monkeypatch.setattr(module, "__file__", str(copy))
    assert sweep.code_digest(cls) == digest              # the same bytes: the same code
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert sweep.code_digest(cls) != digest


def test_a_changed_task_runs_again(tmp_path, monkeypatch):
    path = tmp_path / "runs.jsonl"
    spec = sweep.make_spec("standard", ORDER_TASK, 0, **SHORT_RUN)
    [first] = sweep_once(spec, path)
    task_class = plugins.registry().tasks["temporal_order"].cls
    original = task_class.solved

    def solved_nothing(self, outputs, target):
        return np.zeros(len(original(self, outputs, target)), dtype=bool)

    monkeypatch.setattr(task_class, "solved", solved_nothing)
    changed = sweep_once(spec, path)
    assert changed.ran == 1 and changed[0]["solved_fraction"] == 0.0


def test_a_worker_with_other_code_is_warned_about_and_not_rerun_forever(tmp_path, monkeypatch):
    """As from a cluster whose workers have another build: the record says what ran, and is
    filed under the key asked for, so the next sweep from here does not run it again."""
    real_run_one = sweep.run_one

    def elsewhere(spec):
        record = real_run_one(spec)
        record["provenance"]["gates"]["forget"]["code"] = "elsewhere"
        record["key"] = sweep.run_key(record["spec"], record["provenance"])
        return record

    monkeypatch.setattr(sweep, "run_one", elsewhere)
    path = tmp_path / "runs.jsonl"
    spec = sweep.make_spec("standard", ORDER_TASK, 0, **SHORT_RUN)
    with pytest.warns(sweep.ResultsWarning, match=r"ran with other code .*\(forget 'standard'"):
        [record] = sweep_once(spec, path)
    assert record["provenance"]["gates"]["forget"]["code"] == "elsewhere"
    assert record["key"] == sweep.run_key(spec, sweep.provenance(spec))
    again = sweep_once(spec, path)
    assert (again.ran, again.skipped) == (0, 1)
