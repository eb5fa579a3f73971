"""The benchmark harness (benchmarks/harness) where it times nothing: the issue-target ratios
computed from a fixed, hand-written set of results, the report command refusing a folder that is
not a run's, the CPU-bound process of the busy load (started, stopped whatever happens, never left
behind) and the environment of the processes it starts."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import gatekit

# The harness is not part of the package: it lives beside the suite, in the repository's
# benchmarks/ folder, and is imported from there.
BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
sys.path.insert(0, BENCHMARKS)
from harness import command, machine, report, runner  # noqa: E402
from harness.cases import Case  # noqa: E402
from harness.contenders import (NEW_CELLS, Unavailable, builtin_variants,  # noqa: E402
                                carried_memories, gatekit_cell)
from harness.lineup import contenders  # noqa: E402

RUN = str(Path(BENCHMARKS) / "run.py")


def with_harness(env):
    """``env`` with the harness importable, the rest of its PYTHONPATH kept (it may be what
    makes this gatekit importable)."""
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [BENCHMARKS,
                                                              env.get("PYTHONPATH")])))


DIMS = {"S1": (1000, 1, 32, 64), "S3": (200, 32, 128, 256), "S1sq": (1000, 1, 64, 64),
        "S6": (1000, 32, 256, 256)}


def result(group, contender_id, median, load="idle"):
    """One benchmark as pytest-benchmark writes it, with what the suite's test adds."""
    shape, dtype, mode = group.split(",")[0].split()
    T, B, D, H = DIMS[shape]
    return {"group": group, "name": f"test_bench[{contender_id}]",
            "stats": {"median": median, "iqr": 0.0, "rounds": 10, "iterations": 1},
            "extra_info": {"contender_id": contender_id, "contender": contender_id, "load": load,
                           "shape": shape, "T": T, "B": B, "D": D, "H": H, "dtype": dtype,
                           "mode": mode}}


# Medians in seconds, chosen so that each ratio is easy to check by hand.
RESULTS = [
    result("S1 float32 forward, busy", "gatekit-standard", 1.1e-3, "busy"),
    result("S1 float32 forward, busy", "gatekit-standard-1thread", 1.0e-3, "busy"),
    result("S1 float32 forward, busy", "torch-nn-LSTM", 4.0e-3, "busy"),
    result("S1 float32 fwdbwd, busy", "gatekit-standard", 3.0e-3, "busy"),
    result("S1 float32 fwdbwd, busy", "gatekit-standard-1thread", 2.0e-3, "busy"),
    result("S3 float32 forward", "gatekit-standard", 6.0e-3),
    result("S3 float32 forward", "gatekit-standard-1thread", 10.0e-3),
    result("S3 float32 fwdbwd", "gatekit-standard", 8.0e-3),
    result("S3 float32 fwdbwd", "gatekit-standard-1thread", 10.0e-3),
    result("S1 float32 forward", "gatekit-standard", 1.0e-3),
    result("S1 float32 forward", "torch-nn-LSTM", 2.5e-3),
    result("S1 float32 forward", "gatekit-standard-baseline", 3.0e-3),
    result("S1 float32 forward", "gatekit-standard-avx2", 2.0e-3),
    result("S3 float32 forward", "gatekit-standard-baseline", 50.0e-3),
    result("S3 float32 forward", "gatekit-standard-avx2", 20.0e-3),
]


def rows_by(rows):
    return {(row["what"].split(",")[0].split(" /")[0], row["group"]): row for row in rows}


