"""The plugin registry: gates written in Python inside the compiled loop, variants registered by
plugins, and what is refused. Every plugin registered here is unregistered at teardown (the
``register`` fixture), so the global registry is the same before and after each test."""
import importlib.metadata
import json
import subprocess
import sys
import textwrap

import numpy as np
import pluggy
import pytest

import gatekit
from gatekit.core import plugins
from gatekit.core import reference
from gatekit.core.plugins import PluginError

from support import (BUILTIN_VARIANTS, F32_ATOL, F32_RTOL, assert_matches_reference,
                     child_env, make_plugin, random_inputs)

sigmoid = reference.sigmoid


# --- Python gates, with their NumPy definitions (what gatekit.reference runs) ---------------------

def forget_py(STM_prev, E_t, W_f, b_f):
    s_t = reference.linear(W_f, STM_prev, E_t, b_f)
    return {"s_t": s_t, "f_t": sigmoid(s_t)}


class PyForget(gatekit.PythonGate):
    """The standard forget gate, in Python; it hands s_t on (JANET's learn gate reads it)."""
    role, name, blocks, params = "forget", "py_forget", ("f",), {}
    outputs = ("s_t", "f_t")
    definition = staticmethod(forget_py)
    calls = []

    def forward(self, step):
        PyForget.calls.append(step.t)
        step.f_t[...] = sigmoid(step.z("f"))


def learn_py(STM_prev, E_t, W_g, b_g, W_a, b_a):
    """Block names other than n, i: N_t = tanh(z_g), i_t = σ(z_a)."""
    return {"N_t": np.tanh(reference.linear(W_g, STM_prev, E_t, b_g)),
            "i_t": sigmoid(reference.linear(W_a, STM_prev, E_t, b_a))}


class PyLearn(gatekit.PythonGate):
    role, name, blocks, params = "learn", "py_learn", ("g", "a"), {}
    definition = staticmethod(learn_py)

    def forward(self, step):
        step.N_t[...] = np.tanh(step.z("g"))
        step.i_t[...] = sigmoid(step.z("a"))


def use_py(STM_prev, E_t, LTM_prev, LTM_t, W_o, b_o):
    """Reads both memories: U_t = tanh(LTM_t) ⊙ (1 + tanh(LTM_{t-1})) / 2, V_t = σ(z_o)."""
    U_t = np.tanh(LTM_t) * (1 + np.tanh(LTM_prev)) / 2
    V_t = sigmoid(reference.linear(W_o, STM_prev, E_t, b_o))
    return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


class PyUse(gatekit.PythonGate):
    role, name, blocks, params = "use", "py_use", ("o",), {}
    definition = staticmethod(use_py)

    def forward(self, step):
        step.U_t[...] = np.tanh(step.LTM_t) * (1 + np.tanh(step.LTM_prev)) / 2
        step.V_t[...] = sigmoid(step.z("o"))
        step.STM_t[...] = step.U_t * step.V_t


@pytest.fixture
def python_gates(register):
    register(make_plugin(gates=[PyForget, PyLearn, PyUse]), name="test-python-gates")
    PyForget.calls.clear()


@pytest.mark.parametrize("roles", [
    dict(forget="py_forget"),
    dict(learn="py_learn"),
    dict(use="py_use"),
    dict(forget="py_forget", learn="py_learn", use="py_use"),
    dict(forget="py_forget", learn="janet", use="course"),     # janet reads the Python gate's s_t
    dict(forget="peephole", learn="py_learn", use="py_use"),
], ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_python_gate_runs_in_loop_and_matches_reference(python_gates, roles, dtype):
    cell = gatekit.Cell(3, 4, variant="standard", dtype=dtype, seed=1, **roles)
    assert {role: cell.gate_names[role] for role in roles} == roles
    x, state = random_inputs(cell, 7, 2, seed=2)
    y, (stm, ltm) = cell(x, state)
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, state, dtype=np.float64)
    if dtype == np.float64:
        tolerance = dict(rtol=0, atol=1e-12)
    else:
        tolerance = dict(rtol=F32_RTOL, atol=F32_ATOL)        # see support.py
    np.testing.assert_allclose(y, y_ref, **tolerance)
    np.testing.assert_allclose(stm, stm_ref, **tolerance)
    np.testing.assert_allclose(ltm, ltm_ref, **tolerance)
    if roles.get("forget") == "py_forget":
        assert PyForget.calls == list(range(7))       # once per step, in order


