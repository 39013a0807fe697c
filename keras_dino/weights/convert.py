"""Config and weight converters from reference DINO checkpoints to Keras.

Everything here is a pure function of numpy arrays and Keras objects:

* `load_weights_file` reads a `.pth` / `pytorch_model.bin` (with the
  restricted unpickler of `torch_pickle`), a `.safetensors` file, or a
  Hugging Face model directory.
* `split_checkpoint` takes what was read apart: backbone tensors, DINO head
  tensors, the loss center and the training `args` of full checkpoints.
* `to_reference_names` renames Hugging Face ViT tensors (`facebook/dino-*`)
  to the reference DINO names, fusing query/key/value into `qkv`.
* `convert_backbone_config` infers `ViTBackbone` arguments from shapes;
  `convert_backbone_weights` assigns every variable from an explicit
  key -> variable table, with the transposes spelled out.
* `convert_head_config` / `convert_head_weights` do the same for `DINOHead`.

A tensor that is not used, or a variable that is not assigned, is an error
naming the keys; tensors that are deliberately dropped (a Hugging Face
pooler, a classifier head) are returned in a `skipped` list instead.
"""

import dataclasses
import json
import os
import re
import zipfile

import numpy as np

from keras_dino.weights.safetensors_reader import load_safetensors
from keras_dino.weights.torch_pickle import CheckpointArgs
from keras_dino.weights.torch_pickle import load_torch_file

# Heads per width in the DINO model table (ViT tiny / small / base).
NUM_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12}

# Backbone tensors that are dropped on purpose, and why.
_SKIPPABLE_BACKBONE_PREFIXES = {
    "head.": "the ViT's own classifier (nn.Identity in DINO)",
    "pooler.": "the Hugging Face pooler (not part of DINO)",
    "classifier.": "a Hugging Face classification head",
    "embeddings.mask_token": "the Hugging Face mask token (unused)",
}


@dataclasses.dataclass
class Checkpoint:
    """The parts of a reference checkpoint, as numpy arrays.

    Attributes:
        backbone: dict of backbone tensors (reference or Hugging Face
            names, prefixes `module.` / `backbone.` / `vit.` removed).
        head: dict of DINO head tensors (names without `head.`), or `None`.
        center: the `(1, out_dim)` loss center, or `None`.
        args: dict of the training arguments of a full checkpoint, or
            `None`.
        skipped: names of top-level entries that were not used (optimizer
            state, the other network, ...).
    """

    backbone: dict
    head: dict = None
    center: np.ndarray = None
    args: dict = None
    skipped: list = dataclasses.field(default_factory=list)


def load_weights_file(path):
    """Reads a checkpoint file or Hugging Face directory into numpy.

    Args:
        path: a `torch.save` zip file (`.pth`, `.pt`, `pytorch_model.bin`),
            a `.safetensors` file, or a directory holding
            `model.safetensors` or `pytorch_model.bin` (and optionally
            `config.json`).

    Returns:
        `(obj, hf_config)`: the loaded object (a dict of arrays for weight
        files, possibly nested for training checkpoints) and the parsed
        `config.json` of a Hugging Face directory (else `None`).
    """
    path = os.fspath(path)
    hf_config = None
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                hf_config = json.load(f)
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(
                f"{path} holds neither model.safetensors nor "
                "pytorch_model.bin (sharded checkpoints are not supported)."
            )
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if zipfile.is_zipfile(path):
        return load_torch_file(path), hf_config
    if path.endswith(".safetensors"):
        return load_safetensors(path), hf_config
    # Unknown extension: a torch file that is not a zip is truncated or
    # legacy; let the torch reader explain. Otherwise try safetensors.
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic in (b"PK", b"\x80\x02"):
        return load_torch_file(path), hf_config
    return load_safetensors(path), hf_config


def _strip(state_dict, prefix):
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _as_array_dict(obj, where):
    if not isinstance(obj, dict):
        raise ValueError(
            f"Expected a dict of tensors at {where}, got {type(obj).__name__}."
        )
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ValueError(
            f"Entries of {where} are not tensors: {bad[:10]}. Pass a "
            "state dict, a safetensors file, or a full DINO checkpoint."
        )
    return dict(obj)


