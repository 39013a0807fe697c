"""Throughput of the multi-crop input paths, in images per second.

One image = all its crops (default 2 x 224 + 8 x 96), from a folder of
images (the published figures used the Imagenette 224 px training folder,
600 JPEGs). Three paths, side by side:

* `tf_data`: today's `keras_dino.data` pipeline, everything on the host
  (JPEG read and decode, crops, colour ops) in `tf.data`;
* `host`: the host half of the device path, `keras_dino.numpy_data`
  (read and decode with PIL, crop parameters with NumPy, batches padded to
  `--canvas_size`), in `--workers` threads;
* `device`: the device half, `keras_dino.layers.DeviceMultiCropAugmentation`
  on the Keras backend (`KERAS_BACKEND`; here on the CPU, so this row
  shows what the crops would cost a CPU, not an accelerator), over batches
  of the `host` path held in memory.

Each row is the median of several timed passes after a warm-up pass, as
wall-clock img/s and as img per CPU-second of this process (the second is
less sensitive to other processes sharing the machine; x number of cores
gives the ideal). `host + device` combines the two halves on this CPU:
1 / (1/host + 1/device) per CPU-second.

    python benchmarks/augment.py --root=/data/imagenette224/train
    KERAS_DINO_DATA=/data python benchmarks/augment.py --passes 5
    KERAS_BACKEND=jax python benchmarks/augment.py --pipelines=host,device

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
_PIPELINES = flags.DEFINE_list(
    "pipelines",
    ["tf_data", "host", "device"],
    "Paths to time: tf_data, host, device.",
)
_CANVAS = flags.DEFINE_integer(
    "canvas_size",
    224,
    "host/device paths: side of the padded square the images are sent "
    "in (larger images are shrunk to fit); 224 fits Imagenette 224.",
)
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "host path: decoding threads (0: the number of cores)."
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


def _timed(one_pass, passes):
    """Median images, img/s and img/cpu-s of `passes` after a warm-up."""
    one_pass()  # warm-up: tracing, autotuning, file cache
    results = []
    for _ in range(passes):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        images = one_pass()
        wall = time.perf_counter() - start_wall
        cpu = time.process_time() - start_cpu
        results.append((images, images / wall, images / cpu))
    return (
        results[0][0],
        statistics.median(r[1] for r in results),
        statistics.median(r[2] for r in results),
    )


def _sampler_arguments():
    return dict(
        global_crop_size=_GLOBAL_SIZE.value,
        local_crop_size=_LOCAL_SIZE.value,
        num_local_crops=_LOCAL.value,
        seed=0,
    )


def time_tf_data(root):
    """The `keras_dino.data` pipeline: (label, images, img/s, img/cpu-s)."""
    import tensorflow as tf

    from keras_dino.data import MultiCropAugmentation
    from keras_dino.data import from_image_folder

    augmentation = MultiCropAugmentation(**_sampler_arguments())
    dataset = from_image_folder(
        root, augmentation, batch_size=_BATCH.value, seed=0
    )
    if _LIMIT.value:
        dataset = dataset.take(_LIMIT.value)

    def one_pass():
        return sum(int(crops[0].shape[0]) for crops in dataset)

    label = f"tf_data: keras_dino.data (tf {tf.__version__})"
    return (label, *_timed(one_pass, _PASSES.value))


def _host_dataset(root):
    from keras_dino.numpy_data import ImageFolderDataset
    from keras_dino.numpy_data import MultiCropSampler

    sampler = MultiCropSampler(**_sampler_arguments())
    dataset = ImageFolderDataset(
        root, sampler, _BATCH.value, canvas_size=_CANVAS.value, seed=0
    )
    return sampler, dataset


def time_host(root):
    """`keras_dino.numpy_data` in threads, as `fit`'s PyDataset workers."""
    from concurrent.futures import ThreadPoolExecutor

    _, dataset = _host_dataset(root)
    batches = len(dataset)
    if _LIMIT.value:
        batches = min(batches, _LIMIT.value)
    workers = _WORKERS.value or os.cpu_count()

    def one_pass():
        with ThreadPoolExecutor(workers) as pool:
            done = pool.map(dataset.__getitem__, range(batches))
            return sum(len(batch["images"]) for batch in done)

    label = (
        f"host: keras_dino.numpy_data (PIL, {workers} threads, "
        f"canvas {_CANVAS.value})"
    )
    return (label, *_timed(one_pass, _PASSES.value))


def time_device(root):
    """`DeviceMultiCropAugmentation` on the backend, over host batches."""
    import keras
    from device_augment import time_device_augmentation

    from keras_dino.layers import DeviceMultiCropAugmentation

    sampler, dataset = _host_dataset(root)
    count = min(len(dataset), _LIMIT.value or 4)
    batches = [dataset[i] for i in range(count)]
    layer = DeviceMultiCropAugmentation.from_sampler(sampler)
    result = time_device_augmentation(layer, batches, repeats=_PASSES.value)
    label = (
        f"device: DeviceMultiCropAugmentation ({keras.backend.backend()} "
        "on this CPU)"
    )
    return (
        label,
        result["images"],
        result["img_per_s"],
        result["img_per_cpu_s"],
    )


def main(argv):
    del argv
    root = image_root(_ROOT.value)
    timers = {"tf_data": time_tf_data, "host": time_host}
    timers["device"] = time_device
    unknown = set(_PIPELINES.value) - set(timers)
    if unknown:
        raise app.UsageError(
            f"Unknown --pipelines {sorted(unknown)}; choose from "
            f"{sorted(timers)}."
        )
    rows = {name: timers[name](root) for name in _PIPELINES.value}
    if "host" in rows and "device" in rows:
        host, device = rows["host"], rows["device"]
        rows["combined"] = (
            "host + device, both on this CPU",
            host[1],
            1 / (1 / host[2] + 1 / device[2]),
            1 / (1 / host[3] + 1 / device[3]),
        )
    load = os.getloadavg()[0]
    crops = f"2x{_GLOBAL_SIZE.value} + {_LOCAL.value}x{_LOCAL_SIZE.value}"
    print(
        f"{os.cpu_count()} cores, load {load:.1f}, batch {_BATCH.value}, "
        f"crops {crops}"
    )
    print("| path | images/pass | img/s (wall) | img/cpu-s |")
    print("| --- | --- | --- | --- |")
    for label, images, wall, cpu in rows.values():
        print(f"| {label} | {images} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    app.run(main)
