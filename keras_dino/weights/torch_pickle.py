"""Reads `torch.save` checkpoints with numpy, without running pickled code.

A file written by `torch.save` (PyTorch >= 1.6, and Hugging Face's
`pytorch_model.bin`) is a zip archive holding `<root>/data.pkl`, a pickle of
the saved object in which every tensor is a call to
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, and
one raw little-endian record `<root>/data/<key>` per storage, stored
uncompressed.

`torch.load` unpickles `data.pkl` with a stock unpickler, so a crafted file
can run any Python code. This reader instead uses a restricted unpickler:
`find_class` resolves only an allow-list of names (the tensor-rebuilding
functions, the storage classes, `collections.OrderedDict`, and
`argparse.Namespace`), each to a harmless, immutable stand-in created for
that one load, and raises `UnsafeCheckpointError` for every other global
before anything is called. PyTorch itself is never imported. The legacy
pre-1.6 format (header pickles, the object pickle, then raw storage
records) is read the same way.

`argparse.Namespace` (the `args` of full DINO training checkpoints) is
resolved to `CheckpointArgs`, a plain `types.SimpleNamespace` subclass: the
pickle can only set attributes on its instances, exactly as on a
`Namespace`, and the attribute values themselves go through the same
allow-list.

Bounded work and memory. The pickle is run by the pure-Python unpickler
(`pickle._Unpickler`), whose memo is a dict and which reads a length-prefixed
string before allocating it, with these opcodes narrowed: `BUILD` only on
`OrderedDict` and `CheckpointArgs` instances; `APPEND(S)`, `SETITEM(S)` and
`ADDITEMS` only on lists, dicts and sets; tuples and frozensets nested at
most `MAX_DEPTH` deep (hashing a deeper one crashes CPython); no extension
codes or out-of-band buffers. Zip entries must be stored uncompressed
(as `torch.save` writes them) and together hold at most the file's size, so
no entry can inflate. A tensor must lie inside its storage, and the tensors
materialised from one file hold at most `MAX_TENSOR_BYTES_PER_FILE_BYTE`
times the file size plus `TENSOR_BYTES_SLACK` bytes (a stride-0 view of a
one-element storage cannot become gigabytes). The loaded object is then
walked once as a tree, counting every shared reference again, and may hold
at most `MAX_OBJECTS` values nested at most `MAX_DEPTH` deep, so that
neither this reader nor its callers can be made to loop over a
"billion laughs" of shared references.

Every malformed, truncated, oversized or hostile file raises
`keras_dino.weights.errors.CheckpointFormatError` (a `ValueError`), of which
`UnsafeCheckpointError` is the subclass for refused globals and objects.
"""

import collections
import io
import math
import os
import pickle
import struct
import types
import zipfile
import zlib

import numpy as np

from keras_dino.weights.errors import CheckpointFormatError
from keras_dino.weights.errors import UnsafeCheckpointError

# Limits on what one file may make the reader do (see the module docstring).
MAX_OBJECTS = 1_000_000
MAX_DEPTH = 64
MAX_DIMS = 32
MAX_TENSOR_BYTES_PER_FILE_BYTE = 4
TENSOR_BYTES_SLACK = 16 * 2**20

__all__ = [
    "CheckpointArgs",
    "CheckpointFormatError",
    "RestrictedUnpickler",
    "UnsafeCheckpointError",
    "load_torch_file",
]


def _clip(text, limit=60):
    """`text` cut to `limit` characters, for messages."""
    text = str(text)
    return text[:limit] + "..." if len(text) > limit else text


def _short(obj):
    """A bounded description of a value from the file, for messages."""
    if obj is None or type(obj) in (bool, float):
        return repr(obj)
    if type(obj) is int:
        return repr(obj) if abs(obj) < 10**18 else "a very large integer"
    if type(obj) in (str, bytes):
        text = repr(obj[:60])
        return text + "..." if len(obj) > 60 else text
    if isinstance(obj, _StandIn):
        return repr(obj)
    return f"a {type(obj).__name__} object"


