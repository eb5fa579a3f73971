"""gatekit's pytest plugin, for people who write gates: time a gate, in their own repository,
beside the same cell in :mod:`gatekit.reference`, gatekit's ``standard`` and PyTorch's
``torch.nn.LSTM``, each case one pytest-benchmark group, after a correctness guard.

Installed with gatekit (entry point ``pytest11``), it does nothing unless a test asks for its
fixture :func:`gatekit_bench`::

    def test_bench_floored(gatekit_bench):
        gatekit_bench("floored")                    # a variant
        # or a composition: gatekit_bench("standard", forget="floored")

Such a test is run once per case (shape, dtype, mode: ``--gatekit-shapes`` and the other
options below, or the marker ``@pytest.mark.gatekit_shapes("S1", (50, 4, 16, 32))``) and per
contender (``gate``, ``reference``, ``standard``, ``torch``). Each run first checks the gate,
compiled against :mod:`gatekit.reference` (:func:`gatekit.testing.check_against_reference`,
once per composition), then builds the contender's cell and inputs and times its call alone.
At the end of the session a table gives each contender's time over the gate's; the same
ratios go into each benchmark's ``extra_info``, saved by ``--benchmark-autosave`` and shown by
``--benchmark-compare``.

pytest-benchmark is optional: without it (or with ``--benchmark-disable``) the guard runs and
every contender is built, and nothing is timed. PyTorch is optional too: without it the
``torch`` contender is skipped. Loading the plugin imports the package gatekit, nothing more;
what the fixture needs (cells, the reference, the guard, PyTorch) is imported when it is used.
Do not also pass ``-p gatekit.pytest_plugin``: the entry point has loaded it already.
"""
import pytest

__all__ = ["CONTENDERS", "gatekit_bench"]

#: What each test is timed against, in the summary's order: the gate (or composition) itself,
#: the same cell in the NumPy reference (forward only, where a call is fast enough), gatekit's
#: ``standard`` and ``torch.nn.LSTM`` (the standard cell, PyTorch's fused kernel).
CONTENDERS = ("gate", "reference", "standard", "torch")
LABELS = {"gate": "{spec}", "reference": "gatekit.reference {spec} (NumPy)",
          "standard": "gatekit standard", "torch": "torch.nn.LSTM"}
MARKER = "gatekit_shapes"
#: What each timed run left for the summary: (group, contender, label, benchmark fixture).
RESULTS = pytest.StashKey[list]()
#: The guard's verdict on each composition: None, or why it failed.
GUARDS = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("gatekit", "gatekit's gate benchmarks (the gatekit_bench fixture)")
    group.addoption("--gatekit-shapes", default="S1,S2,S3,S4,S5",
                    help="comma-separated shapes: names of gatekit.benchmarking.SHAPES or "
                         "TxBxDxH (default S1,S2,S3,S4,S5; a gatekit_shapes marker overrides it)")
    group.addoption("--gatekit-dtypes", default="float32",
                    help="comma-separated dtypes: float32, float64 (default float32)")
    group.addoption("--gatekit-modes", default="forward,fwdbwd",
                    help="comma-separated modes: forward, fwdbwd (forward then backward; "
                         "default both)")
    group.addoption("--gatekit-contenders", default=",".join(CONTENDERS),
                    help=f"comma-separated contenders of {', '.join(CONTENDERS)} (default all)")
    group.addoption("--gatekit-reference-limit", type=float, default=2.0,
                    help="time the NumPy reference only where one call takes less (seconds, "
                         "default 2)")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}(*shapes): the shapes a gatekit_bench test "
                                       "runs at: names (S1...) or (T, B, D, H) tuples")
    config.stash[RESULTS] = []
    config.stash[GUARDS] = {}


def _items(text, known, option):
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        raise pytest.UsageError(f"{option}: expected comma-separated values of "
                                f"{', '.join(known)}; got {text!r}")
    return items


