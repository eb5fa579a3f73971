"""The benchmark suite's contenders, and the command that runs the suite and writes its report.

A *case* is one shape (T, B, D, H), one dtype and one mode (``forward``, or ``fwdbwd``: forward
then backward of the loss ``sum(y * dy)`` for a fixed ``dy``, down to every parameter and the
input ``x``). A *contender* is one implementation; :meth:`Contender.build` turns a case into a
:class:`Prepared` zero-argument callable, with the inputs, parameters and (for JAX) the compiled
program built beforehand, outside the timed call. The pytest-benchmark suite in ``benchmarks/``
and ``gatekit presets`` (:mod:`gatekit.study.variants_table`) time these same callables.

Families (each runs in its own process under ``run``, so that one library's idle BLAS or OpenMP
threads spinning after a call do not slow the next library's threads):

- ``gatekit``: every built-in preset; ``standard`` again with ``threads=1``; the NumPy reference
  (forward only, where one call takes less than ``Settings.reference_limit`` seconds); the
  example plugins' Cython forget gate (preset ``floored``) and Python Use gate (``standard`` with
  ``use="softsign"``).
- ``gatekit-avx2``, ``gatekit-baseline``: ``standard`` on the kernels ``GATEKIT_KERNELS=avx2``
  and ``=baseline`` choose (read when gatekit is imported, so one process each).
- ``torch``: ``torch.nn.LSTM`` (the fused kernel; forward under ``torch.no_grad()``, forward and
  backward with autograd), and ``course``, ``peephole`` and ``cifg`` written the way a PyTorch user
  writes a custom cell: a Python loop over time steps of torch ops, one ``Linear`` on
  ``cat([h, x])`` for all gate blocks.
- ``jax``: the same three variants as ``jax.jit`` of a ``jax.lax.scan`` loop; the compile time is
  measured apart (``Prepared.info["compile_s"]``) and never timed with the call.

Parameters are copied from a gatekit cell of the same preset (:func:`torch_loop_model`,
:func:`torch_lstm_model`, :func:`jax_loop`), so every contender of a group computes on the same
numbers; ``benchmarks/test_correctness.py`` checks that they compute the same outputs and
gradients as gatekit.

``make bench`` (``SHAPES=S1,fixed`` for a quick run, ``REPORT=path.md``, ``LOAD=idle,busy``) runs
``gatekit bench run --shapes S1,fixed --load idle --out report.md`` (also ``python -m
gatekit.bench run`` outside the source tree): the correctness guards, then each family in its own
``pytest benchmarks`` process with ``--benchmark-json``, once per load: ``idle``, and ``busy``,
with one CPU-bound process (:func:`cpu_load`) running beside the family's process from before it
starts until it ends. It merges the JSON files and writes a markdown report: the machine (CPU,
cores, how much CPU time other processes took meanwhile), library versions, the BLAS and OpenMP
thread pools of each process (threadpoolctl), the issue's target ratios (:func:`target_rows`),
a summary of gatekit ``standard`` against ``torch.nn.LSTM``, one table per group (a case under one
load) with the median, the ratios to gatekit ``standard`` and to ``torch.nn.LSTM`` of the same
group, and what was skipped and why.
``gatekit bench report DIR --out report.md`` renders the report again from a run's JSON files.
"""
import argparse
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import site
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gatekit.core import plugins

from gatekit.core import reference
from gatekit.core.cell import Cell
from gatekit.io.files import atomic_write

# --- Cases ------------------------------------------------------------------------------------

#: name: (T, B, D, H)
SHAPES = {
    "S1": (1000, 1, 32, 64),
    "S2": (1000, 1, 128, 256),
    "S3": (200, 32, 128, 256),
    "S4": (100, 64, 512, 512),
    "S5": (50, 128, 1024, 1024),
    "fixed": (1, 1, 64, 64),          # the fixed cost of one call
}
DTYPES = {name: ("float32", "float64") if name in ("S1", "S2") else ("float32",)
          for name in SHAPES}
MODES = {name: ("forward",) if name == "fixed" else ("forward", "fwdbwd") for name in SHAPES}
DEFAULT_SHAPES = tuple(SHAPES)
MODE_LABELS = {"forward": "forward", "fwdbwd": "forward+backward"}
FAMILIES = ("gatekit", "gatekit-avx2", "gatekit-baseline", "torch", "jax")
#: The kernel build (``GATEKIT_KERNELS``) of the families that time one build each: the build is
#: chosen when gatekit is imported, so each needs its own process.
KERNEL_FAMILIES = {"gatekit-avx2": "avx2", "gatekit-baseline": "baseline"}
#: ``idle``: nothing of ours runs beside the timed process; ``busy``: one CPU-bound process does.
LOADS = ("idle", "busy")
SEED = 0


@dataclass(frozen=True)
class Case:
    """One shape, dtype and mode: a benchmark group."""
    shape: str
    T: int
    B: int
    D: int
    H: int
    dtype: str = "float32"
    mode: str = "forward"

    @classmethod
    def named(cls, shape, dtype="float32", mode="forward"):
        return cls(shape, *SHAPES[shape], np.dtype(dtype).name, mode)

    @classmethod
    def custom(cls, dims, dtype="float32", mode="forward"):
        T, B, D, H = dims
        return cls("custom", T, B, D, H, np.dtype(dtype).name, mode)

    @property
    def id(self):
        return f"{self.shape}-{self.dtype}-{self.mode}"

    @property
    def group(self):
        return f"{self.shape} {self.dtype} {self.mode}"

    @property
    def title(self):
        return (f"{self.shape} {self.dtype} {MODE_LABELS[self.mode]}: T={self.T}, B={self.B}, "
                f"D={self.D}, H={self.H}")

    @property
    def fields(self):
        return asdict(self)


def group_name(case, load="idle"):
    """The benchmark group of ``case`` timed under ``load``: its own group, with the load after
    it when busy (ratios are taken within a group, so always between runs under one load)."""
    return case.group if load == "idle" else f"{case.group}, {load}"


def process_name(family, load="idle"):
    """How the report names the process that timed ``family`` under ``load``."""
    return family if load == "idle" else f"{family}, {load}"


