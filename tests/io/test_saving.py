"""gatekit.save / gatekit.load: cells and layers to .npz and back, never unpickling.

Oracles: the saved model itself (its parameters and its outputs on fresh input), NumPy's own
reader for what the file holds, and files crafted by hand for every way loading must fail.
"""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gatekit
from gatekit.core import plugins
from gatekit.io import saving as io

from support import child_env, input_size_for


def stored(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def meta_of(path):
    return json.loads(str(stored(path)["meta"]))


def rewrite(path, change_meta=None, change_arrays=None):
    """Rewrite a saved file with its meta and arrays changed (NumPy only, no gatekit)."""
    arrays = stored(path)
    meta = json.loads(str(arrays.pop("meta")))
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


@pytest.mark.parametrize("variant", gatekit.variants())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_variant_cell_round_trips(tmp_path, variant, dtype):
    cell = gatekit.Cell(input_size_for(variant, 3, 4), 4, variant, dtype=dtype, seed=1)
    path = tmp_path / "cell.npz"
    gatekit.save(cell, path)
    loaded = gatekit.load(path)
    assert isinstance(loaded, gatekit.Cell)
    assert loaded.gate_names == cell.gate_names and loaded.variant == variant
    assert loaded.dtype == dtype
    assert sorted(loaded.params) == sorted(cell.params)
    for name, value in cell.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
        assert loaded.params[name].dtype == dtype
    x = np.random.default_rng(1).standard_normal((5, 2, cell.input_size)).astype(dtype)
    np.testing.assert_array_equal(loaded(x)[0], cell(x)[0])


def test_a_layer_round_trips_with_its_configuration(tmp_path):
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, variant="standard", use="peephole",
                        dropout=0.25, batch_first=True, dtype=np.float64, seed=2)
    path = str(tmp_path / "layer.npz")
    gatekit.save(lstm, path)
    loaded = gatekit.load(path)
    assert isinstance(loaded, gatekit.LSTM)
    for field in ("input_size", "hidden_size", "num_layers", "bidirectional", "dropout",
                  "batch_first", "variant", "gate_names", "dtype"):
        assert getattr(loaded, field) == getattr(lstm, field), field
    assert loaded.gate_names["use"] == "peephole"
    for name, value in lstm.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
    x = np.random.default_rng(2).standard_normal((3, 6, 3))
    lengths = [6, 2, 4]
    np.testing.assert_array_equal(loaded.eval()(x, lengths=lengths)[0],
                                  lstm.eval()(x, lengths=lengths)[0])


def test_the_file_is_plain_npz_with_provenance(tmp_path):
    cell = gatekit.Cell(3, 4, "cifg", seed=3)
    path = tmp_path / "cell.npz"
    gatekit.save(cell, path)
    arrays = stored(path)            # NumPy alone reads it, without pickle
    assert set(arrays) == {"meta"} | {f"param/{name}" for name in cell.params}
    meta = json.loads(str(arrays["meta"]))
    # Without zoneout or recurrent dropout, the format gatekit wrote before them.
    assert meta["format"] == io.PLAIN_FORMAT == 1 and meta["gatekit"] == gatekit.__version__
    assert meta["kind"] == "Cell" and meta["dtype"] == "float32"
    assert (meta["input_size"], meta["hidden_size"]) == (3, 4)
    registry = plugins.registry()
    assert meta["variant"]["name"] == "cifg"
    for role, name in cell.gate_names.items():
        entry = meta["gates"][role]
        assert entry["name"] == name
        assert entry["plugin"] == registry.gates[role][name].plugin
        assert entry["version"] == gatekit.__version__      # the built-in gates ship with gatekit


def test_saving_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    first = gatekit.Cell(2, 3, seed=4)
    gatekit.save(first, path)
    before = path.read_bytes()

    def broken_savez(stream, **arrays):
        stream.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        gatekit.save(gatekit.Cell(2, 3, seed=5), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]     # no temporary file left behind
    np.testing.assert_array_equal(gatekit.load(path).params["W_f"], first.params["W_f"])


def test_a_newer_format_is_refused_clearly(tmp_path):
    path = tmp_path / "new.npz"
    gatekit.save(gatekit.Cell(2, 3), path)
    rewrite(path, lambda meta: meta.update(format=io.FORMAT + 1, gatekit="9.0"))
    with pytest.raises(io.LoadError, match=rf"file format {io.FORMAT + 1}, written by gatekit "
                                           rf"9.0; .* reads formats up to {io.FORMAT}: "
                                           r"upgrade gatekit"):
        gatekit.load(path)


