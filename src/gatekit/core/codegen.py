"""C for a gate traced from its definition (``gatekit.core.equation``): the forward and
backward kernels, float and double, in one source file.

Each kernel is a loop over rows and, inside it, over the units [u0, u1) of the calling thread;
the loop body evaluates the graph's nodes in order, one local each, so a subexpression is
computed once. The body is a function of restrict pointers, one per array (the row's slice),
with ``#pragma GCC ivdep`` on the unit loop: GCC vectorises it with gatekit's own branch-free
exp, sigmoid and tanh (``_fastmath.h``), which it inlines.

What backward keeps and what it recomputes: it reads what forward wrote of the role's
quantities the step keeps for backward (``KEPT``: ``f_t``, ``i_t``, ``N_t``, ``LTM_t``, ``U_t``,
``V_t``; the hand-written gates read them too) wherever its gradients use that very node (σ(z)
of a sigmoid's derivative, tanh(z) of a tanh's), and recomputes, unit by unit, whatever else it
needs of the forward expression from the step's kept inputs (the blocks' pre-activations in
``z``, the earlier gates' outputs, the memories, the parameters). Reading an output costs a
load where recomputing it costs an exp; the rest costs a few flops per unit against the step's
matrix product, needs no scratch, and is more accurate than recovering an intermediate from an
output (the floored forget gate's note in plugins/gatekit-floored-forget). ``STM_t`` is never
read back (under zoneout the step holds the zoned STM there), nor a gate's extra memories.

The arrays a kernel takes are listed as ``(kind, key)`` slots (``_generated.pyx``'s
``SLOT_KINDS``): the gradients of a gate's outputs are read where the step holds them, and the
gradients of what it reads are added (``+=``) where the step collects them; a per-unit
parameter's gradient is summed over rows, into the thread's units.
"""
import math

__all__ = ["generate", "HEADERS", "Source", "symbols", "SYMBOLS"]

#: What the generated C includes.
HEADERS = ('#include "_fastmath.h"', '#include "_generated.h"')
KERNELS = ("forward_float", "forward_double", "backward_float", "backward_double")


def symbols(prefix="gk_"):
    """The names of the four kernels of a source generated with ``prefix``, in the order the
    gate holds them."""
    return tuple(prefix + kernel for kernel in KERNELS)


#: The names of the four kernels of an equation gate's library.
SYMBOLS = symbols()

ROLE_QUANTITIES = ("f_t", "i_t", "N_t", "LTM_t", "U_t", "V_t", "STM_t")
#: The outputs backward reads back rather than recomputing (see the module's docstring).
KEPT = ("f_t", "i_t", "N_t", "LTM_t", "U_t", "V_t")
_STEP_INPUTS = ("STM_prev", "LTM_prev", "E_t", "s_t") + ROLE_QUANTITIES

# (float, double) names of each function of one argument.
_FUNCTIONS = {"exp": ("gk_expf", "gk_exp"), "sigmoid": ("gk_sigmoidf", "gk_sigmoid"),
              "tanh": ("gk_tanhf", "gk_tanh"), "log": ("logf", "log"),
              "sqrt": ("sqrtf", "sqrt"), "abs": ("fabsf", "fabs")}
_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=",
              "gt": ">", "ge": ">="}


class Source:
    """The generated C (``text``) and the arrays of each kernel, ``forward_slots`` and
    ``backward_slots``: ``(kind, key)`` pairs in argument order."""

    def __init__(self, text, forward_slots, backward_slots):
        self.text, self.forward_slots, self.backward_slots = text, forward_slots, backward_slots


def input_slot(name, parameters):
    """The slot of an input of the traced graph, and that of its gradient."""
    if name.startswith("z:"):
        return ("z", name[2:]), ("dz", name[2:])
    if name in parameters:
        return ("param", name), ("dparam", name)
    if name in _STEP_INPUTS:
        return (name, None), (f"d{name}", None)
    if name.endswith("_prev"):
        return ("mem_prev", name[:-5]), ("dmem_prev", name[:-5])
    return ("mem_t", name[:-2]), ("dmem_t", name[:-2])


