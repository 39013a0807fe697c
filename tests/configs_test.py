"""Named configurations: the ResNet-50 recipe's values."""

import pytest

from keras_dino import configs
from keras_dino.models import RESNET_VARIANTS


def test_imagenet_resnet50_is_the_readme_command():
    config = configs.get_config("imagenet_resnet50")
    assert config["arch"] in RESNET_VARIANTS
    expected = {
        "optimizer": "sgd",
        "lr": 0.03,
        "weight_decay": 1e-4,
        "weight_decay_end": 1e-4,
        "global_crops_scale": (0.14, 1.0),
        "local_crops_scale": (0.05, 0.14),
        "use_bn_in_head": True,
        "drop_path_rate": 0.0,
        "patch_size": None,
    }
    assert {k: config[k] for k in expected} == expected
    # Reference defaults that the README command leaves alone.
    vits16 = configs.get_config("imagenet_vits16")
    for key in (
        "out_dim",
        "local_crops_number",
        "teacher_temp",
        "warmup_teacher_temp",
        "momentum_teacher",
        "clip_grad",
        "freeze_last_layer",
        "epochs",
        "warmup_epochs",
        "min_lr",
    ):
        assert config[key] == vits16[key], key
    # Same keys as every other configuration (the recipe's flags).
    assert set(config) == set(vits16)


def test_get_config_copies():
    config = configs.get_config("imagenet_resnet50", epochs=3)
    assert config["epochs"] == 3
    assert configs.get_config("imagenet_resnet50")["epochs"] == 100
    with pytest.raises(ValueError, match="Unknown configuration keys"):
        configs.get_config("imagenet_resnet50", arch_name="resnet50")
