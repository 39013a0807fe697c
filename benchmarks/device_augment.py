"""Timing helpers for the device-side multi-crop augmentation.

Shared by `benchmarks/augment.py` (this CPU) and `benchmarks/gpu_bench.py`
(an accelerator); imports no TensorFlow unless the backend is TensorFlow.
"""

import time

import keras
import numpy as np


def compiled(layer):
    """`layer` as the training step would run it: compiled where cheap.

    JAX: `jax.jit`; TensorFlow: `tf.function`; PyTorch: eager (as the
    default `fit` step, without `jit_compile`).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(layer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(layer)
    return layer


def to_device(batch):
    """The NumPy batch dict as backend tensors (on the default device)."""
    return {k: keras.ops.convert_to_tensor(v) for k, v in batch.items()}


def wait(crops):
    """Blocks until `crops` are computed."""
    keras.ops.convert_to_numpy(keras.ops.sum(crops[-1][:1, :1, :1]))


def synthetic_batches(sampler, batch_size, canvas_size, count, seed=0):
    """Random uint8 images of random sizes (half to full canvas) + params."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        shapes = rng.integers(
            canvas_size // 2, canvas_size + 1, size=(batch_size, 2)
        )
        images = rng.integers(
            0, 256, (batch_size, canvas_size, canvas_size, 3), np.uint8
        )
        batches.append({"images": images, **sampler.sample(shapes, rng)})
    return batches


def time_device_augmentation(layer, batches, repeats=3):
    """Images per second (wall) and per CPU-second of the device crops.

    Args:
        layer: a `DeviceMultiCropAugmentation`.
        batches: NumPy batch dicts (`ImageFolderDataset` items), moved to
            the device before timing.
        repeats: timed passes over `batches` after one warm-up call.

    Returns:
        Dict with `img_per_s`, `img_per_cpu_s`, `seconds` and `images`.
    """
    fn = compiled(layer)
    device_batches = [to_device(b) for b in batches]
    wait(fn(device_batches[0]))  # compilation
    images = 0
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for batch in device_batches:
            crops = fn(batch)
            images += int(batch["images"].shape[0])
        wait(crops)
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    return {
        "img_per_s": images / wall,
        "img_per_cpu_s": images / cpu,
        "seconds": wall,
        "images": images,
    }
