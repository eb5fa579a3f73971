"""What a contender is (:class:`Contender`, the :class:`Prepared` call it builds for a case, the
:class:`Unavailable` reason it cannot), and gatekit's contenders: every built-in variant,
``standard`` on one thread and on each capped kernel build, the example plugins and the NumPy
reference. PyTorch's and JAX's are in :mod:`harness.torch_contenders` and
:mod:`harness.jax_contenders`; they take their parameters from :func:`gatekit_cell`."""
import os
from dataclasses import dataclass

import numpy as np

from gatekit.benchmarking import (Prepared, Settings, Unavailable, gatekit_callable,
                                  reference_callable)
from gatekit.core import plugins
from gatekit.core.cell import Cell

from harness.cases import COMMON_SHAPES, FAMILIES, KERNEL_FAMILIES, SEED, inputs

__all__ = ["BASELINE", "EXTRA_SHAPES", "LOOP_VARIANTS", "NEEDS_D_EQUALS_H", "NEW_CELLS",
           "ONE_THREAD", "Contender", "Prepared", "Unavailable", "builtin_variants",
           "carried_memories", "gatekit_callable", "gatekit_cell", "gatekit_contenders",
           "kernel_contender", "prepare_gatekit", "stacked_parameters", "variant_applies"]

#: The contender every ratio of a group is taken to, and the same on one thread.
BASELINE = "gatekit-standard"
ONE_THREAD = "gatekit-standard-1thread"
#: ``standard`` with zoneout and recurrent dropout, in training (new masks at every call).
REGULARISED = "gatekit-standard-regularised"
REGULARISERS = {"zoneout": (0.1, 0.05), "recurrent_dropout": 0.25}


@dataclass(frozen=True)
class Contender:
    id: str                     # for test ids and -k: letters, digits, '-' and '_'
    label: str                  # for the report
    family: str
    builder: object             # builder(case, settings) -> Prepared, or raises Unavailable
    applies: object = None      # applies(case) -> bool; None: the cases of COMMON_SHAPES

    def applies_to(self, case):
        return case.shape in COMMON_SHAPES if self.applies is None else self.applies(case)

    def build(self, case, settings=Settings()):
        return self.builder(case, settings)


#: Issue 13's cells, in the report's order.
NEW_CELLS = ("gru", "mgu", "mut1", "mingru", "minlstm", "slstm", "layernorm")


def carried_memories(cell):
    """How many (B, H) memories ``cell`` carries from step to step: 1 where the STM is the LTM
    (use gate ``memory``), else the STM, the LTM and its gates' extra memories (slstm's m, n)."""
    return 1 if cell.gate_names["use"] == "memory" else 2 + len(cell.memories)


#: Variants whose candidate adds tanh(E_t) to the H units: they run only where D = H.
NEEDS_D_EQUALS_H = ("mut1",)
#: The shapes beyond COMMON_SHAPES at which a variant runs (``standard`` runs at every shape).
EXTRA_SHAPES = {"mut1": ("S1sq", "S6"), "mingru": ("S6",), "minlstm": ("S6",)}


def variant_applies(variant):
    """Where a contender of ``variant`` runs: :data:`~harness.cases.COMMON_SHAPES` and the
    variant's :data:`EXTRA_SHAPES` (``standard``: every case), where its sizes fit it."""
    if variant == "standard":
        return lambda case: True

    def applies(case):
        if variant in NEEDS_D_EQUALS_H and case.D != case.H:
            return False
        return case.shape in COMMON_SHAPES or case.shape in EXTRA_SHAPES.get(variant, ())
    return applies


def builtin_variants():
    """The built-in variants, in their registration order."""
    from gatekit.core.builtin_variants import VARIANTS
    return list(VARIANTS)


def gatekit_cell(case, variant="standard", seed=SEED, **options):
    """The gatekit cell of ``variant`` for ``case``: the parameters every contender copies.
    :class:`Unavailable` if no installed gatekit registers ``variant``."""
    if variant not in plugins.variants():
        raise Unavailable(f"variant {variant!r} is not registered in this gatekit")
    return Cell(case.D, case.H, variant, dtype=case.dtype, seed=seed, **options)


def prepare_gatekit(case, variant="standard", seed=SEED, **options):
    """``options``: more arguments of :class:`Cell` (gates by role, ``threads``)."""
    cell = gatekit_cell(case, variant, seed, **options)
    x, dy = inputs(case, seed)
    return Prepared(gatekit_callable(cell, x, dy, case.mode), {"gates": cell.gate_names})


def _gatekit_builder(variant):
    return lambda case, settings: prepare_gatekit(case, variant)


def _one_thread_builder(case, settings):
    return prepare_gatekit(case, "standard", threads=1)


