"""Checks for people who write gates: the backward pass against centred finite differences,
and a conformance check a plugin author runs on a new gate."""
from dataclasses import dataclass

import numpy as np

from gatekit.core import reference
from gatekit.core._gate import PythonGate
from gatekit.core.cell import Cell

__all__ = ["check_against_reference", "check_gate", "FORWARD_TOLERANCES", "gradcheck",
           "GradcheckError", "GradcheckResult"]


class GradcheckError(AssertionError):
    """A gradient disagrees with finite differences (or a gate with its definition)."""


@dataclass
class GradcheckResult:
    """For each gradient, by name: ``differences``, the norm ``|analytic - numeric|`` over the
    checked entries, and ``errors``, that difference relative to ``max(|analytic|,
    |numeric|)``. A gradient passes when its difference is at most ``atol + tolerance *
    max(|analytic|, |numeric|)``."""
    errors: dict
    tolerance: float
    differences: dict = None
    atol: float = 0.0

    def _excess(self, name):
        """How far the gradient is from failing: above 1 it fails."""
        if self.differences is None:
            return self.errors[name] / self.tolerance if self.tolerance else self.errors[name]
        difference, relative = self.differences[name], self.errors[name]
        scale = difference / relative if relative else 0.0
        allowed = self.atol + self.tolerance * scale
        if allowed == 0:
            return 0.0 if difference == 0 else float("inf")
        return difference / allowed

    @property
    def worst(self):
        """``(name, relative error)`` of the gradient nearest to failing (or furthest past)."""
        name = max(self.errors, key=self._excess)
        return name, self.errors[name]

    def __bool__(self):
        return all(self._excess(name) <= 1 for name in self.errors)


def _relative_error(analytic, numeric):
    scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric))
    return 0.0 if scale == 0 else float(np.linalg.norm(analytic - numeric) / scale)


