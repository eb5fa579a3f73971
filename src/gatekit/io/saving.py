"""Saving and loading cells and layers: ``gatekit.save(model, path)`` and ``gatekit.load(path)``.

The file is an ``.npz`` archive, written atomically (:func:`gatekit.io.files.atomic_write`):

- ``param/<name>``: every parameter, under the names of ``model.params`` (``W_f``, ... for a
  cell; ``l0.W_f``, ``l0_reverse.W_f``, ... for a layer), in the model's dtype;
- ``meta``: one JSON string with the file format (:data:`FORMAT`), the gatekit version that
  wrote it, the kind (``"Cell"`` or ``"LSTM"``), the sizes, the dtype, the variant, the gate of
  each role, and for the variant and every gate the plugin that registered it, that plugin's
  version and the distribution that installs it (``null`` for a plugin registered at run
  time; files written before the distribution was recorded lack it); a layer adds
  ``num_layers``, ``bidirectional``, ``dropout`` and ``batch_first``; a model whose gates keep
  extra memories (``Gate.memories``) adds ``memories``, their names in state order (files of
  models without any, and files written before memories existed, have none); a model with
  zoneout or recurrent dropout adds ``zoneout`` ([z_c, z_h]) and ``recurrent_dropout``, and is
  written as format 2 (so that a gatekit that would ignore them refuses the file); a model
  with a projected STM adds ``proj_size`` (and its cells' ``W_hr``) and is written as format 2
  too; without any of these, format 1.

Loading reads with no unpickling, so a file never runs code, and trusts nothing in it: it
checks every array header against the bytes stored, the metadata's types and values, and the
names, shapes and dtype of every stored parameter against what the named gates declare for
the stored sizes, all before allocating the model; then it builds the model through its
constructor and copies the parameters in.
"""
import importlib.metadata
import json
import numbers
import warnings

import numpy as np

from gatekit.version import __version__
from gatekit.core import plugins
from gatekit.core._gate import ROLES
from gatekit.core.cell import Cell, check_recurrent_dropout, check_zoneout
from gatekit.nn.layers import cell_names, LSTM
from gatekit.io.files import atomic_write, is_count, LoadError, StoredArrays

FORMAT = 2
# The format of a file whose model has no regulariser: what gatekit wrote before format 2.
PLAIN_FORMAT = 1
BUILTIN_PLUGIN = "gatekit.core.builtin_variants"
LAYER_FIELDS = ("num_layers", "bidirectional", "dropout", "batch_first")
WHAT = "gatekit model file"


def _plugin_version(plugin):
    if plugin == BUILTIN_PLUGIN:
        return __version__
    return plugins.registry().plugin_versions.get(plugin)


def _plugin_distribution(plugin):
    """The distribution to ``pip install`` for ``plugin``; None for one registered at run time."""
    if plugin == BUILTIN_PLUGIN:
        return "gatekit"
    if plugin not in plugins.registry().plugin_versions:      # not loaded from an entry point
        return None
    for entry_point in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP,
                                                       name=plugin):
        if entry_point.dist is not None:
            return entry_point.dist.name
    return None


def _origin(name, plugin):
    return {"name": name, "plugin": plugin, "version": _plugin_version(plugin),
            "distribution": _plugin_distribution(plugin)}


def _provenance(model):
    registry = plugins.registry()
    gates = {role: _origin(name, registry.gates[role][name].plugin)
             for role, name in model.gate_names.items()}
    for role, entry in gates.items():
        definition = getattr(registry.gates[role][entry["name"]].cls, "definition_hash", None)
        if definition is not None:          # an equation gate: what its definition computes
            entry["definition"] = definition
    return gates, _origin(model.variant, registry.variants[model.variant].plugin)


