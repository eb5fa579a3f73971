"""gatekit.losses: the value and gradient of each loss against a NumPy formula written here
and centred finite differences, and what a loss refuses."""
import numpy as np
import pytest

from gatekit.nn import losses

from support import cross_entropy_by_hand, mse_by_hand, numerical_gradient


@pytest.mark.parametrize("last_step_only", [False, True])
def test_mean_squared_error_value_and_gradient(last_step_only):
    rng = np.random.default_rng(1)
    T, B, O = 4, 3, 2
    outputs = rng.normal(size=(T, B, O))
    target = rng.normal(size=(B, O) if last_step_only else (T, B, O))
    loss = losses.MeanSquaredError(last_step_only=last_step_only)

    value, grad = loss(outputs, target)
    scored = outputs[-1] if last_step_only else outputs
    assert value == pytest.approx(mse_by_hand(scored, target), rel=1e-12)
    assert grad.shape == outputs.shape

    numeric = numerical_gradient(lambda: mse_by_hand(outputs[-1] if last_step_only else outputs,
                                                     target), outputs)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    if last_step_only:
        assert not grad[:-1].any()


@pytest.mark.parametrize("last_step_only", [False, True])
@pytest.mark.parametrize("ignore_index", [-1, 7])
def test_softmax_cross_entropy_value_and_gradient(last_step_only, ignore_index):
    rng = np.random.default_rng(2)
    T, B, O = 4, 5, 3
    outputs = rng.normal(scale=2.0, size=(T, B, O))
    target = rng.integers(0, O, (B,) if last_step_only else (T, B))
    # Some positions carry no label.
    target.reshape(-1)[[1, 3]] = ignore_index
    loss = losses.SoftmaxCrossEntropy(last_step_only=last_step_only, ignore_index=ignore_index)

    value, grad = loss(outputs, target)

    def by_hand():
        scored = outputs[-1] if last_step_only else outputs
        return cross_entropy_by_hand(scored, target, ignore_index)

    assert value == pytest.approx(by_hand(), rel=1e-12)
    assert grad.shape == outputs.shape
    np.testing.assert_allclose(grad, numerical_gradient(by_hand, outputs), rtol=1e-6, atol=1e-9)
    # Unlabelled positions (and, with last_step_only, earlier steps) get no gradient.
    scored_grad = grad[-1] if last_step_only else grad
    assert not scored_grad[target == ignore_index].any()
    if last_step_only:
        assert not grad[:-1].any()


def test_softmax_cross_entropy_every_position_ignored_scores_zero():
    loss = losses.SoftmaxCrossEntropy(ignore_index=-1)
    value, grad = loss(np.ones((2, 2, 3)), np.full((2, 2), -1))
    assert value == 0.0
    assert not grad.any()


def test_softmax_cross_entropy_large_logits_stay_finite():
    outputs = np.array([[[1000.0, 0.0, -1000.0],
                         [1000.0, 0.0, -1000.0]]])          # (T=1, B=2, O=3)
    target = np.array([[0, 1]])
    value, grad = losses.SoftmaxCrossEntropy()(outputs, target)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Batch 0 is right with certainty (loss 0), batch 1 is wrong by 1000: mean 500.
    assert value == pytest.approx(500.0, rel=1e-12)
    # d/dlogits = (softmax - onehot) / count, with softmax = (1, 0, 0) to double precision.
    np.testing.assert_allclose(grad[0], [[0, 0, 0], [0.5, -0.5, 0]], atol=1e-300)

    value32, grad32 = losses.SoftmaxCrossEntropy()(outputs.astype(np.float32), target)
    assert np.isfinite(value32) and np.all(np.isfinite(grad32))
    assert value32 == pytest.approx(500.0, rel=1e-6)


def test_softmax_cross_entropy_rejects_non_integer_targets():
    loss = losses.SoftmaxCrossEntropy()
    with pytest.raises(TypeError, match="integer"):
        loss(np.zeros((2, 3, 4)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="integer"):
        losses.SoftmaxCrossEntropy(last_step_only=True)(np.zeros((2, 3, 4)),
                                                         np.array([0.0, 1.0, 2.0]))
