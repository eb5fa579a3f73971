"""Gates compiled from their NumPy definition: tracing and differentiation.

An :class:`EquationGate` declares what any gate declares and a ``definition``, nothing else.
When it is registered, :func:`trace` calls the definition once with symbolic arrays in place of
everything the step offers and records what it computes as an expression graph (:class:`Graph`)
of the operations of the traced subset (the table of docs/writing-a-gate.md): equal
subexpressions become one node (each node is looked up by its operation and operands before it
is made), and ``1 / (1 + np.exp(-x))`` becomes the compiled gates' own sigmoid.
:func:`differentiate` adds the gradients to the same graph, by reverse-mode differentiation,
and ``gatekit.core.codegen`` writes C for both. Anything outside the subset raises
:class:`UnsupportedOperation` at registration, naming the operation and the file and line of
the call (in the definition, or in a helper it calls).

What the step offers, and what the definition's arguments are bound to:

- ``W_k``, ``b_k`` of the gate's blocks, only in ``reference.linear(W_k, STM_prev, E_t, b_k)``
  (``linear_event``, ``linear_stm`` for a block that reads the event or the STM only): that
  whole expression is the loop's pre-activation of block k, which the loop has computed;
- ``STM_prev``, ``LTM_prev`` and ``E_t`` (unit by unit: a gate that uses ``E_t`` so needs
  ``input_size == hidden_size``), the outputs of earlier gates (``f_t``, ``s_t``, ``i_t``...),
  the memories (``n_prev``; ``n_t`` of an earlier gate), all (B, H);
- its parameters of shape ``("H",)``, one number per unit, or ``()``, one number for every
  unit (``compile=False`` only: a compiled kernel's threads each sum their units' share of a
  gradient, and a scalar's gradient would need all of them summed once more); Python numbers;
- ``H`` (an input named so), the number of units, for a mean over units.
"""
import hashlib
import inspect
import math
import numbers
import os
import sys

import numpy as np

from gatekit.core import reference

__all__ = ["differentiate", "Graph", "parameter_gradient", "trace", "Traced",
           "UnsupportedOperation"]

class UnsupportedOperation(TypeError):
    """A definition uses something the tracer cannot compile (raised at registration)."""


# --- The expression graph --------------------------------------------------------------------

UNARY = ("neg", "exp", "log", "tanh", "sqrt", "abs", "sigmoid")
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow")
COMPARISONS = ("lt", "le", "gt", "ge")
COMMUTATIVE = ("add", "mul", "maximum", "minimum")
_FOLD = UNARY + BINARY

# Each operation in NumPy: to fold constants, and to run a traced gate in Python.
NUMPY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "tanh": np.tanh, "sqrt": np.sqrt,
    "abs": np.abs, "sigmoid": reference.sigmoid, "add": np.add, "sub": np.subtract,
    "mul": np.multiply, "div": np.divide, "maximum": np.maximum, "minimum": np.minimum,
    "pow": np.power, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "where": np.where,
    "sum": lambda x: np.sum(x, axis=-1, keepdims=True),
}


