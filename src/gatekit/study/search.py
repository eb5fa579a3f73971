"""Hyperparameter values for ``gatekit compare``: a fixed value, a grid of values, or a
distribution that a random search draws from (Greff et al. 2017: every variant trained with the
same draws, the hyperparameters then judged by how much of the spread of the results each
explains).

One grammar, for the command line and for Python alike:

=========================  ===============================================================
``0.01`` (several: a grid)  the value itself (``--lr 0.01 0.02`` sweeps both, as a grid)
``uniform:LOW,HIGH``        uniform in [LOW, HIGH]
``loguniform:LOW,HIGH``     log-uniform in [LOW, HIGH] (``LOW > 0``): each decade as likely
``uniform-int:LOW,HIGH``    an integer in LOW .. HIGH, each as likely
``loguniform-int:LOW,HIGH`` an integer in LOW .. HIGH, log-uniform: ``floor(exp(u))`` with
                            ``u`` uniform in ``[log LOW, log(HIGH + 1))``
``choice:A,B,...``          one of the values, each as likely
=========================  ===============================================================

A random search of N trials draws trial k's values (k = 0 .. N-1) from a generator seeded with
``(search seed, k, the hyperparameter's place in SEARCHED)``: trial k gets the same values for
every variant and every task, a longer search keeps the trials of a shorter one, and changing
one hyperparameter's distribution leaves the draws of the others as they were. Drawn reals are
rounded to 4 significant digits, so that a spec reads well and a last-bit difference in ``exp``
between machines does not change its key.
"""
import math

import numpy as np

__all__ = ["Choice", "Distribution", "draw_trial", "parse", "SEARCHED", "Uniform"]

#: The hyperparameters a search or a grid can vary, in the order of their draws, with what a
#: value must be: (integer?, lowest value, whether the lowest is excluded, highest value).
SEARCHED = {
    "lr": (False, 0.0, True, math.inf),
    "hidden_size": (True, 1, False, math.inf),
    "batch_size": (True, 1, False, math.inf),
    "momentum": (False, 0.0, False, 1.0),
    "input_noise": (False, 0.0, False, math.inf),
}

_KINDS = ("uniform", "loguniform", "uniform-int", "loguniform-int", "choice")


def _domain(name):
    integer, low, open_low, high = SEARCHED[name]
    kind = "an integer" if integer else "a number"
    bound = f"> {low:g}" if open_low else f">= {low:g}"
    return f"{kind} {bound}" + (f" and <= {high:g}" if math.isfinite(high) else "")


def _in_domain(name, value):
    integer, low, open_low, high = SEARCHED[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        return False
    if integer and value != int(value):
        return False
    return (value > low if open_low else value >= low) and value <= high


def _round(value):
    return float(f"{value:.4g}")


class Distribution:
    """What a random search draws one hyperparameter from; ``text`` is its form in the
    grammar (stored with each run of the search)."""

    def draw(self, rng):
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and self.text == other.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return f"{type(self).__name__}({self.text!r})"


class Uniform(Distribution):
    """Uniform in [low, high], or log-uniform (``log``), over the reals or the integers
    (``integer``)."""

    def __init__(self, low, high, log=False, integer=False):
        self.low, self.high, self.log, self.integer = low, high, log, integer
        kind = ("loguniform" if log else "uniform") + ("-int" if integer else "")
        self.text = f"{kind}:{low:g},{high:g}"

    def draw(self, rng):
        if self.integer:
            if self.log:
                value = math.floor(math.exp(rng.uniform(math.log(self.low),
                                                        math.log(self.high + 1))))
                return int(min(value, self.high))
            return int(rng.integers(self.low, self.high + 1))
        if self.log:
            return _round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return _round(rng.uniform(self.low, self.high))


class Choice(Distribution):
    """One of ``values``, each as likely."""

    def __init__(self, values):
        self.values = list(values)
        self.text = "choice:" + ",".join(f"{v:g}" for v in self.values)

    def draw(self, rng):
        return self.values[int(rng.integers(len(self.values)))]


def _number(label, name, text, given):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{label} must be a number {_GRAMMAR}; got {given!r}") from None
    integer = SEARCHED[name][0]
    if integer and math.isfinite(value) and value == int(value):
        return int(value)
    return value


_GRAMMAR = ("or one of uniform:LOW,HIGH, loguniform:LOW,HIGH, uniform-int:LOW,HIGH, "
            "loguniform-int:LOW,HIGH, choice:A,B,...")


def parse(name, value, label=None):
    """One value of the hyperparameter ``name`` (a key of :data:`SEARCHED`) -> a number or a
    :class:`Distribution`. ``value`` is a number, a :class:`Distribution`, or text in the
    grammar above. A ``ValueError`` names the option (``label``, ``name`` by default), what
    it takes and what was given."""
    if name not in SEARCHED:
        raise ValueError(f"{name!r} is not a hyperparameter a search varies; those are "
                         f"{', '.join(SEARCHED)}")
    option = name if label is None else label
    if isinstance(value, Distribution):
        return value
    if not isinstance(value, str):
        if not _in_domain(name, value):
            raise ValueError(f"{option} must be {_domain(name)}; got {value!r}")
        return int(value) if SEARCHED[name][0] else float(value)
    text = value.strip()
    kind, sep, rest = text.partition(":")
    if not sep:
        number = _number(option, name, text, value)
        if not _in_domain(name, number):
            raise ValueError(f"{option} must be {_domain(name)}; got {value!r}")
        return number
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise ValueError(f"{option} must be a number {_GRAMMAR}; got {value!r} (unknown "
                         f"distribution {kind!r})")
    parts = [part.strip() for part in rest.split(",")]
    numbers = [_number(option, name, part, value) for part in parts]
    integer = SEARCHED[name][0]
    for number in numbers:
        if not _in_domain(name, number):
            raise ValueError(f"{option} must be {_domain(name)}, every value of {value!r}; got "
                             f"{number:g}")
    if kind == "choice":
        if not numbers:
            raise ValueError(f"{option} must be choice:A,B,... with a value; got {value!r}")
        return Choice(numbers)
    if len(numbers) != 2:
        raise ValueError(f"{option} must be {kind}:LOW,HIGH, two values; got {value!r}")
    low, high = numbers
    if not low < high:
        raise ValueError(f"{option} must be {kind}:LOW,HIGH with LOW < HIGH; got {value!r}")
    wants_integer = kind.endswith("-int")
    if integer != wants_integer:
        fitting = kind + "-int" if integer else kind[:-len("-int")]
        raise ValueError(f"{option} must be {'an integer' if integer else 'a real number'}: "
                         f"use {fitting}:LOW,HIGH; got {value!r}")
    log = kind.startswith("log")
    if log and low <= 0:
        raise ValueError(f"{option} must be {kind}:LOW,HIGH with LOW > 0; got {value!r}")
    return Uniform(low, high, log=log, integer=integer)


def draw_trial(space, seed, trial):
    """Trial ``trial``'s values: ``{name: value}`` for each ``name: distribution`` of
    ``space``, drawn as the module docstring says."""
    values = {}
    for place, name in enumerate(SEARCHED):
        if name in space:
            rng = np.random.default_rng([seed, trial, place])
            values[name] = space[name].draw(rng)
    return values