def gradcheck(cell, x, state=None, *, eps=1e-4, tolerance=1e-6, atol=1e-9, max_entries=40,
              seed=0, raise_on_failure=True, masks=None):
    """Compare ``cell.backward`` with centred finite differences, in float64.

    The loss is a fixed random projection of every output and of the final STM and LTM (and
    extra memories, whose initial values ``state`` may carry after the STM and the LTM), so
    every path through the cell is exercised. Each derivative is the Richardson extrapolation
    of centred differences with steps ``eps`` and ``eps / 2``, ``(4 D(eps/2) - D(eps)) / 3``,
    accurate to O(eps⁴) while keeping rounding noise at about 1e-16 |loss| / eps (with a plain
    centred difference and a tiny step, that noise swamps small gradients). Each parameter,
    ``x`` and the initial state is checked on at most ``max_entries`` of its entries, drawn at
    random. A float32 cell is checked through a float64 copy of it. A cell with one memory
    (``cell.one_memory``) is given ``state[0]`` as both halves, and the gradient checked is that
    of the one memory, ``stm0 + ltm0``, under the name ``memory0``. A cell with a projected STM
    (``proj_size``) is checked with its P-wide outputs and STM, and ``W_hr`` among the parameters.

    A gradient passes when ``|analytic - numeric| <= atol + tolerance * max(|analytic|,
    |numeric|)`` (norms over its checked entries). The absolute part is there because the
    differences carry an absolute rounding error of about 1e-16 |loss| / eps per entry: a
    gradient that is correct but tiny (1e-7, a saturated gate) is measured only to ~1e-4
    relative. Every evaluation of the loss applies the same zoneout and recurrent dropout
    ``masks`` (by default, for a cell with regularisers, one draw of ``cell.draw_masks``).
    Returns a :class:`GradcheckResult`; raises :class:`GradcheckError` naming the
    worst gradient when one fails (unless ``raise_on_failure`` is False).
    """
    cell = cell.copy(np.float64)
    x = np.array(x, dtype=np.float64)
    T, B, _ = x.shape
    H = cell.hidden_size
    R = H if cell.proj_size is None else cell.proj_size     # the STM's width
    rng = np.random.default_rng(seed)
    if state is None:
        state = (np.zeros((B, R)), np.zeros((B, H)))
    state = tuple(np.array(a, dtype=np.float64) for a in state)
    if len(state) == 2 and cell.memories:
        state += tuple(np.array(value) for value in cell._initial_memories(None, B))
    if cell.one_memory:
        # One array for both halves: a difference moves the one memory, whose gradient is the
        # sum of the two halves'.
        state = (state[0], state[0], *state[2:])
    dy, dstm, dltm = rng.standard_normal((T, B, R)), rng.standard_normal((B, R)), rng.standard_normal((B, H))
    dmemories = {name: rng.standard_normal((B, H)) for name in cell.memories}
    if masks is None and cell.regularised:
        masks = cell.draw_masks(T, B)

    def loss():
        y, (stm, ltm, *memories) = cell(x, state, masks=masks)
        return (np.sum(y * dy) + np.sum(stm * dstm) + np.sum(ltm * dltm)
                + sum(np.sum(value * dmemories[name])
                      for name, value in zip(cell.memories, memories)))

    def centred(flat, index, step):
        kept = flat[index]
        flat[index] = kept + step
        plus = loss()
        flat[index] = kept - step
        minus = loss()
        flat[index] = kept
        return (plus - minus) / (2 * step)

    _, _, tape = cell.forward(x, state, keep=True, masks=masks)
    analytic = cell.backward(tape, dy, dstm, dltm, dmemories)
    inputs = dict(cell.params)
    if cell.one_memory:
        inputs.update(x=x, memory0=state[0])
        analytic["memory0"] = analytic["stm0"] + analytic["ltm0"]
    else:
        inputs.update(x=x, stm0=state[0], ltm0=state[1])
    inputs.update({f"{name}0": value for name, value in zip(cell.memories, state[2:])})

    errors, differences = {}, {}
    for name, array in inputs.items():
        # .flat writes through even where the parameter is a strided view (a block that reads
        # part of [STM_{t-1}, E_t]), where reshape would perturb a copy
        flat = array.flat
        picked = rng.choice(array.size, size=min(max_entries, array.size), replace=False)
        numeric = np.array([(4 * centred(flat, i, eps / 2) - centred(flat, i, eps)) / 3
                            for i in picked])
        got = analytic[name].reshape(-1)[picked]
        errors[name] = _relative_error(got, numeric)
        differences[name] = float(np.linalg.norm(got - numeric))
    result = GradcheckResult(errors, tolerance, differences, atol)
    if raise_on_failure and not result:
        name, error = result.worst
        raise GradcheckError(f"gradient of {name!r} is off by {differences[name]:.2e} "
                             f"({error:.2e} relative) from centred finite differences; "
                             f"tolerance {atol:.0e} + {tolerance:.0e} relative; all: "
                             + ", ".join(f"{k}: {v:.1e}" for k, v in errors.items()))
    return result