def output_slot(name):
    """The slot an output is written to, and that of its gradient (None for ``s_t``, which
    stays where the loop put it, in the gate's first block of ``z``)."""
    if name == "s_t":
        return None, None
    if name in ROLE_QUANTITIES:
        return (name, None), (f"d{name}", None)
    return ("mem_t", name[:-2]), ("dmem_t", name[:-2])


def generate(traced, prefix="gk_", storage="", headers=True):
    """The C of the gate ``traced`` (an ``equation.Traced``) describes: its kernels are
    :func:`symbols` of ``prefix``, declared ``storage`` (``"static "`` for many gates' kernels
    compiled into a module, each kept to it), after the ``HEADERS`` unless ``headers`` is
    False."""
    graph = traced.graph
    parameters = set(traced.parameters)
    inputs = sorted(traced.inputs.items(), key=lambda item: item[1])
    forward_reads = [(node, input_slot(name, parameters)[0]) for name, node in inputs]
    writes = [(node, slot, "=") for name, node in traced.outputs.items()
              for slot in [output_slot(name)[0]]
              if slot is not None and not traced.passes_on(name)]

    seeded, gradients = traced.gradients()
    seed_reads = [(graph.input(f"d:{name}"), output_slot(name)[1]) for name in seeded]
    adds = [(node, input_slot(name, parameters)[1], "+=") for name, node in gradients]
    roots = [node for node, _, _ in adds]
    used = set(graph.needed(roots))
    kept_reads = [(node, slot) for node, slot, _ in writes
                  if slot[0] in KEPT and node in used and graph.nodes[node][0] != "input"]
    used = _reached(graph, roots, {node for node, _ in kept_reads}, into_sums=True)
    backward_reads = [read for read in forward_reads + kept_reads if read[0] in used] + seed_reads
    parts = [*HEADERS, ""] if headers else []
    for dtype in ("float", "double"):
        for direction, reads, written in (("forward", forward_reads, writes),
                                          ("backward", backward_reads, adds)):
            parts.append(_kernel(graph, f"{prefix}{direction}_{dtype}", dtype, reads, written,
                                 storage))
    return Source("\n".join(parts), [slot for _, slot in forward_reads] + [s for _, s, _ in writes],
                  [slot for _, slot in backward_reads] + [s for _, s, _ in adds])


def _literal(value, dtype):
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    text = repr(float(value))
    return f"{text}f" if dtype == "float" else text


def _expression(graph, node, dtype):
    op, operands, value = graph.nodes[node]
    v = [f"v{k}" for k in operands]
    double = dtype == "double"
    if op == "const":
        return _literal(value, dtype)
    if op in _FUNCTIONS:
        return f"{_FUNCTIONS[op][double]}({v[0]})"
    if op == "neg":
        return f"-{v[0]}"
    if op in _OPERATORS:
        return f"{v[0]} {_OPERATORS[op]} {v[1]}"
    if op == "maximum":
        return f"{v[0]} >= {v[1]} ? {v[0]} : {v[1]}"
    if op == "minimum":
        return f"{v[0]} <= {v[1]} ? {v[0]} : {v[1]}"
    if op == "where":
        return f"{v[0]} ? {v[1]} : {v[2]}"
    if op == "pow":
        exponent = graph.value(operands[1])
        one = _literal(1.0, dtype)
        sqrt = _FUNCTIONS["sqrt"][double]
        if exponent == 2:
            return f"{v[0]} * {v[0]}"
        if exponent == 3:
            return f"{v[0]} * {v[0]} * {v[0]}"
        if exponent == -1:
            return f"{one} / {v[0]}"
        if exponent == 0.5:
            return f"{sqrt}({v[0]})"
        if exponent == -0.5:
            return f"{one} / {sqrt}({v[0]})"
        if exponent == 0:
            return one
        return f"{'pow' if double else 'powf'}({v[0]}, {_literal(exponent, dtype)})"
    raise AssertionError(f"no C for {op}")          # pragma: no cover


