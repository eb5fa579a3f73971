"""Sequence tasks generated exactly from a seed: no downloads, every comparison reproducible."""
import numpy as np


class AddingProblem:
    """The adding problem (Hochreiter & Schmidhuber 1997; the form of Le et al. 2015): each step
    carries a value drawn from U[0, 1] and a marker; two steps are marked, one in each half of
    the sequence, and the target is the sum of their values. Predicting the mean (1) scores
    a mean squared error of 1/6, the trivial baseline."""

    input_size = 2
    output_size = 1
    baseline_loss = 1 / 6

    def __init__(self, length):
        if length < 2:
            raise ValueError(f"length must be at least 2; got {length}")
        self.length = length

    def sample(self, batch_size, rng):
        """``x`` (T, B, 2) and the target (B, 1)."""
        T, B = self.length, batch_size
        values = rng.uniform(0, 1, (T, B))
        markers = np.zeros((T, B))
        half = T // 2
        first = rng.integers(0, half, B)
        second = rng.integers(half, T, B)
        columns = np.arange(B)
        markers[first, columns] = 1
        markers[second, columns] = 1
        x = np.stack([values, markers], axis=-1)
        target = (values[first, columns] + values[second, columns])[:, None]
        return x, target
