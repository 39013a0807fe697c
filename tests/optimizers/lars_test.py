"""LARS against numpy equations and a torch transcription of `utils.LARS`.

The reference: `utils.LARS(params_groups)` (regularised group: not a bias
and not 1-D, with the scheduled weight decay; not regularised: weight
decay 0), lr and wd set every iteration, `utils.clip_gradients` before each
step. Decay and trust-ratio adaptation act only on `p.ndim != 1`.
"""

import copy

import keras
import numpy as np
import pytest
import torch

from keras_dino.optimizers import LARS

MOMENTUM = 0.9
# name -> (shape, Keras variable name)
SPECS = {
    "kernel": ((4, 3), "kernel"),
    "bias": ((3,), "bias"),
    "conv_kernel": ((3, 3, 2, 4), "kernel"),
    "gamma": ((3,), "gamma"),
    "bias_2d": ((2, 3), "bias"),  # adapted, not decayed
    "scale": ((), "scale"),  # 0-D: treated as 1-D, neither
}
DECAYED = {"kernel", "conv_kernel"}
ADAPTED = {"kernel", "conv_kernel", "bias_2d"}
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


def numpy_lars(p0, grads, lrs, wds, decay, adapt, eta, clip=None):
    """The reference LARS step after DINO's clip_gradients, in numpy."""
    p = np.array(p0, np.float64)
    mu = np.zeros_like(p)
    for g, lr, wd in zip(grads, lrs, wds):
        dp = np.array(g, np.float64)
        if clip is not None:
            coef = clip / (np.sqrt(np.sum(dp * dp)) + 1e-6)
            if coef < 1:
                dp = dp * coef
        if decay:
            dp = dp + wd * p
        if adapt:
            p_norm = np.sqrt(np.sum(p * p))
            dp_norm = np.sqrt(np.sum(dp * dp))
            q = eta * p_norm / dp_norm if p_norm > 0 and dp_norm > 0 else 1.0
            dp = dp * q
        mu = MOMENTUM * mu + dp
        p = p - lr * mu
    return p


