"""The report of a run: its JSON files read back, the robustness issue's target ratios
(:func:`target_rows`), and the markdown report (:func:`render`): the run, the machine, library
versions and thread pools, the targets, a summary of gatekit ``standard`` against
``torch.nn.LSTM``, one table per group (a case under one load) and what was skipped and why."""
import json
from dataclasses import dataclass
from pathlib import Path

from gatekit.io.files import atomic_write

from harness.cases import FAMILIES, LOADS, Case, cases, group_name, process_name
from harness.contenders import (BASELINE, NEEDS_D_EQUALS_H, NEW_CELLS, ONE_THREAD, REGULARISED,
                                kernel_contender)
from harness.lineup import contenders
from harness.machine import environment
from harness.torch_contenders import TORCH_BASELINE, TORCH_GRU

__all__ = ["LOAD_TITLES", "NOISY_SHARE", "Target", "format_seconds", "issue_targets",
           "load_run", "render", "result_files", "target_rows", "write_text"]

#: Above this share of the machine's CPU time taken by other processes, a run is marked noisy.
NOISY_SHARE = 0.05
LOAD_TITLES = {"busy": "one CPU-bound process beside"}


def format_seconds(seconds):
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _ratio(value, base):
    if value is None or not base:
        return "—"
    ratio = value / base
    return f"{ratio:.0f}" if ratio >= 100 else f"{ratio:.1f}" if ratio >= 10 else (
        f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.1g}")


def load_run(directory):
    """The benchmarks, skips, environments and metadata of a run's JSON files in ``directory``.
    Raises FileNotFoundError if there is no such folder, ValueError if it is a file or holds a
    JSON file that is not one of a run's."""
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise ValueError(f"benchmark results: expected the folder of a run's JSON files, got "
                             f"the file {directory}")
        raise FileNotFoundError(f"benchmark results: no such folder {directory}")
    benchmarks, skips, environments = [], [], {}
    meta = {}
    if (directory / "meta.json").exists():
        meta = _read_json(directory / "meta.json", dict)
    for path in result_files(directory):
        data = _read_json(path, dict)
        env = data.get("machine_info", {}).get("gatekit_bench")
        if env:
            name = process_name(env.get("family") or path.stem, env.get("load", "idle"))
            environments[name] = env
        benchmarks.extend(data.get("benchmarks", []))
    for path in sorted(directory.glob("*-skips.json")):
        skips.extend(_read_json(path, list))
    known = [process_name(family, load) for family in FAMILIES for load in LOADS]
    environments = dict(sorted(environments.items(), key=lambda item: (
        known.index(item[0]) if item[0] in known else len(known), item[0])))
    return benchmarks, skips, environments, meta


def result_files(directory):
    """The JSON files in ``directory`` that hold a family's results (``<family>.json``, as
    ``--benchmark-json`` writes them): every one but ``meta.json`` and the skips."""
    return [path for path in sorted(Path(directory).glob("*.json"))
            if path.name != "meta.json" and not path.name.endswith("-skips.json")]


