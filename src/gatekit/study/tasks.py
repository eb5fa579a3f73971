"""Sequence tasks generated exactly from a seed: no downloads, every comparison reproducible.

Each task is a class with a ``name`` (how :func:`make` and ``gatekit compare`` find it), built
as ``Task(length, **options)``. An instance has:

- ``sample(batch_size, rng) -> (x, target)``: ``x`` (T, B, input_size) float64, the target in
  the form its ``loss`` takes; the same ``rng`` state gives the same batch;
- ``input_size``, ``output_size``: the model's input and output widths;
- ``loss``: one of :mod:`gatekit.losses`, applied to the model's outputs (T, B, output_size);
- ``baseline_loss``: the expected loss of the trivial predictor named in the task's docstring
  (one without the memory the task is about); a model that beats it has learnt something;
- ``solved(outputs, target) -> bool array (B,)``: which sequences the model got right, by the
  task's success criterion.

The built-in tasks are registered through the ``register_tasks`` hook
(:mod:`gatekit.study.builtin_tasks`), like any plugin's: :func:`names` lists the registered
ones and :func:`make` builds one by name.
"""
import inspect
import math

import numpy as np

from gatekit.core.task import Task
from gatekit.nn.losses import MeanSquaredError, SoftmaxCrossEntropy

__all__ = ["AddingProblem", "BUILTIN_TASKS", "CopyTask", "EmbeddedReber", "make", "names", "Task",
           "ORDER_SYMBOLS", "REBER_AUTOMATON", "REBER_SYMBOLS", "TemporalOrder"]


def _batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    return int(batch_size)


def _one_hot(symbols, size):
    """(T, B) integer symbols -> (T, B, size) float64; symbols < 0 give all-zero rows."""
    x = np.zeros(symbols.shape + (size,))
    present = symbols >= 0
    x[present, symbols[present]] = 1.0
    return x


# --- The adding problem ----------------------------------------------------------------------

class AddingProblem(Task):
    """The adding problem (Hochreiter & Schmidhuber 1997; the form of Le et al. 2015): each step
    carries a value drawn from U[0, 1] and a marker; two steps are marked, one in each half of
    the sequence, and the target is the sum of their values, read at the last step. Predicting
    the mean (1) scores a mean squared error of 1/6, the trivial baseline. A sequence is solved
    when the absolute error of the last output is below ``tolerance`` (0.04, the 1997 paper's
    threshold; note that the 1997 target was ``(X1 + X2) / 2`` on this scale, half of this
    one, so 0.04 here is twice as strict relative to the target's range)."""

    name = "adding"
    description = "adding problem: sum the two marked values of T (value, marker) pairs"
    default_length = 100
    min_length = 2
    input_size = 2
    output_size = 1
    baseline_loss = 1 / 6
    loss = MeanSquaredError(last_step_only=True)

    def __init__(self, length=None, tolerance=0.04):
        super().__init__(length)
        if not tolerance > 0:
            raise ValueError(f"tolerance must be positive; got {tolerance!r}")
        self.tolerance = float(tolerance)

    def options(self):
        return {**super().options(), "tolerance": self.tolerance}

    def sample(self, batch_size, rng):
        """``x`` (T, B, 2) and the target (B, 1)."""
        T, B = self.length, _batch_size(batch_size)
        values = rng.uniform(0, 1, (T, B))
        markers = np.zeros((T, B))
        half = T // 2
        first = rng.integers(0, half, B)
        second = rng.integers(half, T, B)
        columns = np.arange(B)
        markers[first, columns] = 1
        markers[second, columns] = 1
        x = np.stack([values, markers], axis=-1)
        target = (values[first, columns] + values[second, columns])[:, None]
        return x, target

    def solved(self, outputs, target):
        error = np.abs(np.asarray(outputs)[-1, :, 0] - np.asarray(target).reshape(-1))
        return error < self.tolerance


# --- The embedded Reber grammar --------------------------------------------------------------

REBER_SYMBOLS = "BTSXPVE"


def _reber_automaton():
    """The embedded Reber grammar as a deterministic automaton: ``{state: {symbol: next}}``.
    The Reber grammar (Reber 1967, as in Hochreiter & Schmidhuber 1997 and Fahlman 1991) is
    ``B`` then a walk of the graph below to ``E``; the embedded grammar wraps it as
    ``B T <reber> T E`` or ``B P <reber> P E``. Every state with two ways out takes each with
    probability 1/2."""
    inner = {0: {"B": 1}, 1: {"T": 2, "P": 3}, 2: {"S": 2, "X": 4}, 3: {"T": 3, "V": 5},
             4: {"X": 3, "S": 6}, 5: {"P": 4, "V": 6}, 6: {"E": 7}}
    automaton = {"start": {"B": "branch"}, "branch": {"T": ("T", 0), "P": ("P", 0)},
                 "close": {"E": "end"}, "end": {}}
    for branch in "TP":
        for state, moves in inner.items():
            automaton[(branch, state)] = {s: (branch, n) for s, n in moves.items()}
        automaton[(branch, 7)] = {branch: "close"}
    return automaton


