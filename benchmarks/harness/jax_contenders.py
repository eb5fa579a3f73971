"""JAX's contenders: ``course``, ``peephole`` and ``cifg``, and issue 13's cells (``gru``,
``mgu``, ``mut1``, ``mingru``, ``minlstm``, ``slstm``, ``layernorm``) as ``jax.jit`` of a
``jax.lax.scan`` over time, with the parameters of gatekit's cell of that variant; compiled when
built, the compile time kept apart from the timed call. JAX is imported when a contender is
built: without it, each is :class:`~harness.contenders.Unavailable`."""
import time

from harness.cases import inputs
from harness.contenders import (LOOP_VARIANTS, NEW_CELLS, Contender, Prepared, Unavailable,
                                carried_memories, gatekit_cell, stacked_parameters,
                                variant_applies)

__all__ = ["LN_EPSILON", "import_jax", "jax_callable", "jax_contenders", "jax_loop",
           "jax_new_cell_step", "jax_step"]


#: ε of layernorm's normalisations, inside the square root: haste's (and torch.nn.LayerNorm's).
LN_EPSILON = 1e-5


def import_jax():
    """The ``jax`` module with float64 enabled, or :class:`~harness.contenders.Unavailable`
    saying how to get it."""
    try:
        import jax
    except ImportError:
        raise Unavailable("JAX is not installed (pip install jax jaxlib)") from None
    jax.config.update("jax_enable_x64", True)        # for the float64 groups
    return jax


def jax_step(variant):
    """One time step of a custom variant for ``jax.lax.scan``: ``((h, c), x_t) -> ((h, c), h)``,
    reading ``params`` with W (kH, H + D), b (kH,) stacked as
    :func:`~harness.contenders.stacked_parameters` stacks them."""
    jax = import_jax()
    jnp, sigmoid = jax.numpy, jax.nn.sigmoid

    def step(params, carry, x_t):
        h, c = carry
        z = jnp.concatenate([h, x_t], axis=1) @ params["W"].T + params["b"]
        if variant == "course":
            z_f, z_n, z_i, z_v = jnp.split(z, 4, axis=1)
            kept = c * sigmoid(z_f)
            c = kept + jnp.tanh(z_n) * sigmoid(z_i)
            h = jnp.tanh(kept @ params["W_u"].T + params["b_u"]) * sigmoid(z_v)
        elif variant == "peephole":
            z_f, z_n, z_i, z_v = jnp.split(z, 4, axis=1)
            f = sigmoid(z_f + params["p_f"] * c)
            i = sigmoid(z_i + params["p_i"] * c)
            c = c * f + jnp.tanh(z_n) * i
            h = jnp.tanh(c) * sigmoid(z_v + params["p_v"] * c)
        elif variant == "cifg":
            z_f, z_n, z_v = jnp.split(z, 3, axis=1)
            f = sigmoid(z_f + params["p_f"] * c)
            c = c * f + jnp.tanh(z_n) * (1 - f)
            h = jnp.tanh(c) * sigmoid(z_v + params["p_v"] * c)
        else:
            raise ValueError(f"no JAX version of variant {variant!r}")
        return (h, c), h
    return step


def jax_new_cell_step(variant):
    """One time step of one of issue 13's cells for ``jax.lax.scan``: ``(state, x_t) ->
    (state, h)``, reading ``params`` under gatekit's names (W_f, b_f, W_r, ...), as REFERENCE.md
    writes the cell. ``state`` is every memory the cell carries, in gatekit's order
    (:func:`~harness.contenders.carried_memories`): ``(h,)`` for the one-memory cells,
    ``(h, c)`` for layernorm, ``(h, c, m, n)`` for slstm."""
    jax = import_jax()
    jnp, sigmoid = jax.numpy, jax.nn.sigmoid

    def layer_norm(v):
        centred = v - v.mean(axis=-1, keepdims=True)
        return centred / jnp.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + LN_EPSILON)

    def step(p, state, x_t):
        h = state[0]
        both = jnp.concatenate([h, x_t], axis=1)
        if variant == "gru":
            r = sigmoid(both @ p["W_r"].T + p["b_r"])
            f = sigmoid(both @ p["W_f"].T + p["b_f"])
            n = jnp.tanh(x_t @ p["W_n"].T + p["b_n"] + r * (h @ p["W_hn"].T + p["b_hn"]))
            h = f * h + (1 - f) * n
        elif variant == "mgu":
            f = sigmoid(both @ p["W_f"].T + p["b_f"])
            i = 1 - f
            h = f * h + i * jnp.tanh((i * h) @ p["W_hn"].T + x_t @ p["W_n"].T + p["b_n"])
        elif variant == "mut1":
            f = sigmoid(x_t @ p["W_f"].T + p["b_f"])
            r = sigmoid(both @ p["W_r"].T + p["b_r"])
            n = jnp.tanh((r * h) @ p["W_hh"].T + jnp.tanh(x_t) + p["b_h"])
            h = f * h + (1 - f) * n
        elif variant == "mingru":
            f = sigmoid(x_t @ p["W_f"].T + p["b_f"])
            h = f * h + (1 - f) * (x_t @ p["W_n"].T + p["b_n"])
        elif variant == "minlstm":
            f = sigmoid(x_t @ p["W_f"].T + p["b_f"])
            i = sigmoid(x_t @ p["W_i"].T + p["b_i"])
            h = (f * h + i * (x_t @ p["W_n"].T + p["b_n"])) / (f + i)
        elif variant == "slstm":
            _, c, m, n = state
            log_f = both @ p["W_f"].T + p["b_f"] + m
            log_i = both @ p["W_i"].T + p["b_i"]
            m = jnp.maximum(log_f, log_i)
            f, i = jnp.exp(log_f - m), jnp.exp(log_i - m)
            c = f * c + i * jnp.tanh(both @ p["W_n"].T + p["b_n"])
            n = f * n + i
            h = sigmoid(both @ p["W_v"].T + p["b_v"]) * c / n
            return (h, c, m, n), h
        elif variant == "layernorm":
            _, c = state
            z_x = jnp.concatenate([x_t @ p[f"W_x{k}"].T for k in "finv"], axis=1)
            z_h = jnp.concatenate([h @ p[f"W_h{k}"].T for k in "finv"], axis=1)
            a = (p["g_x"].reshape(-1) * layer_norm(z_x) + p["g_h"].reshape(-1) * layer_norm(z_h)
                 + p["b"].reshape(-1))
            a_f, a_i, a_n, a_v = jnp.split(a, 4, axis=1)
            c = sigmoid(a_f) * c + sigmoid(a_i) * jnp.tanh(a_n)
            h = sigmoid(a_v) * jnp.tanh(p["g_c"] * layer_norm(c) + p["b_c"])
            return (h, c), h
        else:
            raise ValueError(f"no JAX version of variant {variant!r}")
        return (h,), h
    return step


