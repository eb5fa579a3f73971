"""Zoneout and recurrent dropout in gatekit.LSTM (stacked, bidirectional, ragged), the modes of
a layer and its cells, and saved files that keep the options.

Oracles: the NumPy reference composed layer by layer, each cell run with the masks its tape
kept; every sequence of a ragged batch run alone; centred finite differences with every cell's
masks held fixed (each cell's mask generator put back before every pass).
"""
import json

import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.io.saving import LoadError

from support import F64_ATOL, centred_difference, rel_error

BOTH = dict(zoneout=(0.3, 0.2), recurrent_dropout=0.4)


def reference_layer(lstm, x, state, masks, lengths=None):
    """The layer from the reference, cell by cell with ``masks[name]``, one sequence at a time
    (each reversed within its own length for the reverse direction). Returns y and the final
    (stm, ltm)."""
    T, B, _ = x.shape
    lengths = np.full(B, T) if lengths is None else lengths
    D, H = lstm.directions, lstm.hidden_size
    y = np.zeros((T, B, D * H))
    stm = np.zeros((D * lstm.num_layers, B, H))
    ltm = np.zeros_like(stm)
    for b in range(B):
        n = lengths[b]
        inputs = x[:n, b:b + 1].astype(np.float64)
        for layer in range(lstm.num_layers):
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                name = lstm.cell_names[k]
                cell_masks = {key: value[:n, b:b + 1] if isinstance(value, np.ndarray)
                              and value.ndim == 3 else value[b:b + 1]
                              if isinstance(value, np.ndarray) else value
                              for key, value in masks[name].items()}
                seen = inputs if direction == 0 else inputs[::-1]
                out, (h, c) = reference.forward(lstm.cells[name], seen,
                                                (state[0][k, b:b + 1], state[1][k, b:b + 1]),
                                                dtype=np.float64, masks=cell_masks)
                outputs.append(out if direction == 0 else out[::-1])
                stm[k, b], ltm[k, b] = h[0], c[0]
            inputs = np.concatenate(outputs, axis=2)
        y[:n, b] = inputs[:, 0]
    return y, (stm, ltm)


def draw_state(rng, lstm, B):
    shape = (lstm.directions * lstm.num_layers, B, lstm.hidden_size)
    return rng.standard_normal(shape), rng.standard_normal(shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=np.dtype)
@pytest.mark.parametrize("ragged", [False, True])
def test_a_stacked_bidirectional_layer_runs_each_cell_with_its_masks(dtype, ragged):
    T, B, D, H = 9, 4, 3, 5
    lstm = gatekit.LSTM(D, H, 2, bidirectional=True, variant="peephole", dtype=dtype, seed=1,
                        **BOTH)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = draw_state(rng, lstm, B)
    lengths = np.array([9, 3, 6, 1]) if ragged else None
    tolerance = F64_ATOL if dtype == np.float64 else 1e-4
    for mode in ("train", "eval"):
        getattr(lstm, mode)()
        y, (stm, ltm), tape = lstm.forward(x, state, lengths=lengths, keep=True)
        masks = {name: cell_tape.masks for name, cell_tape in zip(lstm.cell_names, tape.tapes)}
        if mode == "train":
            for name, cell_masks in masks.items():
                assert cell_masks["zoneout_LTM"].shape == (T, B, H), name
                assert cell_masks["dropout_STM"].shape == (B, H), name
            # Each cell draws its own masks.
            assert not np.array_equal(masks["l0"]["zoneout_LTM"],
                                      masks["l0_reverse"]["zoneout_LTM"])
        else:
            assert masks["l1"] == {"zoneout_LTM": 0.3, "zoneout_STM": 0.2, "dropout_STM": None}
        y_ref, (stm_ref, ltm_ref) = reference_layer(lstm, x, state, masks, lengths)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=tolerance, err_msg=mode)
        np.testing.assert_allclose(stm, stm_ref, rtol=0, atol=tolerance, err_msg=mode)
        np.testing.assert_allclose(ltm, ltm_ref, rtol=0, atol=tolerance, err_msg=mode)


@pytest.mark.parametrize("variant, lengths", [("standard", None), ("course", [5, 2, 4])])
def test_layer_gradients_match_finite_differences_with_the_masks_held(variant, lengths):
    T, B, D, H = 5, 3, 2, 3
    lstm = gatekit.LSTM(D, H, 2, bidirectional=True, variant=variant, dtype=np.float64,
                        seed=3, dropout=0.3, **BOTH)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, D))
    state = draw_state(rng, lstm, B)
    lengths = None if lengths is None else np.array(lengths)
    dy = rng.standard_normal((T, B, 2 * H))
    dstm, dltm = draw_state(rng, lstm, B)
    generators = {name: cell.mask_rng.bit_generator.state for name, cell in lstm.cells.items()}

    def run(keep=False):
        lstm.dropout_rng = np.random.default_rng(5)
        for name, cell in lstm.cells.items():
            cell.mask_rng.bit_generator.state = generators[name]
        return lstm.forward(x, state, lengths=lengths, keep=keep)

    def loss():
        y, (stm, ltm) = run()
        return np.sum(y * dy) + np.sum(stm * dstm) + np.sum(ltm * dltm)

    _, _, tape = run(keep=True)
    assert tape.tapes[0].masks["dropout_STM"] is not None
    analytic = lstm.backward(tape, dy, (dstm, dltm))
    for name, array in {**lstm.params, "x": x, "stm0": state[0], "ltm0": state[1]}.items():
        flat = array.reshape(-1) if array.flags.c_contiguous else array.flat
        picked = rng.choice(array.size, size=min(6, array.size), replace=False)
        numeric = np.array([(4 * centred_difference(loss, flat, i, 5e-5)
                             - centred_difference(loss, flat, i, 1e-4)) / 3 for i in picked])
        got = analytic[name].reshape(-1)[picked]
        assert np.abs(got - numeric).max() <= 1e-9 + 1e-6 * np.abs(numeric).max(), name