REBER_AUTOMATON = _reber_automaton()


def _reber_length_distribution(max_length):
    """P(an embedded Reber string has n symbols) for n = 0 .. max_length (unconditioned)."""
    probabilities = np.zeros(max_length + 1)
    current = {"start": 1.0}
    for n in range(1, max_length + 1):
        following = {}
        for state, p in current.items():
            moves = REBER_AUTOMATON[state]
            for nxt in moves.values():
                following[nxt] = following.get(nxt, 0.0) + p / len(moves)
        probabilities[n] = following.pop("end", 0.0)
        current = following
    return probabilities


class EmbeddedReber(Task):
    """Next-symbol prediction on the embedded Reber grammar (Cleeremans et al. 1989;
    Hochreiter & Schmidhuber 1997, experiment 1): strings ``B T <reber> T E`` or
    ``B P <reber> P E``, each symbol one-hot over ``BTSXPVE``; at every step but the last the
    target is the next symbol (softmax cross-entropy; padding after a string's ``E`` is not
    scored). The second symbol must be remembered over the whole inner string to predict the
    penultimate one.

    ``length`` is the number of steps of a batch: strings are drawn from the grammar
    conditioned on having at most ``length`` symbols (longer draws are redrawn) and shorter ones
    are padded. A sequence is solved when, at every scored step, every symbol the grammar allows
    next gets a higher output than every symbol it forbids. The baseline is the best predictor
    without the long-term memory: one that knows the grammar but not which branch the string
    took, so at the penultimate step it gives T and P 1/2 each; its expected loss is
    ``log 2 · E[n - 4] / E[n - 1]`` for strings of n symbols (n - 5 two-way choices plus the
    forgotten branch, over n - 1 scored steps)."""

    name = "reber"
    description = "embedded Reber grammar: predict the next symbol"
    default_length = 30
    min_length = 9            # the shortest string: B T B T X S E T E
    input_size = len(REBER_SYMBOLS)
    output_size = len(REBER_SYMBOLS)
    loss = SoftmaxCrossEntropy(ignore_index=-1)

    def __init__(self, length=None):
        super().__init__(length)
        lengths = _reber_length_distribution(self.length)
        n = np.arange(self.length + 1)
        self.baseline_loss = float(math.log(2) * (lengths @ np.maximum(n - 4, 0))
                                   / (lengths @ np.maximum(n - 1, 0)))
        # the loss of the predictor that also remembers the branch: only the choices are random
        self.optimal_loss = float(math.log(2) * (lengths @ np.maximum(n - 5, 0))
                                  / (lengths @ np.maximum(n - 1, 0)))

    def generate(self, rng):
        """One string of the grammar with at most ``length`` symbols."""
        while True:
            state, string = "start", []
            while state != "end" and len(string) < self.length:
                moves = REBER_AUTOMATON[state]
                symbols = list(moves)
                symbol = symbols[0] if len(symbols) == 1 else symbols[rng.integers(len(symbols))]
                string.append(symbol)
                state = moves[symbol]
            if state == "end":
                return "".join(string)

    def sample(self, batch_size, rng):
        """``x`` (T, B, 7) one-hot symbols (zero after a string's end) and the target (T, B):
        the index in ``BTSXPVE`` of the next symbol, -1 where there is none."""
        B = _batch_size(batch_size)
        symbols = np.full((self.length, B), -1)
        for b in range(B):
            string = self.generate(rng)
            symbols[:len(string), b] = [REBER_SYMBOLS.index(s) for s in string]
        target = np.full_like(symbols, -1)
        target[:-1] = symbols[1:]
        return _one_hot(symbols, self.input_size), target

    @staticmethod
    def allowed(target):
        """(T, B, 7) booleans: which symbols the grammar allows next at each step, from the
        targets (the string is B followed by them). All False where the target is -1."""
        target = np.asarray(target)
        allowed = np.zeros(target.shape + (len(REBER_SYMBOLS),), dtype=bool)
        for b in range(target.shape[1]):
            state = REBER_AUTOMATON["start"]["B"]
            for t in range(target.shape[0]):
                if target[t, b] < 0:
                    break
                moves = REBER_AUTOMATON[state]
                for symbol in moves:
                    allowed[t, b, REBER_SYMBOLS.index(symbol)] = True
                symbol = REBER_SYMBOLS[target[t, b]]
                if symbol not in moves:
                    raise ValueError(f"target of sequence {b} is not a string of the embedded "
                                     f"Reber grammar: {symbol!r} cannot follow at step {t}")
                state = moves[symbol]
        return allowed

    def solved(self, outputs, target):
        outputs = np.asarray(outputs)
        allowed = self.allowed(target)
        scored = np.asarray(target) >= 0
        lowest_allowed = np.where(allowed, outputs, np.inf).min(axis=-1)
        highest_forbidden = np.where(allowed, -np.inf, outputs).max(axis=-1)
        right = (lowest_allowed > highest_forbidden) | ~scored
        return right.all(axis=0)


