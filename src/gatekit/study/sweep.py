"""Sweeps: many training runs (variant x task x seed x hyperparameters), each a pure function of
its spec, executed on a local process pool or a Dask cluster, with results appended to a file
as each run finishes.

- :func:`run_one` trains one model from a spec (a plain dict of JSON values) and returns a
  result record (a dict of JSON values). It is deterministic given the spec (up to timings)
  and needs nothing but an importable gatekit, so a worker process or a Dask worker runs the
  very same code.
- :func:`run_sweep` runs the specs not yet in the results file and appends each record to it
  as soon as it arrives: one JSON object per line, flushed and fsynced. A crash or a Ctrl-C
  loses at most the runs in flight; running the same sweep again skips every run whose key
  (:func:`run_key`: the spec and the :func:`provenance` of the code) is already in the file. A
  line a killed writer left torn is skipped with a warning. A local worker that dies costs
  the runs in flight a second try each, alone (see :class:`LocalExecutor`).
"""
import hashlib
import importlib.metadata
import json
import math
import numbers
import os
import signal
import socket
import sys
import threading
import time
import types
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from gatekit.version import __version__
from gatekit.core import plugins
from gatekit.core._gate import ROLES
from gatekit.core.cell import Cell, check_zoneout
from gatekit.nn import initialisers, optimisers
from gatekit.train import training
from gatekit.study import tasks

__all__ = ["code_digest", "DaskExecutor", "describe_run", "executor_for", "LocalExecutor",
           "make_cell", "make_spec", "normalize", "parse_variant", "provenance", "read_records",
           "read_results", "ResultsFile", "ResultsWarning", "run_key", "run_one", "run_sweep",
           "RunsFailedWarning", "setting", "SPEC_DEFAULTS", "spec_key", "SweepProgress",
           "SweepResult"]

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
    "optimizer": "adam",      # or "sgd" (heavy-ball momentum) or "nesterov" (Greff et al.'s)
    "momentum": None,         # the SGD optimizers' (None: 0.9); Adam takes none
    "input_noise": 0.0,       # std of Gaussian noise added to the training inputs
    "zoneout": None,          # [z_c, z_h] of the cell in training (None: no zoneout)
    "search": None,           # the random search a run is a trial of: {seed, trial, space}
}
# Settings newer than the results files they would change the keys of: a spec leaves them out
# while they have their default, so runs recorded before them are still found.
_LEFT_OUT_AT_DEFAULT = ("optimizer", "momentum", "input_noise", "zoneout", "search")
OPTIMIZERS = ("adam", "sgd", "nesterov")


def setting(spec, name):
    """The setting ``name`` of a normalized ``spec``, its default where the spec leaves it
    out."""
    return spec.get(name, SPEC_DEFAULTS[name])


# --- Variants: a variant name, optionally with gates swapped ---------------------------------