def check_gate(gate, variant="standard", *, input_size=3, hidden_size=4, steps=6, batch=2,
               seed=0, threaded_steps=200):
    """Conformance check for a new gate class: run it in place of its role's gate in
    ``variant`` and check, in float32 and float64,

    - output shapes and dtypes (of the final extra memories too, for a gate that declares
      ``memories``: they start from their initial values plus U(0, 1), so that a gate is not
      checked at its defaults only);
    - the forward pass against the gate's NumPy ``definition`` (through
      ``gatekit.reference.forward``): 1e-10 absolute in float64, 1e-4 relative in float32;
    - if the gate is differentiable: its backward pass against centred finite differences
      (1e-6 relative) and, if it has a ``backward_definition``, against the reference backward
      (1e-9 relative);
    - the same forward (and backward) on a batch large enough for the time loop to split the
      units between two threads (``threaded_steps`` steps or more, of 16 sequences, 64 units,
      an event of 64 entries too when ``input_size == hidden_size``, as MUT1's gate needs):
      two threads must give one thread's results bit for bit (a gate that writes outside its
      units [u0, u1) without setting ``mixes_units`` fails here), and one thread's forward must
      match the definition within the tolerances above (a failure there is not about threads:
      float32 rounding can accumulate over a long sequence in a cell that never forgets);
    - for a gate written in Python: two cells with it, run at once in two Python threads, give
      what each gives alone (a gate that keeps state outside its instance fails here).

    A cell with one memory (``cell.one_memory``) is given one array as both halves of its
    state. The gate need not be registered: it is registered for the duration of the check. Raises
    :class:`GradcheckError` (an AssertionError) on the first failure; returns None.
    """
    from gatekit.core import plugins
    from gatekit.core.cell import _differentiable
    from gatekit.core.hookspecs import hookimpl

    class _Plugin:
        @hookimpl
        def register_gates(self, register):
            register(gate)

    entry = plugins.registry().gates.get(gate.role, {}).get(gate.name)
    # An equation gate is registered as the class compiled from it.
    registered = entry is not None and gate in (entry.cls, getattr(entry.cls, "built_from", None))
    name = None if registered else plugins.register_plugin(_Plugin(), name=f"check:{gate.__qualname__}")
    try:
        rng = np.random.default_rng(seed)
        D, H, T, B = input_size, hidden_size, steps, batch
        x = rng.standard_normal((T, B, D))
        state = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
        probe = Cell(D, H, variant, **{gate.role: gate.name}, dtype=np.float64, seed=seed)
        state += tuple(initial + rng.uniform(0, 1, (B, H))
                       for initial in probe._initial_memories(None, B))
        if probe.one_memory:
            state = (state[0], state[0], *state[2:])
        for dtype, tol in FORWARD_TOLERANCES:
            cell = Cell(D, H, variant, **{gate.role: gate.name}, dtype=dtype, seed=seed)
            y, (stm, ltm, *memories) = cell(x, state)
            shapes = [("y", y, (T, B, H)), ("stm", stm, (B, H)), ("ltm", ltm, (B, H))]
            shapes += [(name, array, (B, H)) for name, array in zip(cell.memories, memories)]
            if len(memories) != len(cell.memories):
                raise GradcheckError(f"the final state holds {len(memories)} extra memories; "
                                     f"expected {len(cell.memories)} ({cell.memories})")
            for what, array, shape in shapes:
                if array.shape != shape or array.dtype != np.dtype(dtype):
                    raise GradcheckError(f"{what}: expected {shape} {np.dtype(dtype)}, got "
                                         f"{array.shape} {array.dtype}")
            _matches_definition(gate, cell, x, state, tol, f"{np.dtype(dtype)}")
        _check_threaded(gate, variant, D, H, threaded_steps, rng, seed)
        if not _differentiable(gate):
            return
        cell = Cell(D, H, variant, **{gate.role: gate.name}, dtype=np.float64, seed=seed)
        gradcheck(cell, x, state)
        if any(type(g).backward_definition is None for g in cell.gates):
            return
        dy = rng.standard_normal((T, B, H))
        _, _, tape = cell.forward(x, state, keep=True)
        got = cell.backward(tape, dy)
        want = reference.backward(cell, x, dy, state)
        for key in want:
            if _relative_error(got[key], want[key]) > 1e-9:
                raise GradcheckError(f"{gate.role} gate {gate.name!r}: gradient of {key!r} "
                                     "differs from the reference backward")
    finally:
        if name is not None:
            plugins.unregister_plugin(name)


# The forward pass against the definition: float64 to rounding; float32 relative, with an
# absolute floor for outputs near zero (a sigmoid times a tanh can be ~1e-6).
FORWARD_TOLERANCES = ((np.float64, dict(rtol=0, atol=1e-10)),
                      (np.float32, dict(rtol=1e-4, atol=1e-5)))


