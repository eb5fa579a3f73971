"""Saving and loading cells and layers: ``gatekit.save(model, path)`` and ``gatekit.load(path)``.

The file is an ``.npz`` archive, written atomically (:func:`gatekit.training.atomic_savez`):

- ``param/<name>``: every parameter, under the names of ``model.params`` (``W_f``, ... for a
  cell; ``l0.W_f``, ``l0_reverse.W_f``, ... for a layer), in the model's dtype;
- ``meta``: one JSON string with the file format (:data:`FORMAT`), the gatekit version that
  wrote it, the kind (``"Cell"`` or ``"LSTM"``), the sizes, the dtype, the preset, the gate of
  each role, and for the preset and every gate the plugin that registered it and that plugin's
  version (``null`` for a plugin registered at run time); a layer adds ``num_layers``,
  ``bidirectional``, ``dropout`` and ``batch_first``.

Loading reads with ``allow_pickle=False``, so a file never runs code; it rebuilds the model
from the registered gates and checks every stored array against the parameters those gates
declare (names, shapes and dtype) before copying it in.
"""
import json
import warnings

import numpy as np

import gatekit
from gatekit import plugins
from gatekit.cell import Cell
from gatekit.layers import LSTM
from gatekit.training import atomic_savez

FORMAT = 1
BUILTIN_PLUGIN = "gatekit.default_plugins.builtin"
LAYER_FIELDS = ("num_layers", "bidirectional", "dropout", "batch_first")


class LoadError(ValueError):
    """A file could not be loaded as a gatekit cell or layer."""


def _plugin_version(plugin):
    if plugin == BUILTIN_PLUGIN:
        return gatekit.__version__
    return plugins.registry().plugin_versions.get(plugin)


def _provenance(model):
    registry = plugins.registry()
    gates = {}
    for role, name in model.gate_names.items():
        plugin = registry.gates[role][name].plugin
        gates[role] = {"name": name, "plugin": plugin, "version": _plugin_version(plugin)}
    variant = registry.variants[model.variant].plugin
    return gates, {"name": model.variant, "plugin": variant, "version": _plugin_version(variant)}


