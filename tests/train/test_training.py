"""Fitting: losses, optimizers, clipping, initialisers, the readout model, the training loop
with its checkpoints and progress bar, and proof that training learns the adding problem.

Every expected value comes from an oracle written here: a NumPy formula, a centred finite
difference, an update rule copied from its paper, or the same run repeated from scratch.
"""
import importlib.util
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

import gatekit
from gatekit.nn import initialisers as init
from gatekit.nn import losses
from gatekit.nn import optimisers as optim
from gatekit.study import tasks
from gatekit.train import training
from support import REPO


# ------------------------------------------------------------------------------------------
# helpers

def centred_difference(f, array, eps=1e-6):
    """d f() / d array by centred differences, perturbing ``array`` in place."""
    grad = np.zeros(array.shape, dtype=np.float64)
    flat = array.reshape(-1)          # a view: the arrays used here are contiguous
    assert np.shares_memory(flat, array)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + eps
        up = f()
        flat[k] = saved - eps
        down = f()
        flat[k] = saved
        grad.reshape(-1)[k] = (up - down) / (2 * eps)
    return grad


def mse_by_hand(outputs, target):
    """Mean squared error, as a plain sum over every entry divided by their count."""
    total, count = 0.0, 0
    for index in np.ndindex(*outputs.shape):
        total += (float(outputs[index]) - float(target[index])) ** 2
        count += 1
    return total / count


def cross_entropy_by_hand(logits, target, ignore_index):
    """-log softmax(logits)[target], averaged over the labelled positions (loops, log-sum-exp
    written out)."""
    total, count = 0.0, 0
    for index in np.ndindex(*target.shape):
        label = int(target[index])
        if label == ignore_index:
            continue
        row = [float(v) for v in logits[index]]
        top = max(row)
        log_normaliser = top + math.log(sum(math.exp(v - top) for v in row))
        total += log_normaliser - row[label]
        count += 1
    return total / max(count, 1)


def small_model(variant="standard", output_size=2, seed=0, dtype=np.float32, D=2, H=4):
    cell = gatekit.Cell(D, H, variant, dtype=dtype, seed=seed)
    return training.Model(cell, output_size, seed=seed + 100)


def regression_batches(T=5, B=3, D=2, O=2):
    def batches(rng):
        x = rng.normal(size=(T, B, D))
        target = np.tanh(np.cumsum(x, axis=0)[..., :O])
        return x, target
    return batches


def snapshot(model):
    return {name: np.array(array, copy=True) for name, array in model.params.items()}


