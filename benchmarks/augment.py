"""Throughput of the multi-crop input pipeline, in images per second.

One image = all its crops (default 2 x 224 + 8 x 96), JPEG read and decode
included, from a folder of images (the published figures used the
Imagenette 224 px training folder, 600 JPEGs). Prints one table: the
median of several timed passes after a warm-up pass, as wall-clock img/s and
as img per CPU-second of this process (the second is less sensitive to other
processes sharing the machine; x number of cores gives the ideal).

    python benchmarks/augment.py --root=/data/imagenette224/train
    KERAS_DINO_DATA=/data python benchmarks/augment.py --passes 5

Without --root it reads `$KERAS_DINO_DATA/imagenette224/train` when the
environment variable KERAS_DINO_DATA names a data folder.
"""

import os
import statistics
import time

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = flags.DEFINE_string(
    "root",
    None,
    "Image folder to read (root/<class>/<image> or flat). Default: "
    "$KERAS_DINO_DATA/imagenette224/train if KERAS_DINO_DATA is set.",
)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per batch.")
_PASSES = flags.DEFINE_integer(
    "passes", 3, "Timed passes over the folder (after one warm-up pass)."
)
_LIMIT = flags.DEFINE_integer(
    "limit", 0, "Use only this many batches per pass (0: all)."
)
_LOCAL = flags.DEFINE_integer("num_local_crops", 8, "Local crops per image.")
_GLOBAL_SIZE = flags.DEFINE_integer(
    "global_crop_size", 224, "Side of the global crops, in pixels."
)
_LOCAL_SIZE = flags.DEFINE_integer(
    "local_crop_size", 96, "Side of the local crops, in pixels."
)


def image_root(flag_value, environ=os.environ):
    """The folder to read: --root, else $KERAS_DINO_DATA's; checked."""
    if flag_value:
        root = flag_value
    elif environ.get("KERAS_DINO_DATA"):
        root = os.path.join(
            environ["KERAS_DINO_DATA"], "imagenette224", "train"
        )
    else:
        raise app.UsageError(
            "benchmarks/augment.py needs a folder of images: pass "
            "--root=<folder> (e.g. Imagenette's train folder) or set "
            "KERAS_DINO_DATA to a data folder holding imagenette224/train."
        )
    if not os.path.isdir(root):
        raise app.UsageError(f"The image folder {root} does not exist.")
    return root


def main(argv):
    del argv
    root = image_root(_ROOT.value)
    import tensorflow as tf

    from keras_dino.data import MultiCropAugmentation
    from keras_dino.data import from_image_folder

    augmentation = MultiCropAugmentation(
        global_crop_size=_GLOBAL_SIZE.value,
        local_crop_size=_LOCAL_SIZE.value,
        num_local_crops=_LOCAL.value,
        seed=0,
    )
    dataset = from_image_folder(
        root, augmentation, batch_size=_BATCH.value, seed=0
    )
    if _LIMIT.value:
        dataset = dataset.take(_LIMIT.value)

    def one_pass():
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        images = 0
        for crops in dataset:
            images += int(crops[0].shape[0])
        wall = time.perf_counter() - start_wall
        cpu = time.process_time() - start_cpu
        return images, images / wall, images / cpu

    one_pass()  # warm-up: tracing, autotuning, file cache
    results = [one_pass() for _ in range(_PASSES.value)]
    images = results[0][0]
    wall = statistics.median(r[1] for r in results)
    cpu = statistics.median(r[2] for r in results)
    load = os.getloadavg()[0]
    crops = f"2x{_GLOBAL_SIZE.value} + {_LOCAL.value}x{_LOCAL_SIZE.value}"
    print("| pipeline | crops | images/pass | img/s (wall) | img/cpu-s |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| keras_dino.data (tf {tf.__version__}, {os.cpu_count()} cores, "
        f"load {load:.1f}) | {crops} | {images} | {wall:.1f} | {cpu:.1f} |"
    )


if __name__ == "__main__":
    app.run(main)
