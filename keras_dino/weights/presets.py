"""Official DINO checkpoints and loading them as Keras models.

A preset name (`"dino_vits16"`, ...) resolves to the reference download URL
and is fetched once into the Keras cache (`~/.keras/keras_dino/`) through
`keras.utils.get_file`, with a SHA-256 check when the hash is known. A local
file or directory, or a `file://` / `https://` URL, is loaded the same way.
"""

import hashlib
import os
import urllib.parse

import keras

from keras_dino.weights.builders import backbone_from_checkpoint
from keras_dino.weights.builders import dino_from_checkpoint
from keras_dino.weights.convert import convert_backbone_config
from keras_dino.weights.convert import load_weights_file
from keras_dino.weights.convert import split_checkpoint

_BASE_URL = "https://dl.fbaipublicfiles.com/dino"

# TODO(keras_dino): record the SHA-256 of each file. They could not be
# computed here (no network access while this was written) and are not
# published by the reference repository, so `file_hash` is None and
# downloads are not verified; pass `file_hash=` to `from_preset` to check.
PRESETS = {
    "dino_vits16": {
        "variant": "ViT-S/16",
        "description": "DINO ViT-S/16, 21M parameters, ImageNet k-NN 74.5%, "
        "linear 77.0%.",
        "url": f"{_BASE_URL}/dino_deitsmall16_pretrain/"
        "dino_deitsmall16_pretrain.pth",
        "file_hash": None,
        "full_checkpoint_url": f"{_BASE_URL}/dino_deitsmall16_pretrain/"
        "dino_deitsmall16_pretrain_full_checkpoint.pth",
        "full_checkpoint_hash": None,
    },
    "dino_vits8": {
        "variant": "ViT-S/8",
        "description": "DINO ViT-S/8, 21M parameters, ImageNet k-NN 78.3%, "
        "linear 79.7%.",
        "url": f"{_BASE_URL}/dino_deitsmall8_pretrain/"
        "dino_deitsmall8_pretrain.pth",
        "file_hash": None,
        "full_checkpoint_url": f"{_BASE_URL}/dino_deitsmall8_pretrain/"
        "dino_deitsmall8_pretrain_full_checkpoint.pth",
        "full_checkpoint_hash": None,
    },
    "dino_vitb16": {
        "variant": "ViT-B/16",
        "description": "DINO ViT-B/16, 85M parameters, ImageNet k-NN 76.1%, "
        "linear 78.2%.",
        "url": f"{_BASE_URL}/dino_vitbase16_pretrain/"
        "dino_vitbase16_pretrain.pth",
        "file_hash": None,
        "full_checkpoint_url": f"{_BASE_URL}/dino_vitbase16_pretrain/"
        "dino_vitbase16_pretrain_full_checkpoint.pth",
        "full_checkpoint_hash": None,
    },
    "dino_vitb8": {
        "variant": "ViT-B/8",
        "description": "DINO ViT-B/8, 85M parameters, ImageNet k-NN 77.4%, "
        "linear 80.1%.",
        "url": f"{_BASE_URL}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
        "file_hash": None,
        "full_checkpoint_url": f"{_BASE_URL}/dino_vitbase8_pretrain/"
        "dino_vitbase8_pretrain_full_checkpoint.pth",
        "full_checkpoint_hash": None,
    },
}

CACHE_SUBDIR = "keras_dino"


def sha256_of_file(path):
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path, file_hash):
    if file_hash is None:
        return
    actual = sha256_of_file(path)
    if actual != file_hash.lower():
        raise ValueError(
            f"SHA-256 mismatch for {path}: expected {file_hash}, got "
            f"{actual}. The file is corrupted, truncated or not the expected "
            "checkpoint."
        )


def _cache_candidates(cache_dir, fname):
    """Where `keras.utils.get_file` may have put `fname`."""
    base = cache_dir or os.environ.get(
        "KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")
    )
    # get_file falls back to /tmp/.keras when the cache is not writable.
    for root in (os.path.expanduser(base), os.path.join("/tmp", ".keras")):
        yield os.path.join(root, CACHE_SUBDIR, fname)


def _download(url, file_hash, cache_dir):
    fname = os.path.basename(urllib.parse.urlsplit(url).path)
    if not fname:
        raise ValueError(f"Cannot take a file name from the URL {url!r}.")
    if cache_dir is not None:
        # get_file ignores a cache_dir that does not exist yet.
        os.makedirs(cache_dir, exist_ok=True)
    try:
        return keras.utils.get_file(
            fname=fname,
            origin=url,
            file_hash=file_hash,
            hash_algorithm="sha256",
            cache_subdir=CACHE_SUBDIR,
            cache_dir=cache_dir,
        )
    except ValueError as e:
        if file_hash is None:
            raise
        # Keras leaves a file that fails the hash check in the cache; drop
        # it so that a later call without a hash cannot pick it up.
        for target in _cache_candidates(cache_dir, fname):
            if os.path.exists(target) and (
                sha256_of_file(target) != file_hash.lower()
            ):
                os.remove(target)
        raise ValueError(
            f"The checkpoint downloaded from {url} failed its SHA-256 check "
            f"(expected {file_hash}); it was truncated or corrupted and has "
            f"been removed from the cache. ({e})"
        ) from e


