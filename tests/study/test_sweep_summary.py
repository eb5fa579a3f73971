"""``gatekit compare`` summaries: runs of zero training steps, settings out of range, several
commands into one folder, and failed runs, which are shown as failed rather than left out."""
import csv
import json
import math

import numpy as np
import pytest

import gatekit
from gatekit.study import compare
from gatekit.study import sweep
from gatekit.study import tasks
from gatekit.train import training

from support import ORDER_TASK, TINY_RUN, PythonForget, make_plugin


def untrained_loss(seed):
    """The held-out cross-entropy of the untrained model of ``seed`` on temporal_order:10,
    written out here (TINY_RUN's hidden size and held-out batch; b_f starts at 1)."""
    task = tasks.TemporalOrder(10)
    cell = gatekit.Cell(8, TINY_RUN["hidden_size"], dtype=np.float32, seed=seed)
    cell.params["b_f"][...] = 1.0
    model = training.Model(cell, 4, seed=seed)
    x, target = task.sample(TINY_RUN["eval_size"], np.random.default_rng([seed, 2]))
    logits = model(x)[-1].astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(target)), target])


def test_zero_step_runs_are_summarised_and_resumed(tmp_path):
    out = str(tmp_path)
    settings = {**TINY_RUN, "steps": 0, "solve_rate": 0.9}
    result = compare.compare(["standard"], [ORDER_TASK], seeds=[3], out=out, workers=0, plots=False,
                             progress=False, **settings)
    [row] = result.rows
    assert row["final_loss_median"] == pytest.approx(untrained_loss(seed=3), rel=1e-5)
    assert row["ms_per_step"] is None and row["steps"] == 0
    line = result.table().splitlines()[2]
    assert line.split()[-1] == "-"                      # no time per step: no step was taken
    again = compare.compare(["standard"], [ORDER_TASK], seeds=[3], out=out, workers=0, plots=False,
                            progress=False, **settings)
    assert (again.ran, again.skipped) == (0, 1) and again.rows == result.rows


def test_a_run_solved_before_training_stops_at_zero_steps(tmp_path):
    # Four classes: an untrained model gets about a quarter right, above a 1% solve rate.
    result = compare.compare(["standard"], [ORDER_TASK], seeds=1, out=str(tmp_path), workers=0,
                             plots=False, progress=False,
                             **{**TINY_RUN, "solve_rate": 0.01, "stop_when_solved": True})
    [record] = result.records
    assert record["steps_run"] == 0 and record["sequences_to_solve"] == 0
    [row] = result.rows
    assert row["solved"] == 1 and row["sequences_to_solve"] == 0 and row["ms_per_step"] is None
    assert "1/1" in result.table()


@pytest.mark.parametrize("setting,value", [
    ("solve_rate", 1.5), ("solve_rate", 0), ("solve_rate", math.nan), ("steps", -1),
    ("steps", 2.5), ("steps", True), ("batch_size", 0), ("hidden_size", 0), ("eval_every", 0),
    ("eval_size", 0), ("lr", 0.0), ("lr", -0.1), ("lr", math.inf), ("clip", -1.0),
    ("forget_bias", math.nan), ("dtype", "int8"), ("stop_when_solved", "yes"),
])
def test_settings_out_of_range_are_refused_naming_them(setting, value, tmp_path):
    with pytest.raises(ValueError, match=rf"^{setting} must be .*; got {value!r}"):
        compare.compare(["standard"], [ORDER_TASK], seeds=1, out=str(tmp_path), workers=0,
                        plots=False, progress=False, **{**TINY_RUN, setting: value})
    assert not (tmp_path / "runs.jsonl").exists()


@pytest.mark.parametrize("seeds", [0, -2, [], [1.5], [-1], "3", True])
def test_seeds_out_of_range_are_refused(seeds, tmp_path):
    with pytest.raises(ValueError, match=r"^seeds must be"):
        compare.compare(["standard"], [ORDER_TASK], seeds=seeds, out=str(tmp_path), workers=0,
                        plots=False, progress=False, **TINY_RUN)


def test_a_negative_worker_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^workers must be an integer >= 0; got -1"):
        compare.compare(["standard"], [ORDER_TASK], seeds=1, out=str(tmp_path), workers=-1,
                        plots=False, progress=False, **TINY_RUN)


