"""The real-data task: scikit-learn's bundled digits, read row by row, against the images as
scikit-learn gives them; its fixed split (training draws never touch the held-out images);
that a short run learns from it; and what happens without scikit-learn."""
import math
import sys

import numpy as np
import pytest

from gatekit.study import compare, sweep, tasks

datasets = pytest.importorskip("sklearn.datasets", reason="pip install 'gatekit[data]'")


@pytest.fixture(scope="module")
def digits():
    pixels, labels = datasets.load_digits(return_X_y=True)
    return pixels.reshape(-1, 8, 8), labels


def find(images, sequence):
    """The indices of the images whose rows, scaled from 0..16, are the steps of
    ``sequence`` (8, 8)."""
    return np.flatnonzero((np.abs(images / 16.0 - sequence[None]) < 1e-12).all(axis=(1, 2)))


def test_a_batch_is_images_read_top_row_first_from_the_training_split(digits):
    images, labels = digits
    task = tasks.make("digits")
    assert (task.input_size, task.output_size, task.length) == (8, 10, 8)
    assert task.baseline_loss == pytest.approx(math.log(10))
    x, target = task.sample(64, np.random.default_rng(0))
    assert x.shape == (8, 64, 8) and target.shape == (64,) and x.dtype == np.float64
    for b in range(64):
        found = find(images, x[:, b, :])
        assert len(found) and (found < 1437).any(), b
        assert target[b] in labels[found[found < 1437]]
    again, _ = task.sample(64, np.random.default_rng(0))
    np.testing.assert_array_equal(x, again)


def test_heldout_draws_only_the_last_360_images(digits):
    images, labels = digits
    task = tasks.make("digits")
    x, target = task.heldout(1000, np.random.default_rng(5))     # more than there are: all
    assert x.shape == (8, 360, 8)
    held_out = images[1437:] / 16.0
    order = np.lexsort(held_out.reshape(360, -1).T)
    drawn = np.ascontiguousarray(x.transpose(1, 0, 2))
    drawn_order = np.lexsort(drawn.reshape(360, -1).T)
    np.testing.assert_array_equal(drawn[drawn_order], held_out[order])
    np.testing.assert_array_equal(target[drawn_order], labels[1437:][order])
    small, _ = task.heldout(20, np.random.default_rng(5))
    assert small.shape == (8, 20, 8)
    assert all((find(images[1437:], small[:, b, :]).size > 0) for b in range(20))


def test_length_is_the_rows():
    with pytest.raises(ValueError, match="length of digits is its 8 rows; got 9"):
        tasks.make("digits", length=9)


def test_a_short_run_learns_the_digits():
    spec = sweep.make_spec("standard", "digits", 0, steps=60, hidden_size=16, batch_size=32,
                           eval_every=30, eval_size=360, lr=0.02, solve_rate=0.5)
    record = sweep.run_one(spec)
    losses = record["curve"]["eval_loss"]
    # Guessing scores log 10; a minute's worth of sequences gets well below it.
    assert losses[0] > 2.0 and record["final_loss"] < 0.6 * math.log(10)
    assert record["solved_fraction"] > 0.5


def test_without_scikit_learn_the_task_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install 'gatekit\[data\]'"):
        tasks.make("digits")
    with pytest.raises(ValueError, match=r"in task 'digits': .*gatekit\[data\]"):
        compare.parse_task("digits")
