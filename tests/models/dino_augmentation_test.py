"""DINO(augmentation=...): the crops are made inside the training step.

A `DeviceMultiCropAugmentation` given to DINO turns each batch of images
and crop parameters (as `keras_dino.numpy_data` readers give) into the
multi-crop tuple inside the compiled step. One step on such a batch must
equal one step of a DINO without the layer on the crops the layer makes
outside it (same weights), on every backend.
"""

import keras
import numpy as np
import pytest

from keras_dino.layers import DeviceMultiCropAugmentation
from keras_dino.numpy_data import BadFileReport
from keras_dino.numpy_data import ImageFolderDataset
from keras_dino.numpy_data import MultiCropSampler
from keras_dino.optimizers import DINOAdamW
from keras_dino.schedules import DINOSchedule

BATCH = 4


def _sampler():
    return MultiCropSampler(
        global_crop_size=32, local_crop_size=16, num_local_crops=2, seed=3
    )


def _reader(image_folders, tmp_path):
    """`ImageFolderDataset` of 8 real JPEGs and one broken file."""
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    for path in sorted((image_folders / "train").rglob("*.JPEG"))[:8]:
        (root / "a" / path.name).write_bytes(path.read_bytes())
    (root / "a" / "broken.JPEG").write_bytes(b"not a jpeg")
    report = BadFileReport()
    reader = ImageFolderDataset(
        root, _sampler(), BATCH, canvas_size=48, bad_file_report=report
    )
    return reader, report


def _compiled(tiny, augmentation=None):
    model = tiny.dino(seed=0, augmentation=augmentation)
    model.compile(
        optimizer=DINOAdamW(),
        schedule=DINOSchedule.paper(
            batch_size=BATCH, steps_per_epoch=1, epochs=2, warmup_epochs=0
        ),
    )
    return model


def _augmentation():
    return DeviceMultiCropAugmentation.from_sampler(_sampler())


def test_fit_on_images_equals_a_step_on_the_crops(
    tiny, image_folders, tmp_path
):
    """`fit` on an image-folder reader (a bad file skipped) takes the step
    that a DINO without the layer takes on the crops the layer makes."""
    reader, report = _reader(image_folders, tmp_path)
    batch = reader[0]  # batch i of epoch e is fixed by (seed, e, i)
    assert batch["images"].dtype == np.uint8
    augmentation = _augmentation()
    if tiny.backend == "jax":  # compiled, as in the step (and much faster)
        import jax

        crops = jax.jit(augmentation)(batch)
    else:
        crops = augmentation(batch)
    crops = tuple(tiny.np(c) for c in crops)
    assert [c.shape for c in crops] == [(BATCH, 32, 32, 3)] * 2 + [
        (BATCH, 16, 16, 3)
    ] * 2

    on_crops = _compiled(tiny)
    on_images = _compiled(tiny, augmentation=_augmentation())
    before = on_images.get_weights()
    for a, b in zip(before, on_crops.get_weights()):
        np.testing.assert_array_equal(a, b)
    student_before = on_images.student_backbone.get_weights()

    logs_crops = on_crops.train_on_batch(list(crops), return_dict=True)
    history = on_images.fit(
        reader, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0
    )
    assert report.num_bad_files == 1
    np.testing.assert_allclose(
        history.history["loss"][0], logs_crops["loss"], rtol=1e-5
    )
    for a, b in zip(on_images.get_weights(), on_crops.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The step did train: every student backbone weight moved.
    for a, w0 in zip(on_images.student_backbone.get_weights(), student_before):
        assert not np.array_equal(a, w0)


def test_images_without_augmentation_is_a_clear_error(tiny):
    model = _compiled(tiny)
    images = np.zeros((BATCH, 32, 32, 3), np.uint8)
    batch = {"images": images, **_sampler().sample([(32, 32)] * BATCH)}
    with pytest.raises(ValueError, match="has no `augmentation` layer"):
        model.train_on_batch(batch)


def test_augmentation_must_be_a_layer(tiny):
    from keras_dino.models import DINO

    with pytest.raises(ValueError, match="must be a Keras layer"):
        DINO(tiny.backbone(), out_dim=8, augmentation=lambda x: x)
    dense = keras.layers.Dense(3)
    dense.build((None, 3))
    with pytest.raises(ValueError, match="without weights"):
        DINO(tiny.backbone(), out_dim=8, augmentation=dense)


def test_augmentation_survives_a_keras_file_round_trip(tiny, tmp_path):
    model = tiny.dino(seed=0, augmentation=_augmentation())
    reloaded = tiny.save_and_reload(model, tmp_path)
    assert isinstance(reloaded.augmentation, DeviceMultiCropAugmentation)
    assert reloaded.augmentation.get_config() == model.augmentation.get_config()
    for a, b in zip(reloaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
