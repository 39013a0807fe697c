"""The DINO model: forward, loss wiring, EMA, fit logs, saving and resuming.

One shared 3-epoch run (2 steps per epoch) is checked for the logged
schedules; other tests build their own tiny models.
"""

import os

import keras
import numpy as np
import pytest

from keras_dino import callbacks
from keras_dino import losses
from keras_dino.models import DINO
from keras_dino.models import ViTBackbone
from keras_dino.optimizers import DINOAdamW
from keras_dino.schedules import DINOSchedule

BATCH, STEPS, EPOCHS = 4, 2, 3
BASE_LR = 0.1
LOG_KEYS = {
    "loss",
    "learning_rate",
    "weight_decay",
    "teacher_momentum",
    "teacher_temperature",
    "teacher_entropy",
    "kl",
}


def _schedule():
    return DINOSchedule.paper(
        batch_size=BATCH,
        steps_per_epoch=STEPS,
        epochs=EPOCHS,
        learning_rate=BASE_LR,
        warmup_epochs=1,
        teacher_momentum=0.99,
        warmup_teacher_temperature=0.06,
        teacher_temperature=0.04,
        warmup_teacher_temperature_epochs=2,
    )


def _compile(model):
    model.compile(optimizer=DINOAdamW(), schedule=_schedule())
    return model


class Recorder(keras.callbacks.Callback):
    """Per-step logs and the last-layer weights at each epoch end."""

    def __init__(self):
        super().__init__()
        self.steps, self.last_layer = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(v) for k, v in logs.items()})

    def on_epoch_end(self, epoch, logs=None):
        self.last_layer.append(
            keras.ops.convert_to_numpy(self.model.student_head.last_layer_v)
        )


def _state(model):
    return {
        "student": [keras.ops.convert_to_numpy(w) for w in model.weights],
        "optimizer": [
            keras.ops.convert_to_numpy(v) for v in model.optimizer.variables
        ],
    }


