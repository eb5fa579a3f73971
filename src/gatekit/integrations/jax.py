"""gatekit as a JAX function (``pip install 'gatekit[jax]'``), reached as ``gatekit.jax``:
:func:`cell` runs a gatekit cell over a sequence and is usable under ``jax.jit``, ``jax.grad``
and ``jax.vmap``.

How it runs: a ``jax.custom_vjp`` whose forward and backward passes are gatekit's compiled ones,
called on the host through ``jax.pure_callback``. The backward callback runs the forward pass
again, keeping its tape, then the backward pass over it: the residuals JAX keeps between the
two passes are the inputs alone, and no tape outlives a callback. The cost is one more forward
pass per gradient (a training step runs forward twice and backward once).

Each traced call builds one :class:`gatekit.Cell` for its composition and writes the parameters
it is given into it at every callback, under a lock of its own, so calls of one compiled
function from several threads take turns. ``jax.vmap`` maps the callbacks sequentially (one
gatekit call per element of the mapped axis): the B sequences of one call are the batch that
runs fast.
"""
import threading

import jax
import jax.numpy as jnp
import numpy as np

from gatekit.core.cell import FLOAT_DTYPES, Cell

__all__ = ["cell"]


def cell(params, x, state=None, variant="standard", **gates):
    """Run a gatekit cell over ``x``: ``y, state = gatekit.jax.cell(params, x, state)``, as
    :class:`gatekit.Cell` does.

    ``params`` is a dict of arrays named as ``gatekit.Cell.params`` (``W_f``, ``b_f``, ...) for
    ``variant`` with the gates ``forget=``, ``learn=``, ``remember=``, ``use=`` swapped in;
    ``x`` is (T, B, input_size) and fixes the dtype, float32 or float64 (with
    ``jax_enable_x64``), which the parameters and the state must share. ``state`` is None
    (zeros, and the extra memories' initial values) or ``(stm, ltm)`` (then the extra memories),
    each (B, hidden_size). Returns ``y`` (T, B, hidden_size) and the final
    ``(stm, ltm, *memories)``. Differentiable with respect to ``params``, ``x`` and ``state``.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays named as gatekit.Cell.params; got "
                        f"{type(params).__name__}")
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, input_size); got {x.shape}")
    dtype = np.dtype(x.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32 or float64 (float64 needs jax_enable_x64); got "
                        f"{dtype}")
    host = _Host(params, x.shape, dtype, variant, gates)
    params = tuple(host.checked(f"params[{key!r}]", params[key], host.cell.params[key].shape)
                   for key in host.keys)
    state = host.initial_state(state)
    y, final = _differentiable(host)(params, x, state)
    return y, final


class _Host:
    """The gatekit cell one traced call runs on the host, and its two callbacks."""

    def __init__(self, params, shape, dtype, variant, gates):
        T, B, D = shape
        blocks = [np.shape(value) for key, value in params.items() if key.startswith("W_")]
        if not blocks or len(blocks[0]) != 2:
            raise ValueError(f"params must hold the block weights W_k (hidden_size, ...) of the "
                             f"cell; got {', '.join(params) or 'none'}")
        self.cell = Cell(D, blocks[0][0], variant, dtype=dtype, **gates)
        if self.cell.regularised:
            # The backward callback runs the forward pass again: its masks would be new ones.
            raise ValueError("gatekit.jax.cell takes no zoneout or recurrent dropout")
        self.keys = list(self.cell.params)
        if set(params) != set(self.keys):
            raise ValueError(f"params must hold exactly the parameters of this cell, "
                             f"{', '.join(self.keys)}; got {', '.join(params)}")
        self.dtype, self.T, self.B = dtype, T, B
        self.lock = threading.Lock()

    def checked(self, name, value, shape):
        value = jnp.asarray(value)
        if value.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}; got {value.shape}")
        if np.dtype(value.dtype) != self.dtype:
            raise TypeError(f"{name} is {value.dtype}; x is {self.dtype}, and the parameters "
                            "and the state must share its dtype")
        return value

    def initial_state(self, state):
        """``state`` as a tuple of checked arrays; ``()`` for the initial state of the gates."""
        if state is None:
            return ()
        names = ("stm", "ltm") + self.cell.memories
        if not (isinstance(state, (tuple, list)) and len(state) in {2, len(names)}):
            raise TypeError(f"state must be ({', '.join(names)}) of arrays (B, hidden_size), "
                            f"or (stm, ltm); got {type(state).__name__}")
        shape = (self.B, self.cell.hidden_size)
        return tuple(self.checked(f"state[{k}] ({name})", value, shape)
                     for k, (name, value) in enumerate(zip(names, state)))

    def _outputs(self):
        H = self.cell.hidden_size
        memory = jax.ShapeDtypeStruct((self.B, H), self.dtype)
        return (jax.ShapeDtypeStruct((self.T, self.B, H), self.dtype),
                (memory,) * (2 + len(self.cell.memories)))

    def _fill(self, params):
        for key, value in zip(self.keys, params):
            self.cell.params[key] = value

    def forward(self, params, x, state):
        return jax.pure_callback(self._forward, self._outputs(), params, x, state,
                                 vmap_method="sequential")

    def _forward(self, params, x, state):
        with self.lock:
            self._fill(params)
            y, final = self.cell.forward(x, tuple(state) or None)
        return y, tuple(final)

    def backward(self, params, x, state, dy, dfinal):
        shapes = (tuple(jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params),
                  jax.ShapeDtypeStruct(x.shape, x.dtype),
                  tuple(jax.ShapeDtypeStruct(s.shape, s.dtype) for s in state))
        return jax.pure_callback(self._backward, shapes, params, x, state, dy, dfinal,
                                 vmap_method="sequential")

    def _backward(self, params, x, state, dy, dfinal):
        names = ["stm0", "ltm0", *(f"{name}0" for name in self.cell.memories)]
        with self.lock:
            self._fill(params)
            _, _, tape = self.cell.forward(x, tuple(state) or None, keep=True)
            dstm, dltm, *dmemories = dfinal
            grads = self.cell.backward(tape, dy, dstm, dltm, dmemories or None)
        return (tuple(grads[key] for key in self.keys), grads["x"],
                tuple(grads[name] for name in names[:len(state)]))


def _differentiable(host):
    """``(params, x, state) -> (y, final)`` on ``host``, with gatekit's backward pass as its
    vector-Jacobian product."""

    @jax.custom_vjp
    def run(params, x, state):
        return host.forward(params, x, state)

    def forward(params, x, state):
        return host.forward(params, x, state), (params, x, state)

    def backward(residuals, cotangents):
        dy, dfinal = cotangents
        return host.backward(*residuals, dy, dfinal)

    run.defvjp(forward, backward)
    return run