def test_a_setting_in_a_task_is_checked_too(tmp_path):
    with pytest.raises(ValueError, match=r"^solve_rate must be .*; got 2"):
        compare.compare(["standard"], ["temporal_order:10,solve_rate=2"], seeds=1,
                        out=str(tmp_path), workers=0, plots=False, progress=False, **TINY_RUN)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_the_summary_and_plots_cover_every_command_into_the_folder(tmp_path):
    plotting = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plotting = False
    out = str(tmp_path)
    other_task = {"name": "temporal_order", "length": 12}
    compare.compare(["standard"], [ORDER_TASK], seeds=1, out=out, workers=0, plots=plotting,
                    progress=False, **TINY_RUN)
    second = compare.compare(["janet"], [other_task], seeds=1, out=out, workers=0,
                             plots=plotting, progress=False, **TINY_RUN)
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 2
    expected = {(f"temporal_order:{r['spec']['task']['length']}", r["spec"]["variant"],
                 r["final_loss"]) for r in records}
    rows = read_csv(tmp_path / "summary.csv")
    assert {(r["task"], r["variant"], float(r["final_loss_median"])) for r in rows} == expected
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["task"], r["variant"], r["final_loss_median"]) for r in summary["rows"]} \
        == expected
    # This command's runs come first.
    assert [r["variant"] for r in second.rows] == ["janet", "standard"]
    if plotting:
        names = sorted(path.rsplit("/", 1)[-1] for path in second.files["plots"])
        assert names == ["curves-temporal_order-10.png", "curves-temporal_order-12.png",
                         "final-loss-temporal_order-10.png", "final-loss-temporal_order-12.png"]


def test_the_summary_keeps_the_last_record_of_a_run(tmp_path):
    out = str(tmp_path)
    first = compare.compare(["standard"], [ORDER_TASK], seeds=1, out=out, workers=0, plots=False,
                            progress=False, **TINY_RUN)
    # The same run again, as if with other code: the same spec under another run key.
    [record] = first.records
    newer = {**record, "key": "0" * 16, "final_loss": 123.0}
    with open(tmp_path / "runs.jsonl", "a", encoding="utf-8") as stream:
        stream.write(json.dumps(newer) + "\n")
    again = compare.compare(["standard"], [ORDER_TASK], seeds=1, out=out, workers=0, plots=False,
                            progress=False, **TINY_RUN)
    assert again.ran == 0
    [row] = again.rows
    assert row["seeds"] == 1 and row["final_loss_median"] == 123.0


def test_runs_failing_in_the_workers_are_warned_about_and_shown(register, tmp_path):
    # A gate registered at run time exists in this process only: spawned workers lack it.
    register(make_plugin(gates=[PythonForget]), name="only-here")
    out = str(tmp_path)
    variants = ["standard", "standard+forget=python_forget"]
    with pytest.warns(sweep.RunsFailedWarning,
                      match=r"1 of 2 runs failed: standard\+forget=python_forget on "
                            r"temporal_order:10 seed 0: ValueError: unknown forget gate "
                            r"'python_forget'"):
        result = compare.compare(variants, [ORDER_TASK], seeds=1, out=out, workers=1, plots=False,
                                 progress=False, **TINY_RUN)
    assert [(spec["variant"], type(error).__name__) for spec, error in result.failed] == [
        ("standard+forget=python_forget", "ValueError")]
    by_variant = {row["variant"]: row for row in result.rows}
    assert set(by_variant) == set(variants)
    failed = by_variant["standard+forget=python_forget"]
    assert (failed["seeds"], failed["failed"], failed["solved"]) == (1, 1, 0)
    assert failed["final_loss_median"] is None and failed["params"] is None
    assert (by_variant["standard"]["seeds"], by_variant["standard"]["failed"]) == (1, 0)
    line = next(line for line in result.table().splitlines() if "python_forget" in line)
    assert "0/1 (1 FAILED)" in line
    rows = {r["variant"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert rows["standard+forget=python_forget"]["failed"] == "1"
    # In this process the gate exists: the failed run runs again, the other is kept.
    rerun = compare.compare(variants, [ORDER_TASK], seeds=1, out=out, workers=0, plots=False,
                            progress=False, **TINY_RUN)
    assert (rerun.ran, rerun.skipped, rerun.failed) == (1, 1, [])
    assert [row["failed"] for row in rerun.rows] == [0, 0]
    assert np.isfinite(rerun.rows[1]["final_loss_median"])
