"""Options and parametrisation of the benchmark suite; the cases and contenders are in the
package ``harness`` beside this file. Run it with ``make bench`` (one process per family, merged
report) or directly, e.g. ``pytest benchmarks --benchmark-only --gk-shapes S1 --gk-families
gatekit``."""
import json

import pytest

from gatekit.benchmarking import Settings

from harness.cases import (DEFAULT_SHAPES, FAMILIES, LOADS, SHAPES, Case, cases, group_name,
                           parse_list)
from harness.contenders import Contender
from harness.lineup import contenders
from harness.machine import environment


def pytest_addoption(parser):
    group = parser.getgroup("gatekit-bench", "gatekit benchmark suite")
    group.addoption("--gk-shapes", default=",".join(DEFAULT_SHAPES),
                    help=f"comma-separated shapes of {', '.join(SHAPES)} (default: all)")
    group.addoption("--gk-families", default=",".join(FAMILIES),
                    help=f"comma-separated families of {', '.join(FAMILIES)} (default: "
                         "all; `make bench` runs each in its own process, as the kernel "
                         "families need: GATEKIT_KERNELS is read when gatekit is imported)")
    group.addoption("--gk-load", default="idle", choices=LOADS,
                    help="the load this process is timed under, for the report's groups: "
                         "`python benchmarks/run.py run --load busy` starts a CPU-bound "
                         "process beside it and passes busy (this option starts nothing)")
    group.addoption("--gk-dtypes", default="float32,float64")
    group.addoption("--gk-modes", default="forward,fwdbwd")
    defaults = Settings()
    group.addoption("--gk-max-time", type=float, default=defaults.max_time,
                    help="seconds of timed rounds to aim for per benchmark")
    group.addoption("--gk-min-rounds", type=int, default=defaults.min_rounds)
    group.addoption("--gk-budget", type=float, default=defaults.budget,
                    help="at most this many seconds of timed rounds per benchmark (>= 1 round)")
    group.addoption("--gk-reference-limit", type=float, default=defaults.reference_limit,
                    help="time the NumPy reference only where one call takes less (seconds)")
    group.addoption("--gk-skips", default=None,
                    help="write the skipped benchmarks and their reasons to this JSON file")


def pytest_configure(config):
    config.addinivalue_line("markers", "correctness: an untimed check that a benchmarked "
                                       "implementation computes what gatekit computes")
    config.stash[SKIPS] = []


SKIPS = pytest.StashKey[list]()


def _selection(config):
    option = config.getoption
    return (parse_list(option("--gk-shapes"), SHAPES, "shapes"),
            parse_list(option("--gk-families"), FAMILIES, "families"),
            parse_list(option("--gk-dtypes"), ("float32", "float64"), "dtypes"),
            parse_list(option("--gk-modes"), ("forward", "fwdbwd"), "modes"))


def pytest_generate_tests(metafunc):
    if not {"case", "contender"} <= set(metafunc.fixturenames):
        return
    shapes, families, dtypes, modes = _selection(metafunc.config)
    pairs = [(case, contender) for case in cases(shapes, dtypes, modes)
             for contender in contenders(families) if contender.applies_to(case)]
    metafunc.parametrize(("case", "contender"), pairs,
                         ids=[f"{case.id}-{contender.id}" for case, contender in pairs])


def pytest_collection_modifyitems(config, items):
    # Libraries whose threads may still spin after a call must not run just before another's
    # timing: each family after the other (make bench runs them in separate processes anyway),
    # and in the gatekit family the NumPy reference (NumPy's own OpenBLAS) after all the rest.
    def rank(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        contender = params.get("contender")
        if not isinstance(contender, Contender):
            return (-1, 0)
        return (FAMILIES.index(contender.family), contender.id.startswith("reference"))
    items.sort(key=rank)


@pytest.fixture(scope="session")
def load(pytestconfig):
    return pytestconfig.getoption("--gk-load")


@pytest.fixture(scope="session")
def settings(pytestconfig):
    option = pytestconfig.getoption
    return Settings(max_time=option("--gk-max-time"), min_rounds=option("--gk-min-rounds"),
                          budget=option("--gk-budget"),
                          reference_limit=option("--gk-reference-limit"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    params = getattr(getattr(item, "callspec", None), "params", {})
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if isinstance(params.get("case"), Case):
        item.config.stash[SKIPS].append({
            "group": group_name(params["case"], item.config.getoption("--gk-load")),
            "contender": params["contender"].label,
            "contender_id": params["contender"].id, "family": params["contender"].family,
            "reason": reason})
    elif item.get_closest_marker("correctness") and not item.config.getoption(
            "benchmark_only", False):
        item.config.stash[SKIPS].append({"group": "correctness guards", "contender": item.name,
                                         "reason": reason})


def pytest_sessionfinish(session):
    path = session.config.getoption("--gk-skips")
    if path:
        with open(path, "w") as f:
            json.dump(session.config.stash[SKIPS], f, indent=1)


def pytest_benchmark_update_machine_info(config, machine_info):
    # After the session's benchmarks: the thread pools of the libraries this process loaded.
    machine_info["gatekit_bench"] = environment(config.getoption("--gk-families"),
                                                config.getoption("--gk-load"))
