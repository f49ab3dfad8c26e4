"""Keeping freed memory for reuse, so large CPU tensors do not page-fault in again and again."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Ask glibc to serve every allocation from its heap and keep freed memory there.

    By default glibc maps each block above 32 MiB afresh and unmaps it when it is freed, so
    the next block of that size faults in again, a page at a time. The generator keeps its
    own large buffers and does not need this; model code (the image encoder) still makes such
    blocks once per crop. The cost: the process keeps its peak memory until it exits.
    Process-wide, so the application decides; returns whether glibc took the setting.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