@pytest.fixture(scope="module")
def run(tiny):
    model = _compile(tiny.dino())
    initial = [tiny.np(w) for w in model.weights]
    recorder = Recorder()
    crops = tiny.crops(batch=BATCH * STEPS)
    history = model.fit(
        x=crops,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    return model, history, recorder, initial, crops


# --- forward and loss ---------------------------------------------------------


def test_call_groups_crops_by_resolution(tiny):
    model = tiny.dino()
    crops = tiny.crops()
    out = tiny.np(model(crops))
    assert out.shape == (4 * 4, 64)
    expected = np.concatenate(
        [tiny.np(model.student_head(model.student_backbone(c))) for c in crops]
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)
    teacher = tiny.np(model.teacher_logits(crops))
    assert teacher.shape == (2 * 4, 64)
    # Teacher starts as a copy of the student (without stochastic depth).
    np.testing.assert_allclose(teacher, out[:8], atol=1e-5)
    assert model.teacher_backbone.drop_path_rate == 0.0


def test_compute_loss_uses_current_center_then_updates_it(tiny):
    model = tiny.dino()
    model.compile(
        optimizer=DINOAdamW(),
        schedule=DINOSchedule(1, 1, teacher_temperature=0.05),
    )
    rng = np.random.default_rng(0)
    center0 = rng.normal(size=(1, 64)).astype("float32") * 0.1
    model.center.assign(center0)
    crops = tiny.crops()
    student = tiny.np(model(crops, training=False))
    teacher = tiny.np(model.teacher_logits(crops))
    expected = tiny.np(
        losses.dino_loss(student, teacher, center0, 0.05, num_crops=4)
    )
    loss = model.compute_loss(x=crops, y_pred=student, training=False)
    np.testing.assert_allclose(tiny.np(loss), expected, rtol=1e-5)
    np.testing.assert_array_equal(tiny.np(model.center), center0)
    loss = model.compute_loss(x=crops, y_pred=student, training=True)
    np.testing.assert_allclose(tiny.np(loss), expected, rtol=1e-5)
    new_center = 0.9 * center0 + 0.1 * teacher.mean(0, keepdims=True)
    np.testing.assert_allclose(tiny.np(model.center), new_center, atol=1e-6)


def test_teacher_ema_matches_numpy(tiny):
    model = tiny.dino()
    model.compile(
        optimizer=DINOAdamW(),
        schedule=DINOSchedule(
            10, 1, teacher_momentum=0.9, freeze_last_layer_epochs=0
        ),
    )
    rng = np.random.default_rng(1)
    for w in model.student_backbone.weights + model.student_head.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    model.iteration.assign(3)  # the step just taken is 3
    students = [
        tiny.np(w)
        for w in model.student_backbone.weights + model.student_head.weights
    ]
    teachers = [
        tiny.np(w)
        for w in model.teacher_backbone.weights + model.teacher_head.weights
    ]
    m = 1.0 + 0.5 * (0.9 - 1.0) * (1 + np.cos(np.pi * 3 / 10))
    if tiny.backend == "torch":
        import torch

        with torch.no_grad():
            logs = model._after_optimizer_step([])
    else:
        logs = model._after_optimizer_step([])
    assert float(tiny.np(logs["teacher_momentum"])) == pytest.approx(m)
    assert int(tiny.np(model.iteration)) == 4
    after = [
        tiny.np(w)
        for w in model.teacher_backbone.weights + model.teacher_head.weights
    ]
    for s, t, a in zip(students, teachers, after):
        np.testing.assert_allclose(a, m * t + (1 - m) * s, atol=1e-6)


# --- the shared fit run -------------------------------------------------------


def test_logs_contain_every_quantity(run):
    _, history, recorder, _, _ = run
    assert LOG_KEYS <= set(history.history)
    for step in recorder.steps:
        assert LOG_KEYS <= set(step)
        assert all(np.isfinite(list(step.values())))
    assert len(recorder.steps) == STEPS * EPOCHS


def test_logged_schedules_match_numpy(run):
    _, history, recorder, _, _ = run
    total = STEPS * EPOCHS
    s = np.arange(total)
    momentum = 1.0 + 0.5 * (0.99 - 1.0) * (1 + np.cos(np.pi * s / total))
    got = [step["teacher_momentum"] for step in recorder.steps]
    np.testing.assert_allclose(got, momentum, atol=1e-7)
    base = BASE_LR * BATCH / 256
    warm = STEPS
    cos = 1e-6 + 0.5 * (base - 1e-6) * (
        1 + np.cos(np.pi * np.arange(total - warm) / (total - warm))
    )
    lr = np.concatenate([np.linspace(0, base, warm), cos])
    got = [step["learning_rate"] for step in recorder.steps]
    np.testing.assert_allclose(got, lr, rtol=1e-5, atol=1e-9)
    wd = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * s / total))
    got = [step["weight_decay"] for step in recorder.steps]
    np.testing.assert_allclose(got, wd, rtol=1e-5)
    temps = np.repeat([0.06, 0.04, 0.04], STEPS)
    got = [step["teacher_temperature"] for step in recorder.steps]
    np.testing.assert_allclose(got, temps, rtol=1e-6)
    np.testing.assert_allclose(
        history.history["teacher_temperature"], [0.06, 0.04, 0.04], rtol=1e-6
    )


def test_entropy_and_kl_consistent(run):
    _, history, _, _, _ = run
    entropy = np.array(history.history["teacher_entropy"])
    kl = np.array(history.history["kl"])
    loss = np.array(history.history["loss"])
    assert np.all(entropy >= 0) and np.all(entropy <= np.log(64) + 1e-5)
    # kl = loss - entropy, averaged over the epoch's steps.
    np.testing.assert_allclose(kl, loss - entropy, atol=1e-4)


def test_last_layer_frozen_through_epoch_zero(run):
    model, _, recorder, initial, _ = run
    paths = [w.path for w in model.weights]
    v0 = initial[paths.index("student_head/last_layer_v")]
    np.testing.assert_array_equal(recorder.last_layer[0], v0)
    assert np.abs(recorder.last_layer[1] - v0).max() > 1e-4
    # The gain is fixed at 1 (norm_last_layer).
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.student_head.last_layer_g), 1.0
    )


def test_center_and_teacher_moved(run, tiny):
    model, _, _, initial, _ = run
    assert np.abs(tiny.np(model.center)).max() > 1e-4
    pairs = model._ema_pairs()
    index = {id(w): i for i, w in enumerate(model.weights)}
    moved = 0
    for student, teacher in pairs:
        t, s = tiny.np(teacher), tiny.np(student)
        moved += not np.allclose(t, initial[index[id(teacher)]], atol=1e-7)
        if student.trainable:
            assert not np.allclose(t, s, atol=1e-7), teacher.path
    assert moved >= len(pairs) - 2
    assert int(tiny.np(model.optimizer.iterations)) == STEPS * EPOCHS
    assert int(tiny.np(model.iteration)) == STEPS * EPOCHS
    assert not any(w.trainable for w in model.teacher_backbone.weights)


