"""Atomic per-epoch checkpoints of a whole DINO model, and resuming.

A run's checkpoint folder holds `checkpoint_NNNN.keras` files (the whole
model after epoch `NNNN`) and `latest.json`, which names the newest
complete one and carries that epoch's logs (the row of `history.csv`).
Every file is written to a temporary name, synced to disk, renamed and its
folder synced, so a kill or a full disk at any moment leaves the previous
checkpoint in force; the partial temporary files it may leave are removed
by `clean_partial_files` at the next start.
"""

import csv
import json
import math
import os
import re
import warnings
import zipfile

import keras

_LATEST = "latest.json"
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)\.keras$")


def _fsync_directory(directory):
    """Syncs a folder's entries (a rename) to disk, where the OS allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _atomic_write_text(path, text):
    """Writes `path` through a synced `.tmp` file, a rename and a folder
    sync."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _is_partial_file(name):
    return (
        (name.startswith("tmp_") and name.endswith(".keras"))
        or name.startswith(".tmp_")
        or name.endswith(".tmp")
    )


def clean_partial_files(directory):
    """Removes the partial temporary files a killed run left in `directory`.

    These are the files that are written first and renamed once complete:
    `tmp_*.keras` (epoch checkpoints), `.tmp_*` (saved backbones) and
    `*.tmp` (`latest.json`, `config.json`). A run killed while writing one,
    or stopped by a full disk, leaves it behind; it is never read. Only
    the folder itself is searched, not its sub-folders.

    Args:
        directory: a run's output or checkpoint folder; nothing happens if
            it does not exist.

    Returns:
        The sorted list of removed file names.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if _is_partial_file(name) and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    if removed:
        print(
            f"Removed {len(removed)} partial file(s) left in {directory} by "
            f"an interrupted run: {', '.join(removed)}"
        )
    return removed


def _is_intact(path):
    """Whether `path` is a complete zip file (a `.keras` file is one)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return False


