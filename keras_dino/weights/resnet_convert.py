"""DINO ResNet checkpoints (torchvision names) into Keras models.

The official `dino_resnet50_pretrain.pth` is a torchvision ResNet-50 state
dict without the classifier (`conv1.weight`, `bn1.running_mean`,
`layer1.0.conv1.weight`, ..., `layer4.2.bn3.weight`,
`layerN.0.downsample.0/1.*`); the full training checkpoint holds the
student (`module.backbone.*`, `module.head.*`), the teacher
(`backbone.*`, `head.*`), the loss center and the training arguments.
Both are read with the restricted unpickler of `torch_pickle` (no pickled
code runs) and mapped through an explicit key -> variable table:

* convolution kernels `(out, in, kh, kw)` -> `(kh, kw, in, out)`;
* BatchNorm `weight`, `bias`, `running_mean`, `running_var` -> `gamma`,
  `beta`, `moving_mean`, `moving_variance` (`num_batches_tracked` and a
  torchvision classifier `fc.*` are skipped and reported).

A head saved with a plain output layer (`last_layer.weight`, no weight
normalisation) is imported as the weight-normalised layer that computes
the same function: `v = W`, `g = ||W||` per output unit, with a trainable
gain (`norm_last_layer=False`).
"""

import os
import re

import numpy as np

from keras_dino.models.dino import DINO
from keras_dino.models.presets import register_preset_loader
from keras_dino.models.resnet_backbone import RESNET_PRESETS
from keras_dino.models.resnet_backbone import ResNetBackbone
from keras_dino.weights.convert import _assign
from keras_dino.weights.convert import _conv_kernel
from keras_dino.weights.convert import _same
from keras_dino.weights.convert import convert_head_config
from keras_dino.weights.convert import convert_head_weights
from keras_dino.weights.convert import load_weights_file
from keras_dino.weights.convert import split_checkpoint

_BASE_URL = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain"

# TODO(keras_dino): record the SHA-256 of each file (not published by the
# reference and not computable here without network access).
RESNET_CHECKPOINTS = {
    "dino_resnet50": {
        "url": f"{_BASE_URL}/dino_resnet50_pretrain.pth",
        "file_hash": None,
        "full_checkpoint_url": f"{_BASE_URL}/"
        "dino_resnet50_pretrain_full_checkpoint.pth",
        "full_checkpoint_hash": None,
    },
}

# Tensors of a torchvision ResNet state dict that are dropped on purpose.
_SKIPPABLE_PREFIXES = {"fc.": "torchvision's classifier (nn.Identity in DINO)"}

_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.")


def is_resnet_state_dict(state_dict):
    """Whether backbone tensors use torchvision ResNet names."""
    return bool(state_dict) and "layer1.0.conv1.weight" in state_dict


def _skipped(state_dict):
    return sorted(
        k
        for k in state_dict
        if k.endswith(".num_batches_tracked")
        or any(k.startswith(p) for p in _SKIPPABLE_PREFIXES)
    )


def _require(state_dict, key):
    if key not in state_dict:
        raise ValueError(
            f"The ResNet checkpoint has no {key!r} tensor; its keys start "
            f"with {sorted(state_dict)[:8]}."
        )
    return np.asarray(state_dict[key])


