"""What a gate's declarations mean, in plain Python: readable without the compiled core, by
``gatekit.core._gate.Gate`` (whose class methods are these functions) and by ``setup.py``,
which traces the definitions of the built-in gates built from them (``gatekit.core.derived``)
before anything is compiled."""

__all__ = ["block_reads", "Declarations", "memory_defaults", "provides", "ROLE_OUTPUTS"]

ROLE_OUTPUTS = {
    "forget": ("f_t",),
    "learn": ("i_t", "N_t"),
    "remember": ("LTM_t",),
    "use": ("U_t", "V_t", "STM_t"),
}


def memory_defaults(cls):
    """The initial values of the memories ``cls`` declares, ``{name: number}``, in declared
    order."""
    memories = cls.memories
    if isinstance(memories, dict):
        return {name: float(value) for name, value in memories.items()}
    return {name: 0.0 for name in memories}


def block_reads(cls, block):
    """What block ``block`` of ``cls`` reads: ``"both"`` ([STM_{t-1}, E_t]), ``"event"`` or
    ``"STM"``."""
    return cls.reads.get(block, "both")


def provides(cls):
    """The quantities ``cls`` produces."""
    outputs = tuple(cls.outputs) if cls.outputs is not None else ROLE_OUTPUTS[cls.role]
    return outputs + tuple(f"{name}_t" for name in memory_defaults(cls)
                           if f"{name}_t" not in outputs)


class Declarations:
    """A gate's declarations without the gate (the defaults of ``Gate``'s): what the tracer
    reads of a class, for a gate traced before the compiled core exists."""
    role = name = definition = outputs = None
    blocks = memories = ()
    params = reads = {}
    block_biases = True

    memory_defaults = classmethod(memory_defaults)
    block_reads = classmethod(block_reads)
    provides = classmethod(provides)
