"""``gatekit.EquationGate``: a gate written as its NumPy definition, compiled from it.

Registering an equation gate (``gatekit.register_gate``, the ``register_gates`` hook, an entry
point) traces its definition (``gatekit.core.equation``), generates C for its forward and
backward steps (``gatekit.core.codegen``), builds or finds the library in the build cache
(``gatekit.core.compiler``) and registers, under the gate's name, a subclass of it whose
``kernels`` are that library: a compiled gate (``gatekit.core._generated.GeneratedGate``) that
runs without the GIL on every thread of a call. With ``compile=False`` (an argument of the
registration or a class attribute) it registers instead a Python gate that calls the definition
on the step's arrays, and evaluates the traced gradients with NumPy in backward (a definition
outside the traced subset then runs forward only).
"""
import inspect
from pathlib import Path

import numpy as np

from gatekit.core import codegen, compiler, equation
from gatekit.core._gate import PythonGate
from gatekit.core._generated import GeneratedGate

__all__ = ["build_gate", "EquationGate", "write_source"]

# What a gate declares, copied onto the Python gate of compile=False.
DECLARATIONS = ("role", "name", "blocks", "reads", "params", "memories", "init", "outputs",
                "block_biases", "stm_is_ltm")
FUNCTIONS = ("definition", "backward_definition", "trace")


class EquationGate(GeneratedGate):
    """Base class of a gate given by its ``definition`` alone: no forward, no backward.

    Declare ``role``, ``name``, ``blocks`` and, as need be, ``reads``, ``params`` (per-unit
    parameters, shape ``("H",)``), ``memories`` and ``init``, as for any gate, and a NumPy
    ``definition`` within the traced subset (docs/writing-a-gate.md). ``compile = False`` runs
    it as a Python gate instead. The class registered is made from it when it is registered;
    ``definition_hash`` identifies what its definition computes (``gatekit.save`` records it).
    """
    compile = True
    definition_hash = None
    built_from = None          # on the class registered: the EquationGate it was built from


def build_gate(cls, compile=None):
    """The gate class to register for the equation gate ``cls``: compiled, or with
    ``compile=False`` (default: ``cls.compile``) a Python gate. Raises
    ``equation.UnsupportedOperation`` for a definition outside the traced subset and
    ``compiler.CompileError`` when the generated source does not compile."""
    if compile is None:
        compile = cls.compile
    # The registry is rebuilt whenever a plugin is added: build each class once, so the gate
    # a name stands for stays the same class.
    built = cls.__dict__.get("_built")
    if built is None:
        built = {}
        cls._built = built
    if compile not in built:
        built[compile] = _build(cls, compile)
    return built[compile]


def _build(cls, compile):
    try:
        traced = equation.trace(cls)
    except equation.UnsupportedOperation:
        if compile:
            raise
        traced = None
    attributes = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                  "__doc__": cls.__doc__, "built_from": cls}
    if traced is not None:
        if cls.backward_definition is None:
            attributes["backward_definition"] = staticmethod(traced.backward_definition(cls))
        attributes.update({
            "definition_hash": traced.fingerprint,
            # A gate that reads these unit by unit needs them H wide (see Gate.stm_by_unit
            # and Gate.input_size_is_hidden_size).
            "stm_by_unit": "STM_prev" in traced.elementwise_reads,
            "input_size_is_hidden_size": "E_t" in traced.elementwise_reads,
        })
        if traced.reduces and compile:
            # Sums over units: the kernels read every unit, once a sync has made them
            # complete; each thread sums all units itself, so it needs no shared scratch.
            attributes.update(syncs=1, uses_work=False)
    if not compile:
        declared = {name: getattr(cls, name) for name in DECLARATIONS}
        declared.update({name: staticmethod(getattr(cls, name)) for name in FUNCTIONS
                         if getattr(cls, name) is not None})
        if traced is None:          # runs forward only: nothing to differentiate
            return type(cls.__name__, (DefinitionPythonGate,), {**declared, **attributes})
        seeded, gradients = traced.gradients()
        return type(cls.__name__, (TracedPythonGate,),
                    {**declared, **attributes, "traced": traced, "seeded": seeded,
                     "gradients": gradients})
    source = _generate(cls, traced)
    kernels = compiler.build(source, f"{cls.role}-{cls.name}", codegen.SYMBOLS)
    return type(cls.__name__, (cls,), {**attributes, "kernels": kernels})


