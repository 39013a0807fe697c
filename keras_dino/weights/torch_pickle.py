"""Reads `torch.save` zip checkpoints with numpy, without running pickled code.

A file written by `torch.save` (PyTorch >= 1.6, and Hugging Face's
`pytorch_model.bin`) is a zip archive holding `<root>/data.pkl`, a pickle of
the saved object in which every tensor is a call to
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, and
one raw little-endian record `<root>/data/<key>` per storage.

`torch.load` unpickles `data.pkl` with a stock unpickler, so a crafted file
can run any Python code. This reader instead uses a restricted unpickler:
`find_class` resolves only an allow-list of names (the tensor-rebuilding
functions, the storage classes, `collections.OrderedDict`, and
`argparse.Namespace`), each to a harmless stand-in defined here, and raises
`UnsafeCheckpointError` for every other global before anything is called.
PyTorch itself is never imported. The legacy pre-1.6 format (header
pickles, the object pickle, then raw storage records) is read the same way.

`argparse.Namespace` (the `args` of full DINO training checkpoints) is
resolved to `CheckpointArgs`, a plain `types.SimpleNamespace` subclass: the
pickle can only set attributes on it, exactly as on a `Namespace`, and the
attribute values themselves go through the same allow-list.
"""

import collections
import pickle
import types
import zipfile

import numpy as np


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint's pickle refers to a global outside the allow-list."""


class CheckpointArgs(types.SimpleNamespace):
    """Harmless stand-in for `argparse.Namespace` in training checkpoints."""


class _StorageType:
    """Stand-in for a `torch.*Storage` class: only knows its numpy dtype."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self):
        return f"torch.{self.name}"


# numpy dtype of each storage class, as stored on disk (little-endian unless
# the archive's `byteorder` record says otherwise). bfloat16 has no numpy
# dtype: its raw 16 bits are read as uint16 and widened to float32.
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}


class _PendingStorage:
    """A legacy-format storage whose bytes come after the pickle."""

    def __init__(self, storage_type, numel):
        self.storage_type = storage_type
        self.numel = numel
        self.array = None


class _PendingTensor:
    """A tensor of a `_PendingStorage`, built once the bytes are read."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage = storage
        self.args = (storage_offset, size, stride)

    def resolve(self):
        return _rebuild_tensor(self.storage.array, *self.args)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Numpy view of `storage` with torch's size/stride/offset (elements)."""
    if isinstance(storage, _PendingStorage):
        return _PendingTensor(storage, storage_offset, size, stride)
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError(
            f"A tensor must be built from a storage, got {storage!r}."
        )
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(
            f"Tensor size {size} and stride {stride} differ in length."
        )
    if any(s < 0 for s in size + stride) or storage_offset < 0:
        raise pickle.UnpicklingError(
            f"Negative size, stride or offset in tensor record: size={size}, "
            f"stride={stride}, offset={storage_offset}."
        )
    numel = int(np.prod(size, dtype=np.int64))
    if numel == 0:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(
            f"Tensor (size={size}, stride={stride}, offset={storage_offset}) "
            f"reaches element {last} of a storage of {storage.size} "
            "elements; the checkpoint is corrupted."
        )
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)  # A contiguous copy owning its memory.


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, *unused
):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, *unused):
    if not isinstance(data, (np.ndarray, _PendingTensor)):
        raise pickle.UnpicklingError(
            f"A parameter must wrap a tensor, got {type(data).__name__}."
        )
    return data


class _TensorType:
    """Stand-in for `torch.Tensor` / `torch.nn.Parameter` used as a type."""


