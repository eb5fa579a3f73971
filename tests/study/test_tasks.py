"""The tasks of gatekit.tasks, checked against their definitions written out here independently:
the embedded Reber grammar as a regular expression and as the classic adjacency list, exact
enumeration of its strings for the distribution and the baseline, the temporal-order and copy
layouts from the papers, and the registry that holds them."""
import math
import re
from collections import Counter

import numpy as np
import pytest
from scipy import stats

import gatekit
from gatekit.core import plugins
from gatekit.study import tasks
from gatekit.core.plugins import PluginError

BUILTIN = ["adding", "reber", "temporal_order", "copy"]


def rng(seed=0):
    return np.random.default_rng(seed)


# --- The registry ----------------------------------------------------------------------------

def test_builtin_tasks_are_registered_through_the_hook():
    assert tasks.names()[:4] == BUILTIN
    assert plugins.tasks() == tasks.names()
    for name in BUILTIN:
        assert plugins.registry().tasks[name].plugin == "gatekit.study.builtin_tasks"
    assert isinstance(tasks.make("adding", 30), tasks.AddingProblem)
    assert tasks.make("copy").length == 100
    with pytest.raises(ValueError, match="unknown task 'addition'.*adding"):
        tasks.make("addition")


@pytest.mark.parametrize("name", BUILTIN)
def test_options_rebuild_the_same_task(name):
    task = tasks.make(name, 12)
    again = tasks.make(**task.options())
    assert type(again) is type(task) and again.options() == task.options()
    x1, t1 = task.sample(5, rng(3))
    x2, t2 = again.sample(5, rng(3))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(t1, t2)
    x3, _ = task.sample(5, rng(4))
    assert not np.array_equal(x1, x3)
    assert x1.shape[1:] == (5, task.input_size)


@pytest.mark.parametrize("name,too_short", [("adding", 1), ("reber", 8),
                                            ("temporal_order", 9), ("copy", 0)])
def test_too_short_lengths_are_refused(name, too_short):
    with pytest.raises(ValueError, match="length"):
        tasks.make(name, too_short)
    tasks.make(name, too_short + 1)
    with pytest.raises(TypeError, match="length"):
        tasks.make(name, 20.5)


def _task_plugin(*classes, hook_name="register_tasks"):
    class Plugin:
        pass

    def register_tasks(register):
        for cls in classes:
            register(cls)

    setattr(Plugin, hook_name, staticmethod(gatekit.hookimpl(register_tasks)))
    return Plugin()


class Parity(tasks.Task):
    """A plugin's task: the parity of a bit string, read at the end."""
    name = "parity_test"
    default_length = 8
    input_size, output_size = 1, 2
    baseline_loss = math.log(2)
    loss = gatekit.losses.SoftmaxCrossEntropy(last_step_only=True)

    def sample(self, batch_size, rng):
        bits = rng.integers(0, 2, (self.length, batch_size))
        return bits[..., None].astype(float), bits.sum(axis=0) % 2

    def solved(self, outputs, target):
        return outputs[-1].argmax(axis=-1) == target


def test_plugin_task_registers_runs_and_unregisters(register):
    name = register(_task_plugin(Parity), name="test-task-plugin")
    assert "parity_test" in tasks.names()
    assert plugins.registry().tasks["parity_test"].plugin == "test-task-plugin"
    task = tasks.make("parity_test", 5)
    x, target = task.sample(4, rng())
    assert x.shape == (5, 4, 1)
    np.testing.assert_array_equal(target, x[..., 0].sum(axis=0) % 2)
    gatekit.unregister_plugin(name)
    assert "parity_test" not in tasks.names()
    assert tasks.names()[:4] == BUILTIN


def test_duplicate_task_name_names_both_plugins(register):
    class Adding(Parity):
        name = "adding"

    with pytest.raises(PluginError) as info:
        register(_task_plugin(Adding), name="test-dup-task")
    message = str(info.value)
    assert "'adding'" in message and "gatekit.study.builtin_tasks" in message
    assert "test-dup-task" in message
    assert plugins.plugin_manager().get_plugin("test-dup-task") is None
    assert plugins.registry().tasks["adding"].cls is tasks.AddingProblem


@pytest.mark.parametrize("cls,expected", [
    (type("NotATask", (), {"name": "x"}), "subclass of gatekit.tasks.Task"),
    (type("BadName", (Parity,), {"name": "has space"}), "not an identifier"),
    (type("NoSolved", (tasks.Task,), {"name": "no_solved",
                                      "sample": lambda self, b, r: None}), "no `solved`"),
])
def test_invalid_task_class_is_refused_naming_the_plugin(register, cls, expected):
    before = tasks.names()
    with pytest.raises(PluginError) as info:
        register(_task_plugin(cls), name="test-bad-task")
    assert expected in str(info.value) and "test-bad-task" in str(info.value)
    assert tasks.names() == before


