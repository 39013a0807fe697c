"""DINOAdamW against a numpy PyTorch-AdamW written from DESIGN.md §1."""

import keras
import numpy as np
import pytest

from keras_dino.optimizers import DINOAdamW
from keras_dino.optimizers import dino_adamw
from keras_dino.schedules import CosineSchedule

B1, B2, EPS = 0.9, 0.999, 1e-8


class NumpyAdamW:
    """torch.optim.AdamW + DINO's clip_gradients, for one parameter."""

    def __init__(self, p, decay, clip=None):
        self.p = np.array(p, np.float64)
        self.m = np.zeros_like(self.p)
        self.v = np.zeros_like(self.p)
        self.t = 0
        self.decay = decay
        self.clip = clip

    def step(self, g, lr, wd):
        g = np.array(g, np.float64)
        if self.clip is not None:
            coef = self.clip / (np.sqrt(np.sum(g * g)) + 1e-6)
            if coef < 1:
                g = g * coef
        self.t += 1
        if self.decay:
            self.p = self.p * (1 - lr * wd)
        self.m = B1 * self.m + (1 - B1) * g
        self.v = B2 * self.v + (1 - B2) * g * g
        bc1 = 1 - B1**self.t
        bc2 = 1 - B2**self.t
        denom = np.sqrt(self.v) / np.sqrt(bc2) + EPS
        self.p = self.p - lr / bc1 * self.m / denom


def _variables(seed=0):
    rng = np.random.default_rng(seed)

    def var(shape, name):
        return keras.Variable(
            rng.normal(size=shape).astype("float32"), name=name
        )

    return {
        "kernel": var((4, 3), "kernel"),  # 2-D: decayed
        "bias": var((3,), "bias"),  # bias: not decayed
        "gamma": var((3,), "gamma"),  # 1-D norm weight: not decayed
        "cls_token": var((1, 1, 3), "cls_token"),  # 3-D: decayed
        "position_embedding": var((1, 5, 3), "position_embedding"),
        "conv_bias": var((2, 3), "bias"),  # a 2-D "bias": not decayed
    }


DECAYED = {"kernel", "cls_token", "position_embedding"}


def _grads(variables, step, scale=1.0):
    rng = np.random.default_rng(100 + step)
    return {
        k: (rng.normal(size=v.shape) * scale).astype("float32")
        for k, v in variables.items()
    }


def _run(optimizer, variables, steps, scale=1.0, clip=None, frozen=()):
    lr_s = optimizer._learning_rate
    wd_s = optimizer.weight_decay_schedule
    ref = {
        k: NumpyAdamW(keras.ops.convert_to_numpy(v), k in DECAYED, clip=clip)
        for k, v in variables.items()
    }
    names = list(variables)
    for step in range(steps):
        grads = _grads(variables, step, scale)
        optimizer.apply_gradients([(grads[k], variables[k]) for k in names])
        lr = lr_s(step) if callable(lr_s) else lr_s
        lr = float(keras.ops.convert_to_numpy(lr))
        wd = float(wd_s(step) if callable(wd_s) else wd_s)
        for k in names:
            if k in frozen and step < optimizer._initial_frozen_steps:
                continue
            ref[k].step(grads[k], lr, wd)
    return ref


def _assert_close(variables, ref, atol=2e-6):
    for k, v in variables.items():
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(v), ref[k].p, atol=atol, err_msg=k
        )


def test_matches_torch_adamw_with_schedules():
    variables = _variables()
    optimizer = DINOAdamW(
        learning_rate=CosineSchedule(0.05, 1e-3, 6, warmup_steps=2),
        weight_decay=CosineSchedule(0.5, 4.0, 6),
        clip_norm=None,
    )
    ref = _run(optimizer, variables, steps=6)
    _assert_close(variables, ref)


def test_weight_decay_exclusions():
    # Zero gradients: only the decoupled decay can move a variable.
    variables = _variables()
    before = {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}
    optimizer = DINOAdamW(learning_rate=0.1, weight_decay=0.5, clip_norm=None)
    optimizer.apply_gradients(
        [(np.zeros(v.shape, "float32"), v) for v in variables.values()]
    )
    for k, v in variables.items():
        after = keras.ops.convert_to_numpy(v)
        if k in DECAYED:
            np.testing.assert_allclose(after, before[k] * (1 - 0.1 * 0.5))
        else:
            np.testing.assert_array_equal(after, before[k])


def test_per_variable_clipping():
    variables = _variables()
    # Gradients of norm ~ 10-20: every variable is clipped, each by its own
    # factor clip / (norm + 1e-6).
    optimizer = DINOAdamW(learning_rate=0.01, weight_decay=0.0, clip_norm=0.5)
    ref = _run(optimizer, variables, steps=3, scale=5.0, clip=0.5)
    _assert_close(variables, ref)


