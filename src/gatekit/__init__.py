"""gatekit: the LSTM memory cell taken apart into its four gates.

Learn (combine + ignore), Forget, Remember and Use are each a pluggable component; any
composition runs on one compiled time loop and is checked against the NumPy reference
equations in :mod:`gatekit.reference`.

The package is built in floors, each importing only the ones below it:
``core`` (gate interface, compiled loop, cell, reference, plugins) <- ``nn`` (layers,
initialisers, losses, optimisers) <- ``io`` (files, saving, interop) <- ``train`` <- ``study``
(tasks, sweeps, compare, pictures) <- ``cli``; ``integrations`` (``gatekit.torch``,
``gatekit.jax``) sit on ``io`` and below, and nothing imports them. What users call is
re-exported here; modules beyond the cell and layer are imported on first use.
"""
import importlib

from gatekit.version import __version__
from gatekit.core._gate import Gate, PythonGate, StepArrays
from gatekit.core.cell import Cell
from gatekit.core.hookspecs import hookimpl
from gatekit.core.equation_gate import EquationGate
from gatekit.core.plugins import gates, register_gate, register_plugin, unregister_plugin, variants
from gatekit.nn.layers import LSTM
from gatekit.io.saving import load, save

# Public modules, imported when first touched (``gatekit.tasks``, ``from gatekit import interop``).
_MODULES = {
    "reference": "gatekit.core.reference",
    "initialisers": "gatekit.nn.initialisers",
    "losses": "gatekit.nn.losses",
    "optimisers": "gatekit.nn.optimisers",
    "interop": "gatekit.io.interop",
    "training": "gatekit.train.training",
    "tasks": "gatekit.study.tasks",
    "testing": "gatekit.testing",
}
# Modules that import another framework (an optional dependency): reached by name only, never
# by ``from gatekit import *``.
_INTEGRATIONS = {"torch": "gatekit.integrations.torch", "jax": "gatekit.integrations.jax"}
# Names these modules had before, still accepted.
_OLD_NAMES = {"init": "initialisers", "optim": "optimisers"}


def __getattr__(name):
    target = _MODULES.get(_OLD_NAMES.get(name, name)) or _INTEGRATIONS.get(name)
    if target is None:
        raise AttributeError(f"module 'gatekit' has no attribute {name!r}")
    module = importlib.import_module(target)
    globals()[name] = module
    return module


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | set(_INTEGRATIONS))


def get_include():
    """The folder of gatekit's C headers (``_tiles.h`` and ``_fastmath.h``, which ``_gate.pxd``
    includes): a Cython gate plugin adds it to its extensions' ``include_dirs``."""
    import os
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "core")


__all__ = ["Cell", "EquationGate", "Gate", "LSTM", "PythonGate", "StepArrays", "gates",
           "get_include", "hookimpl", "load", "register_gate", "register_plugin", "save",
           "unregister_plugin", "variants", "__version__", *_MODULES]
