"""Bad arguments fail at construction (or at the first call) with messages
that name the argument and what is accepted."""

import keras
import numpy as np
import pytest

from keras_dino.models import DINO
from keras_dino.optimizers import DINOAdamW
from keras_dino.schedules import DINOSchedule


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"out_dim": 0}, "out_dim must be a positive integer"),
        ({"out_dim": -5}, "out_dim must be a positive integer"),
        ({"out_dim": 2.5}, "out_dim must be a positive integer"),
        ({"hidden_dim": 0}, "hidden_dim must be a positive integer"),
        ({"student_temperature": 0.0}, "student_temperature must be > 0"),
        ({"student_temperature": -0.1}, "student_temperature must be > 0"),
        ({"num_global_crops": 0}, "num_global_crops must be a positive"),
    ],
)
def test_dino_arguments(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny.dino(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"teacher_temperature": 0.0}, r"teacher_temperature must be in \(0"),
        ({"teacher_temperature": -0.04}, "teacher_temperature"),
        (
            {"teacher_momentum": 1.2},
            r"teacher_momentum must be in \[0.0, 1.0\]",
        ),
        ({"teacher_momentum_end": -0.1}, "teacher_momentum_end"),
        ({"center_momentum": 1.5}, r"center_momentum must be in \[0.0, 1"),
        ({"warmup_epochs": 20}, "warmup_epochs .* must be in"),
        ({"warmup_teacher_temperature_epochs": 11}, "teacher-temperature"),
    ],
)
def test_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DINOSchedule(steps_per_epoch=5, epochs=10, **kwargs)
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        DINOSchedule.paper(batch_size=0, steps_per_epoch=5, epochs=10)


def test_backbone_arguments(tiny):
    for name in ("patch_size", "hidden_dim", "image_size"):
        with pytest.raises(ValueError, match=f"{name} must be a positive"):
            tiny.backbone(**{name: 0})
    # A backbone that returns tokens instead of (batch, dim) features.
    inputs = keras.Input((32, 32, 3))
    tokens = keras.layers.Reshape((64, 3))(
        keras.layers.AveragePooling2D(4)(inputs)
    )
    with pytest.raises(ValueError, match=r"must return \(batch, dim\)"):
        DINO(keras.Model(inputs, tokens), out_dim=16)
    with pytest.raises(ValueError, match="keras.Model backbone"):
        DINO(keras.layers.Dense(4), out_dim=16)


def test_crop_arguments(tiny):
    model = tiny.dino()
    model.compile(optimizer=DINOAdamW(), schedule=DINOSchedule(1, 1))
    crops = tiny.crops()
    as_uint8 = tuple(np.zeros(c.shape, "uint8") for c in crops)
    with pytest.raises(ValueError, match="Crop 0 is uint8"):
        model.fit(list(as_uint8), batch_size=4, epochs=1, verbose=0)
    local_first = (crops[2], crops[3], crops[0], crops[1])
    with pytest.raises(ValueError, match="give the 2 global crops first"):
        model(local_first)
    with pytest.raises(ValueError, match="one resolution"):
        model((crops[0], crops[2], crops[1], crops[3]))
    with pytest.raises(ValueError, match="same batch size"):
        model((crops[0], crops[1][:3], crops[2], crops[3]))
    three_globals = tiny.dino(num_global_crops=3)
    with pytest.raises(ValueError, match="one resolution"):
        three_globals(crops)
    with pytest.raises(ValueError, match="num_global_crops=3"):
        three_globals(crops[:2])
