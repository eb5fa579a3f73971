"""The interface a task plugin implements (registered through the ``register_tasks`` hook).

:mod:`gatekit.tasks` holds the built-in tasks and finds registered ones by name; this base class
sits in the core so the plugin registry can check what a plugin registers.
"""
import numpy as np

__all__ = ["Task"]


class Task:
    """Base class of the tasks: ``name``, ``length`` and the interface :mod:`gatekit.tasks`
    describes. Subclasses set ``name``, ``description``, ``default_length``, and implement
    ``sample`` and ``solved``; a task on a finite data set also ``heldout``."""

    name = None
    description = ""
    default_length = None
    min_length = 1

    def __init__(self, length=None):
        length = self.default_length if length is None else length
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
            raise TypeError(f"length must be an integer; got {length!r}")
        if length < self.min_length:
            raise ValueError(f"length must be at least {self.min_length}; got {length}")
        self.length = int(length)

    def options(self):
        """The constructor arguments that rebuild this task: ``make(**task.options())``."""
        return {"name": self.name, "length": self.length}

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.options().items() if k != "name")
        return f"{type(self).__name__}({arguments})"

    def sample(self, batch_size, rng):
        """``batch_size`` training sequences ``(x, target)``, drawn with ``rng``."""
        raise NotImplementedError

    def heldout(self, batch_size, rng):
        """``batch_size`` sequences to evaluate on, that training never sees. A task that
        generates its sequences draws fresh ones (this default: the chance that ``sample`` ever
        drew the same is nil); a task on a finite data set overrides it to draw from its
        held-out split, which ``sample`` never touches."""
        return self.sample(batch_size, rng)

    def solved(self, outputs, target):
        raise NotImplementedError