class Boom:
    """Unpickling this object leaves a mark: proof that a loader unpickled."""
    marker = None

    def __reduce__(self):
        return (open, (Boom.marker, "w"))


def test_loading_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    gatekit.save(gatekit.Cell(2, 3), path)
    Boom.marker = str(tmp_path / "unpickled")
    evil = np.empty(1, dtype=object)
    evil[0] = Boom()
    rewrite(path, change_arrays=lambda arrays: arrays.update({"param/W_f": evil}))
    with pytest.raises(io.LoadError, match="'param/W_f' holds Python objects, which only "
                                           "unpickling could read"):
        gatekit.load(path)
    assert not os.path.exists(Boom.marker)


# A plugin module registering one gate, GATE_NAME: f_t = σ(W_f [STM_{t-1}, E_t] + b_f) / 2.
HALF_FORGET_PLUGIN = textwrap.dedent("""
    import numpy as np
    import gatekit
    from gatekit.core.reference import linear, sigmoid

    class HalfForget(gatekit.PythonGate):
        role, name, blocks = "forget", "GATE_NAME", ("f",)

        @staticmethod
        def definition(STM_prev, E_t, W_f, b_f):
            s_t = linear(W_f, STM_prev, E_t, b_f)
            return {"s_t": s_t, "f_t": sigmoid(s_t) / 2}

        def forward(self, step):
            step.f_t[...] = 1 / (1 + np.exp(-step.z("f"))) / 2

    @gatekit.hookimpl
    def register_gates(register):
        register(HalfForget)
""")


def write_half_forget_plugin(folder, module, gate_name):
    """The module file ``module``.py in ``folder``, registering the gate ``gate_name``."""
    path = folder / f"{module}.py"
    path.write_text(HALF_FORGET_PLUGIN.replace("GATE_NAME", gate_name))
    return path


def test_a_missing_plugin_is_named(tmp_path, register):
    source = write_half_forget_plugin(tmp_path, "half_forget_io_plugin", "half_forget_io")
    spec = importlib.util.spec_from_file_location("half_forget_io_plugin", source)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    name = register(plugin, name="io-test-plugin")
    cell = gatekit.Cell(2, 3, forget="half_forget_io", seed=6)
    path = tmp_path / "plugin.npz"
    gatekit.save(cell, path)
    assert meta_of(path)["gates"]["forget"] == {"name": "half_forget_io",
                                                "plugin": "io-test-plugin", "version": None,
                                                "distribution": None}
    np.testing.assert_array_equal(gatekit.load(path).params["W_f"], cell.params["W_f"])
    gatekit.unregister_plugin(name)
    with pytest.raises(io.LoadError, match="forget gate 'half_forget_io', which no loaded plugin "
                                           "registers; it came from plugin 'io-test-plugin', "
                                           "registered at run time: register that plugin"):
        gatekit.load(path)
    # a plugin of an installed distribution is named with the distribution and its version
    rewrite(path, lambda meta: meta["gates"]["forget"].update(
        plugin="fancy", version="2.1.0", distribution="gatekit-fancy"))
    with pytest.raises(io.LoadError, match=r"plugin 'fancy' \(version 2.1.0\) of the distribution "
                                           r"'gatekit-fancy': install it \(pip install "
                                           r"'gatekit-fancy==2.1.0'\)"):
        gatekit.load(path)
    # a file written before distributions were recorded names the plugin's entry point
    rewrite(path, lambda meta: meta["gates"]["forget"].pop("distribution"))
    with pytest.raises(io.LoadError, match=r"plugin 'fancy' \(version 2.1.0\): install the "
                                           r"distribution that provides the gatekit plugin "
                                           r"'fancy'"):
        gatekit.load(path)


DISTRIBUTION_PROBE = textwrap.dedent("""
    import json, sys, gatekit
    path = sys.argv[2]
    if sys.argv[1] == "save":
        gatekit.save(gatekit.Cell(2, 3, forget="half_forget_dist"), path)
    else:
        try:
            gatekit.load(path)
        except gatekit.io.saving.LoadError as error:
            print(error)
""")


