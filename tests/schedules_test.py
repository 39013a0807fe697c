"""Schedules against the reference `cosine_scheduler`, re-written in numpy."""

import keras
import numpy as np
import pytest

from keras_dino.schedules import CosineSchedule
from keras_dino.schedules import DINOSchedule


def np_cosine_scheduler(base, final, total, warmup, start=0.0):
    """Reference `utils.cosine_scheduler` (in iterations), numpy."""
    warm = np.linspace(start, base, warmup) if warmup > 0 else np.array([])
    iters = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (
        1 + np.cos(np.pi * iters / len(iters))
    )
    return np.concatenate([warm, cosine])


CASES = [
    (5e-4, 1e-6, 100, 10, 0.0),
    (0.04, 0.4, 37, 0, 0.0),
    (0.996, 1.0, 50, 0, 0.0),
    (1.0, 0.1, 12, 1, 0.3),
    (2.0, 0.0, 9, 8, 0.5),
]


@pytest.mark.parametrize("base,final,total,warmup,start", CASES)
def test_cosine_schedule_matches_reference(
    tiny, base, final, total, warmup, start
):
    expected = np_cosine_scheduler(base, final, total, warmup, start)
    schedule = CosineSchedule(base, final, total, warmup, start)
    np.testing.assert_allclose(schedule.numpy(), expected, rtol=1e-12)
    python = [schedule(s) for s in range(total)]
    np.testing.assert_allclose(python, expected, rtol=1e-12)
    # In-graph (tensor step), float32.
    steps = keras.ops.arange(total)
    graph = tiny.np(schedule(steps))
    np.testing.assert_allclose(graph, expected, rtol=2e-6, atol=1e-7)
    scalar = tiny.np(schedule(keras.ops.convert_to_tensor(total // 2)))
    np.testing.assert_allclose(scalar, expected[total // 2], rtol=2e-6)


def test_warmup_end_and_final_never_reached():
    schedule = CosineSchedule(1.0, 0.0, total_steps=20, warmup_steps=5)
    assert schedule(4) == pytest.approx(1.0)  # step W-1 is already base
    assert schedule(5) == pytest.approx(1.0)
    assert schedule(19) > 0.0
    assert schedule(0) == 0.0
    # Past the end it keeps the last value.
    assert schedule(100) == schedule(19)


def test_cosine_schedule_as_keras_learning_rate(tiny):
    schedule = CosineSchedule(0.1, 0.0, total_steps=10, warmup_steps=2)
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    assert float(tiny.np(optimizer.learning_rate)) == 0.0
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, CosineSchedule)
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_array_equal(restored.numpy(), schedule.numpy())


def test_cosine_schedule_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        CosineSchedule(1.0, 0.0, total_steps=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineSchedule(1.0, 0.0, total_steps=5, warmup_steps=6)


def _np_run(schedule):
    """The reference's per-iteration arrays for a DINOSchedule's arguments."""
    spe, epochs = schedule.steps_per_epoch, schedule.epochs
    total = spe * epochs
    temps = np.concatenate(
        [
            np.linspace(
                schedule.warmup_teacher_temperature,
                schedule.teacher_temperature,
                schedule.warmup_teacher_temperature_epochs,
            ),
            np.full(
                epochs - schedule.warmup_teacher_temperature_epochs,
                schedule.teacher_temperature,
            ),
        ]
    )
    return {
        "lr": np_cosine_scheduler(
            schedule.learning_rate,
            schedule.min_learning_rate,
            total,
            schedule.warmup_epochs * spe,
        ),
        "wd": np_cosine_scheduler(
            schedule.weight_decay, schedule.weight_decay_end, total, 0
        ),
        "momentum": np_cosine_scheduler(
            schedule.teacher_momentum, schedule.teacher_momentum_end, total, 0
        ),
        "temperature": np.repeat(temps, spe),
        "frozen": np.arange(total) < schedule.freeze_last_layer_epochs * spe,
    }


@pytest.mark.parametrize("warm_temp_epochs", [0, 1, 3])
def test_dino_schedule_matches_reference_arrays(tiny, warm_temp_epochs):
    schedule = DINOSchedule(
        steps_per_epoch=3,
        epochs=5,
        learning_rate=0.01,
        min_learning_rate=1e-4,
        warmup_epochs=2,
        weight_decay=0.04,
        weight_decay_end=0.4,
        teacher_momentum=0.99,
        warmup_teacher_temperature=0.07,
        teacher_temperature=0.04,
        warmup_teacher_temperature_epochs=warm_temp_epochs,
        freeze_last_layer_epochs=2,
    )
    expected = _np_run(schedule)
    steps = keras.ops.arange(15)
    got = {
        "lr": schedule.learning_rate_at(steps),
        "wd": schedule.weight_decay_at(steps),
        "momentum": schedule.teacher_momentum_at(steps),
        "temperature": schedule.teacher_temperature_at(steps),
        "frozen": schedule.last_layer_frozen_at(steps),
    }
    for key, value in got.items():
        np.testing.assert_allclose(
            tiny.np(value), expected[key], rtol=2e-6, atol=1e-8, err_msg=key
        )
    np.testing.assert_allclose(tiny.np(schedule.center_momentum_at(4)), 0.9)
    # Past the end every value stays at the last iteration's.
    late = keras.ops.convert_to_tensor(100)
    assert float(tiny.np(schedule.learning_rate_at(late))) == pytest.approx(
        expected["lr"][-1], rel=1e-5
    )
    assert float(
        tiny.np(schedule.teacher_temperature_at(late))
    ) == pytest.approx(expected["temperature"][-1])


def test_dino_schedule_paper_defaults():
    schedule = DINOSchedule.paper(batch_size=512, steps_per_epoch=10, epochs=5)
    assert schedule.learning_rate == pytest.approx(5e-4 * 512 / 256)
    assert schedule.warmup_epochs == 5  # min(10, epochs)
    assert (schedule.weight_decay, schedule.weight_decay_end) == (0.04, 0.4)
    assert schedule.teacher_momentum == 0.996
    assert schedule.teacher_temperature == 0.04
    assert schedule.center_momentum == 0.9
    assert schedule.freeze_last_layer_epochs == 1
    scaled = DINOSchedule.paper(
        batch_size=64, steps_per_epoch=10, epochs=20, learning_rate=0.004
    )
    assert scaled.learning_rate == pytest.approx(0.004 * 64 / 256)
    assert scaled.warmup_epochs == 10


def test_dino_schedule_serialises():
    schedule = DINOSchedule(
        7, 3, weight_decay=None, warmup_epochs=1, freeze_last_layer_epochs=0
    )
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, DINOSchedule)
    assert restored.get_config() == schedule.get_config()
    assert restored.weight_decay is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"epochs": 2.5}, "epochs"),
        ({"warmup_epochs": 11}, "warmup_epochs"),
        ({"teacher_momentum": 1.5}, "teacher_momentum"),
        ({"teacher_temperature": 0.0}, "teacher_temperature"),
        ({"warmup_teacher_temperature": -1.0}, "warmup_teacher_temperature"),
        ({"warmup_teacher_temperature_epochs": 30}, "teacher-temperature"),
        ({"center_momentum": -0.1}, "center_momentum"),
        ({"freeze_last_layer_epochs": -1}, "freeze_last_layer_epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"weight_decay": None, "weight_decay_end": 0.4}, "weight_decay"),
    ],
)
def test_dino_schedule_bad_arguments(kwargs, match):
    args = {"steps_per_epoch": 10, "epochs": 10}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DINOSchedule(**args)
