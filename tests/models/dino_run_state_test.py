"""One owner for the run's state: every way of splitting or resuming a run
gives the uninterrupted run, with any Keras optimizer.

Each case trains a tiny DINO on fixed crops (2 steps per epoch) and is
compared step by step (schedule values and losses) and weight by weight
with one uninterrupted `fit`.
"""

import keras
import numpy as np
import pytest

from keras_dino.models import DINO
from keras_dino.optimizers import DINOSGD
from keras_dino.optimizers import DINOAdamW
from keras_dino.schedules import DINOSchedule

BATCH, STEPS, EPOCHS = 4, 2, 3
STEP_KEYS = (
    "loss",
    "learning_rate",
    "weight_decay",
    "teacher_momentum",
    "teacher_temperature",
)


def _schedule(**overrides):
    args = {
        "steps_per_epoch": STEPS,
        "epochs": EPOCHS,
        "learning_rate": 0.01,
        "warmup_epochs": 1,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "teacher_momentum": 0.9,
        "warmup_teacher_temperature": 0.07,
        "warmup_teacher_temperature_epochs": 2,
        "freeze_last_layer_epochs": 1,
    }
    args.update(overrides)
    return DINOSchedule(**args)


class Recorder(keras.callbacks.Callback):
    """Per-step logs (never touches the model)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(logs[k]) for k in STEP_KEYS})


class Crash(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _model(tiny, optimizer=None, schedule=None):
    model = tiny.dino()
    model.compile(
        optimizer=optimizer or DINOAdamW(clip_norm=3.0),
        schedule=schedule or _schedule(),
    )
    return model


def _fit(model, crops, steps, **kwargs):
    kwargs.setdefault("epochs", EPOCHS)
    callbacks = [Recorder(steps)] + kwargs.pop("callbacks", [])
    return model.fit(
        x=crops,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
        **kwargs,
    )


@pytest.fixture(scope="module")
def straight(tiny):
    crops = tiny.crops(batch=BATCH * STEPS)
    model = _model(tiny)
    steps = []
    _fit(model, crops, steps)
    return crops, steps, [tiny.np(w) for w in model.weights]


def _assert_same_run(tiny, straight, model, steps):
    _, expected_steps, expected_weights = straight
    assert len(steps) == len(expected_steps) == STEPS * EPOCHS
    for key in STEP_KEYS:
        np.testing.assert_allclose(
            [s[key] for s in steps],
            [s[key] for s in expected_steps],
            rtol=1e-5,
            atol=1e-6,
            err_msg=key,
        )
    for w, expected in zip(model.weights, expected_weights):
        np.testing.assert_allclose(
            tiny.np(w), expected, atol=2e-5, err_msg=w.path
        )
    assert int(tiny.np(model.iteration)) == STEPS * EPOCHS


def test_the_straight_run_follows_its_schedule(straight):
    _, steps, _ = straight
    temps = [s["teacher_temperature"] for s in steps]
    np.testing.assert_allclose(temps, np.repeat([0.07, 0.04, 0.04], 2))
    lrs = [s["learning_rate"] for s in steps]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.01)


@pytest.mark.slow
def test_fit_one_epoch_in_a_loop(tiny, straight):
    crops = straight[0]
    model, steps = _model(tiny), []
    for _ in range(EPOCHS):
        _fit(model, crops, steps, epochs=1)
    _assert_same_run(tiny, straight, model, steps)


def test_fit_with_initial_epoch(tiny, straight):
    crops = straight[0]
    model, steps = _model(tiny), []
    _fit(model, crops, steps, epochs=1)
    _fit(model, crops, steps, initial_epoch=1)
    _assert_same_run(tiny, straight, model, steps)


@pytest.mark.slow
def test_keras_file_round_trip_mid_run(tiny, straight, tmp_path):
    crops = straight[0]
    model, steps = _model(tiny), []
    _fit(model, crops, steps, epochs=2)
    path = str(tmp_path / "mid.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, DINO)
    assert reloaded.schedule.get_config() == model.schedule.get_config()
    _fit(reloaded, crops, steps, initial_epoch=2)
    _assert_same_run(tiny, straight, reloaded, steps)


@pytest.mark.slow
def test_backup_and_restore_after_a_crash(tiny, straight, tmp_path):
    crops = straight[0]
    backup = str(tmp_path / "backup")
    model, steps = _model(tiny), []
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(
            model,
            crops,
            steps,
            callbacks=[keras.callbacks.BackupAndRestore(backup), Crash(1)],
        )
    # The backup was written at the end of epoch 1, before the crash. A new
    # process builds the model afresh; fit resumes from the backup.
    assert len(steps) == 2 * STEPS
    model = _model(tiny)
    _fit(
        model,
        crops,
        steps,
        callbacks=[keras.callbacks.BackupAndRestore(backup)],
    )
    _assert_same_run(tiny, straight, model, steps)


def test_a_wrong_initial_epoch_is_refused(tiny, straight):
    model = _model(tiny)
    _fit(model, straight[0], [], epochs=1)
    with pytest.raises(ValueError, match="initial_epoch=1"):
        _fit(model, straight[0], [], initial_epoch=2)


# --- the last-layer freeze with any optimizer --------------------------------


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: DINOAdamW(clip_norm=3.0),
        lambda: DINOSGD(clip_norm=3.0),
        lambda: keras.optimizers.AdamW(weight_decay=0.04, clipnorm=3.0),
        lambda: keras.optimizers.SGD(momentum=0.9),
    ],
    ids=["DINOAdamW", "DINOSGD", "AdamW", "SGD"],
)
def test_last_layer_frozen_for_exactly_three_epochs(tiny, make_optimizer):
    optimizer = make_optimizer()
    stock = not getattr(optimizer, "follows_weight_decay_schedule", False)
    wd = {"weight_decay": 0.04, "weight_decay_end": 0.04}
    if isinstance(optimizer, keras.optimizers.SGD):
        wd = {"weight_decay": None, "weight_decay_end": None}
    schedule = _schedule(
        epochs=4, freeze_last_layer_epochs=3, **(wd if stock else {})
    )
    model = _model(tiny, optimizer, schedule)
    crops = tiny.crops(batch=BATCH * STEPS)
    v0 = tiny.np(model.student_head.last_layer_v)
    slots = model._step_variables.frozen[1:]
    assert slots, "the last layer's optimizer slots were not found"
    slots0 = [tiny.np(s) for s in slots]
    # The slots are the optimizer's, not weights of the model.
    assert not {id(s) for s in slots} & {id(w) for w in model.weights}
    for epoch in range(4):
        _fit(model, crops, [], epochs=1)
        v = tiny.np(model.student_head.last_layer_v)
        if epoch < 3:
            np.testing.assert_array_equal(v, v0)
            for slot, before in zip(slots, slots0):
                np.testing.assert_array_equal(tiny.np(slot), before)
        else:
            assert np.abs(v - v0).max() > 1e-5
    # The rest of the head trained from the first step.
    assert not np.allclose(
        tiny.np(model.student_head.weights[0]),
        tiny.np(model.teacher_head.weights[0]),
    )


def test_stock_optimizer_decay_excludes_biases_and_norms(tiny):
    model = _model(
        tiny,
        keras.optimizers.AdamW(weight_decay=0.04),
        _schedule(weight_decay_end=0.04),
    )
    optimizer = model.optimizer
    for v in model.trainable_variables:
        expected = len(v.shape) > 1 and not v.name.endswith("bias")
        assert optimizer._use_weight_decay(v) == expected, v.path


def test_the_optimizers_own_float_learning_rate(tiny):
    # DINOAdamW(learning_rate=<float>) once crashed fit on JAX; with the
    # schedule's learning rate off, the optimizer's float is used and logged.
    model = _model(
        tiny,
        DINOAdamW(learning_rate=1e-3),
        _schedule(learning_rate=None),
    )
    steps = []
    _fit(model, tiny.crops(batch=BATCH * STEPS), steps, epochs=1)
    np.testing.assert_allclose([s["learning_rate"] for s in steps], 1e-3)
    assert np.isfinite([s["loss"] for s in steps]).all()


def test_conflicting_optimizer_settings_are_refused(tiny):
    model = tiny.dino()
    decaying = keras.optimizers.schedules.CosineDecay(1e-3, 10)
    with pytest.raises(ValueError, match="learning-rate schedule"):
        model.compile(
            optimizer=keras.optimizers.AdamW(decaying), schedule=_schedule()
        )
    # The optimizer's own schedule is kept when the DINOSchedule has none.
    model.compile(
        optimizer=keras.optimizers.SGD(decaying),
        schedule=_schedule(
            learning_rate=None, weight_decay=None, weight_decay_end=None
        ),
    )
    with pytest.raises(ValueError, match="constant weight_decay"):
        model.compile(
            optimizer=keras.optimizers.AdamW(weight_decay=0.004),
            schedule=_schedule(),
        )


# --- loss scaling (the float16 path), forced on float32 ----------------------


def test_loss_scaling_gives_the_unscaled_run(tiny, straight):
    crops = straight[0]
    steps = []
    model = _model(
        tiny,
        keras.optimizers.LossScaleOptimizer(
            DINOAdamW(clip_norm=3.0), initial_scale=2.0**10
        ),
    )
    _fit(model, crops, steps)
    _assert_same_run(tiny, straight, model, steps)
    assert float(tiny.np(model.optimizer.dynamic_scale)) == 2.0**10


def test_a_non_finite_step_is_skipped_but_the_run_advances(tiny):
    crops = tiny.crops(batch=BATCH)
    # A scale of 1e38 overflows the scaled loss: every gradient is inf.
    optimizer = keras.optimizers.LossScaleOptimizer(
        DINOAdamW(clip_norm=3.0), initial_scale=1e38
    )
    model = _model(tiny, optimizer, _schedule(steps_per_epoch=1))
    rng = np.random.default_rng(0)
    pairs = model._ema_pairs()
    for _, teacher in pairs:
        teacher.assign(
            tiny.np(teacher) + rng.normal(size=teacher.shape).astype("f") * 0.1
        )
    students = [tiny.np(s) for s, _ in pairs]
    teachers = [tiny.np(t) for _, t in pairs]
    steps = []
    history = _fit(model, crops, steps, epochs=1)
    assert np.isfinite(history.history["loss"][0])
    # No update: student and optimizer untouched, the scale halved.
    for (student, _), before in zip(pairs, students):
        np.testing.assert_array_equal(tiny.np(student), before)
    assert int(tiny.np(optimizer.iterations)) == 0
    assert float(tiny.np(optimizer.dynamic_scale)) == pytest.approx(5e37)
    # As in the reference, the iteration still counts: the teacher EMA ran
    # with the momentum of iteration 0 and the schedules moved on.
    assert int(tiny.np(model.iteration)) == 1
    m = 0.9
    for (_, teacher), s, t in zip(pairs, students, teachers):
        np.testing.assert_allclose(
            tiny.np(teacher), m * t + (1 - m) * s, atol=1e-6
        )
    assert np.abs(tiny.np(model.center)).max() > 0
    _fit(model, crops, steps, epochs=1)
    assert steps[0]["learning_rate"] == 0.0
    assert steps[1]["learning_rate"] == pytest.approx(0.01)
    assert int(tiny.np(model.iteration)) == 2


# --- BatchNorm backbones ------------------------------------------------------


def _bn_backbone():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="cnn")


def test_batch_norm_teacher_uses_batch_statistics(tiny):
    keras.utils.set_random_seed(0)
    model = DINO(_bn_backbone(), out_dim=16, hidden_dim=8, bottleneck_dim=4)
    model.compile(optimizer=DINOAdamW(), schedule=_schedule(steps_per_epoch=1))
    teacher_paths = {
        v.path
        for v in model.teacher_backbone.weights + model.teacher_head.weights
    }
    trained = {v.path for v in model.trainable_variables}
    assert not (
        {id(v) for v in model.trainable_variables}
        & {id(v) for v in model.teacher_backbone.weights}
    ), trained & teacher_paths
    crops = tiny.crops(batch=BATCH)
    # In training the teacher normalises with the batch statistics: the
    # same network made trainable (Keras's own train-mode BatchNorm) gives
    # the same features.
    clone = keras.Model.from_config(model.teacher_backbone.get_config())
    clone.set_weights(model.teacher_backbone.get_weights())
    batch = np.concatenate(crops[:2])
    features = tiny.np(model.teacher_backbone(batch, training=True))
    np.testing.assert_allclose(
        features, tiny.np(clone(batch, training=True)), atol=1e-5
    )
    inference = tiny.np(model.teacher_backbone(batch, training=False))
    assert np.abs(features - inference).max() > 1e-3
    bn = model.teacher_backbone.get_layer("bn")
    model.fit(x=crops, batch_size=BATCH, epochs=1, verbose=0)
    # Its running statistics follow its own batches (not the EMA).
    assert np.abs(tiny.np(bn.moving_mean)).max() > 1e-4
    student_bn = model.student_backbone.get_layer("bn")
    assert not np.allclose(
        tiny.np(bn.moving_mean), tiny.np(student_bn.moving_mean)
    )
    assert not any(v.trainable for v in model.teacher_backbone.weights)


def test_jit_compile_warning_only_for_torch_compile(tiny):
    """`jit_compile=True` warns on PyTorch (torch.compile), nowhere else;
    the default keeps Keras's choice and warns nowhere."""
    import warnings

    for jit_compile, warns in (
        (True, keras.backend.backend() == "torch"),
        ("auto", False),
    ):
        model = tiny.dino()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.compile(
                optimizer=DINOAdamW(),
                schedule=_schedule(),
                jit_compile=jit_compile,
            )
        hits = [w for w in caught if "torch.compile" in str(w.message)]
        assert bool(hits) == warns, [str(w.message) for w in caught]
