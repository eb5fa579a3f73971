"""The reference equations in plain NumPy: the executable specification of gatekit.

One function per gate, written after the equations of the LSTM memory cell. Every function
takes arguments named after the quantities it reads and returns a dict of what it produces:

==============  ==============================================================
``E_t``         the event (input) at step t, shape (B, D)
``STM_prev``    short-term memory STM_{t-1} (the hidden state h), shape (B, H)
``LTM_prev``    long-term memory LTM_{t-1} (the cell state c), shape (B, H)
``f_t``         forget factor;  ``s_t`` its pre-activation
``i_t``         ignore factor (the input gate);  ``N_t`` the combined new information
``LTM_t``       the new long-term memory
``U_t, V_t``    the two factors of the Use gate;  ``STM_t = U_t ⊙ V_t`` the new STM and output
``W_k, b_k``    weights (H, H + D), acting on [STM_{t-1}, E_t] with STM columns first, and bias;
                (H, D) for a block that reads the event only, (H, H) for one that reads the STM
``p_k``         peephole weights (H,), a per-unit weight on the memory
``n_prev, n_t`` an extra memory ``n`` a gate declares (``memories``), before and after the
                step, shape (B, H): sLSTM's normaliser ``n`` and stabiliser ``m``
``W_hr``        a projected cell's projection (P, H) (``proj_size=P``): the gates' STM_t is
                then ``UV_t = U_t ⊙ V_t`` and the STM carried on is ``W_hr UV_t``, (B, P);
                STM_prev and the STM columns of ``W_k`` are P wide
==============  ==============================================================

:func:`forward` runs any cell one step at a time by calling its gates' definitions in role
order (forget, learn, remember, use), passing each the quantities its argument names ask for.
This module never imports the compiled core; it only reads ``cell.gates`` and ``cell.params``.

Zoneout and recurrent dropout take their masks explicitly (``masks=``, as
``cell.draw_masks(T, B)`` returns them), so that the reference runs the same call as the cell.
"""
import inspect

import numpy as np

__all__ = ["backward", "call_definition", "forget", "forget_backward", "forget_event",
           "forget_event_backward", "forget_min", "forget_min_backward", "forget_none",
           "forget_none_backward", "forget_peephole", "forget_peephole_backward",
           "forget_layernorm", "forget_layernorm_backward", "forget_slstm",
           "forget_slstm_backward", "forward", "initial_memories", "JANET_BETA", "learn",
           "learn_backward", "learn_coupled", "learn_coupled_backward", "layer_norm",
           "layer_norm_backward", "learn_janet", "learn_janet_backward", "learn_layernorm",
           "learn_layernorm_backward", "learn_linear", "learn_linear_backward",
           "learn_linear_peephole", "learn_linear_peephole_backward", "learn_mgu",
           "learn_mgu_backward", "learn_min", "learn_min_backward", "learn_mut1",
           "learn_mut1_backward", "learn_no_ignore", "learn_no_ignore_backward", "learn_peephole",
           "learn_peephole_backward", "learn_reset", "learn_reset_backward", "learn_slstm",
           "learn_slstm_backward", "linear", "memory_names", "linear_backward", "linear_event",
           "LN_BLOCKS", "LN_EPSILON", "linear_event_backward", "linear_stm", "linear_stm_backward",
           "merge", "project", "project_backward", "remember", "remember_backward", "sigmoid",
           "step", "use", "use_backward", "use_course", "use_course_backward", "use_linear",
           "use_layernorm", "use_layernorm_backward", "use_linear_backward", "use_linear_peephole",
           "use_linear_peephole_backward", "use_literal", "use_literal_backward", "use_memory",
           "use_memory_backward", "use_no_output_gate", "use_no_output_gate_backward",
           "use_peephole", "use_peephole_backward", "use_slstm", "use_slstm_backward", "zoneout"]

#: JANET's shift of the learn gate against the forget gate: i_t = 1 - σ(s_t - β).
JANET_BETA = 1.0


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def linear(W, STM_prev, E_t, b):
    """W [STM_{t-1}, E_t] + b, for a batch: rows are sequences."""
    return np.concatenate([STM_prev, E_t], axis=-1) @ W.T + b


def linear_event(W, E_t, b):
    """W E_t + b: a block that reads the event only."""
    return E_t @ W.T + b


def linear_stm(W, STM_prev, b):
    """W STM_{t-1} + b: a block that reads the STM only."""
    return STM_prev @ W.T + b


# --- Forget gate: what to keep of the long-term memory -----------------------------------------

def forget(STM_prev, E_t, W_f, b_f):
    """f_t = σ(W_f [STM_{t-1}, E_t] + b_f)"""
    s_t = linear(W_f, STM_prev, E_t, b_f)
    return {"s_t": s_t, "f_t": sigmoid(s_t)}


def forget_peephole(STM_prev, E_t, LTM_prev, W_f, b_f, p_f):
    """f_t = σ(W_f [STM_{t-1}, E_t] + p_f ⊙ LTM_{t-1} + b_f)   (Gers & Schmidhuber 2000)"""
    s_t = linear(W_f, STM_prev, E_t, b_f) + p_f * LTM_prev
    return {"s_t": s_t, "f_t": sigmoid(s_t)}


def forget_none(LTM_prev):
    """f_t = 1: nothing is ever forgotten (NFG, the LSTM of 1997)."""
    return {"f_t": np.ones_like(LTM_prev)}


def forget_event(E_t, W_f, b_f):
    """f_t = σ(W_f E_t + b_f): a forget gate that reads the event only (minGRU's and MUT1's
    update gate z_t = 1 - f_t, with W_f = -W_z and b_f = -b_z)."""
    s_t = linear_event(W_f, E_t, b_f)
    return {"s_t": s_t, "f_t": sigmoid(s_t)}