def test_misspelt_task_hook_is_rejected(register):
    import pluggy
    with pytest.raises(pluggy.PluginValidationError):
        register(_task_plugin(Parity, hook_name="register_task"), name="test-misspelt-task")


# --- The adding problem ----------------------------------------------------------------------

def test_adding_problem_keeps_its_api_and_loss():
    task = tasks.AddingProblem(50)
    assert (task.input_size, task.output_size, tasks.AddingProblem.baseline_loss) == (2, 1, 1 / 6)
    assert task.loss.last_step_only and isinstance(task.loss, gatekit.losses.MeanSquaredError)


def test_adding_problem_baseline_is_the_mse_of_predicting_one():
    # The sum of two U[0, 1] values has mean 1 and variance 1/12 + 1/12.
    _, target = tasks.AddingProblem(10).sample(400_000, rng(1))
    mse = np.mean((target - 1.0) ** 2)
    standard_error = np.std((target - 1.0) ** 2) / np.sqrt(target.size)
    assert abs(mse - 1 / 6) < 4 * standard_error


def test_adding_problem_solved_when_error_below_tolerance():
    task = tasks.AddingProblem(6)
    _, target = task.sample(6, rng())
    errors = np.array([0.0, 0.039, -0.039, 0.041, -0.041, 0.5])
    outputs = np.zeros((6, 6, 1))
    outputs[-1, :, 0] = target[:, 0] + errors
    outputs[:-1] = 99.0                               # only the last step is read
    assert task.solved(outputs, target).tolist() == [True, True, True, False, False, False]
    assert tasks.AddingProblem(6, tolerance=0.1).solved(outputs, target)[3:5].all()


@pytest.mark.parametrize("length", [2, 7, 20])
def test_adding_problem_sample(length):
    task = tasks.AddingProblem(length)
    B = 64
    x, target = task.sample(B, np.random.default_rng(5))
    assert x.shape == (length, B, 2) and target.shape == (B, 1)
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(markers)) <= {0.0, 1.0}
    half = length // 2
    for b in range(B):
        marked = np.flatnonzero(markers[:, b])
        assert len(marked) == 2
        assert marked[0] < half <= marked[1]
        assert target[b, 0] == pytest.approx(values[marked[0], b] + values[marked[1], b],
                                              rel=1e-15)

    again = task.sample(B, np.random.default_rng(5))
    np.testing.assert_array_equal(again[0], x)
    np.testing.assert_array_equal(again[1], target)
    different = task.sample(B, np.random.default_rng(6))
    assert not np.array_equal(different[0], x)


def test_adding_problem_rejects_short_sequences():
    with pytest.raises(ValueError, match="length"):
        tasks.AddingProblem(1)


# --- The embedded Reber grammar --------------------------------------------------------------
# The Reber grammar as a regular expression, derived by hand from the graph: from the node after
# B, T S* X leads to the node with X/S out, P T* V to the node with V/P out.
REBER = r"B(?:TS*X|PT*VP)(?:XT*VP)*(?:S|XT*VV)E|BPT*VVE"
EMBEDDED = re.compile(rf"B([TP])(?:{REBER})\1E")
SYMBOLS = "BTSXPVE"

# ... and as the adjacency list of the classic implementations: node -> ((next nodes), (symbols))
GRAPH = [((1, 5), "TP"), ((1, 2), "SX"), ((3, 5), "SX"), ((6,), "E"), ((3, 2), "VP"),
         ((4, 5), "VT")]


def embedded_strings(max_length):
    """Every embedded Reber string of at most max_length symbols with its probability under
    the unconditioned grammar, and the symbols allowed after each prefix."""
    found = []

    def inner(node, text, p, allowed):
        if len(text) + 2 > max_length:          # + closing branch symbol and E
            return
        if node == 6:
            found.append((text, p, allowed))
            return
        nexts, symbols = GRAPH[node]
        for nxt, symbol in zip(nexts, symbols):
            inner(nxt, text + symbol, p / len(symbols), allowed + [set(symbols)])

    results = []
    for branch in "TP":
        found.clear()
        inner(0, "B" + branch + "B", 0.5, [{"T", "P"}, {"B"}])
        for text, p, allowed in found:
            full = text + branch + "E"
            # after the inner E: the branch symbol, then E
            results.append((full, p, allowed + [{branch}, {"E"}]))
    return results


def decode(x):
    """Strings from one-hot (T, B, 7) inputs."""
    strings = []
    for b in range(x.shape[1]):
        rows = x[:, b]
        assert np.all(rows.sum(axis=1) <= 1)
        strings.append("".join(SYMBOLS[i] for i in rows.argmax(axis=1)[rows.sum(axis=1) == 1]))
    return strings