def test_train_and_eval_set_every_cell():
    lstm = gatekit.LSTM(3, 4, 2, bidirectional=True, seed=6, **BOTH)
    assert lstm.training and all(cell.training for cell in lstm.cells.values())
    assert lstm.eval() is lstm
    assert not any(cell.training for cell in lstm.cells.values())
    lstm.training = True
    assert all(cell.training for cell in lstm.cells.values())
    for cell in lstm.cells.values():
        assert (cell.zoneout, cell.recurrent_dropout) == ((0.3, 0.2), 0.4)
    x = np.random.default_rng(7).standard_normal((6, 2, 3))
    # Training draws new masks at every call; evaluation is deterministic.
    assert not np.array_equal(lstm(x)[0], lstm(x)[0])
    lstm.eval()
    np.testing.assert_array_equal(lstm(x)[0], lstm(x)[0])
    assert "zoneout=(0.3, 0.2), recurrent_dropout=0.4" in repr(lstm)


def test_a_copy_keeps_the_options_the_mode_and_the_mask_streams():
    lstm = gatekit.LSTM(3, 4, 2, seed=8, **BOTH)
    x = np.random.default_rng(9).standard_normal((6, 2, 3))
    lstm(x)
    copy = lstm.copy(np.float64)
    assert (copy.zoneout, copy.recurrent_dropout, copy.training) == ((0.3, 0.2), 0.4, True)
    np.testing.assert_allclose(copy(x)[0], lstm(x)[0], atol=1e-5)
    same_seed = gatekit.LSTM(3, 4, 2, seed=8, **BOTH)
    np.testing.assert_array_equal(same_seed.cells["l1"].draw_masks(4, 2)["zoneout_LTM"],
                                  gatekit.LSTM(3, 4, 2, seed=8, **BOTH).cells["l1"]
                                  .draw_masks(4, 2)["zoneout_LTM"])


# --- Saved files ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Cell", "LSTM"])
def test_save_and_load_keep_the_options(tmp_path, kind):
    if kind == "Cell":
        model = gatekit.Cell(3, 4, "cifg", seed=10, **BOTH)
    else:
        model = gatekit.LSTM(3, 4, 2, bidirectional=True, variant="cifg", seed=10, **BOTH)
    path = tmp_path / "model.npz"
    gatekit.save(model, path)
    with np.load(path, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
    assert meta["format"] == 2
    assert (meta["zoneout"], meta["recurrent_dropout"]) == ([0.3, 0.2], 0.4)
    loaded = gatekit.load(path)
    assert (loaded.zoneout, loaded.recurrent_dropout, loaded.training) == ((0.3, 0.2), 0.4, True)
    # Evaluation is deterministic, so the loaded model gives the saved one's outputs.
    x = np.random.default_rng(11).standard_normal((5, 2, 3))
    np.testing.assert_array_equal(loaded.eval()(x)[0], model.eval()(x)[0])


def test_a_file_without_the_options_loads_without_regularisers(tmp_path):
    path = tmp_path / "plain.npz"
    gatekit.save(gatekit.LSTM(3, 4, seed=12), path)
    with np.load(path, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
    assert meta["format"] == 1 and "zoneout" not in meta     # the format of before
    loaded = gatekit.load(path)
    assert (loaded.zoneout, loaded.recurrent_dropout) == ((0.0, 0.0), 0.0)


def test_a_file_with_a_bad_option_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    gatekit.save(gatekit.Cell(3, 4, seed=13, **BOTH), path)
    with np.load(path, allow_pickle=False) as stored:
        arrays = dict(stored)
    meta = json.loads(str(arrays.pop("meta")))
    meta["zoneout"] = [0.3, 1.5]
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(LoadError, match=r"is damaged: zoneout\[1\] .* got 1.5"):
        gatekit.load(path)


def test_a_resumed_training_run_draws_the_masks_of_a_straight_run(tmp_path):
    task = gatekit.tasks.AddingProblem(length=10)

    def fresh():
        cell = gatekit.Cell(task.input_size, 8, "standard", seed=14, zoneout=(0.1, 0.05),
                            recurrent_dropout=0.2)
        model = gatekit.training.Model(cell, task.output_size, seed=14)
        return model, gatekit.optimisers.Adam(model.params, lr=1e-2)

    def fit(model, optimizer, steps, **options):
        return gatekit.training.train(model, lambda rng: task.sample(8, rng), task.loss,
                                      optimizer, steps, clip=1.0, progress=False, **options)

    straight, optimizer = fresh()
    fit(straight, optimizer, 30)
    path = tmp_path / "run.npz"
    resumed, optimizer = fresh()
    fit(resumed, optimizer, 20, checkpoint=path, checkpoint_every=10)
    resumed, optimizer = fresh()
    fit(resumed, optimizer, 30, checkpoint=path)
    for name, array in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], array, err_msg=name)
