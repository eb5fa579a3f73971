"""Checks for people who write gates: the backward pass against centred finite differences,
and a conformance check a plugin author runs on a new gate."""
from dataclasses import dataclass

import numpy as np

from gatekit import reference
from gatekit.cell import Cell


class GradcheckError(AssertionError):
    """A gradient disagrees with finite differences (or a gate with its definition)."""


@dataclass
class GradcheckResult:
    """Relative error ``|analytic - numeric| / max(|analytic|, |numeric|)`` (norms over the
    checked entries) of each gradient, by name."""
    errors: dict
    tolerance: float

    @property
    def worst(self):
        return max(self.errors.items(), key=lambda item: item[1])

    def __bool__(self):
        return self.worst[1] <= self.tolerance


def _relative_error(analytic, numeric):
    scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric))
    return 0.0 if scale == 0 else float(np.linalg.norm(analytic - numeric) / scale)


def gradcheck(cell, x, state=None, *, eps=1e-6, tolerance=1e-6, max_entries=40, seed=0,
              raise_on_failure=True):
    """Compare ``cell.backward`` with centred finite differences, in float64.

    The loss is a fixed random projection of every output and of the final STM and LTM, so
    every path through the cell is exercised. Each parameter, ``x`` and the initial state is
    checked on at most ``max_entries`` of its entries, drawn at random. A float32 cell is
    checked through a float64 copy of it. Returns a :class:`GradcheckResult`; raises
    :class:`GradcheckError` naming the worst gradient when one is off by more than
    ``tolerance`` (unless ``raise_on_failure`` is False).
    """
    cell = cell.copy(np.float64)
    x = np.array(x, dtype=np.float64)
    T, B, _ = x.shape
    H = cell.hidden_size
    rng = np.random.default_rng(seed)
    if state is None:
        state = (np.zeros((B, H)), np.zeros((B, H)))
    state = tuple(np.array(a, dtype=np.float64) for a in state)
    dy, dstm, dltm = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss():
        y, (stm, ltm) = cell(x, state)
        return np.sum(y * dy) + np.sum(stm * dstm) + np.sum(ltm * dltm)

    _, _, tape = cell.forward(x, state, keep=True)
    analytic = cell.backward(tape, dy, dstm, dltm)
    inputs = dict(cell.params)
    inputs.update(x=x, stm0=state[0], ltm0=state[1])

    errors = {}
    for name, array in inputs.items():
        flat = array.reshape(-1)                 # a view: perturbing it perturbs the cell
        picked = rng.choice(flat.size, size=min(max_entries, flat.size), replace=False)
        numeric = np.empty(len(picked))
        for n, index in enumerate(picked):
            kept = flat[index]
            flat[index] = kept + eps
            plus = loss()
            flat[index] = kept - eps
            minus = loss()
            flat[index] = kept
            numeric[n] = (plus - minus) / (2 * eps)
        errors[name] = _relative_error(analytic[name].reshape(-1)[picked], numeric)
    result = GradcheckResult(errors, tolerance)
    if raise_on_failure and not result:
        name, error = result.worst
        raise GradcheckError(f"gradient of {name!r} is off by {error:.2e} (relative) from "
                             f"centred finite differences; tolerance {tolerance:.0e}; all: "
                             + ", ".join(f"{k}: {v:.1e}" for k, v in errors.items()))
    return result
