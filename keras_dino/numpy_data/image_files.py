"""Lists the image files of a folder: `root/<class>/<image>` or flat.

TensorFlow-free; shared by the `tf.data` reader (`keras_dino.data`) and the
NumPy/PIL reader (`keras_dino.numpy_data`).
"""

import os
import stat

from absl import logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def printable(path):
    """`path` with any byte that is not UTF-8 shown as U+FFFD."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def _is_utf8(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates
        return False
    return True


class _Lister:
    """Lists image files once each, skipping and noting unusable entries.

    Directory symbolic links are followed once: a folder already visited
    (by real path) is not entered again, so a link loop ends. A file
    reached twice (a link to another listed file) is listed once.
    Entries that are not regular files after resolving links (FIFOs,
    devices such as /dev/zero, sockets, broken links) and names that are
    not valid UTF-8 are skipped, with the reason, in `skipped`.
    """

    def __init__(self, root):
        self.visited = {os.path.realpath(root)}
        self.seen = set()
        self.skipped = []  # (printable path, reason)

    def skip(self, path, reason):
        self.skipped.append((printable(path), reason))

    def files(self, folder, recursive):
        """Sorted image files of `folder` (and of its sub-folders)."""
        paths = []
        real_folder = os.path.realpath(folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            self.skip(folder, f"folder cannot be listed ({e.strerror})")
            return paths
        subfolders = []
        for entry in entries:
            if _is_image(entry.name):
                path = self.image(entry, real_folder)
                if path is not None:
                    paths.append(path)
            elif recursive and _is_dir(entry):
                subfolders.append(entry.path)
        for sub in subfolders:
            paths.extend(self.enter(sub))
        return paths

    def enter(self, folder):
        if not _is_utf8(folder):
            self.skip(folder, "folder name is not valid UTF-8; rename it")
            return []
        real = os.path.realpath(folder)
        if real in self.visited:
            return []  # a link loop, or a folder reached twice
        self.visited.add(real)
        return self.files(folder, recursive=True)

    def image(self, entry, real_folder):
        """`entry.path` if it is a usable, new image file, else None."""
        if not _is_utf8(entry.name):
            self.skip(entry.path, "file name is not valid UTF-8; rename it")
            return None
        try:
            regular = entry.is_file()  # follows links; false for FIFOs
            link = entry.is_symlink()
        except OSError as e:
            self.skip(entry.path, f"cannot be read ({e.strerror})")
            return None
        if not regular:
            self.skip(entry.path, _not_regular_reason(entry.path))
            return None
        key = (
            os.path.realpath(entry.path)
            if link
            else os.path.join(real_folder, entry.name)
        )
        if key in self.seen:
            return None
        self.seen.add(key)
        return entry.path


def _is_dir(entry):
    try:
        return entry.is_dir()
    except OSError:
        return False


def _not_regular_reason(path):
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "broken symbolic link or unreadable entry"
    if stat.S_ISFIFO(mode):
        kind = "a FIFO (named pipe)"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    elif stat.S_ISDIR(mode):
        kind = "a folder"
    else:
        kind = "not a regular file"
    return f"{kind}, not a regular file"


def list_image_files(root, bad_file_report=None):
    """Lists the image files of a folder and their labels.

    With sub-folders (`root/<class>/.../<image>`, as torchvision's
    `ImageFolder`), classes are the sorted sub-folder names and labels their
    indices; image files directly in `root` are then ignored. Without
    sub-folders the folder is flat and every label is -1. Files are matched
    by extension (case-insensitive): .jpg, .jpeg, .png, .bmp, .gif, .webp.

    Hostile or odd entries never stop or stall the listing: symbolic links
    to folders are followed once (a folder already visited, by real path,
    is not entered again, so a link loop ends) and each real file is listed
    once; entries with an image extension that are not regular files after
    resolving links (a FIFO, which would block the reader, or a link to a
    device such as /dev/zero, which would fill the memory), broken links
    and names that are not valid UTF-8 are skipped. Skipped entries are
    logged as warnings and recorded, with their reason, in
    `bad_file_report` when one is given (non-UTF-8 bytes shown as U+FFFD).

    Args:
        root: path of the folder.
        bad_file_report: optional `BadFileReport` that records the skipped
            entries.

    Returns:
        Tuple `(paths, labels, class_names)`: lists of str, int and str.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(
            f"Image folder {root!r} does not exist or is not a directory."
        )
    lister = _Lister(root)
    classes = sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    # Class folders are entered from `root` only, not through a link in
    # another class.
    lister.visited.update(
        os.path.realpath(os.path.join(root, d)) for d in classes
    )
    paths, labels = [], []
    class_names = []
    for name in classes:
        folder = os.path.join(root, name)
        if not _is_utf8(name):
            lister.skip(folder, "folder name is not valid UTF-8; rename it")
            continue
        files = lister.files(folder, recursive=True)
        if files:
            labels.extend([len(class_names)] * len(files))
            class_names.append(name)
            paths.extend(files)
    if not paths:
        paths = lister.files(root, recursive=False)
        labels = [-1] * len(paths)
    for path, reason in lister.skipped:
        if bad_file_report is not None:
            bad_file_report.record(path, reason)
        else:
            logging.warning("Skipping %s: %s", path, reason)
    if not paths:
        skipped = (
            f" ({len(lister.skipped)} entries were skipped: see the warnings)"
            if lister.skipped
            else ""
        )
        raise ValueError(
            f"No image file found in {root!r}{skipped}. Expected "
            f"`root/<class>/<image>` or images directly in `root`, with one "
            f"of the extensions {', '.join(IMAGE_EXTENSIONS)}."
        )
    return paths, labels, class_names