def _read_json(path, kind):
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"benchmark results: {path} is not JSON ({error})") from None
    if not isinstance(data, kind):
        raise ValueError(f"benchmark results: {path} should hold a JSON "
                         f"{'object' if kind is dict else 'array'}; got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Target:
    """A ratio the robustness issue asks for: median of ``numerator`` / median of ``denominator``
    (contender ids) in the group of ``case`` under ``load`` (None: under each load that ran), at
    most ``limit``."""
    what: str
    numerator: str
    denominator: str
    case: Case
    load: object
    limit: float


#: Issue 13's cells against ``standard`` at the same shape: the shapes and the limit. mut1 needs
#: D = H, so it is held at S1sq and S6 rather than S1 and S3.
CELLS_VS_STANDARD = {"mgu": (("S1", "S3"), 1.3), "mut1": (("S1sq", "S6"), 1.3),
                     "mingru": (("S6",), 0.5), "minlstm": (("S6",), 0.5),
                     "slstm": (("S1", "S3"), 1.3), "layernorm": (("S1", "S3"), 1.5)}
#: ``gru`` against ``torch.nn.GRU``: (shape, mode) -> limit.
GRU_VS_TORCH = {("S1", "forward"): 0.8, ("S3", "forward"): 1.2, ("S1", "fwdbwd"): 0.8,
                ("S3", "fwdbwd"): 1.3}
#: Issue 15's: ``gatekit.torch.LSTM`` of ``peephole`` inside a PyTorch training step (forward +
#: backward) against the same cell as a PyTorch module stepped in a loop, by shape.
MODULE_VS_LOOP = {"S1": 0.1, "S3": 0.5}


def issue_targets():
    """The robustness issue's targets, issue 13's (its cells) and issue 15's (the PyTorch
    module), float32."""
    both_modes = ("forward", "fwdbwd")
    found = [Target("default threads / `threads=1`, one CPU-bound process beside", BASELINE,
                    ONE_THREAD, Case.named(shape, mode=mode), "busy", 1.2)
             for shape in ("S1", "S3") for mode in both_modes]
    found += [Target("default threads / `threads=1`, idle", BASELINE, ONE_THREAD,
                     Case.named("S3", mode=mode), "idle", 0.7) for mode in both_modes]
    found += [Target("gatekit `standard` / `torch.nn.LSTM`, same load", BASELINE,
                     TORCH_BASELINE, Case.named("S1", mode=mode), None, 0.5)
              for mode in both_modes]
    found += [Target("zoneout and recurrent dropout / without (`standard`)", REGULARISED,
                     BASELINE, Case.named(shape, mode=mode), None, 1.15)
              for shape in ("S1", "S3") for mode in both_modes]
    found += [Target("`GATEKIT_KERNELS=baseline` / `avx2` (`standard`)",
                     kernel_contender("baseline"), kernel_contender("avx2"),
                     Case.named(shape, mode=mode), None, 2.0)
              for shape in ("S1", "S3") for mode in both_modes]
    found += [Target("gatekit `gru` / `torch.nn.GRU`, same load", "gatekit-gru", TORCH_GRU,
                     Case.named(shape, mode=mode), None, limit)
              for (shape, mode), limit in GRU_VS_TORCH.items()]
    found += [Target(f"gatekit `{variant}` / `standard`, same shape", f"gatekit-{variant}",
                     BASELINE, Case.named(shape, mode=mode), None, limit)
              for variant, (shapes, limit) in CELLS_VS_STANDARD.items()
              for shape in shapes for mode in both_modes]
    found += [Target(f"gatekit `{variant}` / the same cell as a PyTorch Python loop",
                     f"gatekit-{variant}", f"torch-loop-{variant}",
                     Case.named("S1sq" if variant in NEEDS_D_EQUALS_H else "S1", mode=mode),
                     None, 0.1)
              for variant in NEW_CELLS for mode in both_modes]
    found += [Target("`gatekit.torch.LSTM` `peephole` / the same cell as a PyTorch module in a "
                     "loop", "gatekit-torch-peephole", "torch-loop-peephole",
                     Case.named(shape, mode="fwdbwd"), None, limit)
              for shape, limit in MODULE_VS_LOOP.items()]
    found += [Target("`gatekit.torch.LSTM` `standard` / `torch.nn.LSTM`, same load",
                     "gatekit-torch-standard", TORCH_BASELINE, Case.named("S1", mode=mode), None,
                     1.0) for mode in both_modes]
    return found


def target_rows(benchmarks, targets=None):
    """One dict per target and load: ``what``, ``group``, ``load``, the two medians (None where
    the contender did not run), ``ratio``, ``limit`` and ``verdict`` (``met``, ``not met`` or
    ``not measured``). A target without a load of its own gets a row for each load that ran."""
    medians = {(row["group"], row["extra_info"].get("contender_id")): row["stats"]["median"]
               for row in benchmarks}
    ran = [load for load in LOADS
           if any(row["extra_info"].get("load", "idle") == load for row in benchmarks)]
    rows = []
    for target in issue_targets() if targets is None else targets:
        for load in [target.load] if target.load else ran or ["idle"]:
            group = group_name(target.case, load)
            top = medians.get((group, target.numerator))
            bottom = medians.get((group, target.denominator))
            ratio = top / bottom if top is not None and bottom else None
            verdict = ("not measured" if ratio is None else
                       "met" if ratio <= target.limit else "not met")
            rows.append({"what": target.what, "group": group, "load": load,
                         "numerator_s": top, "denominator_s": bottom, "ratio": ratio,
                         "limit": target.limit, "verdict": verdict})
    return rows


def _order(families=FAMILIES):
    return {c.id: k for k, c in enumerate(contenders(families))}


def write_text(path, text):
    """Write ``text`` to ``path`` whole or not at all, making its folder if need be."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda stream: stream.write(text), text=True)


def render(benchmarks, skips, environments, meta=None):
    """The markdown report: the run, the machine, versions and thread pools, a summary of gatekit
    standard against torch.nn.LSTM, one table per group, and what was skipped and why."""
    meta = meta or {}
    order = _order()
    group_order = {group_name(c, load): k
                   for k, (c, load) in enumerate((c, load) for c in cases() for load in LOADS)}
    lines = ["# gatekit benchmarks", ""]
    if meta:
        lines.append(f"Run {meta.get('started', '?')} with `{meta.get('command', '?')}`; "
                     f"wall time {meta.get('seconds', 0) / 60:.1f} min.")
        shares = {f: m.get("others_cpu_share") for f, m in meta.get("families", {}).items()}
        noisy = [f for f, share in shares.items() if share is not None and share > NOISY_SHARE]
        if noisy:
            lines.append(f"**Noisy:** other processes ran while "
                         f"{', '.join(f'`{name}`' for name in noisy)} was timed "
                         "(see Machine); do not publish these numbers.")
        if meta.get("guards") is not None:
            lines.append(f"Correctness guards (the PyTorch and JAX versions against gatekit: "
                         f"outputs, final memories and gradients, float64, to 1e-10): "
                         f"{meta['guards']}.")
        lines.append("")
    env = environments.get("gatekit") or next(iter(environments.values()), None) or environment()
    lines += ["## Machine", "",
              f"- CPU: {env['cpu']}; {env['logical_cpus']} logical CPUs, "
              f"{env['usable_cpus']} usable by this process",
              f"- Platform: {env['platform']}"]
    version_line = ", ".join(f"{name} {version}" for name, version in env["versions"].items()
                             if version)
    absent = [name for name, version in env["versions"].items() if not version]
    lines.append(f"- Versions: {version_line}" + (f" (not installed: {', '.join(absent)})"
                                                    if absent else ""))
    if env.get("gatekit_path"):
        lines.append(f"- gatekit imported from {_shown_path(env['gatekit_path'])}")
    places = {e["gatekit_path"] for e in environments.values() if e.get("gatekit_path")}
    if len(places) > 1:
        lines.append(f"- **Mixed:** the processes imported different gatekits: "
                     f"{', '.join(sorted(map(_shown_path, places)))}; their ratios compare "
                     "different code")
    for family, family_env in environments.items():
        extra = []
        if family_env.get("gatekit_kernels"):
            extra.append(f"gatekit kernels {', '.join(family_env['gatekit_kernels'])}")
        if "torch_threads" in family_env:
            extra.append(f"torch threads {family_env['torch_threads']} "
                         f"(interop {family_env.get('torch_interop_threads')})")
        if family_env.get("jax_devices"):
            extra.append(f"JAX devices {', '.join(family_env['jax_devices'])}")
        if family_env.get("env"):
            extra.append(", ".join(f"{k}={v}" for k, v in family_env["env"].items()))
        loads = (meta.get("families", {}).get(family, {}))
        if loads.get("load_before"):
            extra.append(f"load average (1 min) {loads['load_before'][0]:.2f} before, "
                         f"{loads['load_after'][0]:.2f} after")
        share = loads.get("others_cpu_share")
        if share is not None:
            extra.append(f"other processes took {100 * share:.0f}% of the CPU time while it ran"
                         + (" (**noisy**)" if share > NOISY_SHARE else ""))
        lines.append(f"- Process `{family}`: " + ("; ".join(extra) if extra else "—"))
    lines += ["", "### BLAS and thread pools (threadpoolctl, in each benchmark process)", "",
              "| process | user API | internal API | version | threads | architecture | "
              "library |", "|---|---|---|---|---|---|---|"]
    for family, family_env in environments.items():
        for pool in family_env.get("threadpools") or []:
            lines.append(f"| {family} | {pool.get('user_api')} | {pool.get('internal_api')} | "
                         f"{pool.get('version')} | {pool.get('num_threads')} | "
                         f"{pool.get('architecture', '')} | "
                         f"{Path(pool.get('filepath', '')).name} |")
    settings = meta.get("settings")
    lines += ["", "## How to read the tables", "",
              "Each group is one shape (T steps, B sequences, D inputs, H units), dtype and mode: "
              "`forward` (for PyTorch under `torch.no_grad()`), or `fwdbwd`: forward, then the "
              "gradient of `sum(y * dy)` for a fixed `dy` with respect to every parameter and "
              "`x`. *median* is the median wall time of one call over the timed rounds (inputs "
              "and parameters built beforehand; JAX's compile time is excluded and shown apart); "
              "*per step* is median / T. *× standard* is median / median of gatekit `standard` in "
              "the same group, *× nn.LSTM* median / median of `torch.nn.LSTM` (above 1: slower). "
              "gatekit with the NumPy reference and the plugins, gatekit with each capped kernel "
              "build (`GATEKIT_KERNELS`), PyTorch, and JAX each ran in their own process. Groups "
              "marked *busy* were timed with one CPU-bound process of the harness running "
              "beside the timed process, started before it and stopped after it."]
    if settings:
        lines.append(f"Timing settings: {settings}.")
    lines.append("")

    groups = {}
    for bench in benchmarks:
        groups.setdefault(bench["group"], []).append(bench)

    def median(rows, contender_id):
        for row in rows:
            if row["extra_info"].get("contender_id") == contender_id:
                return row["stats"]["median"]
        return None

    ordered = sorted(groups, key=lambda g: (group_order.get(g, len(group_order)), g))
    if ordered:
        lines += ["## Issue targets", "",
                  "Ratios of medians within one group, so between contenders timed under the "
                  "same load (float32).", "",
                  "| what | group | ratio | target | verdict |", "|---|---|---:|---:|---|"]
        for row in target_rows(benchmarks):
            measured = (f"{row['ratio']:.2f} ({format_seconds(row['numerator_s'])} / "
                        f"{format_seconds(row['denominator_s'])})" if row["ratio"] is not None
                        else "—")
            lines.append(f"| {row['what']} | {row['group']} | {measured} | "
                         f"≤ {row['limit']:g} | {row['verdict']} |")
        lines.append("")
        lines += ["## Summary: gatekit standard against torch.nn.LSTM", "",
                  "| group | gatekit standard | torch.nn.LSTM | gatekit / nn.LSTM | "
                  "fastest |", "|---|---:|---:|---:|---|"]
        for group in ordered:
            rows = groups[group]
            gk, pt = median(rows, BASELINE), median(rows, TORCH_BASELINE)
            fastest = min(rows, key=lambda r: r["stats"]["median"])
            lines.append(f"| {group} | {format_seconds(gk)} | {format_seconds(pt)} | "
                         f"{_ratio(gk, pt)} | {fastest['extra_info'].get('contender')} |")
        lines.append("")
    for group in ordered:
        rows = sorted(groups[group],
                      key=lambda r: order.get(r["extra_info"].get("contender_id"), len(order)))
        info = rows[0]["extra_info"]
        T = info.get("T") or 1
        title = Case(info["shape"], info["T"], info["B"], info["D"], info["H"], info["dtype"],
                     info["mode"]).title if "shape" in info else group
        if "shape" in info and info.get("load", "idle") != "idle":
            title += f" ({info['load']}: {LOAD_TITLES[info['load']]})"
        base, torch_base = median(rows, BASELINE), median(rows, TORCH_BASELINE)
        lines += [f"## {title}", "",
                  "| contender | median | per step | × standard | × nn.LSTM | rounds × iter | "
                  "notes |", "|---|---:|---:|---:|---:|---:|---|"]
        for row in rows:
            stats, extra = row["stats"], row["extra_info"]
            notes = []
            if "compile_s" in extra:
                notes.append(f"compile {extra['compile_s']:.2f} s (not timed)")
            if "torch_threads" in extra:
                notes.append(f"{extra['torch_threads']} threads")
            if stats.get("rounds", 0) < 3:
                notes.append("few rounds")
            spread = stats.get("iqr", 0) / stats["median"] if stats["median"] else 0
            estimate = extra.get("estimate_s")
            if spread > 0.1:
                notes.append(f"noisy: IQR {100 * spread:.0f}% of median")
            if estimate and not 0.5 <= stats["median"] / estimate <= 2:
                notes.append(f"noisy: warm-up call took {format_seconds(estimate)}")
            lines.append(
                f"| {extra.get('contender', row['name'])} | {format_seconds(stats['median'])} | "
                f"{format_seconds(stats['median'] / T)} | {_ratio(stats['median'], base)} | "
                f"{_ratio(stats['median'], torch_base)} | "
                f"{stats['rounds']} × {stats.get('iterations', 1)} | {'; '.join(notes)} |")
        group_skips = [s for s in skips if s.get("group") == group]
        for skip in group_skips:
            lines.append(f"| {skip['contender']} | skipped | | | | | {skip['reason']} |")
        lines.append("")
    other_skips = [s for s in skips if s.get("group") not in groups]
    if other_skips:
        lines += ["## Skipped (whole groups or families)", "", "| group | contender | reason |",
                  "|---|---|---|"]
        for skip in other_skips:
            lines.append(f"| {skip.get('group')} | {skip['contender']} | {skip['reason']} |")
        lines.append("")
    if not benchmarks:
        lines += ["No benchmark ran.", ""]
    return "\n".join(lines)


def _shown_path(path):
    """``path`` relative to the working folder where it lies inside it: a report committed to
    the repository should not record the folder of the checkout it was run in."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