def check_against_reference(variant="standard", *, input_size=5, hidden_size=4, steps=7,
                            batch=3, seed=0, **gates):
    """The cell of ``variant`` (with ``gates``, role: name, swapped in) computed by the compiled
    loop against the same cell in :mod:`gatekit.reference`, in float64, with every parameter
    drawn from U(-0.8, 0.8) (so that gates initialised to zero, peepholes say, are checked
    too): the outputs and final memories to 1e-10, and the gradients of a random projection of
    the outputs, with respect to every parameter and the input, to 1e-9 relative (1e-12
    absolute for a gradient that is all but zero) against the reference backward (against
    centred finite differences where a gate has no ``backward_definition``; not at all where
    the cell is not differentiable). A cell whose gates need ``input_size == hidden_size`` is
    checked so.

    The guard the pytest plugin runs before it times a gate. Raises :class:`GradcheckError`
    naming the first quantity that differs; returns the cell it checked."""
    from gatekit.core import plugins
    from gatekit.core.cell import _differentiable

    H, T, B = hidden_size, steps, batch
    square = any(cls.input_size_is_hidden_size
                 for cls in plugins.registry().compose(variant, gates))
    D = H if square else input_size
    cell = Cell(D, H, variant, dtype=np.float64, seed=seed, **gates)
    rng = np.random.default_rng(seed)
    for array in cell.params.values():
        array[...] = rng.uniform(-0.8, 0.8, array.shape)
    x = 1.5 * rng.standard_normal((T, B, D))
    label = "+".join([variant] + [f"{role}={name}" for role, name in sorted(gates.items())])
    y, final = cell(x)
    y_ref, final_ref = reference.forward(cell, x, dtype=np.float64)
    names = ("STM", "LTM") + cell.memories
    for what, got, want in [("outputs", y, y_ref)] + list(zip(names, final, final_ref)):
        error = float(np.max(np.abs(got - want)))
        if not error <= FORWARD_TOLERANCES[0][1]["atol"]:
            raise GradcheckError(f"{label}: the compiled {what} differ from gatekit.reference "
                                 f"by up to {error:.3g} (float64; tolerance 1e-10)")
    if not all(_differentiable(type(gate)) for gate in cell.gates):
        return cell
    if any(type(gate).backward_definition is None for gate in cell.gates):
        gradcheck(cell, x)
        return cell
    dy = rng.standard_normal((T, B, H))
    _, _, tape = cell.forward(x, keep=True)
    got = cell.backward(tape, dy)
    want = reference.backward(cell, x, dy)
    for key in sorted(cell.params.keys() | {"x"}):
        # Relative, with an absolute floor for a gradient that is zero but for rounding (sLSTM's
        # b_i: its stabiliser cancels it).
        difference = float(np.linalg.norm(got[key] - want[key]))
        if not difference <= 1e-12 + 1e-9 * max(np.linalg.norm(got[key]),
                                                np.linalg.norm(want[key])):
            raise GradcheckError(f"{label}: the compiled gradient of {key!r} differs from "
                                 f"gatekit.reference's by {difference:.3g} (norm; "
                                 f"{_relative_error(got[key], want[key]):.3g} relative; "
                                 "float64, tolerance 1e-12 + 1e-9 relative)")
    return cell


def _matches_definition(gate, cell, x, state, tol, where):
    """The cell's forward against the gate's definition (the reference, in float64), within
    ``tol``; a failure says ``where`` (dtype, steps, threads) it happened."""
    y, final = cell(x, state)
    y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
    names = ("stm", "ltm") + cell.memories
    for what, got, want in [("y", y, y_ref)] + list(zip(names, final, final_ref)):
        try:
            np.testing.assert_allclose(got, want, **tol)
        except AssertionError as error:
            raise GradcheckError(f"{gate.role} gate {gate.name!r}, {where}: forward {what} "
                                 f"differs from its definition\n{error}") from None