def _split_network(state_dict, where):
    """Splits a (possibly `module.`-prefixed) network state dict."""
    state_dict = _strip(state_dict, "module.")
    backbone, head, other = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            backbone[key[len("backbone.") :]] = value
        elif key.startswith("head."):
            head[key[len("head.") :]] = value
        else:
            other.append(key)
    if not backbone:
        return state_dict, None
    if other:
        raise ValueError(
            f"{where} mixes `backbone.`/`head.` tensors with unexpected "
            f"keys: {sorted(other)[:10]}."
        )
    return backbone, head or None


def split_checkpoint(obj, checkpoint_key="teacher"):
    """Takes a loaded checkpoint apart into a `Checkpoint`.

    Handles plain backbone state dicts (reference or Hugging Face names,
    `module.`, `backbone.` and `vit.` prefixes), network state dicts with
    `backbone.` and `head.` parts, and full DINO training checkpoints
    (`{"student", "teacher", "optimizer", "epoch", "args", "dino_loss",
    ...}`).

    Args:
        obj: what `load_weights_file` returned.
        checkpoint_key: which network of a full checkpoint to take,
            `"teacher"` (the one DINO evaluates) or `"student"`.

    Returns:
        A `Checkpoint`.
    """
    if not isinstance(obj, dict):
        raise ValueError(
            f"A checkpoint must hold a dict, got {type(obj).__name__}."
        )
    if checkpoint_key in obj and isinstance(obj[checkpoint_key], dict):
        network = _as_array_dict(obj[checkpoint_key], repr(checkpoint_key))
        backbone, head = _split_network(network, repr(checkpoint_key))
        center = None
        loss_state = obj.get("dino_loss")
        if isinstance(loss_state, dict) and "center" in loss_state:
            center = np.asarray(loss_state["center"])
        args = obj.get("args")
        if isinstance(args, CheckpointArgs):
            args = dict(vars(args))
        elif not isinstance(args, dict):
            args = None
        skipped = sorted(
            k for k in obj if k not in (checkpoint_key, "dino_loss", "args")
        )
        return Checkpoint(backbone, head, center, args, skipped)
    if any(isinstance(v, dict) for v in obj.values()):
        raise ValueError(
            f"The checkpoint has no {checkpoint_key!r} entry; its top-level "
            f"keys are {sorted(obj)[:20]}. Pass checkpoint_key= one of the "
            "network entries."
        )
    network = _as_array_dict(obj, "the checkpoint")
    backbone, head = _split_network(network, "the checkpoint")
    return Checkpoint(backbone, head)


# Block tensors of Hugging Face ViT checkpoints: the hub layout
# (`encoder.layer.N.attention.attention.query`, what `save_pretrained`
# writes) and the in-memory layout of transformers >= 5
# (`layers.N.attention.q_proj`, what `torch.save(model.state_dict())`
# writes).
_HF_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)")
_HF_BLOCK_NAMES = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV_NAMES = {
    "attention.attention.query": "query",
    "attention.attention.key": "key",
    "attention.attention.value": "value",
    "attention.q_proj": "query",
    "attention.k_proj": "key",
    "attention.v_proj": "value",
}
_HF_GLOBAL_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def _unprefix(key):
    return key[len("vit.") :] if key.startswith("vit.") else key


def _skip_reason(key):
    for prefix, reason in _SKIPPABLE_BACKBONE_PREFIXES.items():
        if key.startswith(prefix):
            return reason
    return None


def is_huggingface_state_dict(state_dict):
    """Whether tensors use Hugging Face ViT names (`embeddings.*`, ...)."""
    return any(
        _unprefix(k) == "embeddings.position_embeddings" for k in state_dict
    )


