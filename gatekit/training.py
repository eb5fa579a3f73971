"""Fitting a cell: a linear readout on its short-term memory, a training loop with a progress
bar, early stopping, and checkpoints that resume.

Checkpoints are ``.npz`` files read with ``allow_pickle=False`` and written atomically
(a temporary file in the same folder, then a rename), so a crash never leaves half a file.
"""
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

import gatekit
from gatekit.cell import Cell, as_float_array
from gatekit.optim import clip_grad_norm

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
          checkpoint=None, checkpoint_every=100, resume=True, progress=True, seed=0):
    """Train ``model`` for ``steps`` optimizer steps and return a :class:`History`.

    ``batches(rng)`` returns one training batch ``(x, target)``; ``loss`` is one of
    :mod:`gatekit.losses`; ``optimizer`` one of :mod:`gatekit.optim` built on
    ``model.params``. ``clip`` caps the joint gradient norm. Training stops early once the
    loss of a step is at most ``target_loss``.

    With ``checkpoint`` (a path), the model, the optimizer, the random generator and the loss
    history are saved every ``checkpoint_every`` steps and at the end; if the file exists and
    ``resume`` is true, training continues from it. A non-finite loss or gradient stops
    training before the update is applied: the model keeps the parameters of the last finite
    step, the checkpoint on disk stays the last good one, and ``History.stopped`` says why.
    """
    rng = np.random.default_rng(seed)
    history = History()
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        history.losses = load_checkpoint(checkpoint, model, optimizer, rng)
    bar = Progress(steps) if progress else None
    start = time.perf_counter()
    try:
        while history.steps < steps:
            x, target = batches(rng)
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


def atomic_savez(path, arrays):
    """Write ``arrays`` to ``path`` as .npz, atomically: a temporary file, then a rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_checkpoint(path, model, optimizer, rng, losses):
    cell = model.cell
    meta = {"format": CHECKPOINT_FORMAT, "gatekit": gatekit.__version__,
            "variant": cell.variant, "gates": cell.gate_names, "dtype": cell.dtype.name,
            "input_size": cell.input_size, "hidden_size": cell.hidden_size,
            "output_size": model.output_size, "optimizer": type(optimizer).__name__,
            "rng": rng.bit_generator.state}
    arrays = {f"param/{name}": array for name, array in model.params.items()}
    arrays.update({f"optimizer/{key}": value for key, value in optimizer.state_dict().items()})
    arrays["losses"] = np.asarray(losses, dtype=np.float64)
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_savez(path, arrays)


def load_checkpoint(path, model, optimizer, rng):
    """Restore ``model``, ``optimizer`` and ``rng`` from a checkpoint; returns the losses."""
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        if meta.get("format", 0) > CHECKPOINT_FORMAT:
            raise ValueError(f"{path} has checkpoint format {meta['format']}, newer than this "
                             f"gatekit ({gatekit.__version__}) reads ({CHECKPOINT_FORMAT})")
        cell = model.cell
        written = (meta["gates"], meta["optimizer"], meta["dtype"])
        running = (cell.gate_names, type(optimizer).__name__, cell.dtype.name)
        if written != running:
            raise ValueError(f"{path} was written for gates {meta['gates']} with "
                             f"{meta['optimizer']} in {meta['dtype']}; this run has "
                             f"{cell.gate_names} with {type(optimizer).__name__} in "
                             f"{cell.dtype.name}")
        for name, array in model.params.items():
            key = f"param/{name}"
            if key not in stored:
                raise ValueError(f"{path} has no parameter {name!r}")
            array[...] = as_float_array(key, stored[key], array.dtype, array.shape)
        optimizer.load_state_dict({key[len("optimizer/"):]: stored[key]
                                   for key in stored.files if key.startswith("optimizer/")})
        rng.bit_generator.state = meta["rng"]
        return [float(v) for v in stored["losses"]]
