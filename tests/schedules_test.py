"""Schedules against the reference `cosine_scheduler`, re-written in numpy."""

import keras
import numpy as np
import pytest

from keras_dino.schedules import CosineSchedule
from keras_dino.schedules import teacher_temperature_schedule


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


def test_teacher_temperature_schedule():
    # Reference DINOLoss: linspace(warmup, value, warmup_epochs), then value.
    got = teacher_temperature_schedule(0.04, 0.07, 30, 100)
    expected = np.concatenate([np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(
        teacher_temperature_schedule(0.04, 0.04, 0, 5), np.full(5, 0.04)
    )
    with pytest.raises(ValueError, match="warmup_epochs"):
        teacher_temperature_schedule(0.04, 0.07, 10, 5)
