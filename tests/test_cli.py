"""The `gatekit` command: clean errors, --version, help for every option, and what `gatekit
trace` builds and draws.

Errors are checked through real processes of the command (``python -m gatekit.cli``): their
exit status and what they write on stderr. Pictures are checked from the files written, as in
tests/study/test_pictures.py.
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

import gatekit
from gatekit import cli
from gatekit.study import nature_show, variants_table

from support import child_env, needs, png_size, svg_panels_and_size


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gatekit.cli", *map(str, args)], cwd=cwd,
                          env=child_env(), capture_output=True, text=True, timeout=300)


# --- Errors ----------------------------------------------------------------------------------

USER_ERRORS = {
    "compare-unknown-variant": (["compare", "nosuch", "--workers", "0", "--no-plots"],
                                "gatekit compare:", "nosuch"),
    "compare-unknown-gate": (["compare", "standard+forget=nosuch", "--workers", "0",
                              "--no-plots"], "gatekit compare:", "nosuch"),
    "compare-unknown-task": (["compare", "standard", "--task", "nosuch", "--workers", "0",
                              "--no-plots"], "gatekit compare:", "nosuch"),
    "trace-missing-model": (["trace", "--model", "missing.npz"], "gatekit trace:",
                            "missing.npz"),
    "trace-unknown-variant": (["trace", "--variant", "nosuch", "--train-steps", "0"],
                              "gatekit trace:", "nosuch"),
    "trace-unknown-gate": (["trace", "--forget", "nosuch", "--train-steps", "0"],
                           "gatekit trace:", "nosuch"),
    "trace-missing-input": (["trace", "--input", "missing.npy", "--train-steps", "0"],
                            "gatekit trace:", "missing.npy"),
    "trace-folder-of-output-missing": (["trace", "--train-steps", "0", "--out",
                                        os.path.join("no-such-folder", "x.png")],
                                       "gatekit trace:", "no-such-folder"),
    "trace-unknown-quantity": (["trace", "--train-steps", "0", "--quantities", "f_t,zz",
                                "--out", "x.svg"], "gatekit trace:", "zz"),
    "trace-batch-index-out-of-range": (["trace", "--train-steps", "0", "--batch-index", "5",
                                        "--out", "x.svg"], "gatekit trace:", "--batch-index"),
    "trace-unit-out-of-range": (["trace", "--train-steps", "0", "--kind", "lines", "--units",
                                 "99", "--out", "x.svg"], "gatekit trace:", "--units"),
    "trace-input-without-steps": (["trace", "--input", "empty.npy", "--train-steps", "0",
                                   "--out", "x.svg"], "gatekit trace:", "empty.npy"),
    "trace-input-declares-more-than-it-holds": (["trace", "--input", "huge.npy",
                                                 "--train-steps", "0", "--out", "x.svg"],
                                                "gatekit trace:", "huge.npy"),
    "trace-compare-with-a-model": (["trace", "--model", "cell.npz", "--compare", "standard",
                                    "--kind", "saturation", "--out", "x.svg"],
                                   "gatekit trace:", "--compare"),
    "trace-length-beyond-memory": (["trace", "--length", "100000000000", "--train-steps", "0",
                                    "--out", "x.svg"], "gatekit trace:", "not enough memory"),
    "trace-swap-contradicts-variant": (["trace", "--variant", "standard+forget=none",
                                        "--forget", "peephole", "--train-steps", "0"],
                                       "gatekit trace:", "contradicts"),
}


@pytest.mark.parametrize("name", list(USER_ERRORS))
def test_a_user_error_is_one_line_on_stderr_and_exit_status_2(name, tmp_path):
    args, command, mentioned = USER_ERRORS[name]
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 9)))
    with open(tmp_path / "huge.npy", "wb") as stream:          # 37 GiB declared, 64 bytes held
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000, 1)})
        stream.write(bytes(64))
    gatekit.save(gatekit.Cell(9, 4, "standard", seed=0), tmp_path / "cell.npz")
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(command) and mentioned in lines[0], lines[0]
    assert not any(path.suffix in (".png", ".svg") for path in tmp_path.iterdir())


@pytest.mark.parametrize("args, option", [
    (["variants", "--shape", "0,16,32,64"], "--shape"),
    (["trace", "--train-steps", "-1"], "--train-steps"),
    (["trace", "--units", "a,b"], "--units"),
    (["trace", "--dpi", "0"], "--dpi"),
])
def test_a_bad_option_value_is_refused_before_anything_runs(args, option, tmp_path):
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"argument {option}:" in done.stderr.strip().splitlines()[-1]


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(shape, names):
        raise TypeError("a bug")

    monkeypatch.setattr(gatekit.study.variants_table, "variant_rows", broken)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["variants"])


def test_presets_and_bench_are_names_of_variants():
    # The same subcommand under three names (presets, its old one; bench, what the table does):
    # three tables would only time every variant three times.
    parser = cli.build_parser()
    old, new, bench = (parser.parse_args([command, "--shape", "4,2,3,5"])
                       for command in ("presets", "variants", "bench"))
    assert old.run is new.run is bench.run is cli.variants
    assert old.shape == new.shape == bench.shape == (4, 2, 3, 5)


def test_variants_prints_a_row_per_variant(monkeypatch, capsys):
    # (The table's own check shape is for a person reading it.)
    _quick_rows(monkeypatch)
    assert cli.main(["variants", "--shape", "4,2,3,5"]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    names = {row[0] for row in printed if len(row) == 6}
    assert set(gatekit.variants()) <= names and {"standard", "janet"} <= names


def _quick_rows(monkeypatch):
    """The table's rows timed once each and checked at a small shape: what is under test is
    the command, not the speed."""
    timed, rows = variants_table.median_seconds, variants_table.variant_rows
    monkeypatch.setattr(variants_table, "median_seconds",
                        lambda function: timed(function, repeats=1, min_time=0))
    monkeypatch.setattr(variants_table, "variant_rows",
                        lambda shape, names: rows(shape, check_shape=(4, 2, 3, 5), names=names))


def printed_variants(capsys):
    return [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if len(line.split()) == 6 and line.split()[1].isdigit()]


def test_bench_times_the_variants_asked_for(monkeypatch, capsys):
    _quick_rows(monkeypatch)
    assert cli.main(["bench", "--shape", "4,2,3,5", "--variant", "janet", "--variant",
                     "standard"]) == 0
    assert printed_variants(capsys) == ["janet", "standard"]


def test_bench_times_a_third_party_variant(monkeypatch, capsys, register):
    class ThirdParty:
        @gatekit.hookimpl
        def register_variants(self, register):
            register("third_party", {"forget": "none"}, description="a plugin's variant")

    register(ThirdParty())
    _quick_rows(monkeypatch)
    assert cli.main(["bench", "--shape", "4,2,3,5"]) == 0
    names = printed_variants(capsys)
    assert "third_party" in names and names == gatekit.variants()


def test_bench_refuses_an_unknown_variant(capsys):
    assert cli.main(["bench", "--variant", "standard", "--variant", "nosuch"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gatekit bench: --variant: unknown variant 'nosuch'")
    assert "standard" in error


def test_version(tmp_path):
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"gatekit {gatekit.__version__}"


def parsers(parser, path=("gatekit",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, path + (name,))


def test_every_option_has_help():
    undocumented = []
    for path, parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                undocumented.append(" ".join(path) + " " + (
                    "/".join(action.option_strings) or action.dest))
    assert undocumented == []


# --- What gatekit trace builds ---------------------------------------------------------------

@pytest.fixture
def plotting():
    """`gatekit trace` draws with matplotlib, an optional dependency."""
    needs("matplotlib")


@pytest.fixture
def drawn(plotting, monkeypatch):
    """What `gatekit trace` hands to the picture functions: {function: (args, kwargs)}."""
    from gatekit.study import pictures as visual
    calls = {}
    for name in ("heatmaps", "lines", "saturation"):
        def recording(*args, _draw=getattr(visual, name), _name=name, **kwargs):
            calls[_name] = (args, kwargs)
            return _draw(*args, **kwargs)
        monkeypatch.setattr(visual, name, recording)
    return calls


def write_input(tmp_path, T=6, B=2, D=3):
    x = np.random.default_rng(5).standard_normal((T, B, D))
    np.save(tmp_path / "x.npy", x)
    return x, str(tmp_path / "x.npy")


def test_saturation_swaps_the_gate_of_the_traced_cell_only(drawn, tmp_path):
    x, path = write_input(tmp_path)
    code = cli.main(["trace", "--input", path, "--train-steps", "0", "--hidden-size", "4",
                     "--seed", "3", "--variant", "standard", "--forget", "none", "--kind",
                     "saturation", "--out", str(tmp_path / "s.svg")])
    assert code == 0
    (traces,), _ = drawn["saturation"]
    assert list(traces) == ["standard+forget=none", "course"]
    expected = {"standard+forget=none": gatekit.Cell(3, 4, "standard", forget="none", seed=3),
                "course": gatekit.Cell(3, 4, "course", seed=3)}
    for label, cell in expected.items():
        for name, value in cell.trace(x).items():
            np.testing.assert_array_equal(traces[label][name], value, err_msg=f"{label} {name}")
    # Without a forget gate f_t = 1; the comparison keeps its own forget gate.
    assert np.all(traces["standard+forget=none"]["f_t"] == 1)
    assert np.all(traces["course"]["f_t"] < 1)


def test_the_label_names_every_swapped_gate(drawn, tmp_path):
    x, path = write_input(tmp_path)
    code = cli.main(["trace", "--input", path, "--train-steps", "0", "--hidden-size", "4",
                     "--variant", "course+use=peephole", "--learn", "coupled",
                     "--out", str(tmp_path / "h.svg")])
    assert code == 0
    (trace, _), options = drawn["heatmaps"]
    assert options["title"] == f"course+learn=coupled+use=peephole on {path}"
    cell = gatekit.Cell(3, 4, "course", learn="coupled", use="peephole", seed=0)
    for name, value in cell.trace(x).items():
        np.testing.assert_array_equal(trace[name], value, err_msg=name)


def test_the_nature_show_default_traces_the_scripted_episode(drawn, tmp_path):
    code = cli.main(["trace", "--train-steps", "0", "--out", str(tmp_path / "h.svg")])
    assert code == 0
    (trace, _), options = drawn["heatmaps"]
    # The episode of docs/nature_show.md: 29 steps, cuts at steps 6, 14 and 22.
    episode = list(nature_show.EPISODE)
    assert len(episode) == 29
    columns = [nature_show.VOCABULARY.index(token) for token in episode]
    np.testing.assert_array_equal(trace["E_t"][:, 0], np.eye(9)[columns])
    assert options["events"] == episode
    assert list(options["marks"]) == [6, 14, 22]


# --- What gatekit trace draws ---------------------------------------------------------------

def test_cli_trace_heatmaps(plotting, tmp_path, capsys):
    png, svg = tmp_path / "t.png", tmp_path / "t.svg"
    assert cli.main(["trace", "--train-steps", "20", "--dpi", "40", "--out", str(png),
                     "--out", str(svg)]) == 0
    assert png_size(png)[0] > 0
    # course on the nature show: the input and the nine quantities of the course cell
    assert len(svg_panels_and_size(svg)[0]) == 9
    assert f"wrote {png}" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, panels", [
    (["--kind", "lines", "--units", "0,2", "--quantities", "f_t,LTM_t"], 3),
    (["--kind", "saturation"], 2),
    (["--task", "adding", "--length", "12", "--quantities", "f_t,i_t"], 3),
])
def test_cli_trace_kinds_and_tasks(plotting, tmp_path, arguments, panels):
    svg = tmp_path / "t.svg"
    assert cli.main(["trace", "--train-steps", "10", *arguments, "--out", str(svg)]) == 0
    assert len(svg_panels_and_size(svg)[0]) == panels


def test_cli_trace_saved_models_and_npy_input(plotting, tmp_path):
    x = np.random.default_rng(0).standard_normal((9, 5))
    np.save(tmp_path / "x.npy", x)
    gatekit.save(gatekit.Cell(5, 4, "peephole", seed=0), tmp_path / "cell.npz")
    gatekit.save(gatekit.LSTM(5, 4, 2, bidirectional=True, seed=0), tmp_path / "lstm.npz")
    for model, extra in (("cell.npz", []), ("lstm.npz", ["--cell", "l1_reverse"])):
        svg = tmp_path / f"{model}.svg"
        assert cli.main(["trace", "--model", str(tmp_path / model), "--input",
                         str(tmp_path / "x.npy"), *extra, "--quantities", "f_t,STM_t",
                         "--out", str(svg)]) == 0
        assert len(svg_panels_and_size(svg)[0]) == 3


@pytest.mark.parametrize("arguments, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--out", "t.jpg"], ".png or .svg"),
    (["--train-steps", "0", "--quantities", "q_t"], "no 'q_t'"),
])
def test_cli_trace_errors(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["trace", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
