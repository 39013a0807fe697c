"""Malformed and hostile safetensors headers get `CheckpointFormatError`."""

import hostile_checkpoints as hostile
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from keras_dino.weights.errors import CheckpointFormatError
from keras_dino.weights.safetensors_reader import load_safetensors
from keras_dino.weights.safetensors_reader import load_safetensors_metadata

# The readers are NumPy-only whatever the Keras backend: these run in the
# torch pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("torch")

_DATA = np.arange(8, dtype="<f4").tobytes()  # 32 bytes


def _entry(shape, offsets, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize(
    "header, message",
    [
        # Two tensors over the same bytes: each byte would be read twice.
        (
            {"a": _entry([8], [0, 32]), "b": _entry([8], [0, 32])},
            "no overlap",
        ),
        ({"a": _entry([4], [0, 16]), "b": _entry([4], [8, 24])}, "overlap"),
        # A negative shape whose byte count matches reversed offsets.
        ({"a": _entry([-1, 4], [16, 0])}, "non-negative"),
        ({"a": _entry([-2, -4], [0, 32])}, "non-negative"),
        ({"a": _entry([2.0, 4], [0, 32])}, "non-negative integers"),
        ({"a": _entry(["8"], [0, 32])}, "non-negative integers"),
        ({"a": _entry([True] * 8, [0, 32])}, "non-negative integers"),
        ({"a": _entry([8], [0, 32.0])}, "data_offsets"),
        ({"a": _entry([8], [0])}, "data_offsets"),
        ({"a": _entry([8], "0-32")}, "data_offsets"),
        ({"a": _entry([8], [0, 32], dtype="F8_E4M3")}, "float8"),
        ({"a": _entry([8], [0, 32], dtype=["F32"])}, "dtype"),
        ({"a": [8, [0, 32]]}, "not a JSON object"),
        ({"a": {"shape": [8], "data_offsets": [0, 32]}}, "dtype"),
        ({"a": _entry([4], [0, 16])}, "nothing after the last tensor"),
        ({"a": _entry([4], [16, 32])}, "gap"),
        ({"a": _entry([9], [0, 36])}, "truncated"),
        ({"a": _entry([1] * 40, [0, 4])}, "at most 32"),
        ({"__metadata__": [1, 2], "a": _entry([8], [0, 32])}, "metadata"),
        ({"__metadata__": {"k": 1}, "a": _entry([8], [0, 32])}, "metadata"),
        ([1, 2, 3], "JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),  # RecursionError in json
        (b'{"a": ' + b"9" * 5000 + b"}", "JSON"),  # int digits limit
        (b"\xff\xfe{}", "JSON"),  # not UTF-8
    ],
)
def test_malformed_headers_are_format_errors(tmp_path, header, message):
    path = tmp_path / "bad.safetensors"
    hostile.safetensors_file(path, header, _DATA)
    with pytest.raises(CheckpointFormatError, match=message):
        load_safetensors(path)


def test_header_larger_than_the_limit_is_refused(tmp_path):
    path = tmp_path / "big.safetensors"
    size = 100_000_001
    with open(path, "wb") as f:
        f.write(size.to_bytes(8, "little"))
        f.truncate(8 + size)  # Sparse: no disk used.
    with pytest.raises(CheckpointFormatError, match="100000000"):
        load_safetensors(path)


def test_files_of_the_safetensors_package_still_load(tmp_path):
    """The stricter checks accept what `safetensors` writes, incl. empty."""
    tensors = {
        "empty": torch.zeros(0, 3),
        "w": torch.randn(2, 3),
        "also_empty": torch.zeros(5, 0, dtype=torch.int64),
        "b": torch.arange(4, dtype=torch.int32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    loaded = load_safetensors(path)
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(loaded[name], tensor.numpy())
        assert loaded[name].shape == tuple(tensor.shape)
    assert load_safetensors_metadata(path) == {"k": "v"}


def test_metadata_errors_are_format_errors(tmp_path):
    path = tmp_path / "bad.safetensors"
    hostile.safetensors_file(path, {"__metadata__": "v"})
    with pytest.raises(CheckpointFormatError, match="metadata"):
        load_safetensors_metadata(path)