def forget_min(E_t, W_f, b_f, W_i, b_i):
    """minLSTM (Feng et al. 2024): f = σ(W_f E_t + b_f), i = σ(W_i E_t + b_i), normalised so
    that the learn gate's i_t = 1 - f_t is i / (f + i):  f_t = f / (f + i)."""
    f = sigmoid(linear_event(W_f, E_t, b_f))
    i = sigmoid(linear_event(W_i, E_t, b_i))
    return {"f_t": f / (f + i)}


def forget_slstm(STM_prev, E_t, m_prev, W_f, b_f, W_i, b_i):
    """sLSTM's exponential forget and input gates (Beck et al. 2024, xLSTM), stabilised
    together by the memory m:
    f̃ = W_f [STM_{t-1}, E_t] + b_f,  ĩ = W_i [STM_{t-1}, E_t] + b_i
    m_t = max(f̃ + m_{t-1}, ĩ),  f_t = exp(f̃ + m_{t-1} - m_t),  i_t = exp(ĩ - m_t)
    (the learn gate passes i_t on)."""
    log_f = linear(W_f, STM_prev, E_t, b_f) + m_prev
    log_i = linear(W_i, STM_prev, E_t, b_i)
    m_t = np.maximum(log_f, log_i)
    return {"f_t": np.exp(log_f - m_t), "i_t": np.exp(log_i - m_t), "m_t": m_t}


# --- Learn gate: combine, then ignore ----------------------------------------------------------

def learn(STM_prev, E_t, W_n, b_n, W_i, b_i):
    """Combine: N_t = tanh(W_n [STM_{t-1}, E_t] + b_n)
    Ignore:  i_t = σ(W_i [STM_{t-1}, E_t] + b_i)"""
    N_t = np.tanh(linear(W_n, STM_prev, E_t, b_n))
    i_t = sigmoid(linear(W_i, STM_prev, E_t, b_i))
    return {"i_t": i_t, "N_t": N_t}


def learn_peephole(STM_prev, E_t, LTM_prev, W_n, b_n, W_i, b_i, p_i):
    """N_t = tanh(W_n [STM_{t-1}, E_t] + b_n)
    i_t = σ(W_i [STM_{t-1}, E_t] + p_i ⊙ LTM_{t-1} + b_i)"""
    N_t = np.tanh(linear(W_n, STM_prev, E_t, b_n))
    i_t = sigmoid(linear(W_i, STM_prev, E_t, b_i) + p_i * LTM_prev)
    return {"i_t": i_t, "N_t": N_t}


def learn_no_ignore(STM_prev, E_t, W_n, b_n):
    """N_t = tanh(W_n [STM_{t-1}, E_t] + b_n), i_t = 1   (NIG: no input gate)"""
    N_t = np.tanh(linear(W_n, STM_prev, E_t, b_n))
    return {"i_t": np.ones_like(N_t), "N_t": N_t}


def learn_linear(STM_prev, E_t, W_n, b_n, W_i, b_i):
    """N_t = W_n [STM_{t-1}, E_t] + b_n  (no activation), i_t = σ(W_i [STM_{t-1}, E_t] + b_i)"""
    N_t = linear(W_n, STM_prev, E_t, b_n)
    i_t = sigmoid(linear(W_i, STM_prev, E_t, b_i))
    return {"i_t": i_t, "N_t": N_t}


def learn_linear_peephole(STM_prev, E_t, LTM_prev, W_n, b_n, W_i, b_i, p_i):
    """N_t = W_n [STM_{t-1}, E_t] + b_n, i_t = σ(W_i [STM_{t-1}, E_t] + p_i ⊙ LTM_{t-1} + b_i)
    (NIAF: no input activation)"""
    N_t = linear(W_n, STM_prev, E_t, b_n)
    i_t = sigmoid(linear(W_i, STM_prev, E_t, b_i) + p_i * LTM_prev)
    return {"i_t": i_t, "N_t": N_t}


def learn_coupled(STM_prev, E_t, f_t, W_n, b_n):
    """N_t = tanh(W_n [STM_{t-1}, E_t] + b_n), i_t = 1 - f_t   (CIFG: learn what is forgotten)"""
    N_t = np.tanh(linear(W_n, STM_prev, E_t, b_n))
    return {"i_t": 1.0 - f_t, "N_t": N_t}


def learn_janet(STM_prev, E_t, s_t, W_n, b_n):
    """N_t = tanh(W_n [STM_{t-1}, E_t] + b_n), i_t = 1 - σ(s_t - β)
    where s_t is the forget gate's pre-activation (JANET, van der Westhuizen & Lasenby 2018)."""
    N_t = np.tanh(linear(W_n, STM_prev, E_t, b_n))
    return {"i_t": 1.0 - sigmoid(s_t - JANET_BETA), "N_t": N_t}


def learn_min(E_t, f_t, W_n, b_n):
    """N_t = W_n E_t + b_n (linear, the event only), i_t = 1 - f_t   (minGRU, minLSTM)"""
    return {"i_t": 1.0 - f_t, "N_t": linear_event(W_n, E_t, b_n)}


def learn_reset(STM_prev, E_t, f_t, W_r, b_r, W_n, b_n, W_hn, b_hn):
    """GRU's candidate, as torch.nn.GRU computes it (Cho et al. 2014):
    r_t = σ(W_r [STM_{t-1}, E_t] + b_r)                       the reset gate
    N_t = tanh(W_n E_t + b_n + r_t ⊙ (W_hn STM_{t-1} + b_hn))  it resets the recurrent part only
    i_t = 1 - f_t                                              (f_t: GRU's update gate z_t)"""
    r_t = sigmoid(linear(W_r, STM_prev, E_t, b_r))
    N_t = np.tanh(linear_event(W_n, E_t, b_n) + r_t * linear_stm(W_hn, STM_prev, b_hn))
    return {"i_t": 1.0 - f_t, "N_t": N_t}


