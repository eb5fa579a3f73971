"""The `gatekit` command."""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

from gatekit.version import __version__
from gatekit.core._gate import ROLES
from gatekit.core import plugins
from gatekit.core.cell import Cell
from gatekit.core.plugins import PluginError
from gatekit.nn import initialisers, optimisers
from gatekit.io import saving
from gatekit.train import training
from gatekit.study import compare as comparison, nature_show, pictures, sweep, tasks, variants_table

__all__ = ["build_parser", "main"]

#: What a user's mistake raises: a bad name or value, a missing or unreadable file. The command
#: then ends with one line on stderr and exit status 2; anything else is a bug in gatekit and
#: keeps its traceback.
USER_ERRORS = (ValueError, KeyError, PluginError, FileNotFoundError, IsADirectoryError,
               NotADirectoryError, PermissionError)

# Options that other modules add to the parser without a help text; the CLI's --help must
# explain every option, so these are filled in here where the module gave none.
_MISSING_HELP = {
    ("compare", "--dtype"): "the cells' floating-point type (default float32)",
}


# --- Option values ----------------------------------------------------------------------------

def _shape(text):
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,D,H (four positive integers); got "
                                         f"{text!r}")
    return shape


def _integer(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _integers(text):
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got "
                                         f"{text!r}") from None


def _reason(error):
    """Why a file given by name could not be read, without repeating its name."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _message(error):
    """One line for a user error."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error)


# --- Subcommands ------------------------------------------------------------------------------

def variants(args):
    registered = plugins.variants()
    unknown = [name for name in args.variant or () if name not in registered]
    if unknown:
        raise ValueError(f"--variant: unknown variant {', '.join(map(repr, unknown))}; "
                         f"registered: {', '.join(registered)}")
    rows = variants_table.variant_rows(shape=args.shape, names=args.variant)
    print(variants_table.format_table(rows, args.shape))


def compare(args):
    return comparison.main(args)


def composition_label(variant, swaps):
    """How `gatekit compare` names a variant with gates swapped: ``standard+forget=none``."""
    return "+".join([variant] + [f"{role}={swaps[role]}" for role in ROLES if role in swaps])


def _composition(option, text, swaps=None):
    """(variant, {role: gate}) of ``text`` (``variant`` or ``variant+role=gate...``), with the
    ``swaps`` of the --forget ... options on top."""
    try:
        variant, overrides = sweep.parse_variant(text)
    except ValueError as error:
        raise ValueError(f"{option} {text!r}: {error}") from None
    for role, gate in (swaps or {}).items():
        if gate is None:
            continue
        if overrides.get(role, gate) != gate:
            raise ValueError(f"--{role} {gate!r} contradicts {option} {text!r}, which has "
                             f"{role}={overrides[role]}")
        overrides[role] = gate
    return variant, overrides


def trace(args):
    """`gatekit trace`: train (or load) a cell, trace it over a sequence, draw the trace."""
    if importlib.util.find_spec("matplotlib") is None:
        print("gatekit trace: drawing needs matplotlib, which is not installed: "
              "pip install 'gatekit[plot]'", file=sys.stderr)
        return 2
    outputs = args.out or ["gatekit-trace.png"]
    for path in outputs:
        if os.path.splitext(path)[1].lower() not in pictures.FORMATS:
            raise ValueError(f"--out {path!r}: cannot tell the image format; name it .png or "
                             ".svg")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"--out {path!r}: its folder {folder!r} does not exist")
    if args.task != "nature_show" and args.task not in tasks.names():
        raise ValueError(f"--task: unknown task {args.task!r}; known tasks: nature_show, "
                         f"{', '.join(tasks.names())}")
    task = (nature_show.NatureShow(args.length) if args.task == "nature_show"
            else tasks.make(args.task, args.length))
    x = None
    if args.input is not None:
        try:
            # Mapped, not read: a header declaring more data than the file holds is refused
            # before anything is allocated.
            x = np.load(args.input, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"--input {args.input!r}: cannot read it: {_reason(error)}") \
                from None
        if not isinstance(x, np.ndarray):     # an .npz archive
            x.close()
            raise ValueError(f"--input {args.input!r}: expected one array (.npy); got an .npz "
                             "archive")
        if x.ndim == 2:
            x = x[:, None, :]
        if x.ndim != 3 or x.dtype.kind != "f" or 0 in x.shape:
            raise ValueError(f"--input {args.input!r}: expected floats of shape (T, B, D) or "
                             f"(T, D), none of them 0; got {x.dtype} of shape {x.shape}")
        if args.model is None and args.train_steps > 0 and x.shape[-1] != task.input_size:
            raise ValueError(f"--input {args.input!r} has {x.shape[-1]} features per step; a "
                             f"cell trained on {task.name} reads {task.input_size} "
                             "(--train-steps 0 traces an untrained cell of any input size)")

    if args.model is not None and args.compare is not None:
        raise ValueError(f"--compare {args.compare!r}: a loaded --model is drawn alone; "
                         "leave out --compare, or trace a variant with --variant")
    # Every cell is built (and its names checked) before any of them trains.
    swaps = {role: getattr(args, role) for role in ROLES}
    if args.model is not None:
        try:
            model = saving.load(args.model)
        except (OSError, ValueError) as error:
            raise ValueError(f"--model {args.model!r}: cannot load it: {_reason(error)}") \
                from None
        built = {args.model: model}
    else:
        traced_cell = _composition("--variant", args.variant, swaps)
        built = {composition_label(*traced_cell): traced_cell}
        if args.kind == "saturation":
            default = "standard" if traced_cell[0] != "standard" else "course"
            other = _composition("--compare", args.compare or default)
            built.setdefault(composition_label(*other), other)
        size = task.input_size if args.train_steps > 0 or x is None else x.shape[-1]
        built = {label: Cell(size, args.hidden_size, variant, **gates, seed=args.seed)
                 for label, (variant, gates) in built.items()}
        if args.train_steps > 0:
            for label, cell in built.items():
                _train(cell, label, task, args)

    if x is not None:
        inputs = x
    elif isinstance(task, nature_show.NatureShow) and args.length is None \
            and args.kind != "saturation":
        inputs = nature_show.encode(list(nature_show.EPISODE))   # the story of the docs
    else:
        inputs, _ = task.sample(64 if args.kind == "saturation" else 1,
                                np.random.default_rng(args.seed))
    traces = {label: _traced(model, inputs, args.cell)
              for label, model in built.items()}
    label, result = next(iter(traces.items()))
    on = args.input if x is not None else task.name
    if args.kind == "saturation":
        figure = pictures.saturation(traces, dpi=args.dpi, title=f"gate saturation on {on}")
    else:
        figure = _picture(args, result, label, on, task, x is None)
    for path in outputs:
        pictures.save(figure, path)
        print(f"wrote {path}")
    return 0


