"""Keras models from checkpoints that have already been read into numpy."""

from keras_dino.models.dino import DINO
from keras_dino.models.vit_backbone import ViTBackbone
from keras_dino.weights.convert import convert_backbone_config
from keras_dino.weights.convert import convert_backbone_weights
from keras_dino.weights.convert import convert_head_config
from keras_dino.weights.convert import convert_head_weights
from keras_dino.weights.convert import is_huggingface_state_dict
from keras_dino.weights.convert import split_checkpoint
from keras_dino.weights.resnet_convert import convert_resnet_config
from keras_dino.weights.resnet_convert import is_resnet_state_dict
from keras_dino.weights.resnet_convert import resnet_backbone_from_checkpoint
from keras_dino.weights.resnet_convert import resnet_dino_from_checkpoint
from keras_dino.weights.resnet_convert import resnet_head_config


def backbone_from_checkpoint(
    obj, hf_config=None, checkpoint_key="teacher", load_weights=True, **kwargs
):
    """Builds a `ViTBackbone` from a loaded checkpoint.

    Torchvision ResNet tensors (`layer1.0.conv1.weight`, ...) give a
    `ResNetBackbone` instead (see `resnet_convert`).

    Args:
        obj: what `load_weights_file` returned (a state dict or a full
            training checkpoint), or a `Checkpoint`.
        hf_config: optional Hugging Face `config.json` dict.
        checkpoint_key: network to take from a full training checkpoint.
        load_weights: when false, only the architecture is built.
        **kwargs: `ViTBackbone` arguments overriding the inferred ones.

    Returns:
        A `ViTBackbone`.
    """
    checkpoint = _as_checkpoint(obj, checkpoint_key)
    if is_resnet_state_dict(checkpoint.backbone):
        return resnet_backbone_from_checkpoint(
            checkpoint, load_weights=load_weights, **kwargs
        )
    config = convert_backbone_config(checkpoint.backbone, hf_config, **kwargs)
    backbone = ViTBackbone(**config)
    if load_weights:
        convert_backbone_weights(backbone, checkpoint.backbone)
    return backbone


def _as_checkpoint(obj, checkpoint_key):
    if hasattr(obj, "backbone") and hasattr(obj, "head"):
        return obj
    return split_checkpoint(obj, checkpoint_key=checkpoint_key)


def _networks(obj):
    teacher = split_checkpoint(obj, checkpoint_key="teacher")
    if isinstance(obj.get("student"), dict):
        student = split_checkpoint(obj, checkpoint_key="student")
    else:
        student = teacher
    if teacher.head is None or student.head is None:
        raise ValueError(
            "The checkpoint holds no DINO head (`head.*` tensors); a DINO "
            "model needs a full training checkpoint. Use "
            "ViTBackbone.from_preset for backbone-only files."
        )
    return student, teacher