def parse_list(text, known, what):
    items = [item.strip() for item in text.split(",") if item.strip()] if text else list(known)
    unknown = [item for item in items if item not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return items


def cases(shapes=DEFAULT_SHAPES, dtypes=("float32", "float64"), modes=("forward", "fwdbwd")):
    """Every case of ``shapes``, in the suite's order, restricted to ``dtypes`` and ``modes``."""
    return [Case.named(shape, dtype, mode)
            for shape in shapes for dtype in DTYPES[shape] if dtype in dtypes
            for mode in MODES[shape] if mode in modes]


def inputs(case, seed=SEED):
    """The input ``x`` (T, B, D) and the fixed output gradient ``dy`` (T, B, H) of a case, as
    NumPy arrays of its dtype; the same numbers for every contender."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.T, case.B, case.D)).astype(case.dtype)
    dy = rng.standard_normal((case.T, case.B, case.H)).astype(case.dtype)
    return x, dy


# --- Timing -----------------------------------------------------------------------------------

@dataclass
class Settings:
    """How long to time each benchmark. ``max_time``: seconds of timed rounds to aim for;
    ``min_rounds``: at least this many rounds...; ``budget``: ...but never plan more than this
    many seconds of timed calls (long calls at the big shapes get fewer rounds, at least one);
    ``round_time``: calls shorter than this are repeated within a round (iterations);
    ``reference_limit``: the NumPy reference is timed only where a call takes less than this."""
    max_time: float = 0.5
    min_rounds: int = 3
    budget: float = 6.0
    round_time: float = 0.005
    reference_limit: float = 2.0


def estimate_seconds(function, min_time=0.05):
    """Warm ``function`` up with one call and return an estimate of the seconds per call (the
    mean over at least ``min_time`` seconds for calls shorter than that; the warm-up call's own
    time otherwise)."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    if first >= min_time:
        return first
    calls, start = 0, time.perf_counter()
    while True:
        function()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def plan_rounds(seconds_per_call, settings=Settings()):
    """(rounds, iterations) for pytest-benchmark's pedantic mode: iterations so that one round
    lasts at least ``round_time``; rounds to fill ``max_time``, at least ``min_rounds``, capped
    so the timed calls stay within ``budget`` (but at least one round)."""
    per_call = max(seconds_per_call, 1e-9)
    iterations = max(1, math.ceil(settings.round_time / per_call))
    per_round = per_call * iterations
    rounds = max(settings.min_rounds, math.ceil(settings.max_time / per_round))
    rounds = min(rounds, max(1, int(settings.budget // per_round)))
    return rounds, iterations


def median_seconds(function, repeats=7, min_time=0.02):
    """Median wall time of one call of ``function``, each sample long enough to be measurable."""
    function()                                   # warm up: first-touch of buffers, BLAS threads
    calls, start = 1, time.perf_counter()
    function()
    while time.perf_counter() - start < min_time:
        calls *= 2
        start = time.perf_counter()
        for _ in range(calls):
            function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - start) / calls)
    return float(np.median(samples))


# --- Contenders -------------------------------------------------------------------------------

class Unavailable(Exception):
    """A contender cannot run for this case (library not installed, too slow...): the reason."""


@dataclass
class Prepared:
    """A zero-argument callable that runs one case, and what is known about how it was built."""
    fn: object
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Contender:
    id: str                     # for test ids and -k: letters, digits, '-' and '_'
    label: str                  # for the report
    family: str
    builder: object             # builder(case, settings) -> Prepared, or raises Unavailable
    applies: object = None      # applies(case) -> bool; None: every case but "fixed"

    def applies_to(self, case):
        return case.shape != "fixed" if self.applies is None else self.applies(case)

    def build(self, case, settings=Settings()):
        return self.builder(case, settings)


def builtin_presets():
    """The built-in presets, in their registration order."""
    from gatekit.core.builtin_variants import VARIANTS
    return list(VARIANTS)


def gatekit_cell(case, variant="standard", seed=SEED, **options):
    return Cell(case.D, case.H, variant, dtype=case.dtype, seed=seed, **options)


def gatekit_callable(cell, x, dy, mode):
    """The zero-argument call that times ``cell`` on ``x``: ``cell(x)``, or forward with a tape
    then backward of ``dy``."""
    if mode == "forward":
        return lambda: cell(x)

    def forward_backward():
        _, _, tape = cell.forward(x, keep=True)
        return cell.backward(tape, dy)
    return forward_backward


def prepare_gatekit(case, variant="standard", seed=SEED, **options):
    """``options``: more arguments of :class:`Cell` (gates by role, ``threads``)."""
    cell = gatekit_cell(case, variant, seed, **options)
    x, dy = inputs(case, seed)
    return Prepared(gatekit_callable(cell, x, dy, case.mode), {"gates": cell.gate_names})


def _gatekit_builder(variant):
    return lambda case, settings: prepare_gatekit(case, variant)


def _one_thread_builder(case, settings):
    return prepare_gatekit(case, "standard", threads=1)


def _kernel_builder(build):
    """``standard`` in a process that must run the ``build`` kernels (avx2 or baseline)."""
    def prepare(case, settings):
        from gatekit.core import instruction_sets as kernels
        asked = os.environ.get(kernels.ENV, "")
        if asked != build:
            raise Unavailable(f"the {build} kernels are timed in a process started with "
                              f"{kernels.ENV}={build} (gatekit bench run starts it so); this one "
                              f"has {kernels.ENV}={asked!r}")
        suffix = "" if build == "baseline" else f"_{build}"
        loaded = [kernels.load(name).__name__ for name in ("_builtin", "_loop")]
        if loaded != [f"gatekit.core.{name}{suffix}" for name in ("_builtin", "_loop")]:
            raise Unavailable(f"no {build} build runs here: {kernels.ENV}={build} loaded "
                              f"{', '.join(loaded)} (the CPU lacks it, or it was not built)")
        prepared = prepare_gatekit(case, "standard")
        prepared.info["kernels"] = loaded
        return prepared
    return prepare


def _plugin_builder(variant=None, need_gate=None, **gates):
    def build(case, settings):
        registry = plugins.gates()
        if variant is not None and variant not in plugins.variants():
            raise Unavailable(f"preset {variant!r} is not registered: install the example plugin "
                              "(make install installs plugins/*)")
        for role, name in gates.items():
            if name not in registry[role]:
                raise Unavailable(f"{role} gate {name!r} is not registered: install the example "
                                  "plugin gatekit-numpy-gates (make install installs plugins/*)")
        return prepare_gatekit(case, variant or "standard", **gates)
    return build


def _reference_builder(case, settings):
    if case.mode != "forward":
        raise Unavailable("the reference is timed forward only")
    cell = gatekit_cell(case)
    x, _ = inputs(case)
    reference.forward(cell, x[:1])
    # Time the first steps, more of them until the probe lasts long enough to extrapolate.
    probe = min(case.T, 4)
    while True:
        elapsed = math.inf
        for _ in range(2):                       # the faster of two: a noisy machine is slower
            start = time.perf_counter()
            reference.forward(cell, x[:probe])
            elapsed = min(elapsed, time.perf_counter() - start)
        estimate = elapsed * case.T / probe
        if elapsed >= 0.05 or probe == case.T or estimate > 4 * settings.reference_limit:
            break
        probe = min(case.T, probe * 4)
    if estimate > settings.reference_limit:
        raise Unavailable(f"one reference call would take ~{estimate:.1f} s here (estimated from "
                          f"{probe} steps), over the {settings.reference_limit:g} s limit")
    return Prepared(lambda: reference.forward(cell, x), {"estimated_s": estimate})


# --- PyTorch ----------------------------------------------------------------------------------

#: The gate blocks of the custom variants, in gatekit's order (the rows of one Linear), and their
#: other parameters.
LOOP_VARIANTS = {
    "course": (("f", "n", "i", "v"), ("W_u", "b_u")),
    "peephole": (("f", "n", "i", "v"), ("p_f", "p_i", "p_v")),
    "cifg": (("f", "n", "v"), ("p_f", "p_v")),
}


def _torch():
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed (pip install torch)") from None
    return torch


_TORCH_CELLS = {}


def torch_cells():
    """The custom cells, written as a PyTorch user writes them: an ``nn.Module`` with one
    ``Linear`` on ``cat([h, x_t])`` for every gate block, stepped in a Python loop."""
    if _TORCH_CELLS:
        return _TORCH_CELLS
    torch = _torch()
    nn = torch.nn

    class LoopLSTM(nn.Module):
        blocks = 4

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__()
            self.hidden_size = hidden_size
            self.gates = nn.Linear(hidden_size + input_size, self.blocks * hidden_size,
                                   dtype=dtype)

        def forward(self, x, state=None):
            T, B, _ = x.shape
            if state is None:
                h = x.new_zeros(B, self.hidden_size)
                c = x.new_zeros(B, self.hidden_size)
            else:
                h, c = state
            ys = []
            for t in range(T):
                h, c = self.step(x[t], h, c)
                ys.append(h)
            return torch.stack(ys), (h, c)

    class CourseLSTM(LoopLSTM):
        """f, i, v = σ(..), N = tanh(..), U = tanh(W_u (c ⊙ f) + b_u), h = U ⊙ v."""

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__(input_size, hidden_size, dtype)
            self.use = nn.Linear(hidden_size, hidden_size, dtype=dtype)

        def step(self, x_t, h, c):
            z_f, z_n, z_i, z_v = self.gates(torch.cat([h, x_t], dim=1)).chunk(4, dim=1)
            f = torch.sigmoid(z_f)
            kept = c * f
            c = kept + torch.tanh(z_n) * torch.sigmoid(z_i)
            h = torch.tanh(self.use(kept)) * torch.sigmoid(z_v)
            return h, c

    class PeepholeLSTM(LoopLSTM):
        """Standard with peepholes p_f ⊙ c_{t-1} in f, p_i ⊙ c_{t-1} in i, p_v ⊙ c_t in v."""

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__(input_size, hidden_size, dtype)
            self.p_f = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))
            self.p_i = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))
            self.p_v = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))

        def step(self, x_t, h, c):
            z_f, z_n, z_i, z_v = self.gates(torch.cat([h, x_t], dim=1)).chunk(4, dim=1)
            f = torch.sigmoid(z_f + self.p_f * c)
            i = torch.sigmoid(z_i + self.p_i * c)
            c = c * f + torch.tanh(z_n) * i
            h = torch.tanh(c) * torch.sigmoid(z_v + self.p_v * c)
            return h, c

    class CIFGLSTM(LoopLSTM):
        """Peephole with the input gate coupled to the forget gate: i = 1 - f."""
        blocks = 3

        def __init__(self, input_size, hidden_size, dtype=torch.float32):
            super().__init__(input_size, hidden_size, dtype)
            self.p_f = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))
            self.p_v = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))

        def step(self, x_t, h, c):
            z_f, z_n, z_v = self.gates(torch.cat([h, x_t], dim=1)).chunk(3, dim=1)
            f = torch.sigmoid(z_f + self.p_f * c)
            c = c * f + torch.tanh(z_n) * (1 - f)
            h = torch.tanh(c) * torch.sigmoid(z_v + self.p_v * c)
            return h, c

    _TORCH_CELLS.update(course=CourseLSTM, peephole=PeepholeLSTM, cifg=CIFGLSTM)
    return _TORCH_CELLS