class Graph:
    """Nodes ``(op, operands, value)`` in creation order, so operands come before their node:
    ``("input", (), name)``, ``("const", (), number)``, an operation of ``UNARY``, ``BINARY``
    or ``COMPARISONS`` on node ids, or ``("where", (condition, a, b), None)``."""

    def __init__(self):
        self.nodes = []
        self._ids = {}

    def add(self, op, *operands, value=None):
        """The id of the node, made if no equal node exists; simplified where it is plain
        (constants folded, x + 0, x * 1, 1 / (1 + exp(-x)) as sigmoid(x))."""
        if op in COMMUTATIVE:
            operands = tuple(sorted(operands))
        simpler = self._simplify(op, operands)
        if simpler is not None:
            return simpler
        node = (op, tuple(operands), value)
        if node not in self._ids:
            self._ids[node] = len(self.nodes)
            self.nodes.append(node)
        return self._ids[node]

    def const(self, number):
        return self.add("const", value=float(number))

    def input(self, name):
        return self.add("input", value=name)

    def value(self, node):
        """The number of a constant node, else None."""
        op, _, value = self.nodes[node]
        return value if op == "const" else None

    def _simplify(self, op, operands):
        values = [self.value(k) for k in operands]
        if op in _FOLD and operands and all(v is not None for v in values):
            with np.errstate(all="ignore"):
                return self.const(NUMPY[op](*values))
        if op == "add" or op == "sub":
            if values[-1] == 0:
                return operands[0]
            if op == "add" and values[0] == 0:
                return operands[1]
        if op == "mul":
            for k in (0, 1):
                if values[k] == 1:
                    return operands[1 - k]
                if values[k] == 0:
                    return self.const(0.0)
        if op == "div":
            if values[1] == 1:
                return operands[0]
            argument = self._negated_exp_plus_one(operands[1])
            if argument is not None:           # a / (1 + exp(-x)) = a σ(x)
                return self.add("mul", operands[0], self.add("sigmoid", argument))
        if op == "neg" and self.nodes[operands[0]][0] == "neg":
            return self.nodes[operands[0]][1][0]
        if op == "pow" and values[1] == 1:
            return operands[0]
        return None

    def _negated_exp_plus_one(self, node):
        """x where ``node`` is 1 + exp(-x), else None."""
        op, operands, _ = self.nodes[node]
        if op != "add":
            return None
        for k in (0, 1):
            other = self.nodes[operands[1 - k]]
            if self.value(operands[k]) == 1 and other[0] == "exp":
                inner = self.nodes[other[1][0]]
                if inner[0] == "neg":
                    return inner[1][0]
        return None

    def per_unit(self, node):
        """Whether ``node`` varies from unit to unit (an input, or an operation on one), rather
        than being one number per row (a sum over units, or what is made of sums and
        numbers)."""
        op, operands, value = self.nodes[node]
        if op == "input":
            return value != "H"
        if op in ("const", "sum"):
            return False
        return any(self.per_unit(k) for k in operands)

    def reductions(self, roots):
        """The sums over units ``roots`` depend on."""
        return [k for k in self.needed(roots) if self.nodes[k][0] == "sum"]

    def needed(self, roots):
        """The ids of the nodes ``roots`` depend on, ``roots`` included, in order."""
        seen, stack = set(), list(roots)
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.nodes[node][1])
        return sorted(seen)

    def evaluate(self, roots, values):
        """The arrays of ``roots`` in NumPy, from ``values``: ``{input name: array}``."""
        computed = {}
        for node in self.needed(roots):
            op, operands, value = self.nodes[node]
            if op == "input":
                computed[node] = values[value]
            elif op == "const":
                computed[node] = value
            else:
                computed[node] = NUMPY[op](*(computed[k] for k in operands))
        return [computed[node] for node in roots]

    def fingerprint(self, roots, names):
        """A hash of what ``roots``, called ``names``, compute."""
        text = repr([self.nodes[k] for k in self.needed(roots)]) + repr(list(zip(names, roots)))
        return hashlib.sha256(text.encode()).hexdigest()


# --- Reverse-mode differentiation -------------------------------------------------------------

