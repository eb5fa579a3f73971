"""Random search in gatekit compare: the grammar of hyperparameter values, the draws (against
the distributions they claim, and paired across variants), resumption, and the command line's
errors, which name the option, what it takes and what was given."""
import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from gatekit import cli
from gatekit.study import compare, search, sweep

from support import ORDER_TASK, TINY_RUN

# A search as cheap as a run can be: few steps, the grid settings of TINY_RUN otherwise.
TINY_SEARCH = {k: v for k, v in TINY_RUN.items() if k != "lr"}


# --- The grammar -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,text,expected", [
    ("lr", "0.01", 0.01),
    ("lr", 0.5, 0.5),
    ("hidden_size", "16", 16),
    ("batch_size", 32, 32),
    ("lr", "loguniform:1e-4,1e-1", search.Uniform(1e-4, 1e-1, log=True)),
    ("momentum", "uniform:0,0.99", search.Uniform(0, 0.99)),
    ("hidden_size", "loguniform-int:16,128", search.Uniform(16, 128, log=True, integer=True)),
    ("batch_size", "uniform-int:8,64", search.Uniform(8, 64, integer=True)),
    ("batch_size", " choice: 16, 32 ,64", search.Choice([16, 32, 64])),
    ("input_noise", "choice:0,0.5", search.Choice([0, 0.5])),
])
def test_values_and_distributions_parse(name, text, expected):
    parsed = search.parse(name, text)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize("name,text,message", [
    ("lr", "fast", r"^lr must be a number or one of uniform:LOW,HIGH.*got 'fast'$"),
    ("lr", "logunif:1,2", r"^lr must be a number.*got 'logunif:1,2' \(unknown distribution "
                          r"'logunif'\)$"),
    ("lr", "loguniform:1e-4", r"^lr must be loguniform:LOW,HIGH, two values; got "
                              r"'loguniform:1e-4'$"),
    ("lr", "loguniform:0.1,0.01", r"^lr must be loguniform:LOW,HIGH with LOW < HIGH; got"),
    ("lr", "uniform:0,0.1", r"^lr must be a number > 0, every value of 'uniform:0,0.1'; got 0$"),
    ("lr", -1, r"^lr must be a number > 0; got -1$"),
    ("hidden_size", math.inf, r"^hidden_size must be an integer >= 1; got inf$"),
    ("batch_size", "nan", r"^batch_size must be an integer >= 1; got 'nan'$"),
    ("hidden_size", "loguniform:16,128", r"^hidden_size must be an integer: use "
                                         r"loguniform-int:LOW,HIGH; got 'loguniform:16,128'$"),
    ("hidden_size", "12.5", r"^hidden_size must be an integer >= 1; got '12.5'$"),
    ("lr", "uniform-int:1,3", r"^lr must be a real number: use uniform:LOW,HIGH"),
    ("momentum", "uniform:0,1.5", r"^momentum must be a number >= 0 and <= 1, every value of "
                                  r"'uniform:0,1.5'; got 1.5$"),
    ("input_noise", "choice:", r"^input_noise must be a number.*got 'choice:'$"),
    ("clip", "0.1", r"'clip' is not a hyperparameter a search varies"),
])
def test_bad_values_name_the_option_what_it_takes_and_what_was_given(name, text, message):
    with pytest.raises(ValueError, match=message):
        search.parse(name, text)


# --- The draws -------------------------------------------------------------------------------

def draws(space, trials, seed=0):
    return [search.draw_trial(space, seed, k) for k in range(trials)]


def test_draws_follow_their_distributions():
    space = {"lr": search.parse("lr", "loguniform:1e-4,1e-1"),
             "momentum": search.parse("momentum", "uniform:0,0.99"),
             "hidden_size": search.parse("hidden_size", "loguniform-int:16,128"),
             "batch_size": search.parse("batch_size", "choice:16,32,64")}
    drawn = draws(space, 2000)
    lr = np.log10([d["lr"] for d in drawn])
    # log10(lr) is uniform on [-4, -1]; momentum uniform on [0, 0.99] (Kolmogorov-Smirnov).
    assert stats.kstest(lr, stats.uniform(-4, 3).cdf).pvalue > 1e-3
    momentum = [d["momentum"] for d in drawn]
    assert stats.kstest(momentum, stats.uniform(0, 0.99).cdf).pvalue > 1e-3
    assert min(momentum) >= 0 and max(momentum) <= 0.99
    # floor(exp(u)), u uniform on [log 16, log 129): P(H = h) = log((h + 1) / h) / log(129 / 16).
    sizes = np.array([d["hidden_size"] for d in drawn])
    assert sizes.min() >= 16 and sizes.max() <= 128
    for low, high in ((16, 31), (32, 63), (64, 128)):
        share = np.mean((sizes >= low) & (sizes <= high))
        expected = math.log((high + 1) / low) / math.log(129 / 16)
        assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / len(sizes))
    counts = np.bincount([d["batch_size"] for d in drawn])[[16, 32, 64]]
    assert stats.chisquare(counts).pvalue > 1e-3
    assert all(isinstance(d["hidden_size"], int) and isinstance(d["batch_size"], int)
               for d in drawn)
    # Reals are kept to 4 significant digits.
    assert all(d["lr"] == float(f"{d['lr']:.4g}") for d in drawn)