def test_python_gate_parameters_are_named_after_its_blocks(python_gates):
    cell = gatekit.Cell(3, 4, learn="py_learn", use="py_use", seed=0)
    assert set(cell.params) == {"W_f", "b_f", "W_g", "b_g", "W_a", "b_a", "W_o", "b_o"}
    assert cell.params["W_g"].shape == (4, 7) and cell.params["b_a"].shape == (4,)


# --- A Python gate with a learnable extra parameter --------------------------------------------

def forget_floor(STM_prev, E_t, W_f, b_f, floor_f):
    """f_t = max(σ(s_t), floor_f): a per-unit lower bound on what is kept."""
    s_t = reference.linear(W_f, STM_prev, E_t, b_f)
    return {"s_t": s_t, "f_t": np.maximum(sigmoid(s_t), floor_f)}


class PyFloorForget(gatekit.PythonGate):
    """Reads its parameter through ``self.arrays`` (the bound arrays, by name)."""
    role, name, blocks = "forget", "py_floor", ("f",)
    params = {"floor_f": ("H",)}
    init = {"floor_f": 0.25}
    outputs = ("s_t", "f_t")
    definition = staticmethod(forget_floor)

    def forward(self, step):
        step.f_t[...] = np.maximum(sigmoid(step.z("f")), self.arrays["floor_f"])


def test_python_gate_with_learnable_extra_parameter(register):
    register(make_plugin(gates=[PyFloorForget]), name="test-floor")
    cell = gatekit.Cell(3, 4, forget="py_floor", dtype=np.float64, seed=3)
    assert cell.params["floor_f"].shape == (4,)
    np.testing.assert_array_equal(cell.params["floor_f"], 0.25)       # its init value
    # The gate reads the very array the cell exposes.
    assert np.shares_memory(cell.gates[0].arrays["floor_f"], cell.params["floor_f"])
    x, state = random_inputs(cell, 6, 2, seed=4)
    y_low, _ = assert_matches_reference(cell, x, state)
    # The parameter is live: raising the floor changes the output, as the reference predicts,
    # whether written in place or assigned.
    cell.params["floor_f"][...] = 0.6
    y_mid, _ = assert_matches_reference(cell, x, state)
    cell.params["floor_f"] = np.array([0.0, 0.5, 0.9, 0.99])
    y_high, _ = assert_matches_reference(cell, x, state)
    assert np.abs(y_mid - y_low).max() > 1e-3 and np.abs(y_high - y_mid).max() > 1e-3
    # A float32 cell too.
    cell32 = gatekit.Cell(3, 4, forget="py_floor", dtype=np.float32, seed=3)
    assert_matches_reference(cell32, *random_inputs(cell32, 6, 2, seed=4))


def test_python_gate_without_params_attribute_registers(register):
    # `params` is optional: a gate that declares none has no extra parameters.
    class NoParams(gatekit.PythonGate):
        role, name, blocks = "forget", "py_no_params", ("f",)
        outputs = ("s_t", "f_t")
        definition = staticmethod(forget_py)

        def forward(self, step):
            step.f_t[...] = sigmoid(step.z("f"))

    register(make_plugin(gates=[NoParams]), name="test-no-params")
    cell = gatekit.Cell(3, 4, forget="py_no_params", dtype=np.float64, seed=0)
    assert set(cell.params) == {"W_f", "b_f", "W_n", "b_n", "W_i", "b_i", "W_v", "b_v"}
    assert_matches_reference(cell, *random_inputs(cell, 4, 2))


# --- Errors inside a Python gate ----------------------------------------------------------------

class GateFailure(Exception):
    pass


class PyFailingUse(gatekit.PythonGate):
    role, name, blocks, params = "use", "py_failing", ("o",), {}
    definition = staticmethod(use_py)
    fail_at = 2

    def forward(self, step):
        if step.t == PyFailingUse.fail_at:
            raise GateFailure(f"deliberate failure at step {step.t}")
        PyUse.forward(self, step)


def test_exception_in_python_gate_propagates_with_its_type(register):
    register(make_plugin(gates=[PyFailingUse]), name="test-failing")
    cell = gatekit.Cell(3, 4, use="py_failing", dtype=np.float64, seed=0)
    x, state = random_inputs(cell, 5, 2)
    with pytest.raises(GateFailure, match="deliberate failure at step 2") as info:
        cell(x, state)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "use" in notes and "py_failing" in notes and "2" in notes
    # The error is not left behind: once the gate stops failing the cell runs normally.
    PyFailingUse.fail_at = -1
    try:
        assert_matches_reference(cell, x, state)
    finally:
        PyFailingUse.fail_at = 2