def differentiate(graph, seeds, leaves):
    """The gradients of ``sum(seed * node for node, seed in seeds)`` with respect to each of
    ``leaves`` (node ids), as nodes of ``graph``: ``{leaf: node}``, leaves it does not reach
    left out. ``seeds``: ``[(node, seed node)]``."""
    contributions = {}
    for node, seed in seeds:
        contributions.setdefault(node, []).append(seed)
    g = graph
    for node in range(len(graph.nodes) - 1, -1, -1):
        if node not in contributions or node in leaves:
            continue
        adjoint = _sum(g, contributions[node])
        op, operands, _ = graph.nodes[node]

        def send(target, gradient):
            if g.nodes[target][0] in ("const", "input") and not g.per_unit(target):
                return                                  # a number, or H
            if g.per_unit(gradient) and not g.per_unit(target):
                gradient = g.add("sum", gradient)    # a row's number feeds every unit
            contributions.setdefault(target, []).append(gradient)

        if op in ("input", "const") or op in COMPARISONS:
            continue
        x = operands[0]
        if op == "sum":
            send(x, adjoint)
        elif op == "neg":
            send(x, g.add("neg", adjoint))
        elif op == "exp":
            send(x, g.add("mul", adjoint, node))
        elif op == "log":
            send(x, g.add("div", adjoint, x))
        elif op == "tanh":
            send(x, g.add("mul", adjoint, g.add("sub", g.const(1), g.add("mul", node, node))))
        elif op == "sigmoid":
            send(x, g.add("mul", adjoint, g.add("mul", node, g.add("sub", g.const(1), node))))
        elif op == "sqrt":
            send(x, g.add("div", g.add("mul", g.const(0.5), adjoint), node))
        elif op == "abs":
            send(x, g.add("where", g.add("lt", x, g.const(0)), g.add("neg", adjoint), adjoint))
        elif op == "where":
            condition, a, b = operands
            zero = g.const(0)
            send(a, g.add("where", condition, adjoint, zero))
            send(b, g.add("where", condition, zero, adjoint))
        elif op in ("maximum", "minimum"):
            a, b = operands
            first = g.add("ge" if op == "maximum" else "le", a, b)
            zero = g.const(0)
            send(a, g.add("where", first, adjoint, zero))
            send(b, g.add("where", first, zero, adjoint))
        elif op in ("add", "sub"):
            send(operands[0], adjoint)
            send(operands[1], adjoint if op == "add" else g.add("neg", adjoint))
        elif op == "mul":
            a, b = operands
            send(a, g.add("mul", adjoint, b))
            send(b, g.add("mul", adjoint, a))
        elif op == "div":
            a, b = operands
            send(a, g.add("div", adjoint, b))
            send(b, g.add("neg", g.add("div", g.add("mul", adjoint, node), b)))
        elif op == "pow":
            exponent = g.value(operands[1])
            derivative = g.add("mul", g.const(exponent),
                               g.add("pow", x, g.const(exponent - 1)))
            send(x, g.add("mul", adjoint, derivative))
        else:                                  # pragma: no cover - every op is handled above
            raise AssertionError(f"no derivative for {op}")
    return {leaf: _sum(g, contributions[leaf]) for leaf in leaves if leaf in contributions}


def _sum(graph, nodes):
    total = nodes[0]
    for node in nodes[1:]:
        total = graph.add("add", total, node)
    return total


# --- Tracing ---------------------------------------------------------------------------------

class _Tracer:
    """One tracing of one definition: its graph, and where in the definition a call was made."""

    def __init__(self, cls, definition):
        self.cls, self.definition, self.code = cls, definition, definition.__code__
        self.graph = Graph()

    def where(self):
        """The file and line of the traced call: the innermost frame outside this module and
        NumPy (in the definition, or in a helper it calls, then named with the definition's
        line too)."""
        frame = sys._getframe(1)
        while frame is not None and _inside_tracing(frame.f_code.co_filename):
            frame = frame.f_back
        site = frame
        while frame is not None and frame.f_code is not self.code:
            frame = frame.f_back
        if frame is None:
            return f"{self.code.co_filename}, line {self.code.co_firstlineno}"
        where = f"{self.code.co_filename}, line {frame.f_lineno}"
        if site is frame:
            return where
        return (f"{site.f_code.co_filename}, line {site.f_lineno}, called from the definition "
                f"at {where}")

    def where_of(self, error):
        """The file and line of the definition where ``error`` was raised."""
        tb, line = error.__traceback__, self.code.co_firstlineno
        while tb is not None:
            if tb.tb_frame.f_code is self.code:
                line = tb.tb_lineno
            tb = tb.tb_next
        return f"{self.code.co_filename}, line {line}"

    def block_preactivation(self, block, reads):
        """The loop's pre-activation of block ``block``, read as ``reads`` reads."""
        if self.cls.block_reads(block) != reads:
            self.refuse(f"reference.linear of block {block!r} reading {reads!r} (the block "
                        f"reads {self.cls.block_reads(block)!r})")
        return Symbol(self, self.graph.input(f"z:{block}"), f"z_{block}")

    def refuse(self, what):
        raise UnsupportedOperation(
            f"{what} is not in the subset gatekit compiles ({self.where()}, in "
            f"{self.definition.__qualname__}); see 'A gate as its equation' in "
            "docs/writing-a-gate.md, or register the gate with compile=False to run it in "
            "Python")


