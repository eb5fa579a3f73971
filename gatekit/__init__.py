"""gatekit: the LSTM memory cell taken apart into its four gates.

Learn (combine + ignore), Forget, Remember and Use are each a pluggable component; any
composition runs on one compiled time loop and is checked against the NumPy reference
equations in :mod:`gatekit.reference`.
"""
from gatekit import init, interop, losses, optim, reference, tasks, testing, training
from gatekit._gate import Gate, PythonGate, StepArrays
from gatekit.cell import Cell
from gatekit.hookspecs import hookimpl
from gatekit.io import load, save
from gatekit.layers import LSTM
from gatekit.plugins import gates, register_plugin, unregister_plugin, variants

__version__ = "0.1.0"


def get_include():
    """The folder of gatekit's C headers (``_tiles.h``, which ``_gate.pxd`` includes): a Cython
    gate plugin adds it to its extensions' ``include_dirs``."""
    import os
    return os.path.dirname(os.path.abspath(__file__))


__all__ = ["Cell", "Gate", "LSTM", "PythonGate", "StepArrays", "gates", "get_include", "hookimpl", "init",
           "interop", "load", "losses", "optim", "reference", "register_plugin", "save", "tasks",
           "testing", "training", "unregister_plugin", "variants", "__version__"]
