"""Damaged, malformed and lying files: gatekit.load and checkpoint loading raise LoadError,
quickly, and allocate nothing a file only declares.

Oracles: files built by hand with zipfile, NumPy's .npy format functions and JSON (never by
the loader under test), the constructors' own rules for what they refuse, and the operating
system's address-space limit in a child process for what must not be allocated.
"""
import io as bytes_io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gatekit
from gatekit.nn import losses
from gatekit.nn import optimisers as optim
from gatekit.io.saving import LoadError
from gatekit.train import training

from support import child_env


def npy_bytes(array):
    stream = bytes_io.BytesIO()
    np.lib.format.write_array(stream, array, allow_pickle=False)
    return stream.getvalue()


def saved_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_npz(path, arrays, meta=None):
    """An .npz written with zipfile alone: entries ``<name>.npy`` holding raw .npy bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        if meta is not None:
            archive.writestr("meta.npy", npy_bytes(np.array(json.dumps(meta))))
        for name, value in arrays.items():
            archive.writestr(f"{name}.npy", value if isinstance(value, bytes)
                             else npy_bytes(value))


def split(path):
    arrays = saved_arrays(path)
    return json.loads(str(arrays.pop("meta"))), arrays


def saved_lstm(tmp_path, name="layer.npz", **kwargs):
    path = tmp_path / name
    gatekit.save(gatekit.LSTM(2, 3, 2, bidirectional=True, seed=1, **kwargs), path)
    return path


def with_meta(path, out, **changes):
    meta, arrays = split(path)
    meta.update(changes)
    write_npz(out, arrays, meta)
    return out


# --- What must not be allocated, under an address-space limit --------------------------------

CHILD = textwrap.dedent("""
    import resource, sys, time
    import numpy as np
    import gatekit
    from gatekit.nn import optimisers as optim
    from gatekit.train import training
    from gatekit.io.saving import LoadError

    def size_now():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    # 1 GiB more than the interpreter already maps: far below any of the declared sizes.
    limit = size_now() + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
        start = time.perf_counter()
        try:
            if kind == "model":
                gatekit.load(path)
            else:
                model = training.Model(gatekit.Cell(2, 3), 1)
                training.load_checkpoint(path, model, optim.Adam(model.params),
                                         np.random.default_rng())
            outcome = "loaded"
        except LoadError:
            outcome = "LoadError"
        except BaseException as error:
            outcome = type(error).__name__ + ": " + str(error)[:200]
        print(path, outcome, round(time.perf_counter() - start, 2), flush=True)
""")


def run_limited(files):
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to set an address-space limit above the interpreter's size")
    args = [part for kind, path in files for part in (kind, str(path))]
    result = subprocess.run([sys.executable, "-c", CHILD, *args], env=child_env(),
                            capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(files[0][1]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files), result.stdout + result.stderr
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines}


def huge_header(shape, dtype="<f4"):
    """The bytes of a .npy entry whose header declares ``shape`` but that holds 16 bytes."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    stream = bytes_io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue() + bytes(16)


def test_declared_sizes_are_checked_before_anything_is_allocated(tmp_path):
    cell_path = tmp_path / "cell.npz"
    gatekit.save(gatekit.Cell(2, 3, seed=1), cell_path)
    # 20000 x 20000: the cell would allocate 4 blocks of (20000, 40000) float32, 12 GiB.
    big_sizes = with_meta(cell_path, tmp_path / "big-sizes.npz", input_size=20000,
                          hidden_size=20000)
    assert os.path.getsize(big_sizes) < 10_000
    # A million layers of a bidirectional LSTM the file holds two layers of.
    many_layers = with_meta(saved_lstm(tmp_path), tmp_path / "many-layers.npz",
                            num_layers=10 ** 6)
    # An array header declaring (100000, 100000) float32, 37 GiB, over 16 bytes of data.
    meta, arrays = split(cell_path)
    arrays["param/W_f"] = huge_header((100000, 100000))
    big_array = tmp_path / "big-array.npz"
    write_npz(big_array, arrays, meta)
    # The same lie in a checkpoint.
    model = training.Model(gatekit.Cell(2, 3, seed=2), 1, seed=2)
    checkpoint = tmp_path / "checkpoint.npz"
    training.save_checkpoint(checkpoint, model, optim.Adam(model.params),
                             np.random.default_rng(0), [1.0])
    meta, arrays = split(checkpoint)
    arrays["optimizer/first/W_f"] = huge_header((100000, 100000))
    big_checkpoint = tmp_path / "big-checkpoint.npz"
    write_npz(big_checkpoint, arrays, meta)

    outcomes = run_limited([("model", big_sizes), ("model", many_layers), ("model", big_array),
                            ("checkpoint", big_checkpoint), ("checkpoint", checkpoint)])
    for path in (big_sizes, many_layers, big_array, big_checkpoint):
        outcome, seconds = outcomes[str(path)].rsplit(" ", 1)
        assert outcome == "LoadError", (path.name, outcome)
        assert float(seconds) < 10, (path.name, seconds)
    assert outcomes[str(checkpoint)].startswith("loaded")      # the limit lets a real one load


