"""Fixtures of the equation-gate tests: a build cache of the session's own, and registration
of gate classes for one test."""
import pytest

import gatekit
from gatekit.core import plugins


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """The tests build into a cache folder of their own (GATEKIT_CACHE_DIR), never the user's."""
    folder = tmp_path_factory.mktemp("gatekit-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("GATEKIT_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


@pytest.fixture
def register_gate():
    """``register_gate(cls, compile=None)`` for one test: unregistered at teardown."""
    names = []

    def _register(cls, compile=None):
        names.append(gatekit.register_gate(cls, compile=compile))
        return plugins.registry().gates[cls.role][cls.name].cls

    yield _register
    for name in reversed(names):
        if plugins.plugin_manager().get_plugin(name) is not None:
            gatekit.unregister_plugin(name)