def to_reference_names(state_dict):
    """Renames backbone tensors to the reference DINO names.

    Hugging Face ViT tensors (`facebook/dino-*`, optionally under `vit.`,
    in the hub layout `encoder.layer.N.*` or the transformers 5 in-memory
    layout `layers.N.*`) are renamed, and each block's query, key and
    value projections are concatenated (in that order, along the output
    axis) into the fused `blocks.N.attn.qkv`. Reference-named tensors
    pass through.

    Returns:
        `(tensors, skipped)`: the renamed dict, and the keys dropped on
        purpose (pooler, classifier, the ViT's Identity `head.*`).
    """
    state_dict = dict(state_dict)
    skipped = sorted(k for k in state_dict if _skip_reason(_unprefix(k)))
    state_dict = {
        _unprefix(k): v
        for k, v in state_dict.items()
        if not _skip_reason(_unprefix(k))
    }
    if not is_huggingface_state_dict(state_dict):
        return state_dict, skipped
    out, qkv, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key in _HF_GLOBAL_NAMES:
            out[_HF_GLOBAL_NAMES[key]] = value
            continue
        match = _HF_LAYER.fullmatch(key)
        if not match:
            unknown.append(key)
            continue
        index, rest = match.groups()
        name, _, param = rest.rpartition(".")
        if param not in ("weight", "bias"):
            unknown.append(key)
        elif name in _HF_QKV_NAMES:
            qkv.setdefault((index, param), {})[_HF_QKV_NAMES[name]] = value
        elif name in _HF_BLOCK_NAMES:
            out[f"blocks.{index}.{_HF_BLOCK_NAMES[name]}.{param}"] = value
        else:
            unknown.append(key)
    for (index, param), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(
                f"Layer {index} has attention {param}s for {sorted(parts)}; "
                "query, key and value are all needed to build qkv."
            )
        out[f"blocks.{index}.attn.qkv.{param}"] = np.concatenate(
            [parts["query"], parts["key"], parts["value"]], axis=0
        )
    if unknown:
        raise ValueError(
            f"Unexpected Hugging Face ViT tensors: {sorted(unknown)}."
        )
    return out, skipped


def _require(state_dict, key):
    if key not in state_dict:
        raise ValueError(
            f"The checkpoint has no {key!r} tensor; its keys start with "
            f"{sorted(state_dict)[:8]}."
        )
    return state_dict[key]


def convert_backbone_config(state_dict, hf_config=None, **overrides):
    """Infers `ViTBackbone` arguments from tensor shapes.

    Width comes from the position embedding, patch size from the patch
    projection kernel, the training resolution from the number of position
    embeddings, depth from the block indices, the MLP ratio from `fc1`, and
    the head count from the DINO table (192 -> 3, 384 -> 6, 768 -> 12) or a
    Hugging Face `config.json`.

    Args:
        state_dict: backbone tensors (reference or Hugging Face names).
        hf_config: optional Hugging Face `config.json` dict; its
            `num_attention_heads` and `layer_norm_eps` are used.
        **overrides: `ViTBackbone` arguments that take precedence (e.g.
            `num_heads` for widths outside the table, `drop_path_rate`).

    Returns:
        A dict of `ViTBackbone` keyword arguments.
    """
    tensors, _ = to_reference_names(state_dict)
    pos = _require(tensors, "pos_embed")
    kernel = _require(tensors, "patch_embed.proj.weight")
    if pos.ndim != 3 or kernel.ndim != 4 or kernel.shape[2] != kernel.shape[3]:
        raise ValueError(
            f"Unexpected shapes pos_embed {pos.shape}, patch_embed.proj."
            f"weight {kernel.shape}; expected (1, 1 + N, D), (D, 3, p, p)."
        )
    hidden_dim = int(pos.shape[-1])
    patch_size = int(kernel.shape[-1])
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1:
        raise ValueError(
            f"pos_embed has {pos.shape[1] - 1} patch positions, not a square "
            "grid."
        )
    depths = {
        int(m.group(1))
        for m in map(re.compile(r"blocks\.(\d+)\.").match, tensors)
        if m
    }
    if depths != set(range(len(depths))) or not depths:
        raise ValueError(f"Block indices {sorted(depths)} are not 0..n-1.")
    fc1 = _require(tensors, "blocks.0.mlp.fc1.weight")
    config = {
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "hidden_dim": hidden_dim,
        "num_layers": len(depths),
        "mlp_ratio": fc1.shape[0] / hidden_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in tensors,
        "layer_norm_epsilon": 1e-6,
    }
    hf_config = hf_config or {}
    if "num_attention_heads" in hf_config:
        config["num_heads"] = int(hf_config["num_attention_heads"])
    elif hidden_dim in NUM_HEADS_BY_WIDTH:
        config["num_heads"] = NUM_HEADS_BY_WIDTH[hidden_dim]
    if "layer_norm_eps" in hf_config:
        config["layer_norm_epsilon"] = float(hf_config["layer_norm_eps"])
    config.update(overrides)
    if "num_heads" not in config:
        raise ValueError(
            f"Cannot infer the number of heads for width {hidden_dim} (the "
            f"DINO table knows {sorted(NUM_HEADS_BY_WIDTH)}); pass "
            "num_heads=."
        )
    return config


