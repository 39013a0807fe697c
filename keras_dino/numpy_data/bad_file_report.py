"""Keeps track of image files that could not be decoded."""

import os
import threading

import keras
from absl import logging


class BadFileReport(keras.callbacks.Callback):
    """Records the files a reader skipped and reports them during `fit`.

    Give the same object to a reader (`bad_file_report=report`) and to
    `fit` (`callbacks=[report]`): the reader skips files that cannot be read
    or decoded, without stopping, and records them here; at the end of each
    epoch (and of training) the callback logs how many and which files were
    skipped since the last report. Each file is also logged once as a
    warning the first time it is skipped.

    Args:
        verbose: whether to log the skipped files at epoch end.
        max_listed: at most this many paths are listed in one message.

    Example:

    ```python
    report = keras_dino.data.BadFileReport()
    ds = keras_dino.data.from_image_folder(
        "photos/", batch_size=64, bad_file_report=report
    )
    model.fit(ds, epochs=10, callbacks=[report])
    print(report.num_bad_files, report.bad_files)
    ```
    """

    def __init__(self, verbose=True, max_listed=20):
        super().__init__()
        self.verbose = verbose
        self.max_listed = max_listed
        self._lock = threading.Lock()
        self._counts = {}
        self._reasons = {}
        self._reported = set()

    def record(self, path, reason=None):
        """Records that `path` (str or bytes) was skipped.

        Args:
            path: the skipped file; bytes that are not UTF-8 are shown as
                U+FFFD.
            reason: optional short text, e.g. "a FIFO, not a regular
                file"; by default the file could not be read or decoded.
        """
        if isinstance(path, bytes):
            path = path.decode("utf-8", errors="replace")
        else:
            path = os.fsencode(path).decode("utf-8", errors="replace")
        with self._lock:
            first = path not in self._counts
            self._counts[path] = self._counts.get(path, 0) + 1
            if reason is not None:
                self._reasons[path] = str(reason)
        if first:
            logging.warning(
                "Skipping image file %s: %s",
                path,
                reason or "cannot be read or decoded",
            )

    def reason(self, path):
        """Why `path` was skipped (`None` if it was not)."""
        with self._lock:
            if path not in self._counts:
                return None
            return self._reasons.get(path, "cannot be read or decoded")

    def _describe(self, path):
        reason = self._reasons.get(path)
        return f"{path} ({reason})" if reason else path

    @property
    def bad_files(self):
        """Sorted list of the paths of all skipped files."""
        with self._lock:
            return sorted(self._counts)

    @property
    def num_bad_files(self):
        """Number of distinct skipped files."""
        with self._lock:
            return len(self._counts)

    def reset(self):
        """Forgets all recorded files."""
        with self._lock:
            self._counts.clear()
            self._reasons.clear()
            self._reported.clear()

    def summary(self):
        """A one-paragraph description of the skipped files."""
        files = self.bad_files
        if not files:
            return "No image file was skipped."
        with self._lock:
            described = [self._describe(f) for f in files[: self.max_listed]]
        listed = "\n  ".join(described)
        more = len(files) - self.max_listed
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return (
            f"Skipped {len(files)} image file(s) that could not be read or "
            f"decoded, or are not regular files:\n  {listed}{tail}"
        )

    def _report_new(self, when):
        with self._lock:
            new = sorted(set(self._counts) - self._reported)
            self._reported.update(new)
            total = len(self._counts)
            described = [self._describe(f) for f in new[: self.max_listed]]
        if not new or not self.verbose:
            return
        listed = ", ".join(described)
        more = len(new) - self.max_listed
        tail = f" and {more} more" if more > 0 else ""
        message = (
            f"{when}: skipped {len(new)} new unreadable image file(s) "
            f"({total} in total): {listed}{tail}"
        )
        logging.warning(message)
        print(message)

    def on_epoch_end(self, epoch, logs=None):
        self._report_new(f"Epoch {epoch + 1}")

    def on_train_end(self, logs=None):
        self._report_new("End of training")
