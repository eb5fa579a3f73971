"""The built-in gates and variants, registered through the same hooks as any plugin."""
from gatekit.core import instruction_sets
from gatekit.core.hookspecs import hookimpl

__all__ = ["PEEPHOLES", "register_gates", "register_variants", "VARIANTS"]

PEEPHOLES = {"forget": "peephole", "learn": "peephole", "use": "peephole"}

# name: (gates that differ from "standard", description)
VARIANTS = {
    "standard": ({}, "The LSTM PyTorch, Keras and ONNX run: STM_t = σ(W_v[..]) ⊙ tanh(LTM_t)"),
    "course": ({"use": "course"},
               "The seed's cell: U_t = tanh(W_u (LTM_{t-1} ⊙ f_t) + b_u), W_u of shape (H, H)"),
    "literal": ({"use": "literal"},
                "The seed's printed Use formula: STM_t never reads the long-term memory"),
    "peephole": (PEEPHOLES, "Greff et al.'s vanilla LSTM: standard with peepholes p_f, p_i, p_v"),
    "nig": ({**PEEPHOLES, "learn": "no_ignore"}, "Greff's NIG: vanilla without input gate"),
    "nfg": ({**PEEPHOLES, "forget": "none"}, "Greff's NFG: vanilla without forget gate (1997)"),
    "nog": ({**PEEPHOLES, "use": "no_output_gate"}, "Greff's NOG: vanilla without output gate"),
    "niaf": ({**PEEPHOLES, "learn": "linear_peephole"},
             "Greff's NIAF: vanilla without input activation, N_t linear"),
    "noaf": ({**PEEPHOLES, "use": "linear_peephole"},
             "Greff's NOAF: vanilla without output activation, U_t = LTM_t"),
    "cifg": ({**PEEPHOLES, "learn": "coupled"},
             "Greff's CIFG: vanilla with coupled input and forget gates, i_t = 1 - f_t"),
    "janet": ({"learn": "janet", "use": "memory"},
              "JANET: forget gate only, i_t = 1 - σ(s_t - 1), STM_t = LTM_t"),
    "gru": ({"learn": "reset", "use": "memory"},
            "GRU as torch.nn.GRU computes it: f_t = z, i_t = 1 - z, "
            "N_t = tanh(W_n E_t + b_n + r ⊙ (W_hn STM_{t-1} + b_hn)), STM_t = LTM_t"),
    "mgu": ({"learn": "mgu", "use": "memory"},
            "MGU: one gate, i_t = 1 - f_t (MGU's f), N_t = tanh(W_hn (i_t ⊙ STM_{t-1}) + W_n E_t "
            "+ b_n), STM_t = LTM_t"),
    "mut1": ({"forget": "event", "learn": "mut1", "use": "memory"},
             "MUT1: f_t = σ(W_f E_t + b_f) (1 - MUT1's z), N_t = tanh(W_hh (r ⊙ STM_{t-1}) + "
             "tanh(E_t) + b_h), STM_t = LTM_t; input_size = hidden_size"),
    "mingru": ({"forget": "event", "learn": "min", "use": "memory"},
               "minGRU: f_t = σ(W_f E_t + b_f) (1 - minGRU's z), N_t = W_n E_t + b_n, "
               "i_t = 1 - f_t, STM_t = LTM_t"),
    "minlstm": ({"forget": "min", "learn": "min", "use": "memory"},
                "minLSTM: f_t = σ(z_f) / (σ(z_f) + σ(z_i)) from the event, N_t = W_n E_t + b_n, "
                "i_t = 1 - f_t, STM_t = LTM_t"),
    "slstm": ({"forget": "slstm", "learn": "slstm", "use": "slstm"},
              "xLSTM's sLSTM, stabilised: exponential gates, memories n_t (normaliser) and m_t "
              "(stabiliser), STM_t = σ(õ) ⊙ LTM_t / n_t"),
    "layernorm": ({"forget": "layernorm", "learn": "layernorm", "use": "layernorm"},
                  "LayerNorm LSTM (Ba et al., haste): a = g_x ⊙ LN(W_x E_t) + g_h ⊙ "
                  "LN(W_h STM_{t-1}) + b over all four gates' 4H pre-activations, "
                  "STM_t = σ(a_v) ⊙ tanh(g_c ⊙ LN(LTM_t) + b_c)"),
}


@hookimpl
def register_gates(register):
    for gate in instruction_sets.load("_builtin").BUILTIN_GATES:
        register(gate)


@hookimpl
def register_variants(register):
    for name, (gates, description) in VARIANTS.items():
        register(name, gates, description=description)
