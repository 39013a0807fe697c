"""DINOSGD against numpy equations and against `torch.optim.SGD` itself.

The reference: `torch.optim.SGD(params_groups, lr=0, momentum=0.9)` with
two groups (regularised: not a bias and not 1-D, with the scheduled weight
decay; not regularised: weight decay 0), lr and wd set every iteration, and
`utils.clip_gradients` before each step.
"""

import copy

import keras
import numpy as np
import pytest
import torch

from keras_dino.optimizers import DINOSGD

MOMENTUM = 0.9
# name -> (shape, Keras variable name)
SPECS = {
    "kernel": ((4, 3), "kernel"),
    "bias": ((3,), "bias"),
    "conv_kernel": ((3, 3, 2, 4), "kernel"),
    "gamma": ((3,), "gamma"),
    "bias_2d": ((2, 3), "bias"),  # name ends with "bias": not decayed
    "scale": ((), "scale"),  # 0-D: treated as 1-D, not decayed
}
DECAYED = {"kernel", "conv_kernel"}
LRS = [0.1, 0.05, 0.2, 0.01]
WDS = [0.04, 0.3, 0.0, 1.5]


def _initial(seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: rng.normal(size=shape).astype("float32")
        for k, (shape, _) in SPECS.items()
    }


def _variables(initial):
    return {k: keras.Variable(initial[k], name=SPECS[k][1]) for k in SPECS}


def _grads(steps, scale=1.0, seed=100):
    rng = np.random.default_rng(seed)
    return [
        {
            k: (rng.normal(size=shape) * scale).astype("float32")
            for k, (shape, _) in SPECS.items()
        }
        for _ in range(steps)
    ]


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def numpy_sgd(p0, grads, lrs, wds, decay, clip=None):
    """PyTorch's SGD step (dampening 0) after DINO's clip_gradients."""
    p = np.array(p0, np.float64)
    buf = None
    for g, lr, wd in zip(grads, lrs, wds):
        g = np.array(g, np.float64)
        if clip is not None:
            coef = clip / (np.sqrt(np.sum(g * g)) + 1e-6)
            if coef < 1:
                g = g * coef
        d = g + wd * p if decay else g
        buf = d if buf is None else MOMENTUM * buf + d
        p = p - lr * buf
    return p


def _run_keras(optimizer, variables, grads, lrs=None, wds=WDS):
    names = list(variables)
    optimizer.build([variables[k] for k in names])
    for step, g in enumerate(grads):
        if lrs is not None:
            optimizer.learning_rate = lrs[step]
        optimizer.scheduled_weight_decay.assign(wds[step])
        optimizer.apply_gradients([(g[k], variables[k]) for k in names])


@pytest.mark.parametrize("lr_mode", ["assigned", "schedule"])
def test_matches_numpy_with_changing_lr_and_weight_decay(lr_mode):
    initial = _initial()
    variables = _variables(initial)
    grads = _grads(len(LRS))
    if lr_mode == "schedule":
        lr = keras.optimizers.schedules.PiecewiseConstantDecay([0, 1, 2], LRS)
        optimizer = DINOSGD(learning_rate=lr, weight_decay=0.5)
        _run_keras(optimizer, variables, grads)
    else:
        optimizer = DINOSGD(learning_rate=1.0, weight_decay=0.5)
        _run_keras(optimizer, variables, grads, lrs=LRS)
    for k, v in variables.items():
        expected = numpy_sgd(
            initial[k], [g[k] for g in grads], LRS, WDS, k in DECAYED
        )
        np.testing.assert_allclose(_np(v), expected, atol=2e-6, err_msg=k)


def test_decay_only_on_decayed_variables():
    # Zero gradients: the first step moves only decayed variables, by
    # -lr * wd * p.
    initial = _initial()
    variables = _variables(initial)
    optimizer = DINOSGD(learning_rate=0.1, weight_decay=0.5)
    optimizer.apply_gradients(
        [(np.zeros(v.shape, "float32"), v) for v in variables.values()]
    )
    for k, v in variables.items():
        if k in DECAYED:
            np.testing.assert_allclose(
                _np(v), initial[k] * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=k
            )
        else:
            np.testing.assert_array_equal(_np(v), initial[k], err_msg=k)


def _torch_clip_gradients(params, clip):
    # The reference's utils.clip_gradients.
    for p in params:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_matches_torch_sgd_with_two_param_groups(clip):
    initial = _initial(seed=1)
    variables = _variables(initial)
    grads = _grads(len(LRS), scale=3.0, seed=7)
    optimizer = DINOSGD(learning_rate=1.0, weight_decay=0.0, clip_norm=clip)
    _run_keras(optimizer, variables, grads, lrs=LRS)

    params = {
        k: torch.tensor(initial[k], dtype=torch.float64, requires_grad=True)
        for k in SPECS
    }
    regularized = [params[k] for k in SPECS if k in DECAYED]
    not_regularized = [params[k] for k in SPECS if k not in DECAYED]
    reference = torch.optim.SGD(
        [
            {"params": regularized},
            {"params": not_regularized, "weight_decay": 0.0},
        ],
        lr=0,
        momentum=MOMENTUM,
    )
    for step, g in enumerate(grads):
        for k, p in params.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        if clip is not None:
            _torch_clip_gradients(params.values(), clip)
        for i, group in enumerate(reference.param_groups):
            group["lr"] = LRS[step]
            if i == 0:
                group["weight_decay"] = WDS[step]
        reference.step()
    for k, v in variables.items():
        np.testing.assert_allclose(
            _np(v), params[k].detach().numpy(), atol=2e-6, err_msg=k
        )


