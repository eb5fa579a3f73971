"""gatekit.io.files.atomic_write: the one way gatekit writes a user's file.

Oracles: the mode POSIX gives a file created under a umask (0666 & ~umask), set in child
processes; temporaries left by writers really killed with SIGKILL; process ids and start
times read from /proc by the test itself, and the temporary name the module documents.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import gatekit
from gatekit.io import files

from support import child_env

WRITE_EVERY_KIND = textwrap.dedent("""
    import os, sys
    os.umask(int(sys.argv[1], 8))
    folder = sys.argv[2]
    import numpy as np
    import gatekit
    from gatekit.study import compare
    from gatekit.nn import optimisers as optim
    from gatekit.train import training
    gatekit.save(gatekit.Cell(2, 3), os.path.join(folder, "model.npz"))
    model = training.Model(gatekit.Cell(2, 3), 1)
    training.save_checkpoint(os.path.join(folder, "checkpoint.npz"), model,
                             optim.Adam(model.params), np.random.default_rng(0), [1.0])
    compare.write_csv([{"task": "adding", "loss": 0.5}], os.path.join(folder, "table.csv"))
    compare.write_json([{"task": "adding"}], os.path.join(folder, "table.json"))
    try:
        import matplotlib
    except ImportError:
        pass
    else:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from gatekit.study import pictures as visual
        figure = plt.figure()
        visual.save(figure, os.path.join(folder, "picture.png"))
        visual.save(figure, os.path.join(folder, "picture.svg"))
""")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=lambda mask: f"umask-{mask:03o}")
def test_every_saved_file_gets_0666_minus_the_umask(tmp_path, umask):
    result = subprocess.run([sys.executable, "-c", WRITE_EVERY_KIND, oct(umask), str(tmp_path)],
                            env=child_env(), capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = sorted(os.listdir(tmp_path))
    assert {"model.npz", "checkpoint.npz", "table.csv", "table.json"} <= set(written)
    for name in written:
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name


def test_the_umask_of_the_process_is_left_as_it_was(tmp_path):
    before = os.umask(0o027)
    try:
        files.atomic_write(tmp_path / "a.txt", lambda stream: stream.write("x"), text=True)
        assert os.umask(before) == 0o027
    finally:
        os.umask(before)
    assert (tmp_path / "a.txt").read_text() == "x"


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")

    def failing(stream):
        stream.write(b"new, but only half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        files.atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["kept.bin"]


# --- Temporaries of writers that died --------------------------------------------------------

SAVE_FOREVER = textwrap.dedent("""
    import sys
    import gatekit
    cell = gatekit.Cell(64, 1024, seed=0)      # about 20 MB of parameters per file
    print("ready", flush=True)
    while True:
        gatekit.save(cell, sys.argv[1])
""")


def start_time(pid):
    with open(f"/proc/{pid}/stat", "rb") as stream:
        fields = stream.read().rsplit(b")", 1)[1].split()
    return int(fields[19])       # field 22 of proc(5); fields[0] is field 3


def host():
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def temporary_of(pid, start, host_name=None):
    return f".tmp-gatekit.{host_name or host()}.{pid}.{start}.0123456789abcdef"


def kill_while_writing(folder, target):
    """Start a child saving ``target`` over and over; SIGKILL it while a temporary of it is in
    ``folder``. Returns the names of the temporaries left."""
    child = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(target)],
                             env=child_env(), stdout=subprocess.PIPE, text=True,
                             cwd=target.parent)
    try:
        assert child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(name.startswith(".tmp-") for name in os.listdir(folder)):
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    return [name for name in os.listdir(folder) if name.startswith(".tmp-")]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.npz"
    seen = set()
    for _ in range(5):
        left = kill_while_writing(tmp_path, target)
        # Each writer removes the temporaries of those killed before it: one at most is left.
        assert len(left) <= 1, left
        seen.update(left)
    assert seen, "no writer was killed while its temporary existed"
    # What is not a dead writer's temporary must stay.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = temporary_of(sleeper.pid, start_time(sleeper.pid))
        reused = temporary_of(sleeper.pid, start_time(sleeper.pid) + 1)   # a dead writer's id
        other_host = temporary_of(1, 1, host_name="another-host")
        kept = {live, other_host, ".tmp-abc123.npz", "notes.txt", ".tmp-gatekit.readme"}
        for name in kept | {reused}:
            (tmp_path / name).write_bytes(b"x")
        gatekit.save(gatekit.Cell(2, 3), target)
        assert set(os.listdir(tmp_path)) == kept | {"model.npz"}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert gatekit.load(target).hidden_size == 3


def test_a_running_writers_temporary_is_kept(tmp_path):
    mine = temporary_of(os.getpid(), 0)
    (tmp_path / mine).write_bytes(b"being written")
    files.atomic_write(tmp_path / "other.json",
                       lambda stream: json.dump({"a": 1}, stream), text=True)
    assert sorted(os.listdir(tmp_path)) == sorted([mine, "other.json"])
    assert json.loads((tmp_path / "other.json").read_text()) == {"a": 1}
