"""Tests of the torch-free, restricted `.pth` reader."""

import argparse
import collections
import io
import os
import pickle
import struct
import zipfile

import hostile_checkpoints as hostile
import numpy as np
import pytest
import torch

from keras_dino.weights.errors import CheckpointFormatError
from keras_dino.weights.torch_pickle import CheckpointArgs
from keras_dino.weights.torch_pickle import UnsafeCheckpointError
from keras_dino.weights.torch_pickle import load_torch_file

# The readers are NumPy-only whatever the Keras backend: these run in the
# torch pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("torch")


def _to_numpy(tensor):
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def test_tensors_match_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    tensors = {
        "float": torch.randn(3, 4, generator=g),
        "transposed": base.t(),  # non-contiguous strides
        "slice": base[1:3, 2:5],  # storage offset and strides
        "half": torch.randn(5, generator=g).half(),
        "bfloat16": torch.randn(5, generator=g).bfloat16(),
        "double": torch.randn(2, 2, generator=g).double(),
        "long": torch.arange(7),
        "int": torch.arange(3, dtype=torch.int32),
        "bool": torch.tensor([True, False]),
        "uint8": torch.arange(4, dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.randn(3, generator=g)),
        "conv": torch.randn(8, 3, 2, 2, generator=g).to(
            memory_format=torch.channels_last
        ),
    }
    path = tmp_path / "tensors.pth"
    torch.save(tensors, path)
    loaded = load_torch_file(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        expected = _to_numpy(tensor)
        assert loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
    assert loaded["half"].dtype == np.float16
    assert loaded["bfloat16"].dtype == np.float32
    assert loaded["long"].dtype == np.int64


def test_full_training_checkpoint_structure(tmp_path):
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    checkpoint = {
        "student": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_small", lr=5e-4, out=[1, 2]),
        "dino_loss": {"center": torch.zeros(1, 3)},
        "fp16_scaler": None,
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    loaded = load_torch_file(path)
    assert loaded["epoch"] == 3
    assert loaded["fp16_scaler"] is None
    assert isinstance(loaded["args"], CheckpointArgs)
    assert loaded["args"].arch == "vit_small"
    assert loaded["args"].out == [1, 2]
    np.testing.assert_array_equal(
        loaded["student"]["weight"], model.weight.detach().numpy()
    )
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert loaded["optimizer"]["state"][0]["exp_avg"].shape == (3, 2)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_with_pickle(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, 2))
        archive.writestr("archive/version", "3\n")


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, {"weight": _RunsShell(marker)})
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_torch_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        eval,  # builtins.eval as a global
        collections.Counter(),
        pytest.approx(1.0),  # an arbitrary third-party class
    ],
    ids=["builtins.eval", "collections.Counter", "third_party_class"],
)
def test_any_other_global_is_refused(tmp_path, payload):
    path = tmp_path / "other.pth"
    _zip_with_pickle(path, {"x": payload})
    with pytest.raises(UnsafeCheckpointError, match="Refusing"):
        load_torch_file(path)


def test_malicious_storage_type_is_refused(tmp_path):
    """A persistent id whose storage type is not a stand-in is refused."""
    path = tmp_path / "evil_pid.pth"
    buffer = io.BytesIO()

    class Storage:
        pass

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", "not a storage type", "0", "cpu", 1)
            return None

    Pickler(buffer, 2).dump({"x": Storage()})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="persistent id"):
        load_torch_file(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 30):
        truncated = tmp_path / f"truncated_{size}.pth"
        truncated.write_bytes(data[:size])
        with pytest.raises(ValueError, match="truncated or corrupted"):
            load_torch_file(truncated)


def test_missing_storage_record_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.randn(4)}, path)
    stripped = tmp_path / "stripped.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(stripped, "w") as dst:
        for name in src.namelist():
            if "/data/" not in name:
                dst.writestr(name, src.read(name))
    with pytest.raises(ValueError, match="no storage record"):
        load_torch_file(stripped)


