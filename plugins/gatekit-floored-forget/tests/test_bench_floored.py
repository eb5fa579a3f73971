"""bench_floored.py, the plugin's benchmarks, run with timing off: every contender is built at
every case and the gate passes the pytest plugin's check against the reference, in seconds."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gatekit_floored_forget", exc_type=ImportError,
                    reason="the example plugin is not installed: pip install "
                           "plugins/gatekit-floored-forget")
pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")

BENCH = Path(__file__).with_name("bench_floored.py")


def test_the_benchmarks_check_the_gate_without_timing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pytest", str(BENCH), "--benchmark-disable",
                           "-p", "no:cacheprovider", "-q", "-rs"], cwd=tmp_path,
                          env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed)",
                                                      done.stdout.splitlines()[-1])}
    torch_missing = "PyTorch is not installed" in done.stdout
    # 5 shapes, then 2, each forward and fwdbwd, 4 contenders; the reference forward only.
    skipped = 7 * (1 + 2 * torch_missing)
    assert counts == {"passed": 7 * 8 - skipped, "skipped": skipped}
