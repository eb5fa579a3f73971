"""gatekit's pytest plugin (gatekit.pytest_plugin, entry point pytest11), in sessions of its own
(pytester), as a gate author's repository runs it: the fixture and its parametrisation, the
correctness guard stopping a wrong gate, the ratios at the end of the session and in the JSON
that --benchmark-autosave writes, and sessions without pytest-benchmark or without the
fixture."""
import json

import pytest

pytest_plugins = ["pytester"]

# A Python gate twice: right, and with a forward pass that is not its definition (its use factor
# is off by 1e-3), as a slip in a compiled gate would be.
GATES = '''
import numpy as np
import gatekit


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


class HalvedUse(gatekit.PythonGate):
    role, name, blocks = "use", "halved", ("v",)
    offset = 0.0

    @staticmethod
    def definition(STM_prev, E_t, LTM_t, W_v, b_v):
        U_t = np.tanh(LTM_t) / 2
        V_t = sigmoid(gatekit.reference.linear(W_v, STM_prev, E_t, b_v))
        return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}

    def forward(self, step):
        step.U_t[...] = np.tanh(step.LTM_t) / 2 + self.offset
        step.V_t[...] = sigmoid(step.z("v"))
        step.STM_t[...] = step.U_t * step.V_t

    def backward(self, step):
        U_t, V_t = step.U_t, step.V_t
        step.dU_t += step.dSTM_t * V_t
        step.dV_t += step.dSTM_t * U_t
        step.dLTM_t += step.dU_t * (1 - np.tanh(step.LTM_t) ** 2) / 2
        step.dz("v")[...] += step.dV_t * V_t * (1 - V_t)


class WrongUse(HalvedUse):
    name = "wrong"
    offset = 1e-3


class Plugin:
    @gatekit.hookimpl
    def register_gates(self, register):
        register(HalvedUse)
        register(WrongUse)

    @gatekit.hookimpl
    def register_variants(self, register):
        register("halved", {"use": "halved"})


gatekit.register_plugin(Plugin(), name="test-gates")


def pytest_unconfigure(config):
    gatekit.unregister_plugin("test-gates")
'''

BENCH = '''
import pytest


@pytest.mark.gatekit_shapes((12, 2, 3, 4))
def test_bench_halved(gatekit_bench):
    gatekit_bench("halved")


@pytest.mark.gatekit_shapes((12, 2, 3, 4))
def test_bench_wrong(gatekit_bench):
    gatekit_bench("standard", use="wrong")
'''


@pytest.fixture
def author(pytester):
    """A gate author's repository: the gates registered by its conftest, one benchmark file."""
    pytester.makeconftest(GATES)
    pytester.makepyfile(test_bench_gates=BENCH)
    return pytester


def test_fixtures_parametrise_cases_and_contenders(author):
    author.makepyfile(test_unmarked="def test_bench_unmarked(gatekit_bench):\n"
                                    "    gatekit_bench('halved')\n")
    result = author.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                         "--gatekit-shapes", "S1,7x2x3x4", "--gatekit-dtypes",
                                         "float32,float64", "test_unmarked.py")
    ids = [line.split("[")[1].rstrip("]") for line in result.outlines if "[" in line]
    assert ids == [f"{shape}-{dtype}-{mode}-{contender}"
                   for shape in ("S1", "7x2x3x4") for dtype in ("float32", "float64")
                   for mode in ("forward", "fwdbwd")
                   for contender in ("gate", "reference", "standard", "torch")]


def test_the_marker_gives_the_shapes(author):
    result = author.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                         "--gatekit-contenders", "gate", "--gatekit-modes",
                                         "forward")
    assert [line.split("::")[1] for line in result.outlines if "::" in line] == [
        "test_bench_halved[12x2x3x4-float32-forward-gate]",
        "test_bench_wrong[12x2x3x4-float32-forward-gate]"]


@pytest.mark.parametrize("option, value, expected", [
    ("--gatekit-modes", "backward", "--gatekit-modes: expected comma-separated values of "
                                    "forward, fwdbwd; got 'backward'"),
    ("--gatekit-shapes", "S9", "--gatekit-shapes: expected a shape of S1, S2,"),
    ("--gatekit-shapes", "10x2x3", "T x B x D x H (four positive integers); got '10x2x3'")])
