"""Initialisers users ask for, applied to a cell's parameters in place."""
import numpy as np

__all__ = ["chrono", "forget_bias"]


def forget_bias(cell, value=1.0):
    """Set the forget gate's bias ``b_f`` to ``value`` (1 is Jozefowicz et al. 2015's advice:
    start by remembering). Raises ValueError for a cell without ``b_f``."""
    _require(cell, "b_f")
    cell.params["b_f"][...] = value


def chrono(cell, T_max, seed=None):
    """Chrono initialisation (Tallec & Ollivier 2018) for dependencies up to ``T_max`` steps:
    ``b_f ~ log(U[1, T_max - 1])`` and, if the cell has an ignore gate, ``b_i = -b_f``."""
    if not T_max > 2:
        raise ValueError(f"T_max must be greater than 2; got {T_max!r}")
    _require(cell, "b_f")
    rng = np.random.default_rng(seed)
    b_f = np.log(rng.uniform(1, T_max - 1, cell.hidden_size))
    cell.params["b_f"][...] = b_f
    if "b_i" in cell.params:
        cell.params["b_i"][...] = -b_f


def _require(cell, name):
    if name not in cell.params:
        raise ValueError(f"this cell has no {name!r} (its forget gate is "
                         f"{cell.gate_names['forget']!r}); its parameters are "
                         f"{', '.join(cell.params)}")
