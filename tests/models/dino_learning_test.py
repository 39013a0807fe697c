"""DINO learns on real images (CIFAR-10), on every backend.

A tiny ViT (patch 8 on 32 px: 4 x 4 patches) is trained for a few hundred
steps on simple numpy multi-crop views. The loss must start near
ln(out_dim), go down, and the teacher entropy must neither collapse to 0
(one prototype) nor stay at ln(out_dim) (uniform output).
"""

import time

import keras
import numpy as np
import pytest

from keras_dino.models import DINO
from keras_dino.models import ViTBackbone
from keras_dino.optimizers import DINOAdamW
from keras_dino.schedules import DINOSchedule

OUT_DIM = 256
BATCH = 32
STEPS_PER_EPOCH = 25
EPOCHS = 12
MEAN = np.array([0.4914, 0.4822, 0.4465], "float32")
STD = np.array([0.2470, 0.2435, 0.2616], "float32")


def _crop_resize(images, rng, scale, size):
    """Random square crop of `scale` of the area, nearest-resized, flipped."""
    n, h, w, _ = images.shape
    out = np.empty((n, size, size, 3), "float32")
    for i in range(n):
        side = int(round(h * np.sqrt(rng.uniform(*scale))))
        side = min(max(side, 4), h)
        y = rng.integers(0, h - side + 1)
        x = rng.integers(0, w - side + 1)
        idx = (np.arange(size) * side / size).astype(int)
        crop = images[i, y + idx][:, x + idx]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return (out - MEAN) / STD


class MultiCrop(keras.utils.PyDataset):
    def __init__(self, images, seed=0, num_local=2):
        super().__init__()
        self.images = images.astype("float32") / 255.0
        self.rng = np.random.default_rng(seed)
        self.num_local = num_local

    def __len__(self):
        return STEPS_PER_EPOCH

    def __getitem__(self, index):
        pick = self.rng.integers(0, len(self.images), BATCH)
        batch = self.images[pick]
        crops = [
            _crop_resize(batch, self.rng, (0.4, 1.0), 32) for _ in range(2)
        ] + [
            _crop_resize(batch, self.rng, (0.05, 0.4), 16)
            for _ in range(self.num_local)
        ]
        return (tuple(crops),)


class StepLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.first = None

    def on_train_batch_end(self, batch, logs=None):
        if self.first is None:
            self.first = {k: float(v) for k, v in logs.items()}


@pytest.mark.slow
def test_dino_learns_on_cifar10(data_dir):
    images = np.load(data_dir / "cifar10_demo_val.npz")["images"]
    keras.utils.set_random_seed(0)
    backbone = ViTBackbone(
        image_size=32,
        patch_size=8,
        hidden_dim=64,
        num_layers=2,
        num_heads=4,
        mlp_ratio=2.0,
        drop_path_rate=0.1,
        seed=0,
    )
    model = DINO(backbone, out_dim=OUT_DIM, hidden_dim=128, bottleneck_dim=256)
    model.compile(
        optimizer=DINOAdamW(),
        schedule=DINOSchedule.paper(
            batch_size=BATCH,
            steps_per_epoch=STEPS_PER_EPOCH,
            epochs=EPOCHS,
            learning_rate=1e-2,  # lr = 1.25e-3
            warmup_epochs=1,
            min_learning_rate=1e-5,
            teacher_momentum=0.99,
        ),
    )
    steps = StepLogs()
    start = time.time()
    history = model.fit(
        MultiCrop(images),
        epochs=EPOCHS,
        verbose=0,
        callbacks=[steps],
    )
    elapsed = time.time() - start
    loss = np.array(history.history["loss"])
    entropy = np.array(history.history["teacher_entropy"])
    log_k = np.log(OUT_DIM)
    print(f"{elapsed:.1f}s loss {loss.round(3)} entropy {entropy.round(3)}")
    # Starts near ln(K): the teacher is a copy of the student at step 0, so
    # with a tiny head the first losses sit 10-20% below ln(K).
    assert 0.8 * log_k < steps.first["loss"] < 1.05 * log_k, steps.first
    assert 0.85 * log_k < loss[0] < 1.05 * log_k
    assert np.all(np.isfinite(loss))
    # It goes down.
    assert loss[-1] < loss[0] - 0.5
    assert loss[-1] < 0.9 * log_k
    # No collapse: the teacher is neither uniform nor one-hot.
    assert entropy[-1] < entropy[0] - 0.5
    assert 0.3 < entropy[-1] < log_k - 0.5