def test_base_exception_in_python_gate_propagates(register):
    class Interrupting(gatekit.PythonGate):
        role, name, blocks, params = "use", "py_interrupt", ("o",), {}
        definition = staticmethod(use_py)

        def forward(self, step):
            raise KeyboardInterrupt

    register(make_plugin(gates=[Interrupting]), name="test-interrupt")
    cell = gatekit.Cell(3, 4, use="py_interrupt", seed=0)
    with pytest.raises(KeyboardInterrupt):
        cell(np.zeros((3, 1, 3), np.float32))


# --- Registering: duplicates, variants, invalid gates, misspelt hooks -------------------------

def test_duplicate_gate_name_in_role_names_both_plugins(register):
    class Duplicate(PyForget):
        name = "standard"          # the built-in forget gate's name

    with pytest.raises(PluginError) as info:
        register(make_plugin(gates=[Duplicate]), name="test-duplicate")
    message = str(info.value)
    assert "'standard'" in message and "forget" in message
    assert "gatekit.core.builtin_variants" in message and "test-duplicate" in message
    # Refused as a whole: the plugin is gone and the built-in gate still runs.
    assert plugins.plugin_manager().get_plugin("test-duplicate") is None
    cell = gatekit.Cell(3, 4, forget="standard", dtype=np.float64, seed=0)
    assert type(cell.gates[0]).__module__ != __name__
    assert_matches_reference(cell, *random_inputs(cell, 3, 2))


def test_same_gate_name_in_another_role_is_allowed(register):
    class UseNamedLikeForget(PyUse):
        name = "py_forget"          # also a forget gate's name; roles are separate namespaces

    register(make_plugin(gates=[PyForget, UseNamedLikeForget]), name="test-two-roles")
    cell = gatekit.Cell(3, 4, forget="py_forget", use="py_forget", dtype=np.float64, seed=0)
    assert_matches_reference(cell, *random_inputs(cell, 3, 2))


def test_variant_registered_by_plugin_appears_and_runs(register):
    name = register(make_plugin(gates=[PyLearn], variants=[
        ("test_peephole_pylearn", {"forget": "peephole", "learn": "py_learn"}),
    ]), name="test-variant")
    assert "test_peephole_pylearn" in gatekit.variants()
    for builtin in BUILTIN_VARIANTS:
        assert builtin in gatekit.variants()
    cell = gatekit.Cell(3, 4, variant="test_peephole_pylearn", dtype=np.float64, seed=0)
    # Roles left out of the spec take their "standard" gate.
    assert cell.gate_names == {"forget": "peephole", "learn": "py_learn",
                               "remember": "standard", "use": "standard"}
    assert_matches_reference(cell, *random_inputs(cell, 4, 2))
    gatekit.unregister_plugin(name)
    assert "test_peephole_pylearn" not in gatekit.variants()
    with pytest.raises(ValueError, match="unknown variant"):
        gatekit.Cell(3, 4, variant="test_peephole_pylearn")


def test_duplicate_variant_name_names_both_plugins(register):
    with pytest.raises(PluginError, match=r"'course'.*gatekit.core.builtin_variants.*test-dv"):
        register(make_plugin(variants=[("course", {"use": "standard"})]), name="test-dv")
    assert gatekit.Cell(2, 2, variant="course").gate_names["use"] == "course"


def _gate_class(**attributes):
    base = attributes.pop("base", gatekit.PythonGate)
    namespace = dict(role="forget", name="py_invalid", blocks=("f",), params={},
                     outputs=("s_t", "f_t"), definition=staticmethod(forget_py))
    namespace.update(attributes)
    return type("Invalid", (base,), namespace)


@pytest.mark.parametrize("gate,expected", [
    (_gate_class(role="remembrance"), "role 'remembrance'"),
    (_gate_class(role=None), "role None"),
    (_gate_class(definition=None), "definition"),
    (_gate_class(base=object), "subclass of gatekit.Gate"),
    (PyForget.forward, "subclass of gatekit.Gate"),                  # not even a class
    (_gate_class(name="has space"), "not an identifier"),
    (_gate_class(name=None), "not an identifier"),
    (_gate_class(blocks=("f", 3)), "blocks"),
    (_gate_class(params={"q_f": ("H", "T")}), "'q_f'"),
    (_gate_class(outputs=("s_t",)), "must provide ['f_t']"),
    (_gate_class(role="use"), "a use gate must provide"),          # forget outputs, use role
], ids=["bad-role", "no-role", "no-definition", "not-a-gate", "a-function", "bad-name", "no-name",
        "bad-blocks", "bad-param-shape", "missing-output", "wrong-role-outputs"])
