"""Optimizers and gradient clipping over dicts of NumPy arrays, updated in place.

An optimizer's state is plain arrays (``state_dict()`` / ``load_state_dict()``), so training
checkpoints need no pickle.
"""
import numpy as np

__all__ = ["Adam", "clip_grad_norm", "SGD"]


def clip_grad_norm(grads, max_norm):
    """Scale every gradient by the same factor so that their joint L2 norm is at most
    ``max_norm``. Returns the norm before clipping (inf or NaN if a gradient is not finite, in
    which case nothing is scaled)."""
    # In float64: squares of large float32 gradients would overflow to inf.
    norm = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64)))
                             for g in grads.values())))
    if np.isfinite(norm) and norm > max_norm:
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm


class SGD:
    """Stochastic gradient descent with (heavy-ball) momentum:
    ``velocity = momentum * velocity + grad``; ``param -= lr * velocity``. With ``nesterov``,
    the step looks ahead along the velocity (Sutskever et al. 2013, in the form PyTorch uses,
    the momentum of Greff et al.'s study): ``param -= lr * (grad + momentum * velocity)``."""

    def __init__(self, params, lr=0.01, momentum=0.9, nesterov=False):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.nesterov = bool(nesterov)
        self.velocity = {name: np.zeros_like(p) for name, p in params.items()}
        self.steps = 0

    def step(self, grads):
        for name, param in self.params.items():
            velocity = self.velocity[name]
            velocity *= self.momentum
            velocity += grads[name]
            if self.nesterov:
                param -= self.lr * (grads[name] + self.momentum * velocity)
            else:
                param -= self.lr * velocity
        self.steps += 1

    def state_dict(self):
        state = {f"velocity/{name}": v for name, v in self.velocity.items()}
        state["steps"] = np.array(self.steps)
        return state

    def load_state_dict(self, state):
        for name in self.velocity:
            self.velocity[name][...] = state[f"velocity/{name}"]
        self.steps = int(state["steps"])


class Adam:
    """Adam (Kingma & Ba 2015), with bias-corrected first and second moments."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.first = {name: np.zeros_like(p) for name, p in params.items()}
        self.second = {name: np.zeros_like(p) for name, p in params.items()}
        self.steps = 0

    def step(self, grads):
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1 ** self.steps
        correction2 = 1 - beta2 ** self.steps
        for name, param in self.params.items():
            grad = grads[name]
            m, v = self.first[name], self.second[name]
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)

    def state_dict(self):
        state = {f"first/{name}": m for name, m in self.first.items()}
        state.update({f"second/{name}": v for name, v in self.second.items()})
        state["steps"] = np.array(self.steps)
        return state

    def load_state_dict(self, state):
        for name in self.first:
            self.first[name][...] = state[f"first/{name}"]
            self.second[name][...] = state[f"second/{name}"]
        self.steps = int(state["steps"])
