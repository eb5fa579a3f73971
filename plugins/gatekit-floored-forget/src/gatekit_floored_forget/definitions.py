"""The floored forget gate in plain NumPy: its definition and its gradients, after the
conventions of ``gatekit.reference`` (arguments named after the quantities they bind to).

The floor is parametrised as ``φ_f = σ(q_f)``: any real ``q_f`` gives a floor strictly inside
(0, 1), and gradient steps on ``q_f`` can never push it out of range.
"""
from gatekit.core.reference import linear, linear_backward, merge, sigmoid


def forget_floored(STM_prev, E_t, W_f, b_f, q_f):
    """f_t = φ_f + (1 - φ_f) σ(W_f [STM_{t-1}, E_t] + b_f), with the floor φ_f = σ(q_f)

    Each unit keeps at least the fraction φ_f of its long-term memory at every step."""
    floor = sigmoid(q_f)
    return {"f_t": floor + (1 - floor) * sigmoid(linear(W_f, STM_prev, E_t, b_f))}


def forget_floored_backward(STM_prev, E_t, df_t, W_f, b_f, q_f):
    # With g = σ(s), s = W_f [STM_{t-1}, E_t] + b_f:  df/ds = (1 - φ) g (1 - g),
    # df/dφ = 1 - g and dφ/dq = φ (1 - φ).
    floor = sigmoid(q_f)
    g = sigmoid(linear(W_f, STM_prev, E_t, b_f))
    ds = df_t * (1 - floor) * g * (1 - g)
    return merge(linear_backward(ds, W_f, STM_prev, E_t, "f"),
                 {"dq_f": (df_t * (1 - g)).sum(axis=0) * floor * (1 - floor)})


def forget_floored_trace(q_f):
    """What a trace shows besides f_t: the floor φ_f = σ(q_f) of each unit."""
    return {"phi_f": sigmoid(q_f)}
