"""The variants side by side: time per step on the compiled loop, and the largest deviation from
the reference equations. The main job (``gatekit variants``) prints this table.

The benchmark suite (``benchmarks/`` in the source tree, ``make bench``) times cells against
PyTorch and JAX; this table only needs a median of repeated calls, measured here.
"""
import time

import numpy as np

from gatekit.core import plugins, reference
from gatekit.core.cell import Cell

__all__ = ["deviation", "format_table", "median_seconds", "variant_rows"]


def median_seconds(function, repeats=7, min_time=0.02):
    """Median wall time of one call of ``function``, each sample long enough to be measurable."""
    function()                                   # warm up: first touch of the buffers
    calls, start = 1, time.perf_counter()
    function()
    while time.perf_counter() - start < min_time:
        calls *= 2
        start = time.perf_counter()
        for _ in range(calls):
            function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - start) / calls)
    return float(np.median(samples))


def deviation(cell, x):
    """Largest absolute difference between the cell's output and the float64 reference."""
    y, (stm, ltm, *_) = cell(x)           # extra memories (sLSTM's m, n) are not outputs
    y_ref, (stm_ref, ltm_ref, *_) = reference.forward(cell, x, dtype=np.float64)
    return max(float(np.max(np.abs(a - b))) for a, b in ((y, y_ref), (ltm, ltm_ref)))


def variant_rows(shape=(200, 16, 32, 64), check_shape=(30, 4, 32, 64), seed=0, names=None):
    """One row per registered variant (or per variant of ``names``, in that order): name,
    parameter count, µs per step in float32 and float64 at ``shape`` (T, B, D, H), and the
    deviation from the reference at ``check_shape``.
    A variant whose event must be as wide as its memory (MUT1) reads D = H entries."""
    T, B, D, H = shape
    rng = np.random.default_rng(seed)
    x_timed = rng.standard_normal((T, B, D))
    x_check = rng.standard_normal(check_shape[:3])
    square_rng = np.random.default_rng(seed)
    x_square = (square_rng.standard_normal((T, B, H)),
                square_rng.standard_normal((*check_shape[:2], check_shape[3])))
    registry = plugins.registry()
    rows = []
    for name in names or plugins.variants():
        square = any(cls.input_size_is_hidden_size for cls in registry.compose(name, {}))
        timed, checked = x_square if square else (x_timed, x_check)
        row = {"variant": name}
        for dtype in ("float32", "float64"):
            cell = Cell(timed.shape[2], H, name, dtype=dtype, seed=seed)
            x = timed.astype(dtype)
            row[f"us_per_step_{dtype}"] = median_seconds(lambda: cell(x)) / T * 1e6
            check = Cell(checked.shape[2], check_shape[3], name, dtype=dtype, seed=seed)
            row[f"deviation_{dtype}"] = deviation(check, checked.astype(dtype))
        row["parameters"] = sum(a.size for a in cell.params.values())
        rows.append(row)
    return rows


def format_table(rows, shape):
    T, B, D, H = shape
    width = max([len("variant"), *(len(row["variant"]) for row in rows)])
    header = (f"{'variant':<{width}} {'params':>8} {'f32 µs/step':>12} {'f64 µs/step':>12} "
              f"{'f32 vs ref':>11} {'f64 vs ref':>11}")
    lines = [f"Every registered variant at T={T}, B={B}, D={D} (D = H where a gate needs it, as "
             f"mut1's), H={H}; deviation = largest |cell - reference| over outputs and final "
             "LTM, against the float64 reference.",
             header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['variant']:<{width}} {row['parameters']:>8} "
                     f"{row['us_per_step_float32']:>12.2f} {row['us_per_step_float64']:>12.2f} "
                     f"{row['deviation_float32']:>11.1e} {row['deviation_float64']:>11.1e}")
    return "\n".join(lines)