def assert_params_equal(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# 1. losses

@pytest.mark.parametrize("last_step_only", [False, True])
def test_mean_squared_error_value_and_gradient(last_step_only):
    rng = np.random.default_rng(1)
    T, B, O = 4, 3, 2
    outputs = rng.normal(size=(T, B, O))
    target = rng.normal(size=(B, O) if last_step_only else (T, B, O))
    loss = losses.MeanSquaredError(last_step_only=last_step_only)

    value, grad = loss(outputs, target)
    scored = outputs[-1] if last_step_only else outputs
    assert value == pytest.approx(mse_by_hand(scored, target), rel=1e-12)
    assert grad.shape == outputs.shape

    numeric = centred_difference(lambda: mse_by_hand(outputs[-1] if last_step_only else outputs,
                                                     target), outputs)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    if last_step_only:
        assert not grad[:-1].any()


@pytest.mark.parametrize("last_step_only", [False, True])
@pytest.mark.parametrize("ignore_index", [-1, 7])
def test_softmax_cross_entropy_value_and_gradient(last_step_only, ignore_index):
    rng = np.random.default_rng(2)
    T, B, O = 4, 5, 3
    outputs = rng.normal(scale=2.0, size=(T, B, O))
    target = rng.integers(0, O, (B,) if last_step_only else (T, B))
    # Some positions carry no label.
    target.reshape(-1)[[1, 3]] = ignore_index
    loss = losses.SoftmaxCrossEntropy(last_step_only=last_step_only, ignore_index=ignore_index)

    value, grad = loss(outputs, target)

    def by_hand():
        scored = outputs[-1] if last_step_only else outputs
        return cross_entropy_by_hand(scored, target, ignore_index)

    assert value == pytest.approx(by_hand(), rel=1e-12)
    assert grad.shape == outputs.shape
    np.testing.assert_allclose(grad, centred_difference(by_hand, outputs), rtol=1e-6, atol=1e-9)
    # Unlabelled positions (and, with last_step_only, earlier steps) get no gradient.
    scored_grad = grad[-1] if last_step_only else grad
    assert not scored_grad[target == ignore_index].any()
    if last_step_only:
        assert not grad[:-1].any()


def test_softmax_cross_entropy_every_position_ignored_scores_zero():
    loss = losses.SoftmaxCrossEntropy(ignore_index=-1)
    value, grad = loss(np.ones((2, 2, 3)), np.full((2, 2), -1))
    assert value == 0.0
    assert not grad.any()


def test_softmax_cross_entropy_large_logits_stay_finite():
    outputs = np.array([[[1000.0, 0.0, -1000.0],
                         [1000.0, 0.0, -1000.0]]])          # (T=1, B=2, O=3)
    target = np.array([[0, 1]])
    value, grad = losses.SoftmaxCrossEntropy()(outputs, target)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Batch 0 is right with certainty (loss 0), batch 1 is wrong by 1000: mean 500.
    assert value == pytest.approx(500.0, rel=1e-12)
    # d/dlogits = (softmax - onehot) / count, with softmax = (1, 0, 0) to double precision.
    np.testing.assert_allclose(grad[0], [[0, 0, 0], [0.5, -0.5, 0]], atol=1e-300)

    value32, grad32 = losses.SoftmaxCrossEntropy()(outputs.astype(np.float32), target)
    assert np.isfinite(value32) and np.all(np.isfinite(grad32))
    assert value32 == pytest.approx(500.0, rel=1e-6)


def test_softmax_cross_entropy_rejects_non_integer_targets():
    loss = losses.SoftmaxCrossEntropy()
    with pytest.raises(TypeError, match="integer"):
        loss(np.zeros((2, 3, 4)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="integer"):
        losses.SoftmaxCrossEntropy(last_step_only=True)(np.zeros((2, 3, 4)),
                                                         np.array([0.0, 1.0, 2.0]))


# ------------------------------------------------------------------------------------------
# 2. optimizers and clipping

def _params_and_gradients(steps=4):
    rng = np.random.default_rng(3)
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=3)}
    gradients = [{name: rng.normal(size=p.shape) for name, p in params.items()}
                 for _ in range(steps)]
    return params, gradients


def test_sgd_momentum_matches_heavy_ball_by_hand():
    params, gradients = _params_and_gradients()
    lr, mu = 0.1, 0.8
    expected = {name: p.copy() for name, p in params.items()}
    velocity = {name: np.zeros_like(p) for name, p in params.items()}
    sgd = optim.SGD(params, lr=lr, momentum=mu)
    for g in gradients:
        sgd.step({name: v.copy() for name, v in g.items()})
        for name in expected:
            # Polyak's heavy ball as PyTorch writes it: v <- mu v + g; theta <- theta - lr v.
            velocity[name] = mu * velocity[name] + g[name]
            expected[name] = expected[name] - lr * velocity[name]
            np.testing.assert_allclose(params[name], expected[name], rtol=1e-13, atol=1e-15)


