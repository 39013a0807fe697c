import os
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from keras_dino.data import BadFileReport
from keras_dino.data import CenterCropTransform
from keras_dino.data import MultiCropAugmentation
from keras_dino.data import decode_image
from keras_dino.data import from_arrays
from keras_dino.data import from_image_folder
from keras_dino.data import from_npz
from keras_dino.data import from_tfds
from keras_dino.data import list_image_files

# Real JPEGs (the repository's CIFAR-10 sample, enlarged) come from the
# `image_folders` fixture of tests/conftest.py: train/<class>/<n>.JPEG.
CLASSES = ("airplane", "automobile")


def small_augmentation(seed=0):
    return MultiCropAugmentation(16, 8, 2, seed=seed)


def check_crops(crops, batch_size):
    assert isinstance(crops, tuple) and len(crops) == 4
    shapes = [tuple(c.shape) for c in crops]
    assert shapes == [(batch_size, 16, 16, 3)] * 2 + [(batch_size, 8, 8, 3)] * 2
    for crop in crops:
        assert crop.dtype == "float32"
        tensor = keras.ops.convert_to_tensor(crop.numpy())
        assert tuple(tensor.shape) == tuple(crop.shape)


@pytest.fixture
def jpeg(image_folders):
    """One real JPEG file (96 x 72 px)."""
    return str(image_folders / "train" / CLASSES[0] / "000.JPEG")


@pytest.fixture
def folder(tmp_path, image_folders, jpeg):
    for cls in CLASSES:
        os.makedirs(tmp_path / cls)
        for n in range(6):
            shutil.copy(
                image_folders / "train" / cls / f"{n:03d}.JPEG", tmp_path / cls
            )
    data = open(jpeg, "rb").read()
    (tmp_path / CLASSES[0] / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / CLASSES[0] / "empty.jpg").write_bytes(b"")
    (tmp_path / CLASSES[1] / "notes.jpg").write_text("not an image\n")
    (tmp_path / CLASSES[1] / "README.txt").write_text("ignored\n")
    return tmp_path


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_image_folder_skips_and_reports_bad_files(folder):
    report = BadFileReport()
    ds = from_image_folder(
        folder,
        small_augmentation(),
        batch_size=4,
        seed=0,
        bad_file_report=report,
        with_labels=True,
    )
    for _ in range(2):  # two epochs: iteration never stops on bad files
        batches = list(ds)
        assert len(batches) == 3  # 12 good images, drop_remainder
        labels = np.concatenate([labels.numpy() for _, labels in batches])
        assert sorted(labels) == [0] * 6 + [1] * 6
    check_crops(batches[0][0], 4)
    expected = [
        str(folder / CLASSES[0] / "corrupt.jpg"),
        str(folder / CLASSES[0] / "empty.jpg"),
        str(folder / CLASSES[1] / "notes.jpg"),
    ]
    assert report.bad_files == expected
    assert report.num_bad_files == 3
    assert "3 image file(s)" in report.summary()


