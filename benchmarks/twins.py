"""Every built-in variant against the same variant built from its gates' equation-gate twins
(``gatekit.core.equation_twins``: each built-in gate's definition, compiled by the generator),
forward and forward + backward: the measurement issue 14 asks for before a hand-written kernel
may go (generated within 5 % of it). The built-in gates whose definitions trace are now built
from them (gatekit.core.derived), so against this build a twin runs the same generated C, loaded
from the build cache rather than linked in: the ratio then measures that difference only (about
1). Against the hand-written kernels, run it with a gatekit built before they went.

    python benchmarks/twins.py [--shapes S1,S3] [--rounds 7] [--variants standard,gru]
                               [--per-gate]

``--per-gate`` replaces one gate at a time (a row per gate of the variant that has a twin):
what decides, gate by gate, which hand-written kernels may go.

Paired and interleaved: each round times every variant's two cells one after the other, in an
order that alternates from round to round, so a change of the machine's load falls on both;
a contender's figure is the median over rounds of its CPU time per call (process time, which
counts every thread of a call: at S3 it compares work, not wall time). Prints a markdown table
of the medians and the ratio generated / hand-written. On a shared machine the figures are
indicative only; the decision wants an idle one.
"""
import argparse
import statistics
import time

import numpy as np

import gatekit
from gatekit.core import equation_twins
from gatekit.core._gate import ROLES

from harness.cases import Case, inputs
from harness.contenders import builtin_variants, gatekit_callable, variant_applies

MODES = ("forward", "forward+backward")


def calls_per_round(fn, budget=0.05):
    """How many calls make about ``budget`` seconds of CPU time (at least one)."""
    start = time.process_time()
    fn()
    once = max(time.process_time() - start, 1e-6)
    return max(1, int(budget / once))


def cpu_time_per_call(fn, calls):
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def pair(case, variant, traced, role=None):
    """The hand-written cell of ``variant`` and its twin (the twins of all its gates that have
    one, or of the gate of ``role`` only), same parameters, and their calls; None if no such
    gate has a twin. The twin's forward is checked first."""
    builtin = gatekit.Cell(case.D, case.H, variant, dtype=case.dtype, seed=0)
    overrides = equation_twins.twin_overrides(builtin.gate_names, traced)
    if role is not None:
        overrides = {r: name for r, name in overrides.items() if r == role}
    if not overrides:
        return None
    twin = gatekit.Cell(case.D, case.H, variant, dtype=case.dtype, seed=0, **overrides)
    for name, array in builtin.params.items():
        twin.params[name][...] = array
    x, dy = inputs(case)
    y, y_twin = builtin(x)[0], twin(x)[0]
    if not np.allclose(y_twin, y, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{variant}: the twin's output differs from the hand-written one")
    mode = "forward" if case.mode == "forward" else "backward"
    return (gatekit_callable(builtin, x, dy, mode), gatekit_callable(twin, x, dy, mode),
            sorted(overrides))


def measure(case, variants, traced, rounds, per_gate=False):
    pairs = {}
    for variant in variants:
        if variant_applies(variant)(case):
            for role in ROLES if per_gate else (None,):
                made = pair(case, variant, traced, role)
                if made is not None:
                    pairs[variant if role is None else f"{variant} ({role})"] = made
    calls = {(variant, k): calls_per_round(fns[k])
             for variant, fns in pairs.items() for k in (0, 1)}
    times = {key: [] for key in calls}
    for r in range(rounds):
        for variant, fns in pairs.items():
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[variant, k].append(cpu_time_per_call(fns[k], calls[variant, k]))
    return {variant: (statistics.median(times[variant, 0]), statistics.median(times[variant, 1]),
                      pairs[variant][2]) for variant in pairs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="S1,S3")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variants", default=None, help="comma-separated; default: every "
                        "built-in variant with a gate that has a twin")
    parser.add_argument("--per-gate", action="store_true",
                        help="replace one gate at a time rather than all at once")
    args = parser.parse_args(argv)
    traced, refused = equation_twins.twins()
    equation_twins.register_twins()
    variants = args.variants.split(",") if args.variants else builtin_variants()
    print("Gates without a twin (the tracer's refusal):")
    for (role, name), why in refused.items():
        print(f"- {role} {name!r}: {why.split(' is not in the subset')[0]}")
    print()
    print("| shape | mode | variant | gates from twins | hand-written ms | generated ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        for mode in MODES:
            case = Case.named(shape, "float32", mode)
            for variant, (hand, generated, roles) in measure(case, variants, traced,
                                                             args.rounds,
                                                             args.per_gate).items():
                print(f"| {shape} | {mode} | {variant} | {', '.join(roles)} | {hand * 1e3:.3f} "
                      f"| {generated * 1e3:.3f} | {generated / hand:.3f} |", flush=True)


if __name__ == "__main__":
    main()
