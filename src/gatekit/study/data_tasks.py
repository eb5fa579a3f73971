"""Tasks on real data that ships inside a PyPI package, so nothing is downloaded at run time
(``pip install 'gatekit[data]'``). Unlike the generated tasks, a data set is finite: ``sample``
draws training sequences from its training split only, and ``heldout`` draws from its held-out
split, which training never sees. The split is fixed, by index, so every run of every machine
trains and evaluates on the same sequences.
"""
import math

import numpy as np

from gatekit.core.task import Task
from gatekit.nn.losses import SoftmaxCrossEntropy
from gatekit.study.tasks import _batch_size

__all__ = ["DATA_TASKS", "Digits"]


class Digits(Task):
    """Handwritten digits read row by row: scikit-learn's bundled ``digits`` (the 1,797 8x8
    images of the UCI "optical recognition of handwritten digits" test set, read by
    ``sklearn.datasets.load_digits`` from a file inside the scikit-learn wheel), each image a
    sequence of 8 steps of 8 pixels (scaled from 0..16 to 0..1), top row first; the target is
    the digit, 10 classes, given at the last step (softmax cross-entropy).

    The split is by index: the first 1,437 images (80%) train, the last 360 are held out (a
    contiguous block rather than every fifth image, so that the held-out images are not the
    neighbours in the file of training ones). ``sample`` draws a batch from the training
    images (without replacement within a batch), ``heldout`` from the held-out ones (without
    replacement; all 360, in an order drawn from ``rng``, when the batch asks for as many or
    more). A sequence is solved when the largest output is its digit; no run reads every
    digit right, so compare it with a ``solve_rate`` below 1 (``digits:solve_rate=0.9``). The
    baseline is guessing, log 10.
    """

    name = "digits"
    description = "handwritten digits (scikit-learn's bundled set), read one row of 8 pixels " \
                  "per step: classify at the last step"
    default_length = 8
    min_length = 8
    input_size = 8
    output_size = 10
    baseline_loss = math.log(10)
    loss = SoftmaxCrossEntropy(last_step_only=True)
    training_images = 1437

    def __init__(self, length=None):
        super().__init__(length)
        if self.length != 8:
            raise ValueError(f"length of digits is its 8 rows; got {self.length}")
        _load_sklearn()              # a missing scikit-learn is said when the task is built
        self._images = None

    def _split(self):
        """``(pixels (N, 8, 8) in [0, 1], digits (N,))`` of the whole set, read once per
        task and kept."""
        if self._images is None:
            datasets = _load_sklearn()
            pixels, digits = datasets.load_digits(return_X_y=True)
            self._images = (np.asarray(pixels, dtype=np.float64).reshape(-1, 8, 8) / 16.0,
                            np.asarray(digits, dtype=np.int64))
        return self._images

    def _batch(self, indices):
        pixels, digits = self._split()
        # (B, rows, columns) -> (T = rows, B, input = columns)
        return np.ascontiguousarray(pixels[indices].transpose(1, 0, 2)), digits[indices]

    def _draw(self, first, stop, batch_size, rng):
        count = stop - first
        size = _batch_size(batch_size)
        if size >= count:
            return self._batch(first + rng.permutation(count))
        return self._batch(first + rng.choice(count, size, replace=False))

    def sample(self, batch_size, rng):
        """``x`` (8, B, 8) and the digits (B,), from the training images (at most all
        1,437)."""
        return self._draw(0, self.training_images, batch_size, rng)

    def heldout(self, batch_size, rng):
        """``x`` (8, B, 8) and the digits (B,), from the held-out images (at most all 360)."""
        return self._draw(self.training_images, len(self._split()[1]), batch_size, rng)

    def solved(self, outputs, target):
        return np.argmax(np.asarray(outputs)[-1], axis=-1) == np.asarray(target).reshape(-1)


def _load_sklearn():
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError("the digits task reads scikit-learn's bundled digits: pip install "
                          "'gatekit[data]' (or scikit-learn)") from None
    return datasets


DATA_TASKS = (Digits,)
