"""Losses on a model's outputs ``(T, B, O)``: each returns the loss and its gradient."""
import numpy as np

__all__ = ["MeanSquaredError", "SoftmaxCrossEntropy"]


class MeanSquaredError:
    """Mean of (output - target)² over the batch, the outputs and the steps scored: every step
    (target (T, B, O)) or only the last (``last_step_only=True``, target (B, O))."""

    def __init__(self, last_step_only=False):
        self.last_step_only = last_step_only

    def __call__(self, outputs, target):
        scored = outputs[-1] if self.last_step_only else outputs
        target = np.asarray(target, dtype=outputs.dtype).reshape(scored.shape)
        error = scored - target
        loss = float(np.mean(error ** 2))
        grad = np.zeros_like(outputs)
        grad_scored = 2 * error / error.size
        if self.last_step_only:
            grad[-1] = grad_scored
        else:
            grad[...] = grad_scored
        return loss, grad


class SoftmaxCrossEntropy:
    """Cross-entropy of softmax(outputs) against integer class targets, averaged over the
    batch and the steps scored: every step (target (T, B)) or the last (target (B,)).
    Targets equal to ``ignore_index`` are not scored (for steps without a label)."""

    def __init__(self, last_step_only=False, ignore_index=-1):
        self.last_step_only = last_step_only
        self.ignore_index = ignore_index

    def __call__(self, outputs, target):
        scored = outputs[-1:] if self.last_step_only else outputs
        target = np.asarray(target).reshape(scored.shape[:-1])
        if target.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class indices; got dtype {target.dtype}")
        shifted = scored - scored.max(axis=-1, keepdims=True)   # for exp without overflow
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        labelled = target != self.ignore_index
        count = max(int(labelled.sum()), 1)
        classes = np.where(labelled, target, 0)
        picked = np.take_along_axis(log_probs, classes[..., None], axis=-1)[..., 0]
        loss = float(-(picked * labelled).sum() / count)
        grad_scored = np.exp(log_probs)
        np.put_along_axis(grad_scored, classes[..., None],
                          np.take_along_axis(grad_scored, classes[..., None], axis=-1) - 1, axis=-1)
        grad_scored *= labelled[..., None] / count
        grad = np.zeros_like(outputs)
        if self.last_step_only:
            grad[-1:] = grad_scored
        else:
            grad[...] = grad_scored
        return loss, grad
