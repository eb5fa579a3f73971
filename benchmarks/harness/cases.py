"""What the suite times: the shapes, dtypes and modes of its cases, the families of contenders
and the loads they are timed under, and the names of the groups and processes of a run."""
# The shapes, the case and its inputs are gatekit's (gate authors time the same ones with its
# pytest plugin). Every contender runs at COMMON_SHAPES; at the others only the contenders that
# ask for them (``Contender.applies``): gatekit ``standard`` and ``torch.nn.LSTM`` everywhere,
# the cells that need D = H at S1sq and S6, mingru and minlstm at S6.
from gatekit.benchmarking import COMMON_SHAPES, MODE_LABELS, SEED, SHAPES, Case, inputs

__all__ = ["COMMON_SHAPES", "DEFAULT_SHAPES", "DTYPES", "FAMILIES", "KERNEL_FAMILIES", "LOADS",
           "MODES", "MODE_LABELS", "SEED", "SHAPES", "Case", "cases", "group_name", "inputs",
           "parse_list", "process_name"]

DTYPES = {name: ("float32", "float64") if name in ("S1", "S2") else ("float32",)
          for name in SHAPES}
MODES = {name: ("forward",) if name == "fixed" else ("forward", "fwdbwd") for name in SHAPES}
DEFAULT_SHAPES = tuple(SHAPES)
FAMILIES = ("gatekit", "gatekit-avx2", "gatekit-baseline", "torch", "jax")
#: The kernel build (``GATEKIT_KERNELS``) of the families that time one build each: the build is
#: chosen when gatekit is imported, so each needs its own process.
KERNEL_FAMILIES = {"gatekit-avx2": "avx2", "gatekit-baseline": "baseline"}
#: ``idle``: nothing of ours runs beside the timed process; ``busy``: one CPU-bound process does.
LOADS = ("idle", "busy")


def group_name(case, load="idle"):
    """The benchmark group of ``case`` timed under ``load``: its own group, with the load after
    it when busy (ratios are taken within a group, so always between runs under one load)."""
    return case.group if load == "idle" else f"{case.group}, {load}"


def process_name(family, load="idle"):
    """How the report names the process that timed ``family`` under ``load``."""
    return family if load == "idle" else f"{family}, {load}"


def parse_list(text, known, what):
    """The comma-separated items of ``text`` (all of ``known`` when empty); a ValueError naming
    those not in ``known``."""
    items = [item.strip() for item in text.split(",") if item.strip()] if text else list(known)
    unknown = [item for item in items if item not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return items


def cases(shapes=DEFAULT_SHAPES, dtypes=("float32", "float64"), modes=("forward", "fwdbwd")):
    """Every case of ``shapes``, in the suite's order, restricted to ``dtypes`` and ``modes``."""
    return [Case.named(shape, dtype, mode)
            for shape in shapes for dtype in DTYPES[shape] if dtype in dtypes
            for mode in MODES[shape] if mode in modes]