def test_enumeration_oracle_agrees_with_the_regex():
    strings = embedded_strings(14)
    assert len(strings) > 20
    assert all(EMBEDDED.fullmatch(s) for s, _, _ in strings)
    assert {s for s, _, _ in strings} >= {"BTBTXSETE", "BPBPVVEPE", "BTBPTVPXVVETE"}


@pytest.mark.parametrize("length", [9, 12, 30])
def test_reber_strings_are_in_the_grammar_and_padded(length):
    task = tasks.EmbeddedReber(length)
    x, target = task.sample(300, rng(2))
    assert x.shape == (length, 300, 7) and target.shape == (length, 300)
    strings = decode(x)
    for b, string in enumerate(strings):
        assert EMBEDDED.fullmatch(string), string
        n = len(string)
        assert n <= length
        assert np.all(x[n:, b] == 0)
        expected = [SYMBOLS.index(s) for s in string[1:]] + [-1] * (length - n + 1)
        assert target[:, b].tolist() == expected
    assert len(set(strings)) > (1 if length == 9 else 30)


def test_reber_strings_follow_the_conditioned_distribution():
    length = 13
    exact = {s: p for s, p, _ in embedded_strings(length)}
    total = sum(exact.values())
    x, _ = tasks.EmbeddedReber(length).sample(6000, rng(5))
    counts = Counter(decode(x))
    assert set(counts) <= set(exact)
    observed = np.array([counts.get(s, 0) for s in exact])
    expected = np.array([6000 * p / total for p in exact.values()])
    statistic = ((observed - expected) ** 2 / expected).sum()
    assert statistic < stats.chi2.ppf(0.999, len(exact) - 1)


def test_reber_allowed_symbols_match_the_grammar():
    length = 16
    allowed_of = {s: a for s, _, a in embedded_strings(length)}
    task = tasks.EmbeddedReber(length)
    x, target = task.sample(200, rng(6))
    allowed = task.allowed(target)
    for b, string in enumerate(decode(x)):
        for t, symbols in enumerate(allowed_of[string]):
            assert {SYMBOLS[i] for i in np.flatnonzero(allowed[t, b])} == symbols
        assert not allowed[len(string) - 1:, b].any()


@pytest.mark.parametrize("length", [12, 16])
def test_reber_baseline_is_the_loss_of_the_predictor_that_forgets_the_branch(length):
    # Exact expectation over every string: the predictor gives each symbol the grammar allows
    # equal probability, except at the penultimate step, where it cannot tell T from P.
    numerator = denominator = 0.0
    optimal = 0.0
    for string, p, allowed in embedded_strings(length):
        losses = [math.log(len(a)) for a in allowed]
        optimal += p * sum(losses)
        losses[-2] = math.log(2)
        numerator += p * sum(losses)
        denominator += p * (len(string) - 1)
    task = tasks.EmbeddedReber(length)
    assert task.baseline_loss == pytest.approx(numerator / denominator, rel=1e-12)
    assert task.optimal_loss == pytest.approx(optimal / denominator, rel=1e-12)


def test_reber_baseline_matches_the_loss_on_samples():
    task = tasks.EmbeddedReber(20)
    x, target = task.sample(4000, rng(8))
    allowed = task.allowed(target)
    logits = np.where(allowed, 0.0, -1e3)      # exp(-1e3) is 0 in float64
    # forget the branch: at the step before each final E, T and P alike
    for b, string in enumerate(decode(x)):
        logits[len(string) - 3, b, [SYMBOLS.index("T"), SYMBOLS.index("P")]] = 0.0
    loss, _ = task.loss(logits, target)
    assert loss == pytest.approx(task.baseline_loss, rel=0.02)


def test_reber_solved_needs_every_allowed_symbol_above_every_forbidden_one():
    length = 20
    task = tasks.EmbeddedReber(length)
    x, target = task.sample(50, rng(9))
    strings = decode(x)
    allowed_of = {s: a for s, _, a in embedded_strings(length)}
    outputs = np.full((length, 50, 7), -1.0)
    for b, string in enumerate(strings):
        for t, symbols in enumerate(allowed_of[string]):
            outputs[t, b, [SYMBOLS.index(s) for s in symbols]] = 1.0
    outputs[target < 0] = np.random.default_rng(0).normal(size=(int((target < 0).sum()), 7))
    assert task.solved(outputs, target).all()
    broken = outputs.copy()
    broken[3, 7, SYMBOLS.index("E")] = 0.9     # below the allowed (1.0): still right
    assert task.solved(broken, target).all()
    broken[3, 7, SYMBOLS.index("E")] = 1.0     # a tie with an allowed symbol is not enough
    expected = np.ones(50, bool)
    expected[7] = False
    np.testing.assert_array_equal(task.solved(broken, target), expected)
    # The predictor without long-term memory (T and P alike before the last E) solves none.
    forgetting = outputs.copy()
    for b, string in enumerate(strings):
        forgetting[len(string) - 3, b, [SYMBOLS.index("T"), SYMBOLS.index("P")]] = 1.0
    assert not task.solved(forgetting, target).any()