def _read_record(record):
    """The checked contents of `latest.json`: `{"epoch", "file", ...}`."""
    remedy = (
        f"Restore {record} from a copy, or remove it to start the run "
        "afresh (the checkpoint_NNNN.keras files next to it are kept)."
    )
    try:
        with open(record) as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(
            f"{record} cannot be read as JSON ({e}). {remedy}"
        ) from e
    if not isinstance(info, dict):
        raise ValueError(
            f"{record} must hold a JSON object with keys 'epoch' and "
            f"'file'; it holds a {type(info).__name__}. {remedy}"
        )
    missing = [key for key in ("epoch", "file") if key not in info]
    if missing:
        raise ValueError(
            f"{record} lacks the key(s) {missing}: it must name the newest "
            f"checkpoint file ('file') and its epoch ('epoch'). {remedy}"
        )
    epoch, name = info["epoch"], info["file"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(
            f"{record}: 'epoch' must be a positive integer, got {epoch!r}. "
            f"{remedy}"
        )
    if not isinstance(name, str):
        raise ValueError(
            f"{record}: 'file' must be a file name (a string), got "
            f"{name!r}. {remedy}"
        )
    if not _CHECKPOINT.match(name):
        # Confines the record to its own folder: no absolute path, no
        # `..`, no sub-folder can make a run load another run's file.
        raise ValueError(
            f"{record} names {name!r}, which is not a checkpoint file of "
            "this folder: 'file' must be a plain name checkpoint_NNNN.keras "
            f"(no folder, no absolute path, no '..'). {remedy}"
        )
    logs = info.get("logs")
    if logs is not None and not isinstance(logs, dict):
        raise ValueError(
            f"{record}: 'logs' must be a JSON object, got {logs!r}. {remedy}"
        )
    return info


def _set_aside(path):
    aside = f"{path}.corrupt"
    os.replace(path, aside)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
    return aside


def read_latest(directory):
    """The checked contents of `directory/latest.json`, or `None`.

    Returns:
        A dict with `epoch` (int), `file` (a checkpoint name in
        `directory`) and, when written by this version, `logs` (the logs
        of that epoch, the row of `history.csv`).

    Raises:
        ValueError: `latest.json` is not valid JSON, lacks a key, has a
            value of the wrong type or names a file outside `directory`.
    """
    record = os.path.join(os.fspath(directory), _LATEST)
    if not os.path.exists(record):
        return None
    return _read_record(record)


def latest_checkpoint(directory):
    """`(path, epochs_done)` of the newest intact checkpoint, or `None`.

    A checkpoint counts only once `latest.json` names it, which is written
    after the `.keras` file is complete; a run killed while saving leaves
    the previous checkpoint in force. The named file is checked (a
    complete zip file whose entries match their checksums); if it is
    missing or corrupt, the newest intact older `checkpoint_NNNN.keras` of
    the folder is used instead, with a warning: a corrupt file is renamed
    to `*.corrupt` (kept for inspection, never loaded again) and
    `latest.json` is rewritten to name the checkpoint used.

    Args:
        directory: the checkpoint folder.

    Returns:
        `(path, epochs_done)`, or `None` when there is no `latest.json`.

    Raises:
        ValueError: a malformed `latest.json` (see `read_latest`).
        FileNotFoundError: `latest.json` names a missing or corrupt file
            and no older intact checkpoint is left.
    """
    directory = os.fspath(directory)
    info = read_latest(directory)
    if info is None:
        return None
    named_epoch, named = int(info["epoch"]), info["file"]
    record = os.path.join(directory, _LATEST)
    older = sorted(
        (
            (int(m.group(1)), name)
            for name in os.listdir(directory)
            for m in [_CHECKPOINT.match(name)]
            if m and int(m.group(1)) < named_epoch
        ),
        reverse=True,
    )
    problems = []
    for epoch, name in [(named_epoch, named)] + older:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            problems.append(f"{path} does not exist")
            continue
        if not _is_intact(path):
            aside = _set_aside(path)
            problems.append(f"{path} is corrupt (moved to {aside})")
            continue
        if problems:
            message = (
                f"{record} names {named}, but "
                + "; ".join(problems)
                + f". Resuming from the newest intact checkpoint, {path} "
                f"(epoch {epoch})."
            )
            warnings.warn(message, stacklevel=2)
            print(message)
            _atomic_write_text(
                record, json.dumps({"epoch": epoch, "file": name})
            )
        return path, epoch
    raise FileNotFoundError(
        f"{record} names {named}, but "
        + "; ".join(problems)
        + ", and no older intact checkpoint_NNNN.keras is left. Remove "
        f"{record} to start afresh, or restore a checkpoint file."
    )


def _log_value(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else str(value)


def repair_history(csv_path, epochs_done, logs=None):
    """Makes `history.csv` hold exactly the rows of epochs `< epochs_done`.

    Called when a run resumes from the checkpoint of `epochs_done` epochs:
    a kill between the checkpoint and the CSV write loses that epoch's
    row, which is restored from `logs` (kept by `EpochCheckpoint` in
    `latest.json`); rows of epochs after the checkpoint (their checkpoint
    was lost or corrupt, they are trained again) are dropped, so the
    resumed run does not write them twice. The file keeps the
    `keras.callbacks.CSVLogger` format (an `epoch` column counted from 0).

    Args:
        csv_path: path of `history.csv`.
        epochs_done: epochs of the checkpoint the run resumes from.
        logs: optional dict, the logs of epoch `epochs_done` (the last
            one).

    Returns:
        Whether the file was rewritten.
    """
    csv_path = os.fspath(csv_path)
    header, rows = None, []
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [row for row in reader if row]
    if header is not None and (not header or header[0] != "epoch"):
        return False  # Not a CSVLogger file: leave it alone.
    kept, seen = [], set()
    for row in rows:
        try:
            epoch = int(row[0])
        except ValueError:
            continue
        if epoch < epochs_done and epoch not in seen:
            kept.append(row)
            seen.add(epoch)
    changed = len(kept) != len(rows)
    last = epochs_done - 1
    if logs and last not in seen:
        if header is None:
            header = ["epoch"] + sorted(logs)
        row = [str(last)]
        for key in header[1:]:
            value = _log_value(logs[key]) if key in logs else None
            row.append("NA" if value is None else str(value))
        kept.append(row)
        changed = True
        print(
            f"Restored the history row of epoch {epochs_done} in "
            f"{csv_path} from the checkpoint record."
        )
    if not changed or header is None:
        return False
    kept.sort(key=lambda r: int(r[0]))
    tmp = f"{csv_path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, csv_path)
    _fsync_directory(os.path.dirname(os.path.abspath(csv_path)))
    return True


@keras.saving.register_keras_serializable(package="keras_dino")
class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (`.keras`) after every epoch, atomically.

    The model (student, teacher, center, optimizer state and its
    iteration count) goes to `checkpoint_{epoch:04d}.keras` through a
    temporary file, synced to disk, and `os.replace`; then `latest.json`
    is replaced (synced the same way) to name it, with the epoch's logs,
    so that the epoch's row of `history.csv` survives a kill before the
    CSV is written (`repair_history` restores it). Older checkpoints
    beyond `keep` are removed afterwards, so a crash at any moment leaves
    at least one complete checkpoint.

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
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_directory(self.directory)
        row = {key: _log_value(value) for key, value in (logs or {}).items()}
        _atomic_write_text(
            os.path.join(self.directory, _LATEST),
            json.dumps({"epoch": epoch + 1, "file": name, "logs": row}),
        )
        saved = sorted(
            f for f in os.listdir(self.directory) if _CHECKPOINT.match(f)
        )
        for old in saved[: -self.keep]:
            os.remove(os.path.join(self.directory, old))

    def get_config(self):
        return {"directory": self.directory, "keep": self.keep}