def _generate(cls, traced):
    """The C of the traced gate ``cls``, or the reason it has none."""
    scalars = [name for name in traced.parameters if tuple(cls.params[name]) == ()]
    if scalars:
        raise equation.UnsupportedOperation(
            f"gate {cls.name!r}: the parameter {scalars[0]} of shape () is traced but not "
            "compiled (each thread of a compiled gate sums the gradient of its own units; a "
            "number shared by all units would need their sums summed); give it shape ('H',), "
            "or register the gate with compile=False")
    return codegen.generate(traced)


def write_source(cls, path):
    """Write the C generated from the definition of ``cls`` (an ``EquationGate``, or any gate
    whose definition traces) to ``path``, atomically, and return its ``codegen.Source``, whose
    slots say what each kernel's arrays are: the step a ``setup.py`` would take to build a
    gate from its definition ahead of time rather than into the build cache."""
    source = _generate(cls, equation.trace(cls))
    compiler.write_atomically(Path(path), source.text)
    return source


class DefinitionPythonGate(PythonGate):
    """An equation gate registered with ``compile=False``: its definition called on the step's
    arrays, one step at a time, its blocks' ``reference.linear`` answered by the loop's
    pre-activations. Forward only, unless traced (:class:`TracedPythonGate`)."""

    def forward(self, step):
        cls = type(self)
        known = {}
        for name in inspect.signature(cls.definition).parameters:
            block = name[2:] if name[:2] in ("W_", "b_") else None
            if block in cls.blocks:
                known[name] = (_Weight(step.z(block), cls.block_biases) if name[0] == "W"
                               else _BIAS)
            elif name in cls.params:
                known[name] = self.arrays[name]
            else:
                known[name] = getattr(step, name)
        for name, value in cls.definition(**known).items():
            target = step.z(cls.blocks[0]) if name == "s_t" else getattr(step, name)
            target[...] = value


class _Weight:
    """A block's weight W_k: ``[STM_prev, E_t] @ W_k.T + b_k`` (or the event's, or the
    STM's product; without ``+ b_k`` for a gate whose blocks have no biases) is the loop's
    pre-activation ``z``."""
    __array_ufunc__ = None          # NumPy hands ``array @ W.T`` to __rmatmul__

    def __init__(self, z, biased):
        self.z, self.biased = z, biased

    @property
    def T(self):
        return self

    def __rmatmul__(self, rows):
        return self if self.biased else self.z

    def __add__(self, bias):
        if bias is not _BIAS:
            return NotImplemented
        return self.z

    __radd__ = __add__


_BIAS = object()


class TracedPythonGate(DefinitionPythonGate):
    """An equation gate registered with ``compile=False`` whose definition is traced: its
    backward evaluates the traced gradients with NumPy."""
    traced = None
    seeded = ()
    gradients = ()

    def _inputs(self, step):
        values = {}
        for name in type(self).traced.inputs:
            if name.startswith("z:"):
                values[name] = step.z(name[2:])
            elif name in self.arrays:
                values[name] = self.arrays[name]
            else:
                values[name] = getattr(step, name)
        return values

    def backward(self, step):
        cls = type(self)
        values = self._inputs(step)
        values.update({f"d:{name}": getattr(step, f"d{name}") for name in cls.seeded})
        results = cls.traced.graph.evaluate([node for _, node in cls.gradients], values)
        for (name, _), gradient in zip(cls.gradients, results):
            if name.startswith("z:"):
                step.dz(name[2:])[...] += gradient
            elif name in step.dparams:
                step.dparams[name][...] += equation.parameter_gradient(
                    gradient, step.f_t.shape, step.dparams[name].ndim)
            else:
                getattr(step, f"d{name}")[...] += gradient
