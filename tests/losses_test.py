"""The DINO loss, center update and teacher entropy against numpy.

The numpy versions are written from DESIGN.md §1 with explicit loops over
teacher/student crop pairs.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino import losses


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_dino_loss(student, teacher, center, t_temp, s_temp, n_global, n_crops):
    student = student.astype(np.float64).reshape(n_crops, -1, student.shape[-1])
    teacher = teacher.astype(np.float64).reshape(
        n_global, -1, teacher.shape[-1]
    )
    total, terms = 0.0, 0
    for i in range(n_global):
        q = _softmax((teacher[i] - center) / t_temp)
        for j in range(n_crops):
            if i == j:
                continue
            log_p = _log_softmax(student[j] / s_temp)
            total += np.mean(-np.sum(q * log_p, axis=-1))
            terms += 1
    return total / terms


def _logits(rows, dim=32, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, dim)) * scale).astype("float32")


@pytest.mark.parametrize("n_crops", [2, 4, 10])
def test_dino_loss_matches_numpy(tiny, n_crops):
    batch, dim = 3, 32
    student = _logits(n_crops * batch, dim, seed=1)
    teacher = _logits(2 * batch, dim, seed=2)
    center = _logits(1, dim, seed=3, scale=0.3)
    got = losses.dino_loss(student, teacher, center, 0.04, 0.1)
    expected = np_dino_loss(student, teacher, center, 0.04, 0.1, 2, n_crops)
    np.testing.assert_allclose(tiny.np(got), expected, rtol=1e-5, atol=1e-5)
    # num_crops given explicitly gives the same value.
    got = losses.dino_loss(
        student, teacher, center, 0.04, 0.1, num_crops=n_crops
    )
    np.testing.assert_allclose(tiny.np(got), expected, rtol=1e-5, atol=1e-5)


def test_dino_loss_pairs_and_temperatures(tiny):
    # Number of pairs 2 * C - 2 and both temperatures enter as in §1.
    batch, dim, n_crops = 2, 8, 3
    student = _logits(n_crops * batch, dim, seed=4)
    teacher = _logits(2 * batch, dim, seed=5)
    center = np.zeros((1, dim), "float32")
    for t_temp, s_temp in [(0.07, 0.2), (1.0, 1.0)]:
        got = losses.dino_loss(student, teacher, center, t_temp, s_temp)
        expected = np_dino_loss(
            student, teacher, center, t_temp, s_temp, 2, n_crops
        )
        np.testing.assert_allclose(tiny.np(got), expected, rtol=1e-5)


def test_dino_loss_identical_outputs_is_entropy(tiny):
    # With teacher == student (same temperature, no center) on the two
    # globals only, the loss is the mean cross-entropy of q with itself:
    # its entropy.
    batch, dim = 4, 16
    t = _logits(2 * batch, dim, seed=6)
    center = np.zeros((1, dim), "float32")
    swapped = np.concatenate([t[batch:], t[:batch]])
    loss = losses.dino_loss(swapped, t, center, 0.1, 0.1)
    entropy = losses.teacher_entropy(t, center, 0.1)
    np.testing.assert_allclose(tiny.np(loss), tiny.np(entropy), rtol=1e-5)


def test_uniform_collapse_gives_log_out_dim(tiny):
    dim = 64
    zeros = np.zeros((8, dim), "float32")
    loss = losses.dino_loss(zeros, zeros[:4], zeros[:1], 0.04)
    np.testing.assert_allclose(tiny.np(loss), np.log(dim), rtol=1e-6)
    entropy = losses.teacher_entropy(zeros[:4], zeros[:1], 0.04)
    np.testing.assert_allclose(tiny.np(entropy), np.log(dim), rtol=1e-6)


def test_teacher_entropy_matches_numpy(tiny):
    t = _logits(6, 16, seed=7)
    c = _logits(1, 16, seed=8, scale=0.2)
    q = _softmax((t.astype(np.float64) - c) / 0.04)
    expected = -np.mean(np.sum(q * np.log(np.maximum(q, 1e-300)), -1))
    got = losses.teacher_entropy(t, c, 0.04)
    np.testing.assert_allclose(tiny.np(got), expected, rtol=1e-4, atol=1e-5)


def test_teacher_probabilities(tiny):
    t = _logits(4, 8, seed=9)
    c = _logits(1, 8, seed=10)
    got = losses.teacher_probabilities(t, c, 0.05)
    np.testing.assert_allclose(
        tiny.np(got), _softmax((t - c) / 0.05), rtol=1e-5, atol=1e-7
    )


def test_update_center_matches_numpy(tiny):
    center_np = _logits(1, 16, seed=11)
    teacher_np = _logits(8, 16, seed=12)
    center = ops.convert_to_tensor(center_np)
    teacher = ops.convert_to_tensor(teacher_np)
    for m in (0.9, 0.5, 0.0):
        got = losses.update_center(center, teacher, m)
        expected = center_np * m + teacher_np.mean(0, keepdims=True) * (1 - m)
        np.testing.assert_allclose(tiny.np(got), expected, atol=1e-6)
        assert tuple(got.shape) == (1, 16)
    # Default momentum is 0.9.
    got = losses.update_center(center, teacher)
    expected = 0.9 * center_np + 0.1 * teacher_np.mean(0, keepdims=True)
    np.testing.assert_allclose(tiny.np(got), expected, atol=1e-6)


def test_update_center_accepts_numpy(tiny):
    center = _logits(1, 16, seed=11)
    teacher = _logits(8, 16, seed=12)
    got = losses.update_center(center, teacher, 0.9)
    expected = 0.9 * center + 0.1 * teacher.mean(0, keepdims=True)
    np.testing.assert_allclose(tiny.np(got), expected, atol=1e-6)


def test_loss_is_differentiable_only_through_student(tiny):
    # The gradient w.r.t. the student logits is (p - q) / tau_s per pair.
    batch, dim = 2, 4
    student = _logits(2 * batch, dim, seed=13)
    teacher = _logits(2 * batch, dim, seed=14)
    center = np.zeros((1, dim), "float32")
    s = student.astype(np.float64).reshape(2, batch, dim)
    q = _softmax(teacher.astype(np.float64).reshape(2, batch, dim) / 0.04)
    p = _softmax(s / 0.1)
    # Crop 0 pairs with teacher 1 and crop 1 with teacher 0; 2 pairs.
    expected = np.stack([p[0] - q[1], p[1] - q[0]]) / 0.1 / batch / 2
    grad = _gradient(
        lambda x: losses.dino_loss(x, teacher, center, 0.04), student
    )
    np.testing.assert_allclose(
        grad, expected.reshape(2 * batch, dim), rtol=1e-4, atol=1e-6
    )


def _gradient(fn, x):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: fn(v))(x))
    if backend == "torch":
        import torch

        v = torch.tensor(x, requires_grad=True)
        fn(v).backward()
        return v.grad.numpy()
    import tensorflow as tf

    v = tf.Variable(x)
    with tf.GradientTape() as tape:
        out = fn(v)
    return tape.gradient(out, v).numpy()


def test_bad_shapes_raise():
    student = np.zeros((7, 8), "float32")
    teacher = np.zeros((4, 8), "float32")
    center = np.zeros((1, 8), "float32")
    with pytest.raises(ValueError, match="multiple"):
        losses.dino_loss(student, teacher, center, 0.04)
    with pytest.raises(ValueError, match="multiple of the number"):
        losses.dino_loss(
            np.zeros((8, 8), "float32"),
            np.zeros((3, 8), "float32"),
            center,
            0.04,
            num_crops=4,
        )


def test_ops_inputs(tiny):
    # Tensors of the backend work as well as numpy arrays.
    student = ops.convert_to_tensor(_logits(8, 8, seed=15))
    teacher = ops.convert_to_tensor(_logits(4, 8, seed=16))
    center = ops.zeros((1, 8))
    got = losses.dino_loss(student, teacher, center, 0.04)
    expected = np_dino_loss(
        tiny.np(student), tiny.np(teacher), 0.0, 0.04, 0.1, 2, 4
    )
    np.testing.assert_allclose(tiny.np(got), expected, rtol=1e-5)
