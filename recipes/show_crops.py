"""Writes a PNG grid of the multi-crop views of a few images.

One row per image: the original (resized), then the 2 global crops and the
local crops, un-normalised for display.

    python recipes/show_crops.py --images_dir=/data/imagenet/val \
        --num_images=4 --output=/tmp/crops.png

Without --images_dir it reads `$KERAS_DINO_DATA/imagenette224/val` when
the environment variable KERAS_DINO_DATA names a data folder. Needs
TensorFlow and Pillow: `pip install "keras-dino[data,eval]"`.
"""

import glob
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

_IMAGES_DIR = flags.DEFINE_string(
    "images_dir",
    None,
    "Folder of images, searched recursively (JPEG, PNG, BMP, GIF, WebP). "
    "Default: $KERAS_DINO_DATA/imagenette224/val if KERAS_DINO_DATA is set.",
)
_OUTPUT = flags.DEFINE_string("output", "crops.png", "PNG file to write.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 4, "Images shown, one row each."
)
_NUM_LOCAL = flags.DEFINE_integer(
    "num_local_crops", 8, "Local crops per image (after the 2 global ones)."
)
_GLOBAL_SIZE = flags.DEFINE_integer(
    "global_crop_size", 224, "Side of the global crops, in pixels."
)
_LOCAL_SIZE = flags.DEFINE_integer(
    "local_crop_size", 96, "Side of the local crops, in pixels."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the augmentation.")


def images_dir(flag_value, environ=os.environ):
    """The folder to read: the flag, else $KERAS_DINO_DATA's; checked."""
    if flag_value:
        folder = flag_value
    elif environ.get("KERAS_DINO_DATA"):
        folder = os.path.join(
            environ["KERAS_DINO_DATA"], "imagenette224", "val"
        )
    else:
        raise app.UsageError(
            "show_crops needs images: pass --images_dir=<folder of images> "
            "or set KERAS_DINO_DATA to a data folder holding "
            "imagenette224/val."
        )
    if not os.path.isdir(folder):
        raise app.UsageError(f"The image folder {folder} does not exist.")
    return folder


def crop_grid(images, augmentation, seed=0, pad=4):
    """Builds a uint8 grid: per row an image then its crops.

    Args:
        images: list of uint8 `(H, W, 3)` arrays.
        augmentation: a `MultiCropAugmentation`.
        seed: element seed of the first image (the next get +1, +2, ...).
        pad: white margin between tiles, in pixels.

    Returns:
        uint8 array `(rows * cell, columns * cell, 3)`.
    """
    import numpy as np
    import tensorflow as tf

    mean = np.array(augmentation.mean, np.float32)
    std = np.array(augmentation.std, np.float32)
    cell = augmentation.global_crop_size + pad
    columns = 1 + augmentation.num_crops
    grid = np.full((len(images) * cell, columns * cell, 3), 255, np.uint8)
    for row, image in enumerate(images):
        size = augmentation.global_crop_size
        tiles = [
            tf.cast(
                tf.clip_by_value(
                    tf.round(tf.image.resize(image, (size, size), "bicubic")),
                    0,
                    255,
                ),
                tf.uint8,
            ).numpy()
        ]
        for crop in augmentation(image, seed=seed + row):
            pixels = np.clip(crop.numpy() * std + mean, 0.0, 1.0)
            tiles.append((pixels * 255).round().astype(np.uint8))
        for column, tile in enumerate(tiles):
            h, w = tile.shape[:2]
            top, left = row * cell, column * cell
            grid[top : top + h, left : left + w] = tile
    return grid


def main(argv):
    del argv
    folder = images_dir(_IMAGES_DIR.value)
    recipe_flags.require(
        "show_crops",
        [("tensorflow", "the augmentation"), ("PIL", "writing the PNG")],
    )
    import tensorflow as tf
    from PIL import Image

    from keras_dino.data import IMAGE_EXTENSIONS
    from keras_dino.data import MultiCropAugmentation
    from keras_dino.data import decode_image

    paths = sorted(
        p
        for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if p.lower().endswith(IMAGE_EXTENSIONS)
    )[: _NUM_IMAGES.value]
    if not paths:
        raise ValueError(f"No image file found in {folder!r}.")
    images = [decode_image(tf.io.read_file(p)) for p in paths]
    augmentation = MultiCropAugmentation(
        global_crop_size=_GLOBAL_SIZE.value,
        local_crop_size=_LOCAL_SIZE.value,
        num_local_crops=_NUM_LOCAL.value,
        seed=_SEED.value,
    )
    grid = crop_grid(images, augmentation)
    Image.fromarray(grid).save(_OUTPUT.value)
    print(
        f"Wrote {_OUTPUT.value}: {len(paths)} images x "
        f"{augmentation.num_crops} crops."
    )


if __name__ == "__main__":
    app.run(main)
