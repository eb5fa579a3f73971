"""The built-in gates' equation-gate twins: each built-in gate's own ``definition`` (the one
``gatekit.reference`` runs), declared again as a :class:`gatekit.EquationGate` under the name
``<name>_twin``, so that its generated kernels can be held to, and timed against, the
hand-written ones. A gate whose definition the tracer refuses has no twin; :func:`twins` says
why, in the tracer's own words.

This is the measurement that decided which hand-written kernels the generator replaces
(``gatekit.core.derived``: every gate with a twin); a twin, loaded from the build cache, now
runs the same generated C as its built-in gate, linked in. Nothing registers the twins unless
asked (:func:`register_twins`).
"""
from gatekit.core import equation, instruction_sets, plugins
from gatekit.core.equation_gate import DECLARATIONS, EquationGate
from gatekit.core.hookspecs import hookimpl

__all__ = ["register_twins", "twin_name", "twin_overrides", "twins", "TWIN_PLUGIN"]

#: The name the twins' plugin registers under.
TWIN_PLUGIN = "builtin_twins"


def twin_name(name):
    """The name of the twin of the built-in gate ``name`` (of its role)."""
    return f"{name}_twin"


def twins():
    """``({(role, name): twin class}, {(role, name): why not})`` over the built-in gates: a
    twin for each whose definition traces, the tracer's refusal for each other."""
    traced, refused = {}, {}
    for gate in instruction_sets.load("_builtin").BUILTIN_GATES:
        key = (gate.role, gate.name)
        twin = _twin(gate)
        try:
            equation.trace(twin)
        except equation.UnsupportedOperation as error:
            refused[key] = str(error)
        else:
            traced[key] = twin
    return traced, refused


def _twin(gate):
    declared = {name: getattr(gate, name) for name in DECLARATIONS}
    declared.update(name=twin_name(gate.name), definition=staticmethod(gate.definition),
                    __doc__=f"The definition of the built-in {gate.role} gate {gate.name!r}, "
                            "compiled by gatekit's generator.",
                    __module__=__name__)
    return type(f"{gate.__name__}Twin", (EquationGate,), declared)


class _Twins:
    """The plugin registering every twin."""

    def __init__(self, classes):
        self.classes = classes

    @hookimpl
    def register_gates(self, register):
        for cls in self.classes:
            register(cls)


def register_twins():
    """Register every twin (building its kernels, or finding them in the build cache) as the
    plugin :data:`TWIN_PLUGIN`; ``gatekit.unregister_plugin(TWIN_PLUGIN)`` removes them.
    Returns the twin classes by ``(role, built-in name)``."""
    traced, _ = twins()
    plugins.register_plugin(_Twins(list(traced.values())), name=TWIN_PLUGIN)
    return traced


def twin_overrides(gate_names, traced):
    """The gates, by role, that put the twins ``traced`` (as :func:`twins` returns them) in
    place of the built-in gates ``gate_names`` (``cell.gate_names``) that have one."""
    return {role: twin_name(name) for role, name in gate_names.items()
            if (role, name) in traced}
