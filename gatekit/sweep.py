"""Sweeps: many training runs (variant x task x seed x hyperparameters), each a pure function of
its spec, executed on a local process pool or a Dask cluster, with results appended to a file
as each run finishes.

- :func:`run_one` trains one model from a spec (a plain dict of JSON values) and returns a
  result record (a dict of JSON values). It is deterministic given the spec (up to timings)
  and needs nothing but an importable gatekit, so a worker process or a Dask worker runs the
  very same code.
- :func:`run_sweep` runs the specs not yet in the results file and appends each record to it
  as soon as it arrives: one JSON object per line, flushed and fsynced. A crash, a Ctrl-C or a
  lost worker loses at most the runs in flight; running the same sweep again skips every spec
  whose key is already in the file (a partial last line left by a crash is ignored).
"""
import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np

import gatekit
from gatekit import init, optim, plugins, tasks, training
from gatekit._gate import ROLES

SPEC_DEFAULTS = {
    "steps": 2000,            # optimizer steps (at most; see stop_when_solved)
    "batch_size": 16,         # training sequences per step
    "hidden_size": 32,
    "lr": 1e-2,               # Adam
    "clip": 1.0,              # joint gradient-norm clip (None: no clipping)
    "forget_bias": 1.0,       # b_f at start, for cells that have one (None: leave the init)
    "dtype": "float32",
    "eval_every": 50,         # steps between evaluations on the held-out batch
    "eval_size": 256,         # held-out sequences, the same for every variant of a seed
    "solve_rate": 1.0,        # a run solves the task when this share of them is solved
    "stop_when_solved": False,
}


# --- Variants: a preset name, optionally with gates swapped ---------------------------------

def parse_variant(text):
    """``"preset"`` or ``"preset+role=gate+role=gate"`` -> ``(preset, {role: gate})``.

    ``standard+forget=peephole`` is the standard preset with the peephole forget gate;
    ``course+learn=coupled+use=peephole`` swaps two gates. Roles are forget, learn, remember
    and use. Names are checked against the registry."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a variant is a preset name, optionally followed by +role=gate; "
                         f"got {text!r}")
    preset, *swaps = [part.strip() for part in text.split("+")]
    overrides = {}
    for swap in swaps:
        role, sep, gate = swap.partition("=")
        role, gate = role.strip(), gate.strip()
        if not sep or not role or not gate:
            raise ValueError(f"in variant {text!r}: {swap!r} is not role=gate "
                             f"(e.g. standard+forget=peephole)")
        if role not in ROLES:
            raise ValueError(f"in variant {text!r}: unknown role {role!r}; roles are "
                             f"{', '.join(ROLES)}")
        if role in overrides:
            raise ValueError(f"in variant {text!r}: role {role!r} is given twice")
        overrides[role] = gate
    plugins.registry().compose(preset, overrides)       # unknown names raise ValueError here
    return preset, overrides


def make_cell(variant, input_size, hidden_size, dtype="float32", seed=None):
    # One thread per run: a sweep runs many at once (processes, Dask workers), and a run's own
    # threads would compete with the other runs' for the CPUs and wait at every step's barrier.
    preset, overrides = parse_variant(variant)
    return gatekit.Cell(input_size, hidden_size, preset, dtype=np.dtype(dtype), seed=seed,
                        threads=1, **overrides)


# --- Specs and their keys --------------------------------------------------------------------

def make_spec(variant, task, seed, **settings):
    """A run's spec: ``variant`` (see :func:`parse_variant`), ``task`` (a name, or a dict
    ``{"name": ..., "length": ..., options}``), ``seed`` and the settings of
    :data:`SPEC_DEFAULTS` (unknown settings are refused)."""
    unknown = set(settings) - set(SPEC_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown run settings {sorted(unknown)}; known: "
                        f"{', '.join(SPEC_DEFAULTS)}")
    parse_variant(variant)
    spec = normalize({"variant": variant, "task": task, "seed": int(seed), **settings})
    json.dumps(spec)                    # a spec is plain JSON values
    return spec


def normalize(spec):
    """``spec`` with every setting of :data:`SPEC_DEFAULTS` filled in and its task's options
    complete (a task given by name gets its defaults), so that equal runs get equal keys."""
    spec = {**SPEC_DEFAULTS, **spec}
    task = {"name": spec["task"]} if isinstance(spec["task"], str) else spec["task"]
    spec["task"] = tasks.make(**task).options()      # validates, and fills in the defaults
    return spec


def spec_key(spec):
    """A stable key for a spec: the SHA-256 of its canonical JSON, 16 hex digits."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- One run ---------------------------------------------------------------------------------