def test_legacy_format(tmp_path):
    base = torch.randn(4, 6)
    checkpoint = {
        "teacher": {"w": base.t(), "b": torch.arange(3), "h": base.half()},
        "args": argparse.Namespace(arch="vit_small"),
        "epoch": 2,
        "p": torch.nn.Parameter(torch.ones(2)),
    }
    path = tmp_path / "legacy.pth"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    loaded = load_torch_file(path)
    for key, tensor in checkpoint["teacher"].items():
        np.testing.assert_array_equal(loaded["teacher"][key], tensor.numpy())
    np.testing.assert_array_equal(loaded["p"], np.ones(2, "float32"))
    assert loaded["args"].arch == "vit_small" and loaded["epoch"] == 2

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="truncated"):
        load_torch_file(truncated)


def test_legacy_format_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, 2)
        pickle.dump(1001, f, 2)
        pickle.dump({"little_endian": True}, f, 2)
        pickle.dump({"w": _RunsShell(marker)}, f, 2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_torch_file(path)
    assert not marker.exists()


# -- Hostile and malformed files (issue 13): bounded work, memory and state,
# -- and one documented exception family.


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_billion_laughs_is_refused_quickly(tmp_path, layout):
    """A ~1 KB pickle of 10**12 shared references must not hang."""
    path = tmp_path / "laughs.pth"
    data = hostile.billion_laughs(levels=12)
    assert len(data) < 2000
    if layout == "zip":
        hostile.zip_checkpoint(path, data)
    else:
        hostile.legacy_checkpoint(path, data)
    with hostile.deadline(20):
        with pytest.raises(CheckpointFormatError, match="billion laughs"):
            load_torch_file(path)


def test_shared_references_within_limits_still_load(tmp_path):
    """Real sharing (tied tensors, a repeated list) is not refused."""
    weight = torch.randn(3, 2)
    shared = [1, 2, 3]
    path = tmp_path / "tied.pth"
    torch.save({"a": weight, "b": weight, "x": shared, "y": shared}, path)
    loaded = load_torch_file(path)
    np.testing.assert_array_equal(loaded["b"], weight.numpy())
    assert loaded["x"] == loaded["y"] == [1, 2, 3]


def _recompress(src, dst):
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info), zipfile.ZIP_DEFLATED)


def test_compressed_storage_entries_are_refused(tmp_path):
    """A deflated entry could inflate to any size: torch never writes one."""
    path = tmp_path / "zeros.pth"
    torch.save({"w": torch.zeros(2**20)}, path)  # 4 MiB of zeros.
    packed = tmp_path / "packed.pth"
    _recompress(path, packed)
    assert packed.stat().st_size < 64 * 1024
    with pytest.raises(CheckpointFormatError, match="compressed"):
        load_torch_file(packed)


def test_entries_may_not_claim_more_than_the_file(tmp_path):
    """Storage records are size-checked against numel x itemsize first."""
    path = tmp_path / "short.pth"
    data = hostile.tensor_pickle((10**9,), (1,), numel=10**9)
    hostile.zip_checkpoint(path, data, [("data/0", b"\0" * 16)])
    with hostile.peak_memory() as peak:
        with pytest.raises(CheckpointFormatError, match="truncated"):
            load_torch_file(path)
    assert peak[0] < 16 * 2**20


def test_stride_zero_view_is_not_expanded_without_bound(tmp_path):
    """A 1-element storage viewed as 64M elements is refused, not copied."""
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.ones(1).expand(2**26)}, path)
    assert path.stat().st_size < 4096
    with hostile.peak_memory() as peak:
        with pytest.raises(CheckpointFormatError, match="expand"):
            load_torch_file(path)
    assert peak[0] < 32 * 2**20
    # A small expanded view is legitimate and still loads like torch.load.
    small = tmp_path / "small.pth"
    torch.save({"w": torch.arange(3.0)[:, None].expand(3, 4)}, small)
    np.testing.assert_array_equal(
        load_torch_file(small)["w"], torch.load(small)["w"].numpy()
    )


