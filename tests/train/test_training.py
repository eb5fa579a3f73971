"""gatekit.training: the readout model's gradients, the training loop with its checkpoints and
progress bar, and proof that training learns the adding problem.

Every expected value comes from an oracle written here: a NumPy formula, a centred finite
difference, or the same run repeated from scratch. (The losses, optimisers and initialisers
it uses are tested in tests/nn/.)
"""
import importlib.util
import io
import json
import math
import os
import re

import numpy as np
import pytest

import gatekit
from gatekit.nn import losses
from gatekit.nn import optimisers as optim
from gatekit.study import tasks
from gatekit.train import training

from support import (REPO, assert_params_equal, cross_entropy_by_hand, mse_by_hand,
                     numerical_gradient, snapshot)


# ------------------------------------------------------------------------------------------
# helpers

def small_model(variant="standard", output_size=2, seed=0, dtype=np.float32, D=2, H=4, **gates):
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=seed, **gates)
    return training.Model(cell, output_size, seed=seed + 100)


def regression_batches(T=5, B=3, D=2, O=2):
    def batches(rng):
        x = rng.normal(size=(T, B, D))
        target = np.tanh(np.cumsum(x, axis=0)[..., :O])
        return x, target
    return batches


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# 1. the model's gradients

@pytest.mark.parametrize("variant", ["standard", "peephole"])
@pytest.mark.parametrize("kind", ["mse", "mse_last", "ce", "ce_last"])
def test_model_gradients_match_finite_differences(variant, kind):
    T, B, D, H, O = 4, 3, 2, 3, 3
    model = small_model(variant, output_size=O, seed=7, dtype=np.float64, D=D, H=H)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(T, B, D))
    # Larger readout weights make the readout gradient significant.
    model.params["W_y"][...] = rng.normal(size=(O, H))
    model.params["b_y"][...] = rng.normal(size=O)
    last = kind.endswith("_last")
    if kind.startswith("mse"):
        loss = losses.MeanSquaredError(last_step_only=last)
        target = rng.normal(size=(B, O) if last else (T, B, O))

        def objective():
            outputs = model(x)
            return mse_by_hand(outputs[-1] if last else outputs, target)
    else:
        loss = losses.SoftmaxCrossEntropy(last_step_only=last)
        target = rng.integers(0, O, (B,) if last else (T, B))
        if not last:
            target[1, 0] = -1

        def objective():
            outputs = model(x)
            return cross_entropy_by_hand(outputs[-1] if last else outputs, target, -1)

    value, grads = model.loss_and_grads(x, target, loss)
    assert value == pytest.approx(objective(), rel=1e-12)
    for name, array in model.params.items():
        assert grads[name].shape == array.shape, name
        numeric = numerical_gradient(objective, array)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


# ------------------------------------------------------------------------------------------
# 2. the training loop

def test_train_stops_early_at_target_loss():
    batches = regression_batches()
    loss = losses.MeanSquaredError()
    free_model = small_model()
    free = training.train(free_model, batches, loss, optim.Adam(free_model.params, lr=0.05),
                          40, progress=False)
    assert free.steps == 40 and "40" in free.stopped
    threshold = sorted(free.losses)[5]
    stop = next(i for i, value in enumerate(free.losses) if value <= threshold) + 1
    assert stop < 40

    model = small_model()
    history = training.train(model, batches, loss, optim.Adam(model.params, lr=0.05), 40,
                             target_loss=threshold, progress=False)
    assert history.steps == stop
    assert history.losses == free.losses[:stop]
    assert "target" in history.stopped and str(stop) in history.stopped
    # Stopped right after the update of step ``stop``: as a run of exactly ``stop`` steps.
    reference = small_model()
    training.train(reference, batches, loss, optim.Adam(reference.params, lr=0.05), stop,
                   progress=False)
    assert_params_equal(snapshot(model), snapshot(reference))


OPTIMIZERS = {"Adam": lambda params: optim.Adam(params, lr=0.03),
              "SGD": lambda params: optim.SGD(params, lr=0.05, momentum=0.9)}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_checkpoint_resume_is_equivalent_to_one_run(tmp_path, name):
    make = OPTIMIZERS[name]
    batches, loss = regression_batches(), losses.MeanSquaredError()

    whole = small_model(seed=0)
    whole_history = training.train(whole, batches, loss, make(whole.params), 20, clip=0.5,
                                   seed=3, progress=False)

    path = tmp_path / "run.npz"
    first = small_model(seed=0)
    first_history = training.train(first, batches, loss, make(first.params), 10, clip=0.5,
                                   seed=3, checkpoint=path, checkpoint_every=3, progress=False)
    assert first_history.losses == whole_history.losses[:10]

    # A new model (initialised differently) and a new optimizer pick up from the file.
    resumed = small_model(seed=42)
    assert not np.array_equal(resumed.params["W_f"], first.params["W_f"])
    resumed_history = training.train(resumed, batches, loss, make(resumed.params), 20,
                                     clip=0.5, seed=3, checkpoint=path, checkpoint_every=3,
                                     progress=False)
    assert resumed_history.losses == whole_history.losses
    assert_params_equal(snapshot(resumed), snapshot(whole))


