"""What gatekit's benchmarks are made of: the cases (shapes S1-S5 and others, dtypes, modes)
and their inputs, how long a call is timed, and the contenders' calls (a gatekit cell, the NumPy
reference where it is fast enough, ``torch.nn.LSTM``), each built outside the timed call.

The pytest plugin for gate authors (:mod:`gatekit.pytest_plugin`) and the project's own
benchmark suite (``benchmarks/`` in the source tree) both time these; only the suite compares
with JAX and with custom PyTorch cells. PyTorch is imported when a PyTorch call is asked for.
"""
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from gatekit.core import reference

__all__ = ["COMMON_SHAPES", "MODE_LABELS", "SEED", "SHAPES", "Case", "Prepared", "Settings",
           "Unavailable", "estimate_seconds", "gatekit_callable", "import_torch", "inputs",
           "plan_rounds", "reference_callable", "torch_callable", "torch_lstm_model"]

#: name: (T, B, D, H)
SHAPES = {
    "S1": (1000, 1, 32, 64),
    "S2": (1000, 1, 128, 256),
    "S3": (200, 32, 128, 256),
    "S4": (100, 64, 512, 512),
    "S5": (50, 128, 1024, 1024),
    # D = H, for the cells that need it (mut1 adds tanh(E_t) to its candidate): S1 so...
    "S1sq": (1000, 1, 64, 64),
    # ...and issue 13's shape for mingru and minlstm against standard (their scan over T)
    "S6": (1000, 32, 256, 256),
    "fixed": (1, 1, 64, 64),          # the fixed cost of one call
}
#: The shapes every cell runs at: one sequence (S1, S2), batches (S3), wide layers (S4, S5).
COMMON_SHAPES = ("S1", "S2", "S3", "S4", "S5")
#: ``forward``: the cell's call; ``fwdbwd``: forward, then backward of the loss ``sum(y * dy)``
#: for a fixed ``dy``, down to every parameter and the input ``x``.
MODE_LABELS = {"forward": "forward", "fwdbwd": "forward+backward"}
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
        if shape not in SHAPES:
            raise ValueError(f"shape: expected one of {', '.join(SHAPES)}; got {shape!r}")
        return cls(shape, *SHAPES[shape], np.dtype(dtype).name, mode)

    @classmethod
    def custom(cls, dims, dtype="float32", mode="forward", name="custom"):
        T, B, D, H = dims
        return cls(name, T, B, D, H, np.dtype(dtype).name, mode)

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


def inputs(case, seed=SEED):
    """The input ``x`` (T, B, D) and the fixed output gradient ``dy`` (T, B, H) of a case, as
    NumPy arrays of its dtype; the same numbers for every contender."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.T, case.B, case.D)).astype(case.dtype)
    dy = rng.standard_normal((case.T, case.B, case.H)).astype(case.dtype)
    return x, dy


# --- How long ---------------------------------------------------------------------------------

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


# --- The contenders' calls --------------------------------------------------------------------

class Unavailable(Exception):
    """A contender cannot run for this case (library not installed, too slow...): the reason."""


@dataclass
class Prepared:
    """A zero-argument callable that runs one case, and what is known about how it was built."""
    fn: object
    info: dict = field(default_factory=dict)


def gatekit_callable(cell, x, dy, mode):
    """The zero-argument call that times ``cell`` on ``x``: ``cell(x)``, or forward with a tape
    then backward of ``dy``."""
    if mode == "forward":
        return lambda: cell(x)

    def forward_backward():
        _, _, tape = cell.forward(x, keep=True)
        return cell.backward(tape, dy)
    return forward_backward


def reference_callable(cell, x, limit):
    """``gatekit.reference.forward(cell, x)`` as a :class:`Prepared` call, or
    :class:`Unavailable` where one call would take more than ``limit`` seconds (estimated from
    its first steps, so a hopeless case costs a fraction of a second)."""
    T = len(x)
    reference.forward(cell, x[:1])
    # Time the first steps, more of them until the probe lasts long enough to extrapolate.
    probe = min(T, 4)
    while True:
        elapsed = math.inf
        for _ in range(2):                       # the faster of two: a noisy machine is slower
            start = time.perf_counter()
            reference.forward(cell, x[:probe])
            elapsed = min(elapsed, time.perf_counter() - start)
        estimate = elapsed * T / probe
        if elapsed >= 0.05 or probe == T or estimate > 4 * limit:
            break
        probe = min(T, probe * 4)
    if estimate > limit:
        raise Unavailable(f"one reference call would take ~{estimate:.1f} s here (estimated from "
                          f"{probe} steps), over the {limit:g} s limit")
    return Prepared(lambda: reference.forward(cell, x), {"estimated_s": estimate})


def import_torch():
    """The ``torch`` module, or :class:`Unavailable` saying how to get it."""
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed (pip install torch)") from None
    return torch


def torch_dtype(torch, dtype):
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]


def torch_lstm_model(cell):
    """``torch.nn.LSTM`` with the parameters of a gatekit ``standard`` cell: PyTorch's blocks
    i, f, g, o are gatekit's i, f, n, v; ``weight_hh_l0`` takes the STM columns, ``weight_ih_l0``
    the input columns, ``bias_ih_l0`` the biases and ``bias_hh_l0`` zeros."""
    torch = import_torch()
    if cell.gate_names != {"forget": "standard", "learn": "standard", "remember": "standard",
                           "use": "standard"}:
        raise ValueError(f"torch.nn.LSTM runs the standard cell; got {cell!r}")
    H, p = cell.hidden_size, cell.params
    W = np.concatenate([p["W_i"], p["W_f"], p["W_n"], p["W_v"]])
    b = np.concatenate([p["b_i"], p["b_f"], p["b_n"], p["b_v"]])
    model = torch.nn.LSTM(cell.input_size, H, dtype=torch_dtype(torch, cell.dtype))
    with torch.no_grad():
        model.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(W[:, :H])))
        model.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(W[:, H:])))
        model.bias_ih_l0.copy_(torch.from_numpy(b))
        model.bias_hh_l0.zero_()
    return model


def torch_callable(model, x, dy, mode):
    """Forward under ``torch.no_grad()``; or forward, the loss ``sum(y * dy)`` and
    ``torch.autograd.grad`` of it with respect to ``x`` and every parameter."""
    torch = import_torch()
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