class _FrozenType(type):
    """Metaclass whose classes refuse attribute changes (from BUILD)."""

    def __setattr__(cls, name, value):
        raise UnsafeCheckpointError(
            f"Refusing to set attribute {_short(name)} of class {cls.__name__}."
        )

    def __delattr__(cls, name):
        raise UnsafeCheckpointError(
            f"Refusing to delete attribute {_short(name)} of class "
            f"{cls.__name__}."
        )


class CheckpointArgs(types.SimpleNamespace, metaclass=_FrozenType):
    """Harmless stand-in for `argparse.Namespace` in training checkpoints."""


class _StandIn:
    """An immutable stand-in for a torch global; BUILD cannot change it."""

    __slots__ = ("_name",)

    def __init__(self, name):
        object.__setattr__(self, "_name", name)

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(
            f"Refusing to set attribute {_short(name)} of {self._name}."
        )

    def __delattr__(self, name):
        raise UnsafeCheckpointError(
            f"Refusing to delete attribute {_short(name)} of {self._name}."
        )

    def __setstate__(self, state):
        raise UnsafeCheckpointError(f"Refusing to set the state of {self}.")

    def __reduce__(self):
        raise TypeError(f"{self} is a checkpoint-reader stand-in.")

    def __repr__(self):
        return self._name


class _StorageType(_StandIn):
    """Stand-in for a `torch.*Storage` class: only knows its numpy dtype."""

    __slots__ = ("dtype", "itemsize")

    def __init__(self, name, dtype):
        super().__init__(f"torch.{name}")
        object.__setattr__(self, "dtype", dtype)
        itemsize = 2 if dtype == "bf16" else np.dtype(dtype).itemsize
        object.__setattr__(self, "itemsize", itemsize)


class _TensorType(_StandIn):
    """Stand-in for `torch.Tensor` / `torch.nn.Parameter` used as a type."""

    __slots__ = ()


class _Function(_StandIn):
    """Stand-in for an allow-listed torch function; calls a reader method."""

    __slots__ = ("_function",)

    def __init__(self, name, function):
        super().__init__(name)
        object.__setattr__(self, "_function", function)

    def __call__(self, *args):
        return self._function(*args)


class _Storage(_StandIn):
    """A storage from a persistent id: a flat numpy array, or `None` while
    the legacy format's first pass only looks for the storage keys."""

    __slots__ = ("array",)

    def __init__(self, array):
        super().__init__("a storage")
        object.__setattr__(self, "array", array)


_PLACEHOLDER_TENSOR = _StandIn("a tensor placeholder")

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

# Immutable, so sharing them between loads is safe.
_CONSTANT_GLOBALS = {
    ("torch", "Tensor"): _TensorType("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorType(
        "torch.nn.parameter.Parameter"
    ),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): CheckpointArgs,
}
for _name, _dtype in _STORAGE_DTYPES.items():
    _CONSTANT_GLOBALS[("torch", _name)] = _StorageType(_name, _dtype)
    _CONSTANT_GLOBALS[("torch.storage", _name)] = _StorageType(_name, _dtype)
del _name, _dtype


def _is_count(value):
    """True for a non-negative Python int (not a bool)."""
    return type(value) is int and value >= 0


_BASE = pickle._Unpickler  # The pure-Python unpickler: see the docstring.
_DISPATCH = dict(_BASE.dispatch)


