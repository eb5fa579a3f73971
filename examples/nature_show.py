"""The seed's nature show, worked: train two small cells to say which animals a nature show has
shown, trace them, and draw where the forget gate drops the plants. Writes the pictures of
docs/nature_show.md and prints the numbers it quotes.

    python examples/nature_show.py --out docs/

The task (src/gatekit/study/nature_show.py): a stream of animals, plants, empty frames and scene cuts;
the target at every step is which animals have been seen so far (squirrel, elephant, dog,
wolf). A dog/wolf is a wolf when a forest plant (tree, fern) has been seen earlier in its
scene, a dog after a garden plant (rose, hedge), neither before any plant of its scene: the
cell must keep the flora of the current scene, and drop it at the next cut.
"""
import argparse
import os
import time

import numpy as np

from gatekit.study import nature_show as ns
from gatekit.study import pictures as visual

VARIANTS = ("course", "standard")


def error_rates(outputs, target):
    """The fraction of steps where each flag, read as output > 0.5, is wrong."""
    return ((outputs > 0.5) != (target > 0.5)).mean(axis=(0, 1))


def readout(model, stm):
    return stm @ model.readout["W_y"].T + model.readout["b_y"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs", help="folder for the pictures (default docs)")
    parser.add_argument("--steps", type=int, default=2000,
                        help="training steps per variant (default 2000)")
    parser.add_argument("--hidden-size", type=int, default=8,
                        help="units of each cell (default 8)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the cells, their training and the test streams "
                             "(default 0)")
    parser.add_argument("--formats", nargs="+", choices=sorted(set(visual.FORMATS.values())),
                        default=["png", "svg"], help="the pictures' formats (default png svg)")
    args = parser.parse_args(argv)
    for option, minimum in (("steps", 1), ("hidden_size", 1), ("seed", 0)):
        if getattr(args, option) < minimum:
            parser.error(f"argument --{option.replace('_', '-')}: expected an integer "
                         f">= {minimum}; got {getattr(args, option)}")
    os.makedirs(args.out, exist_ok=True)

    def paths(stem):
        return [os.path.join(args.out, f"nature_show_{stem}.{fmt}") for fmt in args.formats]

    task = ns.NatureShow()
    models = {}
    print(f"training {', '.join(VARIANTS)}: H = {args.hidden_size}, {args.steps} steps of 32 "
          f"streams of {task.length} tokens (baseline loss {task.baseline_loss:.3f})")
    for variant in VARIANTS:
        start = time.perf_counter()
        models[variant], history = ns.train(variant, args.steps, args.hidden_size,
                                            seed=args.seed)
        print(f"  {variant:<9} loss {np.mean(history.losses[-50:]):.4f} over the last 50 steps, "
              f"{time.perf_counter() - start:.1f} s")

    # Held-out streams: how each cell does, and what happens if its forget gate keeps
    # everything at the cuts.
    tokens = task.tokens(1000, np.random.default_rng(args.seed + 1000))
    x, target = ns.encode(tokens), ns.targets(tokens)
    at_cut = ns.cuts(tokens)
    # Cuts where the flora still matters: a dog or a wolf is yet to be seen.
    matters = at_cut & ((target[..., 2] == 0) | (target[..., 3] == 0))
    late = at_cut & ~matters
    traces, order_of, rows = {}, {}, []
    for variant, model in models.items():
        traces[variant] = trace = model.cell.trace(x)
        outputs = readout(model, trace["STM_t"])
        held = readout(model, ns.forget_held_open(model.cell, x, at_cut)["STM_t"])
        f = trace["f_t"]
        order_of[variant] = order = np.argsort(f[matters].mean(axis=0))
        j = order[0]
        rows.append((variant, task.solved(outputs, target).mean(),
                     task.solved(held, target).mean(), error_rates(outputs, target),
                     error_rates(held, target), j, f[matters][:, j].mean(),
                     f[late][:, j].mean(), f[~at_cut][:, j].mean()))
    print(f"\non 1000 new streams ({matters.sum()} cuts before both a dog and a wolf have been "
          f"seen, {late.sum()} after):")
    table = [("", *[row[0] for row in rows]),
             ("streams with every flag right, as trained", *[f"{r[1]:.1%}" for r in rows]),
             ("... with the forget gate held open at the cuts", *[f"{r[2]:.1%}" for r in rows]),
             ("steps with the dog flag wrong, as trained / held open",
              *[f"{r[3][2]:.2%} / {r[4][2]:.2%}" for r in rows]),
             ("steps with the wolf flag wrong, as trained / held open",
              *[f"{r[3][3]:.2%} / {r[4][3]:.2%}" for r in rows]),
             ("unit whose f_t is lowest at the cuts", *[f"unit {r[5]}" for r in rows]),
             ("  its mean f_t at cuts while a dog or wolf is unseen",
              *[f"{r[6]:.2f}" for r in rows]),
             ("  its mean f_t at cuts after both are seen", *[f"{r[7]:.2f}" for r in rows]),
             ("  its mean f_t at the other steps", *[f"{r[8]:.2f}" for r in rows])]
    widths = [max(len(str(line[k])) for line in table) for k in range(len(table[0]))]
    for line in table:
        print("  " + "  ".join(str(cell).ljust(w) if k == 0 else str(cell).rjust(w)
                               for k, (cell, w) in enumerate(zip(line, widths))))

    # The pictures, on the scripted episode.
    episode = list(ns.EPISODE)
    marks = ns.cuts(episode)
    ex = ns.encode(episode)
    common = dict(events=episode, event_names=ns.VOCABULARY, marks=marks)
    cell = models["course"].cell
    order = order_of["course"]
    labels = [f"unit {j}" for j in order]
    written = []
    visual.heatmaps(cell.trace(ex), ("f_t", "i_t", "N_t", "LTM_t", "STM_t"), units=order,
                    unit_labels=labels, path=paths("heatmaps"),
                    title="course cell on the scripted episode (dashed: cuts; units ordered "
                          "by their mean f_t at cuts, lowest first)", **common)
    written += paths("heatmaps")
    dropping = [int(j) for j in order[:2]]
    # The unit whose long-term memory carries "squirrel seen" best, for contrast.
    squirrel = int(np.argmax([abs(np.corrcoef(traces["course"]["LTM_t"][..., j].ravel(),
                                              target[..., 0].ravel())[0, 1])
                              for j in range(cell.hidden_size)]))
    chosen = dropping + ([squirrel] if squirrel not in dropping else [])
    visual.lines(cell.trace(ex), units=chosen, quantities=("LTM_t", "f_t", "i_t"),
                 unit_labels=[f"unit {j}" + (" (f_t lowest at the cuts)" if j in dropping else
                                             " (carries 'squirrel seen')") for j in chosen],
                 path=paths("units"), title="course cell: the units its forget gate empties at "
                 "the cuts, and the one that keeps the squirrel", **common)
    written += paths("units")
    model = models["course"]
    flags = {"E_t": ex,
             "flags as trained (the readout W_y STM_t + b_y)":
                 readout(model, cell.trace(ex)["STM_t"]),
             "flags with the forget gate held open at the cuts":
                 readout(model, ns.forget_held_open(cell, ex, [m in marks for m in
                                                              range(len(episode))])["STM_t"]),
             "target": ns.targets(episode)}
    visual.lines(flags, units=range(len(ns.ANIMALS)), quantities=list(flags)[1:],
                 unit_labels=list(ns.ANIMALS), path=paths("forget_held_open"),
                 title="course cell: what it says it has seen, as trained and with its forget "
                       "gate held open at the cuts", **common)
    written += paths("forget_held_open")
    visual.saturation(traces, path=paths("saturation"),
                      title="gate saturation on 1000 new streams (Karpathy et al. 2015)")
    written += paths("saturation")
    print("\nwrote " + ", ".join(written))


if __name__ == "__main__":
    main()