def convert_resnet_config(state_dict, **overrides):
    """Infers `ResNetBackbone` arguments from torchvision tensor names.

    Blocks per stage come from the `layerS.B.` indices and the width from
    the stem convolution. Only torchvision's bottleneck layout (ResNet-50,
    101, 152: stride in the 3x3 convolution, 64 channels per group, one
    group) is supported.

    Args:
        state_dict: backbone tensors with torchvision names.
        **overrides: `ResNetBackbone` arguments that take precedence (e.g.
            `dtype`, `name`).

    Returns:
        A dict of `ResNetBackbone` keyword arguments.
    """
    stem = _require(state_dict, "conv1.weight")
    if stem.ndim != 4 or stem.shape[1:] != (3, 7, 7):
        raise ValueError(
            f"conv1.weight has shape {stem.shape}; a torchvision ResNet "
            "stem is (width, 3, 7, 7)."
        )
    if "layer1.0.conv3.weight" not in state_dict:
        raise ValueError(
            "The checkpoint has no layer1.0.conv3: it is a BasicBlock "
            "ResNet (resnet18/34), which ResNetBackbone does not build; "
            "only bottleneck ResNets (resnet50/101/152) are supported."
        )
    width = int(stem.shape[0])
    first = _require(state_dict, "layer1.0.conv2.weight")
    if first.shape != (width, width, 3, 3):
        raise ValueError(
            f"layer1.0.conv2.weight has shape {first.shape}, expected "
            f"{(width, width, 3, 3)}: wide ResNets and ResNeXt (grouped "
            "convolutions) are not supported."
        )
    blocks = {}
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks.setdefault(stage, set()).add(block)
    counts = []
    for stage in range(1, 5):
        indices = blocks.get(stage, set())
        if not indices or indices != set(range(len(indices))):
            raise ValueError(
                f"Stage layer{stage} has blocks {sorted(indices)}; expected "
                "0..n-1 for each of layer1..layer4."
            )
        counts.append(len(indices))
    config = {"block_counts": tuple(counts), "width": width}
    config.update(overrides)
    return config


def resnet_weight_map(backbone):
    """The explicit torchvision-name -> `ResNetBackbone` variable table.

    Returns:
        A list of `(key, variable, transform)` triples; `transform` maps the
        torch numpy array to the variable's layout.
    """
    table = []

    def conv(key, layer):
        table.append((f"{key}.weight", layer.kernel, _conv_kernel))

    def batch_norm(key, layer):
        table.append((f"{key}.weight", layer.gamma, _same))
        table.append((f"{key}.bias", layer.beta, _same))
        table.append((f"{key}.running_mean", layer.moving_mean, _same))
        table.append((f"{key}.running_var", layer.moving_variance, _same))

    conv("conv1", backbone.stem["conv"])
    batch_norm("bn1", backbone.stem["bn"])
    for s, blocks in enumerate(backbone.stages):
        for b, block in enumerate(blocks):
            prefix = f"layer{s + 1}.{b}"
            for i in (1, 2, 3):
                conv(f"{prefix}.conv{i}", block[f"conv{i}"])
                batch_norm(f"{prefix}.bn{i}", block[f"bn{i}"])
            if "downsample_conv" in block:
                conv(f"{prefix}.downsample.0", block["downsample_conv"])
                batch_norm(f"{prefix}.downsample.1", block["downsample_bn"])
    return table


def convert_resnet_weights(backbone, state_dict):
    """Loads torchvision ResNet tensors into a `ResNetBackbone`.

    Args:
        backbone: a `ResNetBackbone` whose config matches the tensors (see
            `convert_resnet_config`).
        state_dict: backbone tensors as numpy arrays.

    Returns:
        The keys skipped on purpose (`num_batches_tracked`, `fc.*`).

    Raises:
        ValueError: a tensor is missing or unused, a variable is left
            unassigned, or shapes differ; the message names them.
    """
    skipped = _skipped(state_dict)
    tensors = {k: v for k, v in state_dict.items() if k not in skipped}
    _assign(resnet_weight_map(backbone), tensors, backbone.weights, "ResNet")
    return skipped


def _as_checkpoint(obj, checkpoint_key):
    if hasattr(obj, "backbone") and hasattr(obj, "head"):
        return obj
    return split_checkpoint(obj, checkpoint_key=checkpoint_key)


