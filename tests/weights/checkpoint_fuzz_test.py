"""Seeded mutation fuzzing of the checkpoint readers, in a fixed time budget.

Valid small files are written here with `torch.save` (zip and legacy
formats) and the `safetensors` package, plus a few hostile seeds (pickles
that call a function of this module or open a file, a billion laughs, a deep
tuple key, a BUILD on a stand-in). Each round picks a seed and mutates it:
bytes of the whole file, the `data.pkl` of a zip (re-zipped with a valid
CRC, so that the unpickler sees the mutation), a storage record, or a field
of a safetensors header. For every input the test asserts that the reader
either loads it or raises the documented `CheckpointFormatError` (nothing
else, no hang), that no code from the file ran, and that the traced memory
peak stays under a cap. The counts are printed (`pytest -s`) and recorded
as properties of the test.
"""

import argparse
import io
import json
import pickle
import random
import struct
import time
import tracemalloc
import warnings
import zipfile

import hostile_checkpoints as hostile
import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from keras_dino.weights.errors import CheckpointFormatError
from keras_dino.weights.safetensors_reader import load_safetensors
from keras_dino.weights.torch_pickle import load_torch_file

# The readers are NumPy-only whatever the Keras backend: these run in the
# torch pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("torch")

SEED = 13
TIME_BUDGET_S = 15.0
PER_INPUT_S = 10.0
PEAK_CAP_BYTES = 48 * 2**20  # The reader's tensor budget is 16 MiB here.
MIN_INPUTS = 200

_CALLS = []  # What `_mark` was called with; must stay empty.


def _mark(*args):
    """The function hostile seeds try to call through GLOBAL + REDUCE."""
    _CALLS.append(args)
    return "executed"


def _calls_mark():
    """A pickle that REDUCEs `_mark("pwned")`: stock pickle would run it."""
    return (
        pickle.PROTO
        + b"\x02"
        + pickle.EMPTY_DICT
        + hostile.value_op("w")
        + hostile.global_op(__name__, "_mark")
        + hostile.value_op(("pwned",))
        + pickle.REDUCE
        + pickle.SETITEM
        + pickle.STOP
    )


def _opens_file(path="pwned"):
    """A pickle that REDUCEs `open(path, "w")`: stock pickle creates it."""
    return (
        pickle.PROTO
        + b"\x02"
        + hostile.global_op("builtins", "open")
        + hostile.value_op((str(path), "w"))
        + pickle.REDUCE
        + pickle.STOP
    )


def _valid_checkpoint():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    linear = torch.nn.Linear(3, 2)
    return {
        "w": torch.randn(3, 4, generator=g),
        "transposed": base.t(),
        "slice": base[1:3, 2:5],
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "long": torch.arange(4),
        "bool": torch.tensor([True, False]),
        "expanded": torch.ones(1).expand(6),
        "empty": torch.zeros(0, 2),
        "linear": linear.state_dict(),  # OrderedDict with `_metadata`
        "args": argparse.Namespace(arch="vit_small", lr=5e-4, out=[1, 2]),
        "epoch": 3,
        "nested": {"a": [1, (2, 3.5)], "b": None, "c": "text"},
    }