def parse_variant(text):
    """``"variant"`` or ``"variant+role=gate+role=gate"`` -> ``(variant, {role: gate})``.

    ``standard+forget=peephole`` is the standard variant with the peephole forget gate;
    ``course+learn=coupled+use=peephole`` swaps two gates. Roles are forget, learn, remember
    and use. Names are checked against the registry."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a variant name, optionally followed by +role=gate; "
                         f"got {text!r}")
    variant, *swaps = [part.strip() for part in text.split("+")]
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
    plugins.registry().compose(variant, overrides)       # unknown names raise ValueError here
    return variant, overrides


def make_cell(variant, input_size, hidden_size, dtype="float32", seed=None, zoneout=None):
    # One thread per run: a sweep runs many at once (processes, Dask workers), and a run's own
    # threads would compete with the other runs' for the CPUs and wait at every step's barrier.
    variant, overrides = parse_variant(variant)
    return Cell(input_size, hidden_size, variant, dtype=np.dtype(dtype), seed=seed,
                threads=1, zoneout=(0.0, 0.0) if zoneout is None else tuple(zoneout),
                **overrides)


# --- Specs, what else a run depends on, and their keys -----------------------------------------

def _integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _real(name, value, low=-math.inf, high=math.inf, low_open=False, expected=None):
    valid = (not isinstance(value, bool) and isinstance(value, numbers.Real)
             and math.isfinite(value) and (value > low if low_open else value >= low)
             and value <= high)
    if not valid:
        raise ValueError(f"{name} must be {expected or 'a finite number'}; got {value!r}")
    return float(value)


def _check_settings(spec):
    """The settings of ``spec`` checked, ints as ints and floats as floats (``lr=1`` and
    ``lr=1.0`` are one run, with one key)."""
    checked = dict(spec)
    checked["seed"] = _integer("seed", spec["seed"], 0)
    for name, minimum in (("steps", 0), ("batch_size", 1), ("hidden_size", 1),
                          ("eval_every", 1), ("eval_size", 1)):
        checked[name] = _integer(name, spec[name], minimum)
    checked["lr"] = _real("lr", spec["lr"], 0, low_open=True, expected="a number > 0")
    if spec["clip"] is not None:
        checked["clip"] = _real("clip", spec["clip"], 0, low_open=True,
                                expected="a number > 0, or None for no clipping")
    if spec["forget_bias"] is not None:
        checked["forget_bias"] = _real("forget_bias", spec["forget_bias"],
                                       expected="a finite number, or None to keep the init")
    checked["solve_rate"] = _real("solve_rate", spec["solve_rate"], 0, 1, low_open=True,
                                  expected="a share of the held-out sequences, in (0, 1]")
    if not isinstance(spec["stop_when_solved"], bool):
        raise ValueError(f"stop_when_solved must be True or False; got "
                         f"{spec['stop_when_solved']!r}")
    try:
        dtype = np.dtype(spec["dtype"]).name
    except TypeError:
        dtype = None
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {spec['dtype']!r}")
    checked["dtype"] = dtype
    if spec["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got "
                         f"{spec['optimizer']!r}")
    if spec["momentum"] is not None:
        if spec["optimizer"] == "adam":
            raise ValueError(f"momentum is the SGD optimizers' (Adam's is its beta1): give "
                             f"optimizer 'sgd' or 'nesterov' with it; got momentum="
                             f"{spec['momentum']!r} with optimizer 'adam'")
        checked["momentum"] = _real("momentum", spec["momentum"], 0, 1,
                                    expected="a number in [0, 1], or None for 0.9")
    checked["input_noise"] = _real("input_noise", spec["input_noise"], 0,
                                   expected="a standard deviation >= 0")
    if spec["zoneout"] is not None:
        zoneout = [float(z) for z in check_zoneout(spec["zoneout"])]
        checked["zoneout"] = zoneout if any(zoneout) else None     # (0, 0) is no zoneout
    if spec["search"] is not None:
        checked["search"] = _check_search(spec["search"], checked["seed"])
    for name in _LEFT_OUT_AT_DEFAULT:
        if checked[name] == SPEC_DEFAULTS[name]:
            del checked[name]
    return checked


def _check_search(search, seed):
    expected = ("a dict {'seed': integer >= 0, 'trial': the run's seed, 'space': {name: "
                "distribution text}}")
    valid = (isinstance(search, dict) and set(search) == {"seed", "trial", "space"}
             and isinstance(search["space"], dict)
             and all(isinstance(k, str) and isinstance(v, str)
                     for k, v in search["space"].items()))
    if not valid:
        raise ValueError(f"search must be {expected}; got {search!r}")
    checked = {"seed": _integer("search seed", search["seed"], 0),
               "trial": _integer("search trial", search["trial"], 0),
               "space": dict(sorted(search["space"].items()))}
    if checked["trial"] != seed:
        raise ValueError(f"trial {checked['trial']} of a search runs with seed "
                         f"{checked['trial']}; got seed {seed}")
    return checked


def make_spec(variant, task, seed, **settings):
    """A run's spec: ``variant`` (see :func:`parse_variant`), ``task`` (a name, or a dict
    ``{"name": ..., "length": ..., options}``), ``seed`` (an integer >= 0) and the settings of
    :data:`SPEC_DEFAULTS` (unknown settings are refused, values out of range raise
    ``ValueError`` naming the setting)."""
    unknown = set(settings) - set(SPEC_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown run settings {sorted(unknown)}; known: "
                        f"{', '.join(SPEC_DEFAULTS)}")
    name, overrides = parse_variant(variant)
    spec = normalize({"variant": variant, "task": task, "seed": seed, **settings})
    json.dumps(spec)                    # a spec is plain JSON values
    # Refused here rather than in the run, so that a sweep does not start with a run that fails.
    if any(cls.input_size_is_hidden_size
           for cls in plugins.registry().compose(name, overrides)):
        size = tasks.make(**spec["task"]).input_size
        if spec["hidden_size"] != size:
            raise ValueError(f"variant {variant!r} adds the event to the memory unit by unit, so "
                             f"hidden_size must be the task's input size ({size}); got "
                             f"hidden_size={spec['hidden_size']}")
    if setting(spec, "zoneout") is not None:
        # A cell of one memory takes only (z, z): better said now than by every run.
        try:
            make_cell(variant, tasks.make(**spec["task"]).input_size, spec["hidden_size"],
                      zoneout=spec["zoneout"])
        except ValueError as error:
            raise ValueError(f"variant {variant!r}: {error}") from None
    return spec


def normalize(spec):
    """``spec`` with every setting of :data:`SPEC_DEFAULTS` filled in and checked, and its
    task's options complete (a task given by name gets its defaults), so that equal runs get
    equal keys."""
    spec = _check_settings({**SPEC_DEFAULTS, **spec})
    task = {"name": spec["task"]} if isinstance(spec["task"], str) else spec["task"]
    spec["task"] = tasks.make(**task).options()      # validates, and fills in the defaults
    return spec


def spec_key(spec):
    """A stable key for a spec: the SHA-256 of its canonical JSON, 16 hex digits. Two records
    of one spec are the same run, possibly with different code (see :func:`run_key`)."""
    return _digest(spec)


def run_key(spec, provenance):
    """The key under which a run's record is stored and found again: the spec and the
    :func:`provenance` of the code that runs it, so a changed gate, task, plugin or gatekit
    makes a run that is not in the results file yet."""
    return _digest({"spec": spec, "provenance": provenance})


def _digest(value):
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def provenance(spec):
    """What determines a run's result beyond its spec: gatekit's version and, for each gate of
    the variant and for the task, the plugin that registered it, that plugin's distribution
    and version (None for a plugin registered at run time) and a digest of its code."""
    variant, overrides = parse_variant(spec["variant"])
    registry = plugins.registry()
    names = {**registry.variants[variant].gates, **overrides}
    distributions = {entry_point.name: entry_point.dist
                     for entry_point in importlib.metadata.entry_points(
                         group=plugins.ENTRY_POINT_GROUP)}
    task = spec["task"]["name"] if isinstance(spec["task"], dict) else spec["task"]
    return {
        "gatekit": __version__,
        "gates": {role: _origin(names[role], registry.gates[role][names[role]], distributions)
                  for role in ROLES},
        "task": _origin(task, registry.tasks[task], distributions),
    }


def _origin(name, entry, distributions):
    if entry.plugin in plugins.DEFAULT_PLUGINS:
        distribution, version = "gatekit", __version__
    else:
        found = distributions.get(entry.plugin)
        distribution = None if found is None else found.metadata["Name"]
        version = plugins.registry().plugin_versions.get(entry.plugin)
    return {"name": name, "plugin": entry.plugin, "distribution": distribution,
            "version": version, "code": code_digest(entry.cls)}


def code_digest(cls):
    """A digest of the code of a gate or task class: the file of the module that defines it
    (the source of a Python module, the shared library of a compiled one) and the bytecode of
    the Python functions of the class and its own bases (a class defined in a notebook has no
    file, and two versions of a class may share one)."""
    digest = hashlib.sha256()
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if path and os.path.isfile(path):
        with open(path, "rb") as stream:
            digest.update(hashlib.sha256(stream.read()).digest())
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "gatekit.core._gate", "gatekit.core.task") \
                and klass is not cls:
            continue                      # gatekit's own base classes: gatekit's version
        digest.update(klass.__qualname__.encode())
        for name, value in sorted(vars(klass).items()):
            digest.update(name.encode())
            digest.update(_value_digest(value))
    return digest.hexdigest()[:16]


def _value_digest(value):
    """Bytes that stay the same across processes for equal code and plain values."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return b"".join(_value_digest(f) for f in (value.fget, value.fset, value.fdel))
    code = getattr(value, "__code__", None)
    if isinstance(value, types.CodeType) or code is not None:
        code = value if isinstance(value, types.CodeType) else code
        parts = [code.co_code, repr(code.co_names).encode()]
        parts += [_value_digest(constant) for constant in code.co_consts]
        # What a function closes over, and its defaults, are its code too.
        parts += [_cell_digest(cell) for cell in getattr(value, "__closure__", None) or ()]
        parts.append(_value_digest(getattr(value, "__defaults__", None)))
        return hashlib.sha256(b"\0".join(parts)).digest()
    if isinstance(value, (frozenset, set)):
        return b"{" + b",".join(sorted(_value_digest(v) for v in value)) + b"}"
    if isinstance(value, (tuple, list)):
        return b"(" + b",".join(_value_digest(v) for v in value) + b")"
    if isinstance(value, dict):
        return b"{" + b",".join(_value_digest(k) + b":" + _value_digest(v)
                                for k, v in value.items()) + b"}"
    if value is None or isinstance(value, (str, bytes, int, float, complex)):
        return repr(value).encode()
    return type(value).__qualname__.encode()     # its repr may hold a memory address