def save(model, path):
    """Write a :class:`gatekit.Cell` or :class:`gatekit.LSTM` to ``path`` as ``.npz`` (no
    pickle), atomically: a crash never leaves half a file, and an existing file is replaced
    only once the new one is complete."""
    if isinstance(model, LSTM):
        kind = "LSTM"
    elif isinstance(model, Cell):
        kind = "Cell"
    else:
        raise TypeError(f"gatekit.save writes a gatekit.Cell or gatekit.LSTM; got "
                        f"{type(model).__name__}")
    gates, variant = _provenance(model)
    meta = {"format": FORMAT, "gatekit": gatekit.__version__, "kind": kind,
            "input_size": model.input_size, "hidden_size": model.hidden_size,
            "dtype": model.dtype.name, "variant": variant, "gates": gates}
    if kind == "LSTM":
        meta.update({field: getattr(model, field) for field in LAYER_FIELDS})
    arrays = {f"param/{name}": np.asarray(array) for name, array in model.params.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_savez(path, arrays)


def _read_meta(path, stored):
    if "meta" not in stored.files:
        raise LoadError(f"{path} is not a gatekit model file: it has no 'meta' entry")
    try:
        meta = json.loads(str(stored["meta"]))
    except ValueError as error:
        raise LoadError(f"{path}: its 'meta' entry is not gatekit's JSON ({error})") from None
    if not isinstance(meta, dict) or "format" not in meta:
        raise LoadError(f"{path}: its 'meta' entry has no format version")
    if not isinstance(meta["format"], int) or meta["format"] > FORMAT:
        raise LoadError(f"{path} has file format {meta['format']!r}, written by gatekit "
                        f"{meta.get('gatekit', '?')}; this gatekit ({gatekit.__version__}) reads "
                        f"formats up to {FORMAT}: upgrade gatekit to load it")
    missing = [key for key in ("kind", "input_size", "hidden_size", "dtype", "variant", "gates")
               if key not in meta]
    if meta.get("kind") == "LSTM":
        missing += [key for key in LAYER_FIELDS if key not in meta]
    if missing:
        raise LoadError(f"{path}: its 'meta' entry lacks {', '.join(missing)}")
    if meta["kind"] not in ("Cell", "LSTM"):
        raise LoadError(f"{path} holds a {meta['kind']!r}; gatekit.load reads 'Cell' and 'LSTM'")
    return meta


def _where_from(entry):
    version = entry.get("version")
    return f"plugin {entry.get('plugin')!r}" + (f" (version {version})" if version else "")


def _check_registered(path, meta):
    """Every gate and the preset the file names must be registered; names the missing plugin."""
    registry = plugins.registry()
    variant = meta["variant"]
    if variant["name"] not in registry.variants:
        raise LoadError(f"{path} uses preset {variant['name']!r}, which no loaded plugin "
                        f"registers; it came from {_where_from(variant)}: install or register "
                        "that plugin, then load again")
    for role, entry in meta["gates"].items():
        if role not in registry.gates:
            raise LoadError(f"{path} names a gate role {role!r}; roles are "
                            f"{', '.join(registry.gates)}")
        if entry["name"] not in registry.gates[role]:
            raise LoadError(f"{path} uses {role} gate {entry['name']!r}, which no loaded plugin "
                            f"registers; it came from {_where_from(entry)}: install or register "
                            "that plugin, then load again")
    for role, entry in [*meta["gates"].items(), ("preset", variant)]:
        if role == "preset":
            plugin = registry.variants[entry["name"]].plugin
        else:
            plugin = registry.gates[role][entry["name"]].plugin
        if plugin != entry.get("plugin"):
            warnings.warn(f"{path}: {role} {entry['name']!r} was saved from plugin "
                          f"{entry.get('plugin')!r} and is now registered by plugin {plugin!r}",
                          UserWarning, stacklevel=3)
            continue
        version, saved = _plugin_version(plugin), entry.get("version")
        if saved is not None and version is not None and version != saved:
            warnings.warn(f"{path}: {role} {entry['name']!r} was saved with plugin {plugin!r} "
                          f"version {saved}; version {version} is installed", UserWarning,
                          stacklevel=3)


def _build(path, meta):
    gates = {role: entry["name"] for role, entry in meta["gates"].items()}
    try:
        if meta["kind"] == "Cell":
            return Cell(meta["input_size"], meta["hidden_size"], meta["variant"]["name"],
                        **gates, dtype=meta["dtype"])
        return LSTM(meta["input_size"], meta["hidden_size"], meta["num_layers"],
                    bidirectional=meta["bidirectional"], variant=meta["variant"]["name"],
                    **gates, batch_first=meta["batch_first"], dtype=meta["dtype"])
    except (TypeError, ValueError) as error:
        raise LoadError(f"{path}: cannot rebuild the {meta['kind']} it describes: {error}") \
            from None


def load(path):
    """Read a cell or layer written by :func:`save`; returns a :class:`gatekit.Cell` or a
    :class:`gatekit.LSTM` (in training mode, with its dropout generator freshly seeded).

    Never unpickles. Raises :class:`LoadError` (a ``ValueError``) naming what is wrong: a file
    of a newer format, a gate or preset whose plugin is not installed (named, with the version
    that wrote the file), a parameter missing, unexpected, of the wrong shape or of the wrong
    dtype. Warns when a gate's plugin version differs from the one that wrote the file.
    """
    try:
        stored = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise LoadError(f"{path} is not a gatekit model file (.npz): {error}") from None
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise LoadError(f"{path} is a single .npy array, not a gatekit model file (.npz)")
    with stored:
        meta = _read_meta(path, stored)
        _check_registered(path, meta)
        model = _build(path, meta)
        if meta["kind"] == "LSTM":
            model.dropout = float(meta["dropout"])
        names = {key[len("param/"):] for key in stored.files if key.startswith("param/")}
        missing = [name for name in model.params if name not in names]
        if missing:
            raise LoadError(f"{path} lacks parameter(s) {', '.join(missing)} that its gates "
                            f"declare ({_gate_list(meta)})")
        extra = sorted(names - set(model.params))
        others = sorted(set(stored.files) - {"meta"} - {f"param/{n}" for n in names})
        if extra or others:
            raise LoadError(f"{path} holds entries no gate of {_gate_list(meta)} declares: "
                            f"{', '.join([f'param/{n}' for n in extra] + others)}")
        for name, target in model.params.items():
            key = f"param/{name}"
            try:
                array = stored[key]
            except ValueError as error:
                raise LoadError(f"{path}: entry {key!r} cannot be read without unpickling "
                                f"({error}); gatekit never unpickles") from None
            if array.shape != target.shape:
                raise LoadError(f"{path}: parameter {name!r} has shape {array.shape}; the "
                                f"gates declare {target.shape}")
            if array.dtype != target.dtype:
                raise LoadError(f"{path}: parameter {name!r} has dtype {array.dtype}; the file "
                                f"declares {target.dtype}")
            target[...] = array
    return model


def _gate_list(meta):
    return ", ".join(f"{role}={entry['name']!r}" for role, entry in meta["gates"].items())


__all__ = ["FORMAT", "LoadError", "load", "save"]