def jax_loop(cell):
    """``(run, params)``: ``run(params, x) -> (y, state)`` the variant of ``cell`` as a
    ``jax.lax.scan`` over time (not jitted), and ``cell``'s parameters as JAX arrays (stacked
    as :func:`~harness.contenders.stacked_parameters` stacks them; issue 13's cells under
    gatekit's names). ``state`` is ``(h, c)``; for issue 13's cells every memory the cell
    carries, as :func:`jax_new_cell_step` has it."""
    jax = import_jax()
    jnp = jax.numpy
    H = cell.hidden_size
    if cell.variant in NEW_CELLS:
        params = {name: jnp.asarray(array) for name, array in cell.params.items()}
        new_cell = jax_new_cell_step(cell.variant)
        memories = carried_memories(cell)

        def run(params, x):
            zero = jnp.zeros((x.shape[1], H), x.dtype)
            state, y = jax.lax.scan(lambda state, x_t: new_cell(params, state, x_t),
                                    (zero,) * memories, x)
            return y, state
        return run, params
    params = {name: jnp.asarray(array) for name, array in stacked_parameters(cell).items()}
    step = jax_step(cell.variant)

    def run(params, x):
        zero = jnp.zeros((x.shape[1], H), x.dtype)
        (h, c), y = jax.lax.scan(lambda carry, x_t: step(params, carry, x_t), (zero, zero), x)
        return y, (h, c)
    return run, params


def jax_callable(run, params, x, dy, mode):
    """(call, compile_seconds): ``jax.jit`` of ``run`` (forward) or of the gradient of
    ``sum(y * dy)`` with respect to the parameters and ``x``, lowered and compiled for these
    arguments before it is returned; the call blocks until the result is ready."""
    jax = import_jax()
    if mode == "forward":
        function, args = (lambda params, x: run(params, x)[0]), (params, x)
    else:
        def loss(params, x, dy):
            return (run(params, x)[0] * dy).sum()
        function, args = jax.grad(loss, argnums=(0, 1)), (params, x, dy)
    start = time.perf_counter()
    compiled = jax.jit(function).lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(*args))), compile_seconds


def _jax_loop_builder(variant):
    def build(case, settings):
        jax = import_jax()
        run, params = jax_loop(gatekit_cell(case, variant))
        x, dy = (jax.numpy.asarray(a) for a in inputs(case))
        fn, compile_seconds = jax_callable(run, params, x, dy, case.mode)
        return Prepared(fn, {"compile_s": compile_seconds, "jax": jax.__version__,
                             "jax_devices": [str(d) for d in jax.devices()]})
    return build


def jax_contenders():
    """The ``jax`` family, in the report's order."""
    found = [Contender(f"jax-scan-{variant}", f"jax scan {variant}", "jax",
                       _jax_loop_builder(variant)) for variant in LOOP_VARIANTS]
    for variant in NEW_CELLS:
        applies = variant_applies(variant)          # as gatekit's cell, but S6 (as PyTorch's)
        found.append(Contender(f"jax-scan-{variant}", f"jax scan {variant}", "jax",
                               _jax_loop_builder(variant),
                               lambda case, applies=applies: case.shape != "S6" and applies(case)))
    return found
