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

gatekit_floored_forget = pytest.importorskip(
    "gatekit_floored_forget", exc_type=ImportError,
    reason="the example plugin is not installed: pip install plugins/gatekit-floored-forget")

ENTRY_POINT = "floored_forget"
DISTRIBUTION = "gatekit-floored-forget"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_entry_point_is_installed():
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="gatekit")}
    assert ENTRY_POINT in found
    assert found[ENTRY_POINT].value == "gatekit_floored_forget"
    assert found[ENTRY_POINT].dist.name == DISTRIBUTION
    assert found[ENTRY_POINT].load() is gatekit_floored_forget


def test_gate_and_variant_are_registered_by_the_plugin():
    assert "floored" in gatekit.gates()["forget"]
    assert "floored" in gatekit.variants()
    registry = plugins.registry()
    entry = registry.gates["forget"]["floored"]
    assert entry.cls is gatekit_floored_forget.ForgetFloored
    assert entry.plugin == ENTRY_POINT
    variant = registry.variants["floored"]
    assert variant.plugin == ENTRY_POINT
    assert variant.gates == {"forget": "floored", "learn": "standard", "remember": "standard",
                             "use": "standard"}
    assert gatekit.Cell(3, 4, "floored").gate_names["forget"] == "floored"


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
    assert "floored" not in gates["forget"]
    assert "floored" not in variants
    assert ENTRY_POINT not in versions
    assert "standard" in gates["forget"] and "standard" in variants
    others = {ep.name for ep in importlib.metadata.entry_points(group="gatekit")} - {ENTRY_POINT}
    if not others:
        pytest.skip("no other gatekit plugin is installed")
    assert set(versions) == others


def test_blocked_with_star():
    gates, variants, versions = registered_in_subprocess("*")
    assert "floored" not in gates["forget"]
    assert "floored" not in variants
    assert versions == {}
    assert "standard" in gates["forget"]


def test_loads_when_something_else_is_blocked():
    gates, variants, versions = registered_in_subprocess("no_such_plugin")
    assert "floored" in gates["forget"] and "floored" in variants
    assert ENTRY_POINT in versions
