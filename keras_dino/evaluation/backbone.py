"""The backbone an evaluation runs on: a saved model, a preset or random."""

import os

import keras


def _backbone_of(model):
    """The ViT inside a loaded model (itself, or a DINO model's teacher)."""
    if hasattr(model, "get_intermediate_layers"):
        return model
    for name in ("teacher_backbone", "teacher", "backbone", "student_backbone"):
        inner = getattr(model, name, None)
        if inner is not None and hasattr(inner, "get_intermediate_layers"):
            return inner
    raise ValueError(
        f"The loaded model {type(model).__name__} is not a ViT backbone and "
        "holds none (looked for teacher_backbone / teacher / backbone)."
    )


def load_backbone(
    path=None, preset=None, arch=None, random_init=False, seed=None, **kwargs
):
    """A ViT backbone for evaluation, from one of three sources.

    Args:
        path: a `.keras` file holding a `ViTBackbone`, or a model that holds
            one (a DINO model: its teacher backbone is used).
        preset: anything `ViTBackbone.from_preset` takes: a name in
            `ViTBackbone.presets` (official DINO weights), a checkpoint
            file or folder, a Hugging Face id with a local copy, or a URL.
        arch: variant name ("ViT-S/16", ...) for `random_init`.
        random_init: bool, a randomly initialised `arch` backbone (a
            baseline for the learned features).
        seed: optional int, seeds `keras.utils.set_random_seed` for
            `random_init`.
        **kwargs: passed to `from_variant` / `from_preset` (e.g.
            `image_size`).

    Returns:
        The backbone (a `keras.Model` with `get_intermediate_layers`).

    Example:
    >>> backbone = load_backbone(preset="dino_vits16")
    >>> baseline = load_backbone(arch="ViT-S/16", random_init=True)
    """
    from keras_dino.models.vit_backbone import ViTBackbone

    given = [path is not None, preset is not None, bool(random_init)]
    if sum(given) != 1:
        raise ValueError(
            "Give exactly one backbone source: path (.keras), preset, or "
            "random_init with arch."
        )
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"No backbone file at {path!r}.")
        import keras_dino  # noqa: F401  (registers the serialisable classes)

        return _backbone_of(keras.saving.load_model(path, compile=False))
    if preset is not None:
        import keras_dino.weights  # noqa: F401  (registers the loaders)

        return ViTBackbone.from_preset(preset, **kwargs)
    if arch is None:
        raise ValueError("random_init needs arch (e.g. 'ViT-S/16').")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return ViTBackbone.from_variant(arch, **kwargs)