def _check_threaded(gate, variant, D, hidden_size, T, rng, seed):
    """The gate on two threads that each compute a share of the units. Each unit's arithmetic
    does not depend on how the units are shared, so two threads must give one thread's results
    bit for bit, forward and backward: a difference is the gate writing outside its units
    [u0, u1). One thread's run is then held to the definition with the tolerance of the short
    check, so that float32 rounding accumulated over the long sequence is named as such, not
    blamed on the threads. A gate written in Python runs on the calling thread only; it is run
    by two cells in two Python threads at once instead (see :func:`_check_python_threads`)."""
    from gatekit.core.cell import _differentiable, _loop
    B, H = 16, 64
    # A gate checked on an event as wide as the memory may need it so (MUT1's tanh(E_t)).
    D = H if D == hidden_size else D
    python_gate = issubclass(gate, PythonGate)
    for dtype, tol in FORWARD_TOLERANCES:
        # A Python gate runs on one thread whatever the cell allows: one cell is enough.
        cells = {threads: Cell(D, H, variant, **{gate.role: gate.name}, dtype=dtype, seed=seed,
                               threads=threads) for threads in ((1,) if python_gate else (1, 2))}
        KH = cells[1]._weights.shape[0]
        if KH == 0:
            return                          # no blocks: no product, the loop never splits
        steps = T
        while _loop.plan(steps, B, D, H, KH, 2, dtype == np.float32)[0] < 2:
            steps *= 2                      # a call must be long enough to start a thread
            if steps > 1 << 16:
                raise ValueError(f"no call of {B} sequences of {H} units uses two threads")
        x = rng.standard_normal((steps, B, D))
        dy = rng.standard_normal((steps, B, H))
        differentiable = _differentiable(gate)
        runs = {}
        for threads, cell in cells.items():
            y, state, tape = cell.forward(x, keep=True)
            runs[threads] = {"y": y, **dict(zip(("stm", "ltm") + cell.memories, state))}
            if differentiable:
                runs[threads].update({f"gradient of {name!r}": value for name, value in
                                      cell.backward(tape, dy).items()})
        for what, want in runs[1].items() if not python_gate else ():
            if not np.array_equal(runs[2][what], want, equal_nan=True):
                raise GradcheckError(
                    f"{gate.role} gate {gate.name!r}, {np.dtype(dtype)}: on two threads, {what} "
                    f"differs from one thread's (does it write outside units [u0, u1)?); "
                    f"largest difference {np.nanmax(np.abs(runs[2][what] - want)):.3g}")
        _matches_definition(gate, cells[1], x, None, tol,
                            f"{np.dtype(dtype)}, over {steps} steps of {B} sequences of {H} "
                            "units (one thread and two agree bit for bit, so this is not about "
                            "threads: rounding accumulated over a long sequence, or the gate "
                            "differs from its definition at this size)")
    if python_gate:
        _check_python_threads(gate, variant, D, rng, seed)


def _check_python_threads(gate, variant, D, rng, seed, steps=40, B=3, H=8):
    """Two cells with the gate, each in its own Python thread, at once: every result must be
    what the same cell gives when it runs alone. A gate that keeps state outside its instance
    (a class attribute, a module-level cache) fails here. Both threads finish their forward
    pass before either starts its backward pass, so state carried from one to the other is
    always caught; the interpreter switches threads as often as it can meanwhile."""
    import sys
    import threading
    from gatekit.core.cell import _differentiable
    differentiable = _differentiable(gate)
    cells = [Cell(D, H, variant, **{gate.role: gate.name}, dtype=np.float64, seed=seed + k)
             for k in range(2)]
    inputs = [(rng.standard_normal((steps, B, D)), rng.standard_normal((steps, B, H)))
              for _ in cells]

    def run(cell, x, dy, between=lambda: None):
        y, state, tape = cell.forward(x, keep=True)
        between()
        return y, (cell.backward(tape, dy) if differentiable else {})

    alone = [run(cell, x, dy) for cell, (x, dy) in zip(cells, inputs)]
    together = [None, None]
    failures = []
    both_forward = threading.Barrier(2, timeout=60)

    def thread(k):
        try:
            together[k] = run(cells[k], *inputs[k], both_forward.wait)
        except BaseException as error:       # re-raised below, on the checking thread
            both_forward.abort()
            failures.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=thread, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    if failures:
        raise failures[0]
    for k, ((y_alone, grads_alone), (y, grads)) in enumerate(zip(alone, together)):
        for what, got, want in [("y", y, y_alone)] + [
                (f"gradient of {name!r}", grads[name], grads_alone[name]) for name in grads_alone]:
            if not np.array_equal(got, want, equal_nan=True):
                raise GradcheckError(
                    f"{gate.role} gate {gate.name!r}: run by two cells in two Python threads "
                    f"at once, {what} of cell {k} differs from what the cell gives alone: the "
                    "gate shares state between its instances (a class attribute, a module-"
                    "level cache?)")