def run_one(spec):
    """Train the model a spec describes; return its result record (JSON values only).

    The cell (and its readout) start from ``seed``; training batches come from a generator
    seeded with ``[seed, 1]`` and the held-out evaluation batch from ``[seed, 2]``, so every
    variant of a seed sees the same data. Every ``eval_every`` steps (and before the first) the
    model is evaluated on the held-out batch: its loss and the share of sequences solved. The
    run solves the task at the first evaluation where that share reaches ``solve_rate``;
    ``sequences_to_solve`` is the number of training sequences seen by then."""
    spec = normalize(spec)
    started = time.perf_counter()
    task = tasks.make(**spec["task"])
    seed = spec["seed"]
    cell = make_cell(spec["variant"], task.input_size, spec["hidden_size"], spec["dtype"], seed)
    if spec["forget_bias"] is not None and "b_f" in cell.params:
        init.forget_bias(cell, spec["forget_bias"])
    model = training.Model(cell, task.output_size, seed=seed)
    optimizer = optim.Adam(model.params, lr=spec["lr"])
    train_rng = np.random.default_rng([seed, 1])
    x_eval, target_eval = task.sample(spec["eval_size"], np.random.default_rng([seed, 2]))
    batch_size, steps, every = spec["batch_size"], spec["steps"], spec["eval_every"]

    def batches(_rng):
        return task.sample(batch_size, train_rng)

    def evaluate():
        outputs = model(x_eval)
        loss, _ = task.loss(outputs, target_eval)
        return float(loss), float(np.mean(task.solved(outputs, target_eval)))

    curve = {"sequences": [], "eval_loss": [], "solved_fraction": [], "train_loss": []}

    def record(train_loss):
        loss, fraction = evaluate()
        curve["sequences"].append(done * batch_size)
        curve["eval_loss"].append(_finite_or_none(loss))
        curve["solved_fraction"].append(fraction)
        curve["train_loss"].append(_finite_or_none(train_loss))
        return fraction

    done, train_seconds, losses, stopped, solved_at = 0, 0.0, [], "", None
    if record(None) >= spec["solve_rate"]:
        solved_at = 0
    while done < steps and not (solved_at is not None and spec["stop_when_solved"]):
        chunk = min(every, steps - done)
        history = training.train(model, batches, task.loss, optimizer, chunk,
                                 clip=spec["clip"], progress=False, seed=seed)
        done += history.steps
        train_seconds += history.seconds
        losses.extend(history.losses)
        if history.steps:
            fraction = record(float(np.mean(history.losses)))
            if solved_at is None and fraction >= spec["solve_rate"]:
                solved_at = done * batch_size
        if history.stopped.startswith("non-finite"):
            stopped = history.stopped
            break
    if not stopped:
        stopped = (f"solved after {done} steps" if solved_at is not None and done < steps
                   else f"ran {done} steps")
    return {
        "key": spec_key(spec),
        "status": "ok",
        "spec": spec,
        "final_loss": curve["eval_loss"][-1],
        "final_train_loss": _finite_or_none(float(np.mean(losses[-every:]))) if losses else None,
        "baseline_loss": float(task.baseline_loss),
        "solved": solved_at is not None,
        "solved_fraction": curve["solved_fraction"][-1],
        "sequences_to_solve": solved_at,
        "steps_run": done,
        "step_seconds": train_seconds / done if done else None,
        "params": int(sum(array.size for array in cell.params.values())),
        "stopped": stopped,
        "curve": curve,
        "seconds": time.perf_counter() - started,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "gatekit": gatekit.__version__,
    }


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