def _shape(text, option):
    """A shape name, or T x B x D x H."""
    from gatekit.benchmarking import SHAPES
    if isinstance(text, str) and text in SHAPES:
        return text, SHAPES[text]
    parts = text.split("x") if isinstance(text, str) else text
    try:
        dims = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise pytest.UsageError(f"{option}: expected a shape of {', '.join(SHAPES)} or "
                                f"T x B x D x H (four positive integers); got {text!r}")
    return "x".join(map(str, dims)), dims


def _cases(metafunc):
    from gatekit.benchmarking import Case
    option = metafunc.config.getoption
    marker = metafunc.definition.get_closest_marker(MARKER)
    shapes = ([_shape(shape, f"@pytest.mark.{MARKER}") for shape in marker.args] if marker
              else [_shape(text.strip(), "--gatekit-shapes")
                    for text in option("--gatekit-shapes").split(",") if text.strip()])
    dtypes = _items(option("--gatekit-dtypes"), ("float32", "float64"), "--gatekit-dtypes")
    modes = _items(option("--gatekit-modes"), ("forward", "fwdbwd"), "--gatekit-modes")
    return [Case.custom(dims, dtype, mode, name) for name, dims in shapes
            for dtype in dtypes for mode in modes]


def pytest_generate_tests(metafunc):
    if "gatekit_bench" not in metafunc.fixturenames:
        return
    contenders = _items(metafunc.config.getoption("--gatekit-contenders"), CONTENDERS,
                        "--gatekit-contenders")
    pairs = [(case, contender) for case in _cases(metafunc) for contender in contenders]
    metafunc.parametrize(("gatekit_case", "gatekit_contender"), pairs,
                         ids=[f"{case.id}-{contender}" for case, contender in pairs])


def _guard(config, variant, gates):
    """The correctness guard of a composition, run once per session: None, or why it failed."""
    from gatekit.testing import check_against_reference
    key = (variant, tuple(sorted(gates.items())))
    guards = config.stash[GUARDS]
    if key not in guards:
        try:
            check_against_reference(variant, **gates)
            guards[key] = None
        except AssertionError as error:
            guards[key] = str(error)
    return guards[key]


def _label(variant, gates):
    return "+".join([variant] + [f"{role}={name}" for role, name in sorted(gates.items())])


def _prepare(contender, case, variant, gates, limit, timed):
    """The contender's zero-argument call for ``case`` (its cell, inputs and model built
    here, outside the timed call), or :class:`~gatekit.benchmarking.Unavailable`. The
    reference is probed for its duration only when it is to be ``timed``."""
    from gatekit.benchmarking import (Prepared, Unavailable, gatekit_callable, import_torch,
                                      inputs, reference_callable, torch_callable,
                                      torch_lstm_model)
    from gatekit.core import plugins
    from gatekit.core.cell import Cell

    composed = contender in ("gate", "reference")
    variant, gates = (variant, gates) if composed else ("standard", {})
    if case.D != case.H and any(cls.input_size_is_hidden_size
                                for cls in plugins.registry().compose(variant, gates)):
        raise Unavailable(f"{_label(variant, gates)} needs input_size == hidden_size; this case "
                          f"has D={case.D}, H={case.H}")
    if contender == "reference" and case.mode != "forward":
        raise Unavailable("the reference is timed forward only")
    cell = Cell(case.D, case.H, variant, dtype=case.dtype, seed=0, **gates)
    x, dy = inputs(case)
    if contender == "reference":
        return reference_callable(cell, x, limit) if timed else Prepared(None)
    if contender == "torch":
        torch = import_torch()
        fn = torch_callable(torch_lstm_model(cell), torch.from_numpy(x), torch.from_numpy(dy),
                            case.mode)
        return Prepared(fn, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()})
    return Prepared(gatekit_callable(cell, x, dy, case.mode), {"gate_names": cell.gate_names})