def resnet_backbone_from_checkpoint(
    obj, checkpoint_key="teacher", load_weights=True, **kwargs
):
    """Builds a `ResNetBackbone` from a loaded checkpoint.

    Args:
        obj: what `load_weights_file` returned (a state dict or a full
            training checkpoint), or a `Checkpoint`.
        checkpoint_key: network to take from a full training checkpoint.
        load_weights: when false, only the architecture is built.
        **kwargs: `ResNetBackbone` arguments overriding the inferred ones.

    Returns:
        A `ResNetBackbone`.
    """
    checkpoint = _as_checkpoint(obj, checkpoint_key)
    backbone = ResNetBackbone(
        **convert_resnet_config(checkpoint.backbone, **kwargs)
    )
    if load_weights:
        convert_resnet_weights(backbone, checkpoint.backbone)
    return backbone


def _head_with_weight_norm(head):
    """Head tensors with a plain `last_layer.weight` as `weight_v/_g`."""
    if "last_layer.weight" not in head:
        return head, False
    head = dict(head)
    weight = np.asarray(head.pop("last_layer.weight"))
    head["last_layer.weight_v"] = weight
    head["last_layer.weight_g"] = np.sqrt(
        np.sum(np.square(weight.astype("float64")), axis=1, keepdims=True)
    ).astype(weight.dtype)
    return head, True


def resnet_head_config(head_state_dict, args=None):
    """`convert_head_config` that also reads a plain `last_layer.weight`.

    A plain output layer becomes a weight-normalised one with trainable
    gains (`norm_last_layer=False`), whatever `args` says.
    """
    head, plain = _head_with_weight_norm(head_state_dict)
    overrides = {"norm_last_layer": False} if plain else {}
    return convert_head_config(head, args or {}, **overrides)


def resnet_dino_from_checkpoint(
    obj, load_weights=True, backbone_kwargs=None, **kwargs
):
    """Builds a `keras_dino.models.DINO` on a ResNet from a full checkpoint.

    Student and teacher backbones (weights and BatchNorm statistics) and
    heads and the loss center are restored from a reference training
    checkpoint (`{"student", "teacher", "dino_loss", "args", ...}`; the
    optimizer state and epoch are not used). The head's layout
    (`use_bn_in_head`, depth, widths) comes from its tensors,
    `norm_last_layer` from the checkpoint's `args` (or the gains). A
    checkpoint with only a `teacher` fills the student with it.

    Args:
        obj: what `load_weights_file` returned for a full checkpoint.
        load_weights: when false, only the architecture is built.
        backbone_kwargs: optional dict of `ResNetBackbone` arguments.
        **kwargs: `DINO` arguments overriding the inferred ones.

    Returns:
        A `DINO` model whose backbones are `ResNetBackbone`s.
    """
    if not isinstance(obj, dict):
        raise ValueError(
            f"A full checkpoint is a dict, got {type(obj).__name__}."
        )
    if kwargs.pop("drop_path_rate", None):
        raise ValueError("A ResNet backbone has no stochastic depth.")
    teacher = split_checkpoint(obj, checkpoint_key="teacher")
    if isinstance(obj.get("student"), dict):
        student = split_checkpoint(obj, checkpoint_key="student")
    else:
        student = teacher
    if teacher.head is None or student.head is None:
        raise ValueError(
            "The checkpoint holds no DINO head (`head.*` tensors); a DINO "
            "model needs a full training checkpoint. Use "
            "ResNetBackbone.from_preset for backbone-only files."
        )
    student_head, _ = _head_with_weight_norm(student.head)
    teacher_head, _ = _head_with_weight_norm(teacher.head)
    head_config = resnet_head_config(student.head, teacher.args)
    dino_config = {
        "out_dim": head_config["out_dim"],
        "hidden_dim": head_config["hidden_dim"],
        "bottleneck_dim": head_config["bottleneck_dim"],
        "head_layers": head_config["num_layers"],
        "use_bn_in_head": head_config["use_bn"],
        "norm_last_layer": head_config["norm_last_layer"],
        **kwargs,
    }
    backbone = ResNetBackbone(
        **convert_resnet_config(student.backbone, **(backbone_kwargs or {}))
    )
    model = DINO(backbone, **dino_config)
    if not load_weights:
        return model
    convert_resnet_weights(model.student_backbone, student.backbone)
    convert_head_weights(model.student_head, student_head)
    convert_resnet_weights(model.teacher_backbone, teacher.backbone)
    convert_head_weights(model.teacher_head, teacher_head)
    if teacher.center is not None:
        center = teacher.center.reshape(1, -1)
        if center.shape != tuple(model.center.shape):
            raise ValueError(
                f"dino_loss.center has shape {teacher.center.shape}, the "
                f"model's center {tuple(model.center.shape)}."
            )
        model.center.assign(center.astype(model.center.dtype))
    return model


