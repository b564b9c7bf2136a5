"""Giving memory a large request freed back to the operating system (glibc's allocator).

A node that served a 64 MiB bulk load, or read a peer's oversized answer 64 KiB at a time,
frees all of it, but glibc keeps freed heap memory for reuse: measured with
``bench/hostile.py``, such a node kept 88 to 143 MiB of RSS it no longer used. Two settings
give it back, as the hostile-load goal (RSS given back after a request) requires:

- :func:`tune_allocator`: blocks of 256 KiB and more (bodies, values, answers) are mapped on
  their own and unmapped when freed, instead of being carved out of the heap, where one live
  block above them pins them (glibc's threshold otherwise grows up to 32 MiB by itself). Not
  lower: Twisted reads sockets into 64 KiB buffers, and mapping those would cost every request
  two system calls;
- :class:`MemoryReleaser`: every two seconds ``malloc_trim(0)`` returns the free pages inside
  the heap. It costs microseconds when there is nothing to return, and measured about 25 ms to
  return 200 MiB, well within one reactor turn's budget.

Both do nothing where the C library is not glibc (musl, macOS) or cannot be loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["MMAP_THRESHOLD", "TRIM_INTERVAL", "MemoryReleaser", "tune_allocator"]

log = Logger()

#: Blocks this large or larger are mapped on their own (``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD = 256 * 1024
#: Seconds between two ``malloc_trim(0)``.
TRIM_INTERVAL = 2.0
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def _glibc() -> Any:
    """glibc's ``libc``, or None when the C library is another one."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not all(hasattr(libc, symbol) for symbol in ("mallopt", "malloc_trim")):
        return None
    return libc


def tune_allocator() -> bool:
    """Map blocks of :data:`MMAP_THRESHOLD` and more on their own; whether it could."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)


class MemoryReleaser(Service):
    """Runs ``malloc_trim(0)`` every :data:`TRIM_INTERVAL` seconds while the node runs."""

    def __init__(self, clock: IReactorTime, interval: float = TRIM_INTERVAL) -> None:
        self._libc = _glibc()
        self._loop = LoopingCall(self.release)
        self._loop.clock = clock
        self._interval = interval
        self.runs = 0

    def release(self) -> None:
        """Return the free pages of the heap to the operating system."""
        if self._libc is not None:
            self._libc.malloc_trim(0)
            self.runs += 1

    def startService(self) -> None:
        super().startService()
        if self._libc is not None:
            self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()