class TorchLARS(torch.optim.Optimizer):
    """The reference's `utils.LARS.step`, transcribed."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001):
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                if p.ndim != 1:
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(
                            update_norm > 0,
                            (g["eta"] * param_norm / update_norm),
                            one,
                        ),
                        one,
                    )
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def _run_keras(optimizer, variables, grads, lrs=None, wds=WDS):
    names = list(variables)
    optimizer.build([variables[k] for k in names])
    for step, g in enumerate(grads):
        if lrs is not None:
            optimizer.learning_rate = lrs[step]
        optimizer.scheduled_weight_decay.assign(wds[step])
        optimizer.apply_gradients([(g[k], variables[k]) for k in names])


def _assert_moved_as(variables, initial, expected, rtol=1e-4, atol=6e-7):
    # Compare the displacements: with eta = 0.001 they are ~1e-4, small next
    # to the weights, so comparing the weights alone would hide errors. The
    # atol is a few float32 ulps of |p| ~ 2 (each step rounds p).
    for k, v in variables.items():
        np.testing.assert_allclose(
            _np(v) - initial[k],
            expected[k] - initial[k],
            rtol=rtol,
            atol=atol,
            err_msg=k,
        )


@pytest.mark.parametrize("eta", [0.001, 0.2])
@pytest.mark.parametrize("lr_mode", ["assigned", "schedule"])
def test_matches_numpy_with_changing_lr_and_weight_decay(lr_mode, eta):
    initial = _initial()
    variables = _variables(initial)
    grads = _grads(len(LRS))
    if lr_mode == "schedule":
        lr = keras.optimizers.schedules.PiecewiseConstantDecay([0, 1, 2], LRS)
        optimizer = LARS(learning_rate=lr, weight_decay=0.5, eta=eta)
        _run_keras(optimizer, variables, grads)
    else:
        optimizer = LARS(learning_rate=1.0, weight_decay=0.5, eta=eta)
        _run_keras(optimizer, variables, grads, lrs=LRS)
    expected = {
        k: numpy_lars(
            initial[k],
            [g[k] for g in grads],
            LRS,
            WDS,
            k in DECAYED,
            k in ADAPTED,
            eta,
        )
        for k in SPECS
    }
    _assert_moved_as(variables, initial, expected)


def _torch_clip_gradients(params, clip):
    # The reference's utils.clip_gradients.
    for p in params:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_matches_reference_lars_in_torch(clip):
    initial = _initial(seed=1)
    variables = _variables(initial)
    grads = _grads(len(LRS), scale=3.0, seed=7)
    optimizer = LARS(learning_rate=1.0, weight_decay=0.0, clip_norm=clip)
    _run_keras(optimizer, variables, grads, lrs=LRS)

    params = {
        k: torch.tensor(initial[k], dtype=torch.float64, requires_grad=True)
        for k in SPECS
    }
    # The reference adapts and decays a 0-D parameter (ndim != 1, not in
    # get_params_groups's exclusions); the Keras LARS treats it as 1-D (as
    # documented), so the scalar is compared with numpy instead.
    tensors = [k for k in SPECS if k != "scale"]
    # get_params_groups: names ending with "bias" and 1-D parameters are
    # not regularised.
    not_reg = {
        k for k in tensors if SPECS[k][1] == "bias" or len(SPECS[k][0]) == 1
    }
    reference = TorchLARS(
        [
            {"params": [params[k] for k in tensors if k not in not_reg]},
            {
                "params": [params[k] for k in tensors if k in not_reg],
                "weight_decay": 0.0,
            },
        ]
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
    expected = {k: p.detach().numpy() for k, p in params.items()}
    expected["scale"] = numpy_lars(
        initial["scale"],
        [g["scale"] for g in grads],
        LRS,
        WDS,
        False,
        False,
        0.001,
        clip=clip,
    )
    _assert_moved_as(variables, initial, expected)


def test_per_variable_clipping():
    initial = _initial()
    variables = _variables(initial)
    grads = _grads(3, scale=5.0)
    grads[0]["bias"] = np.full((3,), 0.1, "float32")  # norm < clip: kept
    clip = 1.0
    optimizer = LARS(learning_rate=1.0, eta=0.1, clip_norm=clip)
    _run_keras(optimizer, variables, grads, lrs=LRS[:3], wds=WDS[:3])
    expected = {
        k: numpy_lars(
            initial[k],
            [g[k] for g in grads],
            LRS[:3],
            WDS[:3],
            k in DECAYED,
            k in ADAPTED,
            0.1,
            clip=clip,
        )
        for k in SPECS
    }
    _assert_moved_as(variables, initial, expected)
    # Not the same without clipping (the clip did act).
    unclipped = numpy_lars(
        initial["gamma"], [g["gamma"] for g in grads], LRS[:3], WDS[:3],
        False, False, 0.1,
    )  # fmt: skip
    assert not np.allclose(_np(variables["gamma"]), unclipped, atol=1e-3)


def test_zero_norms_give_unit_trust_ratio():
    eta, lr = 0.001, 0.5
    rng = np.random.default_rng(5)
    g = rng.normal(size=(4, 3)).astype("float32")
    p0 = rng.normal(size=(4, 3)).astype("float32")
    zero_p = keras.Variable(np.zeros((4, 3), "float32"), name="kernel")
    zero_both = keras.Variable(np.zeros((4, 3), "float32"), name="kernel")
    zero_dp = keras.Variable(p0, name="kernel")
    optimizer = LARS(learning_rate=lr, weight_decay=0.0, eta=eta)
    variables = [zero_p, zero_both, zero_dp]
    optimizer.build(variables)
    zeros = np.zeros((4, 3), "float32")
    optimizer.apply_gradients([(g, zero_p), (zeros, zero_both), (g, zero_dp)])
    # ||p|| = 0: q = 1, the plain step -lr * g (not eta * 0 / ||g|| = 0).
    np.testing.assert_allclose(_np(zero_p), -lr * g, rtol=1e-6)
    # ||p|| = ||dp|| = 0: nothing moves, and nothing is NaN.
    np.testing.assert_array_equal(_np(zero_both), zeros)
    # After one adapted step, ||dp|| = 0 (zero gradient, no decay): q = 1,
    # the momentum alone moves p (no 0 / 0).
    q = eta * np.linalg.norm(p0.astype(np.float64)) / np.linalg.norm(g)
    after_one = p0 - lr * q * g
    np.testing.assert_allclose(_np(zero_dp), after_one, rtol=1e-5)
    optimizer.apply_gradients(
        [(zeros, zero_p), (zeros, zero_both), (zeros, zero_dp)]
    )
    np.testing.assert_allclose(
        _np(zero_dp), after_one - lr * MOMENTUM * q * g, rtol=1e-5
    )
    np.testing.assert_allclose(
        _np(zero_p), -lr * g - lr * MOMENTUM * g, rtol=1e-6
    )
    for v in variables:
        assert np.all(np.isfinite(_np(v)))


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
    optimizer = LARS(
        learning_rate=keras.optimizers.schedules.PiecewiseConstantDecay(
            [0], lrs
        ),
        weight_decay=0.25,
        eta=0.1,
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
    new_w, new_b = model.get_weights()
    np.testing.assert_allclose(
        new_w,
        numpy_lars(kernel, grads_w, lrs, wds, True, True, 0.1),
        atol=2e-6,
    )
    np.testing.assert_allclose(
        new_b,
        numpy_lars(bias, grads_b, lrs, wds, False, False, 0.1),
        atol=2e-6,
    )


def test_slots_named_after_variable_path():
    layer = keras.layers.Dense(3, name="proj")
    layer.build((None, 4))
    optimizer = LARS()
    optimizer.build(layer.trainable_variables)
    for v in layer.trainable_variables:
        slot = optimizer._momentums[optimizer._get_variable_index(v)]
        assert slot.name.startswith(v.path.replace("/", "_") + "_")
    wd = optimizer.scheduled_weight_decay
    assert wd.name == "scheduled_weight_decay"
    assert tuple(wd.shape) == () and wd.dtype == "float32"
    assert optimizer.weight_decay is None


def test_config_round_trip():
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.03, 0.01])
    optimizer = LARS(
        learning_rate=lr,
        weight_decay=1e-4,
        momentum=0.8,
        eta=0.02,
        clip_norm=3.0,
    )
    config = optimizer.get_config()
    assert config["weight_decay"] == 1e-4
    assert config["momentum"] == 0.8
    assert config["eta"] == 0.02
    assert config["clip_norm"] == 3.0
    clone = LARS.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(optimizer)
    )
    assert isinstance(restored, LARS)
    assert restored.get_config() == config
    restored.build([keras.Variable(np.ones((2, 2), "float32"))])
    assert float(_np(restored.scheduled_weight_decay)) == np.float32(1e-4)


@pytest.mark.parametrize("key", ["clipnorm", "global_clipnorm", "clipvalue"])
def test_refuses_keras_clipping(key):
    with pytest.raises(ValueError, match="clip_norm"):
        LARS(**{key: 1.0})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_decay": lambda step: 0.1}, "scheduled_weight_decay"),
        ({"eta": -1.0}, "eta"),
        ({"eta": float("nan")}, "eta"),
    ],
)
def test_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LARS(**kwargs)