def test_adam_matches_kingma_ba_algorithm_1():
    params, gradients = _params_and_gradients()
    alpha, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    expected = {name: p.copy() for name, p in params.items()}
    m = {name: np.zeros_like(p) for name, p in params.items()}
    v = {name: np.zeros_like(p) for name, p in params.items()}
    adam = optim.Adam(params, lr=alpha, betas=(beta1, beta2), eps=eps)
    for t, g in enumerate(gradients, start=1):
        adam.step({name: a.copy() for name, a in g.items()})
        for name in expected:
            m[name] = beta1 * m[name] + (1 - beta1) * g[name]
            v[name] = beta2 * v[name] + (1 - beta2) * g[name] ** 2
            m_hat = m[name] / (1 - beta1 ** t)
            v_hat = v[name] / (1 - beta2 ** t)
            expected[name] = expected[name] - alpha * m_hat / (np.sqrt(v_hat) + eps)
            np.testing.assert_allclose(params[name], expected[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make", [lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
                                  lambda p: optim.Adam(p, lr=0.01)], ids=["SGD", "Adam"])
def test_optimizer_state_dict_round_trip(make):
    params, gradients = _params_and_gradients(steps=6)
    first = make(params)
    for g in gradients[:3]:
        first.step(g)
    # Through an .npz file without pickle, as checkpoints store it.
    buffer = io.BytesIO()
    np.savez(buffer, **first.state_dict())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as stored:
        state = {key: stored[key] for key in stored.files}

    twin_params = {name: p.copy() for name, p in params.items()}
    second = make(twin_params)
    second.load_state_dict(state)
    for g in gradients[3:]:
        first.step(g)
        second.step(g)
        assert_params_equal(twin_params, params)
    assert second.steps == first.steps == 6


def test_clip_grad_norm_clips_joint_norm_keeping_direction():
    rng = np.random.default_rng(4)
    grads = {"a": rng.normal(size=(3, 4)) * 5, "b": rng.normal(size=7) * 5}
    original = {name: g.copy() for name, g in grads.items()}
    joint = math.sqrt(sum(float((g ** 2).sum()) for g in original.values()))
    assert joint > 2.0

    returned = optim.clip_grad_norm(grads, 2.0)
    assert returned == pytest.approx(joint, rel=1e-12)
    clipped = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert clipped == pytest.approx(2.0, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], original[name] * (2.0 / joint), rtol=1e-12)


