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


def trace(args):
    """`gatekit trace`: train (or load) a cell, trace it over a sequence, draw the trace."""
    import os
    import time

    import numpy as np

    from gatekit import cell as cells, io, nature_show, tasks, training, visual
    from gatekit import init, optim

    def fail(message):
        print(f"gatekit trace: {message}", file=sys.stderr)
        return 2

    gates = {role: getattr(args, role) for role in ("forget", "learn", "remember", "use")}
    args.out = args.out or ["gatekit-trace.png"]
    rng = np.random.default_rng(args.seed)
    for path in args.out:
        if os.path.splitext(path)[1].lower() not in visual.FORMATS:
            return fail(f"cannot tell the image format of {path!r}: name it .png or .svg")
    if args.task != "nature_show" and args.task not in tasks.names():
        return fail(f"unknown task {args.task!r}; known tasks: nature_show, "
                    f"{', '.join(tasks.names())}")
    try:
        task = (nature_show.NatureShow(args.length) if args.task == "nature_show"
                else tasks.make(args.task, args.length))
    except (TypeError, ValueError) as error:
        return fail(str(error))
    x = None
    if args.input is not None:
        try:
            x = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as error:
            return fail(f"cannot read {args.input}: {error}")
        if x.ndim == 2:
            x = x[:, None, :]
        if x.ndim != 3 or x.dtype.kind != "f":
            return fail(f"{args.input} must hold floats of shape (T, B, D) or (T, D); got "
                        f"{x.dtype} of shape {x.shape}")
        if args.model is None and args.train_steps > 0 and x.shape[-1] != task.input_size:
            return fail(f"{args.input} has {x.shape[-1]} features per step; a cell trained on "
                        f"{task.name} reads {task.input_size} (--train-steps 0 traces an "
                        "untrained cell of any input size)")

    def build(variant):
        """A cell of ``variant``, trained on the task unless told otherwise."""
        if args.model is not None:
            return io.load(args.model)
        trained = args.train_steps > 0
        size = task.input_size if trained or x is None else x.shape[-1]
        cell = cells.Cell(size, args.hidden_size, variant, **gates, seed=args.seed)
        if trained:
            if "b_f" in cell.params:
                init.forget_bias(cell, 1.0)
            model = training.Model(cell, task.output_size, seed=args.seed)
            start = time.perf_counter()
            history = training.train(model, lambda r: task.sample(32, r), task.loss,
                                     optim.Adam(model.params, lr=1e-2), args.train_steps,
                                     clip=1.0, progress=False, seed=args.seed)
            print(f"trained {variant} on {task.name} for {history.steps} steps in "
                  f"{time.perf_counter() - start:.1f} s: loss {history.losses[-1]:.4f} "
                  f"(baseline {task.baseline_loss:.4f})", file=sys.stderr)
        return cell

    def traced(model, inputs):
        if isinstance(model, cells.Cell):
            return model.trace(inputs)
        layers = visual.trace_layer(model, inputs)
        if args.cell not in layers:
            raise ValueError(f"the layer has no cell {args.cell!r}; its cells are "
                             f"{', '.join(layers)}")
        return layers[args.cell]

    try:
        model = build(args.variant)
        if x is None:
            inputs, _ = task.sample(64 if args.kind == "saturation" else 1, rng)
        else:
            inputs = x
        if inputs.shape[-1] != model.input_size:
            return fail(f"the input has {inputs.shape[-1]} features; the cell reads "
                        f"{model.input_size}")
        events = event_names = marks = None
        if isinstance(task, nature_show.NatureShow) and x is None:
            tokens = inputs.argmax(axis=-1)
            events = nature_show.names(tokens[:, 0])
            event_names = nature_show.VOCABULARY
            marks = [t for t, name in enumerate(events) if name == "cut"]
        quantities = args.quantities.split(",") if args.quantities else None
        what = model.variant if args.model is None else args.model
        if args.kind == "saturation":
            other = args.compare or ("standard" if args.variant != "standard" else "course")
            panels = {what: traced(model, inputs)}
            if args.model is None:
                panels[other] = traced(build(other), inputs)
            figure = visual.saturation(panels, dpi=args.dpi,
                                       title=f"gate saturation on {task.name}")
        else:
            result = traced(model, inputs)
            common = dict(batch=args.batch_index, events=events, event_names=event_names,
                          marks=marks or (), dpi=args.dpi)
            if args.kind == "heatmaps":
                figure = visual.heatmaps(result, quantities, title=f"{what} on {task.name}"
                                         if x is None else f"{what} on {args.input}", **common)
            else:
                if args.units:
                    units = [int(u) for u in args.units.split(",")]
                else:   # the units whose forget factor varies most over this sequence
                    f = result["f_t"][:, args.batch_index]
                    units = sorted(np.argsort(-np.nanstd(f, axis=0))[:3].tolist())
                figure = visual.lines(result, units, quantities or ("LTM_t", "f_t", "i_t"),
                                      title=f"{what}: units {units}", **common)
        for path in args.out:
            visual.save(figure, path)
            print(f"wrote {path}")
    except (ImportError, KeyError, IndexError, TypeError, ValueError) as error:
        return fail(str(error).strip("'\""))
    return 0


