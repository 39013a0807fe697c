"""DINO in a few minutes on 2 CPU cores: pretrain, then k-NN vs random.

Pretrains the `cifar10_vit_tiny` configuration (shortened) on the CIFAR-10
sample shipped in recipes/data (5,000 training images), tracks the
teacher's k-NN accuracy on 1,000 held-out images after every epoch, and
prints the k-NN accuracy of the trained teacher on all 5,000 held-out
images next to that of the same backbone at its random initialisation.
Writes the learning curve as `<output_dir>/learning_curve.png`.

    python recipes/demo.py --output_dir=runs/demo

The output folder is replaced on each run, but only if the demo made it:
a folder the demo creates holds a marker file (`.keras_dino_demo`); an
existing folder without it is left alone and the demo stops with a message.
Needs TensorFlow and matplotlib: `pip install "keras-dino[demo]"`.
"""

import os
import shutil
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FLAGS
_HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = ".keras_dino_demo"
flags.DEFINE_string(
    "output_dir",
    "runs/demo",
    "Folder for the checkpoints, backbones, history and learning curve. "
    "Replaced on each run if an earlier demo run made it; the demo refuses "
    "to touch an existing folder it did not make (one without its "
    f"{MARKER} marker file) unless the folder is empty.",
)
flags.DEFINE_string(
    "train_npz",
    os.path.join(_HERE, "data", "cifar10_demo_train.npz"),
    "Training images: a .npz file with images (N, H, W, 3) uint8 and "
    "labels (N,) (default: the 5,000-image CIFAR-10 sample in "
    "recipes/data).",
)
flags.DEFINE_string(
    "val_npz",
    os.path.join(_HERE, "data", "cifar10_demo_val.npz"),
    "Held-out images for the k-NN evaluation, in the same form (default: "
    "the 5,000 held-out CIFAR-10 images in recipes/data).",
)
flags.DEFINE_integer(
    "epochs", 22, "Pretraining epochs (78 steps each on the full sample)."
)
flags.DEFINE_integer(
    "max_images", 0, "Train on at most this many images (0: all)."
)
flags.DEFINE_integer(
    "seed", 0, "Seed of the initial weights and of the augmentation."
)
flags.DEFINE_integer(
    "monitor_images",
    1000,
    "Held-out images for the per-epoch k-NN curve (the final table uses "
    "all of them).",
)
flags.DEFINE_integer(
    "schedule_epochs",
    0,
    "Length of the learning-rate / momentum / weight-decay schedules in "
    "epochs; the demo runs the first --epochs of them (0: --epochs).",
)
flags.register_validator(
    "max_images",
    lambda n: n == 0 or n >= 200,
    "--max_images must be 0 (all) or at least 200, the largest k of the "
    "k-NN evaluation.",
)


def prepare_output_dir(path):
    """Empties `path` for a new run, if the demo made it; else refuses.

    A missing or empty folder is created and marked; a folder holding the
    demo's marker file is replaced; any other existing path is left as it
    is.

    Raises:
        FileExistsError: `path` exists and the demo did not make it.
    """
    marked = os.path.isfile(os.path.join(path, MARKER))
    if marked and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path) and not (
        os.path.isdir(path) and not os.listdir(path)
    ):
        raise FileExistsError(
            f"--output_dir={path} exists and was not made by the demo (it "
            f"has no {MARKER} marker file), so the demo will not replace "
            "it. Pass a new --output_dir, or remove that folder yourself."
        )
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, MARKER), "w") as f:
        f.write("Made by recipes/demo.py; replaced by its next run.\n")