def _train(cell, label, task, args):
    if "b_f" in cell.params:
        initialisers.forget_bias(cell, 1.0)
    model = training.Model(cell, task.output_size, seed=args.seed)
    start = time.perf_counter()
    history = training.train(model, lambda rng: task.sample(32, rng), task.loss,
                             optimisers.Adam(model.params, lr=1e-2), args.train_steps, clip=1.0,
                             progress=False, seed=args.seed)
    print(f"trained {label} on {task.name} for {history.steps} steps in "
          f"{time.perf_counter() - start:.1f} s: loss {history.losses[-1]:.4f} "
          f"(baseline {task.baseline_loss:.4f})", file=sys.stderr)


def _traced(model, inputs, which):
    if inputs.shape[-1] != model.input_size:
        raise ValueError(f"the input has {inputs.shape[-1]} features per step; the cell reads "
                         f"{model.input_size}")
    if isinstance(model, Cell):
        return model.trace(inputs)
    layers = pictures.trace_layer(model, inputs)
    if which not in layers:
        raise ValueError(f"--cell: the layer has no cell {which!r}; its cells are "
                         f"{', '.join(layers)}")
    return layers[which]


def _picture(args, result, label, on, task, sampled):
    """The heatmaps or unit lines of one trace."""
    sequences = result["E_t"].shape[1]
    if not -sequences <= args.batch_index < sequences:
        raise ValueError(f"--batch-index: expected one of the {sequences} traced sequences "
                         f"(0 to {sequences - 1}); got {args.batch_index}")
    names = args.quantities.split(",") if args.quantities else None
    unknown = [name for name in names or () if name not in result or name == "E_t"]
    if unknown:
        raise ValueError(f"--quantities: the trace has no {', '.join(map(repr, unknown))}; it "
                         f"has {', '.join(pictures.quantities(result))}")
    events = event_names = None
    marks = ()
    if isinstance(task, nature_show.NatureShow) and sampled:
        events = nature_show.names(result["E_t"][:, args.batch_index].argmax(axis=-1))
        event_names = nature_show.VOCABULARY
        marks = nature_show.cuts(events)
    common = dict(batch=args.batch_index, events=events, event_names=event_names, marks=marks,
                  dpi=args.dpi)
    if args.kind == "heatmaps":
        return pictures.heatmaps(result, names, title=f"{label} on {on}", **common)
    units = args.units
    hidden = result["f_t"].shape[-1]
    if units is None:   # the units whose forget factor varies most over this sequence
        f = result["f_t"][:, args.batch_index]
        units = sorted(np.argsort(-np.nanstd(f, axis=0))[:3].tolist())
    elif not all(-hidden <= unit < hidden for unit in units):
        raise ValueError(f"--units: expected units of the cell's {hidden} (0 to {hidden - 1}); "
                         f"got {','.join(map(str, units))}")
    return pictures.lines(result, units, names or ("LTM_t", "f_t", "i_t"),
                        title=f"{label}: units {units}", **common)


# --- The parser -------------------------------------------------------------------------------