# --- The results file ------------------------------------------------------------------------

def read_results(path):
    """The complete records of a results file (JSON Lines), the last one per key. Lines that are
    not a complete JSON object with a ``key`` (such as a partial last line left by a crash) are
    skipped; records whose ``status`` is not ``"ok"`` (failed runs) do not count as done."""
    records = {}
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("status") == "ok" and "key" in record:
                records[record["key"]] = record
    return records


class ResultsFile:
    """Appends records to a JSON Lines file, each flushed and fsynced before the next. Holds an
    advisory lock on the file while open, so two sweeps never write to it at once."""

    def __init__(self, path):
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self.stream = open(self.path, "a+b")
        try:
            _lock(self.stream, self.path)
            self.stream.seek(0, os.SEEK_END)
            if self.stream.tell() > 0:
                self.stream.seek(-1, os.SEEK_END)
                if self.stream.read(1) != b"\n":     # a partial line from a crash: set it apart
                    self._write(b"\n")
        except BaseException:
            self.stream.close()
            raise

    def _write(self, data):
        self.stream.write(data)
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def append(self, record):
        self._write((json.dumps(record, allow_nan=False) + "\n").encode("utf-8"))

    def close(self):
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _lock(stream, path):
    try:
        import fcntl
    except ImportError:          # not POSIX: no lock
        return
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"{path} is in use by another sweep (it holds the file's lock)") \
            from None


# --- Executors -------------------------------------------------------------------------------

