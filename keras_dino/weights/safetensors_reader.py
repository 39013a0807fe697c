"""Reads `.safetensors` files into numpy arrays.

The format is simple: an 8-byte little-endian header length `n`, `n` bytes
of JSON mapping each tensor name to `{"dtype", "shape", "data_offsets"}`
(offsets relative to the end of the header), then the raw little-endian
tensor bytes. It is parsed here with `json` and `numpy` rather than with the
`safetensors` package because (1) it adds no dependency, (2) numpy has no
bfloat16, which `safetensors.numpy` therefore cannot load, while here BF16 is
widened exactly to float32, and (3) a truncated or inconsistent file gets an
error naming the file and the tensor. The `safetensors` package is used in
the tests as the reference.

The header is checked as strictly as the `safetensors` package checks it:
at most `MAX_HEADER_BYTES` of JSON; every shape a list of non-negative
integers; every `data_offsets` pair a byte range of exactly
`numel x itemsize` bytes; and the ranges, in order, tile the data section
with no overlap, gap or trailing bytes. So no tensor is read twice and the
arrays returned hold at most the file's size. Every malformed file raises
`keras_dino.weights.errors.CheckpointFormatError` (a `ValueError`).
"""

import json
import math
import os

import numpy as np

from keras_dino.weights.errors import CheckpointFormatError

# The `safetensors` package refuses larger headers too.
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 32

_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "bf16",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _error(path, message):
    return CheckpointFormatError(
        f"Cannot read safetensors file {path}: {message}"
    )


def _clip(value, limit=80):
    text = repr(value) if not isinstance(value, str) else value
    return text[:limit] + "..." if len(text) > limit else text


def read_safetensors_header(path):
    """Returns `(header, data_start)` of a safetensors file.

    Args:
        path: path to the `.safetensors` file.

    Returns:
        The parsed JSON header (a dict, including `__metadata__` when
        present) and the byte offset where the tensor data begins.

    Raises:
        CheckpointFormatError: the file is too short, its header is not a
            JSON object of at most `MAX_HEADER_BYTES` bytes, or its
            `__metadata__` is not a dict of strings. A `ValueError`.
        OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _error(path, "the file is shorter than its 8-byte prefix.")
        header_size = int.from_bytes(prefix, "little")
        if header_size > size - 8:
            raise _error(
                path,
                f"the header claims {header_size} bytes but the file has "
                f"{size} bytes; it is truncated or not a safetensors file.",
            )
        if header_size > MAX_HEADER_BYTES:
            raise _error(
                path,
                f"the header claims {header_size} bytes, more than the "
                f"{MAX_HEADER_BYTES} that safetensors allows.",
            )
        raw = f.read(header_size)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, Unicode...
        raise _error(
            path, f"the header is not valid JSON ({_clip(str(e))})."
        ) from e
    if not isinstance(header, dict):
        raise _error(path, "the header is not a JSON object.")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(v, str) for v in metadata.values())
    ):
        raise _error(path, "`__metadata__` must be a JSON object of strings.")
    return header, 8 + header_size


def _entry(path, name, info, start, size):
    """Validated `(begin, end, dtype code, shape)` of one header entry."""
    if not isinstance(info, dict):
        raise _error(path, f"tensor {_clip(name)!r} is not a JSON object.")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _error(
            path,
            f"tensor {_clip(name)!r} has dtype {_clip(dtype)}; supported "
            f"dtypes are {sorted(_DTYPES)} (float8 has no numpy "
            "equivalent).",
        )
    shape = info.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(s) is int and s >= 0 for s in shape)
    ):
        raise _error(
            path,
            f"tensor {_clip(name)!r} has shape {_clip(shape)}; a shape is "
            f"a list of at most {MAX_DIMS} non-negative integers.",
        )
    offsets = info.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _error(
            path,
            f"tensor {_clip(name)!r} has data_offsets {_clip(offsets)}; "
            "they must be two non-negative integers [begin, end] with "
            "begin <= end.",
        )
    begin, end = offsets
    code = _DTYPES[dtype]
    itemsize = 2 if code == "bf16" else np.dtype(code).itemsize
    numel = math.prod(shape)
    if numel == 0 and max(shape, default=0) > 2**31:
        raise _error(path, f"tensor {_clip(name)!r} has shape {shape}.")
    if end - begin != numel * itemsize:
        raise _error(
            path,
            f"tensor {_clip(name)!r} ({dtype} {_clip(shape)}) has "
            f"{end - begin} bytes at offsets [{begin}, {end}).",
        )
    if start + end > size:
        raise _error(
            path,
            f"tensor {_clip(name)!r} ends at byte {start + end} but the "
            f"file has {size} bytes; it is truncated.",
        )
    return begin, end, code, tuple(shape)


def load_safetensors(path):
    """Loads every tensor of a safetensors file as a numpy array.

    Args:
        path: path to the `.safetensors` file.

    Returns:
        A dict `name -> numpy.ndarray` in file order (bfloat16 tensors are
        returned as float32, every other dtype as stored).

    Raises:
        CheckpointFormatError: the file is truncated or inconsistent
            (negative or non-integer shapes, byte ranges that overlap,
            leave gaps or do not match the shape), or uses a dtype without
            a numpy equivalent (float8). A `ValueError`.
        OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    header, start = read_safetensors_header(path)
    size = os.path.getsize(path)
    entries = {
        name: _entry(path, name, info, start, size)
        for name, info in header.items()
        if name != "__metadata__"
    }
    position = 0
    for name, (begin, end, _, _) in sorted(
        entries.items(), key=lambda item: item[1][:2]
    ):
        if begin != position:
            raise _error(
                path,
                f"tensor {_clip(name)!r} starts at data byte {begin} but "
                f"the previous tensor ends at {position}; the byte ranges "
                "of a safetensors file must follow each other with no "
                "overlap or gap.",
            )
        position = end
    if start + position != size:
        raise _error(
            path,
            f"the tensors end at byte {start + position} but the file has "
            f"{size} bytes; safetensors files hold nothing after the last "
            "tensor.",
        )
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, (begin, end, code, shape) in entries.items():
        dtype = np.dtype("<u2" if code == "bf16" else code)
        raw = np.asarray(data[start + begin : start + end]).tobytes()
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        if code == "bf16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        else:
            array = array.astype(dtype.newbyteorder("="), copy=True)
        tensors[name] = array
    del data
    return tensors


def load_safetensors_metadata(path):
    """The free-form `__metadata__` dict of a safetensors file (or `{}`).

    Raises:
        CheckpointFormatError: the header is malformed (see
            `read_safetensors_header`).
    """
    header, _ = read_safetensors_header(path)
    return dict(header.get("__metadata__") or {})
