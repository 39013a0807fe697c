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

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "backbone", None, "Backbone (or DINO model) .keras file.", flag_values=FLAGS
)
flags.DEFINE_string(
    "preset", None, "Preset / checkpoint for from_preset.", flag_values=FLAGS
)
flags.DEFINE_string(
    "arch", "ViT-S/8", "Variant used with --random_init.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "random_init", False, "Randomly initialised --arch.", flag_values=FLAGS
)
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
flags.DEFINE_integer("seed", 0, "Seed of --random_init.", flag_values=FLAGS)
flags.mark_flags_as_required(["image_path"], flag_values=FLAGS)


def main(argv):
    """Runs the recipe; `argv` is a full command line, program name first.

    The flags live in this module's own `FlagValues`, so several recipes
    can be imported and run in one process (e.g. from tests).
    """
    FLAGS.unparse_flags()
    FLAGS(argv)
    return _run()


def _run():
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
    written = []
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
        written.extend(paths)
    return written


def _main_with_absl(argv):
    del argv
    FLAGS.mark_as_parsed()
    _run()


if __name__ == "__main__":
    # Share the flags with absl's global FLAGS so --help, --flagfile and
    # the logging flags work as usual.
    flags.FLAGS.append_flag_values(FLAGS)
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        for flag in module_flags:
            flags.FLAGS.register_flag_by_module(module, flag)
    app.run(_main_with_absl)