def _torch_dtype(torch, dtype):
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]


def torch_loop_model(cell):
    """The custom PyTorch cell of ``cell.variant`` (course, peephole or cifg) with ``cell``'s
    parameters copied in: ``gates.weight`` = the rows W_f, W_n, (W_i,) W_v stacked (STM columns
    first, like gatekit), ``gates.bias`` likewise, then ``use`` (W_u, b_u) or the peepholes."""
    torch = _torch()
    blocks, extras = LOOP_VARIANTS[cell.variant]
    model = torch_cells()[cell.variant](cell.input_size, cell.hidden_size,
                                        dtype=_torch_dtype(torch, cell.dtype))
    p = cell.params
    with torch.no_grad():
        model.gates.weight.copy_(torch.from_numpy(np.concatenate([p[f"W_{k}"] for k in blocks])))
        model.gates.bias.copy_(torch.from_numpy(np.concatenate([p[f"b_{k}"] for k in blocks])))
        if cell.variant == "course":
            model.use.weight.copy_(torch.from_numpy(np.array(p["W_u"])))
            model.use.bias.copy_(torch.from_numpy(np.array(p["b_u"])))
        else:
            for name in extras:
                getattr(model, name).copy_(torch.from_numpy(np.array(p[name])))
    return model


def torch_lstm_model(cell):
    """``torch.nn.LSTM`` with the parameters of a gatekit ``standard`` cell: PyTorch's blocks
    i, f, g, o are gatekit's i, f, n, v; ``weight_hh_l0`` takes the STM columns, ``weight_ih_l0``
    the input columns, ``bias_ih_l0`` the biases and ``bias_hh_l0`` zeros."""
    torch = _torch()
    if cell.gate_names != {"forget": "standard", "learn": "standard", "remember": "standard",
                           "use": "standard"}:
        raise ValueError(f"torch.nn.LSTM runs the standard cell; got {cell!r}")
    H, p = cell.hidden_size, cell.params
    W = np.concatenate([p["W_i"], p["W_f"], p["W_n"], p["W_v"]])
    b = np.concatenate([p["b_i"], p["b_f"], p["b_n"], p["b_v"]])
    model = torch.nn.LSTM(cell.input_size, H, dtype=_torch_dtype(torch, cell.dtype))
    with torch.no_grad():
        model.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(W[:, :H])))
        model.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(W[:, H:])))
        model.bias_ih_l0.copy_(torch.from_numpy(b))
        model.bias_hh_l0.zero_()
    return model


