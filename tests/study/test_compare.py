"""gatekit compare and the sweep under it: variant syntax, one run against a training loop written
out here, the results file across interruptions and crashes (runs counted as they execute),
the local process pool, a real Dask LocalCluster on loopback, the summary against numbers
computed here from the records, and the command line."""
import json
import math
import os
import statistics
import threading
import time

import numpy as np
import pytest

import gatekit
from gatekit import cli
from gatekit.nn import losses
from gatekit.nn import optimisers as optim
from gatekit.nn.optimisers import clip_grad_norm
from gatekit.study import compare
from gatekit.study import sweep
from gatekit.study import tasks
from gatekit.train import training

from support import ORDER_TASK, TINY_RUN, needs

RUN_ONE = sweep.run_one


def tiny_specs(variants=("standard", "janet"), seeds=(0, 1), **settings):
    return [sweep.make_spec(v, ORDER_TASK, s, **{**TINY_RUN, **settings})
            for v in variants for s in seeds]


def comparable(record):
    """What a run computes, without timings and where it ran."""
    return {k: v for k, v in record.items()
            if k not in ("step_seconds", "seconds", "worker")}


def cell_parameters(blocks, D, H):
    """Each block has W (H, H + D) and b (H,)."""
    return blocks * (H * (H + D) + H)


# --- Variants and tasks as text --------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("standard", ("standard", {})),
    ("standard+forget=peephole", ("standard", {"forget": "peephole"})),
    (" course + learn=coupled + use=peephole ",
     ("course", {"learn": "coupled", "use": "peephole"})),
])
def test_parse_variant(text, expected):
    assert sweep.parse_variant(text) == expected


@pytest.mark.parametrize("text,message", [
    ("standrd", "unknown variant 'standrd'"),
    ("standard+forget", "not role=gate"),
    ("standard+forgt=peephole", "unknown role 'forgt'"),
    ("standard+forget=peepole", "unknown forget gate 'peepole'"),
    ("standard+use=course+use=peephole", "given twice"),
    ("", "variant name"),
])
def test_parse_variant_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_variant(text)


def test_composition_builds_the_named_gates():
    cell = sweep.make_cell("course+learn=coupled+use=peephole", 3, 4, seed=0)
    assert cell.gate_names == {"forget": "standard", "learn": "coupled", "remember": "standard",
                               "use": "peephole"}
    same = gatekit.Cell(3, 4, "course", learn="coupled", use="peephole", seed=0)
    assert set(cell.params) == set(same.params)
    for name in cell.params:
        np.testing.assert_array_equal(cell.params[name], same.params[name])
    # A sweep runs many runs at once: each run's cell stays on one thread.
    assert cell.threads == 1


@pytest.mark.parametrize("text,expected", [
    ("adding", ({"name": "adding"}, {})),
    ("adding:50", ({"name": "adding", "length": 50}, {})),
    ("copy:5,steps=30", ({"name": "copy", "length": 5}, {"steps": 30})),
    ("adding:length=50,tolerance=0.1,lr=0.003,stop_when_solved=true",
     ({"name": "adding", "length": 50, "tolerance": 0.1},
      {"lr": 0.003, "stop_when_solved": True})),
])
def test_parse_task(text, expected):
    assert compare.parse_task(text) == expected


def test_parse_task_refuses_a_bare_value_after_the_first():
    with pytest.raises(ValueError, match="not key=value"):
        compare.parse_task("adding:50,60")