def learn_mgu(STM_prev, E_t, f_t, W_n, b_n, W_hn):
    """MGU (Zhou et al. 2016), whose one gate is i_t = 1 - f_t (MGU's f):
    N_t = tanh(W_hn (i_t ⊙ STM_{t-1}) + W_n E_t + b_n), W_hn of shape (H, H)"""
    i_t = 1.0 - f_t
    N_t = np.tanh((i_t * STM_prev) @ W_hn.T + linear_event(W_n, E_t, b_n))
    return {"i_t": i_t, "N_t": N_t}


def learn_mut1(STM_prev, E_t, f_t, W_r, b_r, W_hh, b_h):
    """MUT1 (Jozefowicz et al. 2015), with D = H:
    r_t = σ(W_r [STM_{t-1}, E_t] + b_r)
    N_t = tanh(W_hh (r_t ⊙ STM_{t-1}) + tanh(E_t) + b_h), W_hh of shape (H, H)
    i_t = 1 - f_t                       (f_t: 1 - MUT1's z, a forget gate that reads the event)"""
    r_t = sigmoid(linear(W_r, STM_prev, E_t, b_r))
    N_t = np.tanh((r_t * STM_prev) @ W_hh.T + np.tanh(E_t) + b_h)
    return {"i_t": 1.0 - f_t, "N_t": N_t}


def learn_slstm(STM_prev, E_t, i_t, W_n, b_n):
    """sLSTM: N_t = tanh(W_n [STM_{t-1}, E_t] + b_n) (xLSTM's z_t), and i_t the forget gate's
    stabilised exponential input gate exp(ĩ - m_t)."""
    return {"i_t": i_t, "N_t": np.tanh(linear(W_n, STM_prev, E_t, b_n))}


# --- Remember gate: the new long-term memory ---------------------------------------------------

def remember(LTM_prev, f_t, N_t, i_t):
    """LTM_t = LTM_{t-1} ⊙ f_t + N_t ⊙ i_t"""
    return {"LTM_t": LTM_prev * f_t + N_t * i_t}


# --- Use gate: the new short-term memory, which is also the output -----------------------------

def use_course(STM_prev, E_t, LTM_prev, f_t, W_u, b_u, W_v, b_v):
    """U_t = tanh(W_u (LTM_{t-1} ⊙ f_t) + b_u), with W_u of shape (H, H)
    V_t = σ(W_v [STM_{t-1}, E_t] + b_v)
    STM_t = U_t ⊙ V_t
    The seed's prose: tanh of the forget gate's output, times a sigmoid of the STM and the event.
    """
    U_t = np.tanh((LTM_prev * f_t) @ W_u.T + b_u)
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v))
    return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


def use_literal(STM_prev, E_t, W_u, b_u, W_v, b_v):
    """U_t = tanh(W_u [STM_{t-1}, E_t] + b_u), V_t = σ(W_v [STM_{t-1}, E_t] + b_v),
    STM_t = U_t ⊙ V_t
    The seed's printed formula, taken literally: the output never reads the long-term memory."""
    U_t = np.tanh(linear(W_u, STM_prev, E_t, b_u))
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v))
    return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


def use(STM_prev, E_t, LTM_t, W_v, b_v):
    """U_t = tanh(LTM_t), V_t = σ(W_v [STM_{t-1}, E_t] + b_v), STM_t = U_t ⊙ V_t
    (the standard LSTM: h_t = o_t ⊙ tanh(c_t))"""
    U_t = np.tanh(LTM_t)
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v))
    return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


def use_peephole(STM_prev, E_t, LTM_t, W_v, b_v, p_v):
    """U_t = tanh(LTM_t), V_t = σ(W_v [STM_{t-1}, E_t] + p_v ⊙ LTM_t + b_v), STM_t = U_t ⊙ V_t"""
    U_t = np.tanh(LTM_t)
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v) + p_v * LTM_t)
    return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


def use_no_output_gate(LTM_t):
    """U_t = tanh(LTM_t), V_t = 1, STM_t = U_t   (NOG: no output gate)"""
    U_t = np.tanh(LTM_t)
    return {"U_t": U_t, "V_t": np.ones_like(U_t), "STM_t": U_t}


def use_linear(STM_prev, E_t, LTM_t, W_v, b_v):
    """U_t = LTM_t  (no output activation), V_t = σ(W_v [STM_{t-1}, E_t] + b_v), STM_t = U_t ⊙ V_t"""
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v))
    return {"U_t": LTM_t, "V_t": V_t, "STM_t": LTM_t * V_t}


def use_linear_peephole(STM_prev, E_t, LTM_t, W_v, b_v, p_v):
    """U_t = LTM_t, V_t = σ(W_v [STM_{t-1}, E_t] + p_v ⊙ LTM_t + b_v), STM_t = U_t ⊙ V_t
    (NOAF: no output activation)"""
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v) + p_v * LTM_t)
    return {"U_t": LTM_t, "V_t": V_t, "STM_t": LTM_t * V_t}