def torch_callable(model, x, dy, mode):
    """Forward under ``torch.no_grad()``; or forward, the loss ``sum(y * dy)`` and
    ``torch.autograd.grad`` of it with respect to ``x`` and every parameter."""
    torch = _torch()
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return model(x)
        return forward
    x = x.detach().requires_grad_(True)
    wrt = [x, *model.parameters()]

    def forward_backward():
        y, _ = model(x)
        return torch.autograd.grad((y * dy).sum(), wrt)
    return forward_backward


def _torch_prepare(case, model_of):
    torch = _torch()
    cell_variant, model = model_of(case)
    x, dy = inputs(case)
    fn = torch_callable(model, torch.from_numpy(x), torch.from_numpy(dy), case.mode)
    return Prepared(fn, {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                         "params_from": cell_variant})


def _torch_lstm_builder(case, settings):
    return _torch_prepare(case, lambda case: ("standard", torch_lstm_model(gatekit_cell(case))))


def _torch_loop_builder(variant):
    return lambda case, settings: _torch_prepare(
        case, lambda case: (variant, torch_loop_model(gatekit_cell(case, variant))))


# --- JAX --------------------------------------------------------------------------------------

def _jax():
    try:
        import jax
    except ImportError:
        raise Unavailable("JAX is not installed (pip install jax jaxlib)") from None
    jax.config.update("jax_enable_x64", True)        # for the float64 groups
    return jax


def jax_step(variant):
    """One time step of a custom variant for ``jax.lax.scan``: ``((h, c), x_t) -> ((h, c), h)``,
    reading ``params`` with W (kH, H + D), b (kH,) stacked like :func:`torch_loop_model`."""
    jax = _jax()
    jnp, sigmoid = jax.numpy, jax.nn.sigmoid

    def step(params, carry, x_t):
        h, c = carry
        z = jnp.concatenate([h, x_t], axis=1) @ params["W"].T + params["b"]
        if variant == "course":
            z_f, z_n, z_i, z_v = jnp.split(z, 4, axis=1)
            kept = c * sigmoid(z_f)
            c = kept + jnp.tanh(z_n) * sigmoid(z_i)
            h = jnp.tanh(kept @ params["W_u"].T + params["b_u"]) * sigmoid(z_v)
        elif variant == "peephole":
            z_f, z_n, z_i, z_v = jnp.split(z, 4, axis=1)
            f = sigmoid(z_f + params["p_f"] * c)
            i = sigmoid(z_i + params["p_i"] * c)
            c = c * f + jnp.tanh(z_n) * i
            h = jnp.tanh(c) * sigmoid(z_v + params["p_v"] * c)
        elif variant == "cifg":
            z_f, z_n, z_v = jnp.split(z, 3, axis=1)
            f = sigmoid(z_f + params["p_f"] * c)
            c = c * f + jnp.tanh(z_n) * (1 - f)
            h = jnp.tanh(c) * sigmoid(z_v + params["p_v"] * c)
        else:
            raise ValueError(f"no JAX version of variant {variant!r}")
        return (h, c), h
    return step


def jax_loop(cell):
    """``(run, params)``: ``run(params, x) -> (y, (h, c))`` the variant of ``cell`` as a
    ``jax.lax.scan`` over time (not jitted), and ``cell``'s parameters as JAX arrays."""
    jax = _jax()
    jnp = jax.numpy
    blocks, extras = LOOP_VARIANTS[cell.variant]
    p = cell.params
    params = {"W": jnp.asarray(np.concatenate([p[f"W_{k}"] for k in blocks])),
              "b": jnp.asarray(np.concatenate([p[f"b_{k}"] for k in blocks]))}
    params.update({name: jnp.asarray(np.array(p[name])) for name in extras})
    step = jax_step(cell.variant)
    H = cell.hidden_size

    def run(params, x):
        zero = jnp.zeros((x.shape[1], H), x.dtype)
        (h, c), y = jax.lax.scan(lambda carry, x_t: step(params, carry, x_t), (zero, zero), x)
        return y, (h, c)
    return run, params


def jax_callable(run, params, x, dy, mode):
    """(call, compile_seconds): ``jax.jit`` of ``run`` (forward) or of the gradient of
    ``sum(y * dy)`` with respect to the parameters and ``x``, lowered and compiled for these
    arguments before it is returned; the call blocks until the result is ready."""
    jax = _jax()
    if mode == "forward":
        function, args = (lambda params, x: run(params, x)[0]), (params, x)
    else:
        def loss(params, x, dy):
            return (run(params, x)[0] * dy).sum()
        function, args = jax.grad(loss, argnums=(0, 1)), (params, x, dy)
    start = time.perf_counter()
    compiled = jax.jit(function).lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(*args))), compile_seconds


def _jax_loop_builder(variant):
    def build(case, settings):
        jax = _jax()
        run, params = jax_loop(gatekit_cell(case, variant))
        x, dy = (jax.numpy.asarray(a) for a in inputs(case))
        fn, compile_seconds = jax_callable(run, params, x, dy, case.mode)
        return Prepared(fn, {"compile_s": compile_seconds, "jax": jax.__version__,
                             "jax_devices": [str(d) for d in jax.devices()]})
    return build


# --- The list ---------------------------------------------------------------------------------

def contenders(families=FAMILIES):
    """Every contender of ``families``, in the report's order."""
    found = []
    if "gatekit" in families:
        for name in builtin_presets():
            found.append(Contender(
                f"gatekit-{name}", f"gatekit {name}", "gatekit", _gatekit_builder(name),
                (lambda case: True) if name == "standard" else None))
            if name == "standard":
                found.append(Contender(ONE_THREAD, "gatekit standard, threads=1", "gatekit",
                                       _one_thread_builder))
        found.append(Contender("reference-standard", "gatekit.reference standard (NumPy)",
                               "gatekit", _reference_builder,
                               lambda case: case.mode == "forward" and case.shape != "fixed"))
        found.append(Contender("plugin-floored", "plugin floored (Cython forget gate)",
                               "gatekit", _plugin_builder("floored")))
        found.append(Contender("plugin-softsign-use", "plugin standard+use=softsign (Python gate)",
                               "gatekit", _plugin_builder(use="softsign")))
    for family, build in KERNEL_FAMILIES.items():
        if family in families:
            found.append(Contender(kernel_contender(build), f"gatekit standard, {build} kernels",
                                   family, _kernel_builder(build)))
    if "torch" in families:
        found.append(Contender("torch-nn-LSTM", "torch.nn.LSTM", "torch", _torch_lstm_builder,
                               lambda case: True))
        for variant in LOOP_VARIANTS:
            found.append(Contender(f"torch-loop-{variant}", f"torch loop {variant}", "torch",
                                   _torch_loop_builder(variant)))
    if "jax" in families:
        for variant in LOOP_VARIANTS:
            found.append(Contender(f"jax-scan-{variant}", f"jax scan {variant}", "jax",
                                   _jax_loop_builder(variant)))
    return found


