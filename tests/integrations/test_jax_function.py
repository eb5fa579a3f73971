"""gatekit.jax.cell: values against the NumPy reference, gradients against finite differences
(jax.test_util.check_grads) and the reference's backward pass, under jit, grad and vmap. Skipped
without JAX."""
import numpy as np
import pytest

import gatekit
from gatekit import reference

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
from jax.test_util import check_grads  # noqa: E402  (after the skip)

T, B, D, H = 5, 3, 4, 4


@pytest.fixture
def x64():
    """float64 arrays for one test (JAX's default is float32)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _case(variant, dtype, seed=0):
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    params = {name: jnp.asarray(np.array(value)) for name, value in cell.params.items()}
    return cell, params, x


@pytest.mark.parametrize("variant", ["standard", "peephole", "gru", "slstm", "minlstm"])
def test_values_and_gradients_match_the_reference(variant, x64):
    cell, params, x = _case(variant, np.float64)
    h0 = np.random.default_rng(1).standard_normal((B, H)) * 0.5
    state = (h0, h0 if cell.one_memory else h0[::-1].copy())

    def loss(params, x, state):
        y, final = gatekit.jax.cell(params, x, state, variant=variant)
        return jnp.sum(y * jnp.arange(y.size).reshape(y.shape) / y.size) + jnp.sum(final[0] ** 2)

    y, final = jax.jit(lambda p, x, s: gatekit.jax.cell(p, x, s, variant=variant))(
        params, x, state)
    y_ref, final_ref = reference.forward(cell, x, state, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-10)
    for ours, theirs in zip(final, final_ref):
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-10)

    dparams, dx, dstate = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, state)
    dy = np.arange(y_ref.size).reshape(y_ref.shape) / y_ref.size
    grads = reference.backward(cell, x, dy, state, dstm=2 * final_ref[0], dtype=np.float64)
    np.testing.assert_allclose(np.asarray(dx), grads["x"], atol=1e-10)
    np.testing.assert_allclose(np.asarray(dstate[0]), grads["stm0"], atol=1e-10)
    np.testing.assert_allclose(np.asarray(dstate[1]), grads["ltm0"], atol=1e-10)
    for name, value in dparams.items():
        np.testing.assert_allclose(np.asarray(value), grads[name], atol=1e-10, err_msg=name)


@pytest.mark.parametrize("variant", ["standard", "janet", "layernorm"])
def test_gradients_match_finite_differences(variant, x64):
    _, params, x = _case(variant, np.float64, seed=3)

    def run(params, x):
        y, final = gatekit.jax.cell(params, x, variant=variant)
        return y, final[1]

    check_grads(run, (params, x), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_float32_under_jit():
    cell, params, x = _case("cifg", np.float32)
    y, (stm, ltm) = jax.jit(lambda p, x: gatekit.jax.cell(p, x, variant="cifg"))(params, x)
    assert y.dtype == jnp.float32
    y_ref, _ = reference.forward(cell, x, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5, rtol=1e-4)


def test_vmap_maps_calls_one_by_one(x64):
    _, params, x = _case("peephole", np.float64)
    xs = np.stack([x, 2 * x, -x])

    def loss(params, x):
        y, _ = gatekit.jax.cell(params, x, variant="peephole")
        return jnp.sum(y ** 2)

    ys, _ = jax.vmap(lambda x: gatekit.jax.cell(params, x, variant="peephole"))(xs)
    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, xs)
    for k in range(len(xs)):
        y, _ = gatekit.jax.cell(params, xs[k], variant="peephole")
        np.testing.assert_array_equal(np.asarray(ys[k]), np.asarray(y))
        one = jax.grad(loss)(params, xs[k])
        for name in params:
            np.testing.assert_allclose(np.asarray(grads[name][k]), np.asarray(one[name]),
                                       atol=1e-12, err_msg=name)


def test_bad_arguments_are_refused_by_name():
    _, params, x = _case("standard", np.float32)
    with pytest.raises(ValueError, match="params must hold exactly the parameters"):
        gatekit.jax.cell({k: v for k, v in params.items() if k != "b_v"}, x)
    with pytest.raises(ValueError, match=r"params\['W_f'\] must have shape"):
        gatekit.jax.cell({**params, "W_f": params["W_f"][:, :3]}, x)
    with pytest.raises(TypeError, match=r"state\[1\] \(ltm\) is int32"):
        gatekit.jax.cell(params, x, (np.zeros((B, H), np.float32), np.zeros((B, H), np.int32)))
    with pytest.raises(ValueError, match="x must have shape"):
        gatekit.jax.cell(params, x[0])
    with pytest.raises(ValueError, match="no zoneout"):
        gatekit.jax.cell(params, x, zoneout=(0.1, 0.1))
