"""Tiny checkpoints with the official DINO tensor names, for the tests.

Imported by the tests of this folder (pytest puts it on `sys.path`) and
loaded by path from `tests/recipes/eval_recipes_test.py`.
"""

import torch


def _block_shapes(dim):
    return {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        "mlp.fc1.weight": (4 * dim, dim),
        "mlp.fc1.bias": (4 * dim,),
        "mlp.fc2.weight": (dim, 4 * dim),
        "mlp.fc2.bias": (dim,),
    }


def tiny_state_dict(
    dim=16, depth=2, patch=8, grid=2, seed=0, scale=1.0, prefix=""
):
    """Random ViT backbone tensors with the official DINO names.

    Args:
        dim: width; `depth`: number of blocks; `patch`: patch size;
            `grid`: patches per side of the position embedding.
        seed: seed of the `torch.Generator` drawing the values.
        scale: the values are `scale` times standard normal ones.
        prefix: prepended to every name (e.g. "backbone.").

    Returns:
        A dict of name to `torch.Tensor`.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, grid * grid + 1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        for name, shape in _block_shapes(dim).items():
            shapes[f"blocks.{i}.{name}"] = shape
    return {
        prefix + k: torch.randn(*s, generator=g) * scale
        for k, s in shapes.items()
    }


def write_checkpoint(path, **kwargs):
    """`torch.save`s a `tiny_state_dict(**kwargs)` to `path`; returns it."""
    state = tiny_state_dict(**kwargs)
    torch.save(state, path)
    return state