def kernel_contender(build):
    """The id of ``standard`` timed with the ``build`` kernels."""
    return f"gatekit-standard-{build}"


BASELINE = "gatekit-standard"
ONE_THREAD = "gatekit-standard-1thread"
#: Above this share of the machine's CPU time taken by other processes, a run is marked noisy.
NOISY_SHARE = 0.05
LOAD_TITLES = {"busy": "one CPU-bound process beside"}
TORCH_BASELINE = "torch-nn-LSTM"


# --- The machine ------------------------------------------------------------------------------

VERSIONED = ("numpy", "scipy", "gatekit", "gatekit-floored-forget", "gatekit-numpy-gates",
             "torch", "jax", "jaxlib", "pytest-benchmark", "threadpoolctl", "Cython")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions():
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment(family=None, load="idle"):
    """What a benchmark process ran on: CPU, cores, load, library versions, and the thread pools
    (threadpoolctl) of the libraries it has loaded; for ``torch`` and ``jax``, their threads.
    ``load``: whether the harness ran a CPU-bound process beside it (``busy``)."""
    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(), "versions": versions(), "family": family,
            "load": load,
            "gatekit_path": str(Path(sys.modules["gatekit"].__file__).parent),
            "env": {k: v for k, v in os.environ.items()
                    if k.endswith("_NUM_THREADS") or k in ("XLA_FLAGS", "GATEKIT_BLOCK_PLUGINS",
                                                           "GATEKIT_KERNELS")}}
    from gatekit.core import instruction_sets as kernels
    info["gatekit_kernels"] = [kernels.load(name).__name__ for name in ("_builtin", "_loop")]
    try:
        import threadpoolctl
        info["threadpools"] = threadpoolctl.threadpool_info()
    except ImportError:
        info["threadpools"] = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        try:
            info["torch_config"] = torch.__config__.parallel_info()
        except Exception:                          # noqa: BLE001 - informative only
            pass
    if "jax" in sys.modules:
        try:
            info["jax_devices"] = [str(d) for d in sys.modules["jax"].devices()]
        except Exception:                          # noqa: BLE001
            pass
    return info


# --- The report -------------------------------------------------------------------------------

def format_seconds(seconds):
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _ratio(value, base):
    if value is None or not base:
        return "—"
    ratio = value / base
    return f"{ratio:.0f}" if ratio >= 100 else f"{ratio:.1f}" if ratio >= 10 else (
        f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.1g}")


def load_run(directory):
    """The benchmarks, skips, environments and metadata of a run's JSON files in ``directory``.
    Raises FileNotFoundError if there is no such folder, ValueError if it is a file or holds a
    JSON file that is not one of a run's."""
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise ValueError(f"benchmark results: expected the folder of a run's JSON files, got "
                             f"the file {directory}")
        raise FileNotFoundError(f"benchmark results: no such folder {directory}")
    benchmarks, skips, environments = [], [], {}
    meta = {}
    if (directory / "meta.json").exists():
        meta = _read_json(directory / "meta.json", dict)
    for path in sorted(directory.glob("*.json")):
        if path.name == "meta.json" or path.name.endswith("-skips.json"):
            continue
        data = _read_json(path, dict)
        env = data.get("machine_info", {}).get("gatekit_bench")
        if env:
            name = process_name(env.get("family") or path.stem, env.get("load", "idle"))
            environments[name] = env
        benchmarks.extend(data.get("benchmarks", []))
    for path in sorted(directory.glob("*-skips.json")):
        skips.extend(_read_json(path, list))
    known = [process_name(family, load) for family in FAMILIES for load in LOADS]
    environments = dict(sorted(environments.items(), key=lambda item: (
        known.index(item[0]) if item[0] in known else len(known), item[0])))
    return benchmarks, skips, environments, meta


