"""The callbacks `DINO.fit` adds: the run-state check and the NaN guard.

These call the hooks directly on a real (tiny) DINO, so no train function
is compiled; `tests/models/dino_run_state_test.py` checks them inside
`fit`.
"""

import math
import warnings

import keras
import pytest

from keras_dino import callbacks
from keras_dino.optimizers import DINOAdamW
from keras_dino.schedules import DINOSchedule


@pytest.fixture(scope="module")
def model(tiny):
    model = tiny.dino()
    model.compile(optimizer=DINOAdamW(), schedule=DINOSchedule(5, 4))
    return model


def _check(model, steps, epoch, iteration):
    model.iteration.assign(iteration)
    callback = callbacks.RunStateCheck()
    callback.set_model(model)
    callback.set_params({"epochs": 4, "steps": steps, "verbose": 0})
    callback.on_train_begin()
    callback.on_epoch_begin(epoch)
    return callback


def test_run_state_check_accepts_a_continuing_run(model):
    _check(model, steps=5, epoch=0, iteration=0)
    _check(model, steps=5, epoch=2, iteration=10)  # initial_epoch=2
    _check(model, steps=5, epoch=0, iteration=10)  # fit(epochs=1) in a loop
    _check(model, steps=None, epoch=0, iteration=3)  # unknown length


def test_run_state_check_refuses_disagreements(model):
    with pytest.raises(ValueError, match="steps_per_epoch=5"):
        _check(model, steps=4, epoch=0, iteration=0)
    with pytest.raises(ValueError, match="initial_epoch=1"):
        _check(model, steps=5, epoch=3, iteration=5)


def test_run_state_check_warns_past_the_schedule(model):
    with pytest.warns(UserWarning, match="covers 20 iterations"):
        _check(model, steps=5, epoch=4, iteration=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _check(model, steps=5, epoch=3, iteration=15)


def test_non_finite_loss_guard():
    guard = callbacks.NonFiniteLossGuard()
    guard.on_train_batch_end(0, {"loss": 1.5, "weights_finite": 1.0})
    guard.on_epoch_end(0, {"loss": 1.5})
    for bad in (math.nan, math.inf):
        with pytest.raises(callbacks.NonFiniteLossError, match="loss became"):
            guard.on_train_batch_end(3, {"loss": bad})
    # A finite loss with a non-finite update is caught too.
    with pytest.raises(callbacks.NonFiniteLossError, match="weights became"):
        guard.on_train_batch_end(1, {"loss": 2.0, "weights_finite": 0.0})
    with pytest.raises(callbacks.NonFiniteLossError, match="epoch 2"):
        guard.on_epoch_end(1, {"loss": 2.0, "weights_finite": 0.0})


def test_with_default_callbacks():
    added = callbacks.with_default_callbacks()
    assert [type(c) for c in added] == [
        callbacks.NonFiniteLossGuard,
        callbacks.RunStateCheck,
    ]
    mine = keras.callbacks.CSVLogger("/dev/null")
    guard = callbacks.NonFiniteLossGuard()
    result = callbacks.with_default_callbacks([mine, guard])
    assert result[-2:] == [mine, guard]
    assert sum(isinstance(c, callbacks.NonFiniteLossGuard) for c in result) == 1


@pytest.mark.parametrize(
    "callback", [callbacks.RunStateCheck(), callbacks.NonFiniteLossGuard()]
)
def test_serialize_round_trip(callback):
    config = keras.saving.serialize_keras_object(callback)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(callback)
