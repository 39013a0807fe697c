"""Durable checkpoints: corrupt or hostile records, partial files, syncs,
and the history row kept with each checkpoint."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from keras_dino import checkpointing
from keras_dino import configs
from keras_dino import pretraining
from keras_dino.checkpointing import EpochCheckpoint
from keras_dino.checkpointing import clean_partial_files
from keras_dino.checkpointing import latest_checkpoint
from keras_dino.checkpointing import repair_history


def _fit_with_checkpoints(directory, epochs=2, keep=2):
    """Two epochs of a tiny Dense model with an `EpochCheckpoint`."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 3), "float32")
    y = np.zeros((4, 2), "float32")
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=2,
        verbose=0,
        callbacks=[EpochCheckpoint(directory, keep=keep)],
    )
    return model


def _write_record(directory, record):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "latest.json"), "w") as f:
        f.write(record if isinstance(record, str) else json.dumps(record))


@pytest.mark.parametrize(
    "record, message",
    [
        ("{not json", "cannot be read as JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ({"epoch": 1}, "lacks the key"),
        ({"epoch": "1", "file": "checkpoint_0001.keras"}, "positive integer"),
        ({"epoch": 1, "file": 7}, "must be a file name"),
    ],
)
def test_malformed_latest_json_is_a_clear_error(tmp_path, record, message):
    _write_record(tmp_path, record)
    with pytest.raises(ValueError, match=message) as error:
        latest_checkpoint(tmp_path)
    text = str(error.value)
    assert str(tmp_path / "latest.json") in text and "remove it" in text


def test_latest_json_is_confined_to_its_folder(tmp_path):
    # Another run's complete checkpoint, outside this run's folder.
    other = tmp_path / "other_run"
    _fit_with_checkpoints(str(other), epochs=1)
    stolen = str(other / "checkpoint_0001.keras")
    assert os.path.exists(stolen)
    run = tmp_path / "run"
    for name in (stolen, "../other_run/checkpoint_0001.keras"):
        _write_record(run, {"epoch": 1, "file": name})
        with pytest.raises(ValueError, match="not a checkpoint file of this"):
            latest_checkpoint(run)


def test_corrupt_latest_falls_back_to_an_intact_one(tmp_path):
    _fit_with_checkpoints(str(tmp_path), epochs=2)
    newest = tmp_path / "checkpoint_0002.keras"
    data = newest.read_bytes()
    # A torn write: the first half of the file only.
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="corrupt"):
        path, done = latest_checkpoint(tmp_path)
    assert (path, done) == (str(tmp_path / "checkpoint_0001.keras"), 1)
    keras.saving.load_model(path)  # The fallback loads.
    # The corrupt file is kept aside, and the record names the fallback.
    assert not newest.exists()
    assert (tmp_path / "checkpoint_0002.keras.corrupt").exists()
    record = json.loads((tmp_path / "latest.json").read_text())
    assert record == {"epoch": 1, "file": "checkpoint_0001.keras"}
    assert latest_checkpoint(tmp_path) == (path, 1)


def test_flipped_bytes_in_the_latest_checkpoint_are_detected(tmp_path):
    _fit_with_checkpoints(str(tmp_path), epochs=2)
    newest = tmp_path / "checkpoint_0002.keras"
    data = bytearray(newest.read_bytes())
    # Same size, wrong content: only the entries' checksums tell.
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle:][:64])
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path)[1] == 1


def test_no_intact_checkpoint_left_is_a_clear_error(tmp_path):
    _fit_with_checkpoints(str(tmp_path), epochs=1)
    (tmp_path / "checkpoint_0001.keras").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(FileNotFoundError, match="no older intact"):
        latest_checkpoint(tmp_path)


def test_clean_partial_files(tmp_path):
    partial = ["tmp_checkpoint_0003.keras", ".tmp_teacher.keras", "x.tmp"]
    kept = ["checkpoint_0002.keras", "latest.json", "history.csv", "a.keras"]
    for name in partial + kept:
        (tmp_path / name).write_bytes(b"x")
    assert clean_partial_files(tmp_path) == sorted(partial)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert clean_partial_files(tmp_path / "missing") == []


def test_checkpoint_and_record_are_synced_before_the_rename(
    tmp_path, monkeypatch
):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpointing.os, "fsync", fsync)
    monkeypatch.setattr(checkpointing.os, "replace", replace)
    _fit_with_checkpoints(str(tmp_path), epochs=1)
    folder = str(tmp_path.resolve())
    tmp_ckpt = os.path.join(folder, "tmp_checkpoint_0001.keras")
    tmp_record = os.path.join(folder, "latest.json.tmp")
    names = [(kind, os.path.realpath(p)) for kind, p in events]
    # Each temporary file is synced before its rename, and the folder after.
    for tmp in (tmp_ckpt, tmp_record):
        synced = names.index(("fsync", tmp))
        renamed = names.index(("replace", tmp))
        assert synced < renamed
        assert ("fsync", folder) in names[renamed:]


def test_repair_history_restores_and_drops_rows(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,3.0\n2,1.0\n")
    # Resuming from the checkpoint of epoch 2 (rows 0 and 1): row 1 comes
    # from the record, row 2 (a lost checkpoint's) is dropped.
    assert repair_history(path, 2, {"loss": 2.0, "other": 5.0})
    assert path.read_text().splitlines() == ["epoch,loss", "0,3.0", "1,2.0"]
    assert not repair_history(path, 2, {"loss": 2.0})
    fresh = tmp_path / "fresh.csv"
    assert repair_history(fresh, 1, {"loss": 4.0, "lr": 0.5})
    assert fresh.read_text().splitlines() == ["epoch,loss,lr", "0,4.0,0.5"]


TINY = {
    "arch": "vit_tiny",
    "depth": 1,
    "patch_size": 8,
    "out_dim": 32,
    "head_hidden_dim": 16,
    "head_bottleneck_dim": 8,
    "batch_size": 8,
    "epochs": 2,
    "warmup_epochs": 1,
    "warmup_teacher_temp_epochs": 1,
    "teacher_temp": 0.06,
    "local_crops_number": 2,
}


def _history(output_dir):
    with open(os.path.join(output_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_pretrain_resume_restores_the_lost_row_and_cleans_up(
    tmp_path, cifar_sample
):
    images, labels, _ = cifar_sample
    npz = tmp_path / "tiny.npz"
    np.savez(npz, images=images[:16], labels=labels[:16])
    config = configs.get_config("cifar10_vit_tiny", **TINY)
    stream, num_images = pretraining.pretraining_dataset(
        pretraining.multi_crop_augmentation(config),
        config["batch_size"],
        npz_paths=str(npz),
        seed=0,
    )
    steps = pretraining.steps_for(num_images, config["batch_size"])
    out = tmp_path / "run"

    def run(stop):
        pretraining.pretrain(
            config, stream, steps, str(out), verbose=0, stop_after_epochs=stop
        )

    run(1)
    row = _history(out)
    assert len(row) == 1
    # A kill after the checkpoint, before the CSV row was written, while a
    # later checkpoint and the final backbone were being saved.
    (out / "history.csv").write_text(
        (out / "history.csv").read_text().splitlines()[0] + "\n"
    )
    partial = [
        out / "checkpoints" / "tmp_checkpoint_0002.keras",
        out / ".tmp_teacher_backbone.keras",
        out / "config.json.tmp",
    ]
    for path in partial:
        path.write_bytes(b"partial")
    run(2)
    history = _history(out)
    assert [r["epoch"] for r in history] == ["0", "1"]
    assert history[0] == row[0]
    assert not any(path.exists() for path in partial)