def _read_json(path, kind):
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"benchmark results: {path} is not JSON ({error})") from None
    if not isinstance(data, kind):
        raise ValueError(f"benchmark results: {path} should hold a JSON "
                         f"{'object' if kind is dict else 'array'}; got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Target:
    """A ratio the robustness issue asks for: median of ``numerator`` / median of ``denominator``
    (contender ids) in the group of ``case`` under ``load`` (None: under each load that ran), at
    most ``limit``."""
    what: str
    numerator: str
    denominator: str
    case: Case
    load: object
    limit: float


def issue_targets():
    """The robustness issue's targets, float32."""
    both_modes = ("forward", "fwdbwd")
    found = [Target("default threads / `threads=1`, one CPU-bound process beside", BASELINE,
                    ONE_THREAD, Case.named(shape, mode=mode), "busy", 1.2)
             for shape in ("S1", "S3") for mode in both_modes]
    found += [Target("default threads / `threads=1`, idle", BASELINE, ONE_THREAD,
                     Case.named("S3", mode=mode), "idle", 0.7) for mode in both_modes]
    found += [Target("gatekit `standard` / `torch.nn.LSTM`, same load", BASELINE,
                     TORCH_BASELINE, Case.named("S1", mode=mode), None, 0.5)
              for mode in both_modes]
    found += [Target("`GATEKIT_KERNELS=baseline` / `avx2` (`standard`)",
                     kernel_contender("baseline"), kernel_contender("avx2"),
                     Case.named(shape, mode=mode), None, 2.0)
              for shape in ("S1", "S3") for mode in both_modes]
    return found


def target_rows(benchmarks, targets=None):
    """One dict per target and load: ``what``, ``group``, ``load``, the two medians (None where
    the contender did not run), ``ratio``, ``limit`` and ``verdict`` (``met``, ``not met`` or
    ``not measured``). A target without a load of its own gets a row for each load that ran."""
    medians = {(row["group"], row["extra_info"].get("contender_id")): row["stats"]["median"]
               for row in benchmarks}
    ran = [load for load in LOADS
           if any(row["extra_info"].get("load", "idle") == load for row in benchmarks)]
    rows = []
    for target in issue_targets() if targets is None else targets:
        for load in [target.load] if target.load else ran or ["idle"]:
            group = group_name(target.case, load)
            top = medians.get((group, target.numerator))
            bottom = medians.get((group, target.denominator))
            ratio = top / bottom if top is not None and bottom else None
            verdict = ("not measured" if ratio is None else
                       "met" if ratio <= target.limit else "not met")
            rows.append({"what": target.what, "group": group, "load": load,
                         "numerator_s": top, "denominator_s": bottom, "ratio": ratio,
                         "limit": target.limit, "verdict": verdict})
    return rows


def _order(families=FAMILIES):
    return {c.id: k for k, c in enumerate(contenders(families))}


def render(benchmarks, skips, environments, meta=None):
    """The markdown report: the run, the machine, versions and thread pools, a summary of gatekit
    standard against torch.nn.LSTM, one table per group, and what was skipped and why."""
    meta = meta or {}
    order = _order()
    group_order = {group_name(c, load): k
                   for k, (c, load) in enumerate((c, load) for c in cases() for load in LOADS)}
    lines = ["# gatekit benchmarks", ""]
    if meta:
        lines.append(f"Run {meta.get('started', '?')} with `{meta.get('command', '?')}`; "
                     f"wall time {meta.get('seconds', 0) / 60:.1f} min.")
        shares = {f: m.get("others_cpu_share") for f, m in meta.get("families", {}).items()}
        noisy = [f for f, share in shares.items() if share is not None and share > NOISY_SHARE]
        if noisy:
            lines.append(f"**Noisy:** other processes ran while "
                         f"{', '.join(f'`{name}`' for name in noisy)} was timed "
                         "(see Machine); do not publish these numbers.")
        if meta.get("guards") is not None:
            lines.append(f"Correctness guards (the PyTorch and JAX versions against gatekit: "
                         f"outputs and gradients, float64, to 1e-10): {meta['guards']}.")
        lines.append("")
    env = environments.get("gatekit") or next(iter(environments.values()), None) or environment()
    lines += ["## Machine", "",
              f"- CPU: {env['cpu']}; {env['logical_cpus']} logical CPUs, "
              f"{env['usable_cpus']} usable by this process",
              f"- Platform: {env['platform']}"]
    version_line = ", ".join(f"{name} {version}" for name, version in env["versions"].items()
                             if version)
    absent = [name for name, version in env["versions"].items() if not version]
    lines.append(f"- Versions: {version_line}" + (f" (not installed: {', '.join(absent)})"
                                                    if absent else ""))
    if env.get("gatekit_path"):
        lines.append(f"- gatekit imported from {env['gatekit_path']}")
    places = {e["gatekit_path"] for e in environments.values() if e.get("gatekit_path")}
    if len(places) > 1:
        lines.append(f"- **Mixed:** the processes imported different gatekits: "
                     f"{', '.join(sorted(places))}; their ratios compare different code")
    for family, family_env in environments.items():
        extra = []
        if family_env.get("gatekit_kernels"):
            extra.append(f"gatekit kernels {', '.join(family_env['gatekit_kernels'])}")
        if "torch_threads" in family_env:
            extra.append(f"torch threads {family_env['torch_threads']} "
                         f"(interop {family_env.get('torch_interop_threads')})")
        if family_env.get("jax_devices"):
            extra.append(f"JAX devices {', '.join(family_env['jax_devices'])}")
        if family_env.get("env"):
            extra.append(", ".join(f"{k}={v}" for k, v in family_env["env"].items()))
        loads = (meta.get("families", {}).get(family, {}))
        if loads.get("load_before"):
            extra.append(f"load average (1 min) {loads['load_before'][0]:.2f} before, "
                         f"{loads['load_after'][0]:.2f} after")
        share = loads.get("others_cpu_share")
        if share is not None:
            extra.append(f"other processes took {100 * share:.0f}% of the CPU time while it ran"
                         + (" (**noisy**)" if share > NOISY_SHARE else ""))
        lines.append(f"- Process `{family}`: " + ("; ".join(extra) if extra else "—"))
    lines += ["", "### BLAS and thread pools (threadpoolctl, in each benchmark process)", "",
              "| process | user API | internal API | version | threads | architecture | "
              "library |", "|---|---|---|---|---|---|---|"]
    for family, family_env in environments.items():
        for pool in family_env.get("threadpools") or []:
            lines.append(f"| {family} | {pool.get('user_api')} | {pool.get('internal_api')} | "
                         f"{pool.get('version')} | {pool.get('num_threads')} | "
                         f"{pool.get('architecture', '')} | "
                         f"{Path(pool.get('filepath', '')).name} |")
    settings = meta.get("settings")
    lines += ["", "## How to read the tables", "",
              "Each group is one shape (T steps, B sequences, D inputs, H units), dtype and mode: "
              "`forward` (for PyTorch under `torch.no_grad()`), or `fwdbwd`: forward, then the "
              "gradient of `sum(y * dy)` for a fixed `dy` with respect to every parameter and "
              "`x`. *median* is the median wall time of one call over the timed rounds (inputs "
              "and parameters built beforehand; JAX's compile time is excluded and shown apart); "
              "*per step* is median / T. *× standard* is median / median of gatekit `standard` in "
              "the same group, *× nn.LSTM* median / median of `torch.nn.LSTM` (above 1: slower). "
              "gatekit with the NumPy reference and the plugins, gatekit with each capped kernel "
              "build (`GATEKIT_KERNELS`), PyTorch, and JAX each ran in their own process. Groups "
              "marked *busy* were timed with one CPU-bound process of the harness running "
              "beside the timed process, started before it and stopped after it."]
    if settings:
        lines.append(f"Timing settings: {settings}.")
    lines.append("")

    groups = {}
    for bench in benchmarks:
        groups.setdefault(bench["group"], []).append(bench)

    def median(rows, contender_id):
        for row in rows:
            if row["extra_info"].get("contender_id") == contender_id:
                return row["stats"]["median"]
        return None

    ordered = sorted(groups, key=lambda g: (group_order.get(g, len(group_order)), g))
    if ordered:
        lines += ["## Issue targets", "",
                  "Ratios of medians within one group, so between contenders timed under the "
                  "same load (float32).", "",
                  "| what | group | ratio | target | verdict |", "|---|---|---:|---:|---|"]
        for row in target_rows(benchmarks):
            measured = (f"{row['ratio']:.2f} ({format_seconds(row['numerator_s'])} / "
                        f"{format_seconds(row['denominator_s'])})" if row["ratio"] is not None
                        else "—")
            lines.append(f"| {row['what']} | {row['group']} | {measured} | "
                         f"≤ {row['limit']:g} | {row['verdict']} |")
        lines.append("")
        lines += ["## Summary: gatekit standard against torch.nn.LSTM", "",
                  "| group | gatekit standard | torch.nn.LSTM | gatekit / nn.LSTM | "
                  "fastest |", "|---|---:|---:|---:|---|"]
        for group in ordered:
            rows = groups[group]
            gk, pt = median(rows, BASELINE), median(rows, TORCH_BASELINE)
            fastest = min(rows, key=lambda r: r["stats"]["median"])
            lines.append(f"| {group} | {format_seconds(gk)} | {format_seconds(pt)} | "
                         f"{_ratio(gk, pt)} | {fastest['extra_info'].get('contender')} |")
        lines.append("")
    for group in ordered:
        rows = sorted(groups[group],
                      key=lambda r: order.get(r["extra_info"].get("contender_id"), len(order)))
        info = rows[0]["extra_info"]
        T = info.get("T") or 1
        title = Case(info["shape"], info["T"], info["B"], info["D"], info["H"], info["dtype"],
                     info["mode"]).title if "shape" in info else group
        if "shape" in info and info.get("load", "idle") != "idle":
            title += f" ({info['load']}: {LOAD_TITLES[info['load']]})"
        base, torch_base = median(rows, BASELINE), median(rows, TORCH_BASELINE)
        lines += [f"## {title}", "",
                  "| contender | median | per step | × standard | × nn.LSTM | rounds × iter | "
                  "notes |", "|---|---:|---:|---:|---:|---:|---|"]
        for row in rows:
            stats, extra = row["stats"], row["extra_info"]
            notes = []
            if "compile_s" in extra:
                notes.append(f"compile {extra['compile_s']:.2f} s (not timed)")
            if "torch_threads" in extra:
                notes.append(f"{extra['torch_threads']} threads")
            if stats.get("rounds", 0) < 3:
                notes.append("few rounds")
            spread = stats.get("iqr", 0) / stats["median"] if stats["median"] else 0
            estimate = extra.get("estimate_s")
            if spread > 0.1:
                notes.append(f"noisy: IQR {100 * spread:.0f}% of median")
            if estimate and not 0.5 <= stats["median"] / estimate <= 2:
                notes.append(f"noisy: warm-up call took {format_seconds(estimate)}")
            lines.append(
                f"| {extra.get('contender', row['name'])} | {format_seconds(stats['median'])} | "
                f"{format_seconds(stats['median'] / T)} | {_ratio(stats['median'], base)} | "
                f"{_ratio(stats['median'], torch_base)} | "
                f"{stats['rounds']} × {stats.get('iterations', 1)} | {'; '.join(notes)} |")
        group_skips = [s for s in skips if s.get("group") == group]
        for skip in group_skips:
            lines.append(f"| {skip['contender']} | skipped | | | | | {skip['reason']} |")
        lines.append("")
    other_skips = [s for s in skips if s.get("group") not in groups]
    if other_skips:
        lines += ["## Skipped (whole groups or families)", "", "| group | contender | reason |",
                  "|---|---|---|"]
        for skip in other_skips:
            lines.append(f"| {skip.get('group')} | {skip['contender']} | {skip['reason']} |")
        lines.append("")
    if not benchmarks:
        lines += ["No benchmark ran.", ""]
    return "\n".join(lines)


# --- The command ------------------------------------------------------------------------------

def _default_bench_dir():
    here = Path.cwd() / "benchmarks"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "benchmarks"


def _pytest(args):
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def _environ(family=None):
    """The environment of a pytest process that times ``family``: ours, importing the gatekit
    this process imported, and for a kernel family its ``GATEKIT_KERNELS``."""
    # `python -m pytest` would put the working directory first on sys.path, and from the repo
    # root import the source tree's gatekit instead of the installed one (Python >= 3.11).
    env = dict(os.environ, PYTHONSAFEPATH="1")
    root = str(Path(__file__).resolve().parent.parent)
    installed = {str(Path(path).resolve()) for path in
                 (*site.getsitepackages(), site.getusersitepackages(),
                  sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    if root not in installed:
        # A source tree (PYTHONPATH or the working directory): its children must time it too.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    if family in KERNEL_FAMILIES:
        from gatekit.core import instruction_sets as kernels
        env[kernels.ENV] = KERNEL_FAMILIES[family]
    return env


#: The CPU-bound process of the busy load. It stops by itself once its parent is gone (a parent
#: killed with SIGKILL cannot stop it), checking every few milliseconds.
_BUSY_LOOP = """\
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


@contextlib.contextmanager
def cpu_load(load):
    """Run ``load`` beside the body: for ``busy`` one CPU-bound child process (a plain Python
    loop, one process whatever the number of cores), started on entry and stopped and reaped on
    exit, also when the body raises (KeyboardInterrupt included); for ``idle`` nothing. Yields
    the process (None when idle)."""
    if load not in LOADS:
        raise ValueError(f"load must be one of {', '.join(LOADS)}; got {load!r}")
    if load == "idle":
        yield None
        return
    process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BUSY_LOOP, str(os.getpid())],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_times():
    """(busy, steal, total) CPU seconds of the whole machine so far (/proc/stat), and the CPU
    seconds of this process's finished children; None where unknown."""
    import resource
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = children.ru_utime + children.ru_stime
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, None, None, ours
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / tick, steal / tick, (busy + idle + iowait + steal) / tick, ours


def _others_share(before, after):
    """The share of the machine's CPU time that went to other processes (and, in a VM, to
    steal) between two :func:`_cpu_times`."""
    if before[0] is None:
        return None
    total = after[2] - before[2]
    others = (after[0] - before[0]) - (after[3] - before[3]) + (after[1] - before[1])
    return max(0.0, others / total) if total > 0 else None


def _junit_summary(path):
    """'N passed, M skipped' from a pytest JUnit XML file."""
    import xml.etree.ElementTree as ElementTree
    try:
        suite = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return "unknown"
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    text = f"{total - skipped - failed} passed"
    if skipped:
        text += f", {skipped} skipped (see Skipped)"
    if failed:
        text += f", {failed} failed"
    return text


def run(args):
    """Run the guards, then each family in its own pytest process; write the merged report."""
    started = time.time()
    bench_dir = Path(args.bench_dir) if args.bench_dir else _default_bench_dir()
    if not bench_dir.is_dir():
        print(f"gatekit bench: no benchmark suite at {bench_dir} (pass --bench-dir)",
              file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.json_dir or Path(".benchmarks") / f"run-{stamp}")
    try:
        families = parse_list(args.families, FAMILIES, "families")
        loads = parse_list(args.load, LOADS, "loads")
        shapes = parse_list(args.shapes, SHAPES, "shapes")
        parse_list(args.dtypes, ("float32", "float64"), "dtypes")
        parse_list(args.modes, ("forward", "fwdbwd"), "modes")
    except ValueError as error:
        print(f"gatekit bench: {error}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(args.max_time, args.min_rounds, args.budget,
                        reference_limit=args.reference_limit)
    options = ["--gk-shapes", ",".join(shapes), "--gk-dtypes", args.dtypes, "--gk-modes",
               args.modes, "--gk-max-time", str(settings.max_time), "--gk-min-rounds",
               str(settings.min_rounds), "--gk-budget", str(settings.budget),
               "--gk-reference-limit", str(settings.reference_limit)]
    extra = shlex.split(args.pytest_args or "")
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"),
            "command": " ".join([getattr(args, "prog", "python -m gatekit.bench"),
                                 shlex.join(getattr(args, "argv", None) or [])]),
            "settings": asdict(settings), "loads": loads, "families": {}, "guards": None}

    if not args.no_guards:
        print("== correctness guards (pytest -m correctness --benchmark-disable)", flush=True)
        junit = out_dir / "guards.xml"
        code = subprocess.call(_pytest([str(bench_dir), "-q", "-m", "correctness",
                                        "--benchmark-disable", "-rs", f"--junitxml={junit}",
                                        "--gk-skips", str(out_dir / "guards-skips.json")]),
                               env=_environ("gatekit"))
        if code not in (0, 5):
            print("gatekit bench: a correctness guard failed; not timing implementations that "
                  "compute something else", file=sys.stderr)
            return code
        meta["guards"] = _junit_summary(junit)

    failures = []
    for family, load in ((family, load) for family in families for load in loads):
        process = process_name(family, load)
        stem = family if load == "idle" else f"{family}-{load}"
        json_path = out_dir / f"{stem}.json"
        skips_path = out_dir / f"{stem}-skips.json"
        for path in (json_path, skips_path):
            path.unlink(missing_ok=True)
        command = _pytest([str(bench_dir), "-q", "--benchmark-only", "-m", "not correctness",
                           f"--benchmark-json={json_path}", "--benchmark-group-by=group",
                           "--benchmark-sort=name",
                           "--benchmark-columns=min,median,max,rounds,iterations",
                           "--gk-families", family, "--gk-load", load, "--gk-skips",
                           str(skips_path), *options, *extra])
        print(f"== {process}: {' '.join(command)}", flush=True)
        load_before = list(os.getloadavg())
        # Measured around the load too: once reaped, its CPU time counts as ours, not others'.
        start, cpu_before = time.time(), _cpu_times()
        with cpu_load(load):
            code = subprocess.call(command, env=_environ(family))
        meta["families"][process] = {"exit": code, "seconds": time.time() - start,
                                     "load": load, "load_before": load_before,
                                     "load_after": list(os.getloadavg()),
                                     "others_cpu_share": _others_share(cpu_before, _cpu_times())}
        if code not in (0, 5):
            failures.append(process)
    meta["seconds"] = time.time() - started
    write_text(out_dir / "meta.json", json.dumps(meta, indent=1))
    text = render(*load_run(out_dir)[:3], meta)
    if failures:
        text += (f"\n**Failed:** the process(es) {', '.join(f'`{name}`' for name in failures)} "
                 "exited with an error.\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    print(text)
    print(f"\ngatekit bench: JSON in {out_dir}, report in {out}")
    return 1 if failures else 0


def write_text(path, text):
    atomic_write(path, lambda stream: stream.write(text), text=True)


def report(args):
    """Render a run's report again. Raises FileNotFoundError or ValueError (naming the path)
    where ``args.directory`` is not the folder of a run with results."""
    benchmarks, skips, environments, meta = load_run(args.directory)
    if not benchmarks and not skips:
        raise ValueError(f"benchmark results: no results in {args.directory} (expected the "
                         f"<family>.json files of gatekit bench run --json-dir)")
    text = render(benchmarks, skips, environments, meta)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)
    print(text)
    return 0


def add_arguments(commands):
    """The ``run`` and ``report`` subcommands (also ``gatekit bench run|report``)."""
    defaults = Settings()
    runner = commands.add_parser("run", help="run the benchmark suite, one process per family, "
                                             "and write the report")
    runner.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                        help=f"comma-separated, of {', '.join(SHAPES)} (default: all)")
    runner.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated, of {', '.join(FAMILIES)} (default: all)")
    runner.add_argument("--load", default="idle",
                        help="comma-separated, of idle, busy (default idle): busy times each "
                             "family again with one CPU-bound process beside it")
    runner.add_argument("--dtypes", default="float32,float64")
    runner.add_argument("--modes", default="forward,fwdbwd")
    runner.add_argument("--out", default=".benchmarks/report.md", help="the markdown report")
    runner.add_argument("--json-dir", help="where the JSON files go (default "
                                           ".benchmarks/run-<time>)")
    runner.add_argument("--bench-dir", help="the benchmark suite (default ./benchmarks)")
    runner.add_argument("--max-time", type=float, default=defaults.max_time,
                        help="seconds of timed rounds to aim for per benchmark")
    runner.add_argument("--min-rounds", type=int, default=defaults.min_rounds)
    runner.add_argument("--budget", type=float, default=defaults.budget,
                        help="at most this many seconds of timed rounds per benchmark (at least "
                             "one round)")
    runner.add_argument("--reference-limit", type=float, default=defaults.reference_limit,
                        help="time the NumPy reference only where one call takes less")
    runner.add_argument("--no-guards", action="store_true",
                        help="skip the correctness guards")
    runner.add_argument("--pytest-args", help="more arguments for each pytest process, e.g. "
                                              "\"-k 'standard or LSTM'\"")
    runner.set_defaults(run=run)
    again = commands.add_parser("report", help="render the report again from a run's JSON files")
    again.add_argument("directory")
    again.add_argument("--out")
    again.set_defaults(run=report)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m gatekit.bench",
                                     description="gatekit's benchmark suite")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.argv, args.prog = argv, "python -m gatekit.bench"
    if args.run is report:
        try:
            return report(args)
        except (FileNotFoundError, ValueError) as error:
            print(f"python -m gatekit.bench: {error}", file=sys.stderr)
            return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
