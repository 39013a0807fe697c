"""Imported DINO ResNet checkpoints reproduce a torch ResNet written here.

The reference is a bottleneck ResNet written below with plain `torch.nn`
in torchvision's layout and naming (stride in the 3x3 convolution, the
`downsample` shortcut, `fc` replaced by `nn.Identity` as DINO does), with
random weights and random BatchNorm statistics. Its `state_dict` and a
full DINO training checkpoint built from two such networks are written
with `torch.save` and read back through the torch-free reader.
"""

import argparse
import copy

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keras_dino.models import DINO
from keras_dino.models import ResNetBackbone
from keras_dino.weights import backbone_from_checkpoint
from keras_dino.weights import describe_checkpoint
from keras_dino.weights import dino_from_checkpoint
from keras_dino.weights.convert import load_weights_file
from keras_dino.weights.resnet_convert import convert_resnet_config
from keras_dino.weights.resnet_convert import convert_resnet_weights
from keras_dino.weights.resnet_convert import is_resnet_state_dict
from keras_dino.weights.resnet_convert import load_resnet_backbone
from keras_dino.weights.resnet_convert import load_resnet_dino

RTOL = 1e-4  # of the largest output magnitude
# Train mode: Keras computes the batch variance as E[x^2] - E[x]^2, torch
# in two passes; over 53 BatchNorms, some on 4 x 2 x 2 values per
# channel, float32 rounding grows to about 1e-4 of the output scale.
TRAIN_RTOL = 5e-4

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _images(shape, seed=0):
    return np.random.RandomState(seed).uniform(-2, 2, shape).astype("float32")