def test_issue_targets_are_ratios_within_one_group_and_load():
    rows = rows_by(report.target_rows(RESULTS))
    threads_busy = rows[("default threads", "S1 float32 forward, busy")]
    assert threads_busy["ratio"] == pytest.approx(1.1) and threads_busy["verdict"] == "met"
    assert threads_busy["limit"] == 1.2
    fwdbwd_busy = rows[("default threads", "S1 float32 fwdbwd, busy")]
    assert fwdbwd_busy["ratio"] == pytest.approx(1.5) and fwdbwd_busy["verdict"] == "not met"
    # The idle S3 target (<= 0.7) reads the idle group, never the busy one.
    assert rows[("default threads", "S3 float32 forward")]["ratio"] == pytest.approx(0.6)
    assert rows[("default threads", "S3 float32 forward")]["verdict"] == "met"
    assert rows[("default threads", "S3 float32 fwdbwd")]["ratio"] == pytest.approx(0.8)
    assert rows[("default threads", "S3 float32 fwdbwd")]["verdict"] == "not met"
    # Against torch.nn.LSTM under each load that ran: 1.0 / 2.5 idle, 1.1 / 4.0 busy.
    assert rows[("gatekit `standard`", "S1 float32 forward")]["ratio"] == pytest.approx(0.4)
    assert rows[("gatekit `standard`", "S1 float32 forward, busy")]["ratio"] == \
        pytest.approx(0.275)
    assert rows[("gatekit `standard`", "S1 float32 forward, busy")]["verdict"] == "met"
    kernels_s1 = rows[("`GATEKIT_KERNELS=baseline`", "S1 float32 forward")]
    assert kernels_s1["ratio"] == pytest.approx(1.5) and kernels_s1["verdict"] == "met"
    kernels_s3 = rows[("`GATEKIT_KERNELS=baseline`", "S3 float32 forward")]
    assert kernels_s3["ratio"] == pytest.approx(2.5) and kernels_s3["verdict"] == "not met"


def test_a_target_with_a_contender_missing_is_not_measured():
    rows = rows_by(report.target_rows(RESULTS))
    missing_torch = rows[("gatekit `standard`", "S1 float32 fwdbwd, busy")]
    assert missing_torch["ratio"] is None and missing_torch["verdict"] == "not measured"
    assert missing_torch["numerator_s"] == 3.0e-3 and missing_torch["denominator_s"] is None
    # No busy run of S3 at all: the busy S3 threads target is still listed, unmeasured.
    assert rows[("default threads", "S3 float32 forward, busy")]["verdict"] == "not measured"


def test_report_shows_busy_groups_apart_and_the_targets_table():
    text = report.render(RESULTS, [], {}, {})
    assert "## Issue targets" in text
    target_lines = [line for line in text.splitlines() if line.startswith("| default threads")]
    assert any("S1 float32 forward, busy" in line and "| 1.10 (1.100 ms / 1.000 ms) |" in line
               and line.endswith("| ≤ 1.2 | met |") for line in target_lines)
    titles = [line for line in text.splitlines() if line.startswith("## S1 float32 forward:")]
    # The busy table of a case right after its idle one, labelled.
    assert titles == ["## S1 float32 forward: T=1000, B=1, D=32, H=64",
                      "## S1 float32 forward: T=1000, B=1, D=32, H=64 "
                      "(busy: one CPU-bound process beside)"]
    busy_table = text.split(titles[1])[1].split("\n## ")[0]
    # Ratios in the busy table are to the busy standard: torch.nn.LSTM 4.0 ms / 1.1 ms.
    assert "| torch-nn-LSTM | 4.000 ms | 4.0 µs | 3.64 | 1.00 |" in busy_table


# Issue 13's cells, with medians chosen so that each ratio is easy to check by hand.
CELL_RESULTS = [
    result("S1 float32 forward", "gatekit-gru", 1.0e-3),
    result("S1 float32 forward", "torch-nn-GRU", 2.0e-3),
    result("S1 float32 forward", "torch-loop-gru", 40.0e-3),
    result("S3 float32 fwdbwd", "gatekit-gru", 13.0e-3),
    result("S3 float32 fwdbwd", "torch-nn-GRU", 10.0e-3),
    result("S3 float32 forward", "gatekit-standard", 6.0e-3),
    result("S3 float32 forward", "gatekit-mgu", 7.2e-3),
    result("S1sq float32 forward", "gatekit-standard", 2.0e-3),
    result("S1sq float32 forward", "gatekit-mut1", 3.0e-3),
    result("S1sq float32 forward", "torch-loop-mut1", 40.0e-3),
    result("S6 float32 fwdbwd", "gatekit-standard", 1.0),
    result("S6 float32 fwdbwd", "gatekit-minlstm", 0.4),
    result("S1 float32 fwdbwd", "gatekit-standard", 4.0e-3),
    result("S1 float32 fwdbwd", "gatekit-slstm", 6.0e-3),
    result("S1 float32 fwdbwd", "torch-loop-slstm", 0.3),
    result("S3 float32 forward", "gatekit-slstm", 7.5e-3),
    result("S1 float32 forward", "gatekit-layernorm", 2.0e-3),
    result("S1 float32 forward", "torch-loop-layernorm", 0.1),
]