def test_invalid_gate_class_raises_plugin_error(register, gate, expected):
    before = gatekit.gates()
    with pytest.raises(PluginError) as info:
        register(make_plugin(gates=[gate]), name="test-invalid")
    assert expected in str(info.value)
    assert "test-invalid" in str(info.value)           # names the plugin
    assert plugins.plugin_manager().get_plugin("test-invalid") is None
    assert gatekit.gates() == before


@pytest.mark.parametrize("hook_source", [
    "def register_gate(register): pass",              # misspelt hook name
    "def register_variant(register): pass",
    "def register_gates(registr): pass",              # misspelt argument
], ids=["register_gate", "register_variant", "bad-argument"])
def test_hookimpl_with_misspelt_name_is_rejected(register, hook_source):
    namespace = {}
    exec(hook_source, namespace)
    function = next(v for k, v in namespace.items() if k.startswith("register"))

    class Plugin:
        pass

    setattr(Plugin, function.__name__, staticmethod(gatekit.hookimpl(function)))
    with pytest.raises(pluggy.PluginValidationError):
        register(Plugin(), name="test-misspelt")
    assert plugins.plugin_manager().get_plugin("test-misspelt") is None
    assert set(BUILTIN_VARIANTS) <= set(gatekit.variants())


def test_registry_unchanged_after_register_and_unregister(register):
    before_gates, before_variants = gatekit.gates(), gatekit.variants()
    name = register(make_plugin(gates=[PyForget], variants=[("test_v", {"forget": "py_forget"})]),
                    name="test-roundtrip")
    assert "py_forget" in gatekit.gates()["forget"] and "test_v" in gatekit.variants()
    gatekit.unregister_plugin(name)
    assert gatekit.gates() == before_gates and gatekit.variants() == before_variants


# --- GATEKIT_BLOCK_PLUGINS, in a subprocess with a throwaway entry-point distribution ------------
# No third-party plugin is installed for this: a dist-info directory on PYTHONPATH of the child
# process declares the entry points. Every entry point installed in this environment is blocked
# in the child too (unless a case says otherwise), so only the throwaway ones are in play.

PROBE = textwrap.dedent("""
    import json, gatekit
    from gatekit.core import plugins
    print(json.dumps({
        "variants": gatekit.variants(),
        "loaded": [name for name, _ in plugins.plugin_manager().list_name_plugin()],
        "versions": plugins.registry().plugin_versions,
    }))
""")


def _fake_distribution(root, dist, version, entry_points, modules):
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text("[gatekit]\n" + lines)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_entry_points(tmp_path):
    _fake_distribution(tmp_path, "gatekit_test_fake", "1.2.3", {"fake_ep": "gatekit_test_fake"}, {
        "gatekit_test_fake": """
            import gatekit

            @gatekit.hookimpl
            def register_variants(register):
                register("fake_ep_variant", {"forget": "peephole"})
        """})
    _fake_distribution(tmp_path, "gatekit_test_broken", "0.1", {"broken_ep": "gatekit_test_broken"},
                       {"gatekit_test_broken": "raise RuntimeError('this plugin is broken')\n"})
    installed = sorted({ep.name for ep in importlib.metadata.entry_points(group="gatekit")})

    def run(block):
        env = child_env(tmp_path,
                        GATEKIT_BLOCK_PLUGINS=block.replace("{installed}", ",".join(installed)))
        return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    return run