def test_a_bad_option_is_refused_naming_it(author, option, value, expected):
    author.makepyfile(test_unmarked="def test_bench_unmarked(gatekit_bench):\n"
                                    "    gatekit_bench('halved')\n")
    result = author.runpytest_subprocess("-p", "no:cacheprovider", option, value,
                                         "test_unmarked.py")
    assert result.ret != 0
    assert expected in result.stdout.str()


def test_the_guard_fails_a_gate_that_is_not_its_definition(author):
    result = author.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-disable",
                                         "--gatekit-contenders", "gate,standard")
    outcomes = result.parseoutcomes()
    # halved: gate and standard, forward and fwdbwd, all pass; wrong: all four fail.
    assert outcomes.get("passed") == 4 and outcomes.get("failed") == 4
    failures = [line for line in result.outlines if line.startswith("FAILED")]
    assert len(failures) == 4 and all("test_bench_wrong" in line for line in failures)
    assert "gatekit correctness guard: standard+use=wrong: the compiled outputs differ from " \
           "gatekit.reference by up to" in result.stdout.str()


def test_disabled_benchmarks_check_and_build_without_timing(author):
    result = author.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-disable", "-k",
                                         "halved", "-rs")
    outcomes = result.parseoutcomes()
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    torch_missing = any("PyTorch is not installed" in line for line in skipped)
    # The reference is timed forward only; torch.nn.LSTM where PyTorch is installed.
    assert outcomes.get("skipped") == 1 + 2 * torch_missing
    assert outcomes.get("passed") == 8 - outcomes["skipped"]
    assert "gatekit: median time" not in result.stdout.str()


def test_ratios_are_printed_and_autosaved(author, tmp_path):
    storage = tmp_path / "storage"
    result = author.runpytest_subprocess("-p", "no:cacheprovider", "-k", "halved",
                                         "--gatekit-modes", "forward", "--gatekit-contenders",
                                         "gate,reference,standard", "--benchmark-autosave",
                                         f"--benchmark-storage=file://{storage}",
                                         "--benchmark-min-rounds=1")
    assert result.parseoutcomes().get("passed") == 3
    (saved,) = storage.rglob("*.json")
    benchmarks = {b["extra_info"]["contender"]: b for b in json.loads(saved.read_text())
                  ["benchmarks"]}
    assert set(benchmarks) == {"gate", "reference", "standard"}
    gate = benchmarks["gate"]
    assert gate["group"] == "halved 12x2x3x4 float32 forward"
    assert {key: gate["extra_info"][key] for key in ("shape", "T", "B", "D", "H", "dtype",
                                                      "mode", "variant", "label")} == {
        "shape": "12x2x3x4", "T": 12, "B": 2, "D": 3, "H": 4, "dtype": "float32",
        "mode": "forward", "variant": "halved", "label": "halved"}
    # Each ratio is the contender's median over the gate's, both as the JSON holds them.
    start = next(i for i, line in enumerate(result.outlines)
                 if "gatekit: median time over the gate's" in line)
    lines = [line for line in result.outlines[start + 1:] if line.strip()]
    assert lines[0] == "halved 12x2x3x4 float32 forward"
    printed = dict(line.strip().rsplit(None, 1) for line in lines[1:4])
    labels = {"gate": "halved", "reference": "gatekit.reference halved (NumPy)",
              "standard": "gatekit standard"}
    assert set(printed) == set(labels.values())
    for contender, label in labels.items():
        ratio = benchmarks[contender]["stats"]["median"] / gate["stats"]["median"]
        assert benchmarks[contender]["extra_info"]["over_gate"] == pytest.approx(ratio,
                                                                                  rel=1e-12)
        assert float(printed[label]) == pytest.approx(ratio, abs=5e-4)


def test_without_pytest_benchmark_the_guard_still_runs(author):
    result = author.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:benchmark",
                                         "-rs", "--gatekit-contenders", "gate")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 2 and outcomes.get("skipped") == 2
    assert "pytest-benchmark is not installed: the gate was checked, nothing timed" in \
        result.stdout.str()


def test_a_session_that_does_not_use_the_fixture_is_untouched(pytester):
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.parseoutcomes() == {"passed": 1}
    assert "gatekit:" not in result.stdout.str()
