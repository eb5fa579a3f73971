"""How long each benchmark is timed: the settings, the warm-up call that estimates a call's
duration, and the rounds and iterations planned from that estimate."""
import math
import time
from dataclasses import dataclass

__all__ = ["Settings", "estimate_seconds", "plan_rounds"]


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
