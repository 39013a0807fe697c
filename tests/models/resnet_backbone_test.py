"""ResNetBackbone: layout, shapes, config and .keras round trips."""

import keras
import numpy as np
import pytest

from keras_dino.models import RESNET_VARIANTS
from keras_dino.models import ResNetBackbone

# One bottleneck block per stage on a stem of 8 channels: 256 features.
SMALL = {"block_counts": (1, 1, 1, 1), "width": 8}


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def resnet_params(block_counts, width=64):
    """Trainable parameters of torchvision's ResNet without `fc`."""
    params = 7 * 7 * 3 * width + 2 * width  # conv1, bn1
    inplanes = width
    for stage, count in enumerate(block_counts):
        planes = width * 2**stage
        for block in range(count):
            params += inplanes * planes + 2 * planes
            params += 9 * planes * planes + 2 * planes
            params += planes * 4 * planes + 2 * 4 * planes
            if block == 0:  # every stage's first block changes the shape
                params += inplanes * 4 * planes + 2 * 4 * planes
            inplanes = 4 * planes
    return params


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_resnet50_layout():
    backbone = ResNetBackbone.from_variant("resnet50")
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 in `fc`.
    assert _trainable_count(backbone) == 25_557_032 - 2_049_000
    assert _trainable_count(backbone) == resnet_params((3, 4, 6, 3))
    batch_norms = [
        layer
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    convs = [
        layer
        for layer in backbone.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    assert len(batch_norms) == 53 and len(convs) == 53
    for bn in batch_norms:
        assert bn.epsilon == 1e-5 and bn.momentum == 0.9
    # torchvision's init: kaiming_normal_(fan_out, relu); BN 1 and 0.
    for name in ("conv1", "layer3_0_conv2", "layer4_2_conv3"):
        kernel = _np(backbone.get_layer(name).kernel)
        kh, kw, _, out = kernel.shape
        std = (2.0 / (kh * kw * out)) ** 0.5
        assert abs(kernel.mean()) < 0.05 * std
        assert abs(kernel.std() / std - 1) < 0.05
    assert np.all(_np(backbone.get_layer("bn1").gamma) == 1)
    assert np.all(_np(backbone.get_layer("bn1").beta) == 0)
    assert backbone.output_dim == 2048
    assert tuple(backbone.output_shape) == (None, 2048)
    # Stride in the 3x3 convolution (v1.5), not in the first 1x1.
    assert backbone.get_layer("layer2_0_conv1").strides == (1, 1)
    assert backbone.get_layer("layer2_0_conv2").strides == (2, 2)
    assert backbone.get_layer("layer2_0_downsample_0").strides == (2, 2)
    assert backbone.get_layer("layer1_0_downsample_0").strides == (1, 1)
    with pytest.raises(ValueError, match="No such layer"):
        backbone.get_layer("layer1_1_downsample_0")


def test_variants_and_param_formula():
    assert RESNET_VARIANTS["resnet50"]["block_counts"] == (3, 4, 6, 3)
    assert RESNET_VARIANTS["resnet101"]["block_counts"] == (3, 4, 23, 3)
    small = ResNetBackbone(**SMALL)
    assert _trainable_count(small) == resnet_params((1, 1, 1, 1), 8)
    deeper = ResNetBackbone(block_counts=(2, 1, 1, 2), width=4)
    assert _trainable_count(deeper) == resnet_params((2, 1, 1, 2), 4)
    with pytest.raises(ValueError, match="Unknown ResNet variant"):
        ResNetBackbone.from_variant("resnet18")
    with pytest.raises(ValueError, match="block_counts"):
        ResNetBackbone(block_counts=(1, 1, 1))


@pytest.mark.parametrize(
    "shape", [(2, 32, 32, 3), (1, 64, 48, 3), (3, 17, 23, 3)]
)
def test_output_shapes(shape):
    backbone = ResNetBackbone(**SMALL)
    out = backbone(_images(shape))
    assert tuple(out.shape) == (shape[0], 256)
    assert np.all(_np(out) >= 0)  # average of ReLU outputs


def test_training_uses_batch_statistics():
    backbone = ResNetBackbone(**SMALL)
    images = _images((4, 32, 32, 3), seed=1)
    before = _np(backbone.get_layer("bn1").moving_mean)
    inference = _np(backbone(images, training=False))
    train = _np(backbone(images, training=True))
    assert not np.allclose(inference, train)
    after = _np(backbone.get_layer("bn1").moving_mean)
    assert not np.allclose(before, after)


def test_seeded_initialisation():
    keras.utils.set_random_seed(3)
    first = ResNetBackbone(**SMALL).get_weights()
    keras.utils.set_random_seed(3)
    second = ResNetBackbone(**SMALL).get_weights()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip():
    backbone = ResNetBackbone(
        block_counts=(1, 2, 1, 1), width=4, name="rn", dtype="float32"
    )
    config = backbone.get_config()
    assert config["block_counts"] == [1, 2, 1, 1]
    assert config["width"] == 4
    clone = ResNetBackbone.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == backbone.count_params()
    frozen = ResNetBackbone.from_config({**config, "trainable": False})
    assert not frozen.trainable_weights


def test_mixed_precision_config():
    backbone = ResNetBackbone(**SMALL, dtype="mixed_bfloat16")
    config = backbone.get_config()
    clone = ResNetBackbone.from_config(config)
    assert clone.get_layer("conv1").compute_dtype == "bfloat16"
    assert clone.get_layer("conv1").kernel.dtype == "float32"
    out = clone(_images((2, 32, 32, 3)))
    assert tuple(out.shape) == (2, 256)


def test_keras_save_load(tmp_path):
    backbone = ResNetBackbone(**SMALL)
    images = _images((2, 32, 32, 3), seed=3)
    backbone(images, training=True)  # moves the BatchNorm statistics
    expected = _np(backbone(images, training=False))
    path = tmp_path / "resnet.keras"
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ResNetBackbone)
    assert loaded.get_config() == backbone.get_config()
    np.testing.assert_allclose(
        _np(loaded(images, training=False)), expected, atol=1e-6
    )


def test_dino_on_resnet_keras_save_load(tmp_path):
    from keras_dino.models import DINO

    keras.utils.set_random_seed(0)
    model = DINO(
        ResNetBackbone(**SMALL),
        out_dim=32,
        hidden_dim=16,
        bottleneck_dim=8,
        head_layers=2,
        use_bn_in_head=True,
    )
    assert isinstance(model.teacher_backbone, ResNetBackbone)
    assert model.teacher_backbone.get_config()["width"] == 8
    crops = (_images((2, 32, 32, 3), 1), _images((2, 32, 32, 3), 2))
    expected = _np(model(crops, training=False))
    path = tmp_path / "dino_resnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.student_backbone, ResNetBackbone)
    np.testing.assert_allclose(
        _np(loaded(crops, training=False)), expected, atol=1e-5
    )
