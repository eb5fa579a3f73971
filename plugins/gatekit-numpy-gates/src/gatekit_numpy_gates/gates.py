"""The gates, as :class:`gatekit.PythonGate` subclasses: NumPy code that runs inside gatekit's
compiled time loop, on views of the loop's own buffers (``step.f_t``, ``step.z("v")``, ...).

Forward writes the gate's outputs in place; backward adds (``+=``) its share of the gradients
in place, taking derivatives from the forward outputs where it can, like the built-in gates.
"""
import numpy as np

import gatekit
from gatekit_numpy_gates import definitions
from gatekit_numpy_gates.definitions import HARD_SIGMOID_KINK, HARD_SIGMOID_SLOPE


def _sigmoid(x, out):
    """out = σ(x), without overflow for large |x| (float32 too)."""
    e = np.exp(-np.abs(x))
    np.divide(np.where(x >= 0, 1, e), 1 + e, out=out)
    return out


class ForgetHardSigmoid(gatekit.PythonGate):
    """f_t = clip(0.2 s_t + 0.5, 0, 1). Its pre-activation s_t stays in its block of z, so it
    provides ``s_t`` to later gates, like the standard forget gate."""
    role, name, blocks = "forget", "hard_sigmoid", ("f",)
    outputs = ("s_t", "f_t")
    definition = staticmethod(definitions.forget_hard_sigmoid)
    backward_definition = staticmethod(definitions.forget_hard_sigmoid_backward)

    def forward(self, step):
        s_t = step.z("f")
        np.clip(HARD_SIGMOID_SLOPE * s_t + 0.5, 0, 1, out=step.f_t)

    def backward(self, step):
        # The block of dz is also ds_t: what later gates sent to s_t is already in it.
        s_t = step.z("f")
        step.dz("f")[...] += np.where(np.abs(s_t) < HARD_SIGMOID_KINK,
                                      HARD_SIGMOID_SLOPE * step.df_t, 0)


class UseSoftsign(gatekit.PythonGate):
    """U_t = LTM_t / (1 + |LTM_t|), V_t = σ(W_v [STM_{t-1}, E_t] + b_v), STM_t = U_t ⊙ V_t."""
    role, name, blocks = "use", "softsign", ("v",)
    definition = staticmethod(definitions.use_softsign)
    backward_definition = staticmethod(definitions.use_softsign_backward)

    def forward(self, step):
        np.divide(step.LTM_t, 1 + np.abs(step.LTM_t), out=step.U_t)
        _sigmoid(step.z("v"), out=step.V_t)
        np.multiply(step.U_t, step.V_t, out=step.STM_t)

    def backward(self, step):
        U_t, V_t = step.U_t, step.V_t
        step.dU_t += step.dSTM_t * V_t
        step.dV_t += step.dSTM_t * U_t
        step.dLTM_t += step.dU_t * (1 - np.abs(U_t)) ** 2
        step.dz("v")[...] += step.dV_t * V_t * (1 - V_t)