def _inside_tracing(filename):
    return filename == __file__ or filename.startswith(_NUMPY_FOLDER)


_NUMPY_FOLDER = os.path.dirname(np.__file__)


def _operand(tracer, value, what):
    """The node of an operand: a traced array or a number."""
    if isinstance(value, Symbol):
        if value.tracer is not tracer:
            tracer.refuse(f"{what} on arrays of another tracing")
        return value.node
    if isinstance(value, _Partial):
        return _operand(tracer, value.unbiased_preactivation(), what)
    if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, (bool, np.bool_)):
        return tracer.graph.const(float(value))
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        return tracer.graph.const(float(value))
    tracer.refuse(f"{what} with {type(value).__name__} {value!r:.40}")


_UFUNCS = {np.add: "add", np.subtract: "sub", np.multiply: "mul", np.true_divide: "div",
           np.negative: "neg", np.exp: "exp", np.log: "log", np.tanh: "tanh", np.sqrt: "sqrt",
           np.absolute: "abs", np.maximum: "maximum", np.minimum: "minimum",
           np.power: "pow", np.less: "lt", np.less_equal: "le", np.greater: "gt",
           np.greater_equal: "ge", np.positive: "pos", np.square: "square"}


_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "neg": "unary -",
            "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class _Traced:
    """What every traced object refuses: what is not in the subset."""
    __array_priority__ = 1000

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self.tracer.refuse(f"the attribute or method .{name} of {self.describe()}")

    def __getitem__(self, index):
        self.tracer.refuse(f"indexing {self.describe()}")

    def __iter__(self):
        self.tracer.refuse(f"iterating over {self.describe()}")

    def __len__(self):
        self.tracer.refuse(f"len() of {self.describe()}")

    def __bool__(self):
        self.tracer.refuse(f"the truth value of {self.describe()} (an if or and/or on arrays; "
                           "use np.where)")

    def __float__(self):
        self.tracer.refuse(f"float() of {self.describe()}")

    def __array__(self, *args, **kwargs):
        self.tracer.refuse(f"converting {self.describe()} to a NumPy array")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = _UFUNCS.get(ufunc) if method == "__call__" and not kwargs else None
        if name is None:
            call = f"np.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
            self.tracer.refuse(call + (f" with {', '.join(kwargs)}=" if kwargs else ""))
        if name in ("add", "mul", "sub", "div", "pow") and any(
                isinstance(x, _Partial) for x in inputs):
            partial = next(x for x in inputs if isinstance(x, _Partial))
            return partial._combine(name, inputs)
        return _apply(self.tracer, name, inputs)

    def __array_function__(self, func, types, args, kwargs):
        handler = _FUNCTIONS.get(func)
        if handler is None:
            self.tracer.refuse(f"np.{func.__name__}")
        return handler(self.tracer, *args, **kwargs)

    def __add__(self, other):
        return np.add(self, other)

    def __radd__(self, other):
        return np.add(other, self)

    def __sub__(self, other):
        return np.subtract(self, other)

    def __rsub__(self, other):
        return np.subtract(other, self)

    def __mul__(self, other):
        return np.multiply(self, other)

    def __rmul__(self, other):
        return np.multiply(other, self)

    def __truediv__(self, other):
        return np.true_divide(self, other)

    def __rtruediv__(self, other):
        return np.true_divide(other, self)

    def __pow__(self, other):
        return np.power(self, other)

    def __rpow__(self, other):
        return np.power(other, self)

    def __neg__(self):
        return np.negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return np.absolute(self)

    def __lt__(self, other):
        return np.less(self, other)

    def __le__(self, other):
        return np.less_equal(self, other)

    def __gt__(self, other):
        return np.greater(self, other)

    def __ge__(self, other):
        return np.greater_equal(self, other)

    def __matmul__(self, other):
        self.tracer.refuse(f"a matrix product of {self.describe()}")

    def __rmatmul__(self, other):
        self.tracer.refuse(f"a matrix product with {self.describe()}")

    def __floordiv__(self, other):
        self.tracer.refuse(f"// on {self.describe()}")

    def __mod__(self, other):
        self.tracer.refuse(f"% on {self.describe()}")

    __rfloordiv__, __rmod__ = __floordiv__, __mod__
    __hash__ = object.__hash__


