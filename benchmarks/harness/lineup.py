"""Every contender of the suite: gatekit's, PyTorch's and JAX's, in the report's order."""
from harness.cases import FAMILIES
from harness.contenders import gatekit_contenders
from harness.jax_contenders import jax_contenders
from harness.torch_contenders import torch_contenders
from harness.torch_module_contenders import torch_module_contenders

__all__ = ["contenders"]


def contenders(families=FAMILIES):
    """Every contender of ``families``, in the report's order."""
    found = gatekit_contenders(families)
    if "torch" in families:
        found += torch_contenders()
        found += torch_module_contenders()
    if "jax" in families:
        found += jax_contenders()
    return found