def test_checkpoint_file_is_plain_arrays(tmp_path):
    path = tmp_path / "plain.npz"
    model = small_model()
    history = training.train(model, regression_batches(), losses.MeanSquaredError(),
                             optim.Adam(model.params, lr=0.01), 4, checkpoint=path,
                             progress=False)
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    assert all(array.dtype != object for array in arrays.values())
    for name, array in model.params.items():
        np.testing.assert_array_equal(arrays[f"param/{name}"], array)
    assert arrays["losses"].tolist() == history.losses
    meta = json.loads(str(arrays["meta"]))
    assert meta["format"] == training.CHECKPOINT_FORMAT
    assert meta["optimizer"] == "Adam"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "atomic.npz"
    batches, loss = regression_batches(), losses.MeanSquaredError()
    model = small_model()
    training.train(model, batches, loss, optim.Adam(model.params, lr=0.01), 3, checkpoint=path,
                   progress=False)
    good = path.read_bytes()
    calls = []

    def failing_savez(stream, *args, **kwargs):
        calls.append(1)
        stream.write(b"PK\x03\x04 half a checkpoint")
        stream.flush()
        raise OSError("disk full")

    monkeypatch.setattr(training.np, "savez", failing_savez)
    model = small_model()
    with pytest.raises(OSError, match="disk full"):
        training.train(model, batches, loss, optim.Adam(model.params, lr=0.01), 6,
                       checkpoint=path, checkpoint_every=1, progress=False)
    assert calls
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["atomic.npz"]


def _saved(tmp_path, variant="standard", make=OPTIMIZERS["Adam"], H=4, **gates):
    path = tmp_path / "saved.npz"
    model = small_model(variant, H=H, **gates)
    training.train(model, regression_batches(), losses.MeanSquaredError(), make(model.params),
                   2, checkpoint=path, progress=False)
    return path


def test_checkpoint_from_another_gate_composition_is_refused(tmp_path):
    # The linear use gate has exactly the parameters of the standard one; only the gate differs.
    path = _saved(tmp_path, use="linear")
    model = small_model("standard")
    assert set(model.params) == set(small_model(use="linear").params)
    before = snapshot(model)
    with pytest.raises(ValueError, match="'use': 'linear'"):
        training.train(model, regression_batches(), losses.MeanSquaredError(),
                       optim.Adam(model.params, lr=0.01), 4, checkpoint=path, progress=False)
    assert_params_equal(snapshot(model), before)


def test_checkpoint_from_another_optimizer_is_refused(tmp_path):
    path = _saved(tmp_path, make=OPTIMIZERS["Adam"])
    model = small_model()
    with pytest.raises(ValueError, match="Adam"):
        training.train(model, regression_batches(), losses.MeanSquaredError(),
                       OPTIMIZERS["SGD"](model.params), 4, checkpoint=path, progress=False)


def test_checkpoint_with_another_shape_is_refused(tmp_path):
    path = _saved(tmp_path, H=4)
    model = small_model(H=5)
    with pytest.raises(ValueError, match="shape"):
        training.load_checkpoint(path, model, OPTIMIZERS["Adam"](model.params),
                                 np.random.default_rng())


def test_checkpoint_from_a_newer_format_is_refused(tmp_path):
    path = _saved(tmp_path)
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    meta = json.loads(str(arrays["meta"]))
    newer = training.CHECKPOINT_FORMAT + 1
    meta["format"] = newer
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)

    model = small_model()
    with pytest.raises(ValueError, match=rf"format {newer}\b.*newer"):
        training.train(model, regression_batches(), losses.MeanSquaredError(),
                       optim.Adam(model.params, lr=0.01), 4, checkpoint=path, progress=False)


@pytest.mark.parametrize("bad_step", [1, 4])
def test_non_finite_input_stops_training_and_keeps_last_good_state(tmp_path, bad_step):
    clean = regression_batches()
    calls = []

    def batches(rng):
        x, target = clean(rng)
        calls.append(1)
        if len(calls) == bad_step:
            x[2, 1, 0] = np.nan
        return x, target

    path = tmp_path / "run.npz"
    loss = losses.MeanSquaredError()
    make = OPTIMIZERS["Adam"]
    model = small_model()
    history = training.train(model, batches, loss, make(model.params), 10, checkpoint=path,
                             checkpoint_every=1, progress=False)
    assert "non-finite" in history.stopped
    assert history.steps == bad_step - 1
    assert all(np.isfinite(history.losses))

    reference = small_model()
    reference_history = training.train(reference, clean, loss, make(reference.params),
                                       bad_step - 1, progress=False)
    assert history.losses == reference_history.losses
    assert_params_equal(snapshot(model), snapshot(reference))
    for array in model.params.values():
        assert np.all(np.isfinite(array))

    if bad_step == 1:
        assert not path.exists()       # nothing good to save yet
    else:
        with np.load(path, allow_pickle=False) as stored:
            for name, array in reference.params.items():
                np.testing.assert_array_equal(stored[f"param/{name}"], array)
            assert stored["losses"].tolist() == reference_history.losses