class Symbol(_Traced):
    """A traced array: a node of the graph. ``boolean`` for a comparison, which only
    ``np.where`` takes."""

    def __init__(self, tracer, node, name=None, boolean=False):
        self.tracer, self.node, self.name, self.boolean = tracer, node, name, boolean

    def describe(self):
        return self.name or "a traced array"

    def sum(self, axis=None, keepdims=False, **kwargs):
        return _reduce(self.tracer, "sum", self, axis, keepdims, kwargs)

    def mean(self, axis=None, keepdims=False, **kwargs):
        return _reduce(self.tracer, "mean", self, axis, keepdims, kwargs)

    def __matmul__(self, other):
        if isinstance(other, _Partial) and other.kind == "transposed" and self.name in (
                "STM_prev", "E_t"):
            return _Partial(self.tracer, "product", other.block,
                            "STM" if self.name == "STM_prev" else "event")
        return super().__matmul__(other)


class _Partial(_Traced):
    """A piece of ``reference.linear`` of one of the gate's blocks: its weight ``W_k``, that
    weight transposed, its bias ``b_k``, ``[STM_{t-1}, E_t]`` or the product before the bias.
    Only the steps that lead to the block's whole pre-activation are allowed."""

    def __init__(self, tracer, kind, block=None, reads=None):
        self.tracer, self.kind, self.block, self.reads = tracer, kind, block, reads

    def describe(self):
        return {"weight": f"the weight W_{self.block}", "transposed": f"W_{self.block}.T",
                "bias": f"the bias b_{self.block}", "concatenated": "[STM_prev, E_t]",
                "product": f"the product of W_{self.block} without its bias"}[self.kind]

    @property
    def T(self):
        if self.kind != "weight":
            self.tracer.refuse(f".T of {self.describe()}")
        return _Partial(self.tracer, "transposed", self.block)

    def __matmul__(self, other):
        if (self.kind == "concatenated" and isinstance(other, _Partial)
                and other.kind == "transposed"):
            return _Partial(self.tracer, "product", other.block, "both")
        return super().__matmul__(other)

    def unbiased_preactivation(self):
        """The block's pre-activation, if this is its product and its gate's blocks have no
        biases (``block_biases = False``); otherwise refused."""
        if self.kind == "product" and not self.tracer.cls.block_biases:
            return self.tracer.block_preactivation(self.block, self.reads)
        self.tracer.refuse(f"using {self.describe()}")

    def _combine(self, name, inputs):
        if not self.tracer.cls.block_biases:
            inputs = [x.unbiased_preactivation() if isinstance(x, _Partial) else x
                      for x in inputs]
            return _apply(self.tracer, name, inputs)
        kinds = {x.kind: x for x in inputs if isinstance(x, _Partial)}
        if name == "add" and set(kinds) == {"product", "bias"} and len(inputs) == 2:
            product, bias = kinds["product"], kinds["bias"]
            if product.block == bias.block:
                return self.tracer.block_preactivation(product.block, product.reads)
        described = " and ".join(x.describe() if isinstance(x, _Traced) else repr(x)
                                 for x in inputs)
        self.tracer.refuse(f"{name} of {described} (a block's weight and bias are read only "
                           "in reference.linear(W_k, STM_prev, E_t, b_k), the whole expression)")