# --- Values the constructors refuse ----------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"dropout": float("nan")}, r"dropout must be a probability in \[0, 1\]; got nan"),
    ({"dropout": -1}, r"dropout must be a probability in \[0, 1\]; got -1"),
    ({"dropout": 1.5}, r"dropout must be a probability in \[0, 1\]; got 1.5"),
    ({"dropout": "0.1"}, "dropout should be a number; it is '0.1'"),
    ({"format": -7}, "format should be a whole number from 1; it is -7"),
    ({"format": 0}, "format should be a whole number from 1; it is 0"),
    ({"format": True}, "format should be a whole number from 1; it is True"),
    ({"format": "1"}, "format should be a whole number from 1; it is '1'"),
    ({"hidden_size": 3.0}, "hidden_size should be a whole number from 1; it is 3.0"),
    ({"input_size": True}, "input_size should be a whole number from 1; it is True"),
    ({"num_layers": -2}, "num_layers should be a whole number from 1; it is -2"),
    ({"bidirectional": 1}, "bidirectional should be true or false; it is 1"),
    ({"dtype": "float16"}, "dtype should be 'float32' or 'float64'; it is 'float16'"),
    ({"gates": ["standard"]}, "gates should map roles to gates"),
    ({"variant": "standard"}, "variant should be an object with a 'name'"),
    ({"hidden_size": 4}, r"parameter 'l0.W_f' has shape \(3, 5\); the gates declare \(4, 6\)"),
])
def test_metadata_the_constructors_would_refuse_is_refused(tmp_path, changes, message):
    path = with_meta(saved_lstm(tmp_path), tmp_path / "changed.npz", **changes)
    with pytest.raises(LoadError, match=message) as caught:
        gatekit.load(path)
    assert str(path) in str(caught.value)


def test_a_file_written_by_this_gatekit_before_distributions_were_recorded_loads(tmp_path):
    # The previous writer's file, by hand: format 1, provenance without "distribution".
    lstm = gatekit.LSTM(2, 3, 2, bidirectional=True, dropout=0.25, seed=3)
    origin = {"name": "standard", "plugin": "gatekit.core.builtin_variants",
              "version": gatekit.__version__}
    meta = {"format": 1, "gatekit": gatekit.__version__, "kind": "LSTM", "input_size": 2,
            "hidden_size": 3, "dtype": "float32", "variant": origin,
            "gates": {role: origin for role in ("forget", "learn", "remember", "use")},
            "num_layers": 2, "bidirectional": True, "dropout": 0.25, "batch_first": False}
    path = tmp_path / "previous.npz"
    np.savez(path, meta=np.array(json.dumps(meta)),
             **{f"param/{name}": np.array(value) for name, value in lstm.params.items()})
    loaded = gatekit.load(path)
    assert loaded.dropout == 0.25 and loaded.num_layers == 2 and loaded.bidirectional
    for name, value in lstm.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)