# --- Temporal order --------------------------------------------------------------------------

ORDER = "abcdXYBE"


def test_temporal_order_sequences_follow_the_1997_layout():
    task = tasks.TemporalOrder(100)
    B = 4000
    x, target = task.sample(B, rng(10))
    assert x.shape == (100, B, 8) and target.shape == (B,)
    assert np.all(x.sum(axis=-1) == 1)
    symbols = np.array([[ORDER[i] for i in column] for column in x.argmax(axis=-1).T])
    first_positions, second_positions = [], []
    for b in range(B):
        row = "".join(symbols[b])
        assert row[0] == "B" and row[-1] == "E"
        marked = [t for t, s in enumerate(row) if s in "XY"]
        assert len(marked) == 2
        assert set(row[1:-1]) - set("XY") <= set("abcd")
        t1, t2 = marked
        assert 10 <= t1 <= 20 and 50 <= t2 <= 60          # as in the paper, at length 100
        first_positions.append(t1)
        second_positions.append(t2)
        assert target[b] == {"XX": 0, "XY": 1, "YX": 2, "YY": 3}[row[t1] + row[t2]]
    assert set(first_positions) == set(range(10, 21))
    assert set(second_positions) == set(range(50, 61))
    counts = np.bincount(target, minlength=4)
    assert stats.chisquare(counts).pvalue > 0.001


def test_temporal_order_baseline_and_solved():
    task = tasks.TemporalOrder(10)
    x, target = task.sample(64, rng(11))
    uniform = np.zeros((10, 64, 4))
    loss, _ = task.loss(uniform, target)
    assert loss == pytest.approx(math.log(4)) and task.baseline_loss == pytest.approx(math.log(4))
    outputs = np.zeros((10, 64, 4))
    outputs[-1, np.arange(64), target] = 1.0
    assert task.solved(outputs, target).all()
    outputs[-1, 5] = np.roll(outputs[-1, 5], 1)
    assert task.solved(outputs, target).tolist() == [b != 5 for b in range(64)]


# --- The copy task ---------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 7, 50])
def test_copy_task_layout_of_arjovsky_et_al(T):
    task = tasks.CopyTask(T)
    x, target = task.sample(32, rng(12))
    assert x.shape == (T + 20, 32, 10) and target.shape == (T + 20, 32)
    assert np.all(x.sum(axis=-1) == 1)
    inputs = x.argmax(axis=-1)
    for b in range(32):
        data = inputs[:10, b]
        assert np.all((1 <= data) & (data <= 8))
        assert np.all(inputs[10:10 + T - 1, b] == 0)           # T - 1 blanks
        assert inputs[10 + T - 1, b] == 9                      # the delimiter
        assert np.all(inputs[T + 10:, b] == 0)                 # 10 more blanks
        assert np.all(target[:T + 10, b] == 0)
        np.testing.assert_array_equal(target[T + 10:, b], data)
    assert set(np.unique(inputs[:10])) == set(range(1, 9))


@pytest.mark.parametrize("T", [1, 30, 100])
def test_copy_baseline_is_the_loss_of_the_memoryless_predictor(T):
    task = tasks.CopyTask(T)
    x, target = task.sample(16, rng(13))
    logits = np.full((T + 20, 16, 9), -np.inf)
    logits[:T + 10, :, 0] = 0.0          # certain of blank until the delimiter has passed
    logits[T + 10:, :, 1:] = 0.0         # then a uniform guess among the 8 symbols
    loss, _ = task.loss(logits, target)
    assert loss == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-12)
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-12)


def test_copy_solved_needs_every_step():
    task = tasks.CopyTask(5)
    _, target = task.sample(8, rng(14))
    outputs = np.eye(9)[target] * 3.0
    assert task.solved(outputs, target).all()
    outputs[-1, 2] = np.roll(outputs[-1, 2], 1)          # one recalled symbol wrong
    outputs[0, 4] = np.roll(outputs[0, 4], 1)            # one blank wrong
    assert task.solved(outputs, target).tolist() == [b not in (2, 4) for b in range(8)]


def test_an_unknown_task_option_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"task 'adding' has no option 'foo'; its options: length"):
        tasks.make("adding", 10, foo=1)
