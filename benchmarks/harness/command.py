"""The command line: ``python benchmarks/run.py run`` runs the suite and writes its report,
``python benchmarks/run.py report DIR`` renders a run's report again from its JSON files. A
user's mistake (an unknown shape, a folder that is not a run's) ends in one line on stderr and
exit status 2."""
import argparse
import sys

from gatekit.benchmarking import Settings

from harness.cases import DEFAULT_SHAPES, FAMILIES, SHAPES
from harness.report import load_run, render, result_files, write_text
from harness.runner import run

__all__ = ["PROG", "add_arguments", "main", "report"]

PROG = "python benchmarks/run.py"


def report(args):
    """Render a run's report again. Raises FileNotFoundError or ValueError (naming the path)
    where ``args.directory`` is not the folder of a run with results: the report of nothing
    would look like a run where nothing ran."""
    benchmarks, skips, environments, meta = load_run(args.directory)
    if not result_files(args.directory):
        raise ValueError(f"benchmark results: no results in {args.directory} (expected the "
                         f"<family>.json files of `{PROG} run`, in its --json-dir)")
    text = render(benchmarks, skips, environments, meta)
    if args.out:
        write_text(args.out, text)
    print(text)
    return 0


def add_arguments(commands):
    """The ``run`` and ``report`` subcommands."""
    defaults = Settings()
    runner = commands.add_parser("run", help="run the benchmark suite, one process per family, "
                                             "and write the report")
    runner.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                        help=f"comma-separated, of {', '.join(SHAPES)} (default: all)")
    runner.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated, of {', '.join(FAMILIES)} (default: all)")
    runner.add_argument("--load", default="idle",
                        help="comma-separated, of idle, busy (default idle): busy times each "
                             "family again with one CPU-bound process beside it")
    runner.add_argument("--dtypes", default="float32,float64",
                        help="comma-separated, of float32, float64 (default: both)")
    runner.add_argument("--modes", default="forward,fwdbwd",
                        help="comma-separated, of forward, fwdbwd (forward + backward; "
                             "default: both)")
    runner.add_argument("--out", default=".benchmarks/report.md", help="the markdown report")
    runner.add_argument("--json-dir", help="where the JSON files go (default "
                                           ".benchmarks/run-<time>)")
    runner.add_argument("--bench-dir", help="the benchmark suite (default: the folder of this "
                                            "harness, benchmarks/)")
    runner.add_argument("--max-time", type=float, default=defaults.max_time,
                        help="seconds of timed rounds to aim for per benchmark")
    runner.add_argument("--min-rounds", type=int, default=defaults.min_rounds,
                        help="at least this many timed rounds per benchmark")
    runner.add_argument("--budget", type=float, default=defaults.budget,
                        help="at most this many seconds of timed rounds per benchmark (at least "
                             "one round)")
    runner.add_argument("--reference-limit", type=float, default=defaults.reference_limit,
                        help="time the NumPy reference only where one call takes less")
    runner.add_argument("--no-guards", action="store_true",
                        help="skip the correctness guards")
    runner.add_argument("--pytest-args", help="more arguments for each pytest process, e.g. "
                                              "\"-k 'standard or LSTM'\"")
    runner.set_defaults(run=run)
    again = commands.add_parser("report", help="render the report again from a run's JSON files")
    again.add_argument("directory", help=f"the folder of a run's JSON files (--json-dir of "
                                         f"`{PROG} run`)")
    again.add_argument("--out", help="also write the report to this markdown file")
    again.set_defaults(run=report)


def parser():
    found = argparse.ArgumentParser(prog=PROG, description="gatekit's benchmark suite")
    add_arguments(found.add_subparsers(dest="command", required=True))
    return found


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.argv, args.prog = argv, PROG
    if args.run is report:
        try:
            return report(args)
        except (FileNotFoundError, ValueError) as error:
            print(f"{PROG} report: {error}", file=sys.stderr)
            return 2
    return args.run(args)