def test_draws_are_seeded_per_trial_and_hyperparameter():
    lr = {"lr": search.parse("lr", "loguniform:1e-4,1e-1")}
    both = {**lr, "hidden_size": search.parse("hidden_size", "uniform-int:4,64")}
    assert draws(lr, 5) == draws(lr, 5) and draws(lr, 5) != draws(lr, 5, seed=1)
    # A longer search keeps the trials of a shorter one; a second distribution leaves the
    # first one's draws as they were.
    assert draws(lr, 8)[:5] == draws(lr, 5)
    assert [d["lr"] for d in draws(both, 5)] == [d["lr"] for d in draws(lr, 5)]


def test_trial_k_of_every_variant_and_task_has_the_same_values_and_seed():
    specs = compare.make_specs(
        ["standard", "janet", "cifg"], [ORDER_TASK, "adding:12"], search="random", trials=4,
        search_seed=7, lr="loguniform:1e-3,1e-1", hidden_size="choice:4,8",
        momentum="uniform:0,0.9", input_noise="uniform:0,0.2", optimizer="nesterov",
        **{k: v for k, v in TINY_SEARCH.items() if k != "hidden_size"})
    assert len(specs) == 2 * 4 * 3
    drawn = ("lr", "hidden_size", "momentum", "input_noise")
    expected = draws({name: search.parse(name, text) for name, text in (
        ("lr", "loguniform:1e-3,1e-1"), ("hidden_size", "choice:4,8"),
        ("momentum", "uniform:0,0.9"), ("input_noise", "uniform:0,0.2"))}, 4, seed=7)
    for spec in specs:
        trial = spec["search"]["trial"]
        assert spec["seed"] == trial and spec["search"]["seed"] == 7
        assert {name: spec[name] for name in drawn} == expected[trial]
        assert spec["optimizer"] == "nesterov" and spec["steps"] == TINY_RUN["steps"]
    assert len({json.dumps(expected[k], sort_keys=True) for k in range(4)}) == 4
    # Trial-major: every variant of a trial before the next trial.
    assert [s["variant"] for s in specs[:6]] == ["standard", "janet", "cifg"] * 2
    assert [s["seed"] for s in specs[:6]] == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("settings,message", [
    ({"lr": "loguniform:1e-3,1e-1"}, r"lr: 'loguniform:0.001,0.1' is a distribution, which "
                                      r"only a random search draws from"),
    ({"search": "random", "lr": "loguniform:1e-3,1e-1"}, r"trials: a random search needs a "
                                                         r"count of trials >= 1.*got None"),
    ({"search": "random", "trials": 2, "seeds": 3, "lr": "loguniform:1e-3,1e-1"},
     r"seeds: a random search trains trial k from seed k; give trials, not seeds"),
    ({"search": "random", "trials": 2, "lr": 0.01}, r"needs a distribution for at least one"),
    ({"search": "random", "trials": 2, "lr": [0.01, 0.02]}, r"lr: a random search takes one "
                                                            r"value or one distribution"),
    ({"search": "sobol", "trials": 2}, r"search must be one of 'grid', 'random'; got 'sobol'"),
    ({"trials": 2}, r"trials: a grid runs every combination"),
])
def test_make_specs_refuses_what_does_not_fit_a_search(settings, message):
    with pytest.raises(ValueError, match=message):
        compare.make_specs(["standard"], [ORDER_TASK], **settings)


def test_momentum_belongs_to_the_sgd_optimizers():
    with pytest.raises(ValueError, match=r"momentum is the SGD optimizers'.*got momentum=0.5 "
                                         r"with optimizer 'adam'"):
        sweep.make_spec("standard", ORDER_TASK, 0, momentum=0.5)
    with pytest.raises(ValueError, match=r"optimizer must be one of 'adam', 'sgd', "
                                         r"'nesterov'; got 'rmsprop'"):
        sweep.make_spec("standard", ORDER_TASK, 0, optimizer="rmsprop")


def test_new_settings_at_their_defaults_keep_the_keys_of_older_specs():
    older = sweep.make_spec("standard", ORDER_TASK, 0, **TINY_RUN)
    explicit = sweep.make_spec("standard", ORDER_TASK, 0, optimizer="adam", momentum=None,
                               input_noise=0.0, search=None, **TINY_RUN)
    assert explicit == older and sweep.spec_key(explicit) == sweep.spec_key(older)
    assert not {"optimizer", "momentum", "input_noise", "search"} & set(older)


