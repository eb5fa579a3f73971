"""gatekit-equation-gates: a Use gate written as its equation, as a gatekit plugin.

    U_t = 1.7159 tanh(2/3 LTM_t),   V_t = σ(W_v [STM_{t-1}, E_t] + b_v),   STM_t = U_t ⊙ V_t

LeCun's scaled tanh (Efficient BackProp, 1998), chosen so that U_t = ±1 at LTM_t = ±1.
Registers the use gate ``"lecun_tanh"`` and the variant ``"lecun_tanh"`` (the standard LSTM
with it). The gate is an ``EquationGate``: gatekit compiles its definition when the plugin is
registered (the first time on a machine; later from its build cache), so the package has no
compiled code and no build step. gatekit finds this module through the entry point
``equation_gates`` in the ``gatekit`` group.
"""
import numpy as np

import gatekit
from gatekit.core.reference import linear, sigmoid

__all__ = ["UseLecunTanh"]

#: LeCun's constants: 1.7159 tanh(2/3 x) is 1 at x = 1, where its second derivative is largest.
SCALE, SLOPE = 1.7159, 2.0 / 3.0


class UseLecunTanh(gatekit.EquationGate):
    """U_t = 1.7159 tanh(2/3 LTM_t), V_t = σ(W_v [STM_{t-1}, E_t] + b_v)"""
    role, name, blocks = "use", "lecun_tanh", ("v",)

    @staticmethod
    def definition(STM_prev, E_t, LTM_t, W_v, b_v):
        U_t = SCALE * np.tanh(SLOPE * LTM_t)
        V_t = sigmoid(linear(W_v, STM_prev, E_t, b_v))
        return {"U_t": U_t, "V_t": V_t, "STM_t": U_t * V_t}


@gatekit.hookimpl
def register_gates(register):
    register(UseLecunTanh)


@gatekit.hookimpl
def register_variants(register):
    register("lecun_tanh", {"use": "lecun_tanh"},
             description="Standard LSTM whose Use gate squashes the LTM with LeCun's "
                         "1.7159 tanh(2/3 LTM_t)")
