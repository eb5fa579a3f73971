"""gatekit-numpy-gates: gates written in Python/NumPy, as a gatekit plugin (no compiler needed).

- use gate ``"softsign"``: U_t = LTM_t / (1 + |LTM_t|), V_t = σ(W_v [STM_{t-1}, E_t] + b_v),
  STM_t = U_t ⊙ V_t
- forget gate ``"hard_sigmoid"``: f_t = clip(0.2 s_t + 0.5, 0, 1), s_t = W_f [STM_{t-1}, E_t] + b_f

and the variants ``"softsign"`` (standard with the softsign Use gate) and ``"hard_softsign"``
(both gates). gatekit finds this module through the entry point ``numpy_gates`` in the
``gatekit`` group.
"""
import gatekit

from gatekit_numpy_gates.gates import ForgetHardSigmoid, UseSoftsign

__all__ = ["ForgetHardSigmoid", "UseSoftsign"]


@gatekit.hookimpl
def register_gates(register):
    register(ForgetHardSigmoid)
    register(UseSoftsign)


@gatekit.hookimpl
def register_variants(register):
    register("softsign", {"use": "softsign"},
             description="Standard LSTM with a softsign Use gate: STM_t = σ(W_v[..]) ⊙ "
                         "LTM_t / (1 + |LTM_t|) (NumPy gate)")
    register("hard_softsign", {"forget": "hard_sigmoid", "use": "softsign"},
             description="Hard-sigmoid forget gate clip(0.2 s + 0.5, 0, 1) and softsign Use "
                         "gate (NumPy gates)")
