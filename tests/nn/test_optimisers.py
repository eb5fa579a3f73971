"""gatekit.optimisers: SGD with momentum and Adam against their update rules written out from
their papers, their state through an .npz file, and clipping by the joint norm."""
import io
import math

import numpy as np
import pytest

from gatekit.nn import optimisers as optim

from support import assert_params_equal, needs


def _params_and_gradients(steps=4):
    rng = np.random.default_rng(3)
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=3)}
    gradients = [{name: rng.normal(size=p.shape) for name, p in params.items()}
                 for _ in range(steps)]
    return params, gradients


def test_sgd_momentum_matches_heavy_ball_by_hand():
    params, gradients = _params_and_gradients()
    lr, mu = 0.1, 0.8
    expected = {name: p.copy() for name, p in params.items()}
    velocity = {name: np.zeros_like(p) for name, p in params.items()}
    sgd = optim.SGD(params, lr=lr, momentum=mu)
    for g in gradients:
        sgd.step({name: v.copy() for name, v in g.items()})
        for name in expected:
            # Polyak's heavy ball as PyTorch writes it: v <- mu v + g; theta <- theta - lr v.
            velocity[name] = mu * velocity[name] + g[name]
            expected[name] = expected[name] - lr * velocity[name]
            np.testing.assert_allclose(params[name], expected[name], rtol=1e-13, atol=1e-15)


def test_nesterov_momentum_tracks_sutskevers_look_ahead_point():
    # On f(theta) = theta' A theta / 2, Sutskever et al. (2013) evaluate the gradient at the
    # look-ahead point theta + mu v: v <- mu v - lr grad f(theta + mu v); theta <- theta + v.
    # The optimizer's parameters are that look-ahead point.
    rng = np.random.default_rng(5)
    A = rng.normal(size=(4, 4))
    A = A @ A.T / 4 + np.eye(4)
    lr, mu = 0.05, 0.9
    theta, v = rng.normal(size=4), np.zeros(4)
    params = {"w": theta.copy()}
    nesterov = optim.SGD(params, lr=lr, momentum=mu, nesterov=True)
    for _ in range(25):
        nesterov.step({"w": A @ params["w"]})
        v = mu * v - lr * (A @ (theta + mu * v))
        theta = theta + v
        np.testing.assert_allclose(params["w"], theta + mu * v, rtol=1e-10, atol=1e-12)


def test_nesterov_momentum_matches_pytorch():
    torch = needs("torch")
    params, gradients = _params_and_gradients(steps=6)
    tensors = {name: torch.tensor(p.copy(), requires_grad=True) for name, p in params.items()}
    theirs = torch.optim.SGD(list(tensors.values()), lr=0.1, momentum=0.7, nesterov=True)
    ours = optim.SGD(params, lr=0.1, momentum=0.7, nesterov=True)
    for g in gradients:
        ours.step({name: v.copy() for name, v in g.items()})
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(g[name])
        theirs.step()
        for name, tensor in tensors.items():
            np.testing.assert_allclose(params[name], tensor.detach().numpy(), rtol=1e-12,
                                       atol=1e-15)


def test_adam_matches_kingma_ba_algorithm_1():
    params, gradients = _params_and_gradients()
    alpha, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    expected = {name: p.copy() for name, p in params.items()}
    m = {name: np.zeros_like(p) for name, p in params.items()}
    v = {name: np.zeros_like(p) for name, p in params.items()}
    adam = optim.Adam(params, lr=alpha, betas=(beta1, beta2), eps=eps)
    for t, g in enumerate(gradients, start=1):
        adam.step({name: a.copy() for name, a in g.items()})
        for name in expected:
            m[name] = beta1 * m[name] + (1 - beta1) * g[name]
            v[name] = beta2 * v[name] + (1 - beta2) * g[name] ** 2
            m_hat = m[name] / (1 - beta1 ** t)
            v_hat = v[name] / (1 - beta2 ** t)
            expected[name] = expected[name] - alpha * m_hat / (np.sqrt(v_hat) + eps)
            np.testing.assert_allclose(params[name], expected[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make", [lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
                                  lambda p: optim.Adam(p, lr=0.01)], ids=["SGD", "Adam"])
def test_optimizer_state_dict_round_trip(make):
    params, gradients = _params_and_gradients(steps=6)
    first = make(params)
    for g in gradients[:3]:
        first.step(g)
    # Through an .npz file without pickle, as checkpoints store it.
    buffer = io.BytesIO()
    np.savez(buffer, **first.state_dict())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as stored:
        state = {key: stored[key] for key in stored.files}

    twin_params = {name: p.copy() for name, p in params.items()}
    second = make(twin_params)
    second.load_state_dict(state)
    for g in gradients[3:]:
        first.step(g)
        second.step(g)
        assert_params_equal(twin_params, params)
    assert second.steps == first.steps == 6


def test_clip_grad_norm_clips_joint_norm_keeping_direction():
    rng = np.random.default_rng(4)
    grads = {"a": rng.normal(size=(3, 4)) * 5, "b": rng.normal(size=7) * 5}
    original = {name: g.copy() for name, g in grads.items()}
    joint = math.sqrt(sum(float((g ** 2).sum()) for g in original.values()))
    assert joint > 2.0

    returned = optim.clip_grad_norm(grads, 2.0)
    assert returned == pytest.approx(joint, rel=1e-12)
    clipped = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert clipped == pytest.approx(2.0, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], original[name] * (2.0 / joint), rtol=1e-12)


def test_clip_grad_norm_leaves_small_gradients_alone():
    grads = {"a": np.array([0.3, -0.4]), "b": np.array([[0.0, 0.0]])}   # norm 0.5
    original = {name: g.copy() for name, g in grads.items()}
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(0.5, rel=1e-15)
    assert_params_equal(grads, original)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_with_non_finite_gradient_touches_nothing(bad):
    grads = {"a": np.array([3.0, bad]), "b": np.array([40.0, 50.0])}
    original = {name: g.copy() for name, g in grads.items()}
    norm = optim.clip_grad_norm(grads, 1.0)
    assert not np.isfinite(norm)
    for name in grads:
        np.testing.assert_array_equal(grads[name], original[name])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_clip_grad_norm_clips_huge_but_finite_float32_gradients():
    grads = {"a": np.array([3e20, -4e20], np.float32)}
    assert np.all(np.isfinite(grads["a"]))
    norm = optim.clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5e20, rel=1e-6)
    np.testing.assert_allclose(grads["a"], [0.6, -0.8], rtol=1e-6)