def _add_trace_arguments(parser):
    what = parser.add_argument_group("the cell")
    what.add_argument("--variant", default="course", help="preset (default course)")
    for role in ("forget", "learn", "remember", "use"):
        what.add_argument(f"--{role}", help=f"swap the preset's {role} gate")
    what.add_argument("--model", help="a cell or layer saved with gatekit.save, traced as is "
                                      "(no training)")
    what.add_argument("--cell", default="l0", help="which cell of a saved layer to draw "
                                                   "(l0, l0_reverse, l1, ...; default l0)")
    what.add_argument("--hidden-size", type=int, default=8)
    what.add_argument("--train-steps", type=int, default=1000,
                      help="training steps on the task (default 1000; 0: an untrained cell)")
    what.add_argument("--seed", type=int, default=0)
    data = parser.add_argument_group("the sequence")
    data.add_argument("--task", default="nature_show",
                      help="nature_show (default) or a registered task (adding, reber, ...: "
                           "gatekit.tasks.names())")
    data.add_argument("--length", type=int, help="sequence length (default: the task's)")
    data.add_argument("--input", help="trace this .npy array (T, B, D) or (T, D) instead of a "
                                      "sample of the task")
    data.add_argument("--batch-index", type=int, default=0, help="which sequence to draw")
    picture = parser.add_argument_group("the picture")
    picture.add_argument("--kind", choices=("heatmaps", "lines", "saturation"),
                         default="heatmaps")
    picture.add_argument("--quantities", help="comma-separated, e.g. f_t,i_t,LTM_t "
                                              "(default: all for heatmaps; LTM_t,f_t,i_t for "
                                              "lines)")
    picture.add_argument("--units", help="comma-separated units for --kind lines (default: "
                                         "the three whose f_t varies most)")
    picture.add_argument("--compare", help="second preset of --kind saturation (default "
                                           "standard, or course for standard)")
    picture.add_argument("--out", action="append",
                         help="image to write, .png or .svg; repeat for several "
                              "(default gatekit-trace.png)")
    picture.add_argument("--dpi", type=int, default=100)
    parser.set_defaults(out=None)


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
    drawing = commands.add_parser(
        "trace", help="train a cell for a few seconds (or load one), trace every gate over a "
                      "sequence and draw it (heatmaps, unit lines, gate saturation)",
        description="Trace a cell and draw what its gates do. By default: train the preset on "
                    "the nature show of docs/nature_show.md for 1000 steps (a few seconds), "
                    "trace it over one new stream and draw every quantity as a heatmap.")
    _add_trace_arguments(drawing)
    drawing.set_defaults(run=trace)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv, args.prog = argv, "gatekit"
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
