"""Tests of presets, downloads, hash checks and converter errors."""

import hashlib
import os

import keras
import numpy as np
import pytest
from checkpoint_factory import tiny_state_dict
from checkpoint_factory import write_checkpoint

from keras_dino.models.vit_backbone import ViTBackbone
from keras_dino.weights import get_checkpoint_file
from keras_dino.weights.convert import convert_backbone_config
from keras_dino.weights.convert import convert_backbone_weights
from keras_dino.weights.convert import split_checkpoint
from keras_dino.weights.convert import to_reference_names
from keras_dino.weights.presets import CHECKPOINTS


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "src" / "tiny_dino.pth"
    path.parent.mkdir()
    return path, write_checkpoint(path)


def _check_weights(backbone, sd):
    kernel = keras.ops.convert_to_numpy(backbone.blocks[1].attention.qkv.kernel)
    np.testing.assert_array_equal(kernel, sd["blocks.1.attn.qkv.weight"].T)
    conv = keras.ops.convert_to_numpy(
        backbone.patch_embedding.projection.kernel
    )
    np.testing.assert_array_equal(
        conv, sd["patch_embed.proj.weight"].numpy().transpose(2, 3, 1, 0)
    )


def test_local_path_and_file_url_load_the_same(checkpoint, tmp_path):
    path, sd = checkpoint
    local = ViTBackbone.from_preset(str(path), num_heads=2)
    url = ViTBackbone.from_preset(
        path.as_uri(),
        num_heads=2,
        file_hash=_sha256(path),
        cache_dir=str(tmp_path / "cache"),
    )
    assert (tmp_path / "cache" / "keras_dino" / path.name).exists()
    for backbone in (local, url):
        assert backbone.get_config()["hidden_dim"] == 16
        assert backbone.image_size == 16 and backbone.patch_size == 8
        _check_weights(backbone, sd)
    images = np.random.RandomState(0).rand(1, 24, 16, 3).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(local(images)),
        keras.ops.convert_to_numpy(url(images)),
    )


def test_preset_name_downloads_once_into_the_cache(
    checkpoint, tmp_path, monkeypatch
):
    path, _ = checkpoint
    entry = {**CHECKPOINTS["dino_vits16"], "url": path.as_uri()}
    entry["file_hash"] = _sha256(path)
    monkeypatch.setitem(CHECKPOINTS, "dino_vits16", entry)
    cache = str(tmp_path / "cache")
    first = get_checkpoint_file("dino_vits16", cache_dir=cache)
    path.unlink()  # A second call must not need the origin.
    assert get_checkpoint_file("dino_vits16", cache_dir=cache) == first
    # The weights are not ViT-S/16: the preset's architecture is checked.
    with pytest.raises(ValueError, match="the preset is ViT-S/16"):
        ViTBackbone.from_preset("dino_vits16", cache_dir=cache, num_heads=2)