def _apply(tracer, name, inputs):
    graph = tracer.graph
    what = _SYMBOLS.get(name, f"np.{name}")
    for x in inputs:
        if isinstance(x, Symbol) and x.boolean and name not in ("where",):
            tracer.refuse(f"arithmetic ({name}) on a comparison")
    nodes = [_operand(tracer, x, what) for x in inputs]
    if name == "pos":
        return inputs[0]
    if name == "square":
        name, nodes = "pow", [nodes[0], graph.const(2)]
    if name == "pow":
        base, exponent = (graph.value(k) for k in nodes)
        if exponent is None and base is None:
            tracer.refuse("** between two arrays")
        if exponent is None:              # c ** x = exp(x log c)
            if base <= 0:
                tracer.refuse(f"{base} ** an array (a base that is not positive)")
            return Symbol(tracer, graph.add("exp", graph.add("mul", nodes[1],
                                                               graph.const(math.log(base)))))
    return Symbol(tracer, graph.add(name, *nodes), boolean=name in COMPARISONS)


def _reduce(tracer, how, x, axis, keepdims, other):
    """A sum or mean over units, each row's: one number per row, which every unit may use."""
    if axis not in (-1, 1) or not keepdims or other:
        tracer.refuse(f".{how}() other than over units with keepdims, "
                      f".{how}(axis=-1, keepdims=True)")
    graph = tracer.graph
    total = graph.add("sum", _operand(tracer, x, f".{how}()"))
    if how == "mean":
        total = graph.add("div", total, graph.input("H"))
    return Symbol(tracer, total)


def _where(tracer, condition, a, b):
    if not (isinstance(condition, Symbol) and condition.boolean):
        tracer.refuse("np.where with a condition that is not a comparison of traced arrays")
    nodes = [_operand(tracer, x, "np.where") for x in (a, b)]
    return Symbol(tracer, tracer.graph.add("where", condition.node, *nodes))


def _clip(tracer, x, low, high):
    clipped = np.maximum(x, low) if low is not None else x
    return np.minimum(clipped, high) if high is not None else clipped


def _concatenate(tracer, arrays, axis=0):
    names = [getattr(x, "name", None) for x in arrays]
    if names == ["STM_prev", "E_t"] and axis in (-1, 1):
        return _Partial(tracer, "concatenated")
    tracer.refuse("np.concatenate other than [STM_prev, E_t] in reference.linear")


def _like(value):
    def like(tracer, array, *args, **kwargs):
        if args or kwargs:
            tracer.refuse("np.ones_like / np.zeros_like with a dtype or shape")
        _operand(tracer, array, "np.ones_like")
        return Symbol(tracer, tracer.graph.const(value))
    return like


_FUNCTIONS = {np.where: _where, np.clip: _clip, np.concatenate: _concatenate,
              np.ones_like: _like(1.0), np.zeros_like: _like(0.0),
              np.sum: lambda tracer, x, axis=None, keepdims=False, **other:
                  _reduce(tracer, "sum", x, axis, keepdims, other),
              np.mean: lambda tracer, x, axis=None, keepdims=False, **other:
                  _reduce(tracer, "mean", x, axis, keepdims, other)}


