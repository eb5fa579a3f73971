"""The hooks a gatekit plugin implements. Their names and signatures are gatekit's plugin API.

A plugin is a module with functions decorated ``@gatekit.hookimpl``, named after these hooks.
Built-in gates, variants and tasks are registered through the very same hooks
(``gatekit.core.builtin_variants``, ``gatekit.study.builtin_tasks``); third-party plugins are
found through the ``gatekit`` entry-point group.
"""
from typing import Callable

from pluggy import HookimplMarker, HookspecMarker

__all__ = ["hookimpl", "hookspec", "register_gates", "register_tasks", "register_variants"]

hookspec = HookspecMarker("gatekit")
hookimpl = HookimplMarker("gatekit")


@hookspec
def register_gates(register: Callable[[type], None]) -> None:
    """Register gate classes.

    :param register: call ``register(GateClass)`` once per gate. ``GateClass`` derives from
        :class:`gatekit.Gate` (compiled, written in Cython) or :class:`gatekit.PythonGate`
        (written in Python/NumPy) and declares ``role``, ``name``, ``blocks``, ``params`` and
        ``definition`` (see :class:`gatekit.Gate`). Names are unique within a role; registering a
        name that another plugin already registered for the same role is an error naming both.
    """


@hookspec
def register_variants(register: Callable[..., None]) -> None:
    """Register variants: named compositions of one gate per role.

    :param register: call ``register(name, gates, description="")`` where ``gates`` maps each
        role (``"forget"``, ``"learn"``, ``"remember"``, ``"use"``) to a registered gate name;
        a role left out takes its ``"standard"`` gate. Names are unique across plugins.
    """


@hookspec
def register_tasks(register: Callable[[type], None]) -> None:
    """Register sequence tasks (what ``gatekit compare`` trains on).

    :param register: call ``register(TaskClass)`` once per task. ``TaskClass`` derives from
        :class:`gatekit.tasks.Task`, has a ``name`` (an identifier) and is built as
        ``TaskClass(length=None, **options)``; an instance has ``sample``, ``heldout`` (a
        task on a finite data set overrides it), ``input_size``, ``output_size``, ``loss``,
        ``baseline_loss`` and ``solved`` (see :mod:`gatekit.tasks`).
        Names are unique across plugins; registering a name that another plugin already
        registered is an error naming both.
    """