def _nchw(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _assert_close(actual, expected, rtol=RTOL):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


# --- the reference network, in torch ----------------------------------------


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5): the stride is in the 3x3 conv."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class TorchResNet(nn.Module):
    """A torchvision-layout ResNet with DINO's `fc = nn.Identity()`."""

    def __init__(self, layers=(3, 4, 6, 3), width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, count in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for b in range(count):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(Bottleneck(inplanes, planes, stride))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Identity()

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomize(module, seed):
    """Random weights and BatchNorm statistics that keep outputs O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, (2.0 / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1, generator=g)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(seed) + 1000)
    return module


class TorchDINOHead(nn.Module):
    """The reference DINOHead with BatchNorm (`use_bn=True`)."""

    def __init__(self, in_dim, out_dim, hidden, bottleneck, nlayers=2):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden)]
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden, bottleneck))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.utils.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


# --- backbone-only files -----------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    torch.manual_seed(0)
    net = randomize(TorchResNet(), seed=1).eval()
    state = net.state_dict()
    # A torchvision classifier, as a backbone saved before `fc` was
    # replaced would hold; DINO drops it.
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("rn50") / "dino_resnet50_pretrain.pth"
    torch.save(state, path)
    return net, path


@pytest.fixture(scope="module")
def keras_resnet50(resnet50_file):
    _, path = resnet50_file
    return load_resnet_backbone(str(path))


def test_resnet50_config_and_skipped_tensors(resnet50_file, keras_resnet50):
    _, path = resnet50_file
    tensors, _ = load_weights_file(path)
    assert is_resnet_state_dict(tensors)
    assert convert_resnet_config(tensors) == {
        "block_counts": (3, 4, 6, 3),
        "width": 64,
    }
    assert isinstance(keras_resnet50, ResNetBackbone)
    assert keras_resnet50.get_config()["block_counts"] == [3, 4, 6, 3]
    skipped = convert_resnet_weights(keras_resnet50, tensors)
    assert "fc.weight" in skipped and "fc.bias" in skipped
    assert "bn1.num_batches_tracked" in skipped
    assert len(skipped) == 2 + 53  # fc + every BatchNorm's counter


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (1, 57, 75, 3)])
def test_resnet50_inference_parity(resnet50_file, keras_resnet50, shape):
    net, _ = resnet50_file
    images = _images(shape, seed=shape[1])
    with torch.no_grad():
        expected = net(_nchw(images)).numpy()
    assert expected.shape == (shape[0], 2048)
    assert 0.1 < np.abs(expected).max() < 100  # a meaningful scale
    _assert_close(_np(keras_resnet50(images, training=False)), expected)


def test_resnet50_train_mode_parity(resnet50_file, keras_resnet50):
    """Batch statistics in the forward; running means move the same way."""
    net, _ = resnet50_file
    saved = keras_resnet50.get_weights()
    images = _images((4, 64, 64, 3), seed=11)
    train_net = copy.deepcopy(net).train()
    try:
        with torch.no_grad():
            expected = train_net(_nchw(images)).numpy()
        actual = _np(keras_resnet50(images, training=True))
        _assert_close(actual, expected, TRAIN_RTOL)
        # Running statistics after one step (momentum 0.1 in torch). The
        # means match; PyTorch updates the variance with the unbiased
        # batch variance, Keras with the biased one: they differ by the
        # factor n / (n - 1) on the batch part, n = batch * height * width.
        for keras_name, torch_bn, n in [
            ("bn1", train_net.bn1, 4 * 32 * 32),
            ("layer4_2_bn3", train_net.layer4[2].bn3, 4 * 2 * 2),
        ]:
            layer = keras_resnet50.get_layer(keras_name)
            _assert_close(_np(layer.moving_mean), torch_bn.running_mean.numpy())
            old_var = net.get_submodule(
                "bn1" if keras_name == "bn1" else "layer4.2.bn3"
            ).running_var.numpy()
            batch_var = (torch_bn.running_var.numpy() - 0.9 * old_var) / 0.1
            _assert_close(
                _np(layer.moving_variance),
                0.9 * old_var + 0.1 * batch_var * (n - 1) / n,
            )
    finally:
        keras_resnet50.set_weights(saved)
    # Inference is unchanged once the weights are restored.
    with torch.no_grad():
        expected = net(_nchw(images)).numpy()
    _assert_close(_np(keras_resnet50(images, training=False)), expected)


def test_small_resnet_from_student_of_full_checkpoint(tmp_path):
    """`module.`-prefixed students and `backbone.`-prefixed tensors load."""
    net = randomize(TorchResNet((1, 2, 1, 1), width=8), seed=3).eval()
    state = {f"module.backbone.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "student.pth"
    torch.save({"student": state, "epoch": 3}, path)
    images = _images((2, 40, 40, 3), seed=5)
    with torch.no_grad():
        expected = net(_nchw(images)).numpy()
    backbone = ResNetBackbone.from_preset(str(path), checkpoint_key="student")
    assert backbone.get_config()["width"] == 8
    _assert_close(_np(backbone(images, training=False)), expected)
    # The generic builder dispatches on the tensor names.
    obj, _ = load_weights_file(path)
    backbone = backbone_from_checkpoint(obj, checkpoint_key="student")
    assert isinstance(backbone, ResNetBackbone)
    _assert_close(_np(backbone(images, training=False)), expected)


def test_preset_architecture_without_download():
    backbone = ResNetBackbone.from_preset(
        "dino_resnet50", load_weights=False, width=2
    )
    assert backbone.get_config()["block_counts"] == [3, 4, 6, 3]
    assert "dino_resnet50" in ResNetBackbone.presets


def test_converter_errors(tmp_path):
    net = randomize(TorchResNet((1, 1, 1, 1), width=4), seed=0)
    tensors = {k: v.numpy() for k, v in net.state_dict().items()}
    backbone = ResNetBackbone(**convert_resnet_config(tensors))
    missing = dict(tensors)
    del missing["layer2.0.bn2.running_var"]
    with pytest.raises(ValueError, match="layer2.0.bn2.running_var"):
        convert_resnet_weights(backbone, missing)
    wrong = ResNetBackbone(block_counts=(1, 1, 1, 1), width=8)
    with pytest.raises(ValueError, match="shape"):
        convert_resnet_weights(wrong, tensors)
    basic = {
        k: v
        for k, v in tensors.items()
        if ".conv3." not in k and "bn3" not in k
    }
    with pytest.raises(ValueError, match="BasicBlock"):
        convert_resnet_config(basic)
    gap = {k: v for k, v in tensors.items() if not k.startswith("layer3.")}
    with pytest.raises(ValueError, match="layer3"):
        convert_resnet_config(gap)
    vit_file = tmp_path / "vit.pth"
    torch.save({"pos_embed": torch.zeros(1, 5, 8)}, vit_file)
    with pytest.raises(ValueError, match="torchvision ResNet"):
        load_resnet_backbone(str(vit_file))


# --- full training checkpoints -----------------------------------------------

LAYERS, WIDTH = (1, 2, 1, 1), 8  # 256 features
HEAD = {"hidden": 32, "bottleneck": 16, "out_dim": 64}


def _network(seed):
    backbone = randomize(TorchResNet(LAYERS, WIDTH), seed).eval()
    head = TorchDINOHead(256, HEAD["out_dim"], HEAD["hidden"], 16)
    randomize(head, seed + 100).eval()
    return backbone, head


def _full_checkpoint(path, plain_last_layer=False):
    torch.manual_seed(0)  # the weight-normalised layers' default init
    networks = {"student": _network(0), "teacher": _network(1)}
    states = {}
    for name, (backbone, head) in networks.items():
        prefix = "module." if name == "student" else ""  # DDP student
        state = {
            f"{prefix}backbone.{k}": v for k, v in backbone.state_dict().items()
        }
        head_state = head.state_dict()
        if plain_last_layer:  # an output layer without weight norm
            with torch.no_grad():
                weight = head.last_layer.weight.detach().clone()
                weight *= torch.linspace(0.5, 1.5, weight.shape[0])[:, None]
            head_state = {
                k: v for k, v in head_state.items() if "last_layer" not in k
            }
            head_state["last_layer.weight"] = weight
        state.update({f"{prefix}head.{k}": v for k, v in head_state.items()})
        states[name] = state
    params = [
        nn.Parameter(v.clone().float()) for v in states["student"].values()
    ]
    optimizer = torch.optim.SGD(params, lr=0.03, momentum=0.9)
    checkpoint = {
        **states,
        "optimizer": optimizer.state_dict(),
        "epoch": 12,
        "args": argparse.Namespace(
            arch="resnet50",
            out_dim=HEAD["out_dim"],
            norm_last_layer=True,
            use_bn_in_head=True,
            drop_path_rate=0.1,
            optimizer="sgd",
        ),
        "dino_loss": {"center": torch.randn(1, HEAD["out_dim"])},
        "fp16_scaler": None,
    }
    torch.save(checkpoint, path)
    return networks, checkpoint


def _head_reference(head, features, plain_weight=None):
    with torch.no_grad():
        x = F.normalize(head.mlp(torch.from_numpy(features)), dim=-1)
        if plain_weight is not None:
            return (x @ plain_weight.T).numpy()
        return head.last_layer(x).numpy()


@pytest.mark.parametrize("plain_last_layer", [False, True])
def test_full_checkpoint_builds_resnet_dino(tmp_path, plain_last_layer):
    path = tmp_path / "checkpoint.pth"
    networks, checkpoint = _full_checkpoint(path, plain_last_layer)
    if plain_last_layer:
        model = load_resnet_dino(str(path))
    else:  # DINO.from_preset -> weights.dino_from_checkpoint dispatches
        model = DINO.from_preset(str(path))
    assert isinstance(model, DINO)
    assert isinstance(model.student_backbone, ResNetBackbone)
    assert isinstance(model.teacher_backbone, ResNetBackbone)
    assert model.use_bn_in_head and model.head_layers == 2
    assert (model.hidden_dim, model.bottleneck_dim) == (32, 16)
    assert model.out_dim == HEAD["out_dim"]
    # A plain output layer has free gains; else args.norm_last_layer.
    assert model.norm_last_layer is (not plain_last_layer)
    np.testing.assert_array_equal(
        _np(model.center), checkpoint["dino_loss"]["center"].numpy()
    )
    images = _images((3, 48, 48, 3), seed=8)
    for name in ("student", "teacher"):
        backbone, head = networks[name]
        keras_backbone = getattr(model, f"{name}_backbone")
        keras_head = getattr(model, f"{name}_head")
        with torch.no_grad():
            features = backbone(_nchw(images)).numpy()
        _assert_close(_np(keras_backbone(images, training=False)), features)
        prefix = "module.head." if name == "student" else "head."
        plain = checkpoint[name].get(f"{prefix}last_layer.weight")
        expected = _head_reference(head, features, plain)
        _assert_close(_np(keras_head(features, training=False)), expected)
        # The head's BatchNorm on batch statistics, as the reference's
        # train-mode teacher and student use it.
        saved = keras_head.get_weights()
        head.train()
        expected = _head_reference(head, features, plain)
        head.eval()
        norm = keras_head.norm_layers[0]
        trainable = norm.trainable
        norm.trainable = True  # Keras BN uses batch stats only when trainable
        try:
            actual = _np(keras_head(features, training=True))
        finally:
            norm.trainable = trainable
            keras_head.set_weights(saved)
        _assert_close(actual, expected)


def test_full_checkpoint_architecture_only_and_summary(tmp_path):
    path = tmp_path / "checkpoint.pth"
    _full_checkpoint(path, plain_last_layer=True)
    model = load_resnet_dino(str(path), load_weights=False)
    assert model.student_backbone.get_config()["block_counts"] == list(LAYERS)
    assert not np.any(_np(model.center))
    obj, _ = load_weights_file(path)
    summary = describe_checkpoint(obj)
    assert summary["format"] == "full DINO training checkpoint"
    assert summary["backbone_config"] == {
        "block_counts": LAYERS,
        "width": WIDTH,
    }
    assert summary["head_config"]["use_bn"]
    assert summary["head_config"]["norm_last_layer"] is False
    assert summary["epoch"] == 12 and summary["center_size"] == 64
    with pytest.raises(ValueError, match="stochastic depth"):
        dino_from_checkpoint(obj, drop_path_rate=0.1)
