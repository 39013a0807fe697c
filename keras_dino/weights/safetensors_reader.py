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
"""

import json
import os

import numpy as np

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
    return ValueError(f"Cannot read safetensors file {path}: {message}")


def read_safetensors_header(path):
    """Returns `(header, data_start)` of a safetensors file.

    Args:
        path: path to the `.safetensors` file.

    Returns:
        The parsed JSON header (a dict, including `__metadata__` when
        present) and the byte offset where the tensor data begins.
    """
    path = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _error(path, "the file is shorter than its 8-byte prefix.")
        header_size = int(np.frombuffer(prefix, "<u8")[0])
        if header_size > size - 8:
            raise _error(
                path,
                f"the header claims {header_size} bytes but the file has "
                f"{size} bytes; it is truncated or not a safetensors file.",
            )
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _error(path, f"the header is not valid JSON ({e}).") from e
    if not isinstance(header, dict):
        raise _error(path, "the header is not a JSON object.")
    return header, 8 + header_size


def load_safetensors(path):
    """Loads every tensor of a safetensors file as a numpy array.

    Args:
        path: path to the `.safetensors` file.

    Returns:
        A dict `name -> numpy.ndarray` in file order (bfloat16 tensors are
        returned as float32, every other dtype as stored).

    Raises:
        ValueError: the file is truncated, inconsistent, or uses a dtype
            without a numpy equivalent (float8).
    """
    path = str(path)
    header, start = read_safetensors_header(path)
    size = os.path.getsize(path)
    data = np.memmap(path, dtype=np.uint8, mode="r") if size else None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except KeyError as e:
            raise _error(
                path, f"tensor {name!r} has an unsupported entry {info!r}."
            ) from e
        dtype = np.dtype("<u2" if code == "bf16" else code)
        numel = int(np.prod(shape, dtype=np.int64))
        if end - begin != numel * dtype.itemsize or begin < 0:
            raise _error(
                path,
                f"tensor {name!r} ({info['dtype']} {list(shape)}) has "
                f"{end - begin} bytes at offsets [{begin}, {end}).",
            )
        if start + end > size:
            raise _error(
                path,
                f"tensor {name!r} ends at byte {start + end} but the file "
                f"has {size} bytes; it is truncated.",
            )
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
    """The free-form `__metadata__` dict of a safetensors file (or `{}`)."""
    header, _ = read_safetensors_header(path)
    return dict(header.get("__metadata__") or {})