def _times(config):
    """Whether this session times: pytest-benchmark is there (its plugin is registered as
    ``benchmark``) and not disabled."""
    return (config.pluginmanager.hasplugin("benchmark")
            and not config.getoption("benchmark_disable", False))


@pytest.fixture
def gatekit_bench(request, gatekit_case, gatekit_contender):
    """``gatekit_bench(variant="standard", **gates)``: check the cell of ``variant`` (with
    ``gates``, role: name, swapped in) against :mod:`gatekit.reference`, then time this run's
    contender on this run's case (see the module's documentation)."""
    def bench(variant="standard", **gates):
        from gatekit import __version__
        from gatekit.benchmarking import Settings, Unavailable, estimate_seconds, plan_rounds

        config = request.config
        failure = _guard(config, variant, gates)
        if failure is not None:
            pytest.fail(f"gatekit correctness guard: {failure}", pytrace=False)
        timed = _times(config)
        # Everything that may skip the test comes before pytest-benchmark's fixture, which
        # warns about a test that asked for it and did not call it.
        try:
            prepared = _prepare(gatekit_contender, gatekit_case, variant, gates,
                                config.getoption("--gatekit-reference-limit"), timed)
        except Unavailable as reason:
            pytest.skip(str(reason))
        if not config.pluginmanager.hasplugin("benchmark"):
            pytest.skip("pytest-benchmark is not installed: the gate was checked, nothing "
                        "timed (pip install pytest-benchmark)")
        benchmark = request.getfixturevalue("benchmark")
        spec = _label(variant, gates)
        label = LABELS[gatekit_contender].format(spec=spec)
        benchmark.group = f"{spec} {gatekit_case.group}"
        benchmark.extra_info.update(gatekit_case.fields, contender=gatekit_contender,
                                    label=label, variant=variant, gates=dict(gates),
                                    gatekit=__version__, **prepared.info)
        if not timed:
            # Disabled, the fixture only calls what it is given, once: here nothing, so that
            # a check of S5 costs no S5 call.
            benchmark(lambda: None)
            return
        estimate = estimate_seconds(prepared.fn)             # also the warm-up
        rounds, iterations = plan_rounds(estimate, Settings())
        benchmark.extra_info["estimate_s"] = estimate
        benchmark.pedantic(prepared.fn, rounds=rounds, iterations=iterations, warmup_rounds=0)
        config.stash[RESULTS].append((benchmark.group, gatekit_contender, label, benchmark))
    return bench


def _ratios(results):
    """{group: [(label, contender's median over the gate's, its extra_info)]}: the groups whose
    gate was timed, contenders in :data:`CONTENDERS` order."""
    medians = {}
    for group, contender, label, benchmark in results:
        if benchmark.stats is not None:
            medians.setdefault(group, {})[contender] = (label, benchmark.stats.stats.median,
                                                        benchmark.extra_info)
    table = {}
    for group, timed in medians.items():
        if "gate" in timed:
            gate = timed["gate"][1]
            table[group] = [(timed[name][0], timed[name][1] / gate, timed[name][2])
                            for name in CONTENDERS if name in timed]
    return table


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    # Before pytest-benchmark saves (its own wrapper of this hook): each benchmark's ratio to
    # the gate of its group, so that --benchmark-autosave keeps it and --benchmark-compare
    # can follow it across versions of the gate.
    for rows in _ratios(session.config.stash.get(RESULTS, [])).values():
        for _, ratio, extra_info in rows:
            extra_info["over_gate"] = ratio
    yield


def pytest_terminal_summary(terminalreporter, config):
    table = _ratios(config.stash.get(RESULTS, []))
    if not table:
        return
    write = terminalreporter.write_line
    terminalreporter.section("gatekit: median time over the gate's (below 1: faster than "
                             "the gate)")
    width = max(len(label) for rows in table.values() for label, _, _ in rows)
    for group, rows in table.items():
        write(group)
        for label, ratio, _ in rows:
            write(f"  {label:<{width}}  {ratio:10.3f}")
