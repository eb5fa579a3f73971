"""What the tests of gatekit.interop share: the optional libraries (each test that needs one is
skipped without it), tolerances, and a NumPy runner of stacked, bidirectional, ragged layers
into which each test puts its library's step, written out in that test."""
import importlib
import os

import numpy as np
import pytest

from support import rel_error, reverse_each


def optional(name):
    try:
        return importlib.import_module(name)
    except Exception:           # absent, or present but unable to start
        return None


torch = optional("torch")
if "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"] = "torch" if torch is not None else "numpy"
keras = optional("keras")
onnx = optional("onnx")
ort = optional("onnxruntime")

# Keras 3 on NumPy 2 warns about its own __array__ when reading weights; not ours to fix.
KERAS_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
needs_keras = pytest.mark.skipif(keras is None, reason="Keras is not installed")
needs_ort = pytest.mark.skipif(ort is None or onnx is None,
                               reason="onnx and onnxruntime are not installed")

TOLERANCES = [pytest.param(np.float64, 1e-10, id="f64"), pytest.param(np.float32, 1e-5, id="f32")]


def torch_dtype(dtype):
    return {np.float32: torch.float32, np.float64: torch.float64}[dtype]


def keras_numpy(outputs):
    """A Keras layer's outputs (tensors of its backend) as NumPy arrays."""
    return [np.asarray(o.detach().cpu()) if hasattr(o, "detach") else np.asarray(o)
            for o in outputs]


def assert_relatively_close(got, want, tol, what):
    assert np.shape(got) == np.shape(want), what
    assert rel_error(got, want) <= tol, f"{what}: relative error {rel_error(got, want):.2e}"


def run_layers(step_fn, x, layers, lengths=None, memories=1):
    """A stack of layers in NumPy, float64. ``layers``: per layer, a list of its directions'
    weights (dicts with ``"H"``); ``step_fn(weights, x_t, *state)`` returns the new state, the
    output ``h`` first (a lone ``h`` where ``memories`` is 1). The reverse direction runs on each
    sequence reversed within its length; a finished sequence keeps its state and outputs zeros.
    ``x`` (T, B, D). Returns the last layer's outputs (T, B, dirs * H) and each memory's final
    values, (layers * dirs, B, H)."""
    T, B, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    finals = []
    for directions in layers:
        ys = []
        for d, weights in enumerate(directions):
            seen = x if d == 0 else reverse_each(x, lengths)
            state = tuple(np.zeros((B, weights["H"])) for _ in range(memories))
            y = np.zeros((T, B, weights["H"]))
            for t in range(T):
                new = step_fn(weights, seen[t].astype(np.float64), *state)
                new = new if memories > 1 else (new,)
                live = (t < lengths)[:, None]
                state = tuple(np.where(live, a, b) for a, b in zip(new, state))
                y[t] = np.where(live, state[0], 0)
            ys.append(y if d == 0 else reverse_each(y, lengths))
            finals.append(state)
        x = np.concatenate(ys, axis=2)
    return (x, *(np.stack(memory) for memory in zip(*finals)))
