"""A PyTorch model with a gatekit layer inside, trained end to end with torch.optim on the adding
problem: the gatekit layer runs on gatekit's compiled loop, the read-out, the loss and the
optimiser are PyTorch's.

    python examples/torch_model.py                          # peephole, T = 50, 600 steps
    python examples/torch_model.py --variant cifg --steps 100
"""
import argparse
import time

import numpy as np
import torch

import gatekit


class Adder(torch.nn.Module):
    """A gatekit layer and a linear read-out of its last output."""

    def __init__(self, variant, hidden_size, seed):
        super().__init__()
        task = gatekit.tasks.AddingProblem
        self.rnn = gatekit.torch.LSTM(task.input_size, hidden_size, variant=variant,
                                      batch_first=True, seed=seed)
        self.readout = torch.nn.Linear(hidden_size, task.output_size)
        if hasattr(self.rnn.l0, "b_f"):
            # A forget gate open at the start carries the marked values across the sequence.
            with torch.no_grad():
                self.rnn.l0.b_f.fill_(1.0)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.readout(y[:, -1])


def batch(task, size, rng):
    """A batch of the task as batch-first float32 tensors."""
    x, target = task.sample(size, rng)
    return (torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=np.float32)),
            torch.from_numpy(target.astype(np.float32)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="peephole")
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    task = gatekit.tasks.AddingProblem(args.length)
    model = Adder(args.variant, args.hidden_size, args.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(args.seed)
    x_test, target_test = batch(task, 512, np.random.default_rng(args.seed + 1))
    baseline = task.baseline_loss
    print(f"adding problem, T={args.length}, variant {args.variant!r}: predicting 1 scores a "
          f"mean squared error of {baseline:.4f}")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, target = batch(task, args.batch_size, rng)
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % 100 == 0 or step == args.steps:
            with torch.no_grad():
                test = float(torch.nn.functional.mse_loss(model(x_test), target_test))
            print(f"step {step:>5}: training loss {loss.item():.4f}, test loss {test:.4f} "
                  f"({test / baseline:.1%} of the baseline), {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