def test_clip_grad_norm_leaves_small_gradients_alone():
    grads = {"a": np.array([0.3, -0.4]), "b": np.array([[0.0, 0.0]])}   # norm 0.5
    original = {name: g.copy() for name, g in grads.items()}
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(0.5, rel=1e-15)
    assert_params_equal(grads, original)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_with_non_finite_gradient_touches_nothing(bad):
    grads = {"a": np.array([3.0, bad]), "b": np.array([40.0, 50.0])}
    original = {name: g.copy() for name, g in grads.items()}
    norm = optim.clip_grad_norm(grads, 1.0)
    assert not np.isfinite(norm)
    for name in grads:
        np.testing.assert_array_equal(grads[name], original[name])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_clip_grad_norm_clips_huge_but_finite_float32_gradients():
    grads = {"a": np.array([3e20, -4e20], np.float32)}
    assert np.all(np.isfinite(grads["a"]))
    norm = optim.clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5e20, rel=1e-6)
    np.testing.assert_allclose(grads["a"], [0.6, -0.8], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# 3. initialisers

def test_forget_bias_sets_b_f_only():
    cell = gatekit.Cell(3, 5, "standard", seed=0)
    before = snapshot(training.Model(cell, 1))
    init.forget_bias(cell, 2.5)
    np.testing.assert_array_equal(cell.params["b_f"], np.full(5, 2.5, np.float32))
    for name in cell.params:
        if name != "b_f":
            np.testing.assert_array_equal(cell.params[name], before[name])
    init.forget_bias(cell)
    np.testing.assert_array_equal(cell.params["b_f"], np.ones(5, np.float32))


@pytest.mark.parametrize("variant", ["standard", "janet"])
@pytest.mark.parametrize("T_max", [3, 50, 1000])
def test_chrono_initialisation(variant, T_max):
    cell = gatekit.Cell(3, 64, variant, seed=0)
    init.chrono(cell, T_max, seed=1)
    b_f = np.asarray(cell.params["b_f"])
    upper = np.asarray(np.log(T_max - 1), dtype=cell.dtype)   # rounding is monotonic
    assert np.all(b_f >= 0) and np.all(b_f <= upper)
    assert np.ptp(b_f) > 0                     # drawn, not a constant
    if "b_i" in cell.params:
        np.testing.assert_array_equal(cell.params["b_i"], -b_f)
    else:
        assert variant == "janet"
    # Same seed, same draw.
    other = gatekit.Cell(3, 64, variant, seed=5)
    init.chrono(other, T_max, seed=1)
    np.testing.assert_array_equal(other.params["b_f"], b_f)


@pytest.mark.parametrize("T_max", [2, 1, 0, -3])
def test_chrono_rejects_short_horizons(T_max):
    cell = gatekit.Cell(2, 3, "standard", seed=0)
    with pytest.raises(ValueError, match="T_max"):
        init.chrono(cell, T_max)


def test_initialisers_need_a_forget_bias():
    cell = gatekit.Cell(2, 3, "nfg", seed=0)
    assert "b_f" not in cell.params
    with pytest.raises(ValueError, match="b_f"):
        init.forget_bias(cell, 1.0)
    with pytest.raises(ValueError, match="b_f"):
        init.chrono(cell, 10)


# ------------------------------------------------------------------------------------------
# 4. the model's gradients

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
        numeric = centred_difference(objective, array)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


# ------------------------------------------------------------------------------------------
# 5. the training loop

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


def _saved(tmp_path, variant="standard", make=OPTIMIZERS["Adam"], H=4):
    path = tmp_path / "saved.npz"
    model = small_model(variant, H=H)
    training.train(model, regression_batches(), losses.MeanSquaredError(), make(model.params),
                   2, checkpoint=path, progress=False)
    return path


def test_checkpoint_from_another_gate_composition_is_refused(tmp_path):
    # "softsign" has exactly the parameters of "standard"; only the use gate differs.
    path = _saved(tmp_path, "softsign")
    model = small_model("standard")
    assert set(model.params) == set(small_model("softsign").params)
    before = snapshot(model)
    with pytest.raises(ValueError, match="softsign"):
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


# ------------------------------------------------------------------------------------------
# 6. progress

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
# 7. the adding problem, and proof that training learns it

@pytest.mark.parametrize("length", [2, 7, 20])
def test_adding_problem_sample(length):
    task = tasks.AddingProblem(length)
    B = 64
    x, target = task.sample(B, np.random.default_rng(5))
    assert x.shape == (length, B, 2) and target.shape == (B, 1)
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(markers)) <= {0.0, 1.0}
    half = length // 2
    for b in range(B):
        marked = np.flatnonzero(markers[:, b])
        assert len(marked) == 2
        assert marked[0] < half <= marked[1]
        assert target[b, 0] == pytest.approx(values[marked[0], b] + values[marked[1], b],
                                              rel=1e-15)

    again = task.sample(B, np.random.default_rng(5))
    np.testing.assert_array_equal(again[0], x)
    np.testing.assert_array_equal(again[1], target)
    different = task.sample(B, np.random.default_rng(6))
    assert not np.array_equal(different[0], x)


def test_adding_problem_rejects_short_sequences():
    with pytest.raises(ValueError, match="length"):
        tasks.AddingProblem(1)


@pytest.mark.parametrize("variant", ["standard", "course"])
def test_adding_example_learns(variant, capsys):
    adding = load_example("adding")
    history = adding.run(variant, length=20, steps=500, progress=False)
    assert history.steps == 500
    assert np.mean(history.losses[-50:]) < tasks.AddingProblem.baseline_loss / 2
    assert capsys.readouterr().err == ""