def _cell_digest(cell):
    try:
        return _value_digest(cell.cell_contents)
    except ValueError:                   # a cell not filled in yet
        return b"<empty>"


# --- One run ---------------------------------------------------------------------------------

def run_one(spec):
    """Train the model a spec describes; return its result record (JSON values only).

    The cell (and its readout) start from ``seed``; training batches come from the task's
    ``sample`` with a generator seeded with ``[seed, 1]`` and the held-out evaluation batch from
    its ``heldout`` with ``[seed, 2]``, so every variant of a seed sees the same data; the
    ``input_noise`` added to the training inputs is drawn from ``seed``. Every
    ``eval_every`` steps (and before the first) the model is evaluated on the held-out batch,
    in eval mode (zoneout's expectation): its loss and the share of sequences solved. The run
    solves the task at the first evaluation where that share reaches ``solve_rate``;
    ``sequences_to_solve`` is the number of training sequences seen by then."""
    spec = normalize(spec)
    origin = provenance(spec)
    started = time.perf_counter()
    task = tasks.make(**spec["task"])
    seed = spec["seed"]
    cell = make_cell(spec["variant"], task.input_size, spec["hidden_size"], spec["dtype"], seed,
                     setting(spec, "zoneout"))
    if spec["forget_bias"] is not None and "b_f" in cell.params:
        initialisers.forget_bias(cell, spec["forget_bias"])
    model = training.Model(cell, task.output_size, seed=seed)
    optimizer = _optimizer(spec, model.params)
    train_rng = np.random.default_rng([seed, 1])
    x_eval, target_eval = task.heldout(spec["eval_size"], np.random.default_rng([seed, 2]))
    batch_size, steps, every = spec["batch_size"], spec["steps"], spec["eval_every"]

    def batches(_rng):
        return task.sample(batch_size, train_rng)

    def evaluate():
        cell.eval()                 # zoneout's expectation, not a draw
        outputs = model(x_eval)
        cell.train()
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
                                 clip=spec["clip"], progress=False, seed=seed,
                                 input_noise=setting(spec, "input_noise"))
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
        "key": run_key(spec, origin),
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
        "provenance": origin,
    }


