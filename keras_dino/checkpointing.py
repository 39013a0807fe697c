"""Atomic per-epoch checkpoints of a whole DINO model, and resuming."""

import json
import os

import keras

_LATEST = "latest.json"


def _atomic_write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(directory):
    """`(path, epochs_done)` of the newest complete checkpoint, or `None`.

    A checkpoint counts only once `latest.json` names it, which is written
    after the `.keras` file is complete; a run killed while saving leaves
    the previous checkpoint in force.
    """
    record = os.path.join(directory, _LATEST)
    if not os.path.exists(record):
        return None
    with open(record) as f:
        info = json.load(f)
    path = os.path.join(directory, info["file"])
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{record} names {path}, which does not exist. Remove "
            f"{record} to start afresh, or restore the file."
        )
    return path, int(info["epoch"])


@keras.saving.register_keras_serializable(package="keras_dino")
class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (`.keras`) after every epoch, atomically.

    The model (student, teacher, center, optimizer state and its
    iteration count) goes to `checkpoint_{epoch:04d}.keras` through a
    temporary file and `os.replace`; then `latest.json` is replaced to
    name it. Older checkpoints beyond `keep` are removed afterwards, so a
    crash at any moment leaves at least one complete checkpoint.

    Args:
        directory: folder for the checkpoints.
        keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory, keep=2):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}.")
        self.directory = str(directory)
        self.keep = int(keep)

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        name = f"checkpoint_{epoch + 1:04d}.keras"
        path = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f"tmp_{name}")
        self.model.save(tmp)
        os.replace(tmp, path)
        _atomic_write_text(
            os.path.join(self.directory, _LATEST),
            json.dumps({"epoch": epoch + 1, "file": name}),
        )
        saved = sorted(
            f
            for f in os.listdir(self.directory)
            if f.startswith("checkpoint_") and f.endswith(".keras")
        )
        for old in saved[: -self.keep]:
            os.remove(os.path.join(self.directory, old))

    def get_config(self):
        return {"directory": self.directory, "keep": self.keep}
