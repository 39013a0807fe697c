"""A TensorFlow-free image folder reader: PIL decoding, NumPy batches."""

import copy

import keras
import numpy as np

from keras_dino.numpy_data.image_files import list_image_files
from keras_dino.numpy_data.image_files import printable


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(
            "keras_dino.numpy_data reads images with Pillow: "
            "`pip install pillow` (or the extra `keras_dino[eval]`)."
        ) from None
    return Image


def decode_file(path, canvas_size):
    """Reads an image file as uint8 RGB, shrunk to fit the canvas.

    Grayscale, palette and RGBA images become RGB (`convert("RGB")`, alpha
    dropped); of an animated image the first frame is kept. An image
    larger than `canvas_size` on either side is shrunk, keeping its aspect
    ratio, with PIL's antialiased bicubic filter (JPEGs are first decoded
    at a reduced DCT scale where that stays larger than the target, which
    is much faster).

    Args:
        path: the file.
        canvas_size: the largest allowed side, in pixels.

    Returns:
        uint8 array `(height, width, 3)`, both sides <= `canvas_size`.

    Raises:
        OSError, ValueError and the other errors of PIL on a file that is
        not a readable image.
    """
    image_module = _pil()
    with image_module.open(path) as image:
        width, height = image.size
        scale = min(1.0, canvas_size / max(width, height))
        target = (
            max(1, round(width * scale)),
            max(1, round(height * scale)),
        )
        if scale < 1.0:
            image.draft("RGB", target)
        image = image.convert("RGB")
        if image.size != target and scale < 1.0:
            image = image.resize(target, image_module.BICUBIC)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(f"decoded to an unusable shape {array.shape}")
    return array


