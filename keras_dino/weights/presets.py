"""Official DINO checkpoints and loading them as Keras models.

A preset name (`"dino_vits16"`, ...) resolves to the reference download URL
and is fetched once into the Keras cache (`~/.keras/keras_dino/`) through
`keras.utils.get_file`, with a SHA-256 check when the hash is known. A local
file or directory, a Hugging Face id with a copy in the local Hugging Face
cache, or a `file://` / `https://` URL is loaded the same way.

Importing this module registers `backbone_from_preset` and `load_dino` as
the loaders of `ViTBackbone.from_preset` and `DINO.from_preset`: this
package imports the models, never the reverse.
"""

import hashlib
import os
import re
import urllib.parse

import keras

from keras_dino.models.dino import DINO
from keras_dino.models.presets import PRESETS
from keras_dino.models.presets import register_preset_loader
from keras_dino.models.vit_backbone import VARIANTS
from keras_dino.models.vit_backbone import ViTBackbone
from keras_dino.weights.builders import backbone_from_checkpoint
from keras_dino.weights.builders import dino_from_checkpoint
from keras_dino.weights.convert import convert_backbone_config
from keras_dino.weights.convert import load_weights_file
from keras_dino.weights.convert import split_checkpoint

_BASE_URL = "https://dl.fbaipublicfiles.com/dino"


def _urls(folder):
    base = f"{_BASE_URL}/{folder}/{folder}"
    return {
        "url": f"{base}.pth",
        "file_hash": None,
        "full_checkpoint_url": f"{base}_full_checkpoint.pth",
        "full_checkpoint_hash": None,
    }


# TODO(keras_dino): record the SHA-256 of each file. They could not be
# computed here (no network access while this was written) and are not
# published by the reference repository, so `file_hash` is None and
# downloads are not verified; pass `file_hash=` to `from_preset` to check.
CHECKPOINTS = {
    "dino_vits16": _urls("dino_deitsmall16_pretrain"),
    "dino_vits8": _urls("dino_deitsmall8_pretrain"),
    "dino_vitb16": _urls("dino_vitbase16_pretrain"),
    "dino_vitb8": _urls("dino_vitbase8_pretrain"),
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
    except Exception as e:
        # keras.utils.get_file raises a bare Exception when it cannot fetch.
        target = next(_cache_candidates(cache_dir, fname))
        raise OSError(
            f"Could not download {url} ({e}). Without network access, "
            f"copy the file {fname!r} to {target} (the Keras cache that "
            "keras.utils.get_file reads: $KERAS_HOME or ~/.keras, or "
            "`cache_dir`, sub-folder keras_dino/), or pass the local path "
            f"of the file instead: from_preset('/path/to/{fname}')."
        ) from e


_HF_ID = re.compile(r"^(?:hf://)?([A-Za-z0-9][\w.-]*)/([\w.-]+)$")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _hf_hub_cache():
    """The Hugging Face hub cache folder, as `huggingface_hub` finds it."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expanduser(os.environ[name])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME")
        or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return os.path.join(os.path.expanduser(home), "hub")


def find_huggingface_snapshot(repo_id):
    """The local snapshot folder of a Hugging Face model id, or `None`.

    Looks in the Hugging Face hub cache (`$HF_HUB_CACHE`, else
    `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), where
    `huggingface-cli download <id>` and `transformers` put the files:
    `models--<org>--<name>/snapshots/<revision>/`. The revision that
    `refs/main` names is taken first, else the newest snapshot holding
    weights.

    Args:
        repo_id: a Hugging Face model id, e.g. `"facebook/dino-vits16"`.

    Returns:
        A local directory path, or `None` when no copy is cached.
    """
    match = _HF_ID.match(repo_id)
    if not match:
        return None
    org, name = match.groups()
    repo = os.path.join(_hf_hub_cache(), f"models--{org}--{name}")
    snapshots = os.path.join(repo, "snapshots")
    if not os.path.isdir(snapshots):
        return None
    candidates = []
    ref = os.path.join(repo, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            candidates.append(os.path.join(snapshots, f.read().strip()))
    others = [os.path.join(snapshots, d) for d in os.listdir(snapshots)]
    candidates += sorted(others, key=os.path.getmtime, reverse=True)
    for folder in candidates:
        if any(os.path.isfile(os.path.join(folder, w)) for w in _HF_WEIGHTS):
            return folder
    return None


def get_checkpoint_file(
    preset, file_hash=None, cache_dir=None, full_checkpoint=False
):
    """Local path of a preset's checkpoint, downloading it once if needed.

    Args:
        preset: a name in `ViTBackbone.presets`; a local file or
            directory; a Hugging Face id (`"facebook/dino-vits16"`, or
            `"hf://facebook/dino-vits16"`) with a copy in the local
            Hugging Face cache; or a `file://`, `http://` or `https://`
            URL.
        file_hash: optional SHA-256 hex digest to check; defaults to the
            preset's recorded hash.
        cache_dir: optional Keras cache root (default `$KERAS_HOME` or
            `~/.keras`).
        full_checkpoint: for preset names, fetch the full training
            checkpoint (student, teacher, head, center) instead of the
            teacher backbone.

    Returns:
        A local path.
    """
    preset = os.fspath(preset)
    if preset in CHECKPOINTS:
        info = CHECKPOINTS[preset]
        url_key = "full_checkpoint_url" if full_checkpoint else "url"
        hash_key = "full_checkpoint_hash" if full_checkpoint else "file_hash"
        return _download(info[url_key], file_hash or info[hash_key], cache_dir)
    scheme = urllib.parse.urlsplit(preset).scheme
    if scheme in ("http", "https", "file"):
        return _download(preset, file_hash, cache_dir)
    if not os.path.exists(preset):
        if _HF_ID.match(preset):
            snapshot = find_huggingface_snapshot(preset)
            if snapshot is not None:
                return snapshot
            repo_id = _HF_ID.match(preset).expand(r"\1/\2")
            raise ValueError(
                f"{preset!r} looks like a Hugging Face id, but no copy is in "
                f"the Hugging Face cache {_hf_hub_cache()}. keras_dino does "
                "not download from the Hub: run `huggingface-cli download "
                f"{repo_id}` where there is network access (and copy the "
                "cache here), or pass the local directory holding "
                "config.json and model.safetensors / pytorch_model.bin."
            )
        raise ValueError(
            f"Unknown preset {preset!r}: neither one of {sorted(CHECKPOINTS)}"
            " nor an existing file, directory, Hugging Face id or URL."
        )
    if file_hash is not None and os.path.isfile(preset):
        _check_hash(preset, file_hash)
    return preset


def backbone_from_preset(
    preset,
    load_weights=True,
    checkpoint_key="teacher",
    file_hash=None,
    cache_dir=None,
    **kwargs,
):
    """Builds a `ViTBackbone` from a preset name, file, directory or URL.

    This is the loader behind `ViTBackbone.from_preset`.

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

    This is the loader behind `DINO.from_preset`; see
    `dino_from_checkpoint` for what is restored.

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


register_preset_loader("backbone", backbone_from_preset)
register_preset_loader("dino", load_dino)