def test_train_clips_the_norm_of_the_parameter_gradients():
    batches, loss, clip = regression_batches(), losses.MeanSquaredError(), 1e-3
    model = small_model(dtype=np.float64)
    before = snapshot(model)
    x, target = batches(np.random.default_rng(0))
    _, grads = model.loss_and_grads(x, target, loss)
    grads = {name: grads[name] for name in model.params}
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert norm > clip
    # One plain gradient step of learning rate 1: the change is the clipped gradient.
    training.train(model, batches, loss, optim.SGD(model.params, lr=1.0, momentum=0.0), 1,
                   clip=clip, progress=False, seed=0)
    for name in model.params:
        np.testing.assert_allclose(before[name] - model.params[name],
                                   grads[name] * (clip / norm), rtol=1e-9, atol=1e-15,
                                   err_msg=name)


def test_input_noise_is_added_to_the_training_inputs():
    batches, loss, sigma = regression_batches(), losses.MeanSquaredError(), 0.5
    model = small_model(dtype=np.float64)
    before = snapshot(model)
    # The documented draws: the batch, then the noise, from the generator of the seed.
    rng = np.random.default_rng(7)
    x, target = batches(rng)
    noisy = x + rng.normal(0.0, sigma, x.shape)
    _, grads = model.loss_and_grads(noisy, target, loss)
    _, clean_grads = model.loss_and_grads(x, target, loss)
    training.train(model, batches, loss, optim.SGD(model.params, lr=1.0, momentum=0.0), 1,
                   progress=False, seed=7, input_noise=sigma)
    for name in model.params:
        np.testing.assert_allclose(before[name] - model.params[name], grads[name],
                                   rtol=1e-9, atol=1e-15, err_msg=name)
    assert not np.allclose(grads["W_y"], clean_grads["W_y"])
    with pytest.raises(ValueError, match=r"input_noise must be a standard deviation >= 0; "
                                         r"got -1"):
        training.train(model, batches, loss, optim.SGD(model.params), 1, progress=False,
                       input_noise=-1)


# ------------------------------------------------------------------------------------------
# 3. progress

LINE = re.compile(r"^step (\d+)/(\d+) \[[#.]+\] loss (\S+) \d+\.\ds$")


def test_progress_on_a_plain_stream_prints_lines_with_step_and_loss():
    stream = io.StringIO()
    bar = training.Progress(20, stream=stream)
    given = {step: 1.0 / step for step in range(1, 21)}
    for step, value in given.items():
        bar.update(step, value)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12          # about every tenth of the run, not every step
    for line in lines:
        match = LINE.match(line)
        assert match, line
        step = int(match.group(1))
        assert int(match.group(2)) == 20
        assert float(match.group(3)) == pytest.approx(given[step], abs=1e-5)
    assert LINE.match(lines[-1]).group(1) == "20"


def test_progress_on_a_terminal_redraws_one_line():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = training.Progress(5, stream=stream)
    for step in range(1, 6):
        bar.update(step, 0.5)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    assert "step 5/5" in text


def test_train_progress_goes_to_stderr(capsys):
    model = small_model()
    history = training.train(model, regression_batches(), losses.MeanSquaredError(),
                             optim.Adam(model.params, lr=0.01), 20, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines
    for line in lines:
        match = LINE.match(line)
        assert match, line
        step = int(match.group(1))
        assert match.group(3) == f"{history.losses[step - 1]:.5f}"
    assert LINE.match(lines[-1]).group(1) == "20"


def test_train_without_progress_is_silent(capsys):
    model = small_model()
    training.train(model, regression_batches(), losses.MeanSquaredError(),
                   optim.Adam(model.params, lr=0.01), 20, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ------------------------------------------------------------------------------------------
# 4. proof that training learns the adding problem

@pytest.mark.parametrize("variant", ["standard", "course"])
def test_adding_example_learns(variant, capsys):
    adding = load_example("adding")
    history = adding.run(variant, length=20, steps=500, progress=False)
    assert history.steps == 500
    assert np.mean(history.losses[-50:]) < tasks.AddingProblem.baseline_loss / 2
    assert capsys.readouterr().err == ""
