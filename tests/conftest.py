"""Shared fixtures: tiny models, multi-crop batches and sample data.

Everything here is sized for a 2-core CPU: hidden 16, one or two blocks,
out_dim <= 512, batches of 4. The only data the tests read is in the
repository: the CIFAR-10 sample in `recipes/data/` and files the tests
write themselves (JPEG folders made from that sample).
"""

import os
import types
from pathlib import Path

# Under pytest-xdist (the README's test command runs one worker per core),
# each worker computes on one thread: the models here are tiny, and
# thread pools of several workers only wait for each other's cores. On
# JAX, XLA also compiles with LLVM optimisation level 0: the suite's time
# goes into compiling hundreds of tiny programs, not running them (the
# JAX pass took 16 min at the default level, measured 40 % less with this
# on tests/models/dino_test.py). Set before JAX is imported (it reads
# XLA_FLAGS once); subprocesses that the tests start inherit it. A
# XLA_FLAGS given by the user keeps its own settings.
UNDER_XDIST = "PYTEST_XDIST_WORKER" in os.environ
if os.environ.get("KERAS_BACKEND") == "jax":
    _xla_flags = os.environ.get("XLA_FLAGS", "")
    _extra = []
    if "xla_backend_optimization_level" not in _xla_flags:
        _extra.append("--xla_backend_optimization_level=0")
    if UNDER_XDIST and "multi_thread_eigen" not in _xla_flags:
        _extra += [
            "--xla_cpu_multi_thread_eigen=false",
            "intra_op_parallelism_threads=1",
        ]
    os.environ["XLA_FLAGS"] = " ".join([_xla_flags, *_extra]).strip()
    # Many tests compile the same tiny programs: JAX's compilation cache,
    # in a folder of this process (and the subprocesses its tests start)
    # that is removed at exit, compiles each once (measured 27 % less time
    # for tests/models/dino_run_state_test.py from an empty cache).
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        import atexit
        import shutil
        import tempfile

        _cache = tempfile.mkdtemp(prefix="keras_dino_test_jax_cache_")
        atexit.register(shutil.rmtree, _cache, ignore_errors=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

if BACKEND == "torch":
    import torch

    # On a small, shared CPU, torch's intra-op thread pool makes every op of
    # these tiny models wait for busy cores (measured 35x slower per step
    # with 2 threads under load); one thread is fastest here.
    torch.set_num_threads(1)
elif BACKEND == "tensorflow" and UNDER_XDIST:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)

# The CIFAR-10 sample shipped with the repository (see README.md): two
# class-balanced files of 5,000 real 32 x 32 images with labels.
DATA_DIR = Path(__file__).resolve().parents[1] / "recipes" / "data"
CIFAR_VAL = "cifar10_demo_val.npz"


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def tiny_backbone_config(**overrides):
    config = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_dim": 16,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.0,
    }
    config.update(overrides)
    return config


def make_backbone(**overrides):
    from keras_dino.models import ViTBackbone

    return ViTBackbone(**tiny_backbone_config(**overrides))


def make_dino(backbone=None, seed=0, **head_overrides):
    """A DINO on a tiny ViT (patch 8 on 32 px), out_dim 64 by default."""
    from keras_dino.models import DINO

    keras.utils.set_random_seed(seed)
    if backbone is None:
        backbone = make_backbone()
    head = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}
    head.update(head_overrides)
    return DINO(backbone, **head)


def multi_crop_batch(
    batch=4, global_size=32, local_size=16, num_local=2, seed=0
):
    """`(global_1, global_2, local_1, ...)` float32 NHWC crops."""
    rng = np.random.default_rng(seed)
    sizes = [global_size] * 2 + [local_size] * num_local
    return tuple(
        rng.normal(size=(batch, s, s, 3)).astype("float32") for s in sizes
    )