# --- saving and resuming -----------------------------------------------------


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


@pytest.mark.slow
def test_save_load_and_resume_equals_uninterrupted(run, tiny, tmp_path):
    model_a, history_a, _, initial, crops = run
    model_b = _compile(tiny.dino())
    for a, b in zip(initial, model_b.weights):
        np.testing.assert_array_equal(tiny.np(b), a)
    path = str(tmp_path / "dino.keras")
    model_b.fit(
        x=crops,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[
            keras.callbacks.ModelCheckpoint(path, save_freq="epoch"),
            StopAfterFirstEpoch(),
        ],
    )
    saved = _state(model_b)
    resumed = keras.saving.load_model(path)
    assert isinstance(resumed, DINO)
    assert isinstance(resumed.optimizer, DINOAdamW)
    assert isinstance(resumed.student_backbone, ViTBackbone)
    restored = _state(resumed)
    for a, b in zip(saved["student"], restored["student"]):
        np.testing.assert_array_equal(a, b)  # incl. center and teacher
    for a, b in zip(saved["optimizer"], restored["optimizer"]):
        np.testing.assert_array_equal(a, b)
    assert int(tiny.np(resumed.optimizer.iterations)) == STEPS
    assert int(tiny.np(resumed.iteration)) == STEPS
    assert resumed.schedule.get_config() == _schedule().get_config()
    np.testing.assert_array_equal(
        tiny.np(resumed.center), tiny.np(model_b.center)
    )

    history = resumed.fit(
        x=crops,
        batch_size=BATCH,
        epochs=EPOCHS,
        initial_epoch=1,
        shuffle=False,
        verbose=0,
    )
    np.testing.assert_allclose(
        history.history["loss"], history_a.history["loss"][1:], atol=1e-5
    )
    for a, b in zip(model_a.weights, resumed.weights):
        np.testing.assert_allclose(
            tiny.np(b), tiny.np(a), atol=1e-5, err_msg=a.path
        )
    for a, b in zip(model_a.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_allclose(
            tiny.np(b), tiny.np(a), atol=1e-5, rtol=1e-4, err_msg=a.path
        )


def test_config_round_trip(tiny):
    model = tiny.dino(norm_last_layer=False)
    config = model.get_config()
    clone = DINO.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    crops = tiny.crops()
    np.testing.assert_allclose(
        tiny.np(clone(crops)), tiny.np(model(crops)), atol=1e-6
    )
    assert clone.student_head.last_layer_g.trainable


def test_keras_saving_uncompiled(tiny, tmp_path):
    model = tiny.dino()
    model.center.assign(np.full((1, 64), 0.5, "float32"))
    crops = tiny.crops()
    reloaded = tiny.save_and_reload(model, tmp_path)
    np.testing.assert_allclose(
        tiny.np(reloaded(crops)), tiny.np(model(crops)), atol=1e-6
    )
    np.testing.assert_allclose(
        tiny.np(reloaded.teacher_logits(crops)),
        tiny.np(model.teacher_logits(crops)),
        atol=1e-6,
    )
    np.testing.assert_array_equal(tiny.np(reloaded.center), 0.5)


# --- the teacher backbone on its own ------------------------------------------


@pytest.mark.slow
def test_teacher_backbone_fine_tunes_in_other_models(run, tiny, tmp_path):
    model, _, _, _, crops = run
    path = str(tmp_path / "teacher.keras")
    model.teacher_backbone.save(path)
    images = crops[0]
    labels = np.arange(len(images)) % 3
    expected = tiny.np(model.teacher_backbone(images))

    def fit(classifier, backbone, frozen):
        backbone.trainable = not frozen
        before = [tiny.np(w) for w in backbone.weights]
        classifier.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss="sparse_categorical_crossentropy",
        )
        classifier.fit(images, labels, batch_size=4, epochs=1, verbose=0)
        after = [tiny.np(w) for w in backbone.weights]
        changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
        return changed

    backbone = keras.saving.load_model(path)
    assert isinstance(backbone, ViTBackbone)
    np.testing.assert_allclose(tiny.np(backbone(images)), expected, atol=1e-6)
    sequential = keras.Sequential(
        [backbone, keras.layers.Dense(3, activation="softmax")]
    )
    assert not any(fit(sequential, backbone, frozen=True))

    backbone = keras.saving.load_model(path)
    inputs = keras.Input(shape=(32, 32, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(backbone(inputs))
    functional = keras.Model(inputs, outputs)
    assert all(fit(functional, backbone, frozen=False))
    reloaded = tiny.save_and_reload(functional, tmp_path, "functional.keras")
    np.testing.assert_allclose(
        tiny.np(reloaded(images)), tiny.np(functional(images)), atol=1e-6
    )


# --- failure modes ------------------------------------------------------------


def test_clear_errors(tiny):
    model = tiny.dino()
    crops = tiny.crops()
    with pytest.raises(ValueError, match="multiple of the patch"):
        model((crops[0], crops[1], crops[2][:, :15, :15]))
    with pytest.raises(ValueError, match="tuple of crop batches"):
        model(crops[0])
    with pytest.raises(ValueError, match="tuple of crop batches"):
        model((crops[0],))
    with pytest.raises(ValueError, match="optimizer"):
        model.compile()
    with pytest.raises(ValueError, match="optimizer"):
        model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="schedule"):
        model.compile(optimizer=DINOAdamW())
    with pytest.raises(ValueError, match="loss"):
        model.compile(
            optimizer=DINOAdamW(), schedule=DINOSchedule(1, 1), loss="mse"
        )
    model.compile(optimizer=DINOAdamW(), schedule=DINOSchedule(1, 1))
    with pytest.raises(ValueError, match="tuple of crop batches"):
        model.fit(x=crops[0], batch_size=4, epochs=1, verbose=0)


def test_replicas_outside_tf_distribute():
    from keras_dino.utils.distribution import num_replicas_in_sync
    from keras_dino.utils.distribution import scale_loss_for_replicas

    # On every backend outside a strategy the loss is not rescaled.
    assert num_replicas_in_sync() == 1
    assert scale_loss_for_replicas(2.5) == 2.5


def test_non_finite_loss_stops_fit_and_keeps_checkpoint(run, tmp_path):
    # Kept last in the module: it trains the shared model further (which
    # reuses its compiled train function).
    model, _, _, _, crops = run
    path = str(tmp_path / "checkpoint.keras")
    checkpoint = keras.callbacks.ModelCheckpoint(path, save_freq=1)
    model.fit(
        x=crops,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[checkpoint],
    )
    assert os.path.exists(path)
    stat = os.stat(path)
    with open(path, "rb") as f:
        content = f.read()
    bad = tuple(c.copy() for c in crops)
    bad[2][0, 0, 0, 0] = np.nan
    with pytest.raises(callbacks.NonFiniteLossError, match="nan"):
        model.fit(
            x=bad,
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[checkpoint],
        )
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    with open(path, "rb") as f:
        assert f.read() == content


@pytest.mark.slow
def test_mixed_bfloat16_keeps_heads_loss_and_weights_in_float32(tiny):
    model = tiny.dino(
        backbone=tiny.backbone(dtype="mixed_bfloat16"), dtype="mixed_bfloat16"
    )
    for backbone in (model.student_backbone, model.teacher_backbone):
        assert backbone.get_layer("block_0").compute_dtype == "bfloat16"
    assert model.student_head.compute_dtype == "float32"
    assert model.teacher_head.compute_dtype == "float32"
    assert all(w.dtype in ("float32", "int32") for w in model.weights)
    reference = tiny.dino()
    reference.set_weights(model.get_weights())
    crops = tiny.crops()
    mixed = model.compute_loss(x=crops, training=False)
    exact = reference.compute_loss(x=crops, training=False)
    assert "float32" in str(mixed.dtype)
    assert float(tiny.np(mixed)) != float(tiny.np(exact))
    np.testing.assert_allclose(tiny.np(mixed), tiny.np(exact), rtol=2e-2)
    model.compile(
        optimizer=DINOAdamW(),
        schedule=DINOSchedule.paper(
            batch_size=BATCH,
            steps_per_epoch=1,
            epochs=2,
            learning_rate=BASE_LR,
            warmup_epochs=1,
        ),
    )
    before = [tiny.np(w) for w in model.teacher_backbone.weights]
    # Two epochs of one step: the warm-up learning rate is 0 at step 0.
    history = model.fit(x=crops, batch_size=BATCH, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = [tiny.np(w) for w in model.teacher_backbone.weights]
    change = max(np.abs(a - b).max() for a, b in zip(before, after))
    assert change > 1e-6  # EMA rounding alone moves it by ~4e-9
