"""Keep freed memory in the process instead of returning it to the OS.

A DINO step on the CPU allocates and frees the same large activation
buffers at every step. With glibc's default settings, buffers above its
`mmap` threshold (at most 32 MB) are unmapped when freed, and freed memory
at the top of the heap is trimmed; both come back as fresh pages at the
next step, each page zeroed by the kernel on first touch (a page fault).
`keep_freed_memory()` tells glibc's `malloc` to serve every allocation from
its heap and never trim it, as the environment variables
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...` would at start-up, so that
after the first steps the same memory is reused.

Measured on the PyTorch backend (CFG-C of `benchmarks/train_step.py`, 2
cores, after warm-up): 90,000 to 390,000 page faults per step fell to
0-45,000; the reference-style plain-PyTorch step has 47,000 to 72,000.
In one sitting of two interleaved rounds each, the PyTorch backend ran at
1.02x the reference-style step (0.98-1.05) with it and at 0.91x
(0.89-0.94) without; peak resident memory 4.24 GB against 4.31. The
reference-style step was not faster with it. On JAX and TensorFlow no
gain was measured.

The price: memory that a run frees stays with the process (its resident
size stays near its peak) until it exits, which is what a training process
wants and an interactive session may not. It is process-wide, so it is
opt-in: `recipes/pretrain.py` calls it on the PyTorch backend (flag
`--malloc`).
"""

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory():
    """Makes glibc's `malloc` keep freed memory for reuse; process-wide.

    Returns:
        True if the settings were applied; False where they do not apply
        (not Linux, or a C library other than glibc), leaving the process
        as it was.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
