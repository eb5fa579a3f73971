"""gatekit inside other frameworks: ``gatekit.torch`` (PyTorch modules) and ``gatekit.jax`` (a
JAX function). Each imports its framework, an optional dependency, so ``import gatekit`` imports
neither; they sit above every other floor of the package and nothing below imports them."""
