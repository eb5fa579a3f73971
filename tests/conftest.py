"""Fixtures for gatekit's tests (the helpers are in support.py)."""
import pytest

import gatekit
from gatekit.core import plugins


@pytest.fixture
def register():
    """Register plugins for one test; every one still registered is removed at teardown, so the
    global registry is left as the test found it."""
    names = []

    def _register(plugin, name=None):
        registered = gatekit.register_plugin(plugin, name=name)
        names.append(registered)
        return registered

    yield _register
    for name in reversed(names):
        if plugins.plugin_manager().get_plugin(name) is not None:
            gatekit.unregister_plugin(name)
