"""Finding gates and variants: the plugin manager and the registry built from it.

A gate class registered by a plugin that is an ``EquationGate`` is compiled from its
definition as it is registered (``gatekit.core.equation_gate``). Built-in gates are plugins
listed in ``DEFAULT_PLUGINS``; third-party plugins are modules named
by entry points in the ``gatekit`` group. Entry points are loaded lazily, on the first question
about gates or variants, and once. ``GATEKIT_BLOCK_PLUGINS`` (comma-separated entry-point names,
or ``*`` for all of them) keeps third-party plugins from loading.
"""
import importlib
import importlib.metadata
import os
import re
import threading
from dataclasses import dataclass, field

import pluggy

from gatekit.core import hookspecs
from gatekit.core._gate import (BLOCK_READS, Gate, MAX_BLOCKS, MAX_MEMORIES, PythonGate,
                               ROLE_OUTPUTS, ROLES)
from gatekit.core.equation_gate import build_gate, EquationGate
from gatekit.core.hookspecs import hookimpl
from gatekit.core.task import Task

__all__ = ["BLOCK_ENV", "DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "GateEntry", "gates",
           "plugin_manager", "PluginError", "register_gate", "register_plugin", "Registry",
           "registry", "TaskEntry", "tasks", "unregister_plugin", "VariantEntry", "variants"]

ENTRY_POINT_GROUP = "gatekit"
BLOCK_ENV = "GATEKIT_BLOCK_PLUGINS"
DEFAULT_PLUGINS = ("gatekit.core.builtin_variants", "gatekit.study.builtin_tasks")

_lock = threading.RLock()
_manager = None
_registry = None


class PluginError(Exception):
    """A plugin could not be loaded, or registered something invalid."""


@dataclass(frozen=True)
class GateEntry:
    cls: type
    plugin: str


@dataclass(frozen=True)
class VariantEntry:
    gates: dict
    plugin: str
    description: str = ""


@dataclass(frozen=True)
class TaskEntry:
    cls: type
    plugin: str


@dataclass
class Registry:
    """What the plugins registered: ``gates[role][name]``, ``variants[name]`` and
    ``tasks[name]``."""
    gates: dict = field(default_factory=lambda: {role: {} for role in ROLES})
    variants: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    plugin_versions: dict = field(default_factory=dict)

    def add_gate(self, cls, plugin, compile=None):
        """Register gate class ``cls``; an :class:`EquationGate` is compiled from its definition
        first (a Python gate with ``compile=False``; ``None``: as the class says)."""
        if isinstance(cls, type) and issubclass(cls, EquationGate) and cls.kernels is None:
            _check_gate_class(cls, plugin)
            cls = build_gate(cls, compile)
        _check_gate_class(cls, plugin)
        known = self.gates[cls.role]
        if cls.name in known:
            raise PluginError(f"{cls.role} gate {cls.name!r} is registered twice: by plugin "
                              f"{known[cls.name].plugin!r} and by plugin {plugin!r}")
        known[cls.name] = GateEntry(cls, plugin)

    def add_variant(self, name, gates, plugin, description=""):
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a variant with name {name!r}; "
                              "expected a non-empty string")
        if name in self.variants:
            raise PluginError(f"variant {name!r} is registered twice: by plugin "
                              f"{self.variants[name].plugin!r} and by plugin {plugin!r}")
        unknown_roles = set(gates) - set(ROLES)
        if unknown_roles:
            raise PluginError(f"variant {name!r} of plugin {plugin!r} names unknown roles "
                              f"{sorted(unknown_roles)}; roles are {list(ROLES)}")
        self.variants[name] = VariantEntry({role: gates.get(role, "standard") for role in ROLES},
                                           plugin, description)

    def add_task(self, cls, plugin):
        _check_task_class(cls, plugin)
        if cls.name in self.tasks:
            raise PluginError(f"task {cls.name!r} is registered twice: by plugin "
                              f"{self.tasks[cls.name].plugin!r} and by plugin {plugin!r}")
        self.tasks[cls.name] = TaskEntry(cls, plugin)

    def compose(self, variant, overrides):
        """The gate class of each role: the variant's, with ``overrides`` (role -> name) applied."""
        if variant not in self.variants:
            raise ValueError(f"unknown variant {variant!r}; known variants: "
                             f"{', '.join(self.variants)}")
        names = dict(self.variants[variant].gates)
        names.update({role: name for role, name in overrides.items() if name is not None})
        classes = []
        for role in ROLES:
            name = names[role]
            if name not in self.gates[role]:
                raise ValueError(f"unknown {role} gate {name!r}; known {role} gates: "
                                 f"{', '.join(self.gates[role])}")
            classes.append(self.gates[role][name].cls)
        return tuple(classes)


