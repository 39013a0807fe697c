"""`keep_freed_memory`: a freed 64 MB block is reused, not faulted in again.

Each case runs in a fresh Python process (the setting is process-wide):
it allocates, writes and frees a 64 MB block with glibc's `malloc` three
times and counts the page faults of the last round.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from keras_dino.utils.allocator import keep_freed_memory

ALLOCATOR = (
    Path(__file__).resolve().parents[1] / "keras_dino/utils/allocator.py"
)

SCRIPT = r"""
import ctypes, importlib.util, json, resource, sys

spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
applied = allocator.keep_freed_memory() if sys.argv[2] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _last_round_faults(mode):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ALLOCATOR), mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.backend_pass("torch")  # no Keras: the C library's malloc
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc settings"
)
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    system = _last_round_faults("system")
    kept = _last_round_faults("keep")
    assert kept["applied"] is True
    # glibc's default unmaps a freed 64 MB block (above its mmap
    # threshold): the next one is faulted in again, page by page (or by
    # transparent huge page).
    assert system["faults"] >= 16, system
    assert kept["faults"] * 20 <= system["faults"], (system, kept)


@pytest.mark.backend_pass("torch")
def test_returns_false_where_it_does_not_apply(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