def test_issue_13_targets_hold_each_cell_against_its_peer_in_its_group():
    rows = {(row["what"], row["group"]): row for row in report.target_rows(CELL_RESULTS)}

    def ratio(what, group):
        return rows[(what, group)]["ratio"], rows[(what, group)]["verdict"]

    gru = "gatekit `gru` / `torch.nn.GRU`, same load"
    assert ratio(gru, "S1 float32 forward") == (pytest.approx(0.5), "met")
    assert rows[(gru, "S1 float32 forward")]["limit"] == 0.8
    assert ratio(gru, "S3 float32 fwdbwd") == (pytest.approx(1.3), "met")     # <= 1.3
    assert ratio(gru, "S3 float32 forward") == (None, "not measured")
    mgu = "gatekit `mgu` / `standard`, same shape"
    assert ratio(mgu, "S3 float32 forward") == (pytest.approx(1.2), "met")
    # mut1 needs D = H: it is held at S1sq and S6, never at S1 or S3.
    mut1 = "gatekit `mut1` / `standard`, same shape"
    assert ratio(mut1, "S1sq float32 forward") == (pytest.approx(1.5), "not met")
    assert not any(what == mut1 and group.startswith(("S1 ", "S3 ")) for what, group in rows)
    minlstm = "gatekit `minlstm` / `standard`, same shape"
    assert ratio(minlstm, "S6 float32 fwdbwd") == (pytest.approx(0.4), "met")
    assert rows[(minlstm, "S6 float32 fwdbwd")]["limit"] == 0.5
    loop = "gatekit `{}` / the same cell as a PyTorch Python loop"
    assert ratio(loop.format("gru"), "S1 float32 forward") == (pytest.approx(0.025), "met")
    assert ratio(loop.format("mut1"), "S1sq float32 forward") == (pytest.approx(0.075), "met")
    assert {what for what, _ in rows if "Python loop" in what} == {
        loop.format(cell) for cell in ("gru", "mgu", "mut1", "mingru", "minlstm", "slstm",
                                       "layernorm")}
    # sLSTM against standard at S1 and S3 (<= 1.3) and against its PyTorch loop at S1 (<= 0.1).
    slstm = "gatekit `slstm` / `standard`, same shape"
    assert ratio(slstm, "S1 float32 fwdbwd") == (pytest.approx(1.5), "not met")
    assert ratio(slstm, "S3 float32 forward") == (pytest.approx(1.25), "met")
    assert rows[(slstm, "S3 float32 forward")]["limit"] == 1.3
    assert {group for what, group in rows if what == slstm} == {
        f"{shape} float32 {mode}" for shape in ("S1", "S3") for mode in ("forward", "fwdbwd")}
    assert ratio(loop.format("slstm"), "S1 float32 fwdbwd") == (pytest.approx(0.02), "met")
    assert ratio(loop.format("layernorm"), "S1 float32 forward") == (pytest.approx(0.02), "met")
    assert rows[(loop.format("layernorm"), "S1 float32 forward")]["limit"] == 0.1


def test_issue_15_targets_hold_the_torch_module_against_the_loop_and_nn_lstm():
    results = [result("S1 float32 fwdbwd", "gatekit-torch-peephole", 5.0e-3),
               result("S1 float32 fwdbwd", "torch-loop-peephole", 0.25),
               result("S3 float32 fwdbwd", "gatekit-torch-peephole", 0.15),
               result("S3 float32 fwdbwd", "torch-loop-peephole", 0.25),
               result("S1 float32 forward", "gatekit-torch-standard", 3.0e-3),
               result("S1 float32 forward", "torch-nn-LSTM", 2.5e-3)]
    rows = {(row["what"], row["group"]): row for row in report.target_rows(results)}

    def read(what, group):
        row = rows[(what, group)]
        return row["ratio"], row["limit"], row["verdict"]

    loop = "`gatekit.torch.LSTM` `peephole` / the same cell as a PyTorch module in a loop"
    assert read(loop, "S1 float32 fwdbwd") == (pytest.approx(0.02), 0.1, "met")
    assert read(loop, "S3 float32 fwdbwd") == (pytest.approx(0.6), 0.5, "not met")
    assert {group for what, group in rows if what == loop} == {"S1 float32 fwdbwd",
                                                               "S3 float32 fwdbwd"}
    lstm = "`gatekit.torch.LSTM` `standard` / `torch.nn.LSTM`, same load"
    assert read(lstm, "S1 float32 forward") == (pytest.approx(1.2), 1.0, "not met")
    assert read(lstm, "S1 float32 fwdbwd")[2] == "not measured"


