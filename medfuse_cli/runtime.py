"""Process settings for fast CPU inference: keep freed heap memory for the next call.

PyTorch allocates CPU tensors with plain ``malloc``. glibc serves every block above its mmap
threshold (128 KiB to start, 32 MiB at most) with fresh pages from ``mmap`` and gives them back
on ``free``, so each activation tensor of a network is page-faulted in again, 4 KiB at a time,
on every call. For LWNet at 256×256 that was ~3,600 page faults per pair and about half its CPU
time (measured in BENCHMARKS.md). With mmap off for ``malloc`` and a high trim threshold,
freed blocks stay in the heap and the next call reuses them (~100 faults per pair). The price
is that memory freed after a peak stays with the process (up to 1 GiB above the heap's top)
until it exits, which suits a command-line run. Other C libraries are left as they are.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30
_applied: list[bool] = []


def keep_heap_memory() -> bool:
    """Tell glibc to reuse freed memory instead of unmapping it (once); False if not glibc."""
    if not _applied:
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
            )
        except (OSError, AttributeError):
            ok = False
        _applied.append(ok)
    return _applied[0]
