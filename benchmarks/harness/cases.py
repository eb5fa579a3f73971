"""What the suite times: the shapes, dtypes and modes of its cases, the families of contenders
and the loads they are timed under, and the names of the groups and processes of a run."""
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["COMMON_SHAPES", "DEFAULT_SHAPES", "DTYPES", "FAMILIES", "KERNEL_FAMILIES", "LOADS",
           "MODES", "MODE_LABELS", "SEED", "SHAPES", "Case", "cases", "group_name", "inputs",
           "parse_list", "process_name"]

#: name: (T, B, D, H)
SHAPES = {
    "S1": (1000, 1, 32, 64),
    "S2": (1000, 1, 128, 256),
    "S3": (200, 32, 128, 256),
    "S4": (100, 64, 512, 512),
    "S5": (50, 128, 1024, 1024),
    # D = H, for the cells that need it (mut1 adds tanh(E_t) to its candidate): S1 so...
    "S1sq": (1000, 1, 64, 64),
    # ...and issue 13's shape for mingru and minlstm against standard (their scan over T)
    "S6": (1000, 32, 256, 256),
    "fixed": (1, 1, 64, 64),          # the fixed cost of one call
}
#: The shapes at which every contender runs; at the others only the contenders that ask for them
#: (``Contender.applies``): gatekit ``standard`` and ``torch.nn.LSTM`` everywhere, the cells that
#: need D = H at S1sq and S6, mingru and minlstm at S6.
COMMON_SHAPES = ("S1", "S2", "S3", "S4", "S5")
DTYPES = {name: ("float32", "float64") if name in ("S1", "S2") else ("float32",)
          for name in SHAPES}
MODES = {name: ("forward",) if name == "fixed" else ("forward", "fwdbwd") for name in SHAPES}
DEFAULT_SHAPES = tuple(SHAPES)
MODE_LABELS = {"forward": "forward", "fwdbwd": "forward+backward"}
FAMILIES = ("gatekit", "gatekit-avx2", "gatekit-baseline", "torch", "jax")
#: The kernel build (``GATEKIT_KERNELS``) of the families that time one build each: the build is
#: chosen when gatekit is imported, so each needs its own process.
KERNEL_FAMILIES = {"gatekit-avx2": "avx2", "gatekit-baseline": "baseline"}
#: ``idle``: nothing of ours runs beside the timed process; ``busy``: one CPU-bound process does.
LOADS = ("idle", "busy")
SEED = 0


@dataclass(frozen=True)
class Case:
    """One shape, dtype and mode: a benchmark group."""
    shape: str
    T: int
    B: int
    D: int
    H: int
    dtype: str = "float32"
    mode: str = "forward"

    @classmethod
    def named(cls, shape, dtype="float32", mode="forward"):
        return cls(shape, *SHAPES[shape], np.dtype(dtype).name, mode)

    @classmethod
    def custom(cls, dims, dtype="float32", mode="forward"):
        T, B, D, H = dims
        return cls("custom", T, B, D, H, np.dtype(dtype).name, mode)

    @property
    def id(self):
        return f"{self.shape}-{self.dtype}-{self.mode}"

    @property
    def group(self):
        return f"{self.shape} {self.dtype} {self.mode}"

    @property
    def title(self):
        return (f"{self.shape} {self.dtype} {MODE_LABELS[self.mode]}: T={self.T}, B={self.B}, "
                f"D={self.D}, H={self.H}")

    @property
    def fields(self):
        return asdict(self)


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


def inputs(case, seed=SEED):
    """The input ``x`` (T, B, D) and the fixed output gradient ``dy`` (T, B, H) of a case, as
    NumPy arrays of its dtype; the same numbers for every contender."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.T, case.B, case.D)).astype(case.dtype)
    dy = rng.standard_normal((case.T, case.B, case.H)).astype(case.dtype)
    return x, dy
