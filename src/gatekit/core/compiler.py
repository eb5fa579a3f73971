"""Building generated gates: the C compiler and the build cache.

The C of an equation gate (``gatekit.core.codegen``) is compiled into a shared library kept in
a per-user cache folder: ``$GATEKIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gatekit``, else
``~/.cache/gatekit``. A library's name holds a hash of everything it is built from: the
source, the headers it includes, gatekit's version, the compiler (its path, size and time of
change) and its flags. A process that finds the library loads it at once; a changed definition
is a new source, so a new library. Builds are atomic: the source and the library are written
under temporary names in the cache folder and renamed into place, so processes building the
same gate at once each end with a complete library.

The library is built for the widest instruction set this CPU runs, by the rule of the compiled
core (``gatekit.core.instruction_sets``, ``GATEKIT_KERNELS`` included), when first needed. The
compiler is ``$CC``, else ``cc``.
"""
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from gatekit.core import instruction_sets
from gatekit.core.building import OPTIMISE as CORE_OPTIMISE, VECTOR_BUILDS
from gatekit.version import __version__

__all__ = ["build", "cache_dir", "CACHE_ENV", "CompileError", "Kernels", "write_atomically"]

CACHE_ENV = "GATEKIT_CACHE_DIR"
HEADERS = ("_fastmath.h", "_generated.h")
INCLUDE = Path(__file__).parent
# The core's own flags (core/building.py), and: sqrt needs no errno; a shared library.
OPTIMISE = [*CORE_OPTIMISE, "-fno-math-errno", "-fPIC", "-shared"]
FLAGS = {"baseline": [], **{name: vector for name, (_, vector) in VECTOR_BUILDS.items()}}


class CompileError(RuntimeError):
    """The generated source of a gate could not be compiled."""


@dataclass(frozen=True)
class Kernels:
    """A built gate: its shared ``library``, the ``symbols`` of its four kernels and the slots
    of the forward and backward kernels (see ``gatekit.core.codegen``)."""
    library: str
    symbols: tuple
    forward_slots: tuple
    backward_slots: tuple
    instruction_set: str


def cache_dir():
    """The build cache folder (see the module's docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gatekit"


def _instruction_set():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "baseline"
    builds = instruction_sets.builds()
    return builds[0] if builds else "baseline"


def _compiler():
    command = shlex.split(os.environ.get("CC") or "cc")
    path = shutil.which(command[0]) if command else None
    if path is None:
        return command, None
    stat = os.stat(path)
    return command, f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def build(source, name, symbols):
    """The :class:`Kernels` of ``source`` (a ``codegen.Source``) for this CPU, from the cache or
    compiled into it. ``name`` (the gate's) names the files."""
    instruction_set = _instruction_set()
    command, identity = _compiler()
    flags = OPTIMISE + FLAGS[instruction_set]
    key = hashlib.sha256()
    for part in (source.text, *((INCLUDE / header).read_text() for header in HEADERS),
                 __version__, str(identity), " ".join(command + flags)):
        key.update(part.encode() + b"\0")
    folder = cache_dir()
    stem = folder / f"{name}-{key.hexdigest()[:24]}-{instruction_set}"
    library = stem.with_suffix(".so")
    kernels = Kernels(str(library), tuple(symbols), tuple(source.forward_slots),
                      tuple(source.backward_slots), instruction_set)
    if library.exists():
        return kernels
    folder.mkdir(parents=True, exist_ok=True)
    c_file = stem.with_suffix(".c")
    write_atomically(c_file, source.text)
    if identity is None:
        raise CompileError(f"no C compiler: {command[0] if command else '$CC'!r} was not found "
                           f"(set CC to one); the generated source is {c_file}")
    partial = folder / f".{library.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        result = subprocess.run([*command, *flags, f"-I{INCLUDE}", "-o", str(partial),
                                 str(c_file)], capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"compiling the generated gate {name!r} failed "
                               f"({' '.join(command)} exited with {result.returncode}); the "
                               f"generated source is {c_file}:\n{result.stderr.strip()}")
        os.replace(partial, library)
    finally:
        if partial.exists():
            partial.unlink()
    return kernels


def write_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename, so that another
    process never reads half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