def test_a_missing_plugin_names_the_distribution_to_install(tmp_path):
    # A throwaway distribution whose name differs from its entry point's, declared by a
    # dist-info folder on the child's path: the error must name what pip installs.
    info = tmp_path / "gatekit_test_halfgate-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gatekit-test-halfgate\n"
                                   "Version: 1.2.3\n")
    (info / "entry_points.txt").write_text("[gatekit]\nhalf_ep = gatekit_test_halfgate\n")
    write_half_forget_plugin(tmp_path, "gatekit_test_halfgate", "half_forget_dist")
    others = sorted({ep.name for ep in importlib.metadata.entry_points(group="gatekit")})
    path = tmp_path / "half.npz"

    def run(step, blocked):
        env = child_env(tmp_path, GATEKIT_BLOCK_PLUGINS=",".join(blocked))
        result = subprocess.run([sys.executable, "-c", DISTRIBUTION_PROBE, step, str(path)],
                                env=env, capture_output=True, text=True, timeout=120,
                                cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("save", others)
    forget = meta_of(path)["gates"]["forget"]
    assert forget == {"name": "half_forget_dist", "plugin": "half_ep", "version": "1.2.3",
                      "distribution": "gatekit-test-halfgate"}
    message = run("load", [*others, "half_ep"])
    assert "plugin 'half_ep' (version 1.2.3) of the distribution 'gatekit-test-halfgate'" in message
    assert "pip install 'gatekit-test-halfgate==1.2.3'" in message


def test_an_unknown_variant_names_its_plugin(tmp_path):
    path = tmp_path / "variant.npz"
    gatekit.save(gatekit.Cell(2, 3), path)
    rewrite(path, lambda meta: meta["variant"].update(name="exotic", plugin="gatekit-exotic",
                                                      version="0.3"))
    with pytest.raises(io.LoadError, match=r"variant 'exotic'.*plugin 'gatekit-exotic' "
                                           r"\(version 0.3\)"):
        gatekit.load(path)


def test_another_plugin_version_warns(tmp_path):
    path = tmp_path / "old.npz"
    gatekit.save(gatekit.Cell(2, 3), path)
    rewrite(path, lambda meta: meta["gates"]["use"].update(version="0.0.1"))
    with pytest.warns(UserWarning, match=r"use 'standard' was saved with plugin .* version "
                                         r"0.0.1; version 0.1.0 is installed"):
        gatekit.load(path)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("param/l0_reverse.b_v"), r"lacks parameter\(s\) l0_reverse.b_v"),
    (lambda a: a.update({"param/l0.p_f": np.zeros(3, np.float32)}),
     "entries no gate .* declares: param/l0.p_f"),
    (lambda a: a.update(stray=np.zeros(1)), "entries no gate .* declares: stray"),
    (lambda a: a.update({"param/l1.W_n": np.zeros((3, 5), np.float32)}),
     r"parameter 'l1.W_n' has shape \(3, 5\); the gates declare \(3, 9\)"),
    (lambda a: a.update({"param/l0.b_f": np.zeros(3, np.float64)}),
     "parameter 'l0.b_f' has dtype float64; the file declares float32"),
])
def test_parameters_are_checked_against_the_declared_gates(tmp_path, change, message):
    path = tmp_path / "layer.npz"
    gatekit.save(gatekit.LSTM(2, 3, 2, bidirectional=True), path)
    rewrite(path, change_arrays=change)
    with pytest.raises(io.LoadError, match=message):
        gatekit.load(path)


def test_files_that_are_not_models_are_refused(tmp_path):
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(io.LoadError, match="single .npy array"):
        gatekit.load(npy)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(io.LoadError, match="no 'meta' entry"):
        gatekit.load(plain)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(io.LoadError, match="not a gatekit model file"):
        gatekit.load(text)
    with pytest.raises(TypeError, match="gatekit.Cell or gatekit.LSTM; got dict"):
        gatekit.save({}, tmp_path / "dict.npz")
    path = tmp_path / "odd.npz"
    gatekit.save(gatekit.Cell(2, 3), path)
    rewrite(path, lambda meta: meta.update(kind="GRU"))
    with pytest.raises(io.LoadError, match="holds a 'GRU'"):
        gatekit.load(path)
    rewrite(path, lambda meta: meta.update(kind="LSTM"))
    with pytest.raises(io.LoadError, match="lacks num_layers"):
        gatekit.load(path)
