"""Tests of the `KNNMonitor` callback."""

import keras
import numpy as np
from keras import ops

from keras_dino.evaluation import KNNMonitor
from keras_dino.models import ViTBackbone


class _Model:
    """Stands for a DINO model: the monitor only reads its teacher."""

    def __init__(self, backbone):
        self.teacher_backbone = backbone


def test_knn_top1_of_the_teacher_features():
    keras.utils.set_random_seed(0)
    backbone = ViTBackbone(
        image_size=16, patch_size=8, hidden_dim=16, num_layers=1, num_heads=2
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3)).astype("uint8")
    labels = np.arange(24) % 3
    monitor = KNNMonitor(
        images[:16], labels[:16], images[16:], labels[16:], k=3, batch_size=8
    )
    monitor.set_model(_Model(backbone))
    top1 = monitor.evaluate()
    # The same protocol in numpy: normalise, CLS features, L2, weighted
    # 3-NN vote with exp(similarity / 0.07).
    mean = np.array([0.485, 0.456, 0.406], "float32")
    std = np.array([0.229, 0.224, 0.225], "float32")
    x = (images / 255.0 - mean) / std
    feats = ops.convert_to_numpy(backbone(x.astype("float32")))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    train, val = feats[:16], feats[16:]
    sims = val @ train.T
    correct = 0
    for row, label in zip(sims, labels[16:]):
        nearest = np.argsort(-row)[:3]
        scores = np.zeros(3)
        for j in nearest:
            scores[labels[j]] += np.exp(row[j] / 0.07)
        correct += int(np.argmax(scores) == label)
    assert top1 == 100.0 * correct / 8
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs["knn_top1"] == top1 and monitor.history == [(1, top1)]