def test_clipping_is_per_variable_not_global():
    # After one Adam step the update is lr * g / (|g| + eps) elementwise,
    # which hides the clip; check the clipped first moment instead.
    variables = _variables()
    optimizer = DINOAdamW(learning_rate=0.01, weight_decay=0.0, clip_norm=1.0)
    grads = _grads(variables, 0, scale=3.0)
    grads["bias"] = np.full((3,), 0.1, "float32")  # norm < clip: untouched
    names = list(variables)
    optimizer.apply_gradients([(grads[k], variables[k]) for k in names])
    for k in names:
        index = optimizer._get_variable_index(variables[k])
        m = keras.ops.convert_to_numpy(optimizer._momentums[index])
        g = grads[k].astype(np.float64)
        norm = np.sqrt(np.sum(g * g))
        expected = (1 - B1) * g * min(1.0, 1.0 / (norm + 1e-6))
        np.testing.assert_allclose(m, expected, rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("frozen_steps", [0, 2])
def test_frozen_variables_rest_then_restart_adam(frozen_steps):
    variables = _variables()
    before = {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}
    optimizer = DINOAdamW(
        learning_rate=CosineSchedule(0.05, 1e-3, 5, warmup_steps=1),
        weight_decay=CosineSchedule(0.5, 1.0, 5),
        clip_norm=3.0,
        frozen_steps=frozen_steps,
    )
    frozen = ("kernel", "cls_token")
    optimizer.freeze_variables([variables[k] for k in frozen])
    names = list(variables)
    for step in range(frozen_steps):
        grads = _grads(variables, 50 + step)
        optimizer.apply_gradients([(grads[k], variables[k]) for k in names])
        for k in frozen:  # untouched: no step, no decay
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(variables[k]), before[k]
            )
            index = optimizer._get_variable_index(variables[k])
            assert not np.any(
                keras.ops.convert_to_numpy(optimizer._momentums[index])
            )
    # From now on the frozen variables follow a fresh AdamW whose step
    # count starts at 1, while the others continue theirs.
    thawed = {k: NumpyAdamW(before[k], k in DECAYED, clip=3.0) for k in frozen}
    steps = 2
    for step in range(frozen_steps, frozen_steps + steps):
        grads = _grads(variables, step)
        optimizer.apply_gradients([(grads[k], variables[k]) for k in names])
        lr = optimizer._learning_rate(step)
        wd = optimizer.weight_decay_schedule(step)
        for k in frozen:
            thawed[k].step(grads[k], lr, wd)
    for k in frozen:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variables[k]),
            thawed[k].p,
            atol=2e-6,
            err_msg=k,
        )
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == (
        frozen_steps + steps
    )


def test_dino_adamw_factory():
    optimizer = dino_adamw(
        batch_size=512,
        steps_per_epoch=10,
        epochs=20,
        base_learning_rate=5e-4,
        min_learning_rate=1e-6,
        warmup_epochs=3,
        weight_decay=0.04,
        weight_decay_end=0.4,
        clip_norm=3.0,
        freeze_last_layer_epochs=2,
    )
    assert isinstance(optimizer, DINOAdamW)
    lr = optimizer._learning_rate.numpy()
    wd = optimizer.weight_decay_schedule.numpy()
    total, warm = 200, 30
    base = 5e-4 * 512 / 256
    expected_lr = np.concatenate(
        [
            np.linspace(0, base, warm),
            1e-6
            + 0.5
            * (base - 1e-6)
            * (1 + np.cos(np.pi * np.arange(total - warm) / (total - warm))),
        ]
    )
    np.testing.assert_allclose(lr, expected_lr, rtol=1e-12)
    expected_wd = 0.4 + 0.5 * (0.04 - 0.4) * (
        1 + np.cos(np.pi * np.arange(total) / total)
    )
    np.testing.assert_allclose(wd, expected_wd, rtol=1e-12)
    assert optimizer.clip_norm == 3.0
    assert optimizer._initial_frozen_steps == 20
    assert optimizer.epsilon == 1e-8
    assert (optimizer.beta_1, optimizer.beta_2) == (0.9, 0.999)


def test_rejects_keras_clipping():
    for key in ("clipnorm", "global_clipnorm", "clipvalue"):
        with pytest.raises(ValueError, match="clip_norm"):
            DINOAdamW(**{key: 1.0})


def test_config_round_trip():
    optimizer = dino_adamw(batch_size=64, steps_per_epoch=5, epochs=4)
    config = keras.saving.serialize_keras_object(optimizer)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, DINOAdamW)
    assert restored.get_config() == optimizer.get_config()
    np.testing.assert_array_equal(
        restored.weight_decay_schedule.numpy(),
        optimizer.weight_decay_schedule.numpy(),
    )
    constant = DINOAdamW(learning_rate=0.1, weight_decay=0.3, frozen_steps=7)
    restored = DINOAdamW.from_config(constant.get_config())
    assert restored.get_config() == constant.get_config()


def test_decay_mask_on_the_dino_model(tiny):
    # As the reference's get_params_groups: biases and 1-D (LayerNorm)
    # weights are not decayed; cls_token, pos_embed (3-D), kernels and the
    # last layer's v are.
    model = tiny.dino()
    model.compile(optimizer=DINOAdamW())
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    mask = {
        v.path: optimizer._decay_mask[optimizer._get_variable_index(v)]
        for v in model.trainable_variables
    }
    for path, decayed in mask.items():
        expected = not (path.endswith("bias") or path.endswith("beta"))
        expected = expected and not path.endswith("gamma")
        assert decayed == expected, path
    assert mask["patch_embedding/cls_token"]
    assert mask["patch_embedding/position_embedding"]
    assert mask["student_head/last_layer_v"]
    assert not mask["final_norm/gamma"]
    assert "student_head/last_layer_g" not in mask  # fixed, not trained