def _loaded(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_entry_point_plugin_loads_when_not_blocked(fake_entry_points):
    out = _loaded(fake_entry_points("{installed},broken_ep"))
    assert "fake_ep_variant" in out["variants"] and "fake_ep" in out["loaded"]
    assert out["versions"].get("fake_ep") == "1.2.3"
    assert set(BUILTIN_VARIANTS) <= set(out["variants"])


@pytest.mark.parametrize("block", ["{installed},broken_ep,fake_ep",
                                   " fake_ep , broken_ep ,{installed}", "*", "fake_ep,*"],
                         ids=["by-name", "spaces", "star", "name-and-star"])
def test_blocked_entry_point_plugin_is_not_loaded(fake_entry_points, block):
    out = _loaded(fake_entry_points(block))
    assert "fake_ep_variant" not in out["variants"] and "fake_ep" not in out["loaded"]
    assert "broken_ep" not in out["loaded"]
    # The built-in gates are not entry points and are never blocked.
    assert set(BUILTIN_VARIANTS) <= set(out["variants"])
    if "*" in block:
        assert out["loaded"] == ["gatekit.core.builtin_variants",
                                 "gatekit.study.builtin_tasks"]


def test_broken_entry_point_plugin_error_names_it_and_the_block_variable(fake_entry_points):
    result = fake_entry_points("{installed}")
    assert result.returncode != 0
    assert "PluginError" in result.stderr
    assert "'broken_ep'" in result.stderr and "this plugin is broken" in result.stderr
    assert "GATEKIT_BLOCK_PLUGINS=broken_ep" in result.stderr
    # Following that advice works.
    out = _loaded(fake_entry_points("{installed},broken_ep"))
    assert "fake_ep_variant" in out["variants"]


# --- A refused registration leaves nothing behind ----------------------------------------------

def test_plugin_refused_by_pluggy_after_being_added_leaves_the_registry_as_it_was(register):
    before_gates, before_variants = gatekit.gates(), gatekit.variants()
    plugin = make_plugin(gates=[PyForget], variants=[("test_refused", {"forget": "py_forget"})])
    manager = plugins.plugin_manager()
    try:
        with pytest.MonkeyPatch.context() as patch:
            real_register = manager.register

            def register_then_refuse(plugin, name=None):
                real_register(plugin, name=name)
                raise pluggy.PluginValidationError(plugin, "refused after it was added")

            patch.setattr(manager, "register", register_then_refuse)
            with pytest.raises(pluggy.PluginValidationError):
                gatekit.register_plugin(plugin, name="test-refused")
        assert manager.get_plugin("test-refused") is None
        assert not manager.is_registered(plugin)
        assert gatekit.gates() == before_gates and gatekit.variants() == before_variants
        # The same name (and the same plugin) can then be registered properly.
        register(plugin, name="test-refused")
        assert "py_forget" in gatekit.gates()["forget"] and "test_refused" in gatekit.variants()
        cell = gatekit.Cell(3, 4, variant="test_refused", dtype=np.float64, seed=0)
        assert_matches_reference(cell, *random_inputs(cell, 3, 2))
    finally:
        if manager.is_registered(plugin):           # what the unfixed code leaves behind
            manager.unregister(plugin)
            plugins.unregister_plugin("test-refused")


def test_plugin_whose_hook_raises_leaves_the_registry_object_as_it_was(register):
    class Failing:
        @gatekit.hookimpl
        def register_gates(self, register):
            raise RuntimeError("this plugin's hook fails")

    before = plugins.registry()
    with pytest.raises(RuntimeError, match="hook fails"):
        register(Failing(), name="test-failing-hook")
    assert plugins.plugin_manager().get_plugin("test-failing-hook") is None
    assert plugins.registry() is before


# --- Block names: one namespace per cell ---------------------------------------------------------

def forget_on_block_n(STM_prev, E_t, W_n, b_n):
    return {"f_t": sigmoid(reference.linear(W_n, STM_prev, E_t, b_n))}


class ForgetOnBlockN(gatekit.PythonGate):
    """A forget gate whose block is named like the standard learn gate's combine block."""
    role, name, blocks, params = "forget", "on_block_n", ("n",), {}
    definition = staticmethod(forget_on_block_n)

    def forward(self, step):
        step.f_t[...] = sigmoid(step.z("n"))


def test_block_clash_names_both_gates_and_the_block(register):
    register(make_plugin(gates=[ForgetOnBlockN]), name="test-block-clash")
    with pytest.raises(ValueError) as info:
        gatekit.Cell(3, 4, forget="on_block_n")
    message = str(info.value)
    assert "forget gate 'on_block_n' of plugin 'test-block-clash' (block 'n')" in message
    assert ("learn gate 'standard' of plugin 'gatekit.core.builtin_variants' (block 'n')"
            in message)
    assert "'W_n'" in message


def test_block_clash_with_another_gates_parameter_names_both(register):
    class ForgetWithParameterWu(ForgetOnBlockN):
        name, blocks, params = "with_w_u", ("f",), {"W_u": ("H", "H")}
        definition = staticmethod(lambda STM_prev, E_t, W_f, b_f, W_u: {})

    register(make_plugin(gates=[ForgetWithParameterWu]), name="test-param-clash")
    with pytest.raises(ValueError) as info:
        gatekit.Cell(3, 4, forget="with_w_u", use="literal")
    message = str(info.value)
    assert "forget gate 'with_w_u' of plugin 'test-param-clash' (parameter 'W_u')" in message
    assert "use gate 'literal' of plugin 'gatekit.core.builtin_variants' (block 'u')" in message
