"""Three DINO steps with BatchNorm in backbone and head equal the reference.

The reference runs student and teacher in train mode: every BatchNorm
normalises with the statistics of its batch (the teacher's with those of
the two global crops) and updates its own running statistics, which are
buffers, not parameters, so the EMA does not touch them. The torch side is
`tests/reference_torch.py`'s training step (SGD, as the reference's
ResNet-50 run) with a small convnet and a head with BatchNorm written here
in plain torch. (A bias just before a train-mode BatchNorm gets a gradient
of rounding noise only; the convnet has none, as ResNets.)
"""

import keras
import numpy as np
import pytest
import reference_torch as ref
import torch
from torch import nn
from torch.nn import functional as F

from keras_dino.models import DINO
from keras_dino.optimizers import DINOSGD
from keras_dino.schedules import DINOSchedule

ATOL = 1e-4
BATCH, EPOCHS, CLIP = 4, 3, 0.3
OUT, HIDDEN, BOTTLENECK, CHANNELS = 32, 16, 8, 8


def keras_backbone():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(
        CHANNELS, 3, strides=2, use_bias=False, name="conv"
    )(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")(
        x
    )
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="convnet")


class BNHead(nn.Module):
    """The reference `DINOHead(use_bn=True)`: Linear, BN, GELU blocks."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(CHANNELS, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, BOTTLENECK),
        )
        self.last_layer = nn.Module()
        self.last_layer.weight_g = nn.Parameter(torch.ones(OUT, 1))
        self.last_layer.weight_v = nn.Parameter(torch.zeros(OUT, BOTTLENECK))

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        v = self.last_layer.weight_v
        w = self.last_layer.weight_g * v / v.norm(dim=1, keepdim=True)
        return x @ w.t()


def build_torch(arch, norm_last_layer, drop_path_rate=0.0):
    backbone = nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3, stride=2, bias=False),
        nn.BatchNorm2d(CHANNELS),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    head = BNHead()
    head.last_layer.weight_g.requires_grad = False
    return ref.MultiCropWrapper(backbone, head)


class ReferenceBN(ref.ReferenceDINO):
    _build = staticmethod(build_torch)


# torch name -> (Keras path under the backbone / head, layout)
BACKBONE = {
    "0.weight": ("conv/kernel", "conv"),
    "1.weight": ("bn/gamma", None),
    "1.bias": ("bn/beta", None),
    "1.running_mean": ("bn/moving_mean", None),
    "1.running_var": ("bn/moving_variance", None),
}
HEAD = {
    "mlp.0.weight": ("dense_0/kernel", "dense"),
    "mlp.0.bias": ("dense_0/bias", None),
    "mlp.1.weight": ("batch_norm_0/gamma", None),
    "mlp.1.bias": ("batch_norm_0/beta", None),
    "mlp.1.running_mean": ("batch_norm_0/moving_mean", None),
    "mlp.1.running_var": ("batch_norm_0/moving_variance", None),
    "mlp.3.weight": ("dense_1/kernel", "dense"),
    "mlp.3.bias": ("dense_1/bias", None),
    "mlp.4.weight": ("batch_norm_1/gamma", None),
    "mlp.4.bias": ("batch_norm_1/beta", None),
    "mlp.4.running_mean": ("batch_norm_1/moving_mean", None),
    "mlp.4.running_var": ("batch_norm_1/moving_variance", None),
    "mlp.6.weight": ("dense_2/kernel", "dense"),
    "mlp.6.bias": ("dense_2/bias", None),
    "last_layer.weight_v": ("last_layer_v", "dense"),
    "last_layer.weight_g": ("last_layer_g", "dense"),
}


# The head's Linear biases just before a train-mode BatchNorm: their exact
# gradient is 0 (the BatchNorm removes the mean), so they move by rounding
# noise only, which differs between any two implementations.
NOISE_ONLY = ("head.mlp.0.bias", "head.mlp.3.bias")


def _to_torch(w, layout):
    if layout == "conv":
        return w.transpose(3, 2, 0, 1)
    if layout == "dense":
        return w.T
    return w


def _weights(layer, tiny):
    prefix = layer.name + "/"
    return {
        w.path[len(prefix) :] if w.path.startswith(prefix) else w.path: tiny.np(
            w
        )
        for w in layer.weights
    }


def _state_dict(backbone, head):
    sd = {}
    for prefix, table, values in (
        ("backbone.", BACKBONE, backbone),
        ("head.", HEAD, head),
    ):
        for name, (path, layout) in table.items():
            sd[prefix + name] = torch.tensor(
                np.ascontiguousarray(_to_torch(values[path], layout))
            )
    return sd


@pytest.mark.slow
def test_three_steps_with_batch_norm_match_reference(tiny):
    keras.utils.set_random_seed(0)
    model = DINO(
        keras_backbone(),
        out_dim=OUT,
        hidden_dim=HIDDEN,
        bottleneck_dim=BOTTLENECK,
        use_bn_in_head=True,
    )
    crops = tiny.crops(batch=BATCH)
    model.compile(
        optimizer=DINOSGD(clip_norm=CLIP),
        schedule=DINOSchedule.paper(
            batch_size=BATCH,
            steps_per_epoch=1,
            epochs=EPOCHS,
            learning_rate=20.0,
            warmup_epochs=1,
            weight_decay=0.5,
            weight_decay_end=2.0,
            teacher_momentum=0.9,
            freeze_last_layer_epochs=1,
        ),
    )
    sd = _state_dict(
        _weights(model.student_backbone, tiny),
        _weights(model.student_head, tiny),
    )
    history = model.fit(
        x=crops, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0
    )
    reference = ReferenceBN(
        sd,
        arch={"out_dim": OUT},
        ncrops=len(crops),
        lr_schedule=ref.cosine_scheduler(
            20.0 * BATCH / 256, 1e-6, EPOCHS, 1, warmup_epochs=1
        ),
        wd_schedule=ref.cosine_scheduler(0.5, 2.0, EPOCHS, 1),
        momentum_schedule=ref.cosine_scheduler(0.9, 1.0, EPOCHS, 1),
        teacher_temp_schedule=np.full(EPOCHS, 0.04),
        clip_grad=CLIP,
        freeze_last_layer=1,
        niter_per_ep=1,
        optimizer="sgd",
    )
    ref_losses = [reference.train_step(crops) for _ in range(EPOCHS)]
    np.testing.assert_allclose(history.history["loss"], ref_losses, atol=ATOL)

    moved = 0
    for torch_model, backbone, head in (
        (reference.student, model.student_backbone, model.student_head),
        (reference.teacher, model.teacher_backbone, model.teacher_head),
    ):
        expected = {
            k: v.detach().numpy() for k, v in torch_model.state_dict().items()
        }
        got = _state_dict(_weights(backbone, tiny), _weights(head, tiny))
        for name, value in got.items():
            if name.endswith("running_var"):
                continue  # torch keeps the unbiased batch variance
            if name in NOISE_ONLY:
                continue
            np.testing.assert_allclose(
                value.numpy(), expected[name], atol=ATOL, err_msg=name
            )
            moved += not np.allclose(value.numpy(), sd[name].numpy())
    # Weights and running means of student and teacher moved (the fixed
    # gain g, the variances and the noise-only biases aside).
    assert moved >= 2 * (len(sd) - 3 - 2 - len(NOISE_ONLY))
    np.testing.assert_allclose(
        tiny.np(model.center), reference.loss.center.numpy(), atol=ATOL
    )