def save(model, path):
    """Write a :class:`gatekit.Cell` or :class:`gatekit.LSTM` to ``path`` as ``.npz`` (no
    pickle), atomically: a crash never leaves half a file, and an existing file is replaced
    only once the new one is complete. The file gets the mode 0666 minus the umask."""
    if isinstance(model, LSTM):
        kind = "LSTM"
    elif isinstance(model, Cell):
        kind = "Cell"
    else:
        raise TypeError(f"gatekit.save writes a gatekit.Cell or gatekit.LSTM; got "
                        f"{type(model).__name__}")
    gates, variant = _provenance(model)
    regularised = model.zoneout != (0.0, 0.0) or model.recurrent_dropout > 0
    projected = model.proj_size is not None
    meta = {"format": FORMAT if regularised or projected else PLAIN_FORMAT,
            "gatekit": __version__,
            "kind": kind, "input_size": model.input_size, "hidden_size": model.hidden_size,
            "dtype": model.dtype.name, "variant": variant, "gates": gates}
    if kind == "LSTM":
        meta.update({field: getattr(model, field) for field in LAYER_FIELDS})
    if model.memories:
        meta["memories"] = list(model.memories)
    if regularised:
        meta.update(zoneout=list(model.zoneout), recurrent_dropout=model.recurrent_dropout)
    if projected:
        meta["proj_size"] = model.proj_size
    arrays = {f"param/{name}": np.asarray(array) for name, array in model.params.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


# --- Reading the metadata --------------------------------------------------------------------

def _is_optional_text(value):
    return value is None or isinstance(value, str)


def _check_origin(stored, where, entry):
    if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and all(_is_optional_text(entry.get(key))
                    for key in ("plugin", "version", "distribution", "definition"))):
        raise stored.error(f"is damaged: its {where} should be an object with a 'name' and "
                           f"the 'plugin', 'version' and 'distribution' it came from (text or "
                           f"null); it is {entry!r}")


def _read_meta(stored):
    meta = stored.read_meta()
    if meta["format"] > FORMAT:
        raise stored.error(f"has file format {meta['format']!r}, written by gatekit "
                           f"{meta.get('gatekit', '?')}; this gatekit ({__version__}) "
                           f"reads formats up to {FORMAT}: upgrade gatekit to load it")
    missing = [key for key in ("kind", "input_size", "hidden_size", "dtype", "variant", "gates")
               if key not in meta]
    if meta.get("kind") == "LSTM":
        missing += [key for key in LAYER_FIELDS if key not in meta]
    if missing:
        raise stored.error(f"is damaged: its 'meta' entry lacks {', '.join(missing)}")
    if meta["kind"] not in ("Cell", "LSTM"):
        raise stored.error(f"holds a {meta['kind']!r}; gatekit.load reads 'Cell' and 'LSTM'")
    counts = ["input_size", "hidden_size"] + (["num_layers"] if meta["kind"] == "LSTM" else [])
    meta.setdefault("proj_size", None)
    if meta["proj_size"] is not None:
        counts.append("proj_size")
    for key in counts:
        if not is_count(meta[key]):
            raise stored.error(f"is damaged: its {key} should be a whole number from 1; it is "
                               f"{meta[key]!r}")
    if meta["dtype"] not in ("float32", "float64"):
        raise stored.error(f"is damaged: its dtype should be 'float32' or 'float64'; it is "
                           f"{meta['dtype']!r}")
    if meta["kind"] == "LSTM":
        for key in ("bidirectional", "batch_first"):
            if not isinstance(meta[key], bool):
                raise stored.error(f"is damaged: its {key} should be true or false; it is "
                                   f"{meta[key]!r}")
        if isinstance(meta["dropout"], bool) or not isinstance(meta["dropout"], numbers.Real):
            raise stored.error(f"is damaged: its dropout should be a number; it is "
                               f"{meta['dropout']!r}")
    try:
        meta["zoneout"] = check_zoneout(meta.get("zoneout", (0.0, 0.0)))
        meta["recurrent_dropout"] = check_recurrent_dropout(meta.get("recurrent_dropout", 0.0))
    except ValueError as error:
        raise stored.error(f"is damaged: {error}") from None
    _check_origin(stored, "variant", meta["variant"])
    if not isinstance(meta["gates"], dict):
        raise stored.error(f"is damaged: its gates should map roles to gates; they are "
                           f"{meta['gates']!r}")
    for role, entry in meta["gates"].items():
        if role not in ROLES:
            raise stored.error(f"names a gate role {role!r}; roles are {', '.join(ROLES)}")
        _check_origin(stored, f"{role} gate", entry)
    return meta


# --- Checking the plugins and the parameters -------------------------------------------------

def _where_from(entry):
    plugin, version = entry.get("plugin"), entry.get("version")
    where = f"plugin {plugin!r}" + (f" (version {version})" if version else "")
    if "distribution" not in entry:          # written before distributions were recorded
        return (f"it came from {where}: install the distribution that provides the gatekit "
                f"plugin {plugin!r}, or register that plugin, then load again")
    distribution = entry["distribution"]
    if distribution is None:
        return (f"it came from {where}, registered at run time: register that plugin, then "
                "load again")
    requirement = distribution + (f"=={version}" if version else "")
    return (f"it came from {where} of the distribution {distribution!r}: install it "
            f"(pip install '{requirement}'), then load again")