def use_slstm(STM_prev, E_t, LTM_t, f_t, i_t, n_prev, W_v, b_v):
    """sLSTM's normalised output:
    n_t = f_t ⊙ n_{t-1} + i_t        the normaliser, a memory like the LTM
    U_t = LTM_t / n_t,  V_t = σ(W_v [STM_{t-1}, E_t] + b_v),  STM_t = U_t ⊙ V_t"""
    n_t = f_t * n_prev + i_t
    U_t = LTM_t / n_t
    V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v))
    return {"n_t": n_t, "U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


def use_memory(LTM_t):
    """STM_t = LTM_t   (JANET: the output is the memory itself; U_t = LTM_t, V_t = 1)"""
    return {"U_t": LTM_t, "V_t": np.ones_like(LTM_t), "STM_t": LTM_t}


# --- LayerNorm LSTM (Ba, Kiros & Hinton 2016, as haste's LayerNormLSTM) --------------------------
# One forget gate computes all four pre-activations, since their normalisation is joint: the
# input product W_x E_t and the recurrent product W_h STM_{t-1}, each over all 4H units of the
# blocks f, i, n (the candidate, LN LSTM's g) and v (the output gate, o), are normalised apart,
# scaled by their gains and summed with one bias b after the normalisation (so no block has a
# bias of its own). The use gate normalises LTM_t over its H units. Like haste and Ba et al.,
# the variance is the biased one (divided by the units) and ε = 1e-5 is added inside the root.

#: ε of every layer normalisation, inside the square root: haste's.
LN_EPSILON = 1e-5
#: The blocks of the layernorm forget gate, in the order of the rows of g_x, g_h and b.
LN_BLOCKS = ("f", "i", "n", "v")


def layer_norm(v):
    """(v - mean(v)) / sqrt(var(v) + ε) over the last axis (biased variance), and 1 / sqrt(...)."""
    centred = v - v.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + LN_EPSILON)
    return centred * rstd, rstd


def layer_norm_backward(dv_hat, v_hat, rstd):
    """The gradient of v given that of v̂ = layer_norm(v)."""
    return rstd * (dv_hat - dv_hat.mean(axis=-1, keepdims=True)
                   - v_hat * (dv_hat * v_hat).mean(axis=-1, keepdims=True))


def _layernorm_products(E_t, STM_prev, W_x, W_h):
    """x̂ and ĥ, (B, 4, H): the two products normalised jointly over their 4H units."""
    B, H = E_t.shape[0], W_x[0].shape[0]      # (STM_prev is P wide under proj_size)
    x_hat, x_rstd = layer_norm(np.concatenate([E_t @ W.T for W in W_x], axis=-1))
    h_hat, h_rstd = layer_norm(np.concatenate([STM_prev @ W.T for W in W_h], axis=-1))
    return x_hat.reshape(B, 4, H), x_rstd, h_hat.reshape(B, 4, H), h_rstd


def forget_layernorm(E_t, STM_prev, W_xf, W_xi, W_xn, W_xv, W_hf, W_hi, W_hn, W_hv, g_x, g_h,
                     b):
    """a = g_x ⊙ LN(W_x E_t) + g_h ⊙ LN(W_h STM_{t-1}) + b, each LN over the 4H pre-activations
    of the blocks f, i, n, v (rows of g_x, g_h, b); f_t = σ(a_f), i_t = σ(a_i),
    N_t = tanh(a_n), V_t = σ(a_v)."""
    x_hat, _, h_hat, _ = _layernorm_products(E_t, STM_prev, (W_xf, W_xi, W_xn, W_xv),
                                             (W_hf, W_hi, W_hn, W_hv))
    a = g_x * x_hat + g_h * h_hat + b
    return {"f_t": sigmoid(a[:, 0]), "i_t": sigmoid(a[:, 1]), "N_t": np.tanh(a[:, 2]),
            "V_t": sigmoid(a[:, 3])}


def learn_layernorm():
    """Nothing: the layernorm forget gate computed i_t and N_t with the other pre-activations."""
    return {}


def use_layernorm(LTM_t, V_t, g_c, b_c):
    """U_t = tanh(g_c ⊙ LN(LTM_t) + b_c), LN over the H units; STM_t = U_t ⊙ V_t (V_t is the
    layernorm forget gate's)."""
    U_t = np.tanh(g_c * layer_norm(LTM_t)[0] + b_c)
    return {"U_t": U_t, "STM_t": U_t * V_t}


# --- Backward: the gradients, gate by gate ------------------------------------------------
#
# Each ``*_backward`` function pairs with the forward function of the same name. It reads the
# step's quantities and the gradients of the loss with respect to what the gate produced
# (``df_t``, ``dSTM_t``, ...), and returns its contributions to the gradients of what the gate
# read (``dLTM_prev``, ``dSTM_prev``, ``dE_t``, ``ds_t``...) and of its parameters (``dW_f``...).
# Contributions are summed: a quantity read by several gates collects a gradient from each.
# Derivatives use the outputs: σ'(s) = σ(s)(1 - σ(s)) and tanh'(a) = 1 - tanh(a)².

def linear_backward(dz, W, STM_prev, E_t, name):
    """Gradients of z = W_k [STM_{t-1}, E_t] + b_k given dz, for block ``name`` = k."""
    H = STM_prev.shape[-1]
    d_stm_event = dz @ W
    return {f"dW_{name}": dz.T @ np.concatenate([STM_prev, E_t], axis=-1),
            f"db_{name}": dz.sum(axis=0),
            "dSTM_prev": d_stm_event[:, :H], "dE_t": d_stm_event[:, H:]}


def linear_event_backward(dz, W, E_t, name):
    """Gradients of z = W_k E_t + b_k given dz, for block ``name`` = k."""
    return {f"dW_{name}": dz.T @ E_t, f"db_{name}": dz.sum(axis=0), "dE_t": dz @ W}


def linear_stm_backward(dz, W, STM_prev, name):
    """Gradients of z = W_k STM_{t-1} + b_k given dz, for block ``name`` = k."""
    return {f"dW_{name}": dz.T @ STM_prev, f"db_{name}": dz.sum(axis=0), "dSTM_prev": dz @ W}


def merge(*contributions):
    """Sum gradient contributions that share a name."""
    total = {}
    for contribution in contributions:
        for name, value in contribution.items():
            total[name] = total[name] + value if name in total else value
    return total


def forget_backward(STM_prev, E_t, f_t, df_t, ds_t, W_f):
    # s_t collects df_t through σ, plus whatever later gates sent to s_t directly (JANET).
    ds = ds_t + df_t * f_t * (1 - f_t)
    return linear_backward(ds, W_f, STM_prev, E_t, "f")