def test_report_callback_prints_at_epoch_end(capsys):
    report = BadFileReport()
    report.record(b"/data/bad.jpg")
    report.on_epoch_end(0)
    assert "/data/bad.jpg" in capsys.readouterr().out
    report.on_epoch_end(1)  # nothing new: silent
    assert capsys.readouterr().out == ""


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_image_folder_is_deterministic_and_reshuffles(folder):
    def first(ds):
        return [c.numpy() for c in next(iter(ds))]

    make = lambda: from_image_folder(  # noqa: E731
        folder, small_augmentation(), batch_size=4, seed=1
    )
    a, b = first(make()), first(make())
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    ds = make()
    epoch1, epoch2 = first(ds), first(ds)
    assert not np.allclose(epoch1[0], epoch2[0])


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_image_kinds_in_a_flat_folder(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "b.bmp")
    Image.fromarray(rgb).convert("P").save(tmp_path / "c.gif")
    Image.fromarray(rgb).resize((500, 20)).save(tmp_path / "wide.jpeg")
    Image.fromarray(rgb[:4, :3]).save(tmp_path / "tiny.JPG")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(
        tmp_path / "gray16.png"
    )
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    paths, labels, classes = list_image_files(tmp_path)
    assert len(paths) == 10 and set(labels) == {-1} and classes == []
    report = BadFileReport()
    ds = from_image_folder(
        tmp_path,
        small_augmentation(),
        batch_size=10,
        seed=0,
        bad_file_report=report,
    )
    check_crops(next(iter(ds)), 10)
    assert report.bad_files == []


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_odd_image_kinds_decode_like_pil(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    # 16-bit grayscale PNG: scaled to 8 bits (v * 257 -> v), not saturated.
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(
        tmp_path / "gray16.png"
    )
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    out = decode_image(open(tmp_path / "gray16.png", "rb").read()).numpy()
    np.testing.assert_array_equal(out, np.repeat(rgb[..., :1], 3, axis=-1))
    # CMYK JPEG, RGBA and palette PNG: as PIL's convert("RGB").
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    for name, atol in (("cmyk.jpg", 3), ("rgba.png", 0), ("palette.png", 0)):
        out = decode_image(open(tmp_path / name, "rb").read()).numpy()
        ref = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert out.shape == ref.shape == (30, 50, 3), name
        np.testing.assert_allclose(out, ref, atol=atol, err_msg=name)
    # A PNG cut short is a bad file: skipped and reported.
    data = open(tmp_path / "rgba.png", "rb").read()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    report = BadFileReport()
    ds = from_image_folder(
        tmp_path,
        small_augmentation(),
        batch_size=4,
        seed=0,
        bad_file_report=report,
        drop_remainder=False,
    )
    assert sum(len(crops[0]) for crops in ds) == 4
    assert report.bad_files == [str(tmp_path / "truncated.png")]


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="No image file"):
        from_image_folder(tmp_path, small_augmentation(), batch_size=2)
    (tmp_path / "notes.txt").write_text("x")
    os.makedirs(tmp_path / "empty_class")
    with pytest.raises(ValueError, match="No image file"):
        from_image_folder(tmp_path, small_augmentation(), batch_size=2)
    with pytest.raises(ValueError, match="does not exist"):
        from_image_folder(tmp_path / "missing", batch_size=2)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_from_arrays_labels_and_sharding():
    images = np.random.default_rng(0).integers(0, 256, (10, 12, 12, 3))
    images = images.astype(np.uint8)
    ds = from_arrays(
        images,
        np.arange(10),
        small_augmentation(),
        batch_size=5,
        with_labels=True,
        shuffle=False,
        seed=0,
    )
    batches = list(ds)
    assert len(batches) == 2
    check_crops(batches[0][0], 5)
    np.testing.assert_array_equal(batches[0][1], np.arange(5))


def _batches(dataset, count):
    return [
        [np.asarray(t) for t in (*crops, labels)]
        for crops, labels in dataset.take(count)
    ]


