"""What a benchmark process ran on (CPU, cores, library versions, thread pools), how much of the
machine's CPU time other processes took meanwhile, and the CPU-bound process of the busy load."""
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from harness.cases import LOADS

__all__ = ["VERSIONED", "cpu_load", "cpu_model", "cpu_times", "environment", "others_share",
           "versions"]

#: The distributions whose versions the report lists.
VERSIONED = ("numpy", "scipy", "gatekit", "gatekit-floored-forget", "gatekit-numpy-gates",
             "torch", "jax", "jaxlib", "pytest-benchmark", "threadpoolctl", "Cython")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions():
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment(family=None, load="idle"):
    """What a benchmark process ran on: CPU, cores, load, library versions, and the thread pools
    (threadpoolctl) of the libraries it has loaded; for ``torch`` and ``jax``, their threads.
    ``load``: whether the harness ran a CPU-bound process beside it (``busy``)."""
    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(), "versions": versions(), "family": family,
            "load": load,
            "gatekit_path": str(Path(sys.modules["gatekit"].__file__).parent),
            "env": {k: v for k, v in os.environ.items()
                    if k.endswith("_NUM_THREADS") or k in ("XLA_FLAGS", "GATEKIT_BLOCK_PLUGINS",
                                                           "GATEKIT_KERNELS")}}
    from gatekit.core import instruction_sets as kernels
    info["gatekit_kernels"] = [kernels.load(name).__name__ for name in ("_builtin", "_loop")]
    try:
        import threadpoolctl
        info["threadpools"] = threadpoolctl.threadpool_info()
    except ImportError:
        info["threadpools"] = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        try:
            info["torch_config"] = torch.__config__.parallel_info()
        except Exception:                          # noqa: BLE001 - informative only
            pass
    if "jax" in sys.modules:
        try:
            info["jax_devices"] = [str(d) for d in sys.modules["jax"].devices()]
        except Exception:                          # noqa: BLE001
            pass
    return info


#: The CPU-bound process of the busy load. It stops by itself once its parent is gone (a parent
#: killed with SIGKILL cannot stop it), checking every few milliseconds.
_BUSY_LOOP = """\
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


@contextlib.contextmanager
def cpu_load(load):
    """Run ``load`` beside the body: for ``busy`` one CPU-bound child process (a plain Python
    loop, one process whatever the number of cores), started on entry and stopped and reaped on
    exit, also when the body raises (KeyboardInterrupt included); for ``idle`` nothing. Yields
    the process (None when idle)."""
    if load not in LOADS:
        raise ValueError(f"load must be one of {', '.join(LOADS)}; got {load!r}")
    if load == "idle":
        yield None
        return
    process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BUSY_LOOP, str(os.getpid())],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_times():
    """(busy, steal, total) CPU seconds of the whole machine so far (/proc/stat), and the CPU
    seconds of this process's finished children; None where unknown."""
    import resource
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = children.ru_utime + children.ru_stime
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, None, None, ours
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / tick, steal / tick, (busy + idle + iowait + steal) / tick, ours


def others_share(before, after):
    """The share of the machine's CPU time that went to other processes (and, in a VM, to
    steal) between two :func:`cpu_times`."""
    if before[0] is None:
        return None
    total = after[2] - before[2]
    others = (after[0] - before[0]) - (after[3] - before[3]) + (after[1] - before[1])
    return max(0.0, others / total) if total > 0 else None