# --- Runs ------------------------------------------------------------------------------------

def test_a_search_runs_resumes_and_extends(tmp_path):
    settings = dict(search="random", search_seed=3, lr="loguniform:1e-3,1e-1",
                    input_noise="uniform:0,0.1", out=str(tmp_path), workers=0, plots=False,
                    progress=False, baseline="standard", **TINY_SEARCH)
    first = compare.compare(["standard", "janet"], [ORDER_TASK], trials=2, **settings)
    assert (first.ran, first.skipped) == (4, 0)
    assert [(r["variant"], r["settings"], r["seeds"]) for r in first.rows] == [
        ("standard", "random search", 2), ("janet", "random search", 2)]
    # Trial k of both variants trained with the same values and the same data.
    by_trial = {}
    for record in first.records:
        spec = record["spec"]
        by_trial.setdefault(spec["seed"], set()).add((spec["lr"], spec["input_noise"]))
    assert all(len(values) == 1 for values in by_trial.values()) and len(by_trial) == 2
    longer = compare.compare(["standard", "janet"], [ORDER_TASK], trials=3, **settings)
    assert (longer.ran, longer.skipped) == (2, 4)
    assert [r["seeds"] for r in longer.rows] == [3, 3]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["lr"] == "loguniform:0.001,0.1"
    [entry] = summary["variance_explained"]
    assert entry["runs"] == 6 and set(entry["shares"]) == {"lr", "input_noise", "variant"}


def test_input_noise_and_nesterov_change_the_run_and_are_recorded(tmp_path):
    plain = sweep.run_one(sweep.make_spec("standard", ORDER_TASK, 0, **TINY_RUN))
    noisy = sweep.run_one(sweep.make_spec("standard", ORDER_TASK, 0, input_noise=0.3,
                                          **TINY_RUN))
    nesterov = sweep.run_one(sweep.make_spec("standard", ORDER_TASK, 0, optimizer="nesterov",
                                             momentum=0.5, **TINY_RUN))
    assert noisy["spec"]["input_noise"] == 0.3 and nesterov["spec"]["momentum"] == 0.5
    # The untrained model is the same; training differs.
    assert plain["curve"]["eval_loss"][0] == noisy["curve"]["eval_loss"][0] \
        == nesterov["curve"]["eval_loss"][0]
    assert len({plain["final_loss"], noisy["final_loss"], nesterov["final_loss"]}) == 3


# --- The command line ------------------------------------------------------------------------

@pytest.mark.parametrize("arguments,message", [
    (["--lr", "logunif:1e-4,1e-1"], r"--lr must be a number or one of uniform:LOW,HIGH.*got "
                                    r"'logunif:1e-4,1e-1'"),
    (["--hidden-size", "loguniform:16,128"], r"--hidden-size must be an integer: use "
                                             r"loguniform-int:LOW,HIGH; got "
                                             r"'loguniform:16,128'"),
    (["--momentum", "uniform:0,2", "--optimizer", "sgd"], r"--momentum must be a number >= 0 "
                                                          r"and <= 1, every value of "
                                                          r"'uniform:0,2'; got 2"),
    (["--batch-size", "choice:16,x"], r"--batch-size must be a number.*got 'choice:16,x'"),
    (["--lr", "loguniform:1e-4,1e-1"], r"lr: 'loguniform:0.0001,0.1' is a distribution, which "
                                       r"only a random search draws from"),
    (["--search", "random", "--lr", "loguniform:1e-4,1e-1"], r"trials: a random search needs"),
])
def test_command_line_errors_name_the_option(tmp_path, capsys, arguments, message):
    code = cli.main(["compare", "standard", "--task", "temporal_order:10", "--out",
                     str(tmp_path), "--workers", "0", *arguments])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("gatekit compare: ")
    assert re.search(message, err), err
    assert not (tmp_path / "runs.jsonl").exists()


def test_command_line_random_search(tmp_path, capsys):
    argv = ["compare", "standard", "cifg", "--task", "temporal_order:10", "--search", "random",
            "--trials", "2", "--lr", "loguniform:1e-3,1e-1", "--hidden-size", "choice:4,8",
            "--steps", "20", "--eval-every", "10", "--eval-size", "32", "--baseline",
            "standard", "--out", str(tmp_path), "--workers", "0", "--no-plots",
            "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "vs standard: p (Holm)" in out.splitlines()[0]
    assert "random search" in out and "variance of the final loss explained" in out
    assert "4 runs now, 0 from before" in out
    assert cli.main(argv) == 0
    assert "0 runs now, 4 from before" in capsys.readouterr().out