# --- Temporal order --------------------------------------------------------------------------

ORDER_SYMBOLS = ("a", "b", "c", "d", "X", "Y", "B", "E")


class TemporalOrder(Task):
    """Temporal order (Hochreiter & Schmidhuber 1997, experiment 6a): a sequence of ``length``
    symbols, ``B`` first, ``E`` last, distractors ``a b c d`` drawn at random in between,
    except at two steps ``t1`` in [0.1, 0.2]·length and ``t2`` in [0.5, 0.6]·length (10-20 and
    50-60 at length 100, as in the paper), which hold ``X`` or ``Y``. The class to give at the
    last step is their order: 0 = XX, 1 = XY, 2 = YX, 3 = YY (softmax cross-entropy). A
    sequence is solved when the largest output is its class; the baseline is guessing, log 4."""

    name = "temporal_order"
    description = "temporal order: classify the order of two symbols placed far apart"
    default_length = 100
    min_length = 10
    input_size = len(ORDER_SYMBOLS)
    output_size = 4
    baseline_loss = math.log(4)
    loss = SoftmaxCrossEntropy(last_step_only=True)

    def positions(self):
        """The (inclusive) ranges of ``t1`` and ``t2``."""
        L = self.length
        return (round(0.1 * L), round(0.2 * L)), (round(0.5 * L), round(0.6 * L))

    def sample(self, batch_size, rng):
        """``x`` (T, B, 8) one-hot over ``a b c d X Y B E`` and the class of each sequence (B,)."""
        T, B = self.length, _batch_size(batch_size)
        symbols = rng.integers(0, 4, (T, B))
        symbols[0], symbols[-1] = 6, 7
        (lo1, hi1), (lo2, hi2) = self.positions()
        t1 = rng.integers(lo1, hi1 + 1, B)
        t2 = rng.integers(lo2, hi2 + 1, B)
        first, second = rng.integers(0, 2, B), rng.integers(0, 2, B)     # 0 = X, 1 = Y
        columns = np.arange(B)
        symbols[t1, columns] = 4 + first
        symbols[t2, columns] = 4 + second
        return _one_hot(symbols, self.input_size), 2 * first + second

    def solved(self, outputs, target):
        return np.argmax(np.asarray(outputs)[-1], axis=-1) == np.asarray(target).reshape(-1)


# --- The copy task ---------------------------------------------------------------------------

class CopyTask(Task):
    """The copy (memory) task of Arjovsky et al. 2016: 10 symbols drawn from 8, then
    ``length - 1`` blanks, a delimiter, and 10 more blanks (``length + 20`` steps; inputs
    one-hot over blank, the 8 symbols and the delimiter); the target is blank for the first
    ``length + 10`` steps, then the 10 symbols (softmax cross-entropy over blank and the 8
    symbols at every step). A sequence is solved when the largest output is the target at
    every step. The memoryless baseline — blank, then a uniform guess among the 8 symbols —
    scores ``10 log 8 / (length + 20)``."""

    name = "copy"
    description = "copy task: recall 10 symbols after T blanks"
    default_length = 100
    min_length = 1
    symbols = 10
    input_size = 10       # 0 blank, 1-8 the symbols, 9 the delimiter
    output_size = 9       # 0 blank, 1-8 the symbols
    loss = SoftmaxCrossEntropy()

    @property
    def baseline_loss(self):
        return self.symbols * math.log(8) / (self.length + 2 * self.symbols)

    def sample(self, batch_size, rng):
        """``x`` (length + 20, B, 10) and the target (length + 20, B)."""
        T, B, K = self.length, _batch_size(batch_size), self.symbols
        data = rng.integers(1, 9, (K, B))
        inputs = np.zeros((T + 2 * K, B), dtype=np.int64)
        inputs[:K] = data
        inputs[K + T - 1] = 9
        target = np.zeros_like(inputs)
        target[T + K:] = data
        return _one_hot(inputs, self.input_size), target

    def solved(self, outputs, target):
        return (np.argmax(np.asarray(outputs), axis=-1) == np.asarray(target)).all(axis=0)


BUILTIN_TASKS = (AddingProblem, EmbeddedReber, TemporalOrder, CopyTask)


# --- Finding tasks by name -------------------------------------------------------------------

def names():
    """The names of the registered tasks."""
    from gatekit.core import plugins
    return list(plugins.registry().tasks)


def make(name, length=None, **options):
    """The registered task ``name`` with ``length`` (its default if None) and its options."""
    from gatekit.core import plugins
    known = plugins.registry().tasks
    if name not in known:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    cls = known[name].cls
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [option for option in options if option not in accepted and not takes_any]
    if unknown:
        settable = [n for n, p in accepted.items() if n != "length"
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ValueError(f"task {name!r} has no option {unknown[0]!r}; its options: "
                         f"length{''.join(', ' + n for n in settable)}")
    return cls(length=length, **options)
