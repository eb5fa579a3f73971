"""Writing user files atomically and reading gatekit's ``.npz`` archives without trusting them.

:func:`atomic_write` is the one way gatekit writes a file a user keeps (models, checkpoints,
study tables, pictures): the bytes go to a temporary file in the target's folder, are synced
to disk, and the temporary is renamed over the target, so a reader sees the old file or the
new one, never half of one. The new file gets the ordinary mode, 0666 minus the umask (the
kernel applies the umask when the temporary is created, so no process-wide umask is touched).

A temporary is named ``.tmp-gatekit.<host>.<pid>.<start>.<token>``: the host and process that
write it and that process's start time. A writer killed before its rename leaves its temporary
behind; every later write into the same folder removes the temporaries whose writer, on this
host, no longer runs (no such process, or a process of that id started at another time). A
temporary of a running writer, of another host, or any file not named so is left alone.

:class:`StoredArrays` opens an ``.npz`` archive and reads each array's header (dtype and
shape) before any data, checking that the data it declares is what the archive stores, so a
few bytes can never make the reader allocate gigabytes. Anything damaged or malformed raises
:class:`LoadError`, naming the file and what is wrong.
"""
import json
import math
import os
import re
import secrets
import socket
import stat
import zipfile
import zlib

from numpy.lib import format as npy_format

_TEMPORARY_NAME = re.compile(r"\.tmp-gatekit\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)"
                             r"\.(?P<start>[0-9]+)\.[0-9a-f]{16}")
# Far above any real metadata (a few hundred characters), far below a costly string.
MOST_META_CHARACTERS = 1 << 20
# Deflate cannot expand data by more than about 1032:1; an entry declaring more is a lie.
_MOST_DEFLATE_EXPANSION = 1100
# The errors zipfile, zlib and numpy's .npy reader raise on damaged or malformed bytes; an
# entry's offset in a damaged directory can make zipfile seek where no file can (OSError).
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, TypeError,
           OverflowError, NotImplementedError, RuntimeError, UnicodeDecodeError, OSError)


class LoadError(ValueError):
    """A file could not be loaded as what gatekit wrote: damaged, malformed, of a newer format,
    or needing a plugin that is not installed."""


# --- Writing ---------------------------------------------------------------------------------

