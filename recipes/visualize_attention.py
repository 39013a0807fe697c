r"""Self-attention maps of the CLS token (DINO's visualize_attention.py).

For each image: resize to `--image_size`, ImageNet-normalise, crop to
multiples of the patch size, and write per-head attention heat maps, their
overlays on the image and the masks keeping `--threshold` of the attention
mass, as PNG files.

Example:

```
python recipes/visualize_attention.py --backbone=backbone.keras \
  --image_path=/data/imagenette224/val/n01440764/x.JPEG --output_dir=attn
```
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FlagValues()
recipe_flags.define_backbone_flags(FLAGS, arch="ViT-S/8")
flags.DEFINE_list("image_path", None, "Image file(s).", flag_values=FLAGS)
flags.DEFINE_integer(
    "image_size", 480, "Resize images to this size.", flag_values=FLAGS
)
flags.DEFINE_float(
    "threshold",
    0.6,
    "Attention mass kept by the masks (<= 0: no masks).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output_dir", ".", "Where the PNG files go.", flag_values=FLAGS
)
flags.DEFINE_string(
    "figure",
    None,
    "Also write one PNG grid of all images and heads to this file.",
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
    from keras_dino import data
    from keras_dino import evaluation
    from keras_dino import layers

    backbone = recipe_flags.load_backbone(FLAGS)
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