def forget_peephole_backward(STM_prev, E_t, LTM_prev, f_t, df_t, ds_t, W_f, p_f):
    ds = ds_t + df_t * f_t * (1 - f_t)
    return merge(linear_backward(ds, W_f, STM_prev, E_t, "f"),
                 {"dp_f": (ds * LTM_prev).sum(axis=0), "dLTM_prev": ds * p_f})


def forget_none_backward():
    return {}


def forget_event_backward(E_t, f_t, df_t, ds_t, W_f):
    return linear_event_backward(ds_t + df_t * f_t * (1 - f_t), W_f, E_t, "f")


def forget_min_backward(E_t, df_t, W_f, b_f, W_i, b_i):
    # f_t = f / (f + i): df_t/df = i / (f + i)², df_t/di = -f / (f + i)²
    f = sigmoid(linear_event(W_f, E_t, b_f))
    i = sigmoid(linear_event(W_i, E_t, b_i))
    total = (f + i) ** 2
    return merge(linear_event_backward(df_t * i / total * f * (1 - f), W_f, E_t, "f"),
                 linear_event_backward(-df_t * f / total * i * (1 - i), W_i, E_t, "i"))


def forget_slstm_backward(STM_prev, E_t, m_prev, f_t, i_t, df_t, di_t, dm_t, W_f, b_f, W_i, b_i):
    # m_t = max(f̃ + m_{t-1}, ĩ) takes its gradient on the side it took its value from, the
    # forget side at a tie (as the forward pass's >= does); f_t and i_t each send
    # -their own gradient to m_t, and their own through exp to their pre-activation.
    log_f = linear(W_f, STM_prev, E_t, b_f) + m_prev
    log_i = linear(W_i, STM_prev, E_t, b_i)
    dm = dm_t - df_t * f_t - di_t * i_t
    forget_side = log_f >= log_i
    dlog_f = df_t * f_t + np.where(forget_side, dm, 0.0)
    dlog_i = di_t * i_t + np.where(forget_side, 0.0, dm)
    return merge(linear_backward(dlog_f, W_f, STM_prev, E_t, "f"),
                 linear_backward(dlog_i, W_i, STM_prev, E_t, "i"), {"dm_prev": dlog_f})


def learn_backward(STM_prev, E_t, N_t, i_t, dN_t, di_t, W_n, W_i):
    dz_n = dN_t * (1 - N_t ** 2)
    dz_i = di_t * i_t * (1 - i_t)
    return merge(linear_backward(dz_n, W_n, STM_prev, E_t, "n"),
                 linear_backward(dz_i, W_i, STM_prev, E_t, "i"))


def learn_peephole_backward(STM_prev, E_t, LTM_prev, N_t, i_t, dN_t, di_t, W_n, W_i, p_i):
    dz_n = dN_t * (1 - N_t ** 2)
    dz_i = di_t * i_t * (1 - i_t)
    return merge(linear_backward(dz_n, W_n, STM_prev, E_t, "n"),
                 linear_backward(dz_i, W_i, STM_prev, E_t, "i"),
                 {"dp_i": (dz_i * LTM_prev).sum(axis=0), "dLTM_prev": dz_i * p_i})


def learn_no_ignore_backward(STM_prev, E_t, N_t, dN_t, W_n):
    return linear_backward(dN_t * (1 - N_t ** 2), W_n, STM_prev, E_t, "n")


def learn_linear_backward(STM_prev, E_t, i_t, dN_t, di_t, W_n, W_i):
    return merge(linear_backward(dN_t, W_n, STM_prev, E_t, "n"),
                 linear_backward(di_t * i_t * (1 - i_t), W_i, STM_prev, E_t, "i"))


def learn_linear_peephole_backward(STM_prev, E_t, LTM_prev, i_t, dN_t, di_t, W_n, W_i, p_i):
    dz_i = di_t * i_t * (1 - i_t)
    return merge(linear_backward(dN_t, W_n, STM_prev, E_t, "n"),
                 linear_backward(dz_i, W_i, STM_prev, E_t, "i"),
                 {"dp_i": (dz_i * LTM_prev).sum(axis=0), "dLTM_prev": dz_i * p_i})


def learn_coupled_backward(STM_prev, E_t, N_t, dN_t, di_t, W_n):
    # i_t = 1 - f_t
    return merge(linear_backward(dN_t * (1 - N_t ** 2), W_n, STM_prev, E_t, "n"),
                 {"df_t": -di_t})


def learn_janet_backward(STM_prev, E_t, N_t, i_t, dN_t, di_t, W_n):
    # i_t = 1 - σ(s_t - β), so di_t/ds_t = -σ(s_t - β)(1 - σ(s_t - β)) = -(1 - i_t) i_t
    return merge(linear_backward(dN_t * (1 - N_t ** 2), W_n, STM_prev, E_t, "n"),
                 {"ds_t": -di_t * i_t * (1 - i_t)})


def learn_min_backward(E_t, dN_t, di_t, W_n):
    return merge(linear_event_backward(dN_t, W_n, E_t, "n"), {"df_t": -di_t})


def learn_reset_backward(STM_prev, E_t, N_t, dN_t, di_t, W_r, b_r, W_n, W_hn, b_hn):
    r_t = sigmoid(linear(W_r, STM_prev, E_t, b_r))
    recurrent = linear_stm(W_hn, STM_prev, b_hn)
    da = dN_t * (1 - N_t ** 2)                      # through tanh
    return merge(linear_event_backward(da, W_n, E_t, "n"),
                 linear_stm_backward(da * r_t, W_hn, STM_prev, "hn"),
                 linear_backward(da * recurrent * r_t * (1 - r_t), W_r, STM_prev, E_t, "r"),
                 {"df_t": -di_t})