@pytest.mark.parametrize(
    "size, stride, offset, numel, message",
    [
        ((4,), (1,), 1, 4, "reaches element 4"),  # offset past the end
        ((2, 3), (3, 2), 0, 4, "reaches element 7"),  # strides past the end
        ((2,), (-1,), 0, 4, "non-negative"),
        ((-2,), (1,), 0, 4, "non-negative"),
        ((2,), (1,), -1, 4, "non-negative"),
        ((2.0,), (1,), 0, 4, "non-negative integers"),
        (7, (1,), 0, 4, "must be tuples"),
        ((2, 2), (1,), 0, 4, "dimensions"),
        ((1,) * 40, (1,) * 40, 0, 4, "at most 32"),
        ((2,), (1,), 0, "4", "numel"),
        ((2,), (1,), 0, -4, "numel"),
    ],
)
def test_bad_tensor_records_are_format_errors(
    tmp_path, size, stride, offset, numel, message
):
    path = tmp_path / "bad.pth"
    data = hostile.tensor_pickle(size, stride, offset, numel=numel)
    storage = np.arange(4, dtype="<f4").tobytes()
    hostile.zip_checkpoint(path, data, [("data/0", storage)])
    with pytest.raises(CheckpointFormatError, match=message):
        load_torch_file(path)


def test_build_cannot_change_the_storage_stand_ins(tmp_path):
    """A BUILD on `torch.FloatStorage` must not leak into later loads."""
    evil = tmp_path / "evil.pth"
    data = hostile.build_on_global("torch", "FloatStorage", "dtype", "f2")
    hostile.zip_checkpoint(evil, data)
    with pytest.raises(UnsafeCheckpointError, match="BUILD"):
        load_torch_file(evil)
    good = tmp_path / "good.pth"
    weight = torch.randn(5)
    torch.save({"w": weight}, good)
    loaded = load_torch_file(good)["w"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, weight.numpy())


@pytest.mark.parametrize(
    "module, name",
    [
        ("argparse", "Namespace"),  # the class itself
        ("torch._utils", "_rebuild_tensor_v2"),  # a function's __dict__
        ("torch", "Tensor"),
    ],
)
def test_build_on_any_global_is_refused(tmp_path, module, name):
    path = tmp_path / "evil.pth"
    data = hostile.build_on_global(module, name, "__repr__", "x")
    hostile.zip_checkpoint(path, data)
    with pytest.raises(UnsafeCheckpointError, match="BUILD"):
        load_torch_file(path)
    assert "__repr__" not in vars(CheckpointArgs)
    assert repr(CheckpointArgs(a=1)) == "CheckpointArgs(a=1)"


def test_checkpoint_args_class_is_immutable():
    with pytest.raises(UnsafeCheckpointError, match="Refusing"):
        CheckpointArgs.__eq__ = None  # noqa: B010
    args = CheckpointArgs(arch="vit_small")
    args.epochs = 3  # instances stay ordinary namespaces
    assert args.epochs == 3


@pytest.mark.parametrize(
    "make",
    [
        hostile.deep_tuple_key,  # hashing it crashes CPython
        hostile.deep_list,
        hostile.self_containing_list,
    ],
    ids=["deep_tuple_key", "deep_list", "cycle"],
)
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_deep_or_cyclic_objects_are_format_errors(tmp_path, make, layout):
    path = tmp_path / "deep.pth"
    if layout == "zip":
        hostile.zip_checkpoint(path, make())
    else:
        hostile.legacy_checkpoint(path, make())
    with hostile.deadline(20):
        with pytest.raises(CheckpointFormatError, match="nested"):
            load_torch_file(path)


def _op(code, value, fmt):
    return code + struct.pack(fmt, value)