def test_make_spec_refuses_unknown_settings_and_tasks():
    with pytest.raises(TypeError, match="unknown run settings"):
        sweep.make_spec("standard", "adding", 0, learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown task"):
        sweep.make_spec("standard", "adder", 0)


# --- One run, against a training loop written out here -----------------------------------------

def hand_written_run(variant_kwargs, seed, steps, hidden_size, batch_size, eval_every, eval_size,
                     lr, solve_rate, stop_when_solved=False):
    task = tasks.TemporalOrder(10)
    cell = gatekit.Cell(8, hidden_size, dtype=np.float32, seed=seed, **variant_kwargs)
    cell.params["b_f"][...] = 1.0
    model = training.Model(cell, 4, seed=seed)
    adam = optim.Adam(model.params, lr=lr)
    train_rng = np.random.default_rng([seed, 1])
    x_eval, t_eval = task.sample(eval_size, np.random.default_rng([seed, 2]))

    def evaluate():
        logits = model(x_eval)[-1].astype(np.float64)
        log_p = logits - logits.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        loss = -np.mean(log_p[np.arange(eval_size), t_eval])
        return loss, np.mean(logits.argmax(axis=1) == t_eval)

    curve, solved_at = [evaluate()], None
    for step in range(1, steps + 1):
        x, target = task.sample(batch_size, train_rng)
        _, grads = model.loss_and_grads(x, target, losses.SoftmaxCrossEntropy(last_step_only=True))
        clip_grad_norm(grads, 1.0)
        adam.step(grads)
        if step % eval_every == 0:
            curve.append(evaluate())
            if solved_at is None and curve[-1][1] >= solve_rate:
                solved_at = step * batch_size
                if stop_when_solved:
                    break
    return curve, solved_at, step


@pytest.mark.parametrize("variant,kwargs", [
    ("standard", {}), ("standard+forget=peephole", {"forget": "peephole"}),
    ("janet", {"variant": "janet"})])
def test_run_one_matches_a_hand_written_training_loop(variant, kwargs):
    spec = sweep.make_spec(variant, ORDER_TASK, 3, steps=100, hidden_size=8, batch_size=16,
                           eval_every=20, eval_size=64, lr=0.02, solve_rate=0.9)
    record = sweep.run_one(spec)
    curve, solved_at, _ = hand_written_run(kwargs, 3, 100, 8, 16, 20, 64, 0.02, 0.9)
    assert record["curve"]["sequences"] == [20 * 16 * i for i in range(6)]
    np.testing.assert_allclose(record["curve"]["eval_loss"], [c[0] for c in curve], rtol=1e-5)
    assert record["curve"]["solved_fraction"] == [c[1] for c in curve]
    assert record["final_loss"] == pytest.approx(curve[-1][0], rel=1e-5)
    assert solved_at is not None and 0 < min(c[1] for c in curve) < 0.9     # not vacuous
    assert record["solved"] and record["sequences_to_solve"] == solved_at
    assert record["steps_run"] == 100 and record["baseline_loss"] == pytest.approx(math.log(4))
    blocks = 2 if variant == "janet" else 4
    peepholes = 8 if variant == "standard+forget=peephole" else 0
    assert record["params"] == cell_parameters(blocks, 8, 8) + peepholes
    assert isinstance(record["step_seconds"], float)        # recorded; its value is a time
    json.dumps(record, allow_nan=False)


def test_run_one_stops_when_solved():
    spec = sweep.make_spec("standard", ORDER_TASK, 3, steps=300, hidden_size=8, batch_size=16,
                           eval_every=20, eval_size=64, lr=0.02, solve_rate=0.9,
                           stop_when_solved=True)
    record = sweep.run_one(spec)
    curve, solved_at, steps = hand_written_run({}, 3, 300, 8, 16, 20, 64, 0.02, 0.9,
                                               stop_when_solved=True)
    assert steps < 300 and record["steps_run"] == steps
    assert record["sequences_to_solve"] == solved_at == record["curve"]["sequences"][-1]
    assert record["final_loss"] == pytest.approx(curve[-1][0], rel=1e-5)
    assert record["stopped"] == f"solved after {steps} steps"


def test_never_solved_run_reports_none():
    record = sweep.run_one(sweep.make_spec("standard", {"name": "copy", "length": 5}, 0,
                                           steps=10, eval_every=5, eval_size=16, hidden_size=4))
    assert record["solved"] is False and record["sequences_to_solve"] is None
    assert record["steps_run"] == 10


# --- The results file: interruptions, crashes, failures ----------------------------------------

class Counting:
    """Stands in for sweep.run_one in this process: counts the specs it runs, and raises
    ``error`` when it reaches the ``fail_at``-th call or a spec in ``fail_keys``."""

    def __init__(self, fail_at=None, error=KeyboardInterrupt, fail_keys=()):
        self.calls, self.fail_at, self.error, self.fail_keys = [], fail_at, error, set(fail_keys)
        self.real = RUN_ONE

    def __call__(self, spec):
        self.calls.append(sweep.spec_key(spec))
        if len(self.calls) == self.fail_at or sweep.spec_key(spec) in self.fail_keys:
            raise self.error("stopped here by the test")
        return self.real(spec)


def lines(path):
    with open(path, encoding="utf-8") as stream:
        return stream.read().split("\n")


def spec_keys_done(path):
    """The spec keys of the finished runs in a results file."""
    return sorted(sweep.spec_key(r["spec"]) for r in sweep.read_results(path).values())


def test_interrupted_and_crashed_sweep_resumes_running_only_what_is_missing(tmp_path,
                                                                            monkeypatch):
    specs = tiny_specs()
    keys = [sweep.spec_key(s) for s in specs]
    path = tmp_path / "runs.jsonl"

    interrupted = Counting(fail_at=3)                       # Ctrl-C during the third run
    monkeypatch.setattr(sweep, "run_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(specs, path, workers=0, progress=False)
    assert interrupted.calls == keys[:3]
    written = [json.loads(line) for line in lines(path) if line]
    assert [sweep.spec_key(r["spec"]) for r in written] == keys[:2]
    # A crash in the middle of writing the third record leaves a partial line.
    third = RUN_ONE(specs[2])
    partial = json.dumps(third)[:len(json.dumps(third)) // 2]
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(partial)

    resumed = Counting()
    monkeypatch.setattr(sweep, "run_one", resumed)
    with pytest.warns(sweep.ResultsWarning, match=r"runs.jsonl, line 3: skipped: it is not "
                                                  r"complete JSON"):
        outcome = sweep.run_sweep(specs, path, workers=0, progress=False)
    assert resumed.calls == keys[2:]                        # only the two missing runs
    assert (outcome.ran, outcome.skipped, outcome.failed) == (2, 2, [])
    assert [sweep.spec_key(r["spec"]) for r in outcome] == keys
    text = lines(path)
    assert text[2] == partial and text[-1] == ""             # kept apart, on its own line
    with pytest.warns(sweep.ResultsWarning, match="line 3"):
        assert spec_keys_done(path) == sorted(keys)

    again = Counting()
    monkeypatch.setattr(sweep, "run_one", again)
    with pytest.warns(sweep.ResultsWarning, match="line 3"):
        outcome = sweep.run_sweep(specs, path, workers=0, progress=False)
    assert again.calls == [] and (outcome.ran, outcome.skipped) == (0, 4)

    # The resumed records are those of an uninterrupted sweep.
    fresh = sweep.run_sweep(specs, tmp_path / "fresh.jsonl", workers=0, progress=False)
    assert [comparable(r) for r in outcome] == [comparable(r) for r in fresh]


def test_failed_run_is_reported_left_out_and_run_again(tmp_path, monkeypatch):
    specs = tiny_specs()
    keys = [sweep.spec_key(s) for s in specs]
    path = tmp_path / "runs.jsonl"
    failing = Counting(error=RuntimeError, fail_keys=[keys[1]])
    monkeypatch.setattr(sweep, "run_one", failing)
    with pytest.warns(sweep.RunsFailedWarning,
                      match="1 of 4 runs failed: standard on temporal_order:10 seed 1: "
                            "RuntimeError: stopped here by the test"):
        outcome = sweep.run_sweep(specs, path, workers=0, progress=False)
    assert failing.calls == keys
    assert [(sweep.spec_key(s), str(e)) for s, e in outcome.failed] == [
        (keys[1], "stopped here by the test")]
    assert spec_keys_done(path) == sorted(keys[:1] + keys[2:])
    [failure] = [r for r in sweep.read_records(path) if r["status"] == "failed"]
    assert sweep.spec_key(failure["spec"]) == keys[1]
    assert failure["error"] == "RuntimeError: stopped here by the test"
    retry = Counting()
    monkeypatch.setattr(sweep, "run_one", retry)
    outcome = sweep.run_sweep(specs, path, workers=0, progress=False)
    assert retry.calls == [keys[1]] and outcome.failed == [] and len(outcome) == 4


def test_results_file_is_locked_while_a_sweep_writes_it(tmp_path):
    path = tmp_path / "runs.jsonl"
    with sweep.ResultsFile(path):
        with pytest.raises(RuntimeError, match="in use by another sweep"):
            sweep.ResultsFile(path)
    with sweep.ResultsFile(path):         # free again once closed
        pass


def test_results_reader_skips_garbage_and_failed_records(tmp_path):
    path = tmp_path / "runs.jsonl"
    first, second = ({**fake_record("standard", 0, 0.1, None), "key": "a", "status": "ok",
                      "v": v} for v in (1, 2))
    failed = {"key": "b", "status": "failed", "spec": first["spec"], "error": "E: x"}
    path.write_text("\n".join([json.dumps(first), "not json", "[1, 2]",
                               json.dumps(failed), json.dumps(second), '{"key": "c", "sta']))
    with pytest.warns(sweep.ResultsWarning) as caught:
        assert sweep.read_results(path) == {"a": second}
    assert [str(w.message).split(": skipped")[0] for w in caught] == [
        f"{path}, line {n}" for n in (2, 3, 6)]


# --- Executors: a local process pool and a Dask cluster ----------------------------------------

def test_local_process_pool_runs_specs_in_other_processes(tmp_path):
    specs = tiny_specs()
    outcome = sweep.run_sweep(specs, tmp_path / "runs.jsonl", workers=2, progress=False)
    assert outcome.ran == 4 and not outcome.failed
    pids = {int(r["worker"].rsplit(":", 1)[1]) for r in outcome}
    assert os.getpid() not in pids
    here = [comparable(sweep.run_one(spec)) for spec in specs]
    assert [comparable(r) for r in outcome] == here


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = needs("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield cluster, client


def test_dask_cluster_runs_the_same_code_and_resumes(dask_cluster, tmp_path):
    cluster, client = dask_cluster
    out = tmp_path / "dask"
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    first = compare.compare(["standard", "janet"], [ORDER_TASK], seeds=2, out=str(out),
                            client=client, plots=False, progress=False, **TINY_RUN)
    assert (first.ran, first.skipped, first.failed) == (4, 0, [])
    assert {int(r["worker"].rsplit(":", 1)[1]) for r in first.records} <= worker_pids
    here = [comparable(sweep.run_one(spec)) for spec in tiny_specs()]
    assert [comparable(r) for r in first.records] == here

    # The same comparison with one more seed, through the scheduler's address: only the new
    # seed's runs execute.
    more = compare.compare(["standard", "janet"], [ORDER_TASK], seeds=3, out=str(out),
                           scheduler=cluster.scheduler_address, plots=False, progress=False,
                           **TINY_RUN)
    assert (more.ran, more.skipped) == (2, 4)
    assert sorted(r["spec"]["seed"] for r in more.records) == [0, 0, 1, 1, 2, 2]
    assert len([line for line in lines(out / "runs.jsonl") if line]) == 6


def test_dask_sweep_survives_a_lost_worker(dask_cluster, tmp_path):
    cluster, client = dask_cluster
    specs = [sweep.make_spec(v, {"name": "adding", "length": 60}, s, steps=300, hidden_size=16,
                             eval_every=100, eval_size=32)
             for v in ("standard", "cifg") for s in (0, 1, 2)]
    path = tmp_path / "runs.jsonl"
    killed = []

    def kill_a_busy_worker_after_the_first_record():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().count("\n") >= 1:
                busy = [address for address, keys in client.processing().items() if keys]
                if busy:
                    pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                    os.kill(pid, 9)
                    killed.append(pid)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_worker_after_the_first_record)
    killer.start()
    outcome = sweep.run_sweep(specs, path, executor=client, progress=False)
    killer.join()
    assert killed, "no worker was busy after the first record"
    # Dask reruns the lost worker's run elsewhere; every run ends up in the file, once.
    assert outcome.failed == [] and outcome.ran == 6
    keys = [sweep.spec_key(json.loads(line)["spec"]) for line in lines(path) if line]
    assert sorted(keys) == sorted(sweep.spec_key(s) for s in specs)
    client.wait_for_workers(2, timeout=60)


# --- The summary, the files and the command line -----------------------------------------------

def fake_record(variant, seed, final, solved_at, params=100, task="adding:100"):
    name, length = task.split(":")
    return {"spec": {**sweep.SPEC_DEFAULTS, "variant": variant, "seed": seed,
                     "task": {"name": name, "length": int(length)},
                     "lr": 0.01, "hidden_size": 32, "batch_size": 16, "steps": 10},
            "final_loss": final, "baseline_loss": 1 / 6, "solved": solved_at is not None,
            "sequences_to_solve": solved_at, "step_seconds": 0.001 * (seed + 1),
            "params": params, "curve": {"sequences": [0, 10], "eval_loss": [0.2, final]}}


def test_summary_rows_against_statistics_of_the_records():
    records = [fake_record("standard", 0, 0.01, 3000), fake_record("standard", 1, 0.03, None),
               fake_record("standard", 2, 0.02, 5000), fake_record("standard", 3, None, None),
               fake_record("nfg", 0, 0.1, None, params=90)]
    rows = compare.summarize(records)
    assert [(r["task"], r["variant"]) for r in rows] == [("adding:100", "standard"),
                                                         ("adding:100", "nfg")]
    standard = rows[0]
    assert standard["seeds"] == 4 and standard["diverged"] == 1
    assert standard["final_loss_median"] == statistics.median([0.01, 0.03, 0.02])
    assert (standard["final_loss_min"], standard["final_loss_max"]) == (0.01, 0.03)
    assert standard["solved"] == 2 and standard["solved_share"] == 0.5
    assert standard["sequences_to_solve"] == statistics.median([3000, 5000])
    assert standard["ms_per_step"] == pytest.approx(statistics.median([1, 2, 3, 4]))
    assert rows[1]["sequences_to_solve"] is None and rows[1]["params"] == 90
    table = compare.format_table(rows).splitlines()
    assert "standard" in table[2] and "2/4" in table[2] and "4,000" in table[2]
    assert "1 diverged" in table[2]
    assert "nfg" in table[3] and "0/1" in table[3]


def test_hyperparameter_lists_are_swept_and_labelled(tmp_path):
    result = compare.compare(["standard"], [ORDER_TASK], seeds=1, out=str(tmp_path), workers=0,
                             plots=False, progress=False, **{**TINY_RUN, "lr": [0.01, 0.02]})
    assert [r["settings"] for r in result.rows] == ["lr=0.01", "lr=0.02"]
    assert sorted(r["spec"]["lr"] for r in result.records) == [0.01, 0.02]


def test_curves_keep_the_last_value_of_runs_that_stopped_early():
    long = fake_record("standard", 0, 0.5, None)
    long["curve"] = {"sequences": [0, 10, 20, 30], "eval_loss": [1.0, 0.8, 0.6, 0.5]}
    short = fake_record("standard", 1, 0.1, 10)
    short["curve"] = {"sequences": [0, 10], "eval_loss": [1.0, 0.1]}
    grid, matrix = compare.curve_matrix([long, short])
    assert grid.tolist() == [0, 10, 20, 30]
    assert matrix.tolist() == [[1.0, 0.8, 0.6, 0.5], [1.0, 0.1, 0.1, 0.1]]


def test_command_line_compare_writes_table_files_plots_and_resumes(tmp_path, capsys):
    needs("matplotlib")
    out = tmp_path / "cmp"
    argv = ["compare", "standard", "janet", "--task", "temporal_order:10", "--seeds", "2",
            "--steps", "40", "--eval-every", "20", "--eval-size", "64", "--hidden-size", "8",
            "--lr", "0.02", "--solve-rate", "0.9", "--out", str(out), "--workers", "0"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "runs 4/4" in captured.err                        # the progress bar
    records = [json.loads(line) for line in lines(out / "runs.jsonl") if line]
    assert len(records) == 4
    table = captured.out.splitlines()
    assert table[0].split()[:3] == ["task", "variant", "params"]
    for variant, blocks in (("standard", 4), ("janet", 2)):
        ours = [r for r in records if r["spec"]["variant"] == variant]
        row = next(line for line in table if line.split()[1:2] == [variant])
        finals = [r["final_loss"] for r in ours]
        solved = sum(r["solved"] for r in ours)
        assert f"{cell_parameters(blocks, 8, 8):,}" in row
        assert f"{statistics.median(finals):.3g}" in row and f"{solved}/2" in row
    assert "4 runs now, 0 from before" in captured.out

    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["variants"] == ["standard", "janet"]
    assert [r["variant"] for r in summary["rows"]] == ["standard", "janet"]
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,variant,settings,seeds,failed,final_loss_median")
    assert len(csv_lines) == 3
    for name in ("curves-temporal_order-10.png", "final-loss-temporal_order-10.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    mask = os.umask(0)
    os.umask(mask)
    for name in ("summary.csv", "summary.json", "curves-temporal_order-10.png"):
        assert os.stat(out / name).st_mode & 0o777 == 0o666 & ~mask

    assert cli.main(argv + ["--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "0 runs now, 4 from before" in captured.out and captured.err == ""
    assert len([line for line in lines(out / "runs.jsonl") if line]) == 4


def test_command_line_refuses_a_bad_variant(tmp_path, capsys):
    code = cli.main(["compare", "standard+gate=x", "--out", str(tmp_path), "--workers", "0"])
    assert code == 2
    assert "unknown role" in capsys.readouterr().err


def test_partial_specs_get_the_keys_of_complete_ones(tmp_path, monkeypatch):
    partial = {"variant": "standard", "task": "temporal_order", "seed": 0, "steps": 4,
               "eval_every": 2, "eval_size": 8, "hidden_size": 4}
    complete = sweep.make_spec("standard", {"name": "temporal_order", "length": 100}, 0,
                               steps=4, eval_every=2, eval_size=8, hidden_size=4)
    path = tmp_path / "runs.jsonl"
    first = Counting()
    monkeypatch.setattr(sweep, "run_one", first)
    [record] = sweep.run_sweep([partial], path, workers=0, progress=False)
    assert len(first.calls) == 1
    assert record["key"] == sweep.run_key(complete, sweep.provenance(complete))
    again = Counting()
    monkeypatch.setattr(sweep, "run_one", again)
    sweep.run_sweep([complete], path, workers=0, progress=False)
    assert again.calls == []


@pytest.mark.parametrize("text, message", [
    ("adding:foo=1", "has no option 'foo'"),
    ("adding:length=abc", r"in task 'adding:length=abc': length must be an integer"),
])
def test_a_task_option_that_does_not_fit_is_a_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        compare.parse_task(text)
