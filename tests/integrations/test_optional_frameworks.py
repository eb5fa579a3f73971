"""The frameworks stay optional: ``import gatekit`` imports neither PyTorch nor JAX."""
import subprocess
import sys


def test_importing_gatekit_imports_no_framework():
    code = ("import sys, gatekit, numpy as np\n"
            "gatekit.LSTM(2, 3, seed=0)(np.zeros((4, 1, 2)))\n"
            "print(sorted({'torch', 'jax'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
