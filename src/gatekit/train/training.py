"""Fitting a cell: a linear readout on its short-term memory, a training loop with a progress
bar, early stopping, and checkpoints that resume.

Checkpoints are ``.npz`` files, written atomically (:func:`gatekit.io.files.atomic_write`), so a
crash never leaves half a file, and read without unpickling and without trusting them.
"""
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from gatekit.version import __version__
from gatekit.core.cell import Cell
from gatekit.nn.optimisers import clip_grad_norm
from gatekit.io.files import atomic_write, StoredArrays

__all__ = ["CHECKPOINT_FORMAT", "History", "load_checkpoint", "Model", "Progress",
           "save_checkpoint", "train"]

CHECKPOINT_FORMAT = 1


class Model:
    """A cell and a linear readout on its STM: ``output_t = W_y STM_t + b_y`` — the seed's
    "output that determines what the input is". ``params`` holds the cell's parameters and
    ``W_y`` (O, H), ``b_y`` (O,), all updated in place by training."""

    def __init__(self, cell, output_size, seed=None):
        if not isinstance(cell, Cell):
            raise TypeError(f"cell must be a gatekit.Cell; got {type(cell).__name__}")
        self.cell = cell
        H = cell.hidden_size
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(H)
        self.readout = {"W_y": rng.uniform(-bound, bound, (output_size, H)).astype(cell.dtype),
                        "b_y": np.zeros(output_size, cell.dtype)}
        self.params = {**cell.params, **self.readout}

    @property
    def output_size(self):
        return self.readout["b_y"].shape[0]

    def __call__(self, x, state=None):
        """Outputs (T, B, O) for every step of ``x``."""
        y, _ = self.cell(x, state)
        return y @ self.readout["W_y"].T + self.readout["b_y"]

    def loss_and_grads(self, x, target, loss):
        """The loss on one batch and the gradient of every parameter (named like ``params``)."""
        y, _, tape = self.cell.forward(x, keep=True)
        outputs = y @ self.readout["W_y"].T + self.readout["b_y"]
        value, d_outputs = loss(outputs, target)
        T, B, O = d_outputs.shape
        flat_d = d_outputs.reshape(T * B, O)
        cell_grads = self.cell.backward(tape, d_outputs @ self.readout["W_y"])
        grads = {name: cell_grads[name] for name in self.cell.params}
        grads["W_y"] = flat_d.T @ y.reshape(T * B, -1)
        grads["b_y"] = flat_d.sum(axis=0)
        return value, grads


@dataclass
class History:
    """What training did: the loss of every training step, and why it stopped."""
    losses: list = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0

    @property
    def steps(self):
        return len(self.losses)


class Progress:
    """A one-line progress bar on stderr, redrawn in place on a terminal and printed every
    tenth of the run otherwise."""

    def __init__(self, total, stream=None, width=30):
        self.total, self.width = total, width
        self.stream = sys.stderr if stream is None else stream
        self.interactive = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.last_tenth = -1

    def update(self, step, loss):
        tenth = 10 * step // max(self.total, 1)
        if not self.interactive and tenth == self.last_tenth and step != self.total:
            return
        self.last_tenth = tenth
        filled = self.width * step // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"step {step}/{self.total} [{bar}] loss {loss:.5f} {elapsed:.1f}s"
        self.stream.write(("\r" + line) if self.interactive else (line + "\n"))
        self.stream.flush()

    def close(self):
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def train(model, batches, loss, optimizer, steps, *, clip=None, target_loss=None,
          checkpoint=None, checkpoint_every=100, resume=True, progress=True, seed=0,
          input_noise=0.0):
    """Train ``model`` for ``steps`` optimizer steps and return a :class:`History`.

    ``batches(rng)`` returns one training batch ``(x, target)``; ``loss`` is one of
    :mod:`gatekit.losses`; ``optimizer`` one of :mod:`gatekit.optimisers` built on
    ``model.params``. ``clip`` caps the joint gradient norm. Training stops early once the
    loss of a step is at most ``target_loss``. ``input_noise`` is the standard deviation of
    Gaussian noise added to every training input (a regulariser, as in Greff et al.'s study),
    drawn from the generator of ``seed``, which ``batches`` is handed too.

    With ``checkpoint`` (a path), the model, the optimizer, the random generator and the loss
    history are saved every ``checkpoint_every`` steps and at the end; if the file exists and
    ``resume`` is true, training continues from it. A non-finite loss or gradient stops
    training before the update is applied: the model keeps the parameters of the last finite
    step, the checkpoint on disk stays the last good one, and ``History.stopped`` says why.
    """
    if isinstance(input_noise, bool) or not (np.isscalar(input_noise) and input_noise >= 0
                                              and np.isfinite(input_noise)):
        raise ValueError(f"input_noise must be a standard deviation >= 0; got {input_noise!r}")
    rng = np.random.default_rng(seed)
    history = History()
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        history.losses = load_checkpoint(checkpoint, model, optimizer, rng)
    bar = Progress(steps) if progress else None
    start = time.perf_counter()
    try:
        while history.steps < steps:
            x, target = batches(rng)
            if input_noise:
                x = x + rng.normal(0.0, input_noise, np.shape(x))
            value, grads = model.loss_and_grads(x, target, loss)
            norm = clip_grad_norm(grads, np.inf if clip is None else clip)
            if not (np.isfinite(value) and np.isfinite(norm)):
                history.stopped = (f"non-finite {'loss' if not np.isfinite(value) else 'gradient'}"
                                   f" at step {history.steps + 1}; parameters kept from step "
                                   f"{history.steps}")
                break
            optimizer.step(grads)
            history.losses.append(value)
            if bar is not None:
                bar.update(history.steps, value)
            if checkpoint is not None and history.steps % checkpoint_every == 0:
                save_checkpoint(checkpoint, model, optimizer, rng, history.losses)
            if target_loss is not None and value <= target_loss:
                history.stopped = f"reached target loss {target_loss} at step {history.steps}"
                break
        else:
            history.stopped = f"ran {steps} steps"
    finally:
        if bar is not None:
            bar.close()
    if checkpoint is not None and not history.stopped.startswith("non-finite"):
        save_checkpoint(checkpoint, model, optimizer, rng, history.losses)
    history.seconds = time.perf_counter() - start
    return history