def _check_registered(stored, meta, strict):
    """Every gate and the variant the file names must be registered; names what to install.
    An equation gate whose definition changed since the file was written warns, or with
    ``strict`` refuses."""
    registry = plugins.registry()
    variant = meta["variant"]
    if variant["name"] not in registry.variants:
        raise stored.error(f"uses variant {variant['name']!r}, which no loaded plugin "
                           f"registers; {_where_from(variant)}")
    for role, entry in meta["gates"].items():
        if entry["name"] not in registry.gates[role]:
            raise stored.error(f"uses {role} gate {entry['name']!r}, which no loaded plugin "
                               f"registers; {_where_from(entry)}")
    for role, entry in [*meta["gates"].items(), ("variant", variant)]:
        if role == "variant":
            plugin = registry.variants[entry["name"]].plugin
        else:
            plugin = registry.gates[role][entry["name"]].plugin
        if role != "variant":
            _check_definition(stored, role, entry, registry.gates[role][entry["name"]].cls,
                              strict)
        if plugin != entry.get("plugin"):
            warnings.warn(f"{stored.path}: {role} {entry['name']!r} was saved from plugin "
                          f"{entry.get('plugin')!r} and is now registered by plugin {plugin!r}",
                          UserWarning, stacklevel=3)
            continue
        version, saved = _plugin_version(plugin), entry.get("version")
        if saved is not None and version is not None and version != saved:
            warnings.warn(f"{stored.path}: {role} {entry['name']!r} was saved with plugin "
                          f"{plugin!r} version {saved}; version {version} is installed",
                          UserWarning, stacklevel=3)


def _check_definition(stored, role, entry, cls, strict):
    saved, now = entry.get("definition"), getattr(cls, "definition_hash", None)
    if saved is None or saved == now:
        return
    message = (f"{role} gate {entry['name']!r} was saved with a definition that differs from "
               f"the registered gate's (hash {saved[:12]}, now {str(now)[:12]}): the parameters "
               "may not mean what they meant")
    if strict:
        raise stored.error(f"{message}; load(..., strict=False) loads it anyway")
    warnings.warn(f"{stored.path}: {message}", UserWarning, stacklevel=4)


def _cell_shapes(classes, D, H, P=None):
    """The parameters a cell of these gate classes has, by the gate contract (``Gate.shapes``);
    with a projected STM of P features, the blocks read P STM columns and ``W_hr`` is (P, H)."""
    shapes = {}
    for cls in classes:
        shapes.update(cls.shapes(D, H))
        if P is not None:
            for block in cls.blocks:
                reads = cls.block_reads(block)
                if reads != "event":
                    shapes[f"W_{block}"] = (H, P + D if reads == "both" else P)
    if P is not None:
        shapes["W_hr"] = (P, H)
    return shapes


def _declared_shapes(stored, meta):
    """The name and shape of every parameter the file's gates declare at the file's sizes,
    computed from the gate classes alone, so that nothing of the model's size is allocated."""
    gates = {role: entry["name"] for role, entry in meta["gates"].items()}
    try:
        classes = plugins.registry().compose(meta["variant"]["name"], gates)
    except ValueError as error:
        raise stored.error(f"describes gates that cannot be combined: {error}") from None
    D, H, P = meta["input_size"], meta["hidden_size"], meta["proj_size"]
    if meta["kind"] == "Cell":
        return _cell_shapes(classes, D, H, P)
    directions = 2 if meta["bidirectional"] else 1
    cells = directions * meta["num_layers"]
    stored_params = sum(1 for key in stored.headers if key.startswith("param/"))
    # Each cell has parameters of its own, so a file cannot hold more cells than parameters;
    # checked first, so that a huge num_layers costs nothing.
    if _cell_shapes(classes, D, H, P) and cells > stored_params:
        raise stored.error(f"declares {meta['num_layers']} layer(s) of {directions} "
                           f"direction(s), {cells} cells, but stores only {stored_params} "
                           "parameters")
    shapes = {}
    for k, cell in enumerate(cell_names(meta["num_layers"], meta["bidirectional"])):
        inputs = D if k < directions else directions * (H if P is None else P)
        shapes.update({f"{cell}.{name}": shape
                       for name, shape in _cell_shapes(classes, inputs, H, P).items()})
    return shapes