def _kernel(graph, name, dtype, reads, writes, storage):
    """``<name>``: the rows loop, calling ``<name>_row`` on each row's slices. The row
    function first computes the row's sums over units, each in a loop over all H units (in
    one order, so every thread gets the same bits), nested sums first, then its units."""
    roots = [node for node, _, _ in writes]
    parameters = ([f"const {dtype}* restrict x{k}" for k in range(len(reads))]
                  + [f"{dtype}* restrict y{k}" for k in range(len(writes))])
    loaded = {node: f"x{k}" for k, (node, _) in enumerate(reads)}
    sums = graph.reductions(roots)
    lines = []
    for level in _levels(graph, sums):
        lines += [f"    {dtype} s{node} = 0;" for node in level]
        body = _body(graph, [graph.nodes[node][1][0] for node in level], loaded, dtype)
        body += [f"        s{node} += v{graph.nodes[node][1][0]};" for node in level]
        lines.append(_loop("0", "H", body))
    body = _body(graph, roots, loaded, dtype)
    body += [f"        y{k}[j] {mode} v{node};" for k, (node, _, mode) in enumerate(writes)]
    lines.append(_loop("u0", "u1", body))
    row = (f"static inline void {name}_row(ptrdiff_t H, ptrdiff_t u0, ptrdiff_t u1, "
           f"{', '.join(parameters)}) {{\n" + "\n".join(lines) + "\n}\n")
    calls = ", ".join(f"({'const ' if k < len(reads) else ''}{dtype}*) args->array[{k}] "
                      f"+ b * args->stride[{k}]" for k in range(len(parameters)))
    kernel = (f"{storage}void {name}(const gk_generated_args* args) {{\n"
              f"    const ptrdiff_t B = args->B, H = args->H, u0 = args->u0, u1 = args->u1;\n"
              f"    for (ptrdiff_t b = 0; b < B; ++b)\n"
              f"        {name}_row(H, u0, u1{', ' if calls else ''}{calls});\n}}\n")
    return row + "\n" + kernel


def _loop(start, end, body):
    return (f"#pragma GCC ivdep\n    for (ptrdiff_t j = {start}; j < {end}; ++j) {{\n"
            + "\n".join(body) + "\n    }")


def _body(graph, roots, loaded, dtype):
    """One local per node ``roots`` need, in order; a sum over units is the row's ``s<node>``,
    computed before; a node ``loaded`` is read, not computed."""
    body = []
    for node in sorted(_reached(graph, roots, loaded, into_sums=False)):
        op, _, value = graph.nodes[node]
        kind = "int" if op in ("lt", "le", "gt", "ge") else dtype
        if node in loaded:
            body.append(f"        const {dtype} v{node} = {loaded[node]}[j];")
        elif op == "sum":
            body.append(f"        const {dtype} v{node} = s{node};")
        elif op == "input" and value == "H":
            body.append(f"        const {dtype} v{node} = ({dtype}) H;")
        elif op == "input":
            raise AssertionError(f"input {value} has no slot")        # pragma: no cover
        else:
            body.append(f"        const {kind} v{node} = {_expression(graph, node, dtype)};")
    return body


def _reached(graph, roots, loaded, into_sums):
    """The nodes ``roots`` need, not looking into what is ``loaded`` nor, unless
    ``into_sums``, into sums over units."""
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            if node not in loaded and (into_sums or graph.nodes[node][0] != "sum"):
                stack.extend(graph.nodes[node][1])
    return seen


def _levels(graph, sums):
    """The sums grouped so that each group needs only the sums of the groups before it."""
    level = {}
    for node in sums:                       # in order: a sum's inner sums come first
        inner = [k for k in graph.reductions([graph.nodes[node][1][0]])]
        level[node] = 1 + max((level[k] for k in inner), default=0)
    return [[node for node in sums if level[node] == n]
            for n in range(1, max(level.values(), default=0) + 1)]