def _add_trace_arguments(parser):
    what = parser.add_argument_group("the cell")
    what.add_argument("--variant", default="course",
                      help="variant, or variant+role=gate... as for `gatekit compare` "
                           "(default course)")
    for role in ROLES:
        what.add_argument(f"--{role}", metavar="GATE",
                          help=f"swap the {role} gate of --variant's cell (not of --compare's)")
    what.add_argument("--model", help="a cell or layer saved with gatekit.save, traced as is "
                                      "(no training)")
    what.add_argument("--cell", default="l0", help="which cell of a saved layer to draw "
                                                   "(l0, l0_reverse, l1, ...; default l0)")
    what.add_argument("--hidden-size", type=_integer(1), default=8,
                      help="units of the cell (default 8)")
    what.add_argument("--train-steps", type=_integer(0), default=1000,
                      help="training steps on the task (default 1000; 0: an untrained cell)")
    what.add_argument("--seed", type=_integer(0), default=0,
                      help="seed of the initial parameters, the training batches and the "
                           "sampled sequence (default 0)")
    data = parser.add_argument_group("the sequence")
    data.add_argument("--task", default="nature_show",
                      help="nature_show (default) or a registered task (adding, reber, ...: "
                           "gatekit.tasks.names())")
    data.add_argument("--length", type=_integer(1),
                      help="sequence length (default: the task's); the nature show's heatmaps "
                           "and lines trace its scripted episode unless a length is given")
    data.add_argument("--input", help="trace this .npy array (T, B, D) or (T, D) instead of a "
                                      "sample of the task")
    data.add_argument("--batch-index", type=int, default=0,
                      help="which sequence of the batch to draw (default 0)")
    picture = parser.add_argument_group("the picture")
    picture.add_argument("--kind", choices=("heatmaps", "lines", "saturation"),
                         default="heatmaps",
                         help="heatmaps of every quantity (default), lines of chosen units, or "
                              "the gate-saturation scatter of two cells over 64 sequences")
    picture.add_argument("--quantities", help="comma-separated, e.g. f_t,i_t,LTM_t "
                                              "(default: all for heatmaps; LTM_t,f_t,i_t for "
                                              "lines)")
    picture.add_argument("--units", type=_integers,
                         help="comma-separated units for --kind lines (default: the three whose "
                              "f_t varies most)")
    picture.add_argument("--compare", help="second variant (or variant+role=gate...) of --kind "
                                           "saturation (default standard, or course for "
                                           "standard)")
    picture.add_argument("--out", action="append",
                         help="image to write, .png or .svg; repeat for several "
                              "(default gatekit-trace.png)")
    picture.add_argument("--dpi", type=_integer(1), default=100,
                         help="pixels per inch of a PNG (default 100)")
    parser.set_defaults(out=None)


def _subcommands(parser):
    """{name: parser} of the subcommands of ``parser`` (none if it has none)."""
    return next((action.choices for action in parser._actions
                 if isinstance(action, argparse._SubParsersAction)), {})


def _fill_missing_help(parser):
    for key, text in _MISSING_HELP.items():
        *path, option = key
        target = parser
        for name in path:
            target = _subcommands(target)[name]
        for action in target._actions:
            if (option in action.option_strings or option == action.dest) and \
                    action.help is None:
                action.help = text


def build_parser():
    """The argparse parser of the `gatekit` command."""
    parser = argparse.ArgumentParser(prog="gatekit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gatekit {__version__}",
                        help="print gatekit's version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("variants", aliases=["presets", "bench"],
                                help="time every registered variant (plugins' included) and "
                                     "check it against the reference equations")
    table.add_argument("--variant", action="append", metavar="NAME",
                       help="time this variant only (repeat the option for more; default: "
                            "every registered variant, `gatekit.variants()`)")
    table.add_argument("--shape", type=_shape, default=(200, 16, 32, 64), metavar="T,B,D,H",
                       help="sequence length, batch, input size and units of the timed runs "
                            "(default 200,16,32,64)")
    table.set_defaults(run=variants)
    trials = commands.add_parser(
        "compare", help="train variants or gate compositions on the classic tasks, several "
                        "seeds each, and compare them (table, CSV/JSON, plots)",
        epilog=comparison.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    comparison.add_arguments(trials)
    trials.set_defaults(run=compare)
    drawing = commands.add_parser(
        "trace", help="train a cell for a few seconds (or load one), trace every gate over a "
                      "sequence and draw it (heatmaps, unit lines, gate saturation)",
        description="Trace a cell and draw what its gates do. By default: train the variant on "
                    "the nature show of docs/nature_show.md for 1000 steps (a few seconds), "
                    "trace it over the scripted episode of that page and draw every quantity "
                    "as a heatmap.")
    _add_trace_arguments(drawing)
    drawing.set_defaults(run=trace)
    _fill_missing_help(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv, args.prog = argv, "gatekit"
    command = f"gatekit {args.command}"
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        print(f"{command}: {_message(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        # Sizes the options ask for (a --length of 10**11), not a bug: say so, without a trace.
        print(f"{command}: not enough memory for what the options ask for (a --length, "
              "--hidden-size or --steps too large?)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
