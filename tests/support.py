"""Helpers shared by gatekit's tests; the fixtures are in conftest.py. Test modules import it as
``from support import ...`` (pytest puts the folder of the top conftest.py on the import path).

Every numerical check compares gatekit with an oracle that is not gatekit's compiled core: the
NumPy reference (``gatekit.reference``, run in float64), equations written in the tests, finite
differences or another library.
"""
import math
import os
import threading
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

import gatekit
from gatekit.core import plugins, reference
from gatekit.core._gate import ROLES

# The repository (the README, the examples).
REPO = Path(__file__).resolve().parent.parent

# The variants and gates gatekit itself ships (third-party plugins may add more to
# gatekit.variants() / gatekit.gates(); those are tested too where we iterate over variants()).
BUILTIN_VARIANTS = ("standard", "course", "literal", "peephole", "nig", "nfg", "nog", "niaf",
                    "noaf", "cifg", "janet", "gru", "mingru", "minlstm", "mgu", "mut1")
BUILTIN_GATES = {
    "forget": ("standard", "peephole", "none", "event", "min"),
    "learn": ("standard", "peephole", "no_ignore", "linear", "linear_peephole", "coupled", "janet",
              "min", "reset", "mgu", "mut1"),
    "remember": ("standard",),
    "use": ("standard", "peephole", "linear", "linear_peephole", "no_output_gate", "memory",
            "literal", "course"),
}
# Forget gates that hand their pre-activation s_t to later gates (JANET's learn gate needs it).
FORGET_WITH_S_T = ("standard", "peephole", "event")

# float64 core against float64 reference: same maths, different summation order (BLAS vs
# NumPy matmul), so only rounding differences of order 1e-16 * T * (H + D) remain.
F64_ATOL = 1e-10
# float32 core against the float64 reference: float32 eps is ~1.2e-7 and each step's rounding
# error is carried into the next through the recurrence, so over T <= 12 steps of H + D <= 18
# terms errors stay ~1e-6. rtol 1e-4 is the contract; atol 1e-5 covers outputs that are close to
# zero (a sigmoid times a tanh can be ~1e-6), where a relative bound means nothing.
F32_RTOL, F32_ATOL = 1e-4, 1e-5

# A task and run settings small enough for a sweep of a few runs to take seconds.
ORDER_TASK = {"name": "temporal_order", "length": 10}
TINY_RUN = dict(steps=40, hidden_size=8, batch_size=16, eval_every=20, eval_size=64, lr=0.02)

# What to install for each optional part the tests use.
INSTALL = {
    "matplotlib": "pip install gatekit[plot]",
    "torch": "pip install gatekit[torch]",
    "dask.distributed": "pip install gatekit[distributed]",
    "gatekit_floored_forget": "pip install plugins/gatekit-floored-forget",
    "gatekit_numpy_gates": "pip install plugins/gatekit-numpy-gates",
}


def needs(module):
    """The optional ``module``, imported; or the test (or the test module, at its top) is
    skipped, when it is absent or present but unable to start."""
    return pytest.importorskip(module, exc_type=ImportError,
                               reason=f"{module} cannot be imported; {INSTALL[module]}")


def input_size_for(variant, D, H, **gates):
    """D, or H for a composition with a gate that needs input_size == hidden_size (MUT1's learn
    gate adds the event to the memory unit by unit)."""
    classes = plugins.registry().compose(variant, {role: gates.get(role) for role in ROLES})
    return H if any(cls.input_size_is_hidden_size for cls in classes) else D


def dtype_id(dtype):
    """A test id for a dtype: ``float32``, ``float64``."""
    return np.dtype(dtype).name


# --- Cells against the reference ------------------------------------------------------------

