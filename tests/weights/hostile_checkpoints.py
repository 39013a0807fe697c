"""Hand-made malformed and hostile checkpoint files, for the reader tests.

Imported by the tests of this folder (pytest puts it on `sys.path`). Every
file is written by the tests themselves; nothing is downloaded.
"""

import contextlib
import json
import pickle
import pickletools
import signal
import struct
import tracemalloc
import zipfile

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class TookTooLong(BaseException):
    """Raised by `deadline`; a BaseException so no reader can swallow it."""


@contextlib.contextmanager
def deadline(seconds):
    """Fails the block with `TookTooLong` after `seconds` of wall time."""

    def expire(signum, frame):
        raise TookTooLong(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def peak_memory():
    """Yields a list that receives the traced peak (bytes) of the block."""
    result = []
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        if started:
            tracemalloc.stop()


def zip_checkpoint(path, data_pkl, entries=(), compression=zipfile.ZIP_STORED):
    """Writes a torch-style zip: `archive/data.pkl` plus `entries`."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for name, data in entries:
            archive.writestr(f"archive/{name}", data)
        archive.writestr("archive/version", "3\n")


def legacy_checkpoint(path, object_pickle, keys=None, records=b"", **headers):
    """Writes a legacy (pre-1.6) torch file around a raw object pickle."""
    with open(path, "wb") as f:
        f.write(pickle.dumps(headers.get("magic", LEGACY_MAGIC), 2))
        f.write(pickle.dumps(headers.get("protocol", LEGACY_PROTOCOL), 2))
        sys_info = headers.get("sys_info", {"little_endian": True})
        f.write(pickle.dumps(sys_info, 2))
        f.write(object_pickle)
        f.write(pickle.dumps([] if keys is None else keys, 2))
        f.write(records)


def billion_laughs(levels=12, fanout=10):
    """A small pickle whose object is a tree of `fanout**levels` leaves."""
    node = ["lol"]
    for _ in range(levels):
        node = [node] * fanout
    return pickle.dumps({"weights": node}, 2)


def deep_tuple_key(depth=200_000):
    """A pickle of `{((((),),),): 1}` nested `depth` deep.

    Hashing such a key overflows CPython's C stack (a segfault).
    """
    return (
        pickle.PROTO
        + b"\x02"
        + pickle.EMPTY_DICT
        + pickle.EMPTY_TUPLE
        + pickle.TUPLE1 * depth
        + pickle.BININT1
        + b"\x01"
        + pickle.SETITEM
        + pickle.STOP
    )


def deep_list(depth=100_000):
    """A pickle of `[[[...]]]` nested `depth` deep."""
    return (
        pickle.PROTO
        + b"\x02"
        + pickle.EMPTY_LIST * depth
        + pickle.APPEND * (depth - 1)
        + pickle.STOP
    )


def self_containing_list():
    """A pickle of a list that contains itself."""
    return (
        pickle.PROTO
        + b"\x02"
        + pickle.EMPTY_LIST
        + pickle.BINPUT
        + b"\x00"
        + pickle.BINGET
        + b"\x00"
        + pickle.APPEND
        + pickle.STOP
    )


def _unicode(text):
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def global_op(module, name):
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def build_on_global(module, name, attribute, value):
    """A pickle that BUILDs `{attribute: value}` onto a global, then STOPs.

    On a reader whose stand-ins are shared, mutable objects, this changes
    them for every later load in the process.
    """
    return (
        pickle.PROTO
        + b"\x02"
        + global_op(module, name)
        + pickle.EMPTY_DICT
        + _unicode(attribute)
        + _unicode(value)
        + pickle.SETITEM
        + pickle.BUILD
        + pickle.STOP
    )


def value_op(value):
    """The opcodes that push `value` (a plain Python value)."""
    # Without PROTO and STOP, and without memo PUTs (unused here).
    return pickletools.optimize(pickle.dumps(value, 2))[2:-1]


def tensor_pickle(size, stride, offset=0, numel=1, key="0", storage=None):
    """A pickle of `{"w": _rebuild_tensor_v2(storage, offset, size, ...)}`.

    The storage is the persistent id `("storage", torch.FloatStorage, key,
    "cpu", numel)` unless `storage` gives other opcodes; `size`, `stride`,
    `offset`, `key` and `numel` are pickled as given, of any type.
    """
    if storage is None:
        storage = (
            pickle.MARK
            + value_op("storage")
            + global_op("torch", "FloatStorage")
            + value_op(key)
            + value_op("cpu")
            + value_op(numel)
            + pickle.TUPLE
            + pickle.BINPERSID
        )
    return (
        pickle.PROTO
        + b"\x02"
        + pickle.EMPTY_DICT
        + value_op("w")
        + global_op("torch._utils", "_rebuild_tensor_v2")
        + pickle.MARK
        + storage
        + value_op(offset)
        + value_op(size)
        + value_op(stride)
        + pickle.NEWFALSE
        + global_op("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.TUPLE
        + pickle.REDUCE
        + pickle.SETITEM
        + pickle.STOP
    )


def safetensors_file(path, header, data=b""):
    """Writes a safetensors file with any (possibly malformed) header."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(data)