def dino_from_checkpoint(
    obj, load_weights=True, backbone_kwargs=None, **kwargs
):
    """Builds a `keras_dino.models.DINO` from a loaded full checkpoint.

    The student and teacher backbones and heads and the loss center are
    restored from a reference training checkpoint (`{"student",
    "teacher", "dino_loss", "args", ...}`; the optimizer state and epoch
    are not used). The architecture comes from the tensor shapes, the
    student's stochastic depth and `norm_last_layer` from the checkpoint's
    `args` when present. A checkpoint that holds only a `teacher` network
    (backbone and head) fills the student with the teacher's weights.
    Torchvision ResNet backbones give a DINO on `ResNetBackbone`s (see
    `resnet_convert.resnet_dino_from_checkpoint`).

    Args:
        obj: what `load_weights_file` returned for a full checkpoint.
        load_weights: when false, only the architecture is built.
        backbone_kwargs: optional dict of `ViTBackbone` arguments
            overriding the inferred ones (e.g. `num_heads`).
        **kwargs: `DINO` arguments overriding the inferred ones (e.g.
            `student_temperature`); `drop_path_rate` sets the student's
            stochastic depth.

    Returns:
        A `DINO` model.
    """
    if not isinstance(obj, dict):
        raise ValueError(
            f"A full checkpoint is a dict, got {type(obj).__name__}."
        )
    student, teacher = _networks(obj)
    if is_resnet_state_dict(student.backbone):
        return resnet_dino_from_checkpoint(
            obj, load_weights, backbone_kwargs, **kwargs
        )
    args = teacher.args or {}
    drop_path_rate = kwargs.pop("drop_path_rate", args.get("drop_path_rate"))
    backbone_config = convert_backbone_config(
        student.backbone, **(backbone_kwargs or {})
    )
    if drop_path_rate is not None:
        backbone_config["drop_path_rate"] = float(drop_path_rate)
    head_config = convert_head_config(student.head, args)
    dino_config = {
        "out_dim": head_config["out_dim"],
        "hidden_dim": head_config["hidden_dim"],
        "bottleneck_dim": head_config["bottleneck_dim"],
        "head_layers": head_config["num_layers"],
        "use_bn_in_head": head_config["use_bn"],
        "norm_last_layer": head_config["norm_last_layer"],
        **kwargs,
    }
    model = DINO(ViTBackbone(**backbone_config), **dino_config)
    if not load_weights:
        return model
    convert_backbone_weights(model.student_backbone, student.backbone)
    convert_head_weights(model.student_head, student.head)
    convert_backbone_weights(model.teacher_backbone, teacher.backbone)
    convert_head_weights(model.teacher_head, teacher.head)
    if teacher.center is not None:
        center = teacher.center.reshape(1, -1)
        if center.shape != tuple(model.center.shape):
            raise ValueError(
                f"dino_loss.center has shape {teacher.center.shape}, the "
                f"model's center {tuple(model.center.shape)}."
            )
        model.center.assign(center.astype(model.center.dtype))
    return model


def describe_checkpoint(
    obj, hf_config=None, checkpoint_key="teacher", **overrides
):
    """A short summary of a loaded checkpoint, for logs and the recipe.

    `overrides` are `ViTBackbone` arguments for `convert_backbone_config`
    (e.g. `num_heads` for widths outside the DINO table).

    Returns:
        A dict with `format` ("reference DINO", "Hugging Face ViT" or
        "full DINO training checkpoint"), `backbone_config`,
        `num_backbone_tensors`, `head_config` and `num_head_tensors` (or
        `None` / 0), `center_size` (or `None`), `epoch` (or `None`) and
        `skipped` (top-level entries not used).
    """
    checkpoint = _as_checkpoint(obj, checkpoint_key)
    full = isinstance(obj, dict) and isinstance(obj.get(checkpoint_key), dict)
    if full:
        kind = "full DINO training checkpoint"
    elif is_huggingface_state_dict(checkpoint.backbone):
        kind = "Hugging Face ViT"
    else:
        kind = "reference DINO"
    head = checkpoint.head
    if is_resnet_state_dict(checkpoint.backbone):
        backbone_config = convert_resnet_config(
            checkpoint.backbone, **overrides
        )
        head_config = (
            resnet_head_config(head, checkpoint.args) if head else None
        )
    else:
        backbone_config = convert_backbone_config(
            checkpoint.backbone, hf_config, **overrides
        )
        head_config = (
            convert_head_config(head, checkpoint.args) if head else None
        )
    return {
        "format": kind,
        "backbone_config": backbone_config,
        "num_backbone_tensors": len(checkpoint.backbone),
        "head_config": head_config,
        "num_head_tensors": len(head) if head else 0,
        "center_size": (
            None if checkpoint.center is None else int(checkpoint.center.size)
        ),
        "epoch": obj.get("epoch") if full else None,
        "skipped": checkpoint.skipped,
    }