def _torch_bytes(obj, legacy=False):
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _zip_bytes(data_pkl, entries=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _legacy_bytes(object_pickle):
    buffer = io.BytesIO()
    for header in (
        hostile.LEGACY_MAGIC,
        hostile.LEGACY_PROTOCOL,
        {"little_endian": True},
    ):
        buffer.write(pickle.dumps(header, 2))
    buffer.write(object_pickle + pickle.dumps([], 2))
    return buffer.getvalue()


def _seeds():
    """`(name, kind, bytes)` of the valid and hostile seed files."""
    checkpoint = _valid_checkpoint()
    tensors = {
        "a": torch.randn(2, 3),
        "b": torch.arange(4, dtype=torch.int32),
        "c": torch.randn(3).bfloat16(),
        "d": torch.zeros(0, 2),
    }
    hostile_pickles = {
        "calls_mark": _calls_mark(),
        "opens_file": _opens_file(),
        "laughs": hostile.billion_laughs(levels=9),
        "deep_tuple": hostile.deep_tuple_key(depth=2000),
        "build_stand_in": hostile.build_on_global(
            "torch", "FloatStorage", "dtype", "f2"
        ),
        "stride_zero": hostile.tensor_pickle((2**24,), (0,), numel=1),
    }
    seeds = [
        ("zip", "torch", _torch_bytes(checkpoint)),
        ("legacy", "torch", _torch_bytes(checkpoint, legacy=True)),
        ("safetensors", "safetensors", save_safetensors(tensors)),
    ]
    storage = [("archive/data/0", np.ones(4, "<f4").tobytes())]
    for name, data in hostile_pickles.items():
        seeds.append((f"zip_{name}", "torch", _zip_bytes(data, storage)))
        seeds.append((f"legacy_{name}", "torch", _legacy_bytes(data)))
    return seeds


_INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31]
_INTERESTING += [2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]
_OPCODES = [
    b"(", b")", b"]", b"}", b"t", b"\x85", b"\x86", b"\x87", b"a", b"e",
    b"s", b"u", b"b", b"R", b"\x81", b"\x92", b"\x93", b"Q", b"h\x00",
    b"q\x00", b"r\xff\xff\xff\x7f", b"0", b"1", b"2", b"N", b"\x88", b"\x89",
    b"\x94", b"\x91", b"\x90", b"\x8f", b".",
]  # fmt: skip


def _mutate_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip bits
            at = min(at, len(data) - 1)
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting little-endian integer
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING) % 2 ** (8 * width)
            data[at : at + width] = value.to_bytes(width, "little")
        elif op == 2:  # delete a slice
            del data[at : at + rng.randint(1, 16)]
        elif op == 3:  # duplicate a slice
            piece = data[at : at + rng.randint(1, 64)]
            data[at:at] = piece * rng.randint(1, 8)
        elif op == 4:  # truncate
            del data[at:]
        elif op == 5:  # insert a pickle opcode
            data[at:at] = rng.choice(_OPCODES)
        else:  # a random byte
            data[at : at + 1] = bytes([rng.randrange(256)])
    return bytes(data)


def _mutate_zip(rng, data):
    """Mutates one entry of a zip and re-zips it (valid CRCs)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = [(i.filename, archive.read(i)) for i in archive.infolist()]
    index = rng.randrange(len(entries))
    name, content = entries[index]
    if rng.random() < 0.7:  # Mostly the pickle.
        index = next(
            i for i, (n, _) in enumerate(entries) if n.endswith("data.pkl")
        )
        name, content = entries[index]
    choice = rng.random()
    if choice < 0.85:
        entries[index] = (name, _mutate_bytes(rng, content))
    elif choice < 0.95:
        del entries[index]
    else:
        entries.append((name, content))  # a duplicate name
    buffer = io.BytesIO()
    compression = zipfile.ZIP_DEFLATED if rng.random() < 0.03 else 0
    with warnings.catch_warnings():  # "Duplicate name": intended.
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            for name, content in entries:
                archive.writestr(name, content)
    return buffer.getvalue()


def _mutate_header(rng, data):
    """Changes one field of a safetensors header to a hostile value."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names)
    field = rng.choice(["dtype", "shape", "data_offsets"])
    values = [
        -1, 0, 2**40, 2.5, "8", None, [], [1] * 40, [-1, 4], True,
        {"a": 1}, "F8_E4M3", "BF16", "I64",
        header[rng.choice(names)]["data_offsets"],
        [0, 0], [0, 2**62],
    ]  # fmt: skip
    if field == "data_offsets" and rng.random() < 0.5:
        begin, end = header[name]["data_offsets"]
        value = [begin + rng.randint(-8, 8), end + rng.randint(-8, 8)]
    elif field == "shape" and rng.random() < 0.5:
        value = [-s for s in header[name]["shape"]] or [-1]
    else:
        value = rng.choice(values)
    header[name][field] = value
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + size :]


