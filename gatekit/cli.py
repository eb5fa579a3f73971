"""The `gatekit` command."""
import argparse
import sys

from gatekit import report


def _shape(text):
    try:
        T, B, D, H = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,B,D,H (four integers); got {text!r}")
    return T, B, D, H


def presets(args):
    rows = report.preset_rows(shape=args.shape)
    print(report.format_table(rows, args.shape))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gatekit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("presets", help="time every preset and check it against the "
                                                "reference equations")
    table.add_argument("--shape", type=_shape, default=(200, 16, 32, 64), metavar="T,B,D,H")
    table.set_defaults(run=presets)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
