"""Local pool workers: a worker process that dies costs only the runs it had in flight (run
again, each alone), and workers end when the process that started them is killed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gatekit.study import sweep

from support import ORDER_TASK, TINY_RUN

RUN_ONE = sweep.run_one
FAST = {**TINY_RUN, "steps": 20, "eval_every": 10, "eval_size": 16}
MARKER = "GATEKIT_TEST_DIE_ONCE_MARKER"


def dies_on_seed_one(spec):
    """Runs in a pool worker: seed 1 kills its worker process (every time, or only the first
    time when the marker file named in the environment is missing)."""
    if spec["seed"] == 1:
        marker = os.environ.get(MARKER)
        if marker is None or not os.path.exists(marker):
            if marker is not None:
                Path(marker).touch()
            os._exit(7)
    return RUN_ONE(spec)


def specs(seeds=range(6)):
    return [sweep.make_spec("standard", ORDER_TASK, s, **FAST) for s in seeds]


def test_a_worker_lost_once_costs_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER, str(tmp_path / "died-once"))
    monkeypatch.setattr(sweep, "run_one", dies_on_seed_one)
    with pytest.warns(RuntimeWarning, match="a worker process died"):
        outcome = sweep.run_sweep(specs(), tmp_path / "runs.jsonl", workers=2, progress=False)
    assert (tmp_path / "died-once").exists()
    assert outcome.failed == [] and outcome.ran == 6
    assert sorted(r["spec"]["seed"] for r in outcome) == list(range(6))


def test_a_run_that_kills_its_worker_fails_alone(tmp_path, monkeypatch):
    monkeypatch.delenv(MARKER, raising=False)
    monkeypatch.setattr(sweep, "run_one", dies_on_seed_one)
    with pytest.warns(RuntimeWarning, match="a worker process died"), \
            pytest.warns(sweep.RunsFailedWarning, match="1 of 6 runs failed: standard on "
                                                        "temporal_order:10 seed 1"):
        outcome = sweep.run_sweep(specs(), tmp_path / "runs.jsonl", workers=2, progress=False)
    assert [(s["seed"], type(e).__name__) for s, e in outcome.failed] == [
        (1, "BrokenProcessPool")]
    assert "died twice" in str(outcome.failed[0][1])
    assert sorted(r["spec"]["seed"] for r in outcome) == [0, 2, 3, 4, 5]


def live_members(group):
    """The pids of the processes of a process group that have not exited (zombies left out)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry))
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_compare_ends_its_workers(tmp_path):
    program = (
        "from gatekit.study import compare\n"
        f"compare.compare(['standard'], ['temporal_order:10'], seeds=4, out={str(tmp_path)!r},"
        " workers=2, plots=False, progress=False, steps=10**6, hidden_size=4, batch_size=4,"
        " eval_every=10**6, eval_size=8)\n")
    parent = subprocess.Popen([sys.executable, "-c", program], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    group = parent.pid
    try:
        deadline = time.monotonic() + 60
        while len(live_members(group)) < 4:          # compare, its resource tracker, 2 workers
            assert parent.poll() is None, "compare ended before its workers started"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        time.sleep(0.5)                               # the workers are past their start-up
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while live_members(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_members(group) == []
    finally:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
