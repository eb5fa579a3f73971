"""The presets side by side: time per step on the compiled loop, and the largest deviation from
the reference equations. The main job (`gatekit presets`) prints this table."""
import numpy as np

from gatekit import bench, plugins, reference
from gatekit.bench import median_seconds


def deviation(cell, x):
    """Largest absolute difference between the cell's output and the float64 reference."""
    y, (stm, ltm) = cell(x)
    y_ref, (stm_ref, ltm_ref) = reference.forward(cell, x, dtype=np.float64)
    return max(float(np.max(np.abs(a - b))) for a, b in ((y, y_ref), (ltm, ltm_ref)))


def preset_rows(shape=(200, 16, 32, 64), check_shape=(30, 4, 32, 64), seed=0):
    """One row per registered preset: name, parameter count, µs per step in float32 and
    float64 at ``shape`` (T, B, D, H), and the deviation from the reference at ``check_shape``."""
    T = shape[0]
    x_check = np.random.default_rng(seed).standard_normal(check_shape[:3])
    rows = []
    for name in plugins.variants():
        row = {"variant": name}
        for dtype in ("float32", "float64"):
            # Timed through gatekit.bench, as in the benchmark suite: the same callable.
            case = bench.Case.custom(shape, dtype, "forward")
            cell = bench.gatekit_cell(case, name, seed=seed)
            x, dy = bench.inputs(case, seed)
            call = bench.gatekit_callable(cell, x, dy, case.mode)
            row[f"us_per_step_{dtype}"] = median_seconds(call) / T * 1e6
            check = bench.gatekit_cell(bench.Case.custom(check_shape, dtype), name, seed=seed)
            row[f"deviation_{dtype}"] = deviation(check, x_check.astype(dtype))
        row["parameters"] = sum(a.size for a in cell.params.values())
        rows.append(row)
    return rows


def format_table(rows, shape):
    T, B, D, H = shape
    width = max([len("variant"), *(len(row["variant"]) for row in rows)])
    header = (f"{'variant':<{width}} {'params':>8} {'f32 µs/step':>12} {'f64 µs/step':>12} "
              f"{'f32 vs ref':>11} {'f64 vs ref':>11}")
    lines = [f"Every registered preset at T={T}, B={B}, D={D}, H={H}; deviation = largest "
             "|cell - reference| over outputs and final LTM, against the float64 reference.",
             header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['variant']:<{width}} {row['parameters']:>8} "
                     f"{row['us_per_step_float32']:>12.2f} {row['us_per_step_float64']:>12.2f} "
                     f"{row['deviation_float32']:>11.1e} {row['deviation_float64']:>11.1e}")
    return "\n".join(lines)
