"""gatekit-floored-forget: a forget gate with a learnable per-unit floor, as a gatekit plugin.

    f_t = φ_f + (1 - φ_f) σ(W_f [STM_{t-1}, E_t] + b_f),   φ_f = σ(q_f)

Registers the forget gate ``"floored"`` (``gatekit.Cell(..., forget="floored")``) and the variant
``"floored"`` (the standard LSTM with this forget gate). gatekit finds this module through the
entry point ``floored_forget`` in the ``gatekit`` group.
"""
import gatekit
from gatekit.core import instruction_sets as kernels
# The gate compiled for AVX2 + FMA where the CPU has them, as gatekit's own built-in gates.
ForgetFloored = kernels.load("_floored", package="gatekit_floored_forget").ForgetFloored

from gatekit_floored_forget.definitions import forget_floored, forget_floored_backward

__all__ = ["ForgetFloored", "forget_floored", "forget_floored_backward"]


@gatekit.hookimpl
def register_gates(register):
    register(ForgetFloored)


@gatekit.hookimpl
def register_variants(register):
    register("floored", {"forget": "floored"},
             description="Standard LSTM whose forget factor never drops below a learnt "
                         "per-unit floor: f_t = σ(q_f) + (1 - σ(q_f)) σ(W_f[..] + b_f)")