class RestrictedUnpickler(_BASE):
    """Unpickler that resolves only allow-listed globals to safe stand-ins.

    Args:
        file: binary file object holding the pickle.
        load_storage: callable `(storage_type, key, numel)` returning the
            storage's flat numpy array (or `None` for a placeholder); called
            for each persistent id `("storage", type, key, location, numel)`.
        name: how messages name the file.
        max_tensor_bytes: most bytes that the tensors built from this
            pickle may hold together (`None`: no limit).

    Raises (from `load`):
        UnsafeCheckpointError: the pickle names a global outside the
            allow-list or tries to change a stand-in.
        CheckpointFormatError: the pickle is malformed or exceeds a limit.
    """

    dispatch = _DISPATCH

    def __init__(
        self, file, load_storage, name="the checkpoint", max_tensor_bytes=None
    ):
        super().__init__(file)
        self._load_storage = load_storage
        self._name = name
        self._tensor_bytes_left = max_tensor_bytes
        self._depths = {}  # id(tuple or frozenset) -> (object, nesting)
        tensor_functions = {
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            (
                "torch._utils",
                "_rebuild_parameter_with_state",
            ): self._rebuild_parameter,
        }
        self._globals = dict(_CONSTANT_GLOBALS)
        for key, method in tensor_functions.items():
            self._globals[key] = _Function(".".join(key), method)
        self._tensor_functions = {
            id(self._globals[key]) for key in tensor_functions
        }
        self._globals[("torch._tensor", "_rebuild_from_type_v2")] = _Function(
            "torch._tensor._rebuild_from_type_v2", self._rebuild_from_type_v2
        )

    def _error(self, message):
        return CheckpointFormatError(f"{self._name}: {message}")

    # -- Globals and storages ------------------------------------------------

    def find_class(self, module, name):
        try:
            return self._globals[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"Refusing to load global '{_clip(module)}.{_clip(name)}' "
                f"from {self._name}: only "
                "tensors, containers, numbers, strings and "
                "argparse.Namespace are allowed. The file may be malicious, "
                "or hold objects other than weights; if you trust it, load "
                "it with torch and save only `model.state_dict()`."
            ) from None

    def persistent_load(self, pid):
        if not (
            type(pid) is tuple
            and len(pid) in (5, 6)
            and type(pid[0]) is str
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise UnsafeCheckpointError(
                f"{self._name}: unsupported persistent id {_short(pid)}; "
                "only ('storage', <storage class>, key, location, numel) "
                "is allowed."
            )
        if len(pid) == 6 and pid[5] is not None:
            raise self._error(
                "storage views of the legacy torch format are not supported."
            )
        _, storage_type, key, _location, numel = pid[:5]
        if type(key) is int and key >= 0:
            key = str(key)
        if type(key) is not str or not _is_count(numel):
            raise self._error(
                f"malformed storage record (key {_short(key)}, numel "
                f"{_short(numel)}); expected a string key and a "
                "non-negative element count."
            )
        array = self._load_storage(storage_type, key, numel)
        if array is not None and not (
            type(array) is np.ndarray
            and array.ndim == 1
            and array.flags.c_contiguous
        ):
            raise TypeError("load_storage must return a flat numpy array.")
        return _Storage(array)

    # -- Tensors -------------------------------------------------------------

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *unused):
        """Numpy copy of `storage` with torch's size/stride/offset."""
        if not isinstance(storage, _Storage):
            raise self._error(
                f"a tensor must be built from a storage, got {_short(storage)}."
            )
        if type(size) not in (tuple, list) or type(stride) not in (
            tuple,
            list,
        ):
            raise self._error(
                f"tensor size {_short(size)} and stride {_short(stride)} "
                "must be tuples."
            )
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or len(size) > MAX_DIMS:
            raise self._error(
                f"tensor size and stride have {len(size)} and {len(stride)} "
                f"dimensions; they must match and be at most {MAX_DIMS}."
            )
        if not (
            all(_is_count(v) for v in size + stride)
            and _is_count(storage_offset)
        ):
            raise self._error(
                "tensor size, stride and offset must be non-negative "
                f"integers; got size={[_short(v) for v in size]}, "
                f"stride={[_short(v) for v in stride]}, "
                f"offset={_short(storage_offset)}."
            )
        array = storage.array
        if array is None:
            return _PLACEHOLDER_TENSOR  # Legacy format, first pass.
        numel = math.prod(size)
        if numel == 0:
            if max(size, default=0) > 2**31:
                raise self._error(f"empty tensor of size {size} is too big.")
            return np.zeros(size, array.dtype)
        # A dimension of size 1 is never stepped over: its stride is moot.
        stride = tuple(s if n > 1 else 0 for n, s in zip(size, stride))
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= array.size:
            raise self._error(
                f"tensor (size={size}, stride={stride}, "
                f"offset={storage_offset}) reaches element {_short(last)} of "
                f"a storage of {array.size} elements; the checkpoint is "
                "corrupted."
            )
        nbytes = numel * array.dtype.itemsize
        if self._tensor_bytes_left is not None:
            if nbytes > self._tensor_bytes_left:
                raise self._error(
                    f"a tensor of size {size} would need {_short(nbytes)} "
                    "bytes, more than the file can plausibly hold (the "
                    "tensors of a file may hold at most "
                    f"{MAX_TENSOR_BYTES_PER_FILE_BYTE} times its size plus "
                    f"{TENSOR_BYTES_SLACK} bytes); refusing to expand it."
                )
            self._tensor_bytes_left -= nbytes
        itemsize = array.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            array[storage_offset:],
            shape=size,
            strides=tuple(s * itemsize for s in stride),
            writeable=False,
        )
        return np.array(view)  # A contiguous copy owning its memory.

    def _rebuild_tensor_v2(
        self, storage, storage_offset, size, stride, requires_grad=False, *_
    ):
        return self._rebuild_tensor(storage, storage_offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad=False, *unused):
        if not (type(data) is np.ndarray or data is _PLACEHOLDER_TENSOR):
            raise self._error(
                f"a parameter must wrap a tensor, got {_short(data)}."
            )
        return data

    def _rebuild_from_type_v2(self, func, new_type, args, state=None, *_):
        if (
            id(func) not in self._tensor_functions
            or not isinstance(new_type, _TensorType)
            or type(args) is not tuple
        ):
            raise UnsafeCheckpointError(
                f"{self._name}: unexpected _rebuild_from_type_v2 call "
                f"({_short(func)}, {_short(new_type)}, {_short(args)})."
            )
        return func(*args)

    # -- Narrowed opcodes ----------------------------------------------------

    def _nesting(self, items):
        depth = 0
        for item in items:
            if type(item) in (tuple, frozenset):
                entry = self._depths.get(id(item))
                depth = max(depth, entry[1] if entry else 1)
        if depth >= MAX_DEPTH:
            raise self._error(
                f"tuples or frozensets are nested more than {MAX_DEPTH} deep."
            )
        return depth + 1

    def _record(self, obj, depth):
        if depth > 1:
            self._depths[id(obj)] = (obj, depth)
        return obj

    def _tuple(self, items):
        return self._record(tuple(items), self._nesting(items))

    def _load_tuple(self):
        items = self.pop_mark()  # Replaces self.stack: call it first.
        self.stack.append(self._tuple(items))

    def _load_tuple1(self):
        self.stack[-1] = self._tuple(self.stack[-1:])

    def _load_tuple2(self):
        self.stack[-2:] = [self._tuple(self.stack[-2:])]

    def _load_tuple3(self):
        self.stack[-3:] = [self._tuple(self.stack[-3:])]

    def _load_frozenset(self):
        items = self.pop_mark()
        depth = self._nesting(items)  # Before hashing the items.
        self.stack.append(self._record(frozenset(items), depth))

    def _target(self, kinds, opcode):
        target = self.stack[-1]
        if type(target) not in kinds:
            raise UnsafeCheckpointError(
                f"{self._name}: refusing {opcode} on {_short(target)}."
            )
        return target

    def _load_append(self):
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._target((dict, collections.OrderedDict), "SETITEM")[key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise self._error("SETITEMS has an odd number of items.")
        target = self._target((dict, collections.OrderedDict), "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_additems(self):
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(items)

    def _load_build(self):
        state = self.stack.pop()
        target = self._target(
            (collections.OrderedDict, CheckpointArgs), "BUILD"
        )
        if type(state) is not dict or not all(type(k) is str for k in state):
            raise self._error(
                f"the state of {_short(target)} must be a dict of "
                f"attribute names, got {_short(state)}."
            )
        target.__dict__.update(state)

    def _refuse_opcode(self):
        raise UnsafeCheckpointError(
            f"{self._name}: the pickle uses extension codes, bytearrays or "
            "out-of-band buffers, which torch.save never writes."
        )

    _overrides = {
        pickle.TUPLE: _load_tuple,
        pickle.TUPLE1: _load_tuple1,
        pickle.TUPLE2: _load_tuple2,
        pickle.TUPLE3: _load_tuple3,
        pickle.FROZENSET: _load_frozenset,
        pickle.APPEND: _load_append,
        pickle.APPENDS: _load_appends,
        pickle.SETITEM: _load_setitem,
        pickle.SETITEMS: _load_setitems,
        pickle.ADDITEMS: _load_additems,
        pickle.BUILD: _load_build,
        pickle.EXT1: _refuse_opcode,
        pickle.EXT2: _refuse_opcode,
        pickle.EXT4: _refuse_opcode,
        pickle.BYTEARRAY8: _refuse_opcode,
        pickle.NEXT_BUFFER: _refuse_opcode,
        pickle.READONLY_BUFFER: _refuse_opcode,
    }
    for _opcode, _handler in _overrides.items():
        dispatch[_opcode[0]] = _handler
    del _opcode, _handler, _overrides


_LEAF_TYPES = frozenset(
    (type(None), bool, int, float, complex, str, bytes, bytearray, np.ndarray)
)
_CONTAINER_TYPES = frozenset(
    (dict, collections.OrderedDict, CheckpointArgs, list, tuple, set, frozenset)
)


def _children(item):
    kind = type(item)
    if kind is dict:
        return [*item.keys(), *item.values()]
    if kind is collections.OrderedDict:  # Its attributes (`_metadata`) too.
        return [*item.keys(), *item.values(), *vars(item).values()]
    if kind is CheckpointArgs:
        attributes = vars(item)
        return [*attributes.keys(), *attributes.values()]
    return item  # list, tuple, set, frozenset


def _check_loaded(obj, name):
    """Checks `obj` as a tree: plain data only, bounded size and depth.

    Every shared reference is counted again, as any caller that recurses
    over the result would visit it again; but each distinct container is
    visited once (its tree size and depth are memoised), so that refusing a
    "billion laughs" takes as long as reading it.
    """
    if type(obj) in _LEAF_TYPES:
        return obj
    done = {}  # id(container) -> (values in its tree, nesting depth)
    open_ = set()  # Containers being visited: the current path.
    stack = [(obj, False)]
    while stack:
        item, finish = stack.pop()
        key = id(item)
        if finish:
            count, depth = 0, 1
            for child in _children(item):
                count += 1
                if type(child) not in _LEAF_TYPES:
                    child_count, child_depth = done[id(child)]
                    count += child_count
                    depth = max(depth, child_depth + 1)
            if count > MAX_OBJECTS:
                raise CheckpointFormatError(
                    f"{name}: the saved object holds more than "
                    f"{MAX_OBJECTS} values (counting shared references each "
                    "time), e.g. a 'billion laughs' of nested references; "
                    "refusing to load it."
                )
            if depth > MAX_DEPTH:
                raise CheckpointFormatError(
                    f"{name}: the saved object is nested more than "
                    f"{MAX_DEPTH} levels deep."
                )
            done[key] = (count, depth)
            open_.discard(key)
            continue
        if key in done:
            continue
        if key in open_:
            raise CheckpointFormatError(
                f"{name}: the saved object is nested more than {MAX_DEPTH} "
                "levels deep: it contains itself."
            )
        if type(item) not in _CONTAINER_TYPES:
            raise UnsafeCheckpointError(
                f"{name}: the saved object holds {_short(item)}, which is "
                "not a tensor, container, number or string."
            )
        open_.add(key)
        stack.append((item, True))
        stack += [
            (child, False)
            for child in _children(item)
            if type(child) not in _LEAF_TYPES
        ]
    return obj


def _storage_array(raw, storage_type, numel, big_endian, name):
    code = storage_type.dtype
    if code == "bf16":
        dtype = np.dtype(">u2" if big_endian else "<u2")
    else:
        dtype = np.dtype(code).newbyteorder(">" if big_endian else "<")
    if len(raw) < numel * dtype.itemsize:
        raise CheckpointFormatError(
            f"Storage record {name!r} holds {len(raw)} bytes but "
            f"{numel} x {storage_type!r} needs {numel * dtype.itemsize}; "
            "the checkpoint is truncated or corrupted."
        )
    array = np.frombuffer(raw, dtype=dtype, count=numel)
    if code == "bf16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _tensor_budget(file_size):
    return MAX_TENSOR_BYTES_PER_FILE_BYTE * file_size + TENSOR_BYTES_SLACK


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _no_storage(*unused):
    raise CheckpointFormatError("Unexpected storage in a file header.")


class _BoundedFile:
    """A file whose `read(n)` never asks for more than the bytes left.

    `io.BufferedReader.read(n)` allocates `n` bytes before reading, so a
    length field of 2**60 in the file would otherwise be a MemoryError.
    """

    def __init__(self, file, size):
        self._file = file
        self._size = size

    def read(self, n=-1):
        left = max(self._size - self._file.tell(), 0)
        return self._file.read(left if n is None or n < 0 else min(n, left))

    def readline(self):
        return self._file.readline()

    def tell(self):
        return self._file.tell()

    def seek(self, offset):
        return self._file.seek(offset)


def _load_legacy(path, f, file_size):
    """Reads the pre-1.6 format: header pickles, object, storage records.

    The storage records follow the object pickle, so it is read twice: once
    with placeholders to find the storages, once with their arrays.
    """
    try:
        magic = RestrictedUnpickler(f, _no_storage, path).load()
        protocol = RestrictedUnpickler(f, _no_storage, path).load()
        sys_info = RestrictedUnpickler(f, _no_storage, path).load()
    except UnsafeCheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, CheckpointFormatError) as e:
        raise CheckpointFormatError(
            f"{path} is not a torch checkpoint: {e}"
        ) from e
    if (
        type(magic) is not int
        or magic != _LEGACY_MAGIC
        or type(protocol) is not int
        or protocol != _LEGACY_PROTOCOL
        or type(sys_info) is not dict
    ):
        raise CheckpointFormatError(
            f"{path} is a pickle but not a torch checkpoint (magic "
            f"{_short(magic)}, protocol {_short(protocol)})."
        )
    little_endian = sys_info.get("little_endian", True)
    if type(little_endian) is not bool:
        raise CheckpointFormatError(
            f"{path}: malformed sys_info record {_short(little_endian)}."
        )
    big_endian = not little_endian
    start = f.tell()
    found = {}

    def find_storage(storage_type, key, numel):
        found.setdefault(key, storage_type)
        return None

    try:
        RestrictedUnpickler(f, find_storage, path).load()
        keys = RestrictedUnpickler(f, _no_storage, path).load()
    except EOFError as e:
        raise CheckpointFormatError(
            f"{path} ends early; the checkpoint is truncated."
        ) from e
    if type(keys) is not list or not all(
        type(k) is str and k in found for k in keys
    ):
        raise CheckpointFormatError(
            f"{path}: the list of storage keys ({_short(keys)}) does not "
            "match the storages of the saved object; the checkpoint is "
            "corrupted."
        )
    arrays = {}
    for key in keys:
        storage_type = found[key]
        count = f.read(8)
        if len(count) < 8:
            raise CheckpointFormatError(
                f"{path} ends before storage {key!r}; the checkpoint is "
                "truncated."
            )
        numel = int.from_bytes(
            count, "big" if big_endian else "little", signed=True
        )
        nbytes = numel * storage_type.itemsize
        if numel < 0 or nbytes > file_size - f.tell():
            raise CheckpointFormatError(
                f"{path}: storage {key!r} claims {_short(numel)} elements, "
                "more than the rest of the file holds; the checkpoint is "
                "truncated or corrupted."
            )
        arrays[key] = _storage_array(
            f.read(nbytes), storage_type, numel, big_endian, key
        )
    missing = sorted(set(found) - set(arrays))
    if missing:
        raise CheckpointFormatError(
            f"{path} has no data for storages {missing[:10]}."
        )
    f.seek(start)
    obj = RestrictedUnpickler(
        f,
        lambda storage_type, key, numel: arrays[key],
        path,
        _tensor_budget(file_size),
    ).load()
    return _check_loaded(obj, path)


def _load_zip(path, archive, file_size):
    infos = {}
    for info in archive.infolist():
        if info.filename in infos:
            raise CheckpointFormatError(
                f"{path} holds two zip entries named {info.filename!r}; "
                "torch.save never writes that."
            )
        infos[info.filename] = info
    pickles = [n for n in infos if n.endswith("data.pkl")]
    if len(pickles) != 1:
        raise CheckpointFormatError(
            f"{path} is a zip file but not a torch checkpoint: expected "
            f"one '<root>/data.pkl' entry, found {pickles[:10]}."
        )
    root = pickles[0][: -len("data.pkl")]
    bytes_left = [file_size]  # Entries may not hold more than the file.

    def read(name, max_size=None):
        info = infos[name]
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointFormatError(
                f"{path}: zip entry {name!r} is compressed (method "
                f"{info.compress_type}), but torch.save stores every entry "
                "uncompressed, so the file was repacked or crafted. "
                "Refusing to decompress it; re-save it with torch.save."
            )
        if info.file_size > bytes_left[0] or (
            max_size is not None and info.file_size > max_size
        ):
            raise CheckpointFormatError(
                f"{path}: zip entry {name!r} claims {info.file_size} "
                "bytes, more than the file can hold; the checkpoint is "
                "corrupted."
            )
        bytes_left[0] -= info.file_size
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise CheckpointFormatError(
                f"Cannot read {name!r} from {path} (truncated or "
                f"corrupted?): {e}"
            ) from e

    big_endian = False
    if root + "byteorder" in infos:
        order = read(root + "byteorder", max_size=16)
        if order.strip() not in (b"little", b"big"):
            raise CheckpointFormatError(
                f"Unknown byteorder {_short(order)} in {path}."
            )
        big_endian = order.strip() == b"big"
    storages = {}

    def load_storage(storage_type, key, numel):
        if key not in storages:
            name = f"{root}data/{key}"
            if name not in infos:
                raise CheckpointFormatError(
                    f"{path} has no storage record {_short(name)}; the "
                    "checkpoint is truncated or corrupted."
                )
            needed = numel * storage_type.itemsize
            if infos[name].file_size < needed:
                raise CheckpointFormatError(
                    f"Storage record {name!r} of {path} holds "
                    f"{infos[name].file_size} bytes but {_short(numel)} x "
                    f"{storage_type!r} needs {_short(needed)}; the "
                    "checkpoint is truncated or corrupted."
                )
            storages[key] = _storage_array(
                read(name), storage_type, numel, big_endian, name
            )
        return storages[key]

    data = io.BytesIO(read(pickles[0]))
    obj = RestrictedUnpickler(
        data, load_storage, path, _tensor_budget(file_size)
    ).load()
    return _check_loaded(obj, path)


# What parsing an arbitrary file can raise besides CheckpointFormatError;
# each is reported as a CheckpointFormatError naming the file.
_MALFORMED = (
    ArithmeticError,
    AttributeError,
    BufferError,
    EOFError,
    LookupError,
    NotImplementedError,
    OSError,
    RecursionError,
    TypeError,
    ValueError,
    pickle.UnpicklingError,
    struct.error,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
)


def load_torch_file(path):
    """Loads a `torch.save` file into numpy arrays without torch.

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
        UnsafeCheckpointError: the pickle refers to a global outside the
            allow-list or tries to change a stand-in (nothing from the file
            has been executed). A subclass of `CheckpointFormatError`.
        CheckpointFormatError: the file is not a complete, well-formed
            torch checkpoint (truncated, corrupted, compressed entries,
            tensors outside their storage) or exceeds the limits on work
            and memory described in the module docstring. A `ValueError`.
        OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        try:
            return _load(path, f, file_size)
        except CheckpointFormatError:
            raise
        except EOFError as e:
            raise CheckpointFormatError(
                f"{path} ends early; the checkpoint is truncated or "
                f"corrupted. {str(e)[:300]}"
            ) from e
        except _MALFORMED as e:
            raise CheckpointFormatError(
                f"{path} is not a well-formed torch checkpoint "
                f"({type(e).__name__}: {str(e)[:300]})."
            ) from e


def _load(path, f, file_size):
    try:
        archive = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        f.seek(0)
        if f.read(1) == b"\x80":  # A bare pickle stream (torch < 1.6).
            f.seek(0)
            return _load_legacy(path, _BoundedFile(f, file_size), file_size)
        raise CheckpointFormatError(
            f"{path} is not a complete PyTorch zip checkpoint (truncated "
            f"or corrupted download?): {e}"
        ) from e
    with archive:
        return _load_zip(path, archive, file_size)
