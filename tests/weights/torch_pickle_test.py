"""Tests of the torch-free, restricted `.pth` reader."""

import argparse
import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from keras_dino.weights.torch_pickle import CheckpointArgs
from keras_dino.weights.torch_pickle import UnsafeCheckpointError
from keras_dino.weights.torch_pickle import load_torch_file


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
