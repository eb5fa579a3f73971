"""The timed benchmarks: every (case, contender) pair of the harness (``harness.lineup``), one
group per case and load.

Each test builds its contender's callable outside the timing (inputs, parameters, JAX's
compilation), warms it up with a call that also estimates its duration, then times it in
pytest-benchmark's pedantic mode with rounds planned from that estimate
(``gatekit.benchmarking.plan_rounds``): short calls get many rounds, the long ones at the big
shapes as few as one, so the whole suite stays within minutes.
"""
import pytest

from gatekit.benchmarking import estimate_seconds, plan_rounds

from harness.cases import group_name
from harness.contenders import Unavailable


def test_bench(benchmark, case, contender, settings, load):
    try:
        prepared = contender.build(case, settings)
    except Unavailable as reason:
        pytest.skip(str(reason))
    benchmark.group = group_name(case, load)
    benchmark.extra_info.update(case.fields, load=load, contender=contender.label,
                                contender_id=contender.id, family=contender.family,
                                **prepared.info)
    if benchmark.disabled:
        benchmark(prepared.fn)
        return
    estimate = estimate_seconds(prepared.fn)                # also the warm-up
    rounds, iterations = plan_rounds(estimate, settings)
    benchmark.extra_info["estimate_s"] = estimate
    benchmark.pedantic(prepared.fn, rounds=rounds, iterations=iterations, warmup_rounds=0)