def _regularised_builder(case, settings):
    return prepare_gatekit(case, "standard", **REGULARISERS)


def _kernel_builder(build):
    """``standard`` in a process that must run the ``build`` kernels (avx2 or baseline)."""
    def prepare(case, settings):
        from gatekit.core import instruction_sets as kernels
        asked = os.environ.get(kernels.ENV, "")
        if asked != build:
            raise Unavailable(f"the {build} kernels are timed in a process started with "
                              f"{kernels.ENV}={build} (`python benchmarks/run.py run` starts it "
                              f"so); this one has {kernels.ENV}={asked!r}")
        suffix = "" if build == "baseline" else f"_{build}"
        loaded = [kernels.load(name).__name__ for name in ("_builtin", "_loop")]
        if loaded != [f"gatekit.core.{name}{suffix}" for name in ("_builtin", "_loop")]:
            raise Unavailable(f"no {build} build runs here: {kernels.ENV}={build} loaded "
                              f"{', '.join(loaded)} (the CPU lacks it, or it was not built)")
        prepared = prepare_gatekit(case, "standard")
        prepared.info["kernels"] = loaded
        return prepared
    return prepare


def _plugin_builder(variant=None, **gates):
    def build(case, settings):
        registry = plugins.gates()
        if variant is not None and variant not in plugins.variants():
            raise Unavailable(f"variant {variant!r} is not registered: install the example "
                              "plugin (make install installs plugins/*)")
        for role, name in gates.items():
            if name not in registry[role]:
                raise Unavailable(f"{role} gate {name!r} is not registered: install the example "
                                  "plugin gatekit-numpy-gates (make install installs plugins/*)")
        return prepare_gatekit(case, variant or "standard", **gates)
    return build


def _reference_builder(case, settings):
    if case.mode != "forward":
        raise Unavailable("the reference is timed forward only")
    cell = gatekit_cell(case)
    x, _ = inputs(case)
    return reference_callable(cell, x, settings.reference_limit)


def kernel_contender(build):
    """The id of ``standard`` timed with the ``build`` kernels."""
    return f"gatekit-standard-{build}"


def gatekit_contenders(families=FAMILIES):
    """gatekit's contenders of ``families`` (``gatekit`` and the kernel families), in the
    report's order."""
    found = []
    if "gatekit" in families:
        for name in builtin_variants():
            found.append(Contender(f"gatekit-{name}", f"gatekit {name}", "gatekit",
                                   _gatekit_builder(name), variant_applies(name)))
            if name == "standard":
                found.append(Contender(ONE_THREAD, "gatekit standard, threads=1", "gatekit",
                                       _one_thread_builder))
                found.append(Contender(REGULARISED, "gatekit standard, zoneout=(0.1, 0.05), "
                                       "recurrent_dropout=0.25", "gatekit",
                                       _regularised_builder))
        found.append(Contender("reference-standard", "gatekit.reference standard (NumPy)",
                               "gatekit", _reference_builder,
                               lambda case: case.mode == "forward" and case.shape != "fixed"))
        found.append(Contender("plugin-floored", "plugin floored (Cython forget gate)",
                               "gatekit", _plugin_builder("floored")))
        found.append(Contender("plugin-softsign-use", "plugin standard+use=softsign (Python gate)",
                               "gatekit", _plugin_builder(use="softsign")))
    for family, build in KERNEL_FAMILIES.items():
        if family in families:
            found.append(Contender(kernel_contender(build), f"gatekit standard, {build} kernels",
                                   family, _kernel_builder(build)))
    return found


#: The variants that the PyTorch and JAX contenders write out as a custom cell: their gate
#: blocks in gatekit's order (the rows of one product on ``[h, x_t]``), and their other
#: parameters.
LOOP_VARIANTS = {
    "course": (("f", "n", "i", "v"), ("W_u", "b_u")),
    "peephole": (("f", "n", "i", "v"), ("p_f", "p_i", "p_v")),
    "cifg": (("f", "n", "v"), ("p_f", "p_v")),
}


def stacked_parameters(cell):
    """The parameters of ``cell`` (a variant of :data:`LOOP_VARIANTS`) as a custom cell reads
    them, NumPy arrays: ``W`` the rows W_f, W_n, (W_i,) W_v stacked (STM columns first, like
    gatekit), ``b`` likewise, then the variant's other parameters under their own names."""
    blocks, extras = LOOP_VARIANTS[cell.variant]
    p = cell.params
    stacked = {"W": np.concatenate([p[f"W_{k}"] for k in blocks]),
               "b": np.concatenate([p[f"b_{k}"] for k in blocks])}
    stacked.update({name: np.array(p[name]) for name in extras})
    return stacked
