"""The run: the correctness guards, then each family in its own ``pytest benchmarks`` process
with ``--benchmark-json``, once per load (``idle``, and ``busy`` with one CPU-bound process
beside the family's process from before it starts until it ends), then the merged report."""
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from gatekit.benchmarking import Settings

from harness.cases import FAMILIES, KERNEL_FAMILIES, LOADS, SHAPES, parse_list, process_name
from harness.machine import cpu_load, cpu_times, others_share
from harness.report import load_run, render, write_text

__all__ = ["SUITE", "child_environ", "run"]

#: The benchmark suite: the folder of this harness.
SUITE = Path(__file__).resolve().parents[1]


def _pytest(args):
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def child_environ(family=None):
    """The environment of a pytest process that times ``family``: ours, and for a kernel family
    its ``GATEKIT_KERNELS``."""
    env = dict(os.environ)
    if family in KERNEL_FAMILIES:
        from gatekit.core import instruction_sets as kernels
        env[kernels.ENV] = KERNEL_FAMILIES[family]
    return env


def _junit_summary(path):
    """'N passed, M skipped' from a pytest JUnit XML file."""
    import xml.etree.ElementTree as ElementTree
    try:
        suite = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return "unknown"
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    text = f"{total - skipped - failed} passed"
    if skipped:
        text += f", {skipped} skipped (see Skipped)"
    if failed:
        text += f", {failed} failed"
    return text


def run(args):
    """Run the guards, then each family in its own pytest process; write the merged report."""
    started = time.time()
    bench_dir = Path(args.bench_dir) if args.bench_dir else SUITE
    if not bench_dir.is_dir():
        print(f"{args.prog} run: no benchmark suite at {bench_dir} (pass --bench-dir)",
              file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.json_dir or Path(".benchmarks") / f"run-{stamp}")
    try:
        families = parse_list(args.families, FAMILIES, "families")
        loads = parse_list(args.load, LOADS, "loads")
        shapes = parse_list(args.shapes, SHAPES, "shapes")
        parse_list(args.dtypes, ("float32", "float64"), "dtypes")
        parse_list(args.modes, ("forward", "fwdbwd"), "modes")
    except ValueError as error:
        print(f"{args.prog} run: {error}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(args.max_time, args.min_rounds, args.budget,
                        reference_limit=args.reference_limit)
    options = ["--gk-shapes", ",".join(shapes), "--gk-dtypes", args.dtypes, "--gk-modes",
               args.modes, "--gk-max-time", str(settings.max_time), "--gk-min-rounds",
               str(settings.min_rounds), "--gk-budget", str(settings.budget),
               "--gk-reference-limit", str(settings.reference_limit)]
    extra = shlex.split(args.pytest_args or "")
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"),
            "command": " ".join([args.prog, shlex.join(args.argv)]),
            "settings": asdict(settings), "loads": loads, "families": {}, "guards": None}

    if not args.no_guards:
        print("== correctness guards (pytest -m correctness --benchmark-disable)", flush=True)
        junit = out_dir / "guards.xml"
        code = subprocess.call(_pytest([str(bench_dir), "-q", "-m", "correctness",
                                        "--benchmark-disable", "-rs", f"--junitxml={junit}",
                                        "--gk-skips", str(out_dir / "guards-skips.json")]),
                               env=child_environ("gatekit"))
        if code not in (0, 5):
            print(f"{args.prog} run: a correctness guard failed; not timing implementations "
                  "that compute something else", file=sys.stderr)
            return code
        meta["guards"] = _junit_summary(junit)

    failures = []
    for family, load in ((family, load) for family in families for load in loads):
        process = process_name(family, load)
        stem = family if load == "idle" else f"{family}-{load}"
        json_path = out_dir / f"{stem}.json"
        skips_path = out_dir / f"{stem}-skips.json"
        for path in (json_path, skips_path):
            path.unlink(missing_ok=True)
        command = _pytest([str(bench_dir), "-q", "--benchmark-only", "-m", "not correctness",
                           f"--benchmark-json={json_path}", "--benchmark-group-by=group",
                           "--benchmark-sort=name",
                           "--benchmark-columns=min,median,max,rounds,iterations",
                           "--gk-families", family, "--gk-load", load, "--gk-skips",
                           str(skips_path), *options, *extra])
        print(f"== {process}: {' '.join(command)}", flush=True)
        load_before = list(os.getloadavg())
        # Measured around the load too: once reaped, its CPU time counts as ours, not others'.
        start, cpu_before = time.time(), cpu_times()
        with cpu_load(load):
            code = subprocess.call(command, env=child_environ(family))
        meta["families"][process] = {"exit": code, "seconds": time.time() - start,
                                     "load": load, "load_before": load_before,
                                     "load_after": list(os.getloadavg()),
                                     "others_cpu_share": others_share(cpu_before, cpu_times())}
        if code not in (0, 5):
            failures.append(process)
    meta["seconds"] = time.time() - started
    write_text(out_dir / "meta.json", json.dumps(meta, indent=1))
    text = render(*load_run(out_dir)[:3], meta)
    if failures:
        text += (f"\n**Failed:** the process(es) {', '.join(f'`{name}`' for name in failures)} "
                 "exited with an error.\n")
    write_text(args.out, text)
    print(text)
    print(f"\n{args.prog} run: JSON in {out_dir}, report in {args.out}")
    return 1 if failures else 0