def _conv_kernel(w):  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
    return np.transpose(w, (2, 3, 1, 0))


def _linear_kernel(w):  # torch (out, in) -> Keras (in, out)
    return np.transpose(w)


def _same(w):
    return w


def backbone_weight_map(backbone):
    """The explicit reference-name -> `ViTBackbone` variable table.

    Returns:
        A list of `(key, variable, transform)` triples; `transform` maps the
        reference numpy array to the variable's layout.
    """
    embed = backbone.patch_embedding
    table = [
        ("cls_token", embed.cls_token, _same),
        ("pos_embed", embed.position_embedding, _same),
        ("patch_embed.proj.weight", embed.projection.kernel, _conv_kernel),
    ]
    if embed.projection.use_bias:
        table.append(("patch_embed.proj.bias", embed.projection.bias, _same))

    def norm(key, layer):
        table.append((f"{key}.weight", layer.gamma, _same))
        table.append((f"{key}.bias", layer.beta, _same))

    def dense(key, layer):
        table.append((f"{key}.weight", layer.kernel, _linear_kernel))
        if layer.use_bias:
            table.append((f"{key}.bias", layer.bias, _same))

    for i, block in enumerate(backbone.blocks):
        norm(f"blocks.{i}.norm1", block.norm1)
        dense(f"blocks.{i}.attn.qkv", block.attention.qkv)
        dense(f"blocks.{i}.attn.proj", block.attention.proj)
        norm(f"blocks.{i}.norm2", block.norm2)
        dense(f"blocks.{i}.mlp.fc1", block.mlp_fc1)
        dense(f"blocks.{i}.mlp.fc2", block.mlp_fc2)
    norm("norm", backbone.final_norm)
    return table


def _assign(table, tensors, all_variables, what):
    """Assigns `tensors` through `table`; every key and variable once."""
    keys = [key for key, _, _ in table]
    missing = sorted(set(keys) - set(tensors))
    unused = sorted(set(tensors) - set(keys))
    if missing or unused:
        raise ValueError(
            f"The {what} tensors do not match the Keras model. Missing "
            f"tensors: {missing}. Unused tensors: {unused}."
        )
    assigned = {id(v) for _, v, _ in table}
    unassigned = [v.path for v in all_variables if id(v) not in assigned]
    if unassigned or len(assigned) != len(table):
        raise ValueError(
            f"The {what} mapping leaves variables unassigned: {unassigned}."
        )
    values = []
    for key, variable, transform in table:
        value = transform(np.asarray(tensors[key]))
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                f"which maps to {tuple(value.shape)}, but variable "
                f"{variable.path!r} has shape {tuple(variable.shape)}."
            )
        values.append(value)
    for (_, variable, _), value in zip(table, values):
        variable.assign(value)


def convert_backbone_weights(backbone, state_dict):
    """Loads reference or Hugging Face ViT tensors into a `ViTBackbone`.

    Args:
        backbone: a `ViTBackbone` whose config matches the tensors (see
            `convert_backbone_config`).
        state_dict: backbone tensors as numpy arrays.

    Returns:
        The keys that were skipped on purpose (see `to_reference_names`).

    Raises:
        ValueError: a tensor is missing or unused, a variable is left
            unassigned, or shapes differ; the message names them.
    """
    tensors, skipped = to_reference_names(state_dict)
    _assign(backbone_weight_map(backbone), tensors, backbone.weights, "ViT")
    return skipped