def test_wrong_hash_is_a_clear_error(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    cache = tmp_path / "cache"
    entry = {
        **CHECKPOINTS["dino_vitb8"],
        "url": path.as_uri(),
        "file_hash": "0" * 64,
    }
    monkeypatch.setitem(CHECKPOINTS, "dino_vitb8", entry)
    with pytest.raises(ValueError, match="SHA-256"):
        ViTBackbone.from_preset("dino_vitb8", cache_dir=str(cache))
    assert not (cache / "keras_dino" / path.name).exists()
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        ViTBackbone.from_preset(str(path), file_hash="0" * 64, num_heads=2)


def test_truncated_download_is_a_clear_error(checkpoint, tmp_path):
    path, _ = checkpoint
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        ViTBackbone.from_preset(
            truncated.as_uri(), cache_dir=str(tmp_path / "cache")
        )


def test_preset_architecture_without_weights():
    # num_layers=1 keeps the test light; the variant sets the rest.
    backbone = ViTBackbone.from_preset(
        "dino_vits8", load_weights=False, num_layers=1
    )
    assert (backbone.hidden_dim, backbone.patch_size) == (384, 8)
    assert backbone.num_heads == 6 and backbone.image_size == 224


def test_unknown_preset():
    with pytest.raises(ValueError, match="dino_vits16"):
        ViTBackbone.from_preset("dino_vitz99")


def test_official_urls():
    names = ["dino_vitb16", "dino_vitb8", "dino_vits16", "dino_vits8"]
    assert sorted(ViTBackbone.presets) == names
    assert sorted(CHECKPOINTS) == names
    assert ViTBackbone.presets["dino_vitb8"]["variant"] == "ViT-B/8"
    base = "https://dl.fbaipublicfiles.com/dino/"
    assert CHECKPOINTS["dino_vits16"]["url"] == (
        base + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
    )
    assert CHECKPOINTS["dino_vitb8"]["url"] == (
        base + "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    )
    assert CHECKPOINTS["dino_vits8"]["full_checkpoint_url"] == (
        base + "dino_deitsmall8_pretrain/"
        "dino_deitsmall8_pretrain_full_checkpoint.pth"
    )


def test_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    # An origin that cannot be fetched, as a URL is without network access.
    missing = (tmp_path / "nowhere" / "dino_deitsmall16_pretrain.pth").as_uri()
    entry = {**CHECKPOINTS["dino_vits16"], "url": missing}
    monkeypatch.setitem(CHECKPOINTS, "dino_vits16", entry)
    cache = tmp_path / "cache"
    expected = os.path.join(
        str(cache), "keras_dino", "dino_deitsmall16_pretrain.pth"
    )
    with pytest.raises(OSError) as info:
        ViTBackbone.from_preset("dino_vits16", cache_dir=str(cache))
    message = str(info.value)
    assert expected in message
    assert "local path" in message and "$KERAS_HOME" in message


def _hf_cache(root, repo_id, revision, source):
    """Lays `source` out as `huggingface-cli download` does."""
    org, name = repo_id.split("/")
    repo = root / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (snapshot / "pytorch_model.bin").write_bytes(source.read_bytes())
    return snapshot


def test_hugging_face_id_from_the_local_cache(
    checkpoint, tmp_path, monkeypatch
):
    path, sd = checkpoint
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    # An older snapshot without weights must not be picked.
    (hub / "models--facebook--dino-vits16" / "snapshots" / "old").mkdir(
        parents=True
    )
    snapshot = _hf_cache(hub, "facebook/dino-vits16", "abc123", path)
    assert get_checkpoint_file("facebook/dino-vits16") == str(snapshot)
    assert get_checkpoint_file("hf://facebook/dino-vits16") == str(snapshot)
    backbone = ViTBackbone.from_preset("facebook/dino-vits16", num_heads=2)
    _check_weights(backbone, sd)
    with pytest.raises(ValueError, match="huggingface-cli download"):
        ViTBackbone.from_preset("facebook/dino-vitb8")


# --- converter errors ---------------------------------------------------------


def _numpy(sd):
    return {k: v.numpy() for k, v in sd.items()}


def test_inferred_config():
    sd = _numpy(tiny_state_dict(dim=192, depth=3, patch=16, grid=3))
    sd.pop("blocks.0.attn.qkv.bias")
    assert convert_backbone_config(sd, drop_path_rate=0.1) == {
        "image_size": 48,
        "patch_size": 16,
        "hidden_dim": 192,
        "num_layers": 3,
        "num_heads": 3,
        "mlp_ratio": 4.0,
        "qkv_bias": False,
        "layer_norm_epsilon": 1e-6,
        "drop_path_rate": 0.1,
    }


def test_unknown_width_needs_num_heads():
    with pytest.raises(ValueError, match="num_heads"):
        convert_backbone_config(_numpy(tiny_state_dict()))


def test_mismatches_name_the_keys():
    sd = _numpy(tiny_state_dict())
    backbone = ViTBackbone(**convert_backbone_config(sd, num_heads=2))

    extra = {**sd, "blocks.0.attn.extra": np.zeros(3)}
    with pytest.raises(ValueError, match="blocks.0.attn.extra"):
        convert_backbone_weights(backbone, extra)

    missing = dict(sd)
    del missing["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match=r"Missing tensors: \['blocks.1.mlp"):
        convert_backbone_weights(backbone, missing)

    wrong = {**sd, "norm.weight": np.zeros(17, "float32")}
    with pytest.raises(ValueError, match="final_norm/gamma"):
        convert_backbone_weights(backbone, wrong)

    # Nothing was assigned by the failed calls.
    gamma = keras.ops.convert_to_numpy(backbone.final_norm.gamma)
    np.testing.assert_array_equal(gamma, np.ones(16))


def test_deliberately_skipped_keys_are_reported():
    sd = _numpy(tiny_state_dict())
    sd["head.weight"] = np.zeros((10, 16), "float32")  # a ViT classifier
    backbone = ViTBackbone(**convert_backbone_config(sd, num_heads=2))
    assert convert_backbone_weights(backbone, sd) == ["head.weight"]


def test_hugging_face_names_fuse_qkv():
    sd = _numpy(tiny_state_dict(depth=1))
    qkv_w, qkv_b = sd["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.bias"]
    hf = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd[
            "patch_embed.proj.weight"
        ],
        "embeddings.patch_embeddings.projection.bias": sd[
            "patch_embed.proj.bias"
        ],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    layer = "encoder.layer.0."
    for i, name in enumerate(("query", "key", "value")):
        rows = slice(16 * i, 16 * (i + 1))
        hf[f"{layer}attention.attention.{name}.weight"] = qkv_w[rows]
        hf[f"{layer}attention.attention.{name}.bias"] = qkv_b[rows]
    for hf_name, name in (
        ("layernorm_before", "norm1"),
        ("attention.output.dense", "attn.proj"),
        ("layernorm_after", "norm2"),
        ("intermediate.dense", "mlp.fc1"),
        ("output.dense", "mlp.fc2"),
    ):
        for param in ("weight", "bias"):
            hf[f"{layer}{hf_name}.{param}"] = sd[f"blocks.0.{name}.{param}"]
    # ViTForImageClassification layout: `vit.` body plus `classifier.`.
    classifier = {f"vit.{k}": v for k, v in hf.items()}
    classifier["classifier.weight"] = np.zeros((5, 16), "float32")
    classifier["classifier.bias"] = np.zeros(5, "float32")
    for tensors, expected_skipped in (
        (hf, []),
        (classifier, ["classifier.bias", "classifier.weight"]),
    ):
        backbone = split_checkpoint(tensors).backbone
        renamed, skipped = to_reference_names(backbone)
        assert skipped == expected_skipped
        assert set(renamed) == set(sd)
        for key, value in sd.items():
            np.testing.assert_array_equal(renamed[key], value, err_msg=key)


def test_hugging_face_missing_value_projection():
    sd = {
        "embeddings.position_embeddings": np.zeros((1, 5, 16)),
        "encoder.layer.0.attention.attention.query.weight": np.zeros((16, 16)),
        "encoder.layer.0.attention.attention.key.weight": np.zeros((16, 16)),
    }
    with pytest.raises(ValueError, match="query, key and value"):
        to_reference_names(sd)


def test_full_checkpoint_parts():
    sd = tiny_state_dict()
    obj = {
        "student": {f"module.backbone.{k}": v.numpy() for k, v in sd.items()},
        "teacher": {f"backbone.{k}": v.numpy() for k, v in sd.items()},
        "epoch": 3,
        "optimizer": {"state": {}, "param_groups": []},
        "dino_loss": {"center": np.ones((1, 8), "float32")},
    }
    parts = split_checkpoint(obj)
    assert set(parts.backbone) == set(sd) and parts.head is None
    assert parts.center.shape == (1, 8)
    assert parts.skipped == ["epoch", "optimizer", "student"]
    student = split_checkpoint(obj, checkpoint_key="student")
    assert set(student.backbone) == set(sd)
    with pytest.raises(ValueError, match="checkpoint_key"):
        split_checkpoint(obj, checkpoint_key="ema")


def test_low_precision_dtype(checkpoint):
    path, sd = checkpoint
    backbone = ViTBackbone.from_preset(str(path), num_heads=2, dtype="bfloat16")
    kernel = backbone.blocks[1].attention.qkv.kernel
    assert kernel.dtype == "bfloat16"
    kernel = keras.ops.convert_to_numpy(keras.ops.cast(kernel, "float32"))
    expected = sd["blocks.1.attn.qkv.weight"].numpy().T
    np.testing.assert_allclose(kernel, expected, atol=0.02, rtol=0.01)
