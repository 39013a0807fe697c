"""A callback that tracks k-NN accuracy of the teacher during pretraining."""

import keras

from keras_dino.evaluation.features import extract_features
from keras_dino.evaluation.knn import knn_classify


class KNNMonitor(keras.callbacks.Callback):
    """Adds `knn_top1` (teacher CLS features, DINO k-NN) to the epoch logs.

    Runs at the end of every `every`-th epoch (and before the first epoch,
    as the random-initialisation baseline), so that a learning curve of
    feature quality comes out of `fit`'s history, CSV and TensorBoard logs.
    Put it before logging callbacks in the list. The images go through
    the reference evaluation transform (`keras_dino.data.labeled_dataset`,
    no crop: only ImageNet normalisation at their own size).

    Args:
        train_images: uint8 `(n, h, w, 3)` images of the k-NN memory bank.
        train_labels: `(n,)` integer labels.
        val_images: uint8 `(m, h, w, 3)` images to classify.
        val_labels: `(m,)` integer labels.
        k: neighbours (DINO reports 20).
        temperature: voting temperature (0.07).
        every: run every this many epochs.
        batch_size: feature-extraction batch size.
    """

    def __init__(
        self,
        train_images,
        train_labels,
        val_images,
        val_labels,
        k=20,
        temperature=0.07,
        every=1,
        batch_size=256,
    ):
        super().__init__()
        self.train_images, self.train_labels = train_images, train_labels
        self.val_images, self.val_labels = val_images, val_labels
        self.k, self.temperature = int(k), float(temperature)
        self.every, self.batch_size = max(int(every), 1), int(batch_size)
        self.history = []
        self._splits = None

    def _datasets(self):
        if self._splits is None:
            from keras_dino import data

            size = self.train_images.shape[1]
            self._splits = tuple(
                data.labeled_dataset(
                    (images, labels),
                    size,
                    batch_size=self.batch_size,
                    crop_fraction=1.0,
                )
                for images, labels in (
                    (self.train_images, self.train_labels),
                    (self.val_images, self.val_labels),
                )
            )
        return self._splits

    def evaluate(self):
        """k-NN top-1 (percent) of the current teacher backbone."""
        backbone = self.model.teacher_backbone
        train, val = self._datasets()
        train, train_labels = extract_features(backbone, train, verbose=0)
        val, val_labels = extract_features(backbone, val, verbose=0)
        top1, _, _ = knn_classify(
            train,
            train_labels,
            val,
            val_labels,
            k=self.k,
            temperature=self.temperature,
        )
        return float(top1)

    def on_train_begin(self, logs=None):
        if not self.history:
            epoch = getattr(self.model, "_initial_epoch", 0) or 0
            self.history.append((epoch, self.evaluate()))
            print(
                f"k-NN top-1 before epoch {epoch + 1}: "
                f"{self.history[-1][1]:.2f}%"
            )

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        top1 = self.evaluate()
        self.history.append((epoch + 1, top1))
        if logs is not None:
            logs["knn_top1"] = top1