def random_inputs(cell, T, B, seed=0, state=True, scale=1.0):
    """x (T, B, D) and, if ``state``, a nonzero initial (stm0, ltm0), in the cell's dtype (so the
    reference sees exactly the numbers the core sees)."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((T, B, cell.input_size))).astype(cell.dtype)
    if not state:
        return x, None
    H = cell.hidden_size
    stm0 = rng.uniform(-1, 1, (B, H)).astype(cell.dtype)
    ltm0 = rng.uniform(-2, 2, (B, H)).astype(cell.dtype)
    if cell.one_memory:                 # its STM is its LTM: one memory, given twice
        ltm0 = stm0.copy()
    return x, (stm0, ltm0)


def assert_close(dtype, actual, expected, what):
    """``actual`` of a cell of ``dtype`` within that dtype's tolerance of the float64
    ``expected``."""
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=F64_ATOL, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, rtol=F32_RTOL, atol=F32_ATOL, err_msg=what)


def assert_matches_reference(cell, x, state=None, result=None):
    """The core's (y, (stm, ltm)), run here or given as ``result``, agree with the float64
    reference within the dtype's tolerance; so do the extra memories of a cell that keeps any
    (sLSTM's m and n), which are left out of the pair returned."""
    y, (stm, ltm, *memories) = cell(x, state) if result is None else result
    y_ref, (stm_ref, ltm_ref, *memories_ref) = reference.forward(cell, x, state, dtype=np.float64)
    T, B = np.shape(x)[:2]
    H = cell.hidden_size
    assert y.shape == (T, B, H) and stm.shape == (B, H) and ltm.shape == (B, H)
    assert y.dtype == stm.dtype == ltm.dtype == cell.dtype
    assert len(memories) == len(memories_ref) == len(cell.memories)
    for name, actual, expected in (("y", y, y_ref), ("stm", stm, stm_ref), ("ltm", ltm, ltm_ref),
                                   *zip(cell.memories, memories, memories_ref)):
        assert_close(cell.dtype, actual, expected, name)
    return y, (stm, ltm)


def assert_same_bits(a, b, what):
    """The same dtype, shape and bits (for runs that must not differ even in rounding)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), (
        f"{what}: {np.count_nonzero(a != b)} numbers differ, up to {np.abs(a - b).max()}")


def frozen(array):
    """A read-only copy of ``array``."""
    array = np.array(array)
    array.flags.writeable = False
    return array


def rel_error(a, b):
    """norm(a - b) / max(norm(a), norm(b)), 0 when both are exactly zero: one tolerance serves
    gradients of every scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def sigmoid(z):
    """σ(z) = 1 / (1 + exp(-z)), written here rather than taken from gatekit."""
    return 1 / (1 + np.exp(-z))


def reverse_each(x, lengths):
    """Each sequence of x (T, B, ...) reversed within its own length (padding left in place)."""
    out = np.array(x, copy=True)
    for b, L in enumerate(lengths):
        out[:L, b] = x[:L, b][::-1]
    return out


# --- Finite differences ----------------------------------------------------------------------

def centred_difference(loss, flat, index, step):
    """(loss() at flat[index] + step - loss() at flat[index] - step) / (2 step), with flat[index]
    put back; ``flat`` is a view of what ``loss`` reads. Written here, independent of
    gatekit.testing.gradcheck, which is itself under test."""
    kept = flat[index]
    values = []
    for shift in (step, -step):
        flat[index] = kept + shift
        values.append(loss())
    flat[index] = kept
    return (values[0] - values[1]) / (2 * step)


def numerical_gradient(loss, array, eps=1e-6):
    """d loss() / d array by centred differences, perturbing ``array`` in place."""
    flat = array.reshape(-1)          # a view: the arrays used here are contiguous
    assert np.shares_memory(flat, array)
    grad = np.array([centred_difference(loss, flat, k, eps) for k in range(flat.size)])
    return grad.reshape(array.shape)


def mse_by_hand(outputs, target):
    """Mean squared error, as a plain sum over every entry divided by their count."""
    total, count = 0.0, 0
    for index in np.ndindex(*outputs.shape):
        total += (float(outputs[index]) - float(target[index])) ** 2
        count += 1
    return total / count


def cross_entropy_by_hand(logits, target, ignore_index):
    """-log softmax(logits)[target], averaged over the labelled positions (loops, log-sum-exp
    written out)."""
    total, count = 0.0, 0
    for index in np.ndindex(*target.shape):
        label = int(target[index])
        if label == ignore_index:
            continue
        row = [float(v) for v in logits[index]]
        top = max(row)
        log_normaliser = top + math.log(sum(math.exp(v - top) for v in row))
        total += log_normaliser - row[label]
        count += 1
    return total / max(count, 1)


def snapshot(model):
    """A copy of every parameter of a model, by name."""
    return {name: np.array(array, copy=True) for name, array in model.params.items()}


def assert_params_equal(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


# --- Pictures -------------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def png_size(path):
    """The (width, height) of a PNG file, which must not be blank (needs Pillow, which
    matplotlib depends on)."""
    from PIL import Image
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 0, f"{path} is blank"
    return image.size


def svg_panels_and_size(path):
    """The ids of the panels of an SVG file gatekit drew, and its (width, height) in points."""
    root = ElementTree.parse(path).getroot()
    assert root.tag == SVG + "svg"
    panels = [g.get("id") for g in root.iter(SVG + "g") if (g.get("id") or "").startswith("panel-")]
    size = tuple(float(root.get(side).removesuffix("pt")) for side in ("width", "height"))
    return panels, size


def no_temporary_files(folder):
    return not [name for name in os.listdir(folder) if name.startswith(".tmp-")]


# --- Plugins ---------------------------------------------------------------------------------

def make_plugin(gates=(), variants=()):
    """A plugin object implementing both hooks: registers ``gates`` (classes) and ``variants``
    (``(name, {role: gate})`` pairs)."""
    class Plugin:
        @gatekit.hookimpl
        def register_gates(self, register):
            for gate in gates:
                register(gate)

        @gatekit.hookimpl
        def register_variants(self, register):
            for name, spec in variants:
                register(name, spec)

    return Plugin()


class PythonForget(gatekit.PythonGate):
    """The standard forget gate written in NumPy, with its backward pass: a gate that exists
    only in the process that registers it."""
    role, name, blocks, params = "forget", "python_forget", ("f",), {}
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget)
    backward_definition = staticmethod(reference.forget_backward)

    def forward(self, step):
        step.f_t[...] = sigmoid(step.z("f"))

    def backward(self, step):
        f = step.f_t
        step.dz("f")[...] += step.df_t * f * (1 - f)


class EventForget(gatekit.PythonGate):
    """minGRU's forget factor, from a block that reads the event only."""
    role, name, blocks = "forget", "py_event", ("f",)
    reads = {"f": "event"}
    outputs = ("s_t", "f_t")
    definition = staticmethod(reference.forget_event)
    backward_definition = staticmethod(reference.forget_event_backward)

    def forward(self, step):
        step.f_t[...] = sigmoid(step.z("f"))

    def backward(self, step):
        step.dz("f")[...] += step.df_t * step.f_t * (1 - step.f_t)


class MinForget(gatekit.PythonGate):
    """minLSTM's normalised forget factor, from two blocks that read the event only."""
    role, name, blocks = "forget", "py_min", ("f", "i")
    reads = {"f": "event", "i": "event"}
    definition = staticmethod(reference.forget_min)
    backward_definition = staticmethod(reference.forget_min_backward)

    def forward(self, step):
        f, i = sigmoid(step.z("f")), sigmoid(step.z("i"))
        step.f_t[...] = f / (f + i)

    def backward(self, step):
        f, i = sigmoid(step.z("f")), sigmoid(step.z("i"))
        total = (f + i) ** 2
        step.dz("f")[...] += step.df_t * i / total * f * (1 - f)
        step.dz("i")[...] -= step.df_t * f / total * i * (1 - i)


class MinLearn(gatekit.PythonGate):
    """minGRU's and minLSTM's candidate, N_t = z_n (no activation), i_t = 1 - f_t."""
    role, name, blocks = "learn", "py_min", ("n",)
    reads = {"n": "event"}
    definition = staticmethod(reference.learn_min)
    backward_definition = staticmethod(reference.learn_min_backward)

    def forward(self, step):
        step.N_t[...] = step.z("n")
        step.i_t[...] = 1 - step.f_t

    def backward(self, step):
        step.dz("n")[...] += step.dN_t
        step.df_t[...] -= step.di_t


def registered_for_the_module(name, gates):
    """A module-scoped, autouse fixture that registers ``gates`` under the plugin ``name`` for
    the tests of one module."""
    @pytest.fixture(scope="module", autouse=True, name=f"registered_for_{name}")
    def registered():
        registered_name = gatekit.register_plugin(make_plugin(gates=gates), name=name)
        yield
        gatekit.unregister_plugin(registered_name)

    return registered


# --- Threads and processes -------------------------------------------------------------------

def steps_for_a_team(cell, B, threads, multiple=8):
    """The fewest steps (a multiple of ``multiple``, up to 4096) with which a forward call of B
    sequences of ``cell`` runs the tiled loop on ``threads`` threads."""
    from gatekit.core.cell import _loop
    KH = cell._weights.shape[0]
    for T in range(multiple, 4097, multiple):
        team, _ = _loop.plan(T, B, cell.input_size, cell.hidden_size, KH, threads,
                             cell.dtype == np.float32)
        if team == threads:
            return T
    raise AssertionError(f"no call of {B} sequences of {cell!r} runs on {threads} threads")


class GoingAlone:
    """The compiled loop as the cell sees it, with every pass told to go on with thread 0 alone
    after step ``at`` (what a team does on a busy machine) and, given ``back``, to call the
    others back that many steps later (forward: after step at + back; backward, which runs
    from the last step: after step at - back); monkeypatched in place of
    ``gatekit.core.cell._loop``."""

    def __init__(self, loop, at, back=None):
        self._loop, self._at = loop, at
        self._back = (-1, -1) if back is None else (at + back, at - back)

    def forward(self, *arguments, **options):
        return self._loop.forward(*arguments, alone_at=self._at, back_at=self._back[0],
                                  **options)

    def backward(self, *arguments, **options):
        return self._loop.backward(*arguments, alone_at=self._at, back_at=self._back[1],
                                   **options)

    def __getattr__(self, name):
        return getattr(self._loop, name)


THREAD_TIMEOUT = 60               # only so that a hung call fails instead of hanging the suite


def run_in_threads(jobs):
    """Each job (a callable) in its own Python thread, all released together; their results,
    in order, or the first error one raised."""
    start = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def worker(k, job):
        try:
            start.wait(THREAD_TIMEOUT)
            results[k] = job()
        except BaseException as error:           # reported by the calling thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k, job), daemon=True)
               for k, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


def child_env(*paths, **variables):
    """The environment for a child Python process: it imports the gatekit these tests import
    (and modules from ``paths``), with ``variables`` set (or removed, where None)."""
    source = str(Path(gatekit.__file__).resolve().parent.parent)
    env = dict(os.environ)
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    # After the inherited entries, which the parent's import path starts with too (a folder
    # hiding an optional part then hides it from the child as well).
    env["PYTHONPATH"] = os.pathsep.join([*inherited, source, *map(str, paths)])
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