def _optimizer(spec, params):
    name, momentum = setting(spec, "optimizer"), setting(spec, "momentum")
    if name == "adam":
        return optimisers.Adam(params, lr=spec["lr"])
    return optimisers.SGD(params, lr=spec["lr"], momentum=0.9 if momentum is None else momentum,
                          nesterov=name == "nesterov")


def _failure_record(spec, key, error):
    """The record of a run that raised (or whose worker died): it counts as not done, so the
    next sweep runs it again, and the summary shows it as failed until then."""
    return {"key": key, "status": "failed", "spec": spec,
            "error": f"{type(error).__name__}: {error}"}


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


# --- The results file ------------------------------------------------------------------------

_SPEC_FIELDS = ("variant", "task", "seed",
                *(name for name in SPEC_DEFAULTS if name not in _LEFT_OUT_AT_DEFAULT))
_RECORD_FIELDS = {
    "ok": ("final_loss", "baseline_loss", "solved", "sequences_to_solve", "step_seconds",
           "params", "curve"),
    "failed": ("error",),
}


class ResultsWarning(UserWarning):
    """A line of a results file was skipped, or a run did not give a usable record."""


def _problem(record):
    """Why ``record`` is not a usable record, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    status = record.get("status")
    if status not in _RECORD_FIELDS:
        return f"status {status!r} is not one of {', '.join(map(repr, _RECORD_FIELDS))}"
    missing = [name for name in ("key", "spec", *_RECORD_FIELDS[status]) if name not in record]
    if missing:
        return f"no {', '.join(missing)}"
    spec = record["spec"]
    if not isinstance(spec, dict):
        return "its spec is not an object"
    missing = [name for name in _SPEC_FIELDS if name not in spec]
    if missing:
        return f"its spec has no {', '.join(missing)}"
    if not isinstance(spec["task"], dict) or "name" not in spec["task"]:
        return "its spec's task has no name"
    if status == "ok" and not (isinstance(record["curve"], dict)
                               and {"sequences", "eval_loss"} <= set(record["curve"])):
        return "its curve has no sequences or eval_loss"
    return None


def read_records(path):
    """Every usable record of a results file (JSON Lines), in the order written: those of
    finished runs (``status`` ``"ok"``) and of failed ones (``"failed"``). A line that is not
    one (torn by a writer killed mid-line, not UTF-8, not JSON, or a record lacking a required
    field) is skipped with a :class:`ResultsWarning` naming the file and the line."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "it is not UTF-8 text (a torn write?)"
            except ValueError:
                problem = "it is not complete JSON (a torn write?)"
            else:
                problem = _problem(record)
            if problem is None:
                records.append(record)
            else:
                warnings.warn(f"{os.fspath(path)}, line {number}: skipped: {problem}",
                              ResultsWarning, stacklevel=2)
    return records