def learn_mgu_backward(STM_prev, E_t, i_t, N_t, dN_t, di_t, W_n, W_hn):
    da = dN_t * (1 - N_t ** 2)
    reset = i_t * STM_prev                          # what W_hn reads
    d_reset = da @ W_hn
    return merge(linear_event_backward(da, W_n, E_t, "n"),
                 {"dW_hn": da.T @ reset, "dSTM_prev": d_reset * i_t,
                  "df_t": -(di_t + d_reset * STM_prev)})


def learn_mut1_backward(STM_prev, E_t, N_t, dN_t, di_t, W_r, b_r, W_hh):
    r_t = sigmoid(linear(W_r, STM_prev, E_t, b_r))
    da = dN_t * (1 - N_t ** 2)
    reset = r_t * STM_prev
    d_reset = da @ W_hh
    return merge(linear_backward(d_reset * STM_prev * r_t * (1 - r_t), W_r, STM_prev, E_t, "r"),
                 {"dW_hh": da.T @ reset, "db_h": da.sum(axis=0), "dSTM_prev": d_reset * r_t,
                  "dE_t": da * (1 - np.tanh(E_t) ** 2), "df_t": -di_t})


def learn_slstm_backward(STM_prev, E_t, N_t, dN_t, W_n):
    # i_t passes through: its gradient stays for the forget gate that made it
    return linear_backward(dN_t * (1 - N_t ** 2), W_n, STM_prev, E_t, "n")


def remember_backward(LTM_prev, f_t, N_t, i_t, dLTM_t):
    return {"dLTM_prev": dLTM_t * f_t, "df_t": dLTM_t * LTM_prev,
            "dN_t": dLTM_t * i_t, "di_t": dLTM_t * N_t}


def use_course_backward(STM_prev, E_t, LTM_prev, f_t, U_t, V_t, dSTM_t, W_u, W_v):
    dU_pre = dSTM_t * V_t * (1 - U_t ** 2)          # through tanh
    remembered = LTM_prev * f_t                      # what W_u reads
    d_remembered = dU_pre @ W_u
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return merge(linear_backward(dz_v, W_v, STM_prev, E_t, "v"),
                 {"dW_u": dU_pre.T @ remembered, "db_u": dU_pre.sum(axis=0),
                  "dLTM_prev": d_remembered * f_t, "df_t": d_remembered * LTM_prev})


def use_literal_backward(STM_prev, E_t, U_t, V_t, dSTM_t, W_u, W_v):
    dz_u = dSTM_t * V_t * (1 - U_t ** 2)
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return merge(linear_backward(dz_u, W_u, STM_prev, E_t, "u"),
                 linear_backward(dz_v, W_v, STM_prev, E_t, "v"))


def use_backward(STM_prev, E_t, U_t, V_t, dSTM_t, W_v):
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return merge(linear_backward(dz_v, W_v, STM_prev, E_t, "v"),
                 {"dLTM_t": dSTM_t * V_t * (1 - U_t ** 2)})


def use_peephole_backward(STM_prev, E_t, LTM_t, U_t, V_t, dSTM_t, W_v, p_v):
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return merge(linear_backward(dz_v, W_v, STM_prev, E_t, "v"),
                 {"dLTM_t": dSTM_t * V_t * (1 - U_t ** 2) + dz_v * p_v,
                  "dp_v": (dz_v * LTM_t).sum(axis=0)})


def use_no_output_gate_backward(U_t, dSTM_t):
    return {"dLTM_t": dSTM_t * (1 - U_t ** 2)}


def use_linear_backward(STM_prev, E_t, U_t, V_t, dSTM_t, W_v):
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return merge(linear_backward(dz_v, W_v, STM_prev, E_t, "v"), {"dLTM_t": dSTM_t * V_t})


def use_linear_peephole_backward(STM_prev, E_t, LTM_t, U_t, V_t, dSTM_t, W_v, p_v):
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    return merge(linear_backward(dz_v, W_v, STM_prev, E_t, "v"),
                 {"dLTM_t": dSTM_t * V_t + dz_v * p_v, "dp_v": (dz_v * LTM_t).sum(axis=0)})


def use_slstm_backward(STM_prev, E_t, f_t, n_prev, n_t, U_t, V_t, dSTM_t, dn_t, W_v):
    dU = dSTM_t * V_t
    dz_v = dSTM_t * U_t * V_t * (1 - V_t)
    dn = dn_t - dU * U_t / n_t                      # U_t = LTM_t / n_t
    return merge(linear_backward(dz_v, W_v, STM_prev, E_t, "v"),
                 {"dLTM_t": dU / n_t, "df_t": dn * n_prev, "di_t": dn, "dn_prev": dn * f_t})


def use_memory_backward(dSTM_t):
    return {"dLTM_t": dSTM_t}


def forget_layernorm_backward(E_t, STM_prev, f_t, i_t, N_t, V_t, df_t, di_t, dN_t, dV_t,
                              W_xf, W_xi, W_xn, W_xv, W_hf, W_hi, W_hn, W_hv, g_x, g_h):
    W_x, W_h = (W_xf, W_xi, W_xn, W_xv), (W_hf, W_hi, W_hn, W_hv)
    x_hat, x_rstd, h_hat, h_rstd = _layernorm_products(E_t, STM_prev, W_x, W_h)
    B, _, H = x_hat.shape
    da = np.stack([df_t * f_t * (1 - f_t), di_t * i_t * (1 - i_t), dN_t * (1 - N_t ** 2),
                   dV_t * V_t * (1 - V_t)], axis=1)
    dx = layer_norm_backward((g_x * da).reshape(B, -1), x_hat.reshape(B, -1), x_rstd)
    dh = layer_norm_backward((g_h * da).reshape(B, -1), h_hat.reshape(B, -1), h_rstd)
    dx, dh = dx.reshape(B, 4, H), dh.reshape(B, 4, H)
    grads = {"dg_x": (da * x_hat).sum(axis=0), "dg_h": (da * h_hat).sum(axis=0),
             "db": da.sum(axis=0), "dE_t": 0, "dSTM_prev": 0}
    for k, block in enumerate(LN_BLOCKS):
        grads[f"dW_x{block}"] = dx[:, k].T @ E_t
        grads[f"dW_h{block}"] = dh[:, k].T @ STM_prev
        grads["dE_t"] = grads["dE_t"] + dx[:, k] @ W_x[k]
        grads["dSTM_prev"] = grads["dSTM_prev"] + dh[:, k] @ W_h[k]
    return grads


