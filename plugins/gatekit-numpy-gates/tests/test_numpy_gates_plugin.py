"""The plugin as installed: found through its real entry point, versioned from its
pyproject.toml, and kept out by GATEKIT_BLOCK_PLUGINS."""
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import gatekit
from gatekit.core import plugins

gatekit_numpy_gates = pytest.importorskip(
    "gatekit_numpy_gates", exc_type=ImportError,
    reason="the example plugin is not installed: pip install plugins/gatekit-numpy-gates")

ENTRY_POINT = "numpy_gates"
DISTRIBUTION = "gatekit-numpy-gates"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
GATES = {"forget": "hard_sigmoid", "use": "softsign"}
VARIANTS = {"softsign": {"use": "softsign"},
           "hard_softsign": {"forget": "hard_sigmoid", "use": "softsign"}}


def test_entry_point_is_installed():
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="gatekit")}
    assert ENTRY_POINT in found
    assert found[ENTRY_POINT].value == "gatekit_numpy_gates"
    assert found[ENTRY_POINT].dist.name == DISTRIBUTION
    assert found[ENTRY_POINT].load() is gatekit_numpy_gates


def test_gates_and_variants_are_registered_by_the_plugin():
    registry = plugins.registry()
    for role, name in GATES.items():
        assert name in gatekit.gates()[role]
        assert registry.gates[role][name].plugin == ENTRY_POINT
    assert registry.gates["use"]["softsign"].cls is gatekit_numpy_gates.UseSoftsign
    assert registry.gates["forget"]["hard_sigmoid"].cls is gatekit_numpy_gates.ForgetHardSigmoid
    for name, gates in VARIANTS.items():
        assert name in gatekit.variants()
        variant = registry.variants[name]
        assert variant.plugin == ENTRY_POINT
        assert variant.gates == {"forget": "standard", "learn": "standard",
                                 "remember": "standard", "use": "standard", **gates}


def test_installed_version_is_the_source_version():
    version = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert importlib.metadata.version(DISTRIBUTION) == version, (
        "the installed plugin is stale: run `make install`")
    assert plugins.registry().plugin_versions[ENTRY_POINT] == version


def registered_in_subprocess(block):
    """gates(), variants() and plugin_versions as a fresh interpreter sees them with
    GATEKIT_BLOCK_PLUGINS=block, on this interpreter's import path."""
    env = dict(os.environ, GATEKIT_BLOCK_PLUGINS=block,
               PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path if p))
    code = ("import json, gatekit; from gatekit.core import plugins; "
            "print(json.dumps([gatekit.gates(), gatekit.variants(), "
            "plugins.registry().plugin_versions]))")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parent,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_blocked_by_name_while_other_plugins_load():
    gates, variants, versions = registered_in_subprocess(ENTRY_POINT)
    for role, name in GATES.items():
        assert name not in gates[role]
    assert not set(VARIANTS) & set(variants)
    assert ENTRY_POINT not in versions
    assert "standard" in gates["use"] and "standard" in variants
    others = {ep.name for ep in importlib.metadata.entry_points(group="gatekit")} - {ENTRY_POINT}
    if not others:
        pytest.skip("no other gatekit plugin is installed")
    assert set(versions) == others


def test_blocked_with_star():
    gates, variants, versions = registered_in_subprocess("*")
    for role, name in GATES.items():
        assert name not in gates[role]
    assert not set(VARIANTS) & set(variants)
    assert versions == {}


def test_blocked_among_several_names():
    gates, variants, versions = registered_in_subprocess(f"no_such_plugin, {ENTRY_POINT}")
    assert "softsign" not in gates["use"] and ENTRY_POINT not in versions