def test_every_issue_target_has_both_its_contenders_in_its_group():
    # A run of the target's shape times both sides of its ratio (mut1's PyTorch loop and
    # standard at S1sq, say); otherwise the target would stay "not measured" whatever ran.
    every = {c.id: c for c in contenders()}
    for target in report.issue_targets():
        for side in (target.numerator, target.denominator):
            assert side in every, (target.what, side)
            assert every[side].applies_to(target.case), (target.what, target.case.group, side)


def test_each_of_issue_13s_cells_meets_a_pytorch_loop_and_a_jax_scan():
    cells = ("gru", "mgu", "mut1", "mingru", "minlstm", "slstm", "layernorm")
    assert NEW_CELLS == cells
    every = {c.id: c for c in contenders()}
    for cell in cells:
        for peer, family in ((f"torch-loop-{cell}", "torch"), (f"jax-scan-{cell}", "jax")):
            assert every[peer].family == family
            shape = "S1sq" if cell == "mut1" else "S1"
            assert every[peer].applies_to(Case.named(shape, mode="fwdbwd")), peer


@pytest.mark.parametrize("variant, count", [("gru", 1), ("mut1", 1), ("minlstm", 1),
                                            ("standard", 2), ("layernorm", 2), ("slstm", 4)])
def test_peers_carry_the_memories_gatekit_carries(variant, count):
    case = Case.custom((2, 1, 4, 4))
    assert carried_memories(gatekit_cell(case, variant)) == count


def test_the_d_equals_h_shapes_time_only_the_contenders_that_ask_for_them():
    every = contenders()

    def at(shape, mode="forward"):
        case = Case.named(shape, mode=mode)
        return {c.id for c in every if c.applies_to(case)}

    square, s6 = at("S1sq"), at("S6", "fwdbwd")
    assert {"gatekit-standard", "torch-nn-LSTM"} <= square & s6
    assert "gatekit-course" not in square | s6 and "torch-nn-GRU" not in square | s6
    for loop in ("torch-loop-mut1", "jax-scan-mut1"):
        assert loop in square and loop not in s6
    assert {"torch-loop-mingru", "torch-loop-minlstm", "jax-scan-mingru"}.isdisjoint(s6)
    for shape in ("S1", "S2", "S3"):                    # D != H
        found = at(shape)
        assert {"torch-loop-mut1", "jax-scan-mut1", "gatekit-mut1"}.isdisjoint(found)
        assert {"torch-nn-GRU", "torch-loop-gru", "torch-loop-mgu", "torch-loop-mingru",
                "torch-loop-minlstm", "jax-scan-gru", "jax-scan-minlstm"} <= found
    assert "torch-loop-mut1" in at("S4")                 # D = H
    registered = builtin_variants()              # gatekit times its built-in variants
    for cell, shapes in {"mut1": ("S1sq", "S6", "S4"), "mingru": ("S6", "S1"),
                         "minlstm": ("S6", "S3")}.items():
        if cell in registered:
            assert all(f"gatekit-{cell}" in at(shape) for shape in shapes), cell