def atomic_write(path, write, *, text=False):
    """Write ``path`` through ``write(stream)`` atomically; returns ``path``.

    ``stream`` is a binary file, or with ``text=True`` a UTF-8 text file that leaves line
    endings as written. If ``write`` raises, the target is untouched and the temporary removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _remove_abandoned_temporaries(folder)
    temporary = os.path.join(folder, _temporary_name())
    # 0o666 through os.open: the kernel subtracts the umask, as for any file a program creates.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    handle = os.open(temporary, flags, 0o666)
    try:
        stream = (os.fdopen(handle, "w", encoding="utf-8", newline="") if text
                  else os.fdopen(handle, "wb"))
        with stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(folder)
    return path


def _remove_abandoned_temporaries(folder):
    """Remove, in ``folder``, the temporaries of :func:`atomic_write` whose writing process on
    this host no longer runs. Returns the names removed."""
    host = _host()
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY_NAME.fullmatch(name)
        if match is None or match["host"] != host:
            continue
        if _process_runs(int(match["pid"]), int(match["start"])):
            continue
        candidate = os.path.join(folder, name)
        try:
            if not stat.S_ISREG(os.lstat(candidate).st_mode):
                continue
            os.unlink(candidate)
        except OSError:      # another writer removed it first, or it is not ours to remove
            continue
        removed.append(name)
    return removed


def _temporary_name():
    pid = os.getpid()
    return (f".tmp-gatekit.{_host()}.{pid}.{_process_start(pid) or 0}."
            f"{secrets.token_hex(8)}")


def _host():
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "_"


def _process_start(pid):
    """When process ``pid`` started, in clock ticks since boot, or None where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            line = stream.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the start time is field 22.
    fields = line[line.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_runs(pid, start):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # it runs, as another user
        pass
    except OSError:
        return True
    # A process with the writer's id but another start time reuses the id of a dead writer.
    now = _process_start(pid)
    return not (start and now is not None and now != start)


def _sync_folder(folder):
    # The rename is only durable once the folder's entry is on disk; not every system can say.
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# --- Reading ---------------------------------------------------------------------------------

class StoredArrays:
    """The arrays of an ``.npz`` archive, read without unpickling and without trusting it.

    Opening reads the archive's directory and every array's header: :attr:`headers` maps each
    entry name (``"meta"``, ``"param/W_f"``...) to its ``(dtype, shape)``. :meth:`read` reads
    one array. Use as a context manager. ``what`` names the kind of file in messages.
    """

    def __init__(self, path, what):
        self.path, self.what = os.fspath(path), what
        try:
            self._archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as error:
            if _starts_like_npy(self.path):
                raise self.error(f"is a single .npy array, not a {what} (an .npz archive)") \
                    from None
            raise self.error(f"is not a {what} (an .npz archive): {error}") from None
        try:
            self._members, self.headers = {}, {}
            archive_size = os.fstat(self._archive.fp.fileno()).st_size
            members = self._archive.infolist()
            # The entries of an archive do not overlap, so together they fit in the file.
            stored_size = sum(info.compress_size for info in members)
            if stored_size > archive_size:
                raise self.error(f"is damaged: its entries declare {stored_size} stored bytes; "
                                 f"the whole file has {archive_size}")
            for info in members:
                name = self._entry_name(info)
                self._check_stored_size(name, info)
                self.headers[name] = self._read_header(name, info)
                self._members[name] = info
        except BaseException:
            self._archive.close()
            raise

    def error(self, message):
        return LoadError(f"{self.path} {message}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self._archive.close()

    def read(self, name):
        """The array stored under ``name``, checked against its header."""
        info = self._members[name]
        try:
            with self._archive.open(info) as stream:
                array = npy_format.read_array(stream, allow_pickle=False)
        except _DAMAGE as error:
            raise self.error(f"is damaged: entry {name!r} cannot be read ({error})") from None
        if (array.dtype, array.shape) != self.headers[name]:
            raise self.error(f"is damaged: entry {name!r} does not hold what its header "
                             "declares")
        return array

    def read_meta(self):
        """The JSON object in entry ``meta``, with its ``format`` checked to be a whole number
        from 1."""
        if "meta" not in self.headers:
            raise self.error(f"is not a {self.what}: it has no 'meta' entry")
        dtype, shape = self.headers["meta"]
        if dtype.kind != "U" or shape != () or dtype.itemsize // 4 > MOST_META_CHARACTERS:
            raise self.error(f"is not a {self.what}: its 'meta' entry should be one JSON "
                             f"string of at most {MOST_META_CHARACTERS} characters; it is a "
                             f"{dtype} array of shape {shape}")
        try:
            meta = json.loads(str(self.read("meta")))
        except (ValueError, RecursionError) as error:
            raise self.error(f"is damaged: its 'meta' entry is not JSON ({error})") from None
        if not isinstance(meta, dict) or "format" not in meta:
            raise self.error("is damaged: its 'meta' entry has no format version")
        if not is_count(meta["format"]):
            raise self.error(f"is damaged: its format should be a whole number from 1; it is "
                             f"{meta['format']!r}")
        return meta

    def _entry_name(self, info):
        if not info.filename.endswith(".npy") or info.is_dir():
            raise self.error(f"holds {info.filename!r}, which is not an array (.npy); a "
                             f"{self.what} holds only arrays")
        name = info.filename[:-len(".npy")]
        if name in self.headers:
            raise self.error(f"holds entry {name!r} twice")
        return name

    def _check_stored_size(self, name, info):
        if info.flag_bits & 0x1:
            raise self.error(f"is damaged: entry {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            expands = 1
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            expands = _MOST_DEFLATE_EXPANSION
        else:
            raise self.error(f"entry {name!r} uses zip compression {info.compress_type}; "
                             "gatekit reads stored or deflated entries")
        if info.file_size > expands * max(info.compress_size, 1):
            raise self.error(f"is damaged: entry {name!r} declares {info.file_size} bytes from "
                             f"{info.compress_size} stored bytes")

    def _read_header(self, name, info):
        try:
            with self._archive.open(info) as stream:
                version = npy_format.read_magic(stream)
                dtype, shape = _read_header(stream, version)
                header_size = stream.tell()
        except _DAMAGE as error:
            raise self.error(f"is damaged: entry {name!r} has no readable array header "
                             f"({error})") from None
        if dtype.hasobject:
            raise self.error(f"entry {name!r} holds Python objects, which only unpickling "
                             "could read; gatekit never unpickles")
        data_size = math.prod(shape) * dtype.itemsize
        if header_size + data_size != info.file_size:
            raise self.error(f"is damaged: entry {name!r} declares a {dtype} array of shape "
                             f"{shape} ({data_size} bytes), but stores "
                             f"{info.file_size - header_size} bytes of data")
        return dtype, shape


def is_count(value):
    """Whether ``value`` (from JSON) is a whole number from 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _starts_like_npy(path):
    with open(path, "rb") as stream:
        return stream.read(len(npy_format.MAGIC_PREFIX)) == npy_format.MAGIC_PREFIX


def _read_header(stream, version):
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not one gatekit "
                         "writes (1.0 or 2.0)")
    return dtype, tuple(shape)


__all__ = ["LoadError", "StoredArrays", "atomic_write"]