def test_per_variable_clipping():
    initial = _initial()
    variables = _variables(initial)
    grads = _grads(3, scale=5.0)
    grads[0]["bias"] = np.full((3,), 0.1, "float32")  # norm < clip: kept
    grads[0]["scale"] = np.float32(-4.0)  # clipped to -1
    clip = 1.0
    optimizer = DINOSGD(learning_rate=1.0, clip_norm=clip)
    # One step first: the momentum buffer is then the clipped gradient.
    _run_keras(optimizer, variables, grads[:1], lrs=[0.0], wds=[0.0])
    for k, v in variables.items():
        index = optimizer._get_variable_index(v)
        g = grads[0][k].astype(np.float64)
        factor = min(1.0, clip / (np.sqrt(np.sum(g * g)) + 1e-6))
        if k == "bias":
            assert factor == 1.0
        else:
            assert factor < 1.0, k
        np.testing.assert_allclose(
            _np(optimizer._momentums[index]), g * factor, rtol=1e-5, err_msg=k
        )
    # Two more steps with decay: the whole trajectory matches numpy.
    _run_keras(optimizer, variables, grads[1:], lrs=LRS[1:3], wds=WDS[1:3])
    for k, v in variables.items():
        expected = numpy_sgd(
            initial[k],
            [g[k] for g in grads],
            [0.0] + LRS[1:3],
            [0.0] + WDS[1:3],
            k in DECAYED,
            clip=clip,
        )
        np.testing.assert_allclose(_np(v), expected, atol=2e-6, err_msg=k)


def test_compiled_fit_matches_numpy():
    # The compiled train step of each backend (tf.function, jax.jit with
    # stateless optimizer variables, torch), with a per-step lr schedule.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4)).astype("float32")
    y = rng.normal(size=(2, 3)).astype("float32")
    kernel = rng.normal(size=(4, 3)).astype("float32")
    bias = rng.normal(size=(3,)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.set_weights([kernel, bias])
    lrs = [0.1, 0.3]
    optimizer = DINOSGD(
        learning_rate=keras.optimizers.schedules.PiecewiseConstantDecay(
            [0], lrs
        ),
        weight_decay=0.25,
    )
    # loss = sum(y * (x @ W + b)): dL/dW = x_i^T y_i, dL/db = y_i.
    model.compile(
        optimizer=optimizer,
        loss=lambda y_true, y_pred: keras.ops.sum(y_true * y_pred),
    )
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    grads_w = [np.outer(x[i], y[i]) for i in range(2)]
    grads_b = [y[i] for i in range(2)]
    wds = [0.25, 0.25]
    expected_w = numpy_sgd(kernel, grads_w, lrs, wds, decay=True)
    expected_b = numpy_sgd(bias, grads_b, lrs, wds, decay=False)
    new_w, new_b = model.get_weights()
    np.testing.assert_allclose(new_w, expected_w, atol=2e-6)
    np.testing.assert_allclose(new_b, expected_b, atol=2e-6)


def test_slots_named_after_variable_path():
    layer = keras.layers.Dense(3, name="proj")
    layer.build((None, 4))
    optimizer = DINOSGD()
    optimizer.build(layer.trainable_variables)
    for v in layer.trainable_variables:
        index = optimizer._get_variable_index(v)
        slot = optimizer._momentums[index]
        assert slot.name.startswith(v.path.replace("/", "_") + "_")
        assert tuple(slot.shape) == tuple(v.shape)
    wd = optimizer.scheduled_weight_decay
    assert wd.name == "scheduled_weight_decay"
    assert tuple(wd.shape) == () and wd.dtype == "float32"
    assert any(v is wd for v in optimizer.variables)
    assert optimizer.weight_decay is None  # Keras's own decay is off


def test_config_round_trip():
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.03, 0.01])
    optimizer = DINOSGD(
        learning_rate=lr, weight_decay=1e-4, momentum=0.8, clip_norm=3.0
    )
    config = optimizer.get_config()
    assert config["weight_decay"] == 1e-4
    assert config["momentum"] == 0.8
    assert config["clip_norm"] == 3.0
    clone = DINOSGD.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(optimizer)
    )
    assert isinstance(restored, DINOSGD)
    assert restored.get_config() == config
    restored.build([keras.Variable(np.ones((2, 2), "float32"))])
    assert float(_np(restored.scheduled_weight_decay)) == np.float32(1e-4)


@pytest.mark.parametrize("key", ["clipnorm", "global_clipnorm", "clipvalue"])
def test_refuses_keras_clipping(key):
    with pytest.raises(ValueError, match="clip_norm"):
        DINOSGD(**{key: 1.0})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_decay": lambda step: 0.1}, "scheduled_weight_decay"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"momentum": -0.5}, "momentum"),
        ({"clip_norm": 0.0}, "clip_norm"),
    ],
)
def test_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DINOSGD(**kwargs)