def get_checkpoint_file(
    preset, file_hash=None, cache_dir=None, full_checkpoint=False
):
    """Local path of a preset's checkpoint, downloading it once if needed.

    Args:
        preset: a name in `PRESETS`, a local file or directory, or a
            `file://`, `http://` or `https://` URL.
        file_hash: optional SHA-256 hex digest to check; defaults to the
            preset's recorded hash.
        cache_dir: optional Keras cache root (default `~/.keras`).
        full_checkpoint: for preset names, fetch the full training
            checkpoint (student, teacher, head, center) instead of the
            teacher backbone.

    Returns:
        A local path.
    """
    preset = os.fspath(preset)
    if preset in PRESETS:
        info = PRESETS[preset]
        url_key = "full_checkpoint_url" if full_checkpoint else "url"
        hash_key = "full_checkpoint_hash" if full_checkpoint else "file_hash"
        return _download(info[url_key], file_hash or info[hash_key], cache_dir)
    scheme = urllib.parse.urlsplit(preset).scheme
    if scheme in ("http", "https", "file"):
        return _download(preset, file_hash, cache_dir)
    if not os.path.exists(preset):
        raise ValueError(
            f"Unknown preset {preset!r}: neither one of {sorted(PRESETS)} "
            "nor an existing file, directory or URL."
        )
    if file_hash is not None and os.path.isfile(preset):
        _check_hash(preset, file_hash)
    return preset


def load_backbone(
    preset,
    load_weights=True,
    checkpoint_key="teacher",
    file_hash=None,
    cache_dir=None,
    **kwargs,
):
    """Builds a `ViTBackbone` from a preset name, file, directory or URL.

    Args:
        preset: see `get_checkpoint_file`.
        load_weights: when false and `preset` is a preset name, only the
            architecture is built (nothing is downloaded).
        checkpoint_key: network to take from a full training checkpoint.
        file_hash: optional SHA-256 to check the file against.
        cache_dir: optional Keras cache root.
        **kwargs: `ViTBackbone` arguments overriding the inferred ones
            (e.g. `drop_path_rate`, `dtype`, `name`).

    Returns:
        A `ViTBackbone`.
    """
    from keras_dino.models.vit_backbone import VARIANTS
    from keras_dino.models.vit_backbone import ViTBackbone

    preset = os.fspath(preset)
    if not load_weights and preset in PRESETS:
        return ViTBackbone.from_variant(PRESETS[preset]["variant"], **kwargs)
    path = get_checkpoint_file(preset, file_hash, cache_dir)
    obj, hf_config = load_weights_file(path)
    checkpoint = split_checkpoint(obj, checkpoint_key=checkpoint_key)
    if preset in PRESETS:
        config = convert_backbone_config(
            checkpoint.backbone, hf_config, **kwargs
        )
        expected = {"num_layers": 12, **VARIANTS[PRESETS[preset]["variant"]]}
        for key, value in expected.items():
            if config[key] != value:
                raise ValueError(
                    f"The {preset!r} checkpoint has {key}={config[key]}, "
                    f"but the preset is {PRESETS[preset]['variant']}."
                )
    return backbone_from_checkpoint(
        checkpoint, hf_config, load_weights=load_weights, **kwargs
    )


def load_dino(
    preset,
    load_weights=True,
    file_hash=None,
    cache_dir=None,
    **kwargs,
):
    """Builds a `keras_dino.models.DINO` from a full training checkpoint.

    See `dino_from_checkpoint` for what is restored.

    Args:
        preset: a preset name (its full training checkpoint is fetched),
            or a local file or URL of a full checkpoint.
        load_weights: when false, build the architecture only (for a
            preset name, without downloading).
        file_hash: optional SHA-256 to check the file against.
        cache_dir: optional Keras cache root.
        **kwargs: `DINO` arguments overriding the inferred ones;
            `drop_path_rate` sets the student's stochastic depth.

    Returns:
        A `DINO` model.
    """
    from keras_dino.models.dino import DINO
    from keras_dino.models.vit_backbone import ViTBackbone

    preset = os.fspath(preset)
    if not load_weights and preset in PRESETS:
        backbone = ViTBackbone.from_variant(
            PRESETS[preset]["variant"],
            drop_path_rate=kwargs.pop("drop_path_rate", 0.1),
        )
        return DINO(backbone, **kwargs)
    path = get_checkpoint_file(
        preset, file_hash, cache_dir, full_checkpoint=True
    )
    obj, _ = load_weights_file(path)
    return dino_from_checkpoint(obj, load_weights=load_weights, **kwargs)
