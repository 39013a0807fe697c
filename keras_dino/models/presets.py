"""The official DINO presets and the loaders that build them.

Models know no file formats: this module lists the preset names (with the
architecture and a description) and keeps a registry of preset loaders.
`keras_dino.weights`, which reads checkpoint files, registers its loaders
here when it is imported (as `import keras_dino` does), so that
`ViTBackbone.from_preset` and `DINO.from_preset` dispatch to it without
`keras_dino.models` ever importing `keras_dino.weights`.
"""

import types

PRESETS = types.MappingProxyType(
    {
        "dino_vits16": {
            "variant": "ViT-S/16",
            "description": "DINO ViT-S/16, 21M parameters, ImageNet k-NN "
            "74.5%, linear 77.0%.",
        },
        "dino_vits8": {
            "variant": "ViT-S/8",
            "description": "DINO ViT-S/8, 21M parameters, ImageNet k-NN "
            "78.3%, linear 79.7%.",
        },
        "dino_vitb16": {
            "variant": "ViT-B/16",
            "description": "DINO ViT-B/16, 85M parameters, ImageNet k-NN "
            "76.1%, linear 78.2%.",
        },
        "dino_vitb8": {
            "variant": "ViT-B/8",
            "description": "DINO ViT-B/8, 85M parameters, ImageNet k-NN "
            "77.4%, linear 80.1%.",
        },
    }
)

_LOADERS = {}


def register_preset_loader(kind, loader):
    """Registers `loader(preset, load_weights=True, **kwargs)` for a kind.

    Args:
        kind: `"backbone"` (used by `ViTBackbone.from_preset`) or `"dino"`
            (used by `DINO.from_preset`).
        loader: callable returning the built model.
    """
    if not callable(loader):
        raise TypeError(f"The preset loader must be callable; got {loader!r}.")
    _LOADERS[kind] = loader


def get_preset_loader(kind):
    """The loader registered for `kind` (see `register_preset_loader`)."""
    try:
        return _LOADERS[kind]
    except KeyError:
        raise RuntimeError(
            f"No preset loader is registered for {kind!r} models. "
            "`import keras_dino` (or `import keras_dino.weights`) registers "
            "the checkpoint readers that `from_preset` uses."
        ) from None