def learn_layernorm_backward():
    return {}


def use_layernorm_backward(LTM_t, U_t, V_t, dSTM_t, g_c):
    c_hat, rstd = layer_norm(LTM_t)
    du = dSTM_t * V_t * (1 - U_t ** 2)
    return {"dV_t": dSTM_t * U_t, "dg_c": (du * c_hat).sum(axis=0), "db_c": du.sum(axis=0),
            "dLTM_t": layer_norm_backward(g_c * du, c_hat, rstd)}


# --- The regularisers of the recurrence ------------------------------------------------------

def project(UV_t, W_hr):
    """The projection of an LSTM with projection (Sak et al. 2014): STM_t = W_hr (U_t ⊙ V_t),
    for a batch, (B, P)."""
    return UV_t @ W_hr.T


def project_backward(UV_t, dSTM_t, W_hr):
    """The gradients of the projection: d/d(U_t ⊙ V_t), the gates' dSTM_t, and dW_hr."""
    return {"dUV_t": dSTM_t @ W_hr, "dW_hr": dSTM_t.T @ UV_t}


def zoneout(previous, candidate, keep):
    """Zoneout (Krueger et al. 2017): memory = d ⊙ previous + (1 - d) ⊙ candidate, with d the
    step's mask (1 where the unit keeps its previous memory), or z, its expectation."""
    if np.ndim(keep) == 0 and keep == 0:
        # No zoneout is no arithmetic: 0 * inf would turn an infinite memory into NaN.
        return candidate
    return keep * previous + (1 - keep) * candidate


def _regularisers(masks, T, B, H, dtype):
    """The masks of a call (see ``forward``): the zoneout masks of step t as a function of t,
    and the recurrent dropout mask (ones when there is none)."""
    if masks is None:
        masks = {"zoneout_LTM": 0.0, "zoneout_STM": 0.0, "dropout_STM": None}
    zone = {}
    for name in ("zoneout_LTM", "zoneout_STM"):
        value = np.asarray(masks[name], dtype=dtype)
        zone[name] = (lambda t, v=value: v[t]) if value.ndim else (lambda t, v=value: v)
    dropout = masks["dropout_STM"]
    dropout = np.ones((B, H), dtype) if dropout is None else np.asarray(dropout, dtype=dtype)
    return zone["zoneout_LTM"], zone["zoneout_STM"], dropout


# --- The cell ---------------------------------------------------------------------------------

def call_definition(definition, known, zero=None):
    """Call a gate's definition with the quantities its argument names ask for. In backward,
    a gradient nothing has contributed to yet (a name ``d...`` not in ``known``) is ``zero``."""
    names = inspect.signature(definition).parameters
    arguments = {}
    for name in names:
        if name in known:
            arguments[name] = known[name]
        elif zero is not None and name.startswith("d"):
            arguments[name] = zero
        else:
            raise KeyError(f"{definition.__qualname__} reads {name!r}, which nothing before it "
                           "provides")
    return definition(**arguments)


def memory_names(cell):
    """The extra memories the gates of ``cell`` declare, in role and declared order (the
    order they take in ``state`` after the STM and the LTM)."""
    return tuple(name for gate in cell.gates for name in type(gate).memory_defaults())


def initial_memories(cell, B, dtype, state=None):
    """The extra memories' values before the first step, by name: those of ``state`` after
    the STM and the LTM, else the gates' declared initial values."""
    H = cell.hidden_size
    given = tuple(state[2:]) if state is not None else ()
    initial = {name: value for gate in cell.gates
               for name, value in type(gate).memory_defaults().items()}
    return {name: np.asarray(given[k], dtype=dtype) if given else np.full((B, H), value, dtype)
            for k, (name, value) in enumerate(initial.items())}


def step(cell, E_t, STM_prev, LTM_prev, dtype=None, memories=None):
    """One time step of ``cell``: every quantity its gates compute, by name. ``memories``: the
    extra memories' previous values, by name."""
    known = {name: np.asarray(value, dtype=dtype) for name, value in cell.params.items()}
    known.update(E_t=E_t, STM_prev=STM_prev, LTM_prev=LTM_prev)
    known.update({f"{name}_prev": value for name, value in (memories or {}).items()})
    for gate in cell.gates:                      # forget, learn, remember, use
        known.update(call_definition(type(gate).definition, known))
    if _projected(cell):
        known["UV_t"] = known["STM_t"]
        known["STM_t"] = project(known["UV_t"], known["W_hr"])
    return known


def _projected(cell):
    return getattr(cell, "proj_size", None) is not None


def _refuse_masks_of_projection(cell, masks):
    if _projected(cell) and masks is not None:
        raise ValueError("a projected cell (proj_size) has no zoneout or recurrent dropout; "
                         f"got masks={masks!r:.200}")


