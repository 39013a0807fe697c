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

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", None, "Backbone (or DINO model) .keras file.")
flags.DEFINE_string("preset", None, "Preset / checkpoint for from_preset.")
flags.DEFINE_string("arch", "ViT-S/8", "Variant used with --random_init.")
flags.DEFINE_bool("random_init", False, "Randomly initialised --arch.")
flags.DEFINE_list("image_path", None, "Image file(s).")
flags.DEFINE_integer("image_size", 480, "Resize images to this size.")
flags.DEFINE_float(
    "threshold", 0.6, "Attention mass kept by the masks (<= 0: no masks)."
)
flags.DEFINE_string("output_dir", ".", "Where the PNG files go.")
flags.DEFINE_integer("seed", 0, "Seed of --random_init.")
flags.mark_flags_as_required(["image_path"])


def main(argv):
    del argv
    from keras_dino import evaluation

    backbone = evaluation.load_backbone(
        path=FLAGS.backbone,
        preset=FLAGS.preset,
        arch=FLAGS.arch,
        random_init=FLAGS.random_init,
        seed=FLAGS.seed,
    )
    preprocessing = evaluation.imagenet_preprocessing()
    keep = FLAGS.threshold if FLAGS.threshold > 0 else None
    for path in FLAGS.image_path:
        image = evaluation.load_image(path, FLAGS.image_size)
        output_dir = FLAGS.output_dir
        if len(FLAGS.image_path) > 1:
            stem = os.path.splitext(os.path.basename(path))[0]
            output_dir = os.path.join(output_dir, stem)
        _, _, paths = evaluation.visualize_attention(
            backbone, image, output_dir, preprocessing=preprocessing, keep=keep
        )
        print(f"{path}: {len(paths)} files written to {output_dir}")


if __name__ == "__main__":
    app.run(main)
