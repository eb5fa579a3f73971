"""The gates of this plugin in plain NumPy, after the conventions of ``gatekit.reference``:
definitions and gradients, arguments named after the quantities they bind to."""
import numpy as np

from gatekit.core.reference import linear, linear_backward, merge, sigmoid

#: The hard sigmoid's slope and the pre-activations where it saturates: f = clip(0.2 s + 0.5, 0, 1)
#: is 0 for s <= -2.5 and 1 for s >= 2.5 (Keras's original hard_sigmoid).
HARD_SIGMOID_SLOPE = 0.2
HARD_SIGMOID_KINK = 2.5


def forget_hard_sigmoid(STM_prev, E_t, W_f, b_f):
    """f_t = clip(0.2 s_t + 0.5, 0, 1), s_t = W_f [STM_{t-1}, E_t] + b_f

    A piecewise-linear σ: it forgets everything for s_t <= -2.5 and nothing for s_t >= 2.5."""
    s_t = linear(W_f, STM_prev, E_t, b_f)
    return {"s_t": s_t, "f_t": np.clip(HARD_SIGMOID_SLOPE * s_t + 0.5, 0.0, 1.0)}


def forget_hard_sigmoid_backward(STM_prev, E_t, s_t, df_t, ds_t, W_f):
    # df/ds = 0.2 strictly between the kinks, 0 outside; at a kink the derivative is taken as 0
    # (one of the one-sided derivatives, as PyTorch's hardsigmoid does).
    inside = np.abs(s_t) < HARD_SIGMOID_KINK
    ds = ds_t + np.where(inside, HARD_SIGMOID_SLOPE * df_t, 0.0)
    return linear_backward(ds, W_f, STM_prev, E_t, "f")


def use_softsign(STM_prev, E_t, LTM_t, W_v, b_v):
    """U_t = LTM_t / (1 + |LTM_t|), V_t = σ(W_v [STM_{t-1}, E_t] + b_v), STM_t = U_t ⊙ V_t

    The standard Use gate with softsign in place of tanh: the same range (-1, 1), but it
    approaches its bounds polynomially, so large memories still pass a gradient."""
    U_t = LTM_t / (1 + np.abs(LTM_t))
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v))
    return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


def use_softsign_backward(STM_prev, E_t, U_t, V_t, dSTM_t, W_v):
    # softsign'(a) = 1 / (1 + |a|)² = (1 - |U_t|)²
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return merge(linear_backward(dz_v, W_v, STM_prev, E_t, "v"),
                 {"dLTM_t": dSTM_t * V_t * (1 - np.abs(U_t)) ** 2})