def _rebuild_from_type_v2(func, new_type, args, state):
    # `func` was itself resolved by `find_class`, so it is one of ours.
    if not isinstance(new_type, type) or not issubclass(new_type, _TensorType):
        raise UnsafeCheckpointError(
            f"Unexpected tensor type {new_type!r} in the checkpoint."
        )
    return func(*args)


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): CheckpointArgs,
}
for _name, _dtype in _STORAGE_DTYPES.items():
    _ALLOWED_GLOBALS[("torch", _name)] = _StorageType(_name, _dtype)
    _ALLOWED_GLOBALS[("torch.storage", _name)] = _StorageType(_name, _dtype)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals to safe stand-ins.

    Args:
        file: binary file object holding the pickle.
        load_storage: callable `(storage_type, key, numel)` returning the
            storage's flat numpy array; called for each persistent id
            `("storage", type, key, location, numel)`.
    """

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"Refusing to load global '{module}.{name}' from the "
                "checkpoint: only tensors, containers, numbers, strings and "
                "argparse.Namespace are allowed. The file may be malicious, "
                "or hold objects other than weights; if you trust it, load "
                "it with torch and save only `model.state_dict()`."
            ) from None

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) >= 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise UnsafeCheckpointError(
                f"Unsupported persistent id in checkpoint: {pid!r}."
            )
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError(
                "Storage views of the legacy torch format are not supported."
            )
        _, storage_type, key, _location, numel = pid[:5]
        return self._load_storage(storage_type, str(key), int(numel))


def _storage_array(raw, storage_type, numel, big_endian, name):
    code = storage_type.dtype
    if code == "bf16":
        dtype = np.dtype(">u2" if big_endian else "<u2")
    else:
        dtype = np.dtype(code).newbyteorder(">" if big_endian else "<")
    if len(raw) < numel * dtype.itemsize:
        raise ValueError(
            f"Storage record {name!r} holds {len(raw)} bytes but "
            f"{numel} x {storage_type!r} needs {numel * dtype.itemsize}; "
            "the checkpoint is truncated or corrupted."
        )
    array = np.frombuffer(raw, dtype=dtype, count=numel)
    if code == "bf16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=False)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _is_legacy_torch_file(path):
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x80"  # A bare pickle stream (torch < 1.6 format).


def _no_storage(*unused):
    raise UnsafeCheckpointError("Unexpected storage in a file header.")


def _resolve(obj):
    """Replaces `_PendingTensor`s in containers by numpy arrays."""
    if isinstance(obj, _PendingTensor):
        return obj.resolve()
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _resolve(value)
    elif isinstance(obj, list):
        obj[:] = [_resolve(v) for v in obj]
    elif isinstance(obj, tuple):
        return type(obj)(_resolve(v) for v in obj)
    elif isinstance(obj, CheckpointArgs):
        for key, value in vars(obj).items():
            setattr(obj, key, _resolve(value))
    return obj


def _load_legacy_torch_file(path):
    """Reads the pre-1.6 format: header pickles, object, storage records."""
    with open(path, "rb") as f:
        try:
            magic = RestrictedUnpickler(f, _no_storage).load()
            protocol = RestrictedUnpickler(f, _no_storage).load()
            sys_info = RestrictedUnpickler(f, _no_storage).load()
        except (EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"{path} is not a torch checkpoint: {e}") from e
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
            raise ValueError(
                f"{path} is a pickle but not a torch checkpoint (magic "
                f"{magic!r}, protocol {protocol!r})."
            )
        big_endian = not sys_info.get("little_endian", True)
        pending = {}

        def load_storage(storage_type, key, numel):
            if key not in pending:
                pending[key] = _PendingStorage(storage_type, numel)
            return pending[key]

        try:
            obj = RestrictedUnpickler(f, load_storage).load()
            keys = RestrictedUnpickler(f, _no_storage).load()
        except EOFError as e:
            raise ValueError(
                f"{path} ends early; the checkpoint is truncated."
            ) from e
        for key in keys:
            storage = pending[str(key)]
            count = f.read(8)
            if len(count) < 8:
                raise ValueError(
                    f"{path} ends before storage {key!r}; the checkpoint is "
                    "truncated."
                )
            numel = int(np.frombuffer(count, ">i8" if big_endian else "<i8")[0])
            itemsize = (
                2
                if storage.storage_type.dtype == "bf16"
                else (np.dtype(storage.storage_type.dtype).itemsize)
            )
            raw = f.read(numel * itemsize)
            storage.array = _storage_array(
                raw, storage.storage_type, numel, big_endian, str(key)
            )
    missing = [k for k, v in pending.items() if v.array is None]
    if missing:
        raise ValueError(f"{path} has no data for storages {missing}.")
    return _resolve(obj)


def load_torch_file(path):
    """Loads a `torch.save` zip file into numpy arrays without torch.

    Args:
        path: path to a `.pth` / `.pt` / `pytorch_model.bin` file written by
            `torch.save`, in the zip format (PyTorch >= 1.6) or the legacy
            pickle-stream format (`_use_new_zipfile_serialization=False`).

    Returns:
        The saved object with every tensor replaced by a `numpy.ndarray`
        (float tensors keep their precision, bfloat16 becomes float32),
        `OrderedDict`s as saved and `argparse.Namespace` as
        `CheckpointArgs`.

    Raises:
        UnsafeCheckpointError: the pickle refers to any global outside the
            allow-list (nothing from the file has been executed).
        ValueError: the file is not a complete torch checkpoint
            (truncated or corrupted).
    """
    path = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        if _is_legacy_torch_file(path):
            return _load_legacy_torch_file(path)
        raise ValueError(
            f"{path} is not a complete PyTorch zip checkpoint (truncated "
            f"or corrupted download?): {e}"
        ) from e
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(
                f"{path} is a zip file but not a torch checkpoint: expected "
                f"one '<root>/data.pkl' entry, found {pickles}."
            )
        root = pickles[0][: -len("data.pkl")]
        big_endian = False
        if root + "byteorder" in names:
            order = archive.read(root + "byteorder").decode().strip()
            if order not in ("little", "big"):
                raise ValueError(f"Unknown byteorder {order!r} in {path}.")
            big_endian = order == "big"
        storages = {}

        def load_storage(storage_type, key, numel):
            if key not in storages:
                name = f"{root}data/{key}"
                if name not in names:
                    raise ValueError(
                        f"{path} has no storage record {name!r}; the "
                        "checkpoint is truncated or corrupted."
                    )
                try:
                    raw = archive.read(name)
                except (zipfile.BadZipFile, EOFError, OSError) as e:
                    raise ValueError(
                        f"Cannot read {name!r} from {path} (truncated or "
                        f"corrupted?): {e}"
                    ) from e
                storages[key] = _storage_array(
                    raw, storage_type, numel, big_endian, name
                )
            return storages[key]

        try:
            with archive.open(pickles[0]) as f:
                return RestrictedUnpickler(f, load_storage).load()
        except (zipfile.BadZipFile, EOFError) as e:
            raise ValueError(
                f"Cannot read {path} (truncated or corrupted?): {e}"
            ) from e
