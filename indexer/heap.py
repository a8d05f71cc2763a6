"""Give a task's freed memory back to the OS when it ends, so an idle Ray worker does not keep
its last task's peak (measured at 1M × 384: two idle workers at 0.8-0.9 GB of heap each, added
to the driver's training peak; docs/benchmarks.md). glibc keeps freed blocks in its arenas and
pyarrow's pool (jemalloc or mimalloc) keeps its own; both are asked to return what is unused.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)


def release_freed_heap() -> None:
    """Collect garbage, then return unused pages of pyarrow's pool and glibc's heap to the OS
    (``malloc_trim(0)``; a no-op off glibc). Never raises: it only frees what is already free."""
    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception as error:  # noqa: BLE001  (best effort: the task's result is already made)
        log.debug("pyarrow release_unused failed: %s", error)
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError) as error:
        log.debug("malloc_trim unavailable: %s", error)


def releasing_heap(fn: Callable) -> Callable:
    """``fn`` as a task that releases its freed heap when it returns or raises."""
    @functools.wraps(fn)
    def task(*args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            release_freed_heap()
    return task
