"""ImageFolderDataset: PIL decoding, bad files skipped and reported."""

import numpy as np
import pytest
from PIL import Image

from keras_dino.numpy_data import BadFileReport
from keras_dino.numpy_data import ImageFolderDataset
from keras_dino.numpy_data import MultiCropSampler
from keras_dino.numpy_data import decode_file

SAMPLER = MultiCropSampler(16, 8, 2, seed=0)


def write_folder(root, sizes, bad=True):
    """Images of the given `(height, width)` in two classes (+ bad files)."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    if bad:
        (root / "class0" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        (root / "class1" / "empty.png").write_bytes(b"")
    return root


def test_batches_and_bad_files(tmp_path):
    sizes = [(20, 30), (40, 25), (32, 32), (12, 50), (30, 30), (25, 20)]
    root = write_folder(tmp_path, sizes)
    report = BadFileReport()
    ds = ImageFolderDataset(
        root, SAMPLER, batch_size=3, canvas_size=32, bad_file_report=report
    )
    assert len(ds) == 2  # 8 files listed, 6 decode: batches stay full
    images_seen = []
    for index in range(len(ds)):
        batch = ds[index]
        assert batch["images"].shape == (3, 32, 32, 3)
        assert batch["images"].dtype == np.uint8
        assert batch["boxes"].shape == (3, 4, 4)
        images_seen.extend(batch["images"])
        # Boxes lie inside each image (not its padding).
        for image, boxes in zip(batch["images"], batch["boxes"]):
            rows = np.flatnonzero(image.any(axis=(1, 2)))
            cols = np.flatnonzero(image.any(axis=(0, 2)))
            assert (boxes[:, 0] + boxes[:, 2] <= rows[-1] + 1).all()
            assert (boxes[:, 1] + boxes[:, 3] <= cols[-1] + 1).all()
    assert sorted(p.rsplit("/", 1)[-1] for p in report.bad_files) == [
        "corrupt.jpg",
        "empty.png",
    ]
    assert "cannot be decoded" in report.reason(report.bad_files[0])
    # An epoch sees each good image once.
    assert len({image.tobytes() for image in images_seen}) == 6


def test_large_images_shrink_keeping_their_aspect_ratio(tmp_path):
    path = tmp_path / "wide.jpg"
    pixels = np.zeros((60, 120, 3), np.uint8)
    pixels[:, :60] = 255
    Image.fromarray(pixels).save(path, quality=95)
    image = decode_file(path, 40)
    assert image.shape == (20, 40, 3)
    assert image[:, :18].min() > 200 and image[:, 22:].max() < 50
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 6), 77, np.uint8)).save(gray)
    np.testing.assert_array_equal(decode_file(gray, 40), 77)


def test_order_depends_on_seed_and_epoch_only(tmp_path):
    root = write_folder(tmp_path, [(16, 16)] * 8, bad=False)

    def first_batch(epoch, seed=0, **kwargs):
        ds = ImageFolderDataset(
            root, SAMPLER, batch_size=4, canvas_size=16, seed=seed, **kwargs
        )
        ds.epoch = epoch
        return ds[0]

    a, b = first_batch(0), first_batch(0, workers=2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["images"], first_batch(1)["images"])
    assert not np.array_equal(a["boxes"], first_batch(0, seed=1)["boxes"])


def test_shards_are_parts_of_the_unsharded_batches(tmp_path):
    """Batch `m` of shard `i` of `n` is part `i` of the unsharded reader's
    batch `m` (same files, same crop parameters): the shards together
    are the unsharded reader, whatever their number."""
    root = write_folder(tmp_path, [(16 + k, 16) for k in range(14)], bad=False)
    merged = ImageFolderDataset(root, SAMPLER, 6, canvas_size=32, seed=4)
    merged.set_epoch(1)
    assert len(merged) == 2
    for num_shards in (2, 3):
        part = 6 // num_shards
        for index in range(num_shards):
            shard = merged.sharded(num_shards, index)
            assert shard.batch_size == part and len(shard) == 2
            for step in range(len(shard)):
                got, want = shard[step], merged[step]
                for key in want:
                    np.testing.assert_array_equal(
                        got[key], want[key][index * part : (index + 1) * part]
                    )
    assert merged.batch_size == 6
    with pytest.raises(ValueError, match="split evenly"):
        merged.sharded(4, 0)
    with pytest.raises(ValueError, match="already a shard"):
        merged.sharded(2, 0).sharded(2, 0)


def test_epochs_follow_keras_calls_and_set_epoch(tmp_path):
    """Keras resets its epoch iterator (`on_epoch_end`) before the first
    epoch and calls `on_epoch_begin` once per epoch: `fit`'s first epoch
    reads epoch 0, and `set_epoch(k)` makes a resumed run read epoch k."""
    root = write_folder(tmp_path, [(16, 16)] * 8, bad=False)
    ds = ImageFolderDataset(root, SAMPLER, batch_size=4, canvas_size=16)
    seen = []
    for _ in range(3):  # as keras.trainers.epoch_iterator.EpochIterator
        ds.on_epoch_end()
        ds.on_epoch_begin()
        seen.append(ds.epoch)
    assert seen == [0, 1, 2]
    first_of_epoch_2 = ds[0]
    resumed = ImageFolderDataset(root, SAMPLER, batch_size=4, canvas_size=16)
    resumed.set_epoch(2)
    resumed.on_epoch_end()
    resumed.on_epoch_begin()
    assert resumed.epoch == 2
    for key, value in resumed[0].items():
        np.testing.assert_array_equal(value, first_of_epoch_2[key])
    with pytest.raises(ValueError, match="int >= 0"):
        resumed.set_epoch(-1)


def test_a_folder_where_nothing_decodes_is_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "b.png").write_bytes(b"")
    report = BadFileReport()
    with pytest.raises(ValueError, match="None of the 2 image files"):
        ImageFolderDataset(tmp_path, SAMPLER, 1, bad_file_report=report)
    assert report.num_bad_files == 2
    with pytest.raises(ValueError, match="no full batch"):
        ImageFolderDataset(tmp_path, SAMPLER, 3)
    with pytest.raises(ValueError, match="num_shards"):
        ImageFolderDataset(tmp_path, SAMPLER, 1, num_shards=2)