def _assert_shards_interleave(make, num_shards, num_batches):
    """Shard `i` of `n` (batch b) yields batches `i, i + n, ...` of the
    unsharded reader (batch b): same images, labels and crops; so the
    shards of a step together are the unsharded batch of `n * b`."""
    whole = _batches(make(), num_batches + 1)
    assert len(whole) == num_batches
    for index in range(num_shards):
        shard = _batches(
            make(num_shards=num_shards, shard_index=index), num_batches
        )
        assert len(shard) == len(range(index, num_batches, num_shards))
        for step, batch in enumerate(shard):
            expected = whole[step * num_shards + index]
            for got, want in zip(batch, expected):
                np.testing.assert_array_equal(got, want)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_array_shards_are_the_unsharded_batches_in_turn():
    images = np.random.default_rng(1).integers(0, 256, (13, 12, 12, 3))
    images = images.astype(np.uint8)

    def make(**shards):
        return from_arrays(
            images,
            np.arange(13),
            small_augmentation(),
            batch_size=3,
            with_labels=True,
            seed=5,
            **shards,
        )

    # 13 images: 4 batches of 3, 2 for each shard (the 13th is dropped).
    _assert_shards_interleave(make, num_shards=2, num_batches=4)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_image_folder_shards_are_the_unsharded_batches_in_turn(
    tmp_path, image_folders
):
    for cls in CLASSES:
        shutil.copytree(image_folders / "train" / cls, tmp_path / cls)

    def make(**shards):
        return from_image_folder(
            tmp_path,
            small_augmentation(),
            batch_size=2,
            with_labels=True,
            seed=3,
            **shards,
        )

    count = len(list_image_files(tmp_path)[0])
    # Batches 0, 3, ... for shard 0: uneven shard lengths are kept.
    _assert_shards_interleave(make, num_shards=3, num_batches=count // 2)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_from_arrays_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        from_arrays(np.zeros((4, 8, 8, 2), np.uint8), batch_size=2)
    with pytest.raises(ValueError, match="one entry per image"):
        from_arrays(np.zeros((4, 8, 8, 3), np.uint8), [1, 2], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        from_arrays(np.zeros((4, 8, 8, 3), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match="shard_index"):
        from_arrays(np.zeros((4, 8, 8, 3), np.uint8), num_shards=2)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_from_npz_and_evaluation_transform(cifar_sample, tmp_path):
    images, labels, _ = cifar_sample
    # 100 real images enlarged to 64 px (pixel repetition).
    images = images[:100].repeat(2, axis=1).repeat(2, axis=2)
    path = str(tmp_path / "sample64.npz")
    np.savez(path, images=images, labels=labels[:100])
    ds = from_npz(path, small_augmentation(), batch_size=32, seed=0)
    check_crops(next(iter(ds)), 32)
    assert len(list(ds)) == 3  # 100 images, drop_remainder
    evaluation = from_npz(
        [path],
        CenterCropTransform(56, 64),
        batch_size=32,
        with_labels=True,
        shuffle=False,
        drop_remainder=False,
    )
    batches = list(evaluation)
    assert sum(len(labels) for _, labels in batches) == 100
    images, labels = batches[0]
    assert tuple(images.shape) == (32, 56, 56, 3)
    np.testing.assert_array_equal(labels, np.load(path)["labels"][:32])


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_center_crop_matches_pil(jpeg):
    image = np.asarray(Image.open(jpeg).convert("RGB"))
    image = np.asarray(Image.fromarray(image).resize((300, 224)))
    out = CenterCropTransform(96, 110)(image).numpy()
    ref = Image.fromarray(image).resize((147, 110), Image.BICUBIC)
    ref = np.asarray(ref)[7:103, 26:122] / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out * std + mean, ref, atol=0.05)
    assert np.abs(out * std + mean - ref).mean() < 0.01


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_from_tfds_offline_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        ds = from_tfds(
            "mnist",
            small_augmentation(),
            batch_size=4,
            seed=0,
            with_labels=True,
        )
        crops, labels = next(iter(ds))
    check_crops(crops, 4)
    assert labels.shape == (4,)


@pytest.mark.slow
def test_dino_fit_on_a_folder_with_bad_files(folder, capsys):
    from keras_dino.models import DINO
    from keras_dino.models import ViTBackbone
    from keras_dino.optimizers import DINOAdamW
    from keras_dino.schedules import DINOSchedule

    report = BadFileReport()
    dataset = from_image_folder(
        folder,
        small_augmentation(),
        batch_size=4,
        seed=0,
        bad_file_report=report,
    ).repeat()  # a folder with bad files has no known length
    backbone = ViTBackbone(
        image_size=16, patch_size=8, hidden_dim=16, num_layers=1, num_heads=2
    )
    model = DINO(backbone, out_dim=16, hidden_dim=16, bottleneck_dim=8)
    model.compile(
        optimizer=DINOAdamW(),
        schedule=DINOSchedule.paper(4, steps_per_epoch=3, epochs=2),
    )
    history = model.fit(
        dataset, epochs=2, steps_per_epoch=3, callbacks=[report], verbose=0
    )
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))
    assert report.num_bad_files == 3
    out = capsys.readouterr().out
    for name in ("corrupt.jpg", "empty.jpg", "notes.jpg"):
        assert name in out
