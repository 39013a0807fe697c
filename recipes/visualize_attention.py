r"""Self-attention maps of the CLS token (DINO's visualize_attention.py).

For each image: resize to `--image_size`, ImageNet-normalise, crop to
multiples of the patch size, and write per-head attention heat maps, their
overlays on the image and the masks keeping `--threshold` of the attention
mass, as PNG files.

Example:

```
python recipes/visualize_attention.py --pretrained_weights=dino_vits8 \
  --arch=vit_small --patch_size=8 --image_path=photo.jpg --output_dir=attn
python recipes/visualize_attention.py \
  --backbone=runs/demo/teacher_backbone.keras --image_size=96 \
  --image_path=a.jpg,b.png --output_dir=attn --figure=attn/grid.png
```

Needs TensorFlow (to read the images) and matplotlib (to write the PNG
files): `pip install "keras-dino[data,eval]"`.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FlagValues()
recipe_flags.define_backbone_flags(FLAGS, arch="vit_small", patch_size=8)
flags.DEFINE_list(
    "image_path",
    None,
    "Image file(s) to show the attention of, comma-separated (JPEG, PNG, "
    "BMP, GIF, WebP).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "image_size",
    480,
    "Side in pixels the images are resized to (a square) before being "
    "cropped to a multiple of the patch size (the reference's 480).",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "threshold",
    0.6,
    "Fraction of each head's attention mass its mask keeps: the smallest "
    "set of patches holding this share (<= 0: no masks).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output_dir",
    ".",
    "Folder for the PNG files (one subfolder per image when there are "
    "several); created if missing.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "figure",
    None,
    "Also write one PNG grid of all images and heads to this file "
    "(default: none).",
    flag_values=FLAGS,
)
flags.mark_flags_as_required(["image_path"], flag_values=FLAGS)


def main(argv):
    """Runs the recipe; `argv` is a full command line, program name first.

    The flags live in this module's own `FlagValues`, so several recipes
    can be imported and run in one process (e.g. from tests).
    """
    return recipe_flags.parse_and_run(FLAGS, argv, _run)


def _run():
    recipe_flags.require(
        "visualize_attention",
        [
            ("tensorflow", "reading the images"),
            ("matplotlib", "writing the PNG files"),
        ],
    )
    from keras_dino import data
    from keras_dino import evaluation
    from keras_dino import layers

    backbone = recipe_flags.backbone_from_flags(FLAGS)
    preprocessing = layers.ImagePreprocessing()
    keep = FLAGS.threshold if FLAGS.threshold > 0 else None
    written, rows = [], []
    for path in FLAGS.image_path:
        image = data.load_image(path, FLAGS.image_size)
        output_dir = FLAGS.output_dir
        if len(FLAGS.image_path) > 1:
            stem = os.path.splitext(os.path.basename(path))[0]
            output_dir = os.path.join(output_dir, stem)
        maps, masks, paths = evaluation.visualize_attention(
            backbone, image, output_dir, preprocessing=preprocessing, keep=keep
        )
        rows.append((image, maps) if masks is None else (image, maps, masks))
        print(f"{path}: {len(paths)} files written to {output_dir}")
        written.extend(paths)
    if FLAGS.figure:
        written.append(evaluation.save_attention_figure(rows, FLAGS.figure))
        print(f"Figure written to {FLAGS.figure}")
    return written


if __name__ == "__main__":
    recipe_flags.run(_run, FLAGS)
