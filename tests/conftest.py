"""Shared fixtures: tiny models, multi-crop batches and the data folder.

Everything here is sized for a 2-core CPU: hidden 16, one or two blocks,
out_dim <= 512, batches of 4.
"""

import os
import types
from pathlib import Path

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

if BACKEND == "torch":
    import torch

    # On a small, shared CPU, torch's intra-op thread pool makes every op of
    # these tiny models wait for busy cores (measured 35x slower per step
    # with 2 threads under load); one thread is fastest here.
    torch.set_num_threads(1)
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def tiny_backbone_config(**overrides):
    config = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_dim": 16,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.0,
    }
    config.update(overrides)
    return config


def make_backbone(**overrides):
    from keras_dino.models import ViTBackbone

    return ViTBackbone(**tiny_backbone_config(**overrides))


def make_dino(backbone=None, seed=0, **head_overrides):
    """A DINO on a tiny ViT (patch 8 on 32 px), out_dim 64 by default."""
    from keras_dino.models import DINO

    keras.utils.set_random_seed(seed)
    if backbone is None:
        backbone = make_backbone()
    head = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}
    head.update(head_overrides)
    return DINO(backbone, **head)


def multi_crop_batch(
    batch=4, global_size=32, local_size=16, num_local=2, seed=0
):
    """`(global_1, global_2, local_1, ...)` float32 NHWC crops."""
    rng = np.random.default_rng(seed)
    sizes = [global_size] * 2 + [local_size] * num_local
    return tuple(
        rng.normal(size=(batch, s, s, 3)).astype("float32") for s in sizes
    )


@pytest.fixture
def data_dir():
    if not DATA_DIR.is_dir():
        pytest.fail(f"The shared data folder {DATA_DIR} is missing.")
    return DATA_DIR


@pytest.fixture
def scratch(tmp_path):
    """A per-test temporary folder (pytest's `tmp_path`)."""
    return tmp_path


@pytest.fixture(scope="session")
def tiny():
    """The helpers above, for tests (conftest is not imported directly)."""
    return types.SimpleNamespace(
        backbone_config=tiny_backbone_config,
        backbone=make_backbone,
        dino=make_dino,
        crops=multi_crop_batch,
        np=to_numpy,
        backend=BACKEND,
        save_and_reload=save_and_reload,
        layer_round_trip=layer_round_trip,
        config_round_trip=config_round_trip,
        keras_round_trip=keras_round_trip,
    )


def pytest_report_header(config):
    return f"keras backend: {BACKEND} ({os.environ.get('KERAS_BACKEND')})"


def save_and_reload(model, directory, name="model.keras"):
    """`model.save` to a `.keras` file and `keras.saving.load_model`."""
    path = str(Path(directory) / name)
    model.save(path)
    return keras.saving.load_model(path)


def config_round_trip(layer, inputs, **call_kwargs):
    """`from_config(get_config())` with the same weights gives the same output.

    Returns `(output, output of the clone)`.
    """
    out = to_numpy(layer(inputs, **call_kwargs))
    clone = layer.__class__.from_config(layer.get_config())
    clone(inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    return out, to_numpy(clone(inputs, **call_kwargs))


def keras_round_trip(layer, inputs, directory):
    """`.keras` save/load of a layer inside a `Sequential` model.

    Returns `(output, output of the reloaded model)`.
    """
    model = keras.Sequential(
        [keras.Input(shape=tuple(inputs.shape[1:])), layer]
    )
    out = to_numpy(model(inputs))
    reloaded = save_and_reload(model, directory)
    assert isinstance(reloaded.layers[-1], layer.__class__)
    return out, to_numpy(reloaded(inputs))


def layer_round_trip(layer, inputs, directory, **call_kwargs):
    """Both round trips; returns `(output, clone output, reloaded output)`."""
    out, cloned = config_round_trip(layer, inputs, **call_kwargs)
    _, reloaded = keras_round_trip(layer, inputs, directory)
    return out, cloned, reloaded
