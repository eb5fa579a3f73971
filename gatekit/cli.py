"""The `gatekit` command."""
import argparse
import sys

from gatekit import bench, report
from gatekit import compare as comparison


def _shape(text):
    try:
        T, B, D, H = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,B,D,H (four integers); got {text!r}")
    return T, B, D, H


def presets(args):
    rows = report.preset_rows(shape=args.shape)
    print(report.format_table(rows, args.shape))


def compare(args):
    return comparison.main(args)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gatekit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("presets", help="time every preset and check it against the "
                                                "reference equations")
    table.add_argument("--shape", type=_shape, default=(200, 16, 32, 64), metavar="T,B,D,H")
    table.set_defaults(run=presets)
    suite = commands.add_parser("bench", help="the benchmark suite against PyTorch and JAX "
                                              "(`gatekit bench run --shapes S1,fixed`)")
    bench.add_arguments(suite.add_subparsers(dest="bench_command", required=True))
    trials = commands.add_parser(
        "compare", help="train presets or gate compositions on the classic tasks, several "
                        "seeds each, and compare them (table, CSV/JSON, plots)",
        epilog=comparison.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    comparison.add_arguments(trials)
    trials.set_defaults(run=compare)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv, args.prog = argv, "gatekit"
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