def main(argv):
    del argv
    prepare_output_dir(FLAGS.output_dir)
    recipe_flags.require(
        "demo",
        [
            ("tensorflow", "the tf.data input pipeline"),
            ("matplotlib", "the learning-curve plot"),
        ],
        extras={"tensorflow": "demo", "matplotlib": "demo"},
    )
    import keras

    from keras_dino import configs
    from keras_dino import pretraining
    from keras_dino.data import CenterCropTransform
    from keras_dino.data import load_npz
    from keras_dino.evaluation import extract_features
    from keras_dino.evaluation import knn_classify
    from keras_dino.evaluation import knn_evaluate
    from keras_dino.evaluation import paired_sign_test
    from keras_dino.evaluation.knn_monitor import KNNMonitor
    from keras_dino.evaluation.learning_curve import plot_learning_curve
    from keras_dino.evaluation.learning_curve import read_history

    out = FLAGS.output_dir
    schedule_epochs = max(FLAGS.schedule_epochs, FLAGS.epochs)
    config = configs.get_config(
        "cifar10_vit_tiny",
        **{
            **configs.DEMO_OVERRIDES,
            # A short schedule (as in the tests) warms up for all of it.
            "warmup_epochs": min(
                configs.DEMO_OVERRIDES["warmup_epochs"], schedule_epochs
            ),
        },
        epochs=schedule_epochs,
        freeze_last_layer=schedule_epochs,
        seed=FLAGS.seed,
    )
    train_x, train_y = load_npz(FLAGS.train_npz)
    val_x, val_y = load_npz(FLAGS.val_npz)
    if FLAGS.max_images:
        train_x, train_y = (
            train_x[: FLAGS.max_images],
            train_y[: FLAGS.max_images],
        )
    augmentation = pretraining.multi_crop_augmentation(config)
    dataset, num_images = pretraining.pretraining_dataset(
        augmentation,
        config["batch_size"],
        npz_paths=FLAGS.train_npz,
        max_images=FLAGS.max_images or None,
        seed=config["seed"],
    )
    steps = pretraining.steps_for(num_images, config["batch_size"])
    monitor = KNNMonitor(
        train_x,
        train_y,
        val_x[: FLAGS.monitor_images],
        val_y[: FLAGS.monitor_images],
    )
    print(
        f"Backend {keras.backend.backend()}, dtype policy "
        f"{pretraining.resolve_dtype_policy(config['dtype_policy'])}; "
        f"{num_images} images, "
        f"{steps} steps x {FLAGS.epochs} epochs (of a "
        f"{config['epochs']}-epoch schedule)."
    )
    start = time.time()
    model, _ = pretraining.pretrain(
        config,
        dataset,
        steps,
        out,
        extra_callbacks=[monitor],
        verbose=2,
        stop_after_epochs=FLAGS.epochs,
    )
    minutes = (time.time() - start) / 60
    # A run stopped before the end of its schedule saves no final teacher.
    teacher_path = os.path.join(out, "teacher_backbone.keras")
    if not os.path.exists(teacher_path):
        model.teacher_backbone.save(teacher_path)

    prep = CenterCropTransform(config["image_size"], crop_fraction=1.0)
    rows, correct = [], {}
    for name in ("initial_backbone", "teacher_backbone"):
        backbone = keras.saving.load_model(os.path.join(out, name + ".keras"))
        feats = [
            extract_features(backbone, x, preprocessing=prep, verbose=0)
            for x in (train_x, val_x)
        ]
        result = knn_evaluate(
            feats[0], train_y, feats[1], val_y, ks=(10, 20, 100, 200)
        )
        rows.append((name, result))
        _, _, predictions = knn_classify(feats[0], train_y, feats[1], k=20)
        correct[name] = predictions[:, 0] == val_y
    history = read_history(os.path.join(out, "history.csv"))
    plot_learning_curve(
        history,
        os.path.join(out, "learning_curve.png"),
        baseline_knn=monitor.history[0][1],
        title="DINO demo, CIFAR-10 sample (5k images), 2 CPU cores",
    )
    print(
        f"\nPretraining took {minutes:.1f} min. k-NN top-1 on "
        f"{len(val_x)} held-out CIFAR-10 images ({len(train_x)} in the "
        "memory bank):"
    )
    print("| backbone | k=10 | k=20 | k=100 | k=200 |")
    print("|---|---|---|---|---|")
    labels = {
        "initial_backbone": "random init (same network, epoch 0)",
        "teacher_backbone": f"DINO teacher, {FLAGS.epochs} epochs",
    }
    for name, result in rows:
        cells = " | ".join(
            f"{result[k]['top1']:.1f}" for k in (10, 20, 100, 200)
        )
        print(f"| {labels[name]} | {cells} |")
    gains = " | ".join(
        f"{rows[1][1][k]['top1'] - rows[0][1][k]['top1']:+.1f}"
        for k in (10, 20, 100, 200)
    )
    print(f"| gain (points) | {gains} |")
    only_init, only_dino, p_value = paired_sign_test(
        correct["initial_backbone"], correct["teacher_backbone"]
    )
    print(
        f"At k=20 the trained teacher alone is right on {only_dino} images "
        f"and random init alone on {only_init}: exact paired sign test "
        f"p = {p_value:.2g}."
    )
    print(f"Learning curve: {os.path.join(out, 'learning_curve.png')}")


if __name__ == "__main__":
    app.run(main)