def _check_parameters(stored, meta, declared):
    names = {key[len("param/"):] for key in stored.headers if key.startswith("param/")}
    missing = [name for name in declared if name not in names]
    if missing:
        raise stored.error(f"lacks parameter(s) {', '.join(missing)} that its gates declare "
                           f"({_gate_list(meta)})")
    extra = sorted(names - set(declared))
    others = sorted(set(stored.headers) - {"meta"} - {f"param/{n}" for n in names})
    if extra or others:
        raise stored.error(f"holds entries no gate of {_gate_list(meta)} declares: "
                           f"{', '.join([f'param/{n}' for n in extra] + others)}")
    for name, shape in declared.items():
        dtype, stored_shape = stored.headers[f"param/{name}"]
        if stored_shape != shape:
            raise stored.error(f"parameter {name!r} has shape {stored_shape}; the gates "
                               f"declare {shape}")
        if dtype != np.dtype(meta["dtype"]):
            raise stored.error(f"parameter {name!r} has dtype {dtype}; the file declares "
                               f"{meta['dtype']}")


def _build(stored, meta):
    gates = {role: entry["name"] for role, entry in meta["gates"].items()}
    regularisers = {"zoneout": meta["zoneout"], "recurrent_dropout": meta["recurrent_dropout"],
                    "proj_size": meta["proj_size"]}
    try:
        if meta["kind"] == "Cell":
            return Cell(meta["input_size"], meta["hidden_size"], meta["variant"]["name"],
                        **gates, dtype=meta["dtype"], **regularisers)
        return LSTM(meta["input_size"], meta["hidden_size"], meta["num_layers"],
                    bidirectional=meta["bidirectional"], variant=meta["variant"]["name"],
                    **gates, dropout=meta["dropout"], batch_first=meta["batch_first"],
                    dtype=meta["dtype"], **regularisers)
    except (TypeError, ValueError) as error:
        raise stored.error(f"describes a {meta['kind']} that cannot be built: {error}") \
            from None


def load(path, strict=False):
    """Read a cell or layer written by :func:`save`; returns a :class:`gatekit.Cell` or a
    :class:`gatekit.LSTM` (in training mode, with its zoneout and recurrent dropout options,
    its dropout and mask generators freshly seeded).

    Never unpickles. Raises :class:`LoadError` (a ``ValueError``) naming the file and what is
    wrong: a damaged or malformed file, a file of a newer format, a gate or variant whose plugin
    is not installed (named, with the version and the distribution to install), a parameter
    missing, unexpected, of the wrong shape or of the wrong dtype. Nothing the file declares is
    allocated before it is checked against what the file stores. Warns when a gate's plugin
    version differs from the one that wrote the file, and when an equation gate's definition
    differs from the one it was saved with (``strict=True``: refuses it).
    """
    with StoredArrays(path, WHAT) as stored:
        meta = _read_meta(stored)
        _check_registered(stored, meta, strict)
        _check_parameters(stored, meta, _declared_shapes(stored, meta))
        model = _build(stored, meta)
        _check_memories(stored, meta, model)
        for name, target in model.params.items():
            array = stored.read(f"param/{name}")
            if array.shape != target.shape:
                raise stored.error(f"parameter {name!r} has shape {array.shape}; the gates "
                                   f"declare {target.shape}")
            target[...] = array
    return model


def _check_memories(stored, meta, model):
    """The extra memories the file's gates kept must be those the registered gates keep now:
    the state a caller carries from before the save has them in that order."""
    saved = meta.get("memories", [])
    if not (isinstance(saved, list) and all(isinstance(name, str) for name in saved)):
        raise stored.error(f"is damaged: its memories should be a list of names; they are "
                           f"{saved!r}")
    if tuple(saved) != model.memories:
        raise stored.error(f"was saved from gates that keep the extra memories {tuple(saved)}; "
                           f"the registered gates {_gate_list(meta)} keep {model.memories}: "
                           "install the plugin version that wrote it")


def _gate_list(meta):
    return ", ".join(f"{role}={entry['name']!r}" for role, entry in meta["gates"].items())


__all__ = ["FORMAT", "LoadError", "load", "PLAIN_FORMAT", "save"]
