"""Callbacks: what each writes into the model/optimizer, against numpy.

These call the callback hooks directly on a real (tiny) DINO, so no train
function is compiled; the values logged during `fit` are checked in
`tests/models/dino_test.py`.
"""

import math

import keras
import numpy as np
import pytest

from keras_dino import callbacks
from keras_dino.optimizers import DINOAdamW


@pytest.fixture(scope="module")
def model(tiny):
    model = tiny.dino()
    model.compile(optimizer=DINOAdamW(learning_rate=1e-3))
    return model


def _attach(callback, model, epochs, steps):
    callback.set_model(model)
    callback.set_params({"epochs": epochs, "steps": steps, "verbose": 0})
    return callback


def test_teacher_momentum_cosine_per_step(model, tiny):
    callback = _attach(
        callbacks.TeacherMomentumSchedule(base=0.99, final=1.0), model, 4, 5
    )
    callback.on_train_begin()
    total = 20
    expected = 1.0 + 0.5 * (0.99 - 1.0) * (
        1 + np.cos(np.pi * np.arange(total) / total)
    )
    got = [float(tiny.np(model.teacher_momentum_at(s))) for s in range(total)]
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert int(tiny.np(model.teacher_momentum_steps)) == total


def test_teacher_temperature_per_epoch(model, tiny):
    callback = _attach(
        callbacks.TeacherTemperatureSchedule(
            value=0.07, warmup_value=0.04, warmup_epochs=3
        ),
        model,
        6,
        2,
    )
    expected = np.concatenate([np.linspace(0.04, 0.07, 3), np.full(3, 0.07)])
    for epoch in range(6):
        callback.on_epoch_begin(epoch)
        got = float(tiny.np(model.teacher_temperature))
        assert got == pytest.approx(expected[epoch], abs=1e-7)
        assert callback.temperature(epoch, 6) == pytest.approx(expected[epoch])


def test_center_momentum(model, tiny):
    callback = _attach(callbacks.CenterMomentum(0.8), model, 3, 2)
    callback.on_epoch_begin(0)
    assert float(tiny.np(model.center_momentum)) == pytest.approx(0.8)
    callback = _attach(
        callbacks.CenterMomentum(lambda epoch: 0.9 + 0.01 * epoch), model, 3, 2
    )
    callback.on_epoch_begin(2)
    assert float(tiny.np(model.center_momentum)) == pytest.approx(0.92)
    with pytest.raises(NotImplementedError):
        callback.get_config()


def test_freeze_last_layer_sets_frozen_steps(tiny):
    model = tiny.dino()
    optimizer = DINOAdamW(learning_rate=1e-3)
    model.compile(optimizer=optimizer)
    callback = _attach(callbacks.FreezeLastLayer(epochs=2), model, 5, 7)
    callback.on_train_begin()  # builds the optimizer if needed
    assert int(tiny.np(optimizer.frozen_steps)) == 14
    # The head's trainable last-layer weight is the one registered.
    key = optimizer._var_key(model.student_head.last_layer_v)
    assert optimizer._frozen_keys == frozenset([key])


def test_freeze_last_layer_needs_dino_adamw(tiny):
    model = tiny.dino()
    model.compile(optimizer=keras.optimizers.SGD())
    callback = _attach(callbacks.FreezeLastLayer(), model, 1, 1)
    with pytest.raises(ValueError, match="DINOAdamW"):
        callback.on_train_begin()


def test_unknown_steps_raise(model):
    callback = _attach(callbacks.TeacherMomentumSchedule(), model, 2, None)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        callback.on_train_begin()


def test_non_finite_loss_guard():
    guard = callbacks.NonFiniteLossGuard()
    guard.on_train_batch_end(0, {"loss": 1.5})
    guard.on_train_batch_end(0, {})
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(callbacks.NonFiniteLossError, match="step 3"):
            guard.on_train_batch_end(3, {"loss": np.float32(bad)})
    assert issubclass(callbacks.NonFiniteLossError, RuntimeError)


def test_with_default_callbacks():
    defaults = callbacks.with_default_callbacks()
    types = [type(c) for c in defaults]
    assert types[0] is callbacks.NonFiniteLossGuard
    assert set(types) == {
        callbacks.NonFiniteLossGuard,
        callbacks.TeacherMomentumSchedule,
        callbacks.TeacherTemperatureSchedule,
        callbacks.CenterMomentum,
        callbacks.FreezeLastLayer,
    }
    checkpoint = keras.callbacks.History()
    mine = callbacks.TeacherTemperatureSchedule(warmup_epochs=3)
    merged = callbacks.with_default_callbacks([checkpoint, mine])
    assert type(merged[0]) is callbacks.NonFiniteLossGuard
    temps = [c for c in merged if isinstance(c, type(mine))]
    assert temps == [mine]  # a given schedule replaces the default
    assert merged.index(checkpoint) > 0
    assert len(merged) == 6


CALLBACKS = [
    callbacks.TeacherMomentumSchedule(base=0.99, final=0.999),
    callbacks.TeacherTemperatureSchedule(0.07, 0.04, 30),
    callbacks.CenterMomentum(0.8),
    callbacks.FreezeLastLayer(epochs=3),
    callbacks.NonFiniteLossGuard(),
]


@pytest.mark.parametrize("callback", CALLBACKS)
def test_get_config_rebuilds(callback):
    restored = type(callback)(**callback.get_config())
    assert restored.get_config() == callback.get_config()


@pytest.mark.parametrize("callback", CALLBACKS)
def test_serialize_round_trip(callback):
    config = keras.saving.serialize_keras_object(callback)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(callback)
    assert restored.get_config() == callback.get_config()
