r"""Weighted k-NN evaluation of frozen ViT features (DINO's eval_knn.py).

Extracts L2-normalised CLS features of the train and validation images
(resized to the backbone's input size, centre crop `--crop_fraction`,
ImageNet normalisation) and prints the top-1 / top-5 accuracy of the
weighted k-NN classifier for each k.

Example:

```
python recipes/eval_knn.py --backbone=runs/demo/teacher_backbone.keras \
  --train_data=recipes/data/cifar10_demo_train.npz \
  --val_data=recipes/data/cifar10_demo_val.npz --crop_fraction=1.0
python recipes/eval_knn.py --pretrained_weights=dino_vits16 \
  --train_data=/data/imagenet/train --val_data=/data/imagenet/val \
  --nb_knn=10,20,100,200 --cache_dir=runs/knn_cache
python recipes/eval_knn.py --random_init --arch=vit_small --patch_size=16 \
  --train_data=/data/imagenet/train --val_data=/data/imagenet/val
```

Needs TensorFlow to read the images (`pip install "keras-dino[data]"`).
"""

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FlagValues()
recipe_flags.define_backbone_flags(FLAGS)
recipe_flags.define_data_flags(FLAGS, batch_size=64)
recipe_flags.define_flags(
    FLAGS,
    (
        flags.DEFINE_list,
        "ks",
        ["10", "20", "100", "200"],
        "Numbers of nearest neighbours k to report, comma-separated; one "
        "accuracy line per k. Also accepted as --nb_knn, the reference's "
        "name.",
    ),
    (
        flags.DEFINE_float,
        "temperature",
        0.07,
        "Temperature T of the neighbours' votes: each votes with weight "
        "exp(cosine similarity / T) (the reference's 0.07).",
    ),
)
flags.DEFINE_alias("nb_knn", "ks", flag_values=FLAGS)


def main(argv):
    """Runs the recipe; `argv` is a full command line, program name first.

    The flags live in this module's own `FlagValues`, so several recipes
    can be imported and run in one process (e.g. from tests).
    """
    return recipe_flags.parse_and_run(FLAGS, argv, _run)


def _run():
    recipe_flags.require("eval_knn", recipe_flags.data_needs(FLAGS))
    from keras_dino import evaluation

    ks = [int(k) for k in FLAGS.ks]
    if min(ks) < 1:
        raise ValueError(f"--ks must be positive numbers; got {FLAGS.ks}.")
    backbone = recipe_flags.backbone_from_flags(
        FLAGS, image_size=FLAGS.image_size
    )
    image_size = FLAGS.image_size or backbone.image_size
    features = recipe_flags.split_features(
        FLAGS, backbone, image_size, normalize=True, cache_prefix="knn"
    )
    results = evaluation.knn_evaluate(
        *features["train"],
        *features["val"],
        ks=ks,
        temperature=FLAGS.temperature,
        num_classes=FLAGS.num_classes or None,
    )
    for k, accuracy in results.items():
        print(
            f"{k}-NN classifier result: Top1: {accuracy['top1']:.2f}, "
            f"Top5: {accuracy['top5']:.2f}"
        )
    if FLAGS.results_json:
        with open(FLAGS.results_json, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=2)
    return results


if __name__ == "__main__":
    recipe_flags.run(_run, FLAGS)
