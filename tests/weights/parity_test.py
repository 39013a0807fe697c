"""Imported weights reproduce the reference models' outputs.

Two references: Hugging Face `ViTModel` (random weights, saved with
`save_pretrained` and with `torch.save`), and a small torch implementation
of the reference DINO ViT and head forward written here, including its
position-embedding interpolation by scale factor.
"""

import argparse
import math

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keras_dino.layers.dino_head import DINOHead
from keras_dino.models.vit_backbone import ViTBackbone
from keras_dino.weights.convert import convert_head_config
from keras_dino.weights.convert import convert_head_weights
from keras_dino.weights.torch_pickle import load_torch_file

ATOL = 1e-4


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _nchw(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _images(shape, seed=0):
    return np.random.RandomState(seed).uniform(-2, 2, shape).astype("float32")


# --- the reference DINO forward, in torch ------------------------------------


def reference_state_dict(dim, depth, patch, grid, seed=0, mlp_ratio=4):
    """Random tensors with the official DINO ViT names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=0.05):
        return torch.randn(*shape, generator=g) * std

    sd = {
        "cls_token": randn(1, 1, dim, std=0.5),
        "pos_embed": randn(1, grid * grid + 1, dim, std=0.5),
        "patch_embed.proj.weight": randn(dim, 3, patch, patch),
        "patch_embed.proj.bias": randn(dim),
    }
    hidden = int(dim * mlp_ratio)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + randn(dim, std=0.1),
                b + "norm1.bias": randn(dim),
                b + "attn.qkv.weight": randn(3 * dim, dim, std=0.1),
                b + "attn.qkv.bias": randn(3 * dim),
                b + "attn.proj.weight": randn(dim, dim),
                b + "attn.proj.bias": randn(dim),
                b + "norm2.weight": 1 + randn(dim, std=0.1),
                b + "norm2.bias": randn(dim),
                b + "mlp.fc1.weight": randn(hidden, dim),
                b + "mlp.fc1.bias": randn(hidden),
                b + "mlp.fc2.weight": randn(dim, hidden),
                b + "mlp.fc2.bias": randn(dim),
            }
        )
    sd["norm.weight"] = 1 + randn(dim, std=0.1)
    sd["norm.bias"] = randn(dim)
    return sd


def _interpolate_pos_encoding(pos_embed, npatch, w, h, patch):
    # As in the reference `VisionTransformer.interpolate_pos_encoding`,
    # where "w" is the height (`B, nc, w, h = x.shape`).
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    side = int(math.sqrt(N))
    grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid,
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
        align_corners=False,
    )
    assert int(w0) == grid.shape[-2] and int(h0) == grid.shape[-1]
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


@torch.no_grad()
def reference_vit(sd, images, num_heads, eps=1e-6):
    """Returns (normalised tokens per block, last attention) like DINO."""
    x = _nchw(images)
    B, _, w, h = x.shape
    patch = sd["patch_embed.proj.weight"].shape[-1]
    dim = sd["pos_embed"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    x = F.conv2d(
        x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], patch
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(B, -1, -1), x], dim=1)
    x = x + _interpolate_pos_encoding(
        sd["pos_embed"], x.shape[1] - 1, w, h, patch
    )

    def norm(y, key):
        return F.layer_norm(
            y, (dim,), sd[key + ".weight"], sd[key + ".bias"], eps
        )

    def linear(y, key):
        return F.linear(y, sd[key + ".weight"], sd[key + ".bias"])

    outputs = []
    for i in range(depth):
        b = f"blocks.{i}."
        n = x.shape[1]
        qkv = linear(norm(x, b + "norm1"), b + "attn.qkv")
        qkv = qkv.reshape(B, n, 3, num_heads, dim // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (dim // num_heads) ** -0.5
        attn = attn.softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(B, n, dim)
        x = x + linear(y, b + "attn.proj")
        y = F.gelu(linear(norm(x, b + "norm2"), b + "mlp.fc1"))
        x = x + linear(y, b + "mlp.fc2")
        outputs.append(norm(x, "norm"))
    return [o.numpy() for o in outputs], attn.numpy()


@torch.no_grad()
def reference_head(sd, features):
    """The reference `DINOHead` forward (no batch norm) on numpy features."""
    x = torch.from_numpy(features)
    linears = sorted(
        {k.rsplit(".", 1)[0] for k in sd if k.startswith("mlp.")},
        key=lambda m: int(m.split(".")[1]),
    )
    for i, module in enumerate(linears):
        x = F.linear(x, sd[module + ".weight"], sd[module + ".bias"])
        if i < len(linears) - 1:
            x = F.gelu(x)
    x = F.normalize(x, dim=-1, p=2)
    v, g = sd["last_layer.weight_v"], sd["last_layer.weight_g"]
    weight = g * v / v.norm(dim=1, keepdim=True)
    return F.linear(x, weight).numpy()


def reference_head_state_dict(in_dim, hidden, bottleneck, out_dim, seed=1):
    g = torch.Generator().manual_seed(seed)
    dims = [in_dim, hidden, hidden, bottleneck]
    sd = {}
    for i in range(3):
        sd[f"mlp.{2 * i}.weight"] = (
            torch.randn(dims[i + 1], dims[i], generator=g) * 0.1
        )
        sd[f"mlp.{2 * i}.bias"] = torch.randn(dims[i + 1], generator=g) * 0.1
    sd["last_layer.weight_v"] = torch.randn(out_dim, bottleneck, generator=g)
    sd["last_layer.weight_g"] = torch.ones(out_dim, 1)
    return sd


# --- Hugging Face ViTModel ---------------------------------------------------


def _hf_model(hidden, layers, heads, image_size=224, patch=16, eps=1e-6):
    from transformers import ViTConfig
    from transformers import ViTModel

    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=image_size,
        patch_size=patch,
        layer_norm_eps=eps,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = ViTModel(config).eval()
    with torch.no_grad():  # Move away from the near-identity init.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("source", ["save_pretrained", "torch_save"])
def test_hugging_face_vit_parity(tmp_path, source):
    hf = _hf_model(hidden=64, layers=2, heads=2)
    if source == "save_pretrained":
        hf.save_pretrained(tmp_path)  # model.safetensors + config.json
        backbone = ViTBackbone.from_preset(str(tmp_path))
    else:
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
        backbone = ViTBackbone.from_preset(
            str(tmp_path / "pytorch_model.bin"), num_heads=2
        )
    assert (backbone.hidden_dim, backbone.num_layers) == (64, 2)
    assert (backbone.patch_size, backbone.image_size) == (16, 224)

    images = _images((2, 224, 224, 3))
    with torch.no_grad():
        out = hf(
            _nchw(images), output_attentions=True, output_hidden_states=True
        )
    cls = out.last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(_np(backbone(images)), cls, atol=ATOL)
    np.testing.assert_allclose(
        _np(backbone.get_last_self_attention(images)),
        out.attentions[-1].numpy(),
        atol=ATOL,
    )
    intermediate = backbone.get_intermediate_layers(images, n=2)
    for i, tokens in enumerate(intermediate):
        with torch.no_grad():
            expected = hf.layernorm(out.hidden_states[i + 1]).numpy()
        np.testing.assert_allclose(_np(tokens), expected, atol=ATOL)


# --- reference DINO names, other resolutions -------------------------------


@pytest.mark.parametrize(
    "dim,patch,grid,height,width",
    [
        (192, 16, 14, 96, 96),  # local crops
        (192, 16, 14, 160, 224),  # non-square
        (192, 16, 14, 112, 448),  # as many patches as at 224, not square
        (192, 8, 8, 40, 56),  # patch 8, non-square
    ],
)
def test_reference_dino_parity_at_other_sizes(
    tmp_path, dim, patch, grid, height, width
):
    sd = reference_state_dict(dim, depth=2, patch=patch, grid=grid)
    path = tmp_path / "dino.pth"
    torch.save(sd, path)
    backbone = ViTBackbone.from_preset(str(path))
    assert backbone.num_heads == 3  # from the DINO table (ViT-T width)
    assert backbone.image_size == patch * grid
    images = _images((2, height, width, 3), seed=1)
    tokens, attention = reference_vit(sd, images, num_heads=3)
    np.testing.assert_allclose(
        _np(backbone(images)), tokens[-1][:, 0], atol=ATOL
    )
    np.testing.assert_allclose(
        _np(backbone.get_last_self_attention(images)), attention, atol=ATOL
    )
    last_two = backbone.get_intermediate_layers(images, n=2)
    for got, expected in zip(last_two, tokens):
        np.testing.assert_allclose(_np(got), expected, atol=ATOL)


@pytest.mark.parametrize("height,width", [(96, 96), (160, 224), (480, 64)])
def test_position_embedding_interpolation_matches_torch(height, width):
    sd = reference_state_dict(32, depth=1, patch=16, grid=14)
    backbone = ViTBackbone(hidden_dim=32, num_layers=1, num_heads=2)
    backbone.patch_embedding.position_embedding.assign(sd["pos_embed"].numpy())
    got = _np(
        backbone.patch_embedding.interpolated_position_embedding(height, width)
    )
    npatch = (height // 16) * (width // 16)
    expected = _interpolate_pos_encoding(
        sd["pos_embed"], npatch, height, width, 16
    ).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Resizing by target size (TF/JAX style) would be measurably different.
    grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    by_size = F.interpolate(
        grid, size=(height // 16, width // 16), mode="bicubic"
    )
    by_size = by_size.permute(0, 2, 3, 1).reshape(1, -1, 32).numpy()
    assert np.abs(by_size - expected[:, 1:]).max() > 1e-2


def test_dino_head_parity(tmp_path):
    sd = reference_head_state_dict(24, 32, 16, 64)
    sd["last_layer.weight_g"] = torch.rand(64, 1) + 0.5  # trained gains
    config = convert_head_config({k: v.numpy() for k, v in sd.items()})
    assert config == {
        "out_dim": 64,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "num_layers": 3,
        "use_bn": False,
        "norm_last_layer": False,
    }
    head = DINOHead(**config)
    head.build((None, 24))
    convert_head_weights(head, {k: v.numpy() for k, v in sd.items()})
    features = _images((5, 24), seed=2)
    np.testing.assert_allclose(
        _np(head(features)), reference_head(sd, features), atol=ATOL
    )


def test_dino_head_with_batch_norm(tmp_path):
    g = torch.Generator().manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.GELU(),
        torch.nn.Linear(16, 4),
    )
    with torch.no_grad():
        bn = mlp[1]
        bn.running_mean.copy_(torch.randn(16, generator=g))
        bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(16, generator=g))
    mlp.eval()
    last = torch.nn.utils.weight_norm(torch.nn.Linear(4, 10, bias=False))
    sd = {f"mlp.{k}": v for k, v in mlp.state_dict().items()}
    sd.update({f"last_layer.{k}": v for k, v in last.state_dict().items()})
    path = tmp_path / "head.pth"
    torch.save(sd, path)
    tensors = load_torch_file(path)
    config = convert_head_config(tensors)
    assert config["use_bn"] and config["num_layers"] == 2
    head = DINOHead(**config)
    head.build((None, 8))
    skipped = convert_head_weights(head, tensors)
    assert skipped == ["mlp.1.num_batches_tracked"]
    features = _images((3, 8), seed=4)
    with torch.no_grad():
        expected = last(F.normalize(mlp(torch.from_numpy(features)), dim=-1))
    np.testing.assert_allclose(
        _np(head(features, training=False)), expected.numpy(), atol=ATOL
    )


# --- full training checkpoints -----------------------------------------------


def _full_checkpoint(path, dim=192, depth=1, out_dim=64):
    def network(seed, prefix):
        sd = {
            f"{prefix}backbone.{k}": v
            for k, v in reference_state_dict(dim, depth, 16, 4, seed).items()
        }
        head = reference_head_state_dict(dim, 32, 16, out_dim, seed + 10)
        sd.update({f"{prefix}head.{k}": v for k, v in head.items()})
        return sd

    student = network(0, "module.")  # DDP-wrapped, as in the reference
    teacher = network(1, "")
    params = torch.nn.ParameterList(
        [torch.nn.Parameter(v.clone()) for v in student.values()]
    )
    optimizer = torch.optim.AdamW(params)
    checkpoint = {
        "student": student,
        "teacher": teacher,
        "optimizer": optimizer.state_dict(),
        "epoch": 7,
        "args": argparse.Namespace(
            arch="vit_tiny",
            patch_size=16,
            out_dim=out_dim,
            norm_last_layer=True,
            use_bn_in_head=False,
            drop_path_rate=0.1,
        ),
        "dino_loss": {"center": torch.randn(1, out_dim)},
        "fp16_scaler": None,
    }
    torch.save(checkpoint, path)
    return checkpoint


def test_full_checkpoint_rebuilds_dino(tmp_path):
    from keras_dino.models.dino import DINO

    path = tmp_path / "checkpoint.pth"
    checkpoint = _full_checkpoint(path)
    model = DINO.from_preset(str(path))
    assert isinstance(model, DINO)
    assert model.student_backbone.drop_path_rate == 0.1
    assert model.out_dim == 64 and model.norm_last_layer
    np.testing.assert_array_equal(
        _np(model.center), checkpoint["dino_loss"]["center"].numpy()
    )

    def strip(sd, prefix):
        return {
            k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)
        }

    # Trained at 64 px (4 x 4 patches); local crops at 32 px.
    global_crops = [_images((2, 64, 64, 3), seed=s) for s in (5, 6)]
    local_crop = _images((2, 32, 32, 3), seed=7)

    teacher = checkpoint["teacher"]
    features = np.concatenate(
        [
            reference_vit(strip(teacher, "backbone."), c, 3)[0][-1][:, 0]
            for c in global_crops
        ]
    )
    expected = reference_head(strip(teacher, "head."), features)
    np.testing.assert_allclose(
        _np(model.teacher_logits(tuple(global_crops))), expected, atol=ATOL
    )

    student = checkpoint["student"]
    crops = [*global_crops, local_crop]
    features = np.concatenate(
        [
            reference_vit(strip(student, "module.backbone."), c, 3)[0][-1][:, 0]
            for c in crops
        ]
    )
    expected = reference_head(strip(student, "module.head."), features)
    np.testing.assert_allclose(
        _np(model(tuple(crops), training=False)), expected, atol=ATOL
    )