def test_report_of_a_missing_folder_names_it(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        command.report(bench_args("report", str(missing)))


SKIPPED = [{"group": "S1 float32 forward", "contender": "torch.nn.LSTM",
            "reason": "PyTorch is not installed (pip install torch)"}]
NOT_A_RUN = {
    "empty": {},
    "meta-only": {"meta.json": {"started": "then", "families": {}}},
    # Skips alone would render as a run where nothing ran.
    "skips-only": {"meta.json": {"started": "then", "families": {}},
                   "torch-skips.json": SKIPPED},
}


@pytest.mark.parametrize("contents", list(NOT_A_RUN.values()), ids=list(NOT_A_RUN))
def test_report_of_a_folder_without_results_names_it(tmp_path, contents):
    for name, data in contents.items():
        (tmp_path / name).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"no results in {tmp_path}"):
        command.report(bench_args("report", str(tmp_path)))


def test_report_of_a_file_that_is_not_a_run_names_it(tmp_path):
    (tmp_path / "gatekit.json").write_text("not json")
    with pytest.raises(ValueError, match=str(tmp_path / "gatekit.json")):
        command.report(bench_args("report", str(tmp_path)))
    with pytest.raises(ValueError, match=str(tmp_path / "gatekit.json")):
        command.report(bench_args("report", str(tmp_path / "gatekit.json")))


def test_report_renders_a_run_again_and_writes_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "gatekit.json").write_text(json.dumps({"benchmarks": RESULTS}))
    (run / "torch-skips.json").write_text(json.dumps(SKIPPED))
    out = tmp_path / "again" / "report.md"
    assert command.main(["report", str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out == text + "\n"
    assert "## Issue targets" in text
    skipped = [line for line in text.splitlines() if line.startswith("| torch.nn.LSTM | skipped")]
    assert skipped == ["| torch.nn.LSTM | skipped | | | | | PyTorch is not installed "
                       "(pip install torch) |"]


@pytest.mark.parametrize("folder, mentioned", [("no-such-run", "no such folder"),
                                               ("empty", "no results in"),
                                               ("skips-only", "no results in")])
def test_report_command_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path, folder,
                                                                         mentioned):
    (tmp_path / "empty").mkdir()
    (tmp_path / "skips-only").mkdir()
    (tmp_path / "skips-only" / "torch-skips.json").write_text(json.dumps(SKIPPED))
    done = subprocess.run([sys.executable, RUN, "report", folder, "--out", "r.md"],
                          cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("python benchmarks/run.py report:"), lines[0]
    assert folder in lines[0] and mentioned in lines[0], lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "r.md").exists()


def test_run_command_refuses_an_unknown_shape_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, RUN, "run", "--shapes", "S1,S9"], cwd=tmp_path,
                          env=dict(os.environ), capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("python benchmarks/run.py run: unknown shapes S9; known: "
                                   "S1, S2, S3, S4, S5, S1sq, S6, fixed")
    assert not (tmp_path / ".benchmarks").exists()


def bench_args(*argv):
    import argparse
    parser = argparse.ArgumentParser()
    command.add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.argv, args.prog = list(argv), "test"
    return args


# --- The busy load ----------------------------------------------------------------------------

def cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_children(parent=None):
    """The running busy-loop processes whose parent is ``parent`` (default: any)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z" and b"getppid" in command and (
                parent is None or int(fields[1]) == parent):
            found.append(int(stat.parent.name))
    return found


def gone(pid, timeout=10.0):
    """Whether process ``pid`` has ended (reaped, or a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@linux_only
def test_busy_load_is_one_cpu_bound_process_stopped_on_exit():
    with machine.cpu_load("busy") as process:
        assert busy_children(os.getpid()) == [process.pid]
        start = cpu_seconds(process.pid)
        time.sleep(0.5)
        used = cpu_seconds(process.pid) - start
        assert process.poll() is None
    # A CPU-bound process takes a core; on a shared machine it gets at least a fifth of one.
    assert used >= 0.1
    assert process.returncode is not None
    assert busy_children(os.getpid()) == []


@linux_only
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_busy_load_is_stopped_when_the_timed_body_fails(error):
    with pytest.raises(error):
        with machine.cpu_load("busy") as process:
            raise error("the timed process failed")
    assert process.returncode is not None
    assert busy_children(os.getpid()) == []


def test_idle_load_starts_nothing_and_unknown_loads_are_refused():
    with machine.cpu_load("idle") as process:
        assert process is None
    with pytest.raises(ValueError, match="load must be one of idle, busy; got 'heavy'"):
        with machine.cpu_load("heavy"):
            pass


@linux_only
def test_busy_load_ends_when_its_parent_is_killed(tmp_path):
    # A parent killed with SIGKILL runs no finally: the load must notice by itself.
    script = textwrap.dedent("""
        import sys, time
        from harness.machine import cpu_load
        with cpu_load("busy") as process:
            print(process.pid, flush=True)
            time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path, env=with_harness(os.environ))
    try:
        load_pid = int(parent.stdout.readline())
        assert not gone(load_pid, timeout=0.2)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    assert gone(load_pid)


@linux_only
@pytest.mark.parametrize("outcome", [0, KeyboardInterrupt])
def test_run_times_each_family_under_each_load_and_leaves_no_load_behind(tmp_path, monkeypatch,
                                                                          outcome):
    calls = []

    def fake_call(argv, env):
        if "--benchmark-only" not in argv:
            return 0
        family = argv[argv.index("--gk-families") + 1]
        load = argv[argv.index("--gk-load") + 1]
        calls.append((family, load, len(busy_children(os.getpid())),
                      env.get("GATEKIT_KERNELS")))
        if outcome is KeyboardInterrupt and load == "busy":
            raise KeyboardInterrupt
        return outcome

    monkeypatch.setattr(runner.subprocess, "call", fake_call)
    monkeypatch.delenv("GATEKIT_KERNELS", raising=False)
    args = bench_args("run", "--no-guards", "--shapes", "S1", "--families",
                      "gatekit,gatekit-avx2,gatekit-baseline", "--load", "idle,busy",
                      "--bench-dir", str(tmp_path), "--json-dir", str(tmp_path / "json"),
                      "--out", str(tmp_path / "report.md"))
    if outcome is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            runner.run(args)
        assert calls == [("gatekit", "idle", 0, None), ("gatekit", "busy", 1, None)]
    else:
        assert runner.run(args) == 0
        assert calls == [("gatekit", "idle", 0, None), ("gatekit", "busy", 1, None),
                         ("gatekit-avx2", "idle", 0, "avx2"), ("gatekit-avx2", "busy", 1, "avx2"),
                         ("gatekit-baseline", "idle", 0, "baseline"),
                         ("gatekit-baseline", "busy", 1, "baseline")]
        meta = json.loads((tmp_path / "json" / "meta.json").read_text())
        assert meta["loads"] == ["idle", "busy"]
        assert meta["families"]["gatekit-avx2, busy"]["load"] == "busy"
    assert busy_children(os.getpid()) == []


# --- The processes' environment ---------------------------------------------------------------

def test_timed_processes_import_this_gatekit(tmp_path):
    env = runner.child_environ("gatekit")
    found = subprocess.run([sys.executable, "-c", "import gatekit; print(gatekit.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()).resolve() == Path(gatekit.__file__).resolve()


def test_a_kernel_family_process_asks_for_its_kernels(monkeypatch):
    monkeypatch.setenv("GATEKIT_KERNELS", "avx512")
    assert runner.child_environ("gatekit-avx2")["GATEKIT_KERNELS"] == "avx2"
    assert runner.child_environ("gatekit-baseline")["GATEKIT_KERNELS"] == "baseline"
    assert runner.child_environ("torch")["GATEKIT_KERNELS"] == "avx512"


def test_kernel_contender_refuses_a_process_with_other_kernels(monkeypatch):
    monkeypatch.delenv("GATEKIT_KERNELS", raising=False)
    avx2 = next(c for c in contenders(("gatekit-avx2",)) if c.family == "gatekit-avx2")
    with pytest.raises(Unavailable, match="GATEKIT_KERNELS=avx2.*has GATEKIT_KERNELS=''"):
        avx2.build(Case.named("S1"))


def test_kernel_contender_runs_the_build_its_process_loaded(tmp_path):
    script = textwrap.dedent("""
        from harness.cases import Case
        from harness.lineup import contenders
        contender, = contenders(("gatekit-baseline",))
        print(",".join(contender.build(Case.custom((2, 1, 3, 4))).info["kernels"]))
    """)
    env = with_harness(runner.child_environ("gatekit-baseline"))
    found = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "gatekit.core._builtin,gatekit.core._loop"
