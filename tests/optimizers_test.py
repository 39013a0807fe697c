"""DINOAdamW against a numpy PyTorch-AdamW written from DESIGN.md §1."""

import keras
import numpy as np
import pytest

from keras_dino.optimizers import DINOAdamW
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


def _run(optimizer, variables, steps, scale=1.0, clip=None, lr=None, wd=None):
    """Steps with per-step lr and weight decay set as DINO sets them."""
    lr = lr or (lambda step: 0.01)
    wd = wd or (lambda step: 0.0)
    ref = {
        k: NumpyAdamW(keras.ops.convert_to_numpy(v), k in DECAYED, clip=clip)
        for k, v in variables.items()
    }
    names = list(variables)
    optimizer.build([variables[k] for k in names])
    for step in range(steps):
        grads = _grads(variables, step, scale)
        optimizer.learning_rate.assign(lr(step))
        optimizer.scheduled_weight_decay.assign(wd(step))
        optimizer.apply_gradients([(grads[k], variables[k]) for k in names])
        for k in names:
            ref[k].step(grads[k], float(np.float32(lr(step))), wd(step))
    return ref


def _assert_close(variables, ref, atol=2e-6):
    for k, v in variables.items():
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(v), ref[k].p, atol=atol, err_msg=k
        )


def test_matches_torch_adamw_with_changing_lr_and_decay():
    variables = _variables()
    optimizer = DINOAdamW(learning_rate=0.0, clip_norm=None)
    lr = CosineSchedule(0.05, 1e-3, 6, warmup_steps=2)
    wd = CosineSchedule(0.5, 4.0, 6)
    ref = _run(optimizer, variables, steps=6, lr=lr, wd=wd)
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
    assert optimizer.clip_norm == 0.5
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


@pytest.mark.parametrize("rest_steps", [0, 2])
def test_step_count_is_per_variable(rest_steps):
    # A variable left out of the first updates (as DINO's frozen last
    # layer) starts its bias correction at 1 when it joins, as PyTorch's
    # per-parameter `step`; the others continue theirs.
    variables = _variables()
    before = {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}
    optimizer = DINOAdamW(learning_rate=0.05, weight_decay=0.5, clip_norm=3.0)
    names = list(variables)
    optimizer.build([variables[k] for k in names])
    resting = ("kernel", "cls_token")
    active = [k for k in names if k not in resting]
    for step in range(rest_steps):
        grads = _grads(variables, 50 + step)
        optimizer.apply_gradients([(grads[k], variables[k]) for k in active])
    for k in resting:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variables[k]), before[k]
        )
    thawed = {k: NumpyAdamW(before[k], True, clip=3.0) for k in resting}
    for step in range(2):
        grads = _grads(variables, step)
        optimizer.apply_gradients([(grads[k], variables[k]) for k in names])
        for k in resting:
            thawed[k].step(grads[k], 0.05, 0.5)
    for k in resting:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variables[k]),
            thawed[k].p,
            atol=2e-6,
            err_msg=k,
        )
        index = optimizer._get_variable_index(variables[k])
        assert float(keras.ops.convert_to_numpy(optimizer._steps[index])) == 2
    index = optimizer._get_variable_index(variables["bias"])
    assert float(keras.ops.convert_to_numpy(optimizer._steps[index])) == (
        rest_steps + 2
    )


def test_refuses_a_weight_decay_schedule():
    with pytest.raises(ValueError, match="DINOSchedule"):
        DINOAdamW(weight_decay=CosineSchedule(0.04, 0.4, 10))


def test_rejects_keras_clipping():
    for key in ("clipnorm", "global_clipnorm", "clipvalue"):
        with pytest.raises(ValueError, match="clip_norm"):
            DINOAdamW(**{key: 1.0})


def test_config_round_trip():
    optimizer = DINOAdamW(learning_rate=0.1, weight_decay=0.3, clip_norm=2.0)
    config = keras.saving.serialize_keras_object(optimizer)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, DINOAdamW)
    assert restored.get_config() == optimizer.get_config()
    assert restored.get_config()["weight_decay"] == 0.3


def test_decay_mask_on_the_dino_model(tiny):
    # As the reference's get_params_groups: biases and 1-D (LayerNorm)
    # weights are not decayed; cls_token, pos_embed (3-D), kernels and the
    # last layer's v are.
    from keras_dino.schedules import DINOSchedule

    model = tiny.dino()
    model.compile(optimizer=DINOAdamW(), schedule=DINOSchedule(1, 1))
    optimizer = model.optimizer
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