def _mutant(rng, seeds):
    name, kind, data = rng.choice(seeds)
    if rng.random() < 0.2:
        return name, kind, data  # The seed itself.
    if kind == "safetensors" and rng.random() < 0.6:
        return name, kind, _mutate_header(rng, data)
    if data[:2] == b"PK" and rng.random() < 0.8:
        return name, kind, _mutate_zip(rng, data)
    return name, kind, _mutate_bytes(rng, data)


def test_readers_survive_mutated_files(tmp_path, monkeypatch, record_property):
    monkeypatch.chdir(tmp_path)  # The seeds open "pwned" in the cwd.
    marker = tmp_path / "pwned"
    seeds = _seeds()
    # Positive controls: under a stock unpickler the payloads do run.
    assert pickle.loads(_calls_mark())["w"] == "executed"
    pickle.loads(_opens_file()).close()
    assert _CALLS == [("pwned",)] and marker.exists()
    _CALLS.clear()
    marker.unlink()

    rng = random.Random(SEED)
    path = tmp_path / "fuzzed"
    counts = {"tried": 0, "loaded": 0, "documented_error": 0}
    unexpected, over_memory = [], []
    peak_seen = 0
    tracemalloc.start()
    start = time.monotonic()
    try:
        while time.monotonic() - start < TIME_BUDGET_S:
            name, kind, data = _mutant(rng, seeds)
            path.write_bytes(data)
            reader = load_torch_file if kind == "torch" else load_safetensors
            counts["tried"] += 1
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                with hostile.deadline(PER_INPUT_S):
                    result = reader(path)
                counts["loaded"] += 1
                del result
            except CheckpointFormatError:
                counts["documented_error"] += 1
            except Exception as e:  # noqa: BLE001 - what the test looks for
                unexpected.append((name, f"{type(e).__name__}: {e}"[:300]))
            except hostile.TookTooLong:
                unexpected.append((name, f"no answer in {PER_INPUT_S} s"))
            peak = tracemalloc.get_traced_memory()[1] - base
            peak_seen = max(peak_seen, peak)
            if peak > PEAK_CAP_BYTES:
                over_memory.append((name, peak))
    finally:
        tracemalloc.stop()
    counts["unexpected"] = len(unexpected)
    counts["over_memory"] = len(over_memory)
    counts["peak_mib"] = round(peak_seen / 2**20, 1)
    print(f"\ncheckpoint fuzz (seed {SEED}): {counts}")
    for key, value in counts.items():
        record_property(key, value)

    assert _CALLS == [], "a fuzzed checkpoint ran code"
    assert not marker.exists(), "a fuzzed checkpoint created a file"
    assert unexpected == [], unexpected[:10]
    assert over_memory == [], over_memory[:10]
    assert counts["tried"] >= MIN_INPUTS, counts
    # Both outcomes occur, so the mutations neither only break nor only
    # keep the files.
    assert counts["loaded"] > 0 and counts["documented_error"] > 0, counts


@pytest.mark.parametrize("name", ["zip", "legacy", "safetensors"])
def test_valid_seeds_load(tmp_path, name):
    """The fuzzer's valid seeds load and match what was saved."""
    seeds = {n: (kind, data) for n, kind, data in _seeds()}
    kind, data = seeds[name]
    path = tmp_path / name
    path.write_bytes(data)
    if kind == "torch":
        loaded = load_torch_file(path)
        expected = _valid_checkpoint()
        np.testing.assert_array_equal(loaded["slice"], expected["slice"])
        np.testing.assert_array_equal(loaded["expanded"], np.ones(6))
        assert loaded["args"].out == [1, 2]
        assert loaded["nested"] == expected["nested"]
        assert set(loaded["linear"]) == {"weight", "bias"}
    else:
        loaded = load_safetensors(path)
        assert loaded["c"].dtype == np.float32 and loaded["d"].shape == (0, 2)
