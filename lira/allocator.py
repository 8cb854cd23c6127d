"""glibc malloc settings that lira applies when it is imported, on Linux.

XLA:CPU allocates the buffers of every run of a compiled program afresh and frees them after.
With glibc's defaults, large blocks (32 MiB and up, or any size from a thread's own arena when
it cannot grow) are mapped from the kernel on malloc and unmapped on free, so each step touches
its large buffers as new pages again: cnn32's training step at batch 256 took about 17,400 minor
page faults a step, some 68 MB of zeroed pages, on the 2-core CPU machine (2026-11-24).

`tune` keeps that memory in the process instead, with three mallopt(3) settings: one arena for
all threads (M_ARENA_MAX=1), no mmap for large blocks (M_MMAP_MAX=0), and up to 1 GiB of free
memory kept at the top of the heap before it is given back (M_TRIM_THRESHOLD). Measured there:
0-1,600 faults a step and a 1.12-1.19x faster cnn32 gradient step (141-150 against 122-143 ms,
paired runs). The cost is memory: what the process frees stays with it, and a heap fragments
where mapped blocks would not, so the peak RSS of cnn32's training went from 203 to 333-353 MB
(experiments/bench.py); that of the inference bench, which streams its logits, did not grow.

Opt-outs: LIRA_MALLOC=0, or any glibc.malloc.* setting of the user's own in GLIBC_TUNABLES
(glibc reads that at process start; it wins). Elsewhere than Linux with glibc, nothing is done.
The settings apply to the whole process: PyTorch in it gains from them too (experiments/bench.py
times its PyTorch baseline both ways).
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT = "LIRA_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30))

tuned = False  # whether `tune` applied SETTINGS in this process


def wanted(environ=os.environ, platform: str = sys.platform) -> bool:
    """Whether lira should set malloc up here: Linux, not opted out, no glibc.malloc tunables of
    the user's own."""
    return (
        platform.startswith("linux")
        and environ.get(OPT_OUT, "1") != "0"
        and "glibc.malloc." not in environ.get("GLIBC_TUNABLES", "")
    )


def _glibc():
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def tune(environ=os.environ) -> bool:
    """Applies SETTINGS with mallopt if `wanted` and the C library is glibc; returns whether they
    are in effect. Safe to call again; applies to allocations from then on."""
    global tuned
    if tuned or not wanted(environ):
        return tuned
    libc = _glibc()
    if libc is not None:
        tuned = all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)
    return tuned