def _check_gate_class(cls, plugin):
    where = f"gate {cls!r} of plugin {plugin!r}"
    if not (isinstance(cls, type) and issubclass(cls, Gate)):
        raise PluginError(f"{where}: expected a subclass of gatekit.Gate or gatekit.PythonGate")
    if cls.role not in ROLES:
        raise PluginError(f"{where}: role {cls.role!r} is not one of {list(ROLES)}")
    if not (isinstance(cls.name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cls.name)):
        raise PluginError(f"{where}: name {cls.name!r} is not an identifier")
    if not all(isinstance(b, str) and b.isidentifier() for b in cls.blocks):
        raise PluginError(f"{where}: blocks {cls.blocks!r} must be a tuple of identifiers")
    reads = dict(cls.reads)
    for block, read in reads.items():
        if block not in cls.blocks or read not in BLOCK_READS:
            raise PluginError(f"{where}: reads {reads!r} must map some of its blocks "
                              f"{tuple(cls.blocks)!r} to one of {BLOCK_READS!r}")
    if len(cls.blocks) > MAX_BLOCKS:
        raise PluginError(f"{where}: declares {len(cls.blocks)} blocks; at most {MAX_BLOCKS} "
                          "are supported")
    for name, shape in dict(cls.params).items():
        if not (name.isidentifier() and all(
                dim in ("H", "D") or (isinstance(dim, int) and not isinstance(dim, bool)
                                      and dim > 0) for dim in shape)):
            raise PluginError(f"{where}: parameter {name!r} has shape {shape!r}; "
                              "expected a tuple of 'H', 'D' and positive integers")
    memories = cls.memories
    names = list(memories) if isinstance(memories, (tuple, list, dict)) else None
    if (names is None or not all(isinstance(n, str) and n.isidentifier() for n in names)
            or len(set(names)) != len(names) or len(names) > MAX_MEMORIES
            or (isinstance(memories, dict) and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in memories.values()))):
        raise PluginError(f"{where}: memories {memories!r} must be a tuple of at most "
                          f"{MAX_MEMORIES} distinct identifiers, or a dict from them to "
                          "initial values (numbers)")
    products = cls.products
    params = dict(cls.params)
    if not (isinstance(products, (tuple, list)) and len(products) <= 1
            and all(isinstance(name, str) and tuple(params.get(name, ())) == ("H", "H")
                    for name in products)):
        raise PluginError(f"{where}: products {products!r} must name at most one of its (H, H) "
                          f"parameters {params!r}")
    if products and (not cls.syncs or issubclass(cls, PythonGate)):
        raise PluginError(f"{where}: a gate with products {tuple(products)!r} is a Cython gate "
                          f"that shares its work (syncs >= 1); it has syncs = {cls.syncs!r}")
    if not callable(cls.definition):
        raise PluginError(f"{where}: no NumPy `definition` for gatekit.reference")
    missing = set(ROLE_OUTPUTS[cls.role]) - set(cls.provides())
    if missing:
        raise PluginError(f"{where}: a {cls.role} gate must provide {sorted(missing)}")


def _check_task_class(cls, plugin):
    where = f"task {cls!r} of plugin {plugin!r}"
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise PluginError(f"{where}: expected a subclass of gatekit.tasks.Task")
    if not (isinstance(cls.name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cls.name)):
        raise PluginError(f"{where}: name {cls.name!r} is not an identifier")
    for method in ("sample", "solved"):
        if getattr(cls, method) is getattr(Task, method):
            raise PluginError(f"{where}: no `{method}` method")