def _checkpoint_path(preset, file_hash, cache_dir, full_checkpoint):
    # Imported here: `presets` imports `builders`, which imports this module.
    from keras_dino.weights.presets import get_checkpoint_file

    preset = os.fspath(preset)
    if preset in RESNET_CHECKPOINTS:
        info = RESNET_CHECKPOINTS[preset]
        url_key = "full_checkpoint_url" if full_checkpoint else "url"
        hash_key = "full_checkpoint_hash" if full_checkpoint else "file_hash"
        return get_checkpoint_file(
            info[url_key], file_hash or info[hash_key], cache_dir
        )
    return get_checkpoint_file(preset, file_hash, cache_dir)


def load_resnet_backbone(
    preset,
    load_weights=True,
    checkpoint_key="teacher",
    file_hash=None,
    cache_dir=None,
    **kwargs,
):
    """Builds a `ResNetBackbone` from a preset name, file or URL.

    Args:
        preset: `"dino_resnet50"`, a local `.pth` file (backbone state dict
            or full training checkpoint), or a `file://` / `https://` URL.
        load_weights: when false and `preset` is a preset name, only the
            architecture is built (nothing is downloaded).
        checkpoint_key: network to take from a full training checkpoint.
        file_hash: optional SHA-256 to check the file against.
        cache_dir: optional Keras cache root.
        **kwargs: `ResNetBackbone` arguments (e.g. `dtype`, `name`).

    Returns:
        A `ResNetBackbone`.
    """

    preset = os.fspath(preset)
    if not load_weights and preset in RESNET_PRESETS:
        return ResNetBackbone.from_variant(
            RESNET_PRESETS[preset]["variant"], **kwargs
        )
    path = _checkpoint_path(preset, file_hash, cache_dir, False)
    obj, _ = load_weights_file(path)
    checkpoint = split_checkpoint(obj, checkpoint_key=checkpoint_key)
    if not is_resnet_state_dict(checkpoint.backbone):
        raise ValueError(
            f"{preset!r} does not hold torchvision ResNet tensors (no "
            "layer1.0.conv1.weight); for ViT checkpoints use "
            "ViTBackbone.from_preset."
        )
    return resnet_backbone_from_checkpoint(
        checkpoint, load_weights=load_weights, **kwargs
    )


def load_resnet_dino(
    preset, load_weights=True, file_hash=None, cache_dir=None, **kwargs
):
    """Builds a ResNet `DINO` from a full training checkpoint.

    Args:
        preset: `"dino_resnet50"` (its full checkpoint is fetched), or a
            local file or URL of a full checkpoint.
        load_weights: when false, the architecture is built (from the
            file's tensor shapes, so the file is still read) and the
            weights are left at their initial values.
        file_hash: optional SHA-256 to check the file against.
        cache_dir: optional Keras cache root.
        **kwargs: `DINO` arguments overriding the inferred ones.

    Returns:
        A `DINO` model.
    """
    path = _checkpoint_path(preset, file_hash, cache_dir, True)
    obj, _ = load_weights_file(path)
    return resnet_dino_from_checkpoint(obj, load_weights=load_weights, **kwargs)


register_preset_loader("resnet_backbone", load_resnet_backbone)