class ImageFolderDataset(keras.utils.PyDataset):
    """Multi-crop batches of an image folder for the device augmentation.

    The host half of the accelerator input path, without TensorFlow: each
    batch has the images decoded with PIL, padded to a `canvas_size`
    square (bottom and right; the padding is never read), and the crop
    parameters drawn by `sampler` from each image's size. The crops are
    computed on the device by `keras_dino.layers.DeviceMultiCropAugmentation`.
    A `keras.utils.PyDataset`, so `fit` takes it on every backend, with
    `workers` threads decoding in parallel (PIL and NumPy release the GIL
    while decoding and copying).

    Files that cannot be read or decoded never stop an epoch, as with the
    `tf.data` reader: the file is recorded in `bad_file_report` (a
    `BadFileReport`, also a `fit` callback that lists them each epoch) and
    its place in the batch is taken by the next good file of the epoch's
    order, so batches stay full; a file that failed is not read again.
    The listing skips and reports the same hostile entries as
    `keras_dino.data.from_image_folder` (FIFOs, devices, broken links,
    link loops, names that are not UTF-8), and a folder where no file
    decodes is refused.

    Each epoch has its own shuffled order and every random draw of batch
    `i` of epoch `e` comes from the seed `(seed, e, i)`, so batches do not
    depend on the number of workers nor on the order they finish in. The
    epoch `e` is `epoch`: 0 for the first epoch of `fit` (Keras calls
    `on_epoch_begin` once per epoch), then one more per epoch; a run
    resumed with `fit(initial_epoch=k)` calls `set_epoch(k)` first, so it
    reads the batches an uninterrupted run would have read. Give `fit`
    `steps_per_epoch=len(dataset)` (or leave it out): with fewer steps,
    Keras carries the reader's batch position over into the next epoch.

    Args:
        root: image folder, `root/<class>/<image>` or flat.
        sampler: a `keras_dino.numpy_data.MultiCropSampler`.
        batch_size: images per batch; the last partial batch is dropped.
        canvas_size: side of the padded square the images are sent in;
            larger images are shrunk to fit (keeping their aspect ratio)
            before their crop boxes are drawn.
        shuffle: shuffle the files every epoch.
        seed: int seed of the order and the crop parameters; `None` takes
            the sampler's seed (random if the sampler has none).
        bad_file_report: optional `BadFileReport`.
        num_shards: optional sharding (e.g. one shard per host): batch `m`
            of shard `i` is part `i` (of `num_shards` parts of
            `batch_size` images) of batch `m` of the unsharded reader of
            `num_shards * batch_size` images and the same seed: the same
            files and crop parameters. So the shards are disjoint, and
            together they make the unsharded reader's batches. Only a bad
            file's replacement (the next good file of the epoch's order)
            may come from another shard's part. See `sharded`.
        shard_index: the shard to read, in `[0, num_shards)`.
        **kwargs: `keras.utils.PyDataset` arguments: `workers`,
            `use_multiprocessing`, `max_queue_size`.

    Example:

    ```python
    sampler = keras_dino.numpy_data.MultiCropSampler(seed=0)
    report = keras_dino.numpy_data.BadFileReport()
    ds = ImageFolderDataset("train/", sampler, batch_size=64,
                            bad_file_report=report, workers=8)
    batch = ds[0]  # {"images": uint8 (64, 512, 512, 3), "boxes": ...}
    ```
    """

    def __init__(
        self,
        root,
        sampler,
        batch_size=64,
        *,
        canvas_size=512,
        shuffle=True,
        seed=None,
        bad_file_report=None,
        num_shards=None,
        shard_index=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive int. Received: {batch_size!r}"
            )
        if not isinstance(canvas_size, int) or canvas_size < 1:
            raise ValueError(
                "`canvas_size` must be a positive int. Received: "
                f"{canvas_size!r}"
            )
        if (num_shards is None) != (shard_index is None) or (
            num_shards is not None and not 0 <= shard_index < num_shards
        ):
            raise ValueError(
                "Give both `num_shards` and `shard_index` (0 <= shard_index "
                f"< num_shards), or neither. Received: num_shards="
                f"{num_shards}, shard_index={shard_index}"
            )
        paths, _, _ = list_image_files(root, bad_file_report)
        self.num_shards = 1 if num_shards is None else int(num_shards)
        self.shard_index = 0 if shard_index is None else int(shard_index)
        if len(paths) < batch_size * self.num_shards:
            raise ValueError(
                f"{len(paths)} image files in {root!r} make no full batch "
                f"of {batch_size} for each of {self.num_shards} shard(s)."
            )
        self.root = root
        self.paths = paths
        self.sampler = sampler
        self.batch_size = batch_size
        self.canvas_size = canvas_size
        self.shuffle = shuffle
        # The sampler's seed (drawn at random when it was given none).
        self.seed = sampler._base_seed if seed is None else int(seed)
        self.bad_file_report = bad_file_report
        self.epoch = 0
        self._epoch_begun = False
        self._bad = set()
        self._check_some_file_decodes()

    def _check_some_file_decodes(self):
        errors = []
        for index in range(len(self.paths)):
            if self._decode(index) is not None:
                return
            errors.append(printable(self.paths[index]))
        listed = ", ".join(errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise ValueError(
            f"None of the {len(errors)} image files in {self.root!r} can be "
            f"read and decoded ({listed}{more}): all are corrupt, empty or "
            "not images. Check the folder or give another one."
        )

    def __len__(self):
        return len(self.paths) // self.batch_size // self.num_shards

    def sharded(self, num_shards, shard_index):
        """This reader's shard `shard_index` of `num_shards`, with
        `batch_size / num_shards` images per batch (see `num_shards`):
        its batch `m` is part `shard_index` of this reader's batch `m`.
        """
        if self.num_shards != 1:
            raise ValueError("This reader is already a shard.")
        if self.batch_size % num_shards:
            raise ValueError(
                f"The batch size {self.batch_size} does not split evenly "
                f"between {num_shards} shards; give a multiple of "
                f"{num_shards}."
            )
        if self.batch_size // num_shards < 1 or not (
            0 <= shard_index < num_shards
        ):
            raise ValueError(
                "Give 0 <= shard_index < num_shards <= batch_size. Received: "
                f"num_shards={num_shards}, shard_index={shard_index}"
            )
        # A copy, not a new reader: the folder is not listed again.
        shard = copy.copy(self)
        shard.batch_size = self.batch_size // num_shards
        shard.num_shards = int(num_shards)
        shard.shard_index = int(shard_index)
        return shard

    def set_epoch(self, epoch):
        """Makes `epoch` the next epoch `fit` reads (e.g. on resume)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"`epoch` must be an int >= 0. Received: epoch={epoch!r}"
            )
        self.epoch = epoch
        self._epoch_begun = False

    def on_epoch_begin(self):
        # Counted at the start of an epoch, not at its end: before the
        # first epoch Keras also calls `on_epoch_end` (when it resets its
        # epoch iterator), which would skip epoch 0.
        if self._epoch_begun:
            self.epoch += 1
        self._epoch_begun = True

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.paths))
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        return rng.permutation(len(self.paths))

    def _decode(self, index):
        """The image of file `index`, or `None` (recorded) if it fails."""
        if index in self._bad:
            return None
        path = self.paths[index]
        try:
            return decode_file(path, self.canvas_size)
        except Exception as e:  # PIL raises many types on bad data
            self._bad.add(index)
            if self.bad_file_report is not None:
                message = str(e).splitlines()[0] if str(e) else ""
                reason = f"cannot be decoded: {type(e).__name__} {message}"
                self.bad_file_report.record(path, reason.strip())
            return None

    def __getitem__(self, index):
        """Batch `index` of the current epoch: a dict of NumPy arrays.

        Returns:
            Dict with `images` (uint8 `(batch_size, canvas_size,
            canvas_size, 3)`) and the crop parameters of
            `MultiCropSampler.sample`.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} of {len(self)}.")
        order = self._order()
        # Part `shard_index` of the unsharded reader's batch `index`.
        start = (index * self.num_shards + self.shard_index) * self.batch_size
        # Replacements for bad files: the files after this batch, in order.
        candidates = (
            order[(start + k) % len(order)] for k in range(len(order))
        )
        images = []
        for file_index in candidates:
            image = self._decode(int(file_index))
            if image is not None:
                images.append(image)
            if len(images) == self.batch_size:
                break
        if len(images) < self.batch_size:
            raise ValueError(
                f"Fewer than {self.batch_size} files of {self.root!r} can be "
                "decoded; see the bad file report."
            )
        canvas = np.zeros(
            (self.batch_size, self.canvas_size, self.canvas_size, 3), np.uint8
        )
        for k, image in enumerate(images):
            canvas[k, : image.shape[0], : image.shape[1]] = image
        shapes = [image.shape[:2] for image in images]
        # The draws of the whole unsharded batch, and this shard's part.
        rng = np.random.default_rng([self.seed, self.epoch, 2, index])
        draws = self.sampler.draw_uniforms(
            self.batch_size * self.num_shards, rng
        )
        part = draws[self.shard_index * self.batch_size :][: self.batch_size]
        shapes = np.asarray(shapes, np.int64)
        params = self.sampler.params_from_uniforms(
            part, shapes[:, :1], shapes[:, 1:]
        )
        return {"images": canvas, **params}