def save_checkpoint(path, model, optimizer, rng, losses):
    """Write ``model``, ``optimizer``, ``rng`` and ``losses`` to ``path`` atomically."""
    cell = model.cell
    meta = {"format": CHECKPOINT_FORMAT, "gatekit": __version__,
            "variant": cell.variant, "gates": cell.gate_names, "dtype": cell.dtype.name,
            "input_size": cell.input_size, "hidden_size": cell.hidden_size,
            "output_size": model.output_size, "optimizer": type(optimizer).__name__,
            "rng": rng.bit_generator.state}
    if cell.regularised:
        # so that a resumed run draws the zoneout and dropout masks the straight run draws
        meta["mask_rng"] = cell.mask_rng.bit_generator.state
    arrays = {f"param/{name}": array for name, array in model.params.items()}
    arrays.update({f"optimizer/{key}": value for key, value in optimizer.state_dict().items()})
    arrays["losses"] = np.asarray(losses, dtype=np.float64)
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def load_checkpoint(path, model, optimizer, rng):
    """Restore ``model``, ``optimizer`` and ``rng`` from a checkpoint; returns the losses.

    Raises :class:`gatekit.io.files.LoadError` (a ``ValueError``) naming the file and what is
    wrong when it is damaged, of a newer format, or written for another model, optimizer or
    random generator; every array's header is checked against the arrays this run has before
    anything is read, and nothing is restored unless everything can be."""
    with StoredArrays(path, "gatekit checkpoint") as stored:
        meta = stored.read_meta()
        if meta["format"] > CHECKPOINT_FORMAT:
            raise stored.error(f"has checkpoint format {meta['format']}, newer than this "
                               f"gatekit ({__version__}) reads ({CHECKPOINT_FORMAT})")
        cell = model.cell
        written = tuple(meta.get(key) for key in ("gates", "optimizer", "dtype"))
        running = (cell.gate_names, type(optimizer).__name__, cell.dtype.name)
        if written != running:
            raise stored.error(f"was written for gates {written[0]} with {written[1]} in "
                               f"{written[2]}; this run has {cell.gate_names} with "
                               f"{type(optimizer).__name__} in {cell.dtype.name}")
        expected = {f"param/{name}": array for name, array in model.params.items()}
        expected.update({f"optimizer/{key}": np.asarray(value)
                         for key, value in optimizer.state_dict().items()})
        _check_headers(stored, expected)
        losses = _read_losses(stored)
        arrays = {key: stored.read(key) for key in expected}
        steps = [key for key, array in arrays.items() if array.dtype.kind in "iu"]
        for key in steps:
            if np.any(arrays[key] < 0):
                raise stored.error(f"is damaged: its {key!r} is {int(arrays[key])}; a count "
                                   "of steps is at least 0")
        restored_rng = _restored_bit_generator(stored, meta.get("rng"), rng)
        masks_rng = None
        if "mask_rng" in meta:
            masks_rng = _restored_bit_generator(stored, meta["mask_rng"], cell.mask_rng)
        for name, array in model.params.items():
            array[...] = arrays[f"param/{name}"]
        optimizer.load_state_dict({key[len("optimizer/"):]: arrays[key]
                                   for key in expected if key.startswith("optimizer/")})
        rng.bit_generator.state = restored_rng.state
        if masks_rng is not None:
            cell.mask_rng.bit_generator.state = masks_rng.state
        return losses


def _check_headers(stored, expected):
    missing = [key for key in expected if key not in stored.headers]
    unexpected = sorted(set(stored.headers) - set(expected) - {"meta", "losses"})
    if missing or unexpected:
        raise stored.error("does not hold the arrays of this model and optimizer: "
                           + "; ".join(part for part in (
                               missing and f"it lacks {', '.join(missing)}",
                               unexpected and f"it has no use for {', '.join(unexpected)}")
                               if part))
    for key, array in expected.items():
        dtype, shape = stored.headers[key]
        if (dtype, shape) != (array.dtype, array.shape):
            raise stored.error(f"holds {key!r} as {dtype} of shape {shape}; this run has "
                               f"{array.dtype} of shape {array.shape}")


def _read_losses(stored):
    if "losses" not in stored.headers:
        raise stored.error("does not hold the losses of the run it saved")
    dtype, shape = stored.headers["losses"]
    if dtype != np.float64 or len(shape) != 1:
        raise stored.error(f"holds losses as {dtype} of shape {shape}; they should be one "
                           "float64 number per step")
    return [float(v) for v in stored.read("losses")]


def _restored_bit_generator(stored, state, rng):
    """A fresh bit generator of ``rng``'s kind in ``state``, so that a bad state touches
    nothing of ``rng``."""
    restored = type(rng.bit_generator)()
    try:
        restored.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise stored.error(f"holds a random generator state that a "
                           f"{type(rng.bit_generator).__name__} cannot take: {error!r}") \
            from None
    return restored