def read_results(path):
    """The records of the finished runs in a results file, the last one per key (see
    :func:`read_records` for the lines skipped). Failed runs do not count as done."""
    return {record["key"]: record for record in read_records(path)
            if record["status"] == "ok"}


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

def _start_worker(parent):
    """Pool initializer: the worker ends with the process that started it (a parent killed by
    SIGKILL runs no cleanup, and its orphaned workers would go on computing and hold its pipes
    open for good), and uses one BLAS thread (the pool is the parallelism; gatekit's own cells
    run on one thread in a sweep, see make_cell)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:          # it died before the request above could take effect
        os._exit(1)
    # Also on Linux: the death signal follows the thread that started the worker, not the
    # parent process, and other systems have no prctl at all.
    threading.Thread(target=_end_when_orphaned, args=(parent,), daemon=True,
                     name="gatekit-parent-watch").start()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


_PR_SET_PDEATHSIG = 1                    # from <linux/prctl.h>
_PARENT_POLL_SECONDS = 0.5


def _end_when_orphaned(parent):
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


class LocalExecutor:
    """Runs specs on a pool of ``workers`` processes (``os.cpu_count()`` by default), started
    with ``spawn``; ``workers=0`` runs them one after another in this process. Workers end when
    this process dies.

    At most ``workers`` runs are handed to the pool at a time. When a worker process dies (killed,
    out of memory, a crash in compiled code), the pool is replaced: the runs that were in flight
    are run again, each alone on the new pool, and a run whose worker dies again fails (with
    ``BrokenProcessPool``); the runs not yet started go on as usual."""

    def __init__(self, workers=None):
        if workers is not None:
            workers = _integer("workers", workers, 0)
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.pool = self._new_pool() if self.workers > 0 else None

    def _new_pool(self):
        import multiprocessing
        return ProcessPoolExecutor(self.workers, initializer=_start_worker,
                                   initargs=(os.getpid(),),
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
        waiting = list(enumerate(specs))[::-1]          # popped from the end, in order
        retry, retried, in_flight = [], set(), {}
        broken = False

        def submit(queue, position):
            nonlocal broken
            try:
                future = self.pool.submit(run_one, queue[position][1])
            except BrokenProcessPool:       # a worker died since the last look, maybe idle
                broken = True
                return False
            in_flight[future] = queue.pop(position)
            return True

        try:
            while waiting or retry or in_flight:
                if broken and not in_flight:
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    self.pool = self._new_pool()
                    broken = False
                if not any(index in retried for index, _ in in_flight.values()):
                    if retry:
                        if not in_flight:
                            submit(retry, 0)
                    else:
                        while waiting and len(in_flight) < self.workers \
                                and submit(waiting, -1):
                            pass
                if not in_flight:
                    continue                # the pool broke before anything was handed over
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
                    finished, _ = wait(in_flight)      # a broken pool fails all it holds
                lost = []
                for future in finished:
                    index, spec = in_flight.pop(future)
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        lost.append((index, spec, error))
                    else:
                        yield spec, (future.result() if error is None else error)
                if lost:
                    broken = True
                for index, spec, error in lost:
                    if index in retried:
                        yield spec, BrokenProcessPool(
                            f"its worker process died twice, the second time running it "
                            f"alone ({error})")
                    else:
                        retried.add(index)
                        retry.append((index, spec))
                if retry and lost:
                    warnings.warn(f"a worker process died ({lost[0][2]}); running again, "
                                  f"one at a time, the runs in flight: "
                                  f"{'; '.join(describe_run(spec) for _, spec in retry)}",
                                  RuntimeWarning, stacklevel=2)
        finally:
            for future in in_flight:
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
        if isinstance(result, BaseException):
            outcome = f"FAILED: {type(result).__name__}: {result}"
        else:
            loss = result["final_loss"]
            outcome = ("loss " + ("nan" if loss is None else f"{loss:.4g}")
                       + (f", solved at {result['sequences_to_solve']:,} sequences"
                          if result["solved"] else ", not solved"))
        line = (f"runs {self.done}/{self.total} [{bar}] {_duration(elapsed)}"
                f"{f', ~{_duration(eta)} left' if remaining else ''} | {describe_run(spec)}: "
                f"{outcome}")
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


def _provenance_difference(here, record):
    there = record.get("provenance") or {}
    parts = [f"gatekit {here['gatekit']} here, {there.get('gatekit')} there"] \
        if here["gatekit"] != there.get("gatekit") else []
    for what, mine in [*here["gates"].items(), ("task", here["task"])]:
        theirs = there.get("task") if what == "task" else there.get("gates", {}).get(what)
        if mine != theirs:
            parts.append(f"{what} {mine['name']!r}: {mine} here, {theirs} there")
    return "; ".join(parts) or "in their keys only"


def describe_run(spec):
    """``standard on adding:100 seed 2``."""
    task = spec["task"]
    length = f":{task['length']}" if "length" in task else ""
    return f"{spec['variant']} on {task['name']}{length} seed {spec['seed']}"


class RunsFailedWarning(UserWarning):
    """Runs of a sweep failed; the warning names them and their errors."""


class SweepResult(list):
    """The records of a sweep's specs that have one, in the order of the specs, with what
    happened: ``ran`` (runs executed now), ``skipped`` (already in the results file) and
    ``failed`` (``(spec, exception)`` of runs that raised or whose worker died; their records
    in the file say so, and the next sweep runs them again)."""
    ran = 0
    skipped = 0
    failed = ()


def run_sweep(specs, results, *, executor=None, workers=None, scheduler=None, progress=True):
    """Run every spec whose run key (:func:`run_key`: the spec and the code that runs it) is
    not yet in the ``results`` file (JSON Lines), appending each record as its run finishes;
    return a :class:`SweepResult` with the records of all specs.

    ``executor``: None (a local pool of ``workers`` processes; ``workers=0`` runs in this
    process), a ``dask.distributed.Client``, or give ``scheduler`` (an address such as
    ``tcp://host:8786``) to connect to a Dask cluster. A failed run is recorded as failed in
    the file and named in a :class:`RunsFailedWarning`; the next sweep runs it again. Ctrl-C
    stops the sweep, cancelling the runs in flight, and keeps every record written."""
    specs = list({spec_key(spec): spec for spec in map(normalize, specs)}.values())
    origins = {}             # one provenance per variant and task: it hashes files
    keys = {}
    for spec in specs:
        where = (spec["variant"], spec["task"]["name"])
        if where not in origins:
            origins[where] = provenance(spec)
        keys[spec_key(spec)] = run_key(spec, origins[where])
    def origins_of(spec):
        return origins[(spec["variant"], spec["task"]["name"])]

    with ResultsFile(results) as stream:
        done = read_results(results)
        pending = [spec for spec in specs if keys[spec_key(spec)] not in done]
        outcome = SweepResult()
        outcome.skipped = len(specs) - len(pending)
        failed, ran_now = [], {}
        bar = SweepProgress(len(specs), outcome.skipped) if progress else None
        run_executor = executor_for(executor, workers, scheduler) if pending else None
        interrupted = False
        try:
            if run_executor is not None:
                if bar is not None:
                    print(f"{len(pending)} runs to do ({outcome.skipped} already in {results}) "
                          f"on {run_executor.describe()}", file=bar.stream, flush=True)
                for spec, result in run_executor.run(pending):
                    key = keys[spec_key(spec)]
                    if isinstance(result, BaseException):
                        failed.append((spec, result))
                        stream.append(_failure_record(spec, key, result))
                    else:
                        if result["key"] != key:
                            # Filed under the key asked for, or a cluster whose workers differ
                            # from here (another CPU's build, say) would rerun it every time;
                            # its provenance says what actually ran.
                            warnings.warn(
                                f"{describe_run(spec)} ran with other code than this process "
                                f"has: the worker's gatekit, plugins or gates differ "
                                f"({_provenance_difference(origins_of(spec), result)}); its "
                                f"record keeps the worker's provenance", ResultsWarning,
                                stacklevel=2)
                            result = {**result, "key": key}
                        stream.append(result)
                        ran_now[spec_key(spec)] = result
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
    for spec in specs:
        record = ran_now.get(spec_key(spec), done.get(keys[spec_key(spec)]))
        if record is not None:
            outcome.append(record)
    outcome.failed = failed
    if failed:
        warnings.warn(f"{len(failed)} of {len(pending)} runs failed: "
                      + "; ".join(f"{describe_run(spec)}: {type(error).__name__}: {error}"
                                  for spec, error in failed), RunsFailedWarning, stacklevel=2)
    return outcome