def test_damaged_checkpoints_raise_load_error_and_restore_nothing(tmp_path):
    model = training.Model(gatekit.Cell(2, 3, seed=4), 1, seed=4)
    optimizer = optim.Adam(model.params)
    path = tmp_path / "good.npz"
    training.save_checkpoint(path, model, optimizer, np.random.default_rng(0), [0.5, 0.25])
    meta, arrays = split(path)
    fresh = training.Model(gatekit.Cell(2, 3, seed=5), 1, seed=5)
    before = {name: value.copy() for name, value in fresh.params.items()}
    cases = {
        "truncated": path.read_bytes()[:len(path.read_bytes()) // 2],
        "rng": {**meta, "rng": {"bit_generator": "PCG64", "state": "nonsense"}},
        "steps": {"optimizer/steps": np.array(-3)},
        "first": {"optimizer/first/W_f": np.zeros(1, np.float32)},
        "losses": {"losses": np.zeros((2, 2))},
        "meta": {**meta, "format": -7},
    }
    for name, change in cases.items():
        damaged = tmp_path / f"{name}.npz"
        if isinstance(change, bytes):
            damaged.write_bytes(change)
        elif "format" in change or "rng" in change:
            write_npz(damaged, arrays, change)
        else:
            write_npz(damaged, {**arrays, **change}, meta)
        rng = np.random.default_rng(9)
        state = rng.bit_generator.state
        adam = optim.Adam(fresh.params)
        with pytest.raises(LoadError, match=str(damaged)):
            training.load_checkpoint(damaged, fresh, adam, rng)
        assert rng.bit_generator.state == state, name
        assert adam.steps == 0, name
        for key, value in before.items():
            np.testing.assert_array_equal(fresh.params[key], value, err_msg=name)


# --- Any damage: LoadError or a valid model --------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6)
META_KEYS = ("format", "kind", "input_size", "hidden_size", "dtype", "variant", "gates",
             "num_layers", "bidirectional", "dropout", "batch_first")
DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("meta"), st.dictionaries(st.sampled_from(META_KEYS), JSON_VALUES,
                                               min_size=1, max_size=3)),
    st.tuples(st.just("gate"), st.tuples(st.sampled_from(("forget", "use")), JSON_VALUES)),
)


def damaged_bytes(original, meta, arrays, damage):
    kind, detail = damage
    data = bytearray(original)
    if kind == "flip":
        for position, mask in detail:
            data[position % len(data)] ^= mask
        return bytes(data)
    if kind == "truncate":
        return bytes(data[:detail % len(data)])
    meta = json.loads(json.dumps(meta))
    if kind == "meta":
        meta.update(detail)
    else:
        meta["gates"][detail[0]] = detail[1]
    stream = bytes_io.BytesIO()
    write_npz(stream, arrays, meta)
    return stream.getvalue()


class Originals(dict):
    """The saved bytes, meta and arrays of each original file (with a short repr, for
    hypothesis's reports)."""

    def __repr__(self):
        return f"Originals({', '.join(self)})"


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("originals")
    made = Originals()
    for name, model in (("cell", gatekit.Cell(2, 3, "peephole", seed=6)),
                        ("lstm", gatekit.LSTM(2, 3, 2, bidirectional=True, seed=6))):
        path = folder / f"{name}.npz"
        gatekit.save(model, path)
        made[name] = (path.read_bytes(), *split(path))
    return made


def assert_valid(model):
    assert isinstance(model, (gatekit.Cell, gatekit.LSTM))
    for name, value in model.params.items():
        assert value.dtype == model.dtype, name
    model(np.zeros((2, 1, model.input_size), model.dtype))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.sampled_from(("cell", "lstm")), damage=DAMAGE)
def test_any_damage_gives_load_error_or_a_valid_model(tmp_path, originals, which, damage):
    path = tmp_path / f"damaged-{which}.npz"
    path.write_bytes(damaged_bytes(*originals[which], damage))
    try:
        model = gatekit.load(path)
    except LoadError as error:
        assert str(path) in str(error)
    else:
        assert_valid(model)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(damage=st.one_of(DAMAGE.filter(lambda d: d[0] in ("flip", "truncate")),
                        st.tuples(st.just("meta"), st.dictionaries(
                            st.sampled_from(("format", "gates", "optimizer", "dtype", "rng")),
                            JSON_VALUES, min_size=1, max_size=3))))
def test_any_checkpoint_damage_gives_load_error_or_a_restore(tmp_path, damage):
    model = training.Model(gatekit.Cell(2, 3, seed=7), 1, seed=7)
    path = tmp_path / "checkpoint.npz"
    training.save_checkpoint(path, model, optim.Adam(model.params), np.random.default_rng(1),
                             [0.5])
    meta, arrays = split(path)
    path.write_bytes(damaged_bytes(path.read_bytes(), meta, arrays, damage))
    fresh = training.Model(gatekit.Cell(2, 3, seed=8), 1, seed=8)
    try:
        restored = training.load_checkpoint(path, fresh, optim.Adam(fresh.params),
                                            np.random.default_rng())
    except LoadError as error:
        assert str(path) in str(error)
    else:
        assert all(isinstance(value, float) for value in restored)
        losses.MeanSquaredError()(fresh(np.zeros((2, 1, 2), np.float32)), np.zeros((2, 1, 1)))