class Traced:
    """What :func:`trace` found: the ``graph``, the node of each output by name
    (``outputs``), the node of each input (``inputs``: ``"z:k"`` for block k's
    pre-activation, else the argument's name), and ``elementwise_reads``: the step arrays
    ``STM_prev`` and ``E_t`` the definition reads unit by unit rather than through a block."""

    def __init__(self, graph, inputs, outputs, elementwise_reads, parameters):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs
        self.elementwise_reads, self.parameters = elementwise_reads, parameters

    @property
    def reduces(self):
        """Whether it sums over units: its compiled kernels then read every unit of their
        inputs, so the gate syncs (once a step, each way) before it runs."""
        return bool(self.graph.reductions(list(self.outputs.values())))

    def gradients(self):
        """The outputs whose gradients (``d:<name>`` inputs) seed backward (all but ``s_t``,
        whose gradient the loop keeps in the block's ``dz``), and the gradient of each input
        they reach, ``[(input name, node)]``. The nodes are added to the graph once; it is
        then only read, by any number of threads."""
        graph = self.graph
        seeded = [name for name in self.outputs if name != "s_t" and not self.passes_on(name)]
        seeds = [(self.outputs[name], graph.input(f"d:{name}")) for name in seeded]
        inputs = sorted(self.inputs.items(), key=lambda item: item[1])
        gradients = differentiate(graph, seeds, {node for _, node in inputs})
        return seeded, [(name, gradients[node]) for name, node in inputs if node in gradients]

    def backward_definition(self, cls):
        """The reference backward of the gate ``cls`` this traces, for
        ``gatekit.reference.backward``: the traced gradients evaluated in NumPy (as the
        ``compile=False`` gate evaluates them), each block's ``dz`` taken through its
        ``reference.linear`` to ``dW_k``, ``db_k``, ``dSTM_prev`` and ``dE_t``. A function whose
        signature names what it reads, like any ``backward_definition``."""
        seeded, gradients = self.gradients()
        graph, outputs = self.graph, self.outputs
        blocks = [name[2:] for name in self.inputs if name.startswith("z:")]
        if "s_t" in outputs:               # what later gates sent to s_t reaches the block's dz
            blocks = list(dict.fromkeys([cls.blocks[0], *blocks]))
        reads = {block: cls.block_reads(block) for block in blocks}
        arguments = [name for name in self.inputs if not name.startswith("z:")]
        for block in blocks:
            arguments += [f"W_{block}"] + ([f"b_{block}"] if cls.block_biases else [])
            arguments += _LINEAR_READS[reads[block]]
        arguments += [f"d{name}" for name in seeded] + (["ds_t"] if "s_t" in outputs else [])
        arguments = list(dict.fromkeys(arguments))

        def backward_definition(**known):
            values = {name: known[name] for name in self.inputs if not name.startswith("z:")}
            for block in blocks:
                values[f"z:{block}"] = _preactivation(cls, block, known)
            values.update({f"d:{name}": known[f"d{name}"] for name in seeded})
            # Every seed is a (B, H) gradient; a gate without one has nothing to send back.
            rows_by_units = np.shape(known[f"d{seeded[0]}"]) if seeded else (0, 0)
            values["H"] = rows_by_units[-1]
            results = graph.evaluate([node for _, node in gradients], values)
            dz = {block: 0.0 for block in blocks}
            if "s_t" in outputs:
                dz[cls.blocks[0]] = known["ds_t"]
            contributions = []
            for (name, _), gradient in zip(gradients, results):
                if name.startswith("z:"):
                    dz[name[2:]] = dz[name[2:]] + gradient
                elif name in cls.params:
                    contributions.append({f"d{name}": parameter_gradient(
                        gradient, rows_by_units, np.ndim(known[name]))})
                else:
                    contributions.append({f"d{name}": gradient})
            for block, gradient in dz.items():
                contributions.append(_linear_backward(cls, block, gradient, known))
            return reference.merge(*contributions)

        backward_definition.__signature__ = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
             for name in arguments])
        backward_definition.__qualname__ = f"{cls.__qualname__}.backward_definition"
        return backward_definition

    def passes_on(self, name):
        """Whether the output ``name`` is the input of that name, unchanged (sLSTM's learn gate
        passes i_t on): the step holds one array for both, and one gradient, which whatever
        comes after has already added to; it is neither written nor seeded."""
        return self.outputs[name] == self.inputs.get(name)

    @property
    def fingerprint(self):
        """A hash of what the definition computes: its outputs' expressions, by name."""
        names = sorted(self.outputs)
        return self.graph.fingerprint([self.outputs[name] for name in names], names)


def parameter_gradient(gradient, rows_by_units, ndim):
    """The gradient of a parameter (``ndim`` 1: per unit, 0: a scalar) from that of its use in
    every row and unit: summed over what shares it, once broadcast (the traced gradient may
    depend on neither the row nor the unit)."""
    full = np.broadcast_to(gradient, rows_by_units)
    return full.sum(axis=0) if ndim else full.sum()


# What reference.linear of a block reads, by what the block reads.
_LINEAR_READS = {"both": ["STM_prev", "E_t"], "event": ["E_t"], "STM": ["STM_prev"]}