def _blocked_entry_points():
    value = os.environ.get(BLOCK_ENV, "")
    return {name.strip() for name in value.split(",") if name.strip()}


def _load_entry_points(manager):
    blocked = _blocked_entry_points()
    if "*" in blocked:
        return
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in blocked or manager.get_plugin(entry_point.name) is not None:
            continue
        try:
            module = entry_point.load()
        except Exception as error:
            raise PluginError(
                f"gatekit plugin {entry_point.name!r} ({entry_point.value}) failed to load: "
                f"{error!r}; set {BLOCK_ENV}={entry_point.name} to skip it") from error
        manager.register(module, name=entry_point.name)
        if entry_point.dist is not None:
            manager.gatekit_versions[entry_point.name] = entry_point.dist.version


def plugin_manager():
    """The plugin manager, with the default plugins and (once) the entry-point plugins loaded."""
    global _manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager("gatekit")
            manager.add_hookspecs(hookspecs)
            manager.gatekit_versions = {}
            for name in DEFAULT_PLUGINS:
                manager.register(importlib.import_module(name), name=name)
            _load_entry_points(manager)
            manager.check_pending()
            _manager = manager
        return _manager


def registry():
    """The registry of gates and variants, built once from every loaded plugin."""
    global _registry
    with _lock:
        if _registry is None:
            manager = plugin_manager()
            built = Registry(plugin_versions=dict(manager.gatekit_versions))
            # Each plugin's hooks are called on their own so a registration names its plugin.
            for hook, add in ((manager.hook.register_gates, built.add_gate),
                              (manager.hook.register_variants, built.add_variant),
                              (manager.hook.register_tasks, built.add_task)):
                for impl in hook.get_hookimpls():
                    impl.function(register=_register_for(add, impl.plugin_name))
            _registry = built
        return _registry


def _register_for(add, plugin):
    def register(*args, **kwargs):
        add(*args, plugin=plugin, **kwargs)
    return register


def register_plugin(plugin, name=None):
    """Register a plugin object or module at run time (for gates defined in a script or a
    notebook) and return its name. Cells built afterwards can use its gates and variants.

    If the plugin is refused (by pluggy, or for what it registers), the registry is left as it
    was: nothing of the plugin stays behind, and the name can be used again."""
    global _registry
    with _lock:
        manager = plugin_manager()
        previous = _registry
        name = name or manager.get_canonical_name(plugin)
        already_known = manager.get_plugin(name) is not None or manager.is_registered(plugin)
        try:
            registered = manager.register(plugin, name=name)
            manager.check_pending()
            _registry = None
            registry()
        except BaseException:
            # Some pluggy versions add a plugin before validating each of its hooks; whatever
            # got in comes out again. A refusal because the name or the plugin is already
            # registered leaves that earlier registration alone.
            if not already_known and manager.get_plugin(name) is plugin:
                manager.unregister(plugin, name=name)
            _registry = previous
            raise
        return registered


def register_gate(cls, compile=None, name=None):
    """Register one gate class at run time, as a plugin of its own (named ``name``, by default
    ``"<role>:<name>"``) whose ``register_gates`` hook registers it; return the plugin's name.
    An :class:`EquationGate` is compiled, unless ``compile=False``."""

    class OneGate:
        @hookimpl
        def register_gates(self, register):
            register(cls, compile=compile)

    return register_plugin(OneGate(), name=name or f"{cls.role}:{cls.name}")


def unregister_plugin(name):
    """Remove a plugin registered with :func:`register_plugin`."""
    global _registry
    with _lock:
        plugin_manager().unregister(name=name)
        _registry = None


def variants():
    """The names of the registered variants."""
    return list(registry().variants)


def tasks():
    """The names of the registered tasks."""
    return list(registry().tasks)


def gates():
    """The registered gate names of each role: ``{"forget": [...], "learn": [...], ...}``."""
    return {role: list(entries) for role, entries in registry().gates.items()}
