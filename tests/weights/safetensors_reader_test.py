"""Tests of the numpy safetensors reader against the `safetensors` package."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from keras_dino.weights.safetensors_reader import load_safetensors
from keras_dino.weights.safetensors_reader import load_safetensors_metadata

# The readers are NumPy-only whatever the Keras backend: these run in the
# torch pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("torch")


def test_matches_safetensors_for_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "i32": torch.arange(3, dtype=torch.int32),
        "u8": torch.arange(4, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(1.5),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    loaded = load_safetensors(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        expected = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
        expected = expected.numpy()
        assert loaded[name].shape == expected.shape, name
        assert loaded[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
    assert load_safetensors_metadata(path) == {"format": "pt"}


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(32, 32)}, str(path))
    data = path.read_bytes()
    for size, message in ((4, "8-byte"), (20, "header"), (len(data) - 8, "w")):
        truncated = tmp_path / f"truncated_{size}.safetensors"
        truncated.write_bytes(data[:size])
        with pytest.raises(ValueError, match=message):
            load_safetensors(truncated)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(np.array([12], "<u8").tobytes() + b"not json!!!!")
    with pytest.raises(ValueError, match="JSON"):
        load_safetensors(path)