def _preactivation(cls, block, known):
    """Block ``block``'s pre-activation from the step's quantities ``known``, as in
    ``gatekit.reference``."""
    W, reads = known[f"W_{block}"], cls.block_reads(block)
    columns = np.concatenate([known[name] for name in _LINEAR_READS[reads]], axis=-1)
    z = columns @ W.T
    return z + known[f"b_{block}"] if cls.block_biases else z


def _linear_backward(cls, block, dz, known):
    """The gradients of block ``block``'s pre-activation's weight, bias and inputs, given its
    gradient ``dz``."""
    W, reads = known[f"W_{block}"], cls.block_reads(block)
    read = _LINEAR_READS[reads]
    dz = np.broadcast_to(dz, np.shape(known[read[0]])[:-1] + (W.shape[0],))
    columns = np.concatenate([known[name] for name in read], axis=-1)
    gradients = {f"dW_{block}": dz.T @ columns}
    if cls.block_biases:
        gradients[f"db_{block}"] = dz.sum(axis=0)
    d_columns, start = dz @ W, 0
    for name in read:
        width = np.shape(known[name])[-1]
        gradients[f"d{name}"] = d_columns[:, start:start + width]
        start += width
    return gradients


def trace(cls):
    """Trace ``cls.definition`` (an ``EquationGate``'s): a :class:`Traced`."""
    definition = cls.definition
    if isinstance(definition, staticmethod):
        definition = definition.__func__
    if not inspect.isfunction(definition):
        raise UnsupportedOperation(f"gate {cls.name!r}: its definition {definition!r} is not a "
                                   "Python function")
    tracer = _Tracer(cls, definition)
    params = dict(cls.params)
    arguments = {}
    for name in inspect.signature(definition).parameters:
        block = name[2:] if name[:2] in ("W_", "b_") else None
        if block in cls.blocks:
            arguments[name] = _Partial(tracer, "weight" if name[0] == "W" else "bias", block)
        elif name in params:
            if tuple(params[name]) not in (("H",), ()):
                tracer.refuse(f"the parameter {name} of shape {tuple(params[name])} (only "
                              "per-unit parameters, shape ('H',), and scalars, shape (), are "
                              "traced)")
            arguments[name] = Symbol(tracer, tracer.graph.input(name), name)
        elif name in ("STM_prev", "LTM_prev", "E_t") or name.endswith(("_t", "_prev")):
            arguments[name] = Symbol(tracer, tracer.graph.input(name), name)
        else:
            tracer.refuse(f"the argument {name!r}")
    try:
        result = definition(**arguments)
    except UnsupportedOperation:
        raise
    except Exception as error:
        raise UnsupportedOperation(
            f"tracing the definition of gate {cls.name!r} ({tracer.where_of(error)}) raised "
            f"{error!r}; the tracer supports the operations of docs/writing-a-gate.md, or "
            "register the gate with compile=False") from error
    if not isinstance(result, dict):
        tracer.refuse(f"a definition returning {type(result).__name__} (it returns a dict)")
    provided = set(cls.provides())
    outputs = {}
    for name, value in result.items():
        if name not in provided:
            tracer.refuse(f"the output {name!r} (gate {cls.name!r} provides {sorted(provided)})")
        outputs[name] = _operand(tracer, value, f"the output {name}")
    missing = provided - set(outputs)
    if missing:
        tracer.refuse(f"a definition without {sorted(missing)}")
    if "s_t" in outputs and outputs["s_t"] != tracer.graph.input(f"z:{cls.blocks[0]}"):
        tracer.refuse("an s_t other than the pre-activation of the gate's first block")
    graph = tracer.graph
    inputs = {value: node for node, (op, _, value) in enumerate(graph.nodes) if op == "input"}
    roots = list(outputs.values())
    needed = set(graph.needed(roots))
    inputs = {name: node for name, node in inputs.items() if node in needed and name != "H"}
    elementwise = {name for name in ("STM_prev", "E_t") if name in inputs}
    parameters = [name for name in inputs if name in params]
    return Traced(graph, inputs, outputs, elementwise, parameters)