def _head_modules(head_state_dict):
    """Groups head tensors by module: `mlp.<i>` linears and batch norms."""
    modules = {}
    for key in head_state_dict:
        module, _, param = key.rpartition(".")
        if module == "mlp" or re.fullmatch(r"mlp\.\d+", module):
            modules.setdefault(module, set()).add(param)
    order = sorted(modules, key=lambda m: int(m[4:] or -1))
    linears = [m for m in order if "running_mean" not in modules[m]]
    norms = [m for m in order if "running_mean" in modules[m]]
    return linears, norms


def _last_layer_keys(head_state_dict):
    if "last_layer.weight_v" in head_state_dict:
        return "last_layer.weight_v", "last_layer.weight_g"
    # torch.nn.utils.parametrizations.weight_norm naming.
    return (
        "last_layer.parametrizations.weight.original1",
        "last_layer.parametrizations.weight.original0",
    )


def convert_head_config(head_state_dict, args=None, **overrides):
    """Infers `DINOHead` arguments from the head tensors.

    Args:
        head_state_dict: the head tensors, names without `head.`
            (`mlp.0.weight`, ..., `last_layer.weight_g`,
            `last_layer.weight_v`).
        args: optional training arguments of a full checkpoint; its
            `norm_last_layer` is used when present. Otherwise
            `norm_last_layer` is true when every gain equals 1.
        **overrides: `DINOHead` arguments that take precedence.

    Returns:
        A dict of `DINOHead` keyword arguments.
    """
    linears, norms = _head_modules(head_state_dict)
    if not linears:
        raise ValueError(
            "No `mlp` layers in the head tensors; keys are "
            f"{sorted(head_state_dict)[:10]}."
        )
    v_key, g_key = _last_layer_keys(head_state_dict)
    v = _require(head_state_dict, v_key)
    g = _require(head_state_dict, g_key)
    widths = [head_state_dict[f"{m}.weight"].shape[0] for m in linears]
    if args and "norm_last_layer" in args:
        norm_last_layer = bool(args["norm_last_layer"])
    else:
        norm_last_layer = bool(np.all(np.asarray(g) == 1))
    config = {
        "out_dim": int(v.shape[0]),
        "hidden_dim": int(widths[0]) if len(widths) > 1 else 2048,
        "bottleneck_dim": int(widths[-1]),
        "num_layers": len(linears),
        "use_bn": bool(norms),
        "norm_last_layer": norm_last_layer,
    }
    config.update(overrides)
    return config


def head_weight_map(head, head_state_dict):
    """The explicit head-tensor -> `DINOHead` variable table."""
    linears, norms = _head_modules(head_state_dict)
    if len(linears) != len(head.dense_layers) or len(norms) != len(
        head.norm_layers
    ):
        raise ValueError(
            f"The head tensors have {len(linears)} linear and {len(norms)} "
            f"batch-norm layers, the DINOHead {len(head.dense_layers)} and "
            f"{len(head.norm_layers)}."
        )
    table = []
    for module, dense in zip(linears, head.dense_layers):
        table.append((f"{module}.weight", dense.kernel, _linear_kernel))
        table.append((f"{module}.bias", dense.bias, _same))
    for module, bn in zip(norms, head.norm_layers):
        table.append((f"{module}.weight", bn.gamma, _same))
        table.append((f"{module}.bias", bn.beta, _same))
        table.append((f"{module}.running_mean", bn.moving_mean, _same))
        table.append((f"{module}.running_var", bn.moving_variance, _same))
    v_key, g_key = _last_layer_keys(head_state_dict)
    table.append((v_key, head.last_layer_v, _linear_kernel))
    table.append((g_key, head.last_layer_g, _linear_kernel))
    return table


def convert_head_weights(head, head_state_dict):
    """Loads reference DINO head tensors into a built `DINOHead`.

    `mlp.<i>` Linear weights are transposed into `dense_layers`, BatchNorm
    statistics go to `norm_layers` (`num_batches_tracked` is skipped), and
    `last_layer.weight_v` `(out, bottleneck)` / `weight_g` `(out, 1)` are
    transposed into `last_layer_v` / `last_layer_g`.

    Returns:
        The keys that were skipped on purpose.
    """
    skipped = sorted(
        k for k in head_state_dict if k.endswith(".num_batches_tracked")
    )
    tensors = {k: v for k, v in head_state_dict.items() if k not in skipped}
    _assign(head_weight_map(head, tensors), tensors, head.weights, "head")
    return skipped