def forward(cell, x, state=None, dtype=None, masks=None):
    """Run ``cell`` over ``x`` (T, B, D), one step at a time.

    Computes in ``dtype`` (the cell's own by default; pass ``np.float64`` to check a float32
    cell against exact arithmetic). Returns ``y`` (T, B, H), the STM of every step, and the final
    ``(STM, LTM)``, like ``cell(x)``, followed by the final extra memories if the gates keep
    any (``state`` likewise may carry their initial values after the STM and the LTM).

    ``masks`` (``{"zoneout_LTM", "zoneout_STM", "dropout_STM"}``, as ``cell.draw_masks``
    returns them; None: no regulariser) applies zoneout and recurrent dropout: the gates read
    ``m ⊙ STM_{t-1}`` (m = ``dropout_STM``; the STM carried on stays unmasked) and compute the
    candidates LTM~_t, STM~_t, which zoneout mixes with LTM_{t-1}, STM_{t-1}.
    """
    dtype = np.dtype(cell.dtype if dtype is None else dtype)
    x = np.asarray(x, dtype=dtype)
    T, B, _ = x.shape
    H = cell.hidden_size
    _refuse_masks_of_projection(cell, masks)
    R = cell.proj_size if _projected(cell) else H          # the width of the STM
    if state is None:
        STM, LTM = np.zeros((B, R), dtype), np.zeros((B, H), dtype)
    else:
        STM, LTM = (np.asarray(a, dtype=dtype) for a in state[:2])
    memories = initial_memories(cell, B, dtype, state)
    zone_LTM, zone_STM, dropout = _regularisers(masks, T, B, R, dtype)
    y = np.empty((T, B, R), dtype)
    for t in range(T):
        quantities = step(cell, x[t], dropout * STM, LTM, dtype, memories)
        LTM = zoneout(LTM, quantities["LTM_t"], zone_LTM(t))
        STM = zoneout(STM, quantities["STM_t"], zone_STM(t))
        memories = {name: quantities[f"{name}_t"] for name in memories}
        y[t] = STM
    return y, (STM, LTM, *memories.values())


def backward(cell, x, dy, state=None, dstm=None, dltm=None, dtype=None, dmemories=None,
             masks=None):
    """Backpropagation through time, one step and one gate at a time.

    ``dy`` (T, B, H) is the gradient of the loss with respect to every output, ``dstm`` and
    ``dltm`` (B, H) with respect to the final STM and LTM, ``dmemories`` ``{name: (B, H)}``
    with respect to the final extra memories (zero if None). Returns a dict with the gradient
    of every parameter of ``cell.params``, and ``"x"``, ``"stm0"``, ``"ltm0"`` and, for each
    extra memory ``n``, ``"n0"``.
    ``masks`` as for :func:`forward`: with zoneout mask d, the gates see (1 - d) ⊙ the gradient
    of the zoned memory and d ⊙ it goes to the previous one; with recurrent dropout, what the
    gates send to the STM they read reaches STM_{t-1} times the mask.
    """
    dtype = np.dtype(cell.dtype if dtype is None else dtype)
    x = np.asarray(x, dtype=dtype)
    T, B, _ = x.shape
    H = cell.hidden_size
    _refuse_masks_of_projection(cell, masks)
    R = cell.proj_size if _projected(cell) else H          # the width of the STM
    zero = np.zeros((B, H), dtype)
    zero_STM = np.zeros((B, R), dtype)
    STM, LTM = ((zero_STM, zero) if state is None
                else (np.asarray(a, dtype=dtype) for a in state[:2]))
    memories = initial_memories(cell, B, dtype, state)
    zone_LTM, zone_STM, dropout = _regularisers(masks, T, B, R, dtype)
    steps = []
    for t in range(T):
        steps.append(step(cell, x[t], dropout * STM, LTM, dtype, memories))
        LTM = zoneout(LTM, steps[-1]["LTM_t"], zone_LTM(t))
        STM = zoneout(STM, steps[-1]["STM_t"], zone_STM(t))
        memories = {name: steps[-1][f"{name}_t"] for name in memories}

    grads = {name: np.zeros(value.shape, dtype) for name, value in cell.params.items()}
    grads["x"] = np.zeros_like(x)
    dSTM_next = zero_STM if dstm is None else np.asarray(dstm, dtype=dtype)
    dLTM_next = zero if dltm is None else np.asarray(dltm, dtype=dtype)
    dMEM_next = {name: zero if (dmemories or {}).get(name) is None
                 else np.asarray(dmemories[name], dtype=dtype) for name in memories}
    dy = np.asarray(dy, dtype=dtype)
    for t in reversed(range(T)):
        known = dict(steps[t])
        dSTM_t, dLTM_t = dy[t] + dSTM_next, dLTM_next      # of the zoned memories
        known.update(dSTM_t=(1 - zone_STM(t)) * dSTM_t, dLTM_t=(1 - zone_LTM(t)) * dLTM_t)
        if _projected(cell):
            # the gates' STM_t is U_t ⊙ V_t: they see the gradient through the projection
            projected = project_backward(known["UV_t"], known["dSTM_t"], known["W_hr"])
            grads["W_hr"] += projected["dW_hr"]
            known["dSTM_t"] = projected["dUV_t"]
        known.update({f"d{name}_t": value for name, value in dMEM_next.items()})
        for gate in reversed(cell.gates):            # use, remember, learn, forget
            contributions = call_definition(type(gate).backward_definition, known, zero)
            known.update(merge({name: known[name] for name in contributions if name in known},
                               contributions))
        for name in cell.params:
            if "d" + name in known:
                grads[name] += known["d" + name]
        grads["x"][t] = known.get("dE_t", 0)
        dSTM_next = zone_STM(t) * dSTM_t + dropout * known.get("dSTM_prev", zero_STM)
        dLTM_next = zone_LTM(t) * dLTM_t + known.get("dLTM_prev", zero)
        dMEM_next = {name: known.get(f"d{name}_prev", zero) for name in memories}
    grads["stm0"], grads["ltm0"] = dSTM_next, dLTM_next
    for name, value in dMEM_next.items():
        grads[f"{name}0"] = value
    return grads
