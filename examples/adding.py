"""Train variants on the adding problem and compare their loss with the trivial baseline.

    python examples/adding.py                      # course and standard, T = 50
    python examples/adding.py --variants standard cifg janet --length 100 --steps 3000
"""
import argparse
import time

import numpy as np

import gatekit
from gatekit.nn import initialisers as init
from gatekit.nn import losses
from gatekit.nn import optimisers as optim
from gatekit.study import tasks
from gatekit.train import training
def run(variant, length=50, steps=1500, batch_size=32, hidden_size=32, lr=1e-2, seed=0,
        progress=True, target_loss=None):
    """Train one variant; returns its :class:`gatekit.training.History`."""
    task = tasks.AddingProblem(length)
    cell = gatekit.Cell(task.input_size, hidden_size, variant, dtype=np.float32, seed=seed)
    if "b_f" in cell.params:
        init.forget_bias(cell, 1.0)
    model = training.Model(cell, task.output_size, seed=seed)
    return training.train(model, lambda rng: task.sample(batch_size, rng),
                          losses.MeanSquaredError(last_step_only=True),
                          optim.Adam(model.params, lr=lr), steps, clip=1.0,
                          target_loss=target_loss, progress=progress, seed=seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["course", "standard"])
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    baseline = tasks.AddingProblem.baseline_loss
    print(f"adding problem, T={args.length}: the trivial baseline (always predict 1) scores "
          f"a mean squared error of {baseline:.4f}")
    for variant in args.variants:
        start = time.perf_counter()
        history = run(variant, args.length, args.steps, args.batch_size, args.hidden_size,
                      seed=args.seed)
        final = float(np.mean(history.losses[-50:]))
        print(f"{variant:<10} loss over the last 50 steps {final:.4f} "
              f"({final / baseline:.1%} of the baseline) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