def _limit_threads():
    """Worker initializer: one BLAS thread per worker process (the pool is the parallelism;
    gatekit's own cells run on one thread in a sweep, see make_cell)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


class LocalExecutor:
    """Runs specs on a pool of ``workers`` processes (``os.cpu_count()`` by default), started
    with ``spawn``; ``workers=0`` runs them one after another in this process."""

    def __init__(self, workers=None):
        self.workers = (os.cpu_count() or 1) if workers is None else int(workers)
        self.pool = None
        if self.workers > 0:
            import multiprocessing
            self.pool = ProcessPoolExecutor(self.workers, initializer=_limit_threads,
                                            mp_context=multiprocessing.get_context("spawn"))

    def describe(self):
        return (f"{self.workers} local processes" if self.pool else "in this process")

    def run(self, specs):
        """Yield ``(spec, record or exception)`` as runs finish."""
        if self.pool is None:
            for spec in specs:
                try:
                    yield spec, run_one(spec)
                except Exception as error:   # noqa: BLE001 - reported by the caller
                    yield spec, error
            return
        pending = {self.pool.submit(run_one, spec): spec for spec in specs}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = pending.pop(future)
                    error = future.exception()
                    yield spec, (future.result() if error is None else error)
        finally:
            for future in pending:
                future.cancel()

    def close(self, cancel=False):
        if self.pool is not None:
            self.pool.shutdown(wait=not cancel, cancel_futures=True)


class DaskExecutor:
    """Runs specs on a Dask cluster through a ``dask.distributed.Client``, or a client it
    connects to ``address`` (and closes at the end)."""

    def __init__(self, client=None, address=None):
        from dask.distributed import Client
        self.owned = client is None
        self.client = Client(address) if client is None else client

    def describe(self):
        return f"the Dask cluster at {self.client.scheduler.address}"

    def run(self, specs):
        from dask.distributed import as_completed
        futures = {self.client.submit(run_one, spec, pure=False): spec for spec in specs}
        try:
            for future in as_completed(list(futures)):
                spec = futures.pop(future)
                try:
                    result = future.result()
                except Exception as error:      # noqa: BLE001 - a failed run or lost worker
                    result = error
                future.release()
                yield spec, result
        finally:
            if futures:
                self.client.cancel(list(futures))

    def close(self, cancel=False):
        if self.owned:
            self.client.close()


def executor_for(executor=None, workers=None, scheduler=None):
    """An executor from what a caller gives: a ``dask.distributed.Client``, a scheduler address,
    an executor of this module, or nothing (a local process pool of ``workers`` processes)."""
    if executor is not None and scheduler is not None:
        raise ValueError("give either a client/executor or a scheduler address, not both")
    if scheduler is not None:
        return DaskExecutor(address=scheduler)
    if executor is None:
        return LocalExecutor(workers)
    if isinstance(executor, (LocalExecutor, DaskExecutor)):
        return executor
    if type(executor).__name__ == "Client" and "distributed" in type(executor).__module__:
        return DaskExecutor(client=executor)
    raise TypeError(f"executor must be a dask.distributed.Client, a scheduler address or "
                    f"None; got {type(executor).__name__}")


# --- The sweep -------------------------------------------------------------------------------

class SweepProgress:
    """A progress bar over runs on stderr: redrawn in place on a terminal, one line per finished
    run otherwise."""

    def __init__(self, total, done, stream=None, width=30):
        self.total, self.done, self.width = total, done, width
        self.stream = sys.stderr if stream is None else stream
        self.interactive = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.finished_here = 0

    def update(self, spec, result):
        self.done += 1
        self.finished_here += 1
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        remaining = self.total - self.done
        eta = elapsed / self.finished_here * remaining
        task = spec["task"]
        what = f"{spec['variant']} on {task['name']}:{task['length']} seed {spec['seed']}"
        if isinstance(result, BaseException):
            outcome = f"FAILED: {type(result).__name__}: {result}"
        else:
            loss = result["final_loss"]
            outcome = ("loss " + ("nan" if loss is None else f"{loss:.4g}")
                       + (f", solved at {result['sequences_to_solve']:,} sequences"
                          if result["solved"] else ", not solved"))
        line = (f"runs {self.done}/{self.total} [{bar}] {_duration(elapsed)}"
                f"{f', ~{_duration(eta)} left' if remaining else ''} | {what}: {outcome}")
        if self.interactive:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class SweepResult(list):
    """The records of a sweep's specs, in the order of the specs, with what happened:
    ``ran`` (runs executed now), ``skipped`` (already in the results file) and ``failed``
    (``(spec, exception)`` of runs that raised; they are not in the file and run again next
    time)."""
    ran = 0
    skipped = 0
    failed = ()


def run_sweep(specs, results, *, executor=None, workers=None, scheduler=None, progress=True):
    """Run every spec whose key is not yet in the ``results`` file (JSON Lines), appending each
    record as its run finishes; return a :class:`SweepResult` with the records of all specs.

    ``executor``: None (a local pool of ``workers`` processes; ``workers=0`` runs in this
    process), a ``dask.distributed.Client``, or give ``scheduler`` (an address such as
    ``tcp://host:8786``) to connect to a Dask cluster. A failed run is reported and left out
    of the file, so the next sweep runs it again; Ctrl-C stops the sweep, cancelling the runs
    in flight, and keeps every record written."""
    specs = list({spec_key(spec): spec for spec in map(normalize, specs)}.values())
    keys = [spec_key(spec) for spec in specs]
    with ResultsFile(results) as stream:
        done = read_results(results)
        pending = [spec for spec, key in zip(specs, keys) if key not in done]
        outcome = SweepResult()
        outcome.skipped = len(specs) - len(pending)
        failed = []
        bar = SweepProgress(len(specs), outcome.skipped) if progress else None
        run_executor = executor_for(executor, workers, scheduler) if pending else None
        interrupted = False
        try:
            if run_executor is not None:
                if bar is not None:
                    print(f"{len(pending)} runs to do ({outcome.skipped} already in {results}) "
                          f"on {run_executor.describe()}", file=bar.stream, flush=True)
                for spec, result in run_executor.run(pending):
                    if isinstance(result, BaseException):
                        failed.append((spec, result))
                    else:
                        stream.append(result)
                        done[result["key"]] = result
                        outcome.ran += 1
                    if bar is not None:
                        bar.update(spec, result)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if bar is not None:
                bar.close()
            if run_executor is not None and run_executor is not executor:
                run_executor.close(cancel=interrupted)
    outcome.extend(done[key] for key in keys if key in done)
    outcome.failed = failed
    return outcome