@pytest.mark.parametrize(
    "data, message",
    [
        # A 2**40-byte string announced in a 20-byte pickle.
        (b"\x80\x04" + _op(pickle.BINBYTES8, 2**40, "<Q") + b"x", "truncated"),
        (b"\x80\x05" + _op(pickle.BYTEARRAY8, 2**40, "<Q"), "bytearray"),
        (b"\x80\x02" + _op(pickle.EXT4, 1234, "<i") + b".", "extension"),
        (b"\x80\x02K\x00K\x01K\x02s.", "SETITEM"),  # SETITEM on an int
        (b"\x80\x02]K\x01K\x02\x94s.", None),  # odd SETITEMS
        (b"\x80\x02\x95" + b"\xff" * 8, None),  # a frame of 2**64 bytes
        (b"\x80\x02(K\x01K\x02t", None),  # no STOP
        (b"\x80\x02cposix\nsystem\n.", "posix.system"),
        (b"\x80\x02ctorch\nFloatStorage\n.", "not a tensor"),
        (b"\x80\x02ctorch._utils\n_rebuild_tensor\nK\x01\x85R.", "storage"),
        (b"\x80\x02\x8c\x02hi\x8c\x01x\x93.", "Refusing"),  # STACK_GLOBAL
    ],
)
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malformed_pickles_are_format_errors(tmp_path, data, message, layout):
    path = tmp_path / "bad.pth"
    if layout == "zip":
        hostile.zip_checkpoint(path, data)
    else:
        hostile.legacy_checkpoint(path, data)
    with hostile.peak_memory() as peak:
        with pytest.raises(CheckpointFormatError, match=message):
            load_torch_file(path)
    assert peak[0] < 16 * 2**20


@pytest.mark.parametrize(
    "headers, keys, message",
    [
        ({"sys_info": ["little_endian"]}, [], "not a torch checkpoint"),
        ({"sys_info": {"little_endian": "yes"}}, [], "sys_info"),
        ({"magic": "magic"}, [], "not a torch checkpoint"),
        ({}, ["no-such-storage"], "storage keys"),
        ({}, "0", "storage keys"),
    ],
)
def test_malformed_legacy_headers_are_format_errors(
    tmp_path, headers, keys, message
):
    path = tmp_path / "legacy.pth"
    data = hostile.tensor_pickle((2,), (1,), numel=2)
    hostile.legacy_checkpoint(path, data, keys=keys, **headers)
    with pytest.raises(CheckpointFormatError, match=message):
        load_torch_file(path)


def test_legacy_storage_record_longer_than_the_file(tmp_path):
    path = tmp_path / "legacy.pth"
    data = hostile.tensor_pickle((2,), (1,), numel=2)
    record = struct.pack("<q", 2**60) + b"\0" * 8
    hostile.legacy_checkpoint(path, data, keys=["0"], records=record)
    with hostile.peak_memory() as peak:
        with pytest.raises(CheckpointFormatError, match="more than the rest"):
            load_torch_file(path)
    assert peak[0] < 16 * 2**20


def test_format_errors_are_value_errors_and_exported():
    from keras_dino.weights import CheckpointFormatError as exported

    assert exported is CheckpointFormatError
    assert issubclass(CheckpointFormatError, ValueError)
    assert issubclass(UnsafeCheckpointError, CheckpointFormatError)
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_huge_memo_index_takes_no_memory(tmp_path, layout):
    """The C unpickler grows its memo array to a LONG_BINPUT index."""
    path = tmp_path / "memo.pth"
    data = b"\x80\x02N" + _op(pickle.LONG_BINPUT, 2**31, "<I") + b"."
    if layout == "zip":
        hostile.zip_checkpoint(path, data)
    else:
        hostile.legacy_checkpoint(path, data)
    with hostile.peak_memory() as peak:
        assert load_torch_file(path) is None
    assert peak[0] < 16 * 2**20


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "nope.pth")