@pytest.fixture
def data_dir():
    """`recipes/data`, the folder of the repository's CIFAR-10 sample."""
    if not (DATA_DIR / CIFAR_VAL).is_file():
        pytest.fail(
            f"The repository's CIFAR-10 sample {DATA_DIR / CIFAR_VAL} is "
            "missing; it is part of the repository (check out its files)."
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def cifar_sample():
    """`(images, labels, class_names)` of the first 500 held-out images."""
    with np.load(DATA_DIR / CIFAR_VAL) as data:
        return (
            data["images"][:500],
            data["labels"][:500].astype("int64"),
            [str(name) for name in data["class_names"]],
        )


def write_jpeg_folder(root, images, labels, class_names, per_class):
    """Writes `root/<class>/<n>.JPEG` files: `per_class` real images each.

    The 32 px images are enlarged (bicubic) to 96 x 72 or 72 x 96 pixels,
    alternately, so that readers see non-square JPEGs of several sizes.
    Returns the classes written, in order.
    """
    from PIL import Image

    written = []
    for label, name in enumerate(class_names):
        indices = np.flatnonzero(labels == label)[:per_class]
        if len(indices) < per_class:
            continue
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for n, i in enumerate(indices):
            size = (96, 72) if n % 2 == 0 else (72, 96)
            picture = Image.fromarray(images[i]).resize(size, Image.BICUBIC)
            picture.save(os.path.join(root, name, f"{n:03d}.JPEG"), quality=90)
        written.append(name)
    return written


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory, cifar_sample):
    """`train/` and `val/` folders of real JPEGs in 3 classes (14 + 7 each).

    Made from the repository's CIFAR-10 sample (no two files share an
    image); `root/<split>/<class>/<n>.JPEG`.
    """
    images, labels, class_names = cifar_sample
    root = tmp_path_factory.mktemp("image_folders")
    classes = class_names[:3]
    train = write_jpeg_folder(
        root / "train", images[:300], labels[:300], classes, per_class=14
    )
    val = write_jpeg_folder(
        root / "val", images[300:], labels[300:], classes, per_class=7
    )
    assert train == val == classes, "the sample lacks images of a class"
    return root


@pytest.fixture
def scratch(tmp_path):
    """A per-test temporary folder (pytest's `tmp_path`)."""
    return tmp_path


@pytest.fixture(scope="session")
def tiny():
    """The helpers above, for tests (conftest is not imported directly)."""
    return types.SimpleNamespace(
        backbone_config=tiny_backbone_config,
        backbone=make_backbone,
        dino=make_dino,
        crops=multi_crop_batch,
        np=to_numpy,
        backend=BACKEND,
        save_and_reload=save_and_reload,
        layer_round_trip=layer_round_trip,
        config_round_trip=config_round_trip,
        keras_round_trip=keras_round_trip,
    )


def pytest_report_header(config):
    return f"keras backend: {BACKEND} ({os.environ.get('KERAS_BACKEND')})"


def pytest_collection_modifyitems(config, items):
    """Applies the `backend_pass` marker and runs `slow` tests first.

    `@pytest.mark.backend_pass("jax")` marks a test whose whole subject is
    one engine, whatever the backend of the pytest process: it starts a
    subprocess with `KERAS_BACKEND` fixed (e.g. MirroredStrategy on
    TensorFlow), or its code never reads the Keras backend (the `tf.data`
    pipeline of `keras_dino.data`, the NumPy checkpoint readers). It runs
    in that backend's pass of the test command and is deselected (not
    skipped) in the two others, which would only repeat identical code.
    Tests that hand such output to a model or `keras.ops` run everywhere.

    `slow` tests go first so that, with several pytest-xdist workers, the
    longest ones do not start last and leave the other workers idle.
    """
    kept, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("backend_pass")
        if marker is not None and marker.args[0] != BACKEND:
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    kept.sort(key=lambda item: item.get_closest_marker("slow") is None)
    items[:] = kept


def save_and_reload(model, directory, name="model.keras"):
    """`model.save` to a `.keras` file and `keras.saving.load_model`."""
    path = str(Path(directory) / name)
    model.save(path)
    return keras.saving.load_model(path)


def config_round_trip(layer, inputs, **call_kwargs):
    """`from_config(get_config())` with the same weights gives the same output.

    Returns `(output, output of the clone)`.
    """
    out = to_numpy(layer(inputs, **call_kwargs))
    clone = layer.__class__.from_config(layer.get_config())
    clone(inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    return out, to_numpy(clone(inputs, **call_kwargs))


def keras_round_trip(layer, inputs, directory):
    """`.keras` save/load of a layer inside a `Sequential` model.

    Returns `(output, output of the reloaded model)`.
    """
    model = keras.Sequential(
        [keras.Input(shape=tuple(inputs.shape[1:])), layer]
    )
    out = to_numpy(model(inputs))
    reloaded = save_and_reload(model, directory)
    assert isinstance(reloaded.layers[-1], layer.__class__)
    return out, to_numpy(reloaded(inputs))


def layer_round_trip(layer, inputs, directory, **call_kwargs):
    """Both round trips; returns `(output, clone output, reloaded output)`."""
    out, cloned = config_round_trip(layer, inputs, **call_kwargs)
    _, reloaded = keras_round_trip(layer, inputs, directory)
    return out, cloned, reloaded
